"""What a clinician summary shows, built from an Assessment and its normalized facts.

Rendering (HTML, Markdown, FHIR) only formats this view; it never re-reads FHIR.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction

from ..assessment import Assessment, RuleFinding
from ..checked import lab_patterns
from ..facts import LabResult, Medication
from ..fhir_time import iso_day
from ..presentation import order_findings, priority_of
from ..quantity_text import converted_text, evidence_label, shown_text, threshold_text
from ..rule_schema import CATEGORY_TITLES, RULE_CATEGORIES
from ..ruleset import RuleSet
from ..thresholds import compared_lab_concepts, lab_thresholds
from ..units import UnitTable


@dataclass(frozen=True)
class Threshold:
    value: float
    label: str


@dataclass(frozen=True)
class Point:
    when: datetime
    value: float
    shown: str
    reference: str
    flagged: bool


@dataclass
class Series:
    concept: str
    label: str
    unit: str
    points: list[Point]
    thresholds: list[Threshold]


@dataclass
class MedicationLine:
    label: str
    display: str
    reference: str
    flagged_by: list[str]


@dataclass
class PatientView:
    assessment: Assessment
    headline: RuleFinding | None
    groups: list[tuple[str, list[RuleFinding]]]
    series: list[Series]
    medications: list[MedicationLine]
    contributors: list[str]
    alerts: list[RuleFinding]
    """Findings of `headline: true` rules: the headline box names them, emphasised."""
    references: list[tuple[str, str | None]] = field(default_factory=list)

    @property
    def highest(self) -> str:
        return self.assessment.highest_severity or "none"


SYMBOL = {"lt": "<", "lte": "≤", "gt": ">", "gte": "≥"}


def thresholds_for(ruleset: RuleSet, concept: str, axis_unit: str) -> list[Threshold]:
    """Threshold lines for a chart, read from the rule files, at their place on an axis in
    `axis_unit` and labelled in that unit: the number as the rule wrote it when the rule is
    written in the axis unit, otherwise converted (significant digits kept)."""
    units = ruleset.units
    lines: dict[float, Threshold] = {}
    for found in lab_thresholds(ruleset.active_rules(), units, concept):
        if found.operator not in SYMBOL:
            continue
        on_axis = units.from_canonical(concept, found.canonical, axis_unit)
        if on_axis is None:
            continue
        written_in = units.fold(found.unit or units.canonical_unit(concept) or "")
        shown = (threshold_text(found.bound, axis_unit) if written_in == axis_unit
                 else converted_text(units, concept, found.bound, written_in, axis_unit))
        if shown is None:
            continue
        lines.setdefault(float(on_axis), Threshold(
            float(on_axis), f"{found.severity} {SYMBOL[found.operator]} {shown}"))
    return sorted(lines.values(), key=lambda t: t.value)


def axis_unit(labs: Sequence[LabResult], units: UnitTable) -> str:
    """The unit a chart is drawn in: the one the lab sent, when every result came in the same
    convertible unit; otherwise the concept's canonical unit (results sent in several units are
    drawn on one comparable scale)."""
    canonical = labs[0].unit
    sent = {units.fold(lab.original_unit) if lab.original_unit else None for lab in labs}
    if len(sent) == 1:
        [only] = sent
        if only and units.from_canonical(labs[0].concept, Fraction(1), only) is not None:
            return only
    return canonical


def _on_axis(lab: LabResult, unit: str, units: UnitTable) -> float:
    """The value the rules used (corrected, for a corrected calcium), in the axis unit."""
    if unit == lab.unit:
        return lab.value
    value = units.from_canonical(lab.concept, Fraction(repr(lab.value)), unit)
    return float(value) if value is not None else lab.value


def charted_concepts(ruleset: RuleSet) -> tuple[str, ...]:
    """Labs with a trend chart: those the rules compare with a threshold, a number or a multiple
    of the upper limit (CK). Calcium is charted as the value the rule decides on (corrected where
    the correction applies); the chart's title says which."""
    compared = compared_lab_concepts(ruleset.active_rules(), ruleset.units)
    by_limit = {c for rule in ruleset.active_rules() for pattern, concepts, _ in
                lab_patterns(rule) if pattern is not None and pattern.times_upper_limit
                for c in concepts}
    in_table = [c for analyte in ruleset.units.analytes.values() for c in analyte.concepts]
    return tuple(c for c in in_table if c in compared or c in by_limit)


def upper_limit_lines(ruleset: RuleSet, labs: Sequence[LabResult], unit: str) -> list[Threshold]:
    """For a lab the rules compare with multiples of its upper limit (CK): a line at each
    multiple a rule names, from the newest result's upper limit, in the axis unit."""
    concept = labs[0].concept
    multiples = sorted({bound for rule in ruleset.active_rules()
                        for pattern, concepts, _ in lab_patterns(rule)
                        if pattern is not None and pattern.times_upper_limit is not None
                        and concept in concepts
                        for bound in (pattern.times_upper_limit.gt, pattern.times_upper_limit.gte)
                        if bound is not None})
    limit = labs[-1].upper_limit
    if limit is None:
        return []
    lines = []
    for multiple in multiples:
        canonical = Fraction(repr(float(limit))) * Fraction(repr(multiple))
        on_axis = ruleset.units.from_canonical(concept, canonical, unit)
        if on_axis is None:
            continue
        times = "" if multiple == 1 else f"{multiple:g} \u00d7 "  # the multiplication sign
        shown = converted_text(ruleset.units, concept, float(on_axis), unit, unit) or ""
        lines.append(Threshold(float(on_axis), f"> {times}upper limit, {shown}"))
    return lines


def series_label(labs: Sequence[LabResult], ruleset: RuleSet) -> str:
    """What a chart plots: one label when every point is the same kind of value (`Calcium
    (total), as measured`), else each kind it holds."""
    labels = dict.fromkeys(evidence_label(lab, ruleset.presentation.lab_labels) for lab in labs)
    return " / ".join(labels)


def build_view(assessment: Assessment, ruleset: RuleSet) -> PatientView:
    findings = list(assessment.findings)
    flagged_refs = {e.reference for f in findings for e in f.evidence}
    labs = [f for f in assessment.facts if isinstance(f, LabResult)]
    series = []
    for concept in charted_concepts(ruleset):
        points = sorted((f for f in labs if f.concept == concept), key=lambda f: f.effective)
        if not points:
            continue
        unit = axis_unit(points, ruleset.units)
        series.append(Series(
            concept=concept, label=series_label(points, ruleset), unit=unit,
            points=[Point(p.effective, _on_axis(p, unit, ruleset.units),
                          f"{shown_text(p, ruleset.units)} ({iso_day(p.effective)})",
                          p.reference, p.reference in flagged_refs and p.is_latest)
                    for p in points],
            thresholds=sorted([*thresholds_for(ruleset, concept, unit),
                               *upper_limit_lines(ruleset, points, unit)],
                              key=lambda t: t.value)))
    medications = []
    for fact in assessment.facts:
        if isinstance(fact, Medication):
            by = sorted({f.rule_id for f in findings
                         if any(e.reference == fact.reference for e in f.evidence)})
            medications.append(MedicationLine(fact.label, fact.display or fact.label,
                                              fact.reference, by))
    medications.sort(key=lambda m: (not m.flagged_by, m.label))
    groups = []
    priority = priority_of(ruleset.presentation.headline_order)
    for category in RULE_CATEGORIES:
        members = [f for f in findings if f.category == category]
        if members:
            groups.append((CATEGORY_TITLES[category], order_findings(members, priority)))
    contributors = sorted({e.label or e.concept for f in findings if f.category == "context"
                           for e in f.evidence})
    headline_rules = {rule.id for rule in ruleset.rules if rule.headline}
    references: dict[str, str | None] = {}
    for finding in findings:
        for citation in finding.references:
            references.setdefault(citation.citation, citation.url)
    return PatientView(
        assessment=assessment, headline=findings[0] if findings else None, groups=groups,
        series=series, medications=medications, contributors=contributors,
        alerts=[f for f in findings if f.rule_id in headline_rules],
        references=sorted(references.items()))
