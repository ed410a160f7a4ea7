"""Resources to facts: codes to concepts, quantities to canonical units, status and recency.

Also computes the derived facts (albumin-corrected calcium, diabetes from HbA1c, tongue
fasciculation from a body site) and the closed-world PatientContext. Constants come from
rules/derived.yaml; nothing here holds a threshold of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from typing import Any

from .facts import (
    ClinicalFact,
    DraftOrder,
    Finding,
    LabResult,
    Medication,
    PatientContext,
    PatientFact,
    Problem,
)
from .fhir_time import iso_day, parse_date, parse_datetime
from .ingest import PatientRecord, SourcedResource, canonical_reference
from .ruleset import RuleSet
from .terminology import MATCHED_BY_CODE, ConceptMatch
from .units import parse_number

COUNTING_OBSERVATION_STATUS = frozenset({"final", "amended", "corrected"})
ACTIVE_CONDITION_STATUS = frozenset({"active", "recurrence", "relapse"})
EXCLUDED_VERIFICATION = frozenset({"refuted", "entered-in-error"})
ACTIVE_REQUEST_STATUS = frozenset({"active", "on-hold"})
ACTIVE_REQUEST_INTENT = frozenset({"order", "original-order", "instance-order", "plan"})
ACTIVE_STATEMENT_STATUS = frozenset({"active", "intended"})
SECONDS_PER_DAY = 86400.0
# "Days since last measured" for a lab never measured: larger than any look-back.
NEVER_MEASURED_DAYS = 1_000_000.0


@dataclass(frozen=True)
class Notice:
    code: str
    reference: str
    message: str


@dataclass
class NormalizedPatient:
    patient: PatientFact
    facts: list[ClinicalFact]
    context: PatientContext
    notices: list[Notice] = field(default_factory=list)


@dataclass
class _Lab:
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


def _status_code(codeable: Any) -> str | None:
    if isinstance(codeable, Mapping):
        for coding in codeable.get("coding") or []:
            if isinstance(coding, Mapping) and isinstance(coding.get("code"), str):
                return str(coding["code"])
    return None


def _reference_of(sourced: SourcedResource) -> str:
    resource = sourced.resource
    if isinstance(resource.get("id"), str):
        return f"{resource['resourceType']}/{resource['id']}"
    return f"{resource['resourceType']} at {sourced.source} {sourced.entry}"


def _number(value: Any) -> Fraction | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return parse_number(value)
    except (ValueError, ZeroDivisionError):
        return None


def _effective(resource: Mapping[str, Any]) -> datetime | None:
    for key in ("effectiveDateTime", "effectiveInstant"):
        if key in resource:
            return parse_datetime(resource[key])
    period = resource.get("effectivePeriod")
    if isinstance(period, Mapping):
        return parse_datetime(period.get("end")) or parse_datetime(period.get("start"))
    return parse_datetime(resource.get("issued"))


class Normalizer:
    """Normalizes patient records; the derived-fact constants are converted once, here."""

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        self.term = ruleset.terminology
        self.units = ruleset.units
        self.derived = ruleset.derived
        self.sign_lookback = float(self.derived["sign_lookback_days"])
        correction = self.derived["albumin_corrected_calcium"]
        self.ca_per_albumin = self._canonical(
            "calcium-total", correction["slope"]) / self._canonical(
            "albumin", {"value": 1, "unit": correction["slope"]["per"]})
        self.reference_albumin = self._canonical("albumin", correction["reference_albumin"])
        self.plausible_albumin = self._canonical(
            "albumin", correction["plausible_albumin_at_least"])
        self.albumin_window = float(correction["max_days_apart"]) * SECONDS_PER_DAY
        self.albumin_window_days = correction["max_days_apart"]
        ck = self.derived["creatine_kinase_upper_limit"]
        self.ck_concept = str(ck["concept"])
        self.ck_default = self._canonical(self.ck_concept, ck["default"])
        diabetes = self.derived["diabetes_by_hba1c"]
        self.hba1c_concept = str(diabetes["concept"])
        self.hba1c_threshold = float(self._canonical(self.hba1c_concept, diabetes["at_least"]))
        self.hba1c_lookback = float(diabetes["lookback_days"])
        self.diabetes_concept = self.term.concepts[diabetes["yields"]]

    def _canonical(self, concept: str, quantity: Mapping[str, Any]) -> Fraction:
        value = self.units.to_canonical(concept, parse_number(quantity["value"]),
                                        str(quantity["unit"]))
        if value is None:
            raise ValueError(f"derived.yaml: {quantity} does not convert for {concept}")
        return value

    def run(
        self,
        record: PatientRecord,
        as_of: datetime,
        *,
        assume_presentation: bool,
        medications: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> NormalizedPatient:
        medications = medications or {}
        notices: list[Notice] = []
        labs: list[_Lab] = []
        coded: list[Problem | Finding] = []
        meds: list[Medication] = []
        for sourced in sorted(record.resources, key=_reference_of):
            resource_type = sourced.resource["resourceType"]
            if resource_type == "Observation":
                self._observation(sourced, as_of, labs, coded, notices)
            elif resource_type == "Condition":
                self._condition(sourced, as_of, coded)
            elif resource_type in ("MedicationRequest", "MedicationStatement"):
                self._medication(sourced, as_of, meds, medications)
        labs += self._corrected_calcium(labs, notices)
        lab_facts = self._lab_facts(labs, as_of)
        coded += self._derived_problems(lab_facts)
        coded += self._body_site_findings(record, coded, as_of)
        patient = self._patient(record, as_of)
        facts: list[ClinicalFact] = [patient, *lab_facts, *meds, *_dedupe(coded),
                                     *self._draft_orders(record, medications)]
        context = self._context(record.reference, facts, assume_presentation)
        return NormalizedPatient(patient, facts, context, notices)

    # --- Patient ---------------------------------------------------------------------------

    def _patient(self, record: PatientRecord, as_of: datetime) -> PatientFact:
        resource = record.patient.resource if record.patient else {}
        birth = parse_date(resource.get("birthDate"))
        age = None
        if birth is not None:
            day = as_of.date()
            age = day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))
        gender = resource.get("gender")
        return PatientFact(reference=record.reference, age=age, birth_date=birth,
                           sex=gender if isinstance(gender, str) else None)

    # --- Observations ------------------------------------------------------------------------

    def _observation(
        self,
        sourced: SourcedResource,
        as_of: datetime,
        labs: list[_Lab],
        coded: list[Problem | Finding],
        notices: list[Notice],
    ) -> None:
        resource = sourced.resource
        if resource.get("status") not in COUNTING_OBSERVATION_STATUS:
            return
        reference = _reference_of(sourced)
        effective = _effective(resource)
        matches = self.term.match_codeable(resource.get("code"))
        if effective is None:
            if matches:
                notices.append(Notice("no-effective-time", reference,
                                      f"{reference} has no effective time and was not used"))
            return
        if effective > as_of:
            return  # not yet known at as_of
        for match in matches:
            kind = self.term.concepts[match.concept].kind
            if kind == "lab":
                lab = self._lab(resource, match.concept, reference, effective, notices)
                if lab is not None:
                    labs.append(lab)
            elif resource.get("valueBoolean") is not False:
                age = (as_of - effective).total_seconds() / SECONDS_PER_DAY
                if age <= self.sign_lookback:
                    coded.append(self._coded_fact(match, reference, effective, resource))

    def _lab(
        self,
        resource: Mapping[str, Any],
        concept: str,
        reference: str,
        effective: datetime,
        notices: list[Notice],
    ) -> _Lab | None:
        label = self.term.concepts[concept].label
        quantity = resource.get("valueQuantity")
        raw_value = quantity.get("value") if isinstance(quantity, Mapping) else None
        value = _number(raw_value)
        if value is None or not isinstance(quantity, Mapping):
            notices.append(Notice("no-numeric-value", reference,
                                  f"{label} result {reference} has no numeric value"))
            return None
        unit = quantity.get("code") or quantity.get("unit")
        unit = unit if isinstance(unit, str) else None
        canonical = self.units.to_canonical(concept, value, unit)
        if canonical is None and quantity.get("unit") and quantity.get("unit") != unit:
            unit = str(quantity["unit"])  # a UCUM code we cannot read; try the printed unit
            canonical = self.units.to_canonical(concept, value, unit)
        if canonical is None:
            shown = f"unit '{unit}'" if unit else "no unit"
            notices.append(Notice(
                "unit-not-convertible", reference,
                f"{label} result {reference} has {shown}, which cannot be converted to "
                f"{self.units.canonical_unit(concept)}; it was not used"))
            return None
        low = high = None
        for ref_range in resource.get("referenceRange") or []:
            if isinstance(ref_range, Mapping):
                low = low or self._range_bound(concept, ref_range.get("low"))
                high = high or self._range_bound(concept, ref_range.get("high"))
        comparator = quantity.get("comparator")
        return _Lab(
            concept=concept, value=canonical, original_value=str(raw_value),
            original_unit=unit, comparator=comparator if isinstance(comparator, str) else None,
            effective=effective, reference=reference, low=low, high=high,
            interpretation=_interpretation(resource),
        )

    def _range_bound(self, concept: str, quantity: Any) -> Fraction | None:
        if not isinstance(quantity, Mapping):
            return None
        value = _number(quantity.get("value"))
        unit = quantity.get("code") or quantity.get("unit") or self.units.canonical_unit(concept)
        if value is None or not isinstance(unit, str):
            return None
        return self.units.to_canonical(concept, value, unit)

    def _corrected_calcium(self, labs: list[_Lab], notices: list[Notice]) -> list[_Lab]:
        """Albumin-corrected total calcium (Payne), or the uncorrected total with a note."""
        window = self.albumin_window
        albumins = []
        for lab in labs:
            if lab.concept != "albumin":
                continue
            if lab.value < self.plausible_albumin:
                notices.append(Notice(
                    "albumin-implausible", lab.reference,
                    f"albumin {lab.original_value} {lab.original_unit} ({lab.reference}) is "
                    "implausibly low for its unit (g/dL sent as g/L?); not used to correct "
                    "calcium"))
                continue
            albumins.append(lab)
        corrected = []
        for lab in labs:
            if lab.concept != "calcium-total":
                continue
            near = [a for a in albumins
                    if abs((a.effective - lab.effective).total_seconds()) <= window]
            near.sort(key=lambda a: (abs((a.effective - lab.effective).total_seconds()),
                                     -a.effective.timestamp(), a.reference))
            if near:
                albumin = near[0]
                value = lab.value + self.ca_per_albumin * (self.reference_albumin - albumin.value)
                note = (f"corrected for albumin {albumin.original_value} {albumin.original_unit} "
                        f"({albumin.reference}, {iso_day(albumin.effective)})")
                derived_from: tuple[str, ...] = (lab.reference, albumin.reference)
            else:
                value = lab.value
                note = ("not corrected: no albumin within "
                        f"{self.albumin_window_days} days of this calcium")
                derived_from = (lab.reference,)
            corrected.append(_Lab(
                concept="calcium-corrected", value=value, original_value=lab.original_value,
                original_unit=lab.original_unit, comparator=lab.comparator,
                effective=lab.effective, reference=lab.reference, low=None, high=None,
                interpretation=None, derived_from=derived_from, note=note))
        return corrected

    def _lab_facts(self, labs: list[_Lab], as_of: datetime) -> list[LabResult]:
        by_concept: dict[str, list[_Lab]] = {}
        for lab in labs:
            by_concept.setdefault(lab.concept, []).append(lab)
        facts = []
        for concept in sorted(by_concept):
            # newest first; same instant: the lowest value first, then by reference (deterministic)
            ordered = sorted(by_concept[concept],
                             key=lambda lab: (-lab.effective.timestamp(), lab.value, lab.reference))
            seen: set[tuple[str, str]] = set()
            label = self.term.concepts[concept].label
            unit = self.units.canonical_unit(concept) or ""
            for index, lab in enumerate(ordered):
                if (lab.reference, str(lab.value)) in seen:
                    continue
                seen.add((lab.reference, str(lab.value)))
                above = None
                if concept == self.ck_concept:
                    limit = lab.high if lab.high is not None else self.ck_default
                    above = lab.value > limit
                facts.append(LabResult(
                    reference=lab.reference, concept=concept, label=label,
                    value=float(lab.value), unit=unit, original_value=lab.original_value,
                    original_unit=lab.original_unit, comparator=lab.comparator,
                    effective=lab.effective,
                    age_days=(as_of - lab.effective).total_seconds() / SECONDS_PER_DAY,
                    is_latest=index == 0,
                    reference_low=float(lab.low) if lab.low is not None else None,
                    reference_high=float(lab.high) if lab.high is not None else None,
                    interpretation=lab.interpretation, above_upper_limit=above,
                    derived_from=lab.derived_from, note=lab.note))
        return facts

    def _derived_problems(self, labs: list[LabResult]) -> list[Problem | Finding]:
        out: list[Problem | Finding] = []
        concept = self.diabetes_concept
        for lab in labs:
            if (lab.concept == self.hba1c_concept and lab.is_latest
                    and lab.age_days <= self.hba1c_lookback
                    and lab.value >= self.hba1c_threshold):
                out.append(Problem(
                    reference=lab.reference, concept=concept.id, label=concept.label,
                    groups=concept.groups, matched_by=f"derived from {lab.label}",
                    onset=lab.effective))
        return out

    # --- Conditions --------------------------------------------------------------------------

    def _condition(
        self, sourced: SourcedResource, as_of: datetime, coded: list[Problem | Finding]
    ) -> None:
        resource = sourced.resource
        verification = _status_code(resource.get("verificationStatus"))
        if verification in EXCLUDED_VERIFICATION:
            return
        clinical = _status_code(resource.get("clinicalStatus"))
        if clinical is None:
            # R4 requires clinicalStatus on a live problem; without it, an abatement means resolved
            if any(key.startswith("abatement") for key in resource):
                return
        elif clinical not in ACTIVE_CONDITION_STATUS:
            return
        onset = parse_datetime(resource.get("onsetDateTime")) or parse_datetime(
            resource.get("recordedDate"))
        if onset is not None and onset > as_of:
            return
        reference = _reference_of(sourced)
        for match in self.term.match_codeable(resource.get("code")):
            if self.term.concepts[match.concept].kind in ("condition", "finding"):
                coded.append(self._coded_fact(match, reference, onset, resource,
                                              clinical=clinical, verification=verification))

    def _coded_fact(
        self,
        match: ConceptMatch,
        reference: str,
        when: datetime | None,
        resource: Mapping[str, Any],
        *,
        clinical: str | None = None,
        verification: str | None = None,
    ) -> Problem | Finding:
        concept = self.term.concepts[match.concept]
        if concept.kind == "condition":
            return Problem(reference=reference, concept=concept.id, label=concept.label,
                           groups=concept.groups, clinical_status=clinical,
                           verification_status=verification, onset=when,
                           matched_by=match.matched_by)
        return Finding(reference=reference, concept=concept.id, label=concept.label,
                       groups=concept.groups, body_site=_body_site_text(resource),
                       effective=when, matched_by=match.matched_by)

    def _body_site_findings(
        self, record: PatientRecord, coded: list[Problem | Finding], as_of: datetime
    ) -> list[Problem | Finding]:
        out: list[Problem | Finding] = []
        for base_concept, words, derived in self.term.body_site_rules:
            for fact in coded:
                if (isinstance(fact, Finding) and fact.concept == base_concept and fact.body_site
                        and any(w in fact.body_site.lower() for w in words)):
                    concept = self.term.concepts[derived]
                    out.append(Finding(reference=fact.reference, concept=concept.id,
                                       label=concept.label, groups=concept.groups,
                                       body_site=fact.body_site, effective=fact.effective,
                                       matched_by=f"{base_concept} with body site"))
        return out

    # --- Medications -------------------------------------------------------------------------

    def _medication(
        self,
        sourced: SourcedResource,
        as_of: datetime,
        meds: list[Medication],
        medications: Mapping[str, Mapping[str, Any]],
    ) -> None:
        resource = sourced.resource
        status = str(resource.get("status") or "")
        reference = _reference_of(sourced)
        if resource["resourceType"] == "MedicationRequest":
            active = status in ACTIVE_REQUEST_STATUS and resource.get("intent") in \
                ACTIVE_REQUEST_INTENT
            dispense = resource.get("dispenseRequest")
            validity = dispense.get("validityPeriod") if isinstance(dispense, Mapping) else None
            end = parse_datetime(validity.get("end")) if isinstance(validity, Mapping) else None
            started = parse_datetime(resource.get("authoredOn"))
        else:
            active = status in ACTIVE_STATEMENT_STATUS
            period = resource.get("effectivePeriod")
            end = parse_datetime(period.get("end")) if isinstance(period, Mapping) else None
            started = parse_datetime(resource.get("effectiveDateTime")) or (
                parse_datetime(period.get("start")) if isinstance(period, Mapping) else None)
        if end is not None and end < as_of:
            active = False
        if started is not None and started > as_of:
            active = False
        if not active:
            return
        codeable, display = self._medication_code(resource, medications)
        for match in self._medication_matches(codeable):
            concept = self.term.concepts[match.concept]
            meds.append(Medication(
                reference=reference, concept=concept.id, label=concept.label,
                classes=concept.classes, status=status, active=True, display=display,
                matched_by=match.matched_by, authored=started))

    def _medication_matches(self, codeable: Mapping[str, Any] | None) -> list[ConceptMatch]:
        """Ingredients of a medication: by code, else (last resort) by name in its display."""
        matches = [m for m in self.term.match_codeable(codeable)
                   if self.term.concepts[m.concept].kind == "medication"]
        return matches or self.term.match_ingredient_name(codeable)

    def _draft_orders(self, record: PatientRecord,
                      medications: Mapping[str, Mapping[str, Any]]) -> list[DraftOrder]:
        drafts = []
        for sourced in sorted(record.draft_orders, key=_reference_of):
            codeable, display = self._medication_code(sourced.resource, medications)
            for match in self._medication_matches(codeable):
                concept = self.term.concepts[match.concept]
                drafts.append(DraftOrder(reference=_reference_of(sourced), concept=concept.id,
                                         label=concept.label, classes=concept.classes,
                                         display=display, matched_by=match.matched_by))
        return drafts

    def _medication_code(
        self, resource: Mapping[str, Any], medications: Mapping[str, Mapping[str, Any]]
    ) -> tuple[Mapping[str, Any] | None, str | None]:
        codeable = resource.get("medicationCodeableConcept")
        ref = resource.get("medicationReference")
        if not isinstance(codeable, Mapping) and isinstance(ref, Mapping):
            target = str(ref.get("reference") or "")
            medication: Any = None
            if target.startswith("#"):
                for contained in resource.get("contained") or []:
                    if isinstance(contained, Mapping) and contained.get("id") == target[1:]:
                        medication = contained
            else:
                medication = medications.get(target) or medications.get(
                    canonical_reference(target))
            if isinstance(medication, Mapping):
                codeable = medication.get("code")
            if not isinstance(codeable, Mapping) and ref.get("display"):
                codeable = {"text": ref.get("display")}
        if not isinstance(codeable, Mapping):
            return None, None
        display = codeable.get("text")
        for coding in codeable.get("coding") or []:
            if not display and isinstance(coding, Mapping):
                display = coding.get("display")
        return codeable, str(display) if display else None

    # --- Context -----------------------------------------------------------------------------

    def _context(
        self, reference: str, facts: Iterable[ClinicalFact], assume_presentation: bool
    ) -> PatientContext:
        present: set[str] = set()
        days: dict[str, float] = {}
        for fact in facts:
            if isinstance(fact, (Problem, Finding)):
                present.add(fact.concept)
            elif isinstance(fact, LabResult):
                days[fact.concept] = min(days.get(fact.concept, fact.age_days), fact.age_days)
        lab_concepts = [c.id for c in self.term.concepts.values() if c.kind == "lab"]
        days_since = {c: days.get(c, NEVER_MEASURED_DAYS) for c in lab_concepts}
        for family, members in self.ruleset.lab_families.items():
            days_since[family] = min(days_since[m] for m in members)
        presentation_group = self.term.groups[self.derived["presentation_group"]]
        presentation = tuple(sorted(c for c in present if c in presentation_group))
        group_counts = {g: sum(1 for c in members if c in present)
                        for g, members in self.term.groups.items()}
        set_counts = {name: sum(1 for g in groups if group_counts.get(g, 0) > 0)
                      for name, groups in (self.derived.get("counted_group_sets") or {}).items()}
        return PatientContext(
            reference=reference, presenting=assume_presentation or bool(presentation),
            presentation=presentation, concepts_present=tuple(sorted(present)),
            days_since=days_since, group_counts=group_counts, group_set_counts=set_counts)


def _interpretation(resource: Mapping[str, Any]) -> str | None:
    for item in resource.get("interpretation") or []:
        code = _status_code(item)
        if code:
            return code
    return None


def _body_site_text(resource: Mapping[str, Any]) -> str | None:
    site = resource.get("bodySite")
    sites = site if isinstance(site, list) else [site]
    words = []
    for item in sites:
        if isinstance(item, Mapping):
            words.append(str(item.get("text") or ""))
            words += [str(c.get("display") or "") for c in item.get("coding") or []
                      if isinstance(c, Mapping)]
    text = " ".join(w for w in words if w).strip()
    return text or None


def _dedupe(coded: list[Problem | Finding]) -> list[Problem | Finding]:
    seen: dict[tuple[str, str], Problem | Finding] = {}
    for fact in coded:
        key = (fact.reference, fact.concept)
        if key not in seen or (fact.matched_by == MATCHED_BY_CODE):
            seen[key] = fact
    return sorted(seen.values(), key=lambda f: (f.concept, f.reference))
