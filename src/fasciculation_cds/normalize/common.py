"""What every normalization step shares: notices, FHIR status helpers, and the derived-fact
constants of rules/derived.yaml converted once into canonical units."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from ..fhir_time import Span, calendar_days, parse_datetime, parse_span, period_span
from ..ingest import SourcedResource
from ..ruleset import RuleSet
from ..terminology import Terminology, codings_of
from ..units import UnitTable, parse_number

COUNTING_OBSERVATION_STATUS = frozenset({"final", "amended", "corrected"})
SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class Notice:
    code: str
    reference: str
    message: str


def status_code(codeable: Any) -> str | None:
    if isinstance(codeable, Mapping):
        for coding in codings_of(codeable):
            if isinstance(coding, Mapping) and isinstance(coding.get("code"), str):
                return str(coding["code"])
    return None


def reference_of(sourced: SourcedResource) -> str:
    if sourced.reference:  # a result contained in a report: `DiagnosticReport/x#obs`
        return sourced.reference
    resource = sourced.resource
    if isinstance(resource.get("id"), str):
        return f"{resource['resourceType']}/{resource['id']}"
    return f"{resource['resourceType']} at {sourced.source} {sourced.entry}"


def number(value: Any) -> Fraction | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        return None
    try:
        return parse_number(value)
    except (ValueError, ZeroDivisionError, ArithmeticError):
        return None


def effective_span(resource: Mapping[str, Any]) -> tuple[Span | None, bool]:
    """When an Observation happened, and whether that came from `issued` (v3 clinical basis "Time":
    without effective[x] an Observation is dated by its `issued`)."""
    for key in ("effectiveDateTime", "effectiveInstant"):
        if key in resource:
            return parse_span(resource[key]), False
    if "effectivePeriod" in resource:
        return period_span(resource["effectivePeriod"]), False
    issued = parse_datetime(resource.get("issued"))
    return (Span(issued, issued, issued) if issued else None), True


def effective_time(resource: Mapping[str, Any]) -> datetime | None:
    """The instant an Observation is ordered by ("latest"), `issued` as the fallback."""
    span, _ = effective_span(resource)
    return span.order if span else None


def days_between(earlier: datetime, later: datetime) -> float:
    """Whole UTC calendar days (v3 clinical basis "Time"); look-backs compare it with `<=`."""
    return float(calendar_days(earlier, later))


@dataclass(frozen=True)
class Constants:
    """derived.yaml in canonical units (the schema and references were checked at load)."""

    sign_lookback_days: float
    ca_per_albumin: Fraction
    reference_albumin: Fraction
    reference_albumin_text: str
    plausible_albumin_low: Fraction
    plausible_albumin_high: Fraction | None
    albumin_window_days: int
    ck_concept: str
    ck_default: Fraction
    hba1c_concept: str
    hba1c_threshold: Fraction
    hba1c_lookback_days: float
    diabetes_concept: str

    @classmethod
    def of(cls, ruleset: RuleSet) -> Constants:
        derived, units = ruleset.derived, ruleset.units

        def canonical(concept: str, value: Any, unit: str) -> Fraction:
            converted = units.to_canonical(concept, parse_number(value), unit)
            if converted is None:  # check_derived has refused this already
                raise ValueError(f"derived.yaml: {value} {unit} does not convert for {concept}")
            return converted

        correction = derived.albumin_corrected_calcium
        high = correction.plausible_albumin_at_most
        ck = derived.creatine_kinase_upper_limit
        diabetes = derived.diabetes_by_hba1c
        return cls(
            sign_lookback_days=float(derived.sign_lookback_days),
            ca_per_albumin=canonical("calcium-total", correction.slope.value,
                                     correction.slope.unit)
            / canonical("albumin", 1, correction.slope.per),
            reference_albumin=canonical("albumin", correction.reference_albumin.value,
                                        correction.reference_albumin.unit),
            reference_albumin_text=(f"{correction.reference_albumin.value} "
                                    f"{correction.reference_albumin.unit}"),
            plausible_albumin_low=canonical("albumin", correction.plausible_albumin_at_least.value,
                                            correction.plausible_albumin_at_least.unit),
            plausible_albumin_high=canonical("albumin", high.value, high.unit) if high else None,
            albumin_window_days=correction.max_days_apart,
            ck_concept=ck.concept,
            ck_default=canonical(ck.concept, ck.default.value, ck.default.unit),
            hba1c_concept=diabetes.concept,
            hba1c_threshold=canonical(diabetes.concept, diabetes.at_least.value,
                                      diabetes.at_least.unit),
            hba1c_lookback_days=float(diabetes.lookback_days),
            diabetes_concept=diabetes.yields,
        )


@dataclass(frozen=True)
class Content:
    """The parts of a rule set normalization reads."""

    ruleset: RuleSet
    term: Terminology
    units: UnitTable
    constants: Constants

    @classmethod
    def of(cls, ruleset: RuleSet) -> Content:
        return cls(ruleset, ruleset.terminology, ruleset.units, Constants.of(ruleset))
