"""Lab Observations to canonical-unit readings, and readings to LabResult facts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from typing import Any, Literal

from ..facts import LabResult
from ..units import ordered_float
from .common import Content, Notice, days_between, number, status_code

Provenance = Literal["measured", "corrected", "lab-corrected"]
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
    if canonical is None:
        shown = f"unit '{unit}'" if unit else "no unit"
        return None, [Notice(
            "unit-not-convertible", reference,
            f"{label} result {reference} has {shown}, which cannot be converted to "
            f"{units.canonical_unit(concept)}; it was not used")]
    low = high = None
    for ref_range in resource.get("referenceRange") or []:
        if isinstance(ref_range, Mapping):
            low = low or _range_bound(content, concept, ref_range.get("low"))
            high = high or _range_bound(content, concept, ref_range.get("high"))
    comparator = quantity.get("comparator")
    return LabReading(
        concept=concept, value=canonical, original_value=str(raw_value), original_unit=unit,
        comparator=comparator if isinstance(comparator, str) else None, effective=effective,
        reference=reference, low=low, high=high, interpretation=_interpretation(resource),
        provenance="lab-corrected" if concept == CORRECTED_CALCIUM else "measured",
    ), []


def _range_bound(content: Content, concept: str, quantity: Any) -> Fraction | None:
    if not isinstance(quantity, Mapping):
        return None
    value = number(quantity.get("value"))
    unit = quantity.get("code") or quantity.get("unit") or content.units.canonical_unit(concept)
    if value is None or not isinstance(unit, str):
        return None
    return content.units.to_canonical(concept, value, unit)


def _interpretation(resource: Mapping[str, Any]) -> str | None:
    for item in resource.get("interpretation") or []:
        code = status_code(item)
        if code:
            return code
    return None


def lab_facts(content: Content, readings: list[LabReading], as_of: datetime) -> list[LabResult]:
    """LabResult facts, newest first per concept; `is_latest` marks the one that decides."""
    by_concept: dict[str, list[LabReading]] = {}
    for reading in readings:
        by_concept.setdefault(reading.concept, []).append(reading)
    facts = []
    for concept in sorted(by_concept):
        # newest first; same instant: the more abnormal first (docs/clinical-basis.md, "Lab
        # results"), then by reference
        ordered = sorted(by_concept[concept],
                         key=lambda lab: (-lab.effective.timestamp(), *_abnormal_first(
                             content, lab), lab.reference))
        seen: set[tuple[str, str]] = set()
        label = content.term.concepts[concept].label
        unit = content.units.canonical_unit(concept) or ""
        for index, lab in enumerate(ordered):
            if (lab.reference, str(lab.value)) in seen:
                continue
            seen.add((lab.reference, str(lab.value)))
            limit = upper_limit(content, lab)
            facts.append(LabResult(
                reference=lab.reference, concept=concept, label=label,
                value=ordered_float(lab.value), unit=unit, original_value=lab.original_value,
                original_unit=lab.original_unit, comparator=lab.comparator,
                effective=lab.effective, age_days=days_between(lab.effective, as_of),
                is_latest=index == 0,
                reference_low=float(lab.low) if lab.low is not None else None,
                reference_high=float(lab.high) if lab.high is not None else None,
                interpretation=lab.interpretation,
                upper_limit=float(limit) if limit is not None else None,
                above_upper_limit=lab.value > limit if limit is not None else None,
                derived_from=lab.derived_from, note=lab.note, provenance=lab.provenance,
                measured_value=(float(lab.measured_value) if lab.measured_value is not None
                                else None),
                albumin_reported=lab.albumin_reported))
    return facts


def upper_limit(content: Content, lab: LabReading) -> Fraction | None:
    """The CK upper limit: the lab's referenceRange.high, else derived.yaml's default."""
    constants = content.constants
    if lab.concept != constants.ck_concept:
        return None
    return lab.high if lab.high is not None and lab.high > 0 else constants.ck_default


def _abnormal_first(content: Content, lab: LabReading) -> tuple[int, Fraction]:
    """Sort key among same-time results: the highest severity any rule gives first; at equal
    severity the more extreme value in that rule's direction (the lowest when none fires)."""
    limit = upper_limit(content, lab)
    ratio = lab.value / limit if limit else None
    rank, upward = 0, False
    for ladder in content.ruleset.lab_thresholds(lab.concept):
        at = ladder.rank_at(lab.value, ratio)
        if at > rank:
            rank, upward = at, ladder.test.upward or any(s.upward for _, s in ladder.steps)
    return -rank, -lab.value if upward else lab.value
