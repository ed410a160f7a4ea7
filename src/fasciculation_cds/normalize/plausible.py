"""Lab values that cannot be a measurement, and units read from the printed text.

A result outside its analyte's plausible range (rules/plausible-ranges.yaml), or a number too
large to be one, is not evaluated and is named (notice `value-implausible`), never a card. A
UCUM code the unit table does not know, beside a printed unit it does, is read by the printed
unit and named (notice `unit-from-text`), never silently.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from ..units import UnitTable, parse_number
from .common import Content, Notice, number

IMPLAUSIBLE = "value-implausible"


class _Range(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at_least: float | int | str
    at_most: float | int | str
    unit: str
    reason: str


class _RangesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str
    analytes: dict[str, _Range]


@functools.cache
def _ranges(directory: Path, units: UnitTable) -> dict[str, tuple[Fraction, Fraction, _Range]]:
    """Canonical (low, high, range) per lab concept; ValueError for a range that does not
    convert (a unit the analyte does not have)."""
    with (directory / "plausible-ranges.yaml").open("rb") as handle:
        spec = _RangesFile.model_validate(yaml.safe_load(handle))
    ranges = {}
    for name, bound in spec.analytes.items():
        analyte = units.analytes[name]
        for concept in analyte.concepts:
            low = units.to_canonical(concept, parse_number(bound.at_least), bound.unit)
            high = units.to_canonical(concept, parse_number(bound.at_most), bound.unit)
            if low is None or high is None:
                raise ValueError(f"plausible-ranges.yaml: {name}: unit {bound.unit!r} does not "
                                 "convert")
            ranges[concept] = (low, high, bound)
    return ranges


def implausible_value(content: Content, resource: Mapping[str, Any], concept: str,
                      reference: str) -> Notice | None:
    """The notice for a lab result whose value cannot be a measurement of `concept`."""
    quantity = resource.get("valueQuantity")
    if not isinstance(quantity, Mapping) or quantity.get("value") is None:
        return None
    raw = quantity["value"]
    label = content.term.concepts[concept].label
    value = number(raw)
    if value is None:
        if isinstance(raw, bool) or (not isinstance(raw, (int, float, str)) and not hasattr(
                raw, "is_finite")):
            return None  # not a number at all: the lab reading says so
        return Notice(IMPLAUSIBLE, reference,
                      f"{label} result {reference} has the value {str(raw)[:40]}, which is no "
                      "measurement; it was not used")
    unit, _ = reading_unit(content.units, concept, value, quantity)
    canonical = content.units.to_canonical(concept, value, unit) if unit else None
    found = _ranges(content.ruleset.directory, content.units).get(concept)
    if canonical is None or found is None:
        return None
    low, high, bound = found
    if low <= canonical <= high:
        return None
    return Notice(IMPLAUSIBLE, reference,
                  f"{label} result {reference} is {str(raw)[:40]} {unit}, outside what a "
                  f"measurement can be ({bound.at_least}-{bound.at_most} {bound.unit}); it was "
                  "not used")


def plausible_ranges_only(content: Content, resource: Mapping[str, Any], concept: str,
                          reference: str) -> tuple[Mapping[str, Any], list[Notice]]:
    """The result without reference range bounds no measurement can be (a bound of 1.5e308
    g/dL would not even convert to a number), and the notice naming them."""
    ranges = resource.get("referenceRange")
    if not isinstance(ranges, list):
        return resource, []
    found = _ranges(content.ruleset.directory, content.units).get(concept)
    kept, dropped = [], []
    for item in ranges:
        if isinstance(item, Mapping) and found is not None and any(
                _absurd_bound(content.units, concept, item.get(bound), found[1])
                for bound in ("low", "high")):
            dropped.append(item)
        else:
            kept.append(item)
    if not dropped:
        return resource, []
    label = content.term.concepts[concept].label
    return {**resource, "referenceRange": kept}, [Notice(
        IMPLAUSIBLE, reference, f"{label} result {reference} has a reference range no "
        "measurement can bound; the range was not used")]


def _absurd_bound(units: UnitTable, concept: str, quantity: Any, high: Fraction) -> bool:
    if not isinstance(quantity, Mapping) or quantity.get("value") is None:
        return False
    value = number(quantity["value"])
    if value is None:
        return True
    unit, _ = reading_unit(units, concept, value, quantity)
    canonical = units.to_canonical(concept, value, unit or units.canonical_unit(concept) or "")
    # a bound may lie somewhat beyond the plausible values, never a thousand times beyond
    return canonical is not None and not (-high * 1000 <= canonical <= high * 1000)


def reading_unit(units: UnitTable, concept: str, value: Fraction,
                 quantity: Mapping[str, Any]) -> tuple[str | None, bool]:
    """The unit a result is read in, as labs reads it (the UCUM code, else the printed unit),
    and whether it came from the printed unit because the code is unknown."""
    code, printed = quantity.get("code"), quantity.get("unit")
    code = code if isinstance(code, str) and code else None
    printed = printed if isinstance(printed, str) and printed else None
    if code is not None and units.to_canonical(concept, value, code) is None \
            and printed is not None and printed != code \
            and units.to_canonical(concept, value, printed) is not None:
        return printed, True
    return code or printed, False


def unit_from_text(content: Content, resource: Mapping[str, Any], concept: str,
                   reference: str) -> Notice | None:
    """The notice for a result read by its printed unit because its unit code is unknown."""
    quantity = resource.get("valueQuantity")
    value = number(quantity.get("value")) if isinstance(quantity, Mapping) else None
    if value is None or not isinstance(quantity, Mapping):
        return None
    unit, from_text = reading_unit(content.units, concept, value, quantity)
    if not from_text:
        return None
    label = content.term.concepts[concept].label
    return Notice("unit-from-text", reference,
                  f"{label} result {reference} has the unit code {quantity.get('code')!r}, which "
                  f"is not known; it was read by its printed unit {unit!r}")
