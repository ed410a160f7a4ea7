"""Schemas of the content files in rules/ (value sets, code systems, units, text matches, derived
facts), as pydantic models checked when the rules load.

A missing or misspelled key fails the load with the file and the key named, instead of a bare
KeyError much later. Rule files have their own schema (rule_schema.py).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator

from .units import parse_number

ConceptKind = Literal[
    "finding", "condition", "medication", "lab", "answer", "question", "procedure"
]
Number = int | float | str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


def _exact(value: Number) -> Number:
    try:
        parse_number(value)
    except (ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"not a number: {value!r}") from exc
    return value


# --- valuesets/codes.yaml, valuesets/systems.yaml ----------------------------------------------


class CodingSpec(_Strict):
    system: str
    code: str
    display: str | None = None
    verified: str | bool | None = None
    note: str | None = None
    tty: str | None = None
    unit: str | None = None


class ConceptSpec(_Strict):
    kind: ConceptKind
    label: str
    codings: list[CodingSpec] = Field(default_factory=list)
    uncoded_systems: dict[str, str] | None = None
    match_prefixes: dict[str, list[str]] | None = None
    note: str | None = None


class ValueSets(_Strict):
    version: int
    notes: list[str] = Field(default_factory=list)
    concepts: dict[str, ConceptSpec]
    classes: dict[str, list[str]] = Field(default_factory=dict)
    groups: dict[str, list[str]] = Field(default_factory=dict)


class SystemSpec(_Strict):
    uri: str
    aliases: list[str] = Field(default_factory=list)
    dotless: bool = False
    ingredient_fallback: bool = False


class Systems(RootModel[dict[str, SystemSpec]]):
    pass


# --- units.yaml --------------------------------------------------------------------------------


class ConversionSpec(_Strict):
    factor: Number
    offset: Number = 0

    _check_factor = field_validator("factor", "offset")(_exact)


class AnalyteSpec(_Strict):
    canonical: str
    concepts: list[str] = Field(min_length=1)
    to_canonical: dict[str, ConversionSpec | Number]

    @field_validator("to_canonical")
    @classmethod
    def _factors(
        cls, value: dict[str, ConversionSpec | Number]
    ) -> dict[str, ConversionSpec | Number]:
        for factor in value.values():
            if not isinstance(factor, ConversionSpec):
                _exact(factor)
        return value


class UnitsFile(_Strict):
    analytes: dict[str, AnalyteSpec]
    aliases: dict[str, str] = Field(default_factory=dict)


# --- text-matches.yaml -------------------------------------------------------------------------


class BodySiteRule(_Strict):
    when_concept: str
    site_words: list[str] = Field(min_length=1)


class NegationCues(_Strict):
    """Negation within a clause (docs/clinical-basis.md, Definitions, "Negation")."""

    before: list[str] = Field(min_length=1, description="Cues before the term: 'no', 'denies'.")
    after: list[str] = Field(min_length=1, description="Cues after the term: 'absent'.")
    clause_breaks: list[str] = Field(
        min_length=1, description="Words that end a clause ('but'); '.', ';' and line breaks "
        "always do.")


class ObservationValueWords(_Strict):
    """Words of a sign Observation's valueString / valueCodeableConcept text."""

    negative: list[str] = Field(min_length=1)
    positive: list[str] = Field(min_length=1)


class TextMatches(_Strict):
    text: dict[str, list[str]] = Field(default_factory=dict)
    body_site: dict[str, BodySiteRule] = Field(default_factory=dict)
    medication_names: dict[str, list[str]] = Field(default_factory=dict)
    negation: NegationCues | None = None
    observation_values: ObservationValueWords | None = None


# --- derived.yaml ------------------------------------------------------------------------------


class Quantity(_Strict):
    value: Number
    unit: str

    _check_value = field_validator("value")(_exact)

    @property
    def exact(self) -> Fraction:
        return parse_number(self.value)


class Slope(Quantity):
    per: str


class AlbuminCorrection(_Strict):
    reference_albumin: Quantity
    slope: Slope
    max_days_apart: int = Field(ge=0)
    plausible_albumin_at_least: Quantity
    plausible_albumin_at_most: Quantity | None = None
    source: str | None = None


class DiabetesByHbA1c(_Strict):
    concept: str
    at_least: Quantity
    lookback_days: int = Field(ge=0)
    yields: str


class CreatineKinaseUpperLimit(_Strict):
    concept: str
    default: Quantity


class DerivedConcept(_Strict):
    """A concept normalization derives; rules name it like a value-set concept."""

    kind: ConceptKind
    label: str
    groups: list[str] = Field(default_factory=list)


class UnconfirmedDiagnosis(_Strict):
    verification: list[str] = Field(min_length=1)
    yields: str


class RecentOnly(_Strict):
    days: int = Field(ge=0)
    concepts: list[str] = Field(default_factory=list)


class NotCounted(_Strict):
    group: str
    when_present: str


class GroupSet(_Strict):
    groups: list[str] = Field(min_length=1)
    not_counted: list[NotCounted] = Field(default_factory=list)


class DerivedFile(_Strict):
    albumin_corrected_calcium: AlbuminCorrection
    diabetes_by_hba1c: DiabetesByHbA1c
    creatine_kinase_upper_limit: CreatineKinaseUpperLimit
    sign_lookback_days: int = Field(ge=0)
    presentation_group: str
    derived_concepts: dict[str, DerivedConcept] = Field(default_factory=dict)
    unconfirmed_diagnoses: dict[str, UnconfirmedDiagnosis] = Field(default_factory=dict)
    recorded_conditions: dict[str, str] = Field(default_factory=dict)
    recent_only_conditions: RecentOnly = Field(default_factory=lambda: RecentOnly(days=0))
    counted_group_sets: dict[str, GroupSet] = Field(default_factory=dict)
    lab_families: dict[str, list[str]] = Field(default_factory=dict)


# --- presentation.yaml -------------------------------------------------------------------------


class SignSetWords(_Strict):
    label: str
    groups: dict[str, str] = Field(default_factory=dict)


class CheckedWords(_Strict):
    analytes: dict[str, str] = Field(default_factory=dict)
    sign_sets: dict[str, SignSetWords] = Field(default_factory=dict)


ProvenanceName = Literal["measured", "corrected", "lab-corrected"]


class PresentationFile(_Strict):
    """rules/presentation.yaml: headline order, evidence labels, the checked section's words."""

    headline_order: list[str] = Field(default_factory=list)
    lab_labels: dict[str, dict[ProvenanceName, str]] = Field(default_factory=dict)
    checked: CheckedWords = Field(default_factory=CheckedWords)

    @field_validator("headline_order")
    @classmethod
    def _no_repeats(cls, order: list[str]) -> list[str]:
        repeated = sorted({rule for rule in order if order.count(rule) > 1})
        if repeated:
            raise ValueError(f"listed more than once: {', '.join(repeated)}")
        return order
