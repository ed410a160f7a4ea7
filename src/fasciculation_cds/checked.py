"""The `checked` section of an assessment: what the rules looked at and what they found there.

Which analytes and sign groups are listed comes from the loaded rules (every lab concept a rule
reads, every counted group set of derived.yaml); rules/presentation.yaml only orders and names
them. Values come from the normalized facts, and a result that did not count is explained by the
notices and by the record's own status, so a patient with no finding still reads as "checked:
K 4.1 mmol/L (2026-11-02), …; no MND signs recorded".
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from .assessment import (
    Checked,
    CheckedAnalyte,
    CheckedRemark,
    CheckedSign,
    CheckedSignSet,
    Notice,
)
from .facts import ClinicalFact, Finding, LabResult, Problem
from .fhir_time import iso_day
from .ingest import SourcedResource
from .normalize.common import COUNTING_OBSERVATION_STATUS, effective_time, reference_of
from .normalize.labs import ALBUMIN, CORRECTED_CALCIUM
from .quantity_text import evidence_label, shown_text, used_text
from .rule_schema import ContextPattern, FactPattern, Rule
from .ruleset import RuleSet

UNREADABLE = "resource-unreadable"
# Notices that name a sign the record leaves in doubt: a sign set never reads "no … recorded"
# past one of them (uncertainty never produces reassurance).
SIGN_DOUBTS = frozenset({"sign-value-unclear", "text-uncertain"})


@dataclass(frozen=True)
class Consulted:
    """A lab concept (or family) and the look-back each rule that reads it gives it."""

    key: str
    members: tuple[str, ...]
    lookbacks: Mapping[str, int | None]

    @property
    def lookback_days(self) -> int | None:
        days = [d for d in self.lookbacks.values() if d is not None]
        return max(days) if days else None


def lab_patterns(rule: Rule) -> Iterable[tuple[FactPattern | None, list[str], int | None]]:
    """(pattern, lab concepts, look-back) for every place a rule reads a lab."""
    for match in rule.match:
        contexts: list[ContextPattern | None] = [match.context,
                                                 *(e.context for e in match.escalate)]
        patterns = [*match.facts.values(), *(p for e in match.escalate for p in e.facts.values()),
                    *(p for c in contexts if c for p in c.without_facts)]
        for pattern in patterns:
            if "lab" in pattern.kinds:
                yield pattern, pattern.named_concepts, pattern.max_age_days
        for context in contexts:
            if context is None:
                continue
            for spec in (context.measured_within, context.not_measured_within):
                if spec is not None:
                    yield None, [*(spec.all_of or []), *(spec.any_of or [])], spec.days
            if context.newer is not None:
                yield None, [context.newer.concept, *context.newer.than], None
    for collect in rule.evidence_also:
        if collect.fact == "lab":
            yield None, list(collect.concepts), None
    for suggestion in rule.suggestions:  # a test offered only when not measured in its days
        if suggestion.unless_measured is not None:
            yield None, list(suggestion.unless_measured.concepts), suggestion.unless_measured.days


def _names_concept(rule: Rule, concept: str) -> bool:
    """Whether a rule tests `concept` anywhere (a fact pattern or a context test)."""
    for match in rule.match:
        contexts = [c for c in (match.context, *(e.context for e in match.escalate)) if c]
        patterns = [*match.facts.values(), *(p for e in match.escalate for p in e.facts.values()),
                    *(p for c in contexts for p in c.without_facts)]
        if any(concept in p.named_concepts for p in patterns) or any(
                concept in [*c.presents, *c.presents_any, *c.absent] for c in contexts):
            return True
    return False


@functools.lru_cache(maxsize=8)
def consulted_labs(ruleset: RuleSet) -> tuple[Consulted, ...]:
    """Every lab concept the active rules read, a family's members under the family, in the
    order of presentation.yaml (then by label). A lab read through a derived fact (HbA1c makes
    diabetes, derived.yaml) is listed under the rules that test that fact."""
    family_of = {member: family for family, members in ruleset.lab_families.items()
                 for member in members}
    found: dict[str, dict[str, int | None]] = {}
    derived = ruleset.derived.derived_concepts  # made from other results (an earlier eGFR)
    for rule in ruleset.active_rules():
        for _, concepts, days in lab_patterns(rule):
            for concept in concepts:
                if concept in derived:
                    continue
                key = family_of.get(concept, concept)
                lookbacks = found.setdefault(key, {})
                known = lookbacks.get(rule.id)
                lookbacks[rule.id] = days if known is None else max(known, days or 0)
    diabetes = ruleset.derived.diabetes_by_hba1c
    for rule in ruleset.active_rules():
        if _names_concept(rule, diabetes.yields):
            found.setdefault(diabetes.concept, {})[rule.id] = diabetes.lookback_days
    order = list(ruleset.presentation.checked.analytes)

    def place(key: str) -> tuple[int, str]:
        return (order.index(key) if key in order else len(order), _label(ruleset, key))

    return tuple(Consulted(key, tuple(ruleset.lab_families.get(key, (key,))), found[key])
                 for key in sorted(found, key=place))


def _label(ruleset: RuleSet, key: str) -> str:
    concept = ruleset.terminology.concepts.get(key)
    if concept is not None:
        return concept.label
    return key.removesuffix("-any").replace("-", " ").capitalize()


def within(moment: datetime, as_of: datetime, days: int | None) -> bool:
    """Inside a look-back of whole calendar days (docs/clinical-basis.md, "Lab results")."""
    if moment > as_of:
        return False
    day = as_of.astimezone(timezone.utc).date()
    return days is None or (day - moment.astimezone(timezone.utc).date()).days <= days


@dataclass(frozen=True)
class _Observed:
    """A lab Observation of the record: its reference, the lab concepts it codes, its status
    and time (read once per patient)."""

    reference: str
    concepts: frozenset[str]
    status: object
    effective: datetime | None


def _observed_labs(ruleset: RuleSet, resources: Sequence[SourcedResource],
                   noticed: frozenset[str]) -> list[_Observed]:
    """The lab Observations that explain something: those a notice names and those whose
    status does not count (the counting ones are facts already; skipping them keeps this
    cheap on records of thousands of results)."""
    term = ruleset.terminology
    out = []
    for sourced in resources:
        resource = sourced.resource
        if resource.get("resourceType") != "Observation":
            continue
        reference = reference_of(sourced)
        if resource.get("status") in COUNTING_OBSERVATION_STATUS and reference not in noticed:
            continue
        labs = frozenset(m.concept for m in term.match_codeable(resource.get("code"))
                         if term.concepts[m.concept].kind == "lab")
        if labs:
            out.append(_Observed(reference, labs, resource.get("status"),
                                 effective_time(resource)))
    return out


def _status_remarks(observed: Sequence[_Observed], as_of: datetime, days: int | None,
                    members: tuple[str, ...]) -> list[CheckedRemark]:
    remarks = []
    for lab in observed:
        if lab.status in COUNTING_OBSERVATION_STATUS or not lab.concepts & set(members):
            continue
        if lab.effective is not None and not within(lab.effective, as_of, days):
            continue
        shown = lab.status if isinstance(lab.status, str) else "missing"
        remarks.append(CheckedRemark(
            reference=lab.reference, code="status",
            message=f"status {shown}: only final, amended or corrected results count"))
    return remarks


def _newest(labs: Iterable[LabResult]) -> LabResult | None:
    ordered = sorted(labs, key=lambda f: (-f.effective.timestamp(), not f.is_latest,
                                          f.concept, f.reference))
    return ordered[0] if ordered else None


def _analyte(ruleset: RuleSet, item: Consulted, labs: Mapping[str, Sequence[LabResult]],
             notices: Sequence[Notice], observed: Sequence[_Observed],
             as_of: datetime) -> CheckedAnalyte:
    units = ruleset.units
    short = ruleset.presentation.checked.analytes.get(item.key, _label(ruleset, item.key))
    days = item.lookback_days
    used = _newest(lab for member in item.members for lab in labs.get(member, ())
                   if within(lab.effective, as_of, days))
    # an albumin's notice (implausible, a bound) is about the calcium it would have corrected
    concepts_of = {lab.reference: lab.concepts | ({CORRECTED_CALCIUM} if ALBUMIN in lab.concepts
                                                  else set())
                   for lab in observed}
    remarks = [CheckedRemark(reference=n.reference, code=n.code, message=n.message)
               for n in notices if n.code != UNREADABLE
               and concepts_of.get(n.reference, frozenset()) & set(item.members)]
    remarks += _status_remarks(observed, as_of, days, item.members)
    remarks.sort(key=lambda r: (r.reference, r.code, r.message))
    span = f"in {days} days" if days is not None else "recorded"
    base = functools.partial(CheckedAnalyte, concept=item.key, label=_label(ruleset, item.key),
                             short=short, rules=sorted(item.lookbacks), lookback_days=days,
                             remarks=remarks)
    if used is not None:
        what = evidence_label(used, ruleset.presentation.lab_labels)
        family = len(item.members) > 1
        qualifier = f"; {what}" if family or what != used.label else ""
        value = used_text(used, units)
        text = f"{short} {value} ({iso_day(used.effective)}{qualifier})"
        shorter = [rule for rule, d in sorted(item.lookbacks.items())
                   if d is not None and not within(used.effective, as_of, d)]
        if shorter:
            text += f" (older than {', '.join(shorter)} reads)"
        return base(state="value", value=value,
                              shown=shown_text(used, units), what=what,
                              date=iso_day(used.effective), reference=used.reference, text=text)
    if remarks:
        why = sorted({r.code.replace("-", " ") for r in remarks})
        count = len({r.reference for r in remarks})
        text = (f"{short}: none counted {span} ({count} not used: {', '.join(why)})")
        return base(state="not-counted", text=text)
    return base(state="none", text=f"{short}: none {span}")


@functools.lru_cache(maxsize=32)
def _set_rules(ruleset: RuleSet, name: str, groups: tuple[str, ...]) -> list[str]:
    rules = set()
    for rule in ruleset.active_rules():
        for match in rule.match:
            contexts = [match.context, *(e.context for e in match.escalate)]
            patterns = [*match.facts.values(), *(p for c in contexts if c
                                                 for p in c.without_facts)]
            if any(c is not None and name in c.group_sets for c in contexts) or any(
                    set(p.in_groups or []) & set(groups) for p in patterns):
                rules.add(rule.id)
    return sorted(rules)


def _doubted_concepts(ruleset: RuleSet, resources: Sequence[SourcedResource],
                      notices: Sequence[Notice]) -> dict[str, set[str]]:
    """Notice reference -> the concepts its resource codes or names, for the notices that doubt
    a sign (only those resources are read again)."""
    doubted = {n.reference for n in notices if n.code in SIGN_DOUBTS}
    out: dict[str, set[str]] = {}
    if not doubted:
        return out
    for sourced in resources:
        reference = reference_of(sourced)
        if reference in doubted:
            code = sourced.resource.get("code")
            out[reference] = {m.concept for m in ruleset.terminology.match_codeable(code)}
    return out


def _sign_set(ruleset: RuleSet, name: str, facts: Sequence[ClinicalFact],
              notices: Sequence[Notice], doubted: Mapping[str, set[str]]) -> CheckedSignSet:
    groups = list(ruleset.derived.counted_group_sets[name].groups)
    words = ruleset.presentation.checked.sign_sets.get(name)
    label = words.label if words else name.replace("_", " ")
    found: list[CheckedSign] = []
    for fact in facts:
        if not isinstance(fact, (Finding, Problem)):
            continue
        for group in fact.groups:
            if group not in groups:
                continue
            when = fact.effective if isinstance(fact, Finding) else fact.onset
            found.append(CheckedSign(
                concept=fact.concept, label=fact.label, group=group, reference=fact.reference,
                date=iso_day(when) if when else None, certainty=fact.certainty,
                matched_by=fact.matched_by, quote=fact.quote))
    found.sort(key=lambda s: (groups.index(s.group), s.concept, s.reference))
    members = {c for g in groups for c in ruleset.terminology.groups.get(g, ())}
    remarks = sorted((CheckedRemark(reference=n.reference, code=n.code, message=n.message)
                      for n in notices if n.code in SIGN_DOUBTS
                      and doubted.get(n.reference, set()) & members),
                     key=lambda r: (r.reference, r.code, r.message))
    if not found:
        text = f"no {label} recorded"
        if remarks:
            text = f"no {label} counted, {len(remarks)} left in doubt by the record"
    else:
        names = words.groups if words else {}
        parts = []
        for sign in found:
            notes = [names.get(sign.group, sign.group)]
            if sign.date:
                notes.append(sign.date)
            if sign.certainty != "asserted":
                notes.append(sign.certainty)
            parts.append(f"{sign.label} ({'; '.join(notes)})")
        text = f"{label}: {', '.join(dict.fromkeys(parts))}"
        if remarks:
            text += f"; {len(remarks)} more left in doubt by the record"
    rules = list(_set_rules(ruleset, name, tuple(groups)))
    return CheckedSignSet(name=name, label=label, rules=rules, groups=groups, found=found,
                          remarks=remarks, text=text)


def build_checked(
    ruleset: RuleSet,
    facts: Sequence[ClinicalFact],
    notices: Sequence[Notice],
    resources: Sequence[SourcedResource],
    as_of: datetime,
) -> Checked:
    """The checked section: deterministic for the same record, rules and as_of."""
    labs: dict[str, list[LabResult]] = {}
    for fact in facts:
        if isinstance(fact, LabResult):
            labs.setdefault(fact.concept, []).append(fact)
    observed = _observed_labs(ruleset, resources, frozenset(n.reference for n in notices))
    analytes = [_analyte(ruleset, item, labs, notices, observed, as_of)
                for item in consulted_labs(ruleset)]
    doubted = _doubted_concepts(ruleset, resources, notices)
    # the group sets presentation.yaml words (one line for the MND signs, not one per set
    # the rules count), else every counted set
    shown = list(ruleset.presentation.checked.sign_sets) or sorted(
        ruleset.derived.counted_group_sets)
    signs = [_sign_set(ruleset, name, facts, notices, doubted) for name in shown]
    unreadable = sorted({n.reference for n in notices if n.code == UNREADABLE})
    text = "checked: " + ", ".join(a.text for a in analytes)
    for sign_set in signs:
        text += f"; {sign_set.text}"
    if unreadable:
        text += f"; {len(unreadable)} resource(s) unreadable, not checked"
    return Checked(analytes=analytes, signs=signs, unreadable=unreadable, text=text)
