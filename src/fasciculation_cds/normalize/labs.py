"""Lab Observations to canonical-unit readings, and readings to LabResult facts."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from typing import Any, Literal

from ..facts import LabResult
from ..units import ordered_float
from .common import Content, Notice, days_between, number, status_code

Provenance = Literal["measured", "corrected", "lab-corrected"]
UNIT_ASSUMED = "unit-assumed"
CONFLICTING = "conflicting-results"
# Concepts the calcium correction reads and makes (units.yaml analytes, derived.yaml).
TOTAL_CALCIUM, CORRECTED_CALCIUM, ALBUMIN = "calcium-total", "calcium-corrected", "albumin"


@dataclass(frozen=True)
class LabReading:
    """One counting lab result in its concept's canonical unit (before ranking)."""

    concept: str
    value: Fraction
    original_value: str
    original_unit: str | None
    comparator: str | None
    effective: datetime
    reference: str
    low: Fraction | None
    high: Fraction | None
    interpretation: str | None
    derived_from: tuple[str, ...] = ()
    note: str | None = None
    provenance: Provenance = "measured"
    measured_value: Fraction | None = None
    albumin_reported: str | None = None
    last: datetime | None = None
    """The span's last instant not after as_of (a Period, a partial date): look-backs hold a
    result they overlap (v3 clinical basis "Time"); None: a point at `effective`."""

    @property
    def until(self) -> datetime:
        return self.last or self.effective

    @property
    def reported(self) -> str:
        """The value as the lab sent it: "< 12 ng/mL"."""
        comparator = f"{self.comparator} " if self.comparator else ""
        unit = f" {self.original_unit}" if self.original_unit else ""
        return f"{comparator}{self.original_value}{unit}"


def read_lab(
    content: Content,
    resource: Mapping[str, Any],
    concept: str,
    reference: str,
    effective: datetime,
) -> tuple[LabReading | None, list[Notice]]:
    """The reading of one lab Observation, or None with the notice saying why it does not count."""
    units = content.units
    label = content.term.concepts[concept].label
    quantity = resource.get("valueQuantity")
    raw_value = quantity.get("value") if isinstance(quantity, Mapping) else None
    value = number(raw_value)
    if value is None or not isinstance(quantity, Mapping):
        return None, [Notice("no-numeric-value", reference,
                             f"{label} result {reference} has no numeric value")]
    unit = quantity.get("code") or quantity.get("unit")
    unit = unit if isinstance(unit, str) else None
    canonical = units.to_canonical(concept, value, unit)
    if canonical is None and quantity.get("unit") and quantity.get("unit") != unit:
        unit = str(quantity["unit"])  # a UCUM code we cannot read; try the printed unit
        canonical = units.to_canonical(concept, value, unit)
    notices: list[Notice] = []
    if canonical is None:
        canonical = units.assumed(concept, value, unit)
        if canonical is not None:
            notices.append(Notice(
                UNIT_ASSUMED, reference,
                f"{label} sent in '{unit}' under an eGFR code was read as "
                f"{units.canonical_unit(concept)} (every eGFR code is per 1.73 m2)"))
    if canonical is None:
        shown = f"unit '{unit}'" if unit else "no unit"
        return None, [Notice(
            "unit-not-convertible", reference,
            f"{label} result {reference} has {shown}, which cannot be converted to "
            f"{units.canonical_unit(concept)}; it was not used")]
    low = high = None
    for ref_range in resource.get("referenceRange") or []:
        if isinstance(ref_range, Mapping):
            low = low if low is not None else _range_bound(
                content, concept, ref_range.get("low"), unit)
            high = high if high is not None else _range_bound(
                content, concept, ref_range.get("high"), unit)
    comparator = quantity.get("comparator")
    return LabReading(
        concept=concept, value=canonical, original_value=str(raw_value), original_unit=unit,
        comparator=comparator if isinstance(comparator, str) else None, effective=effective,
        reference=reference, low=low, high=high, interpretation=_interpretation(resource),
        provenance="lab-corrected" if concept == CORRECTED_CALCIUM else "measured",
    ), notices


def _range_bound(content: Content, concept: str, quantity: Any,
                 value_unit: str | None) -> Fraction | None:
    """A referenceRange bound in the canonical unit, converted like the value: in its own
    unit, else in the unit of the value it belongs to (v3 references, free T4)."""
    if not isinstance(quantity, Mapping):
        return None
    value = number(quantity.get("value"))
    unit = quantity.get("code") or quantity.get("unit") or value_unit
    if value is None or not isinstance(unit, str):
        return None
    units = content.units
    converted = units.to_canonical(concept, value, unit)
    return converted if converted is not None else units.assumed(concept, value, unit)


def _interpretation(resource: Mapping[str, Any]) -> str | None:
    for item in resource.get("interpretation") or []:
        code = status_code(item)
        if code:
            return code
    return None


@dataclass(frozen=True)
class LabFacts:
    """LabResult facts, with the notices and conflicts their same-time ties gave."""

    facts: list[LabResult]
    notices: list[Notice]
    conflicting: tuple[str, ...]


def lab_facts(content: Content, readings: list[LabReading], as_of: datetime) -> LabFacts:
    """LabResult facts, newest first per concept; `is_latest` marks the one that decides
    (v3 clinical basis "Same-time results": at the newest time the more abnormal one; results on
    opposite sides of the range both decide, with notice `conflicting-results`; a concept with
    tiers (eGFR) is decided by the code first, then the lower value, and never conflicts)."""
    by_concept: dict[str, list[LabReading]] = {}
    for reading in readings:
        by_concept.setdefault(reading.concept, []).append(reading)
    tiers = content.ruleset.derived.same_time_tiers
    facts: list[LabResult] = []
    notices: list[Notice] = []
    conflicting: list[str] = []
    for concept in sorted(by_concept):
        tier = same_time_rank(content, concept, readings)
        ordered = sorted(by_concept[concept],
                         key=lambda lab: (-lab.effective.timestamp(), tier(lab),
                                          *_abnormal_first(content, lab), lab.reference))
        deciding = [ordered[0]]
        if concept not in tiers:
            newest = [lab for lab in ordered if lab.effective == ordered[0].effective]
            opposite = _opposite_sides(content, newest)
            if opposite:
                deciding = opposite
                conflicting.append(concept)
                notices.append(_conflict_notice(content, concept, opposite))
        latest = {(lab.reference, lab.value) for lab in deciding}
        seen: set[tuple[str, str]] = set()
        label = content.term.concepts[concept].label
        unit = content.units.canonical_unit(concept) or ""
        for lab in ordered:
            if (lab.reference, str(lab.value)) in seen:
                continue
            seen.add((lab.reference, str(lab.value)))
            limit = upper_limit(content, lab)
            facts.append(LabResult(
                reference=lab.reference, concept=concept, label=label,
                value=ordered_float(lab.value), unit=unit, original_value=lab.original_value,
                original_unit=lab.original_unit, comparator=lab.comparator,
                effective=lab.effective, age_days=days_between(lab.until, as_of),
                is_latest=(lab.reference, lab.value) in latest,
                reference_low=float(lab.low) if lab.low is not None else None,
                reference_high=float(lab.high) if lab.high is not None else None,
                interpretation=lab.interpretation,
                upper_limit=float(limit) if limit is not None else None,
                above_upper_limit=lab.value > limit if limit is not None else None,
                derived_from=lab.derived_from, note=lab.note, provenance=lab.provenance,
                measured_value=(float(lab.measured_value) if lab.measured_value is not None
                                else None),
                albumin_reported=lab.albumin_reported))
    return LabFacts(facts, notices, tuple(conflicting))


def same_time_rank(content: Content, concept: str,
                   readings: list[LabReading]) -> Callable[[LabReading], int]:
    """Same-time rank by code (derived.yaml `same_time_tiers`): results whose code is also in
    a `first` concept, then the others, then those also in a `last` concept."""
    spec = content.ruleset.derived.same_time_tiers.get(concept)
    if spec is None:
        return lambda lab: 0
    first = {lab.reference for lab in readings if lab.concept in spec.first}
    last = {lab.reference for lab in readings if lab.concept in spec.last}
    return lambda lab: 0 if lab.reference in first else 2 if lab.reference in last else 1


def _opposite_sides(content: Content, same_time: list[LabReading]) -> list[LabReading]:
    """The most abnormal low and the most abnormal high of same-time results (already ordered
    most abnormal first), when both exist; else nothing."""
    low = high = None
    for lab in same_time:
        rank, upward = _severity_direction(content, lab)
        if rank == 0:
            continue
        if upward and high is None:
            high = lab
        elif not upward and low is None:
            low = lab
    return [low, high] if low is not None and high is not None else []


def _conflict_notice(content: Content, concept: str, labs: list[LabReading]) -> Notice:
    label = content.term.concepts[concept].label
    shown = " and ".join(f"{lab.reported} ({lab.reference})" for lab in labs)
    return Notice(CONFLICTING, labs[0].reference,
                  f"{label}: results of the same time on opposite sides of the range, {shown}; "
                  "both are reported")


def upper_limit(content: Content, lab: LabReading) -> Fraction | None:
    """The CK upper limit: the lab's referenceRange.high, else derived.yaml's default."""
    constants = content.constants
    if lab.concept != constants.ck_concept:
        return None
    return lab.high if lab.high is not None and lab.high > 0 else constants.ck_default


def _severity_direction(content: Content, lab: LabReading) -> tuple[int, bool]:
    """The highest severity rank any rule gives the value, and whether that rule is an
    "above" test."""
    limit = upper_limit(content, lab)
    ratio = lab.value / limit if limit else None
    rank, upward = 0, False
    for ladder in content.ruleset.lab_thresholds(lab.concept):
        at = ladder.rank_at(lab.value, ratio)
        if at > rank:
            rank, upward = at, ladder.test.upward or any(s.upward for _, s in ladder.steps)
    return rank, upward


def _abnormal_first(content: Content, lab: LabReading) -> tuple[int, Fraction]:
    """Sort key among same-time results: the highest severity any rule gives first; at equal
    severity the more extreme value in that rule's direction (the lowest when none fires)."""
    rank, upward = _severity_direction(content, lab)
    return -rank, -lab.value if upward else lab.value
