"""Resources to facts: codes to concepts, quantities to canonical units, status and recency.

One module per concern, each a function that returns what it makes: `labs` (lab Observations,
units), `calcium` (albumin correction), `conditions` (Conditions and sign Observations),
`derived` (facts from facts), `medications`, `procedures`, `context` (the closed-world
PatientContext).
Constants come from rules/derived.yaml; nothing here holds a threshold of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from ..facts import ClinicalFact, LabResult, PatientFact
from ..facts import PatientContext as PatientContext
from ..fhir_time import age_in_years, birth_date, utc_day
from ..ingest import MEDICATION_USE_TYPES, PatientRecord, SourcedResource
from ..ruleset import RuleSet
from .ages import with_ages
from .calcium import with_corrected_calcium
from .common import COUNTING_OBSERVATION_STATUS, Content, Notice, effective_span, reference_of
from .comparators import resolve_comparators
from .conditions import Coded, condition_facts, dedupe, observation_facts, recorded_concepts
from .context import patient_context
from .derived import body_site_findings, diabetes_from_hba1c
from .family_history import family_history_facts
from .kidney import established_conditions, kidney_readings
from .labs import UNIT_ASSUMED, LabReading, lab_facts, read_lab
from .medications import draft_order_facts, medication_facts
from .named_together import without_ambiguous_groups
from .onset import onset_notices
from .plausible import IMPLAUSIBLE, implausible_value, plausible_ranges_only, unit_from_text
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
        birth = birth_date((record.patient.resource if record.patient else {}).get("birthDate"))
        for sourced in sorted(record.resources, key=reference_of):
            resource_type = sourced.resource["resourceType"]
            if resource_type == "Observation":
                observed = self._observation(sourced, as_of, _sex(record))
                readings += observed.labs
                coded += observed.coded
                notices += observed.notices
            elif resource_type == "Condition":
                from_condition, recorded_by, condition_notices = condition_facts(
                    content, sourced, as_of, birth)
                notices += onset_notices(content, sourced.resource,
                                         _condition_concepts(content, sourced.resource), birth,
                                         reference_of(sourced))
                coded += from_condition
                recorded |= recorded_by
                notices += condition_notices
            elif resource_type == "FamilyMemberHistory":
                coded += family_history_facts(content, sourced)
            elif resource_type == "Procedure":
                performed, procedure_notices = procedure_facts(content, sourced, as_of)
                procedures += performed
                notices += procedure_notices
            elif resource_type in MEDICATION_USE_TYPES:
                medications += medication_facts(content, sourced, as_of)
        readings, calcium_notices = with_corrected_calcium(content, readings)
        readings, comparator_notices = resolve_comparators(content, readings)
        readings += kidney_readings(content, readings, as_of)
        notices += calcium_notices + comparator_notices
        made = lab_facts(content, readings, as_of)
        labs: list[LabResult] = made.facts
        notices = _one_unit_assumed(notices + made.notices)
        coded += diabetes_from_hba1c(content, labs)
        coded += body_site_findings(content, coded)
        patient = _patient(record, as_of)
        coded = without_ambiguous_groups(content, dedupe(coded))
        coded += established_conditions(content, coded)
        coded, from_signs = counted_sign_groups(content, coded)
        coded = with_ages(coded, as_of)
        recorded |= recorded_concepts(content, coded) | from_signs
        facts: list[ClinicalFact] = [patient, *labs, *medications, *coded, *procedures,
                                     *draft_order_facts(content, record.draft_orders)]
        # a result that is no measurement could hold the patient's data, as an unreadable
        # resource could: the assessment is partial either way (benign reassurance blocked)
        implausible = any(n.code == IMPLAUSIBLE for n in notices)
        context = patient_context(content, record.reference, facts, assume_presentation,
                                  recorded, partial=bool(record.unreadable) or implausible or any(
                                      n.code == "resource-unreadable" for n in notices),
                                  as_of=as_of, conflicting=made.conflicting)
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
        span, from_issued = effective_span(resource)
        matches = content.term.match_codeable(resource.get("code"))
        if span is None:
            if matches:
                out.notices.append(Notice("no-effective-time", reference,
                                          f"{reference} has no effective time nor issued time "
                                          "and was not used"))
            return out
        if span.start > as_of:
            return out  # not yet known at as_of
        if from_issued and matches:
            out.notices.append(Notice(
                "time-from-issued", reference,
                f"{reference} has no effective time; dated by its issued time "
                f"{span.order.isoformat()}"))
        effective = span.order if span.order <= as_of else as_of
        for match in matches:
            if content.term.concepts[match.concept].kind == "lab":
                implausible = implausible_value(content, resource, match.concept, reference)
                if implausible is not None:  # not evaluated, named (docs/clinical-basis.md)
                    out.notices.append(implausible)
                    continue
                read, range_notices = plausible_ranges_only(content, resource, match.concept,
                                                            reference)
                out.notices += range_notices
                reading, notices = read_lab(content, read, match.concept, reference,
                                            effective)
                out.notices += notices
                if reading is not None:
                    out.labs.append(replace(reading, last=span.until(as_of)))
                    from_text = unit_from_text(content, resource, match.concept, reference)
                    out.notices += [from_text] if from_text is not None else []
        out.coded, notices = observation_facts(content, resource, reference, effective, as_of)
        out.coded += question_facts(content, resource, matches, reference, effective, as_of, sex)
        out.notices += notices
        return out


def _sex(record: PatientRecord) -> str | None:
    gender = record.patient.resource.get("gender") if record.patient else None
    return gender if isinstance(gender, str) else None


def _patient(record: PatientRecord, as_of: datetime) -> PatientFact:
    resource = record.patient.resource if record.patient else {}
    birth = birth_date(resource.get("birthDate"))  # a partial date: its last day (v3 "Age")
    age = age_in_years(birth, utc_day(as_of)) if birth is not None else None
    gender = resource.get("gender")
    return PatientFact(reference=record.reference, age=age,
                       sex=gender if isinstance(gender, str) else None)


def _condition_concepts(content: Content, resource: Mapping[str, Any]) -> list[str]:
    return [m.concept for m in content.term.match_codeable(resource.get("code"))]


def _one_unit_assumed(notices: list[Notice]) -> list[Notice]:
    """One `unit-assumed` notice per patient (v3 clinical basis "eGFR units"), the first kept."""
    seen = False
    out = []
    for notice in notices:
        if notice.code == UNIT_ASSUMED:
            if seen:
                continue
            seen = True
        out.append(notice)
    return out
