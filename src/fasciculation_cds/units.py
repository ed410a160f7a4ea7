"""Quantities to canonical units, with exact rational factors from rules/units.yaml.

Conversions use ``fractions.Fraction`` so that the same quantity written in two units converts
to the very same number (unit invariance), and a value at a threshold stays at it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

_ANNOTATION = re.compile(r"\{[^}]*\}")
_EXPONENT = re.compile(r"^\s*[+-]?(?:\d+\.?\d*|\.\d+)[eE][+-]?\d+\s*$")
_SIGNIFICANT = 15  # digits a double holds for any decimal (DBL_DIG)
# Beyond this magnitude (or below its inverse) a number is no measurement: parsing "1e999" exactly
# would build an integer of a thousand digits for nothing (and 1e999999999 would never finish).
MAX_EXPONENT = 300


def ordered_float(value: Fraction) -> float:
    """A double for `value` that any threshold written with at most 15 significant digits
    compares with as the exact value would: 0.69999999999999999999 reads as the double just
    below 0.7, never as 0.7. (Such a threshold is one double exactly; a value with more digits
    lies strictly between two of them, s1 < value < s2, and so does the double returned.)"""
    nearest = float(value)
    if value == 0 or Fraction(nearest) == value:
        return nearest
    magnitude = abs(value)
    exponent = math.floor(math.log10(magnitude))  # may be off by one; corrected below
    if Fraction(10) ** exponent > magnitude:
        exponent -= 1
    elif Fraction(10) ** (exponent + 1) <= magnitude:
        exponent += 1
    step = Fraction(10) ** (exponent - _SIGNIFICANT + 1)
    low = math.floor(value / step) * step
    if low == value:
        return nearest  # a short decimal: its double is the threshold's own
    below, above = float(low), float(low + step)
    if nearest <= below:
        return math.nextafter(below, math.inf)
    if nearest >= above:
        return math.nextafter(above, -math.inf)
    return nearest


def parse_number(text: str | int | float | Decimal) -> Fraction:
    """Exact value of a number written in a rule file or a FHIR decimal ("1/4.008", 0.7, "2.15",
    a `Decimal` read with all its digits). ValueError for a non-finite or absurdly large one."""
    if isinstance(text, float) and not math.isfinite(text):
        raise ValueError(f"not a finite number: {text!r}")
    if isinstance(text, Decimal):
        if not text.is_finite() or (text and abs(text.adjusted()) > MAX_EXPONENT):
            raise ValueError(f"not a plausible number: {text}")
        return Fraction(text)
    if isinstance(text, (int, float)):
        return Fraction(repr(text)) if isinstance(text, float) else Fraction(text)
    if _EXPONENT.match(text):
        return parse_number(Decimal(text.strip()))
    numerator, _, denominator = text.partition("/")
    value = Fraction(numerator.strip())
    return value / Fraction(denominator.strip()) if denominator else value


@dataclass(frozen=True)
class Conversion:
    factor: Fraction
    offset: Fraction = Fraction(0)

    def apply(self, value: Fraction) -> Fraction:
        return value * self.factor + self.offset

    def invert(self, value: Fraction) -> Fraction:
        return (value - self.offset) / self.factor


@dataclass(frozen=True)
class Analyte:
    name: str
    canonical: str
    concepts: tuple[str, ...]
    conversions: Mapping[str, Conversion]
    assumed: Mapping[str, Conversion] = field(default_factory=dict)
    without_unit: Conversion | None = None


class UnitTable:
    """The analytes of rules/units.yaml: canonical unit and conversions per lab concept."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._aliases: dict[str, str] = {
            str(k).lower(): str(v) for k, v in (data.get("aliases") or {}).items()
        }
        self.age_units: dict[str, str] = {
            str(k).lower(): str(v) for k, v in (data.get("age_units") or {}).items()
        }
        self._by_concept: dict[str, Analyte] = {}
        self.analytes: dict[str, Analyte] = {}
        for name, spec in data["analytes"].items():
            conversions: dict[str, Conversion] = {}
            for unit, factor in spec["to_canonical"].items():
                if isinstance(factor, Mapping):
                    conversions[str(unit)] = Conversion(
                        parse_number(factor["factor"]), parse_number(factor.get("offset", 0))
                    )
                else:
                    conversions[str(unit)] = Conversion(parse_number(factor))
            assumed = {str(unit): Conversion(parse_number(factor))
                       for unit, factor in (spec.get("assumed") or {}).items()}
            bare = spec.get("without_unit")
            analyte = Analyte(name, str(spec["canonical"]), tuple(spec["concepts"]), conversions,
                              assumed, Conversion(parse_number(bare)) if bare is not None else None)
            self.analytes[name] = analyte
            for concept in analyte.concepts:
                self._by_concept[concept] = analyte

    def canonical_unit(self, concept: str) -> str | None:
        analyte = self._by_concept.get(concept)
        return analyte.canonical if analyte else None

    def fold(self, unit: str) -> str:
        """The UCUM spelling of a unit as sent: annotations dropped, case folded via aliases."""
        bare = _ANNOTATION.sub("", unit).strip()
        if not bare and unit.strip():
            return "1"  # UCUM: an annotation alone ("{score}") is the unity
        return self._aliases.get(bare.lower(), bare)

    def to_canonical(self, concept: str, value: Fraction, unit: str | None) -> Fraction | None:
        """The value in the concept's canonical unit, or None when the unit cannot be converted."""
        analyte = self._by_concept.get(concept)
        if analyte is None:
            return None
        if not unit:
            return analyte.without_unit.apply(value) if analyte.without_unit else None
        conversion = analyte.conversions.get(self.fold(unit))
        return conversion.apply(value) if conversion else None

    def assumed(self, concept: str, value: Fraction, unit: str | None) -> Fraction | None:
        """The value read in the canonical unit from a unit these codes are assumed to mean
        (eGFR `mL/min`), or None."""
        analyte = self._by_concept.get(concept)
        if analyte is None or not unit:
            return None
        conversion = analyte.assumed.get(self.fold(unit))
        return conversion.apply(value) if conversion else None

    def from_canonical(self, concept: str, value: Fraction, unit: str) -> Fraction | None:
        analyte = self._by_concept.get(concept)
        if analyte is None:
            return None
        conversion = analyte.conversions.get(self.fold(unit))
        return conversion.invert(value) if conversion else None
