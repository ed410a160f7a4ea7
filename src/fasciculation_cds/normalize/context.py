"""The closed-world PatientContext: what is present, when each lab was last measured, counts."""

from __future__ import annotations

from collections.abc import Iterable

from ..facts import ClinicalFact, Finding, LabResult, PatientContext, Problem
from .common import Content

# "Days since last measured" for a lab never measured: larger than any look-back.
NEVER_MEASURED_DAYS = 1_000_000.0


def patient_context(
    content: Content,
    reference: str,
    facts: Iterable[ClinicalFact],
    assume_presentation: bool,
    recorded: Iterable[str] = (),
    *,
    partial: bool = False,
    conflicting: tuple[str, ...] = (),
) -> PatientContext:
    """`recorded`: derived concepts present whatever the facts say (e.g. MND recorded in any
    status), from `conditions.recorded_concepts`."""
    term, derived = content.term, content.ruleset.derived
    present: set[str] = set(recorded)
    days: dict[str, float] = {}
    for fact in facts:
        if isinstance(fact, (Problem, Finding)):
            present.add(fact.concept)
        elif isinstance(fact, LabResult):
            days[fact.concept] = min(days.get(fact.concept, fact.age_days), fact.age_days)
    lab_concepts = [c.id for c in term.concepts.values() if c.kind == "lab"]
    days_since = {c: days.get(c, NEVER_MEASURED_DAYS) for c in lab_concepts}
    for family, members in content.ruleset.lab_families.items():
        days_since[family] = min(days_since[m] for m in members)
    presentation_group = term.groups[derived.presentation_group]
    presentation = tuple(sorted(c for c in present if c in presentation_group))
    group_counts = {g: sum(1 for c in members if c in present)
                    for g, members in term.groups.items()}
    set_counts = {}
    for name, group_set in derived.counted_group_sets.items():
        explained = {rule.group for rule in group_set.not_counted if rule.when_present in present}
        set_counts[name] = sum(1 for g in group_set.groups
                               if g not in explained and group_counts.get(g, 0) > 0)
    return PatientContext(
        reference=reference, presenting=assume_presentation or bool(presentation),
        presentation=presentation, concepts_present=tuple(sorted(present)),
        days_since=days_since, group_counts=group_counts, group_set_counts=set_counts,
        partial=partial, conflicting=conflicting)
