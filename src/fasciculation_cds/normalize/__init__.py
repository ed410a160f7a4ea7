"""Resources to facts: codes to concepts, quantities to canonical units, status and recency.

One module per concern, each a function that returns what it makes: `labs` (lab Observations,
units), `calcium` (albumin correction), `conditions` (Conditions and sign Observations),
`derived` (facts from facts), `medications`, `procedures`, `context` (the closed-world
PatientContext).
Constants come from rules/derived.yaml; nothing here holds a threshold of its own.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import date, datetime

from ..facts import ClinicalFact, LabResult, PatientFact
from ..facts import PatientContext as PatientContext
from ..fhir_time import parse_date
from ..ingest import PatientRecord, SourcedResource
from ..ruleset import RuleSet
from .ages import with_ages
from .calcium import with_corrected_calcium
from .common import COUNTING_OBSERVATION_STATUS, Content, Notice, effective_time, reference_of
from .comparators import resolve_comparators
from .conditions import Coded, condition_facts, dedupe, observation_facts, recorded_concepts
from .context import patient_context
from .derived import body_site_findings, diabetes_from_hba1c
from .labs import LabReading, lab_facts, read_lab
from .medications import draft_order_facts, medication_facts
from .named_together import without_ambiguous_groups
from .procedures import procedure_facts
from .questions import question_facts
from .sign_groups import counted_sign_groups

__all__ = ["NormalizedPatient", "Normalizer", "Notice"]


@dataclass
class NormalizedPatient:
    patient: PatientFact
    facts: list[ClinicalFact]
    context: PatientContext
    notices: list[Notice] = field(default_factory=list)


@dataclass
class _Observed:
    labs: list[LabReading] = field(default_factory=list)
    coded: list[Coded] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)


class Normalizer:
    """Normalizes patient records; the derived-fact constants are converted once, here."""

    def __init__(self, ruleset: RuleSet) -> None:
        self.content = Content.of(ruleset)

    def run(
        self, record: PatientRecord, as_of: datetime, *, assume_presentation: bool
    ) -> NormalizedPatient:
        content = self.content
        readings: list[LabReading] = []
        coded: list[Coded] = []
        notices: list[Notice] = []
        medications = []
        procedures = []
        recorded: set[str] = set()
        for sourced in sorted(record.resources, key=reference_of):
            resource_type = sourced.resource["resourceType"]
            if resource_type == "Observation":
                observed = self._observation(sourced, as_of, _sex(record))
                readings += observed.labs
                coded += observed.coded
                notices += observed.notices
            elif resource_type == "Condition":
                from_condition, recorded_by = condition_facts(content, sourced, as_of)
                coded += from_condition
                recorded |= recorded_by
            elif resource_type == "Procedure":
                performed, procedure_notices = procedure_facts(content, sourced, as_of)
                procedures += performed
                notices += procedure_notices
            elif resource_type in ("MedicationRequest", "MedicationStatement"):
                medications += medication_facts(content, sourced, as_of)
        readings, calcium_notices = with_corrected_calcium(content, readings)
        readings, comparator_notices = resolve_comparators(content, readings)
        notices += calcium_notices + comparator_notices
        labs: list[LabResult] = lab_facts(content, readings, as_of)
        coded += diabetes_from_hba1c(content, labs)
        coded += body_site_findings(content, coded)
        patient = _patient(record, as_of)
        coded = without_ambiguous_groups(content, dedupe(coded))
        coded, from_signs = counted_sign_groups(content, coded)
        coded = with_ages(coded, as_of)
        recorded |= recorded_concepts(content, coded) | from_signs
        facts: list[ClinicalFact] = [patient, *labs, *medications, *coded, *procedures,
                                     *draft_order_facts(content, record.draft_orders)]
        context = patient_context(content, record.reference, facts, assume_presentation,
                                  recorded, partial=bool(record.unreadable), as_of=as_of)
        return NormalizedPatient(patient, facts, context, notices)

    def _observation(self, sourced: SourcedResource, as_of: datetime,
                     sex: str | None = None) -> _Observed:
        """Route a counting Observation: lab concepts to readings, the rest to coded facts."""
        content = self.content
        resource = sourced.resource
        out = _Observed()
        if resource.get("status") not in COUNTING_OBSERVATION_STATUS:
            return out
        reference = reference_of(sourced)
        effective = effective_time(resource)
        matches = content.term.match_codeable(resource.get("code"))
        if effective is None:
            if matches:
                out.notices.append(Notice("no-effective-time", reference,
                                          f"{reference} has no effective time and was not used"))
            return out
        if effective > as_of:
            return out  # not yet known at as_of
        for match in matches:
            if content.term.concepts[match.concept].kind == "lab":
                reading, notices = read_lab(content, resource, match.concept, reference,
                                            effective)
                out.notices += notices
                if reading is not None:
                    out.labs.append(reading)
        out.coded, notices = observation_facts(content, resource, matches, reference, effective,
                                               as_of)
        out.coded += question_facts(content, resource, matches, reference, effective, as_of, sex)
        out.notices += notices
        return out


def _sex(record: PatientRecord) -> str | None:
    gender = record.patient.resource.get("gender") if record.patient else None
    return gender if isinstance(gender, str) else None


def _patient(record: PatientRecord, as_of: datetime) -> PatientFact:
    resource = record.patient.resource if record.patient else {}
    birth = _last_day(resource.get("birthDate"))
    age = None
    if birth is not None:
        day = as_of.date()
        age = day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))
    gender = resource.get("gender")
    return PatientFact(reference=record.reference, age=age,
                       sex=gender if isinstance(gender, str) else None)


def _last_day(value: object) -> date | None:
    """A birthDate as its last possible day: a partial date ("2010", "2010-05") must never make
    a child an adult (docs/clinical-basis.md (v3) Definitions "Age")."""
    first = parse_date(value)
    if first is None or not isinstance(value, str):
        return first
    if len(value) == 4:
        return date(first.year, 12, 31)
    if len(value) == 7:
        return date(first.year, first.month, calendar.monthrange(first.year, first.month)[1])
    return first
