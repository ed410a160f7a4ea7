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
    assumed: dict[str, Number] = Field(
        default_factory=dict, description="Units read as another under these codes, with a "
        "notice `unit-assumed` (eGFR in mL/min: v3 clinical basis 'eGFR units').")
    without_unit: Number | None = Field(
        default=None, description="Factor for a value sent with no unit (a score).")

    @field_validator("to_canonical")
    @classmethod
    def _factors(
        cls, value: dict[str, ConversionSpec | Number]
    ) -> dict[str, ConversionSpec | Number]:
        for factor in value.values():
            if not isinstance(factor, ConversionSpec):
                _exact(factor)
        return value


AgeUnit = Literal["years", "months", "weeks", "days", "hours", "minutes"]


class UnitsFile(_Strict):
    analytes: dict[str, AnalyteSpec]
    aliases: dict[str, str] = Field(default_factory=dict)
    age_units: dict[str, AgeUnit] = Field(
        default_factory=dict, description="FHIR Age units (UCUM code or spelling, lower case) "
        "and the calendar unit each means (Condition.onsetAge, onsetRange).")


# --- text-matches.yaml -------------------------------------------------------------------------


class BodySiteRule(_Strict):
    when_concept: str
    site_words: list[str] = Field(min_length=1)


class NegationCues(_Strict):
    """Negation within a clause (docs/clinical-basis.md, "Negation and text context")."""

    before: list[str] = Field(min_length=1, description="Cues before the term: 'no', 'denies'.")
    after: list[str] = Field(min_length=1, description="Cues after the term: 'absent'.")
    clause_breaks: list[str] = Field(
        min_length=1, description="Contrast words that end a clause ('but'); '.', ';' and line "
        "breaks always do.")
    assertion_words: list[str] = Field(
        default_factory=list, description="Words that end a negation or hedge ('present').")
    pseudo: list[str] = Field(
        default_factory=list, description="Pseudo-negations that negate nothing ('no change in').")
    double_negatives: list[str] = Field(
        default_factory=list, description="Negated cues: the term is asserted but uncertain "
        "('not ruled out').")
    post_cue_bridge: list[str] = Field(
        default_factory=list, description="What may stand between a term and its post-cue.")
    list_joiners: list[str] = Field(
        default_factory=list, description="Words joining a list of terms after a comma.")
    window_words: int = Field(default=6, ge=1, description="A pre-cue reaches terms starting "
                              "within this many words after it.")


class TextContextCues(_Strict):
    """Whose concept a text names, and how sure it is (docs/clinical-basis.md, "Negation and
    text context")."""

    hedges_before: list[str] = Field(min_length=1)
    hedges_after: list[str] = Field(default_factory=list)
    relatives: list[str] = Field(min_length=1)
    relative_joiners: list[str] = Field(default_factory=list)
    concern_cues: list[str] = Field(default_factory=list)
    concern_cues_with_subject: list[str] = Field(default_factory=list)
    concern_subjects: list[str] = Field(default_factory=list)
    mnd_concept: str
    suspected_concept: str
    family_history_concept: str
    concern_concept: str


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
    text_context: TextContextCues | None = None
    unclear_signs: dict[str, list[str]] = Field(default_factory=dict)
    body_part_words: list[str] = Field(default_factory=list)
    capitals_only: list[str] = Field(default_factory=list)
    max_text_chars: int = Field(default=20_000, ge=1)


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


class ChildWording(_Strict):
    """docs/clinical-basis.md (v3) "Age" and "Presentation of findings": a patient under
    `under_years` at as_of is a child; a card whose finding used a lab result (or of one of
    `categories`) adds `line`."""

    under_years: int = Field(ge=1)
    line: str = Field(min_length=1)
    categories: list[str] = Field(default_factory=list)


class NamedTogether(_Strict):
    """One record (a code, or a text) naming all of `concepts` (R25.2 "Cramp and spasm") is
    ambiguous: its facts of these concepts are not members of `not_in_groups`."""

    concepts: list[str] = Field(min_length=2)
    not_in_groups: list[str] = Field(min_length=1)


class QuestionCode(_Strict):
    """docs/clinical-basis.md (v3) "Question codes": an Observation of a question concept counts
    by its value only: a total at or above `at_least` (by Patient.gender, `otherwise` for any
    other or unknown sex), or a coded value in the `answers` concept, yields the concept
    `yields`."""

    yields: str
    at_least: dict[str, float] = Field(default_factory=dict)
    units: list[str] = Field(default_factory=list, description="Units a total may carry; "
                             "\"\" for none.")
    answers: str | None = None
class SameTimeTiers(_Strict):
    """Same-time ties of one lab concept decided by the code before the value (v3 clinical basis
    "Same-time results", eGFR): concepts whose codes rank first, and last."""

    first: list[str] = Field(default_factory=list)
    last: list[str] = Field(default_factory=list)


class KidneyByEgfr(_Strict):
    """v3 clinical basis `metabolic.kidney-failure`: advanced CKD by two low eGFRs far enough apart,
    and "a fall" from an earlier eGFR; each derives a lab concept holding the earlier result."""

    concept: str
    below: Quantity
    lookback_days: int = Field(ge=0)
    chronic_days_apart: int = Field(ge=0)
    fall_ratio: Number
    earlier_low_yields: str
    before_fall_yields: str

    _check_ratio = field_validator("fall_ratio")(_exact)


class RecentOnlyWindow(_Strict):
    days: int = Field(ge=0)
    concepts: list[str] = Field(min_length=1)


class NotCounted(_Strict):
    group: str
    when_present: str


class GroupSet(_Strict):
    groups: list[str] = Field(min_length=1)
    not_counted: list[NotCounted] = Field(default_factory=list)


class QualifyingCondition(_Strict):
    """What lets a Condition remove or cap a red-flag group (docs/clinical-basis.md, explaining
    conditions, v3): coded, confirmed or without a verificationStatus, not doubted by its
    text."""

    verification: list[str | None] = Field(min_length=1)
    certainty: list[str] = Field(min_length=1)
    matched_by: list[str] = Field(min_length=1)


class ConditionalMember(_Strict):
    """A sign that is in `group` only while one of `when_any_present` is present."""

    group: str
    when_any_present: list[str] = Field(min_length=1)


class Explaining(_Strict):
    """Conditions (a group) that take the `removes` signs out of the sign groups."""

    conditions_group: str
    removes: list[str] = Field(min_length=1)
    not_removed_by: dict[str, list[str]] = Field(default_factory=dict)
    yields: str
    """Derived concept present when a recorded sign was removed."""
    group: str
    """The group a removed sign carries instead (a rule can list those signs)."""


class Yields(_Strict):
    """A derived concept present when the test holds, and the group a fact then carries."""

    yields: str
    group: str | None = None


class Cap(_Strict):
    concepts: list[str] = Field(min_length=1)
    yields: str


class Established(_Strict):
    concept: str
    otherwise: str


class FasciculationPresentation(_Strict):
    concepts: list[str] = Field(min_length=1)
    yields: str
    uncertain_only: str


class SignGroups(_Strict):
    """How recorded signs form the groups a rule counts (docs/clinical-basis.md, Motor neuron
    disease, v3): which facts form a group for this patient, and the derived concepts it
    yields."""

    sign_groups: list[str] = Field(min_length=1)
    forming_certainty: list[str] = Field(min_length=1)
    unclear: Yields
    conditional: dict[str, ConditionalMember] = Field(default_factory=dict)
    explaining: Explaining
    qualifying_condition: QualifyingCondition
    cap: Cap
    established: Established
    fasciculation_presentation: FasciculationPresentation


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
    recent_only_windows: list[RecentOnlyWindow] = Field(
        default_factory=list, description="Recent-only concepts with their own window (days); "
        "`recent_only_conditions` holds the default window.")
    same_time_tiers: dict[str, SameTimeTiers] = Field(default_factory=dict)
    kidney_by_egfr: KidneyByEgfr | None = None
    established_conditions: dict[str, list[str]] = Field(
        default_factory=dict, description="A derived concept made by a coded Condition of "
        "these concepts, verificationStatus confirmed or absent, not doubted by its own text.")
    counted_group_sets: dict[str, GroupSet] = Field(default_factory=dict)
    sign_groups: SignGroups | None = None
    lab_families: dict[str, list[str]] = Field(default_factory=dict)
    child: ChildWording | None = None
    named_together: list[NamedTogether] = Field(default_factory=list)
    question_codes: dict[str, QuestionCode] = Field(default_factory=dict)


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
