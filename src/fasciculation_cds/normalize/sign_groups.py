"""Which recorded signs form a motor-neuron-disease group for this patient (v3).

A sign's concept names the group it can belong to; whether it counts depends on the rest of the
record: an unclear value forms no group, weakness is LMN only beside a fasciculation or a
suspected MND, and a qualifying explaining condition takes some signs out. Each sign fact leaves
here carrying the groups it counts in, so the closed-world counts, the engine's `in_groups`
tests and the cards read the same answer. Everything this module decides is configured in
derived.yaml `sign_groups`.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..content_schema import SignGroups
from ..facts import Finding, Problem
from .common import Content
from .conditions import Coded, dedupe


def counted_sign_groups(content: Content, coded: list[Coded]) -> tuple[list[Coded], set[str]]:
    """The facts with the groups each counts in, and the derived concepts the record yields."""
    spec = content.ruleset.derived.sign_groups
    if spec is None:
        return coded, set()
    coded = dedupe([_established_or_suspected(content, spec, fact) for fact in coded])
    present = {fact.concept for fact in coded}
    yields: set[str] = set()
    fasciculation = [f for f in coded if f.concept in spec.fasciculation_presentation.concepts]
    if fasciculation:
        yields.add(spec.fasciculation_presentation.yields)
        if all(f.certainty != "asserted" for f in fasciculation):
            yields.add(spec.fasciculation_presentation.uncertain_only)
    explainers = {f.concept for f in coded
                  if spec.explaining.conditions_group in f.groups and _qualifies(spec, f)}
    if explainers or any(f.concept in spec.cap.concepts and _qualifies(spec, f) for f in coded):
        yields.add(spec.cap.yields)
    out: list[Coded] = []
    for fact in coded:
        groups = _groups_counted(spec, fact, present, explainers)
        if groups != fact.groups:
            fact = fact.model_copy(update={"groups": groups})
        yields |= {y for y, g in ((spec.unclear.yields, spec.unclear.group),
                                  (spec.explaining.yields, spec.explaining.group))
                   if g in groups}
        out.append(fact)
    return out, yields


def _groups_counted(spec: SignGroups, fact: Coded, present: set[str],
                    explainers: set[str]) -> tuple[str, ...]:
    signs = [g for g in fact.groups if g in spec.sign_groups]
    if not signs:
        return fact.groups
    others = [g for g in fact.groups if g not in spec.sign_groups]
    if fact.certainty not in spec.forming_certainty:
        return _sorted(others, [spec.unclear.group] if spec.unclear.group else [])
    if _explained(spec, fact.concept, explainers):
        return _sorted(others, [spec.explaining.group])
    conditional = spec.conditional.get(fact.concept)
    if conditional is not None and not present.intersection(
            conditional.when_any_present):
        signs = [g for g in signs if g != conditional.group]
    return _sorted(others, signs)


def _explained(spec: SignGroups, concept: str, explainers: set[str]) -> bool:
    explaining = spec.explaining
    if concept not in explaining.removes:
        return False
    return any(concept not in explaining.not_removed_by.get(e, ()) for e in explainers)


def _qualifies(spec: SignGroups, fact: Coded) -> bool:
    """A coded, confirmed (or unverified), undoubted Condition: it may remove or cap."""
    rule = spec.qualifying_condition
    verification = fact.verification_status if isinstance(fact, Problem) else None
    return (verification in rule.verification and fact.certainty in rule.certainty
            and fact.matched_by in rule.matched_by)


def _established_or_suspected(content: Content, spec: SignGroups, fact: Coded) -> Coded:
    """An MND diagnosis that is not a qualifying coded one is a suspected MND."""
    if fact.concept != spec.established.concept or _qualifies(spec, fact):
        return fact
    suspected = content.term.concepts[spec.established.otherwise]
    return Finding(reference=fact.reference, concept=suspected.id, label=suspected.label,
                   groups=suspected.groups,
                   effective=fact.onset if isinstance(fact, Problem) else fact.effective,
                   matched_by=fact.matched_by, certainty=fact.certainty, quote=fact.quote)


def _sorted(*parts: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted({g for part in parts for g in part}))
