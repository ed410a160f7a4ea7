"""Quantities to canonical units, with exact rational factors from rules/units.yaml.

Conversions use ``fractions.Fraction`` so that the same quantity written in two units converts
to the very same number (unit invariance), and a value at a threshold stays at it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

_ANNOTATION = re.compile(r"\{[^}]*\}")


def parse_number(text: str | int | float) -> Fraction:
    """Exact value of a number written in a rule file or a FHIR decimal ("1/4.008", 0.7, "2.15")."""
    if isinstance(text, (int, float)):
        return Fraction(repr(text)) if isinstance(text, float) else Fraction(text)
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
