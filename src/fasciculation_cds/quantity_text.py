"""How numbers and lab values are written for people: one place for every output.

Two rules hold everywhere (JSON evidence, terminal, Markdown, HTML, charts and cards):

- a number keeps its significant digits: 8.0 mg/dL of calcium is 2.00 mmol/L, never "2";
- a lab value is shown in the unit the lab sent, with the canonical value beside it when the
  units differ: ``7.2 mg/dL (1.80 mmol/L)``. A calcium this package corrected for albumin says
  so, and is never labelled as reported by the lab.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from fractions import Fraction
from typing import Any

from .facts import LabResult
from .units import UnitTable, parse_number

SIGNIFICANT_DIGITS = 3
"""Digits kept for a value this package computed (a conversion or a correction)."""

PROVENANCE_MEASURED = "measured"
PROVENANCE_CORRECTED = "corrected"
PROVENANCE_LAB_CORRECTED = "lab-corrected"


def format_significant(value: float | Fraction | Decimal, digits: int = SIGNIFICANT_DIGITS) -> str:
    """`value` to `digits` significant digits, trailing zeros kept: 2.00, 0.699, 30.0, 146.

    Values with more integer digits than `digits` are rounded to a whole number (1234), never
    written in exponent form.
    """
    number = value if isinstance(value, Decimal) else _decimal(value)
    if number == 0:
        return "0." + "0" * (digits - 1) if digits > 1 else "0"
    exponent = number.adjusted()  # position of the leading digit
    with localcontext() as ctx:
        ctx.prec = max(50, exponent + digits + 2)  # room for every integer digit of a huge value
        places = max(digits - 1 - exponent, 0)
        rounded = number.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
        if rounded.adjusted() > exponent and places > 0:  # 9.996 -> 10.00: one digit too many
            places -= 1
            rounded = number.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return f"{rounded:f}"


def _decimal(value: float | Fraction) -> Decimal:
    if isinstance(value, Fraction):
        with localcontext() as ctx:
            ctx.prec = 50
            return Decimal(value.numerator) / Decimal(value.denominator)
    return Decimal(repr(float(value)))


_READABLE_UNITS = {"{1.73_m2}": "1.73 m2", "[IU]": "IU", "[iU]": "IU"}


def readable_unit(unit: str) -> str:
    """A UCUM code as people write it: `mL/min/{1.73_m2}` -> `mL/min/1.73 m2`, `m[IU]/L` ->
    `mIU/L`."""
    for code, text in _READABLE_UNITS.items():
        unit = unit.replace(code, text)
    return unit


def quantity(number: str, unit: str | None, comparator: str | None = None) -> str:
    """`< 12 ng/mL`: an already formatted number with its comparator and unit."""
    prefix = f"{comparator} " if comparator else ""
    suffix = f" {readable_unit(unit)}" if unit else ""
    return f"{prefix}{number}{suffix}"


SENT_DIGITS_CAP = 4
"""Most significant digits shown of a number as the lab sent it (never fewer than its integer
digits): a feed's 65.566064456418 mg/dL is shown 65.57 mg/dL, a lab's 4.1 or 1.50 as sent."""


def sent_number(text: str) -> str:
    """The lab's number with its own significant digits, capped at SENT_DIGITS_CAP."""
    try:
        number = Decimal(text.strip())
    except InvalidOperation:
        return text
    if not number.is_finite() or number == 0:
        return text
    significant = len(number.as_tuple().digits)
    if significant <= SENT_DIGITS_CAP:
        return text
    return format_significant(number, max(SENT_DIGITS_CAP, number.adjusted() + 1))


def as_sent(fact: LabResult) -> str:
    """The value as the record sent it (number text, comparator and unit), the number's
    digits capped for people (`exactly_as_sent` keeps every digit)."""
    return quantity(sent_number(fact.original_value), fact.original_unit, fact.comparator)


def exactly_as_sent(fact: LabResult) -> str:
    """The value exactly as the record sent it: evidence `reported` in the JSON."""
    return quantity(fact.original_value, fact.original_unit, fact.comparator)


def provenance(fact: LabResult) -> str:
    """measured, corrected (albumin correction by this package) or lab-corrected."""
    return fact.provenance


def evidence_label(fact: LabResult, labels: Mapping[str, Mapping[Any, str]]) -> str:
    """What the value is (rules/presentation.yaml `lab_labels`): a total calcium the rules use as
    measured is "Calcium (total), as measured", never "corrected for albumin"."""
    return labels.get(fact.concept, {}).get(fact.provenance, fact.label)


def units_differ(fact: LabResult, units: UnitTable) -> bool:
    return not fact.original_unit or units.fold(fact.original_unit) != units.fold(fact.unit)


def measured_canonical(fact: LabResult, units: UnitTable) -> Fraction | None:
    """The canonical value of what the lab measured (before any correction by this package)."""
    if fact.provenance != PROVENANCE_CORRECTED:
        return Fraction(repr(fact.value))
    if fact.measured_value is not None:
        return Fraction(repr(fact.measured_value))
    try:
        sent = parse_number(fact.original_value)
    except (ValueError, ZeroDivisionError):
        return None
    return units.to_canonical(fact.concept, sent, fact.original_unit)


def canonical_text(value: float | Fraction, fact: LabResult) -> str:
    return quantity(format_significant(value), fact.unit, fact.comparator)


def measured_text(fact: LabResult, units: UnitTable) -> str:
    """`7.2 mg/dL (1.80 mmol/L)`, or `0.55 mmol/L` when the lab sent the canonical unit."""
    sent = as_sent(fact)
    if not units_differ(fact, units):
        return sent
    canonical = measured_canonical(fact, units)
    if canonical is None:
        return sent
    return f"{sent} ({canonical_text(canonical, fact)})"


def used_text(fact: LabResult, units: UnitTable) -> str:
    """The value the rules compared, in the unit the lab sent: `8.16 mg/dL` for a calcium
    corrected here, otherwise the value as sent."""
    if provenance(fact) != PROVENANCE_CORRECTED:
        return as_sent(fact)
    unit = fact.original_unit or fact.unit
    in_lab_unit = units.from_canonical(fact.concept, Fraction(repr(fact.value)), unit)
    if in_lab_unit is None:
        return canonical_text(fact.value, fact)
    return quantity(format_significant(in_lab_unit), unit, fact.comparator)


def albumin_text(fact: LabResult) -> str | None:
    """The albumin a correction used, as the lab sent it (`2.8 g/dL`)."""
    return fact.albumin_reported or None


def shown_text(fact: LabResult, units: UnitTable) -> str:
    """The one display of a lab value used by every output.

    `7.2 mg/dL (1.80 mmol/L); corrected for albumin 2.8 g/dL by this package: 8.16 mg/dL`;
    `2.05 mmol/L; corrected for albumin, as reported by the lab`; `8.0 mg/dL (2.00 mmol/L)`.
    """
    measured = measured_text(fact, units)
    kind = provenance(fact)
    if kind == PROVENANCE_CORRECTED:
        albumin = albumin_text(fact)
        which = f"albumin {albumin}" if albumin else "albumin"
        return f"{measured}; corrected for {which} by this package: {used_text(fact, units)}"
    if kind == PROVENANCE_LAB_CORRECTED:
        return f"{measured}; corrected for albumin, as reported by the lab"
    if fact.concept == "calcium-corrected":
        return f"{measured}, as measured (not corrected for albumin)"
    return measured


def range_text(low: float | None, high: float | None, unit: str) -> str | None:
    """A reference range in the canonical unit: `0.70-1.10 mmol/L`, `≤ 200 U/L`."""
    if low is None and high is None:
        return None
    unit = readable_unit(unit)
    if low is not None and high is not None:
        return f"{format_significant(low)}-{format_significant(high)} {unit}"
    if high is not None:
        return f"≤ {format_significant(high)} {unit}"
    return f"≥ {format_significant(low or 0.0)} {unit}"


def converted_text(units: UnitTable, concept: str, value: float | Fraction, unit: str,
                   to_unit: str) -> str | None:
    """`value` (in `unit`) written in `to_unit` with significant digits, for one-unit charts:
    a threshold of 8.5 mg/dL on a mmol/L axis is `2.12 mmol/L`. None if it does not convert."""
    exact = value if isinstance(value, Fraction) else Fraction(repr(float(value)))
    canonical = units.to_canonical(concept, exact, unit)
    converted = units.from_canonical(concept, canonical, to_unit) if canonical is not None \
        else None
    return quantity(format_significant(converted), to_unit) if converted is not None else None


def threshold_text(bound: float, unit: str | None) -> str:
    """A rule threshold as written in the rule file (its defining unit): `8.5 mg/dL`."""
    return quantity(_plain(bound), unit)


def _plain(value: float) -> str:
    """A number written by a person (a threshold): as short as it was written, 8.5 not 8.50."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text
