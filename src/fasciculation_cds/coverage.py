"""Accounting: every resource of a type the rules read, accounted for exactly once.

Outcomes (docs/coverage.md):
- `used`: it produced a fact (a Patient: its patient was evaluated; a Medication: a medication
  use naming it produced a fact);
- `skipped`: its code is in the value sets but it produced no fact; `reason` says why
  (`status-not-counted`, `unit-not-convertible`, `older-than-look-back`, a notice code, or
  `not-counted`: understood, and by the rules it does not count, e.g. a sign recorded absent);
- `unrecognized`: no coding matched a value set, and one looks like a concept the rules know;
- `not-relevant`: no coding matched a value set and nothing looks relevant;
- `unreadable`: it could not be read as FHIR R4.

The codings of `unrecognized` and `not-relevant` resources, and the statuses and units that kept
a recognized resource out, are counted by (reason, resource type, element, system, code,
display): what a site reads to extend the value sets. The accountant watches the resources as
they are read and decides after the evaluation, so the evaluation itself does no extra work.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from . import ingest
from .assessment import Assessment, UnrecognizedCoding
from .errors import InputError
from .ingest import IngestResult, PatientRecord, SourcedResource, canonical_reference
from .normalize.common import (
    COUNTING_OBSERVATION_STATUS,
    Content,
    reference_of,
    status_code,
)
from .normalize.conditions import ACTIVE_CONDITION_STATUS, EXCLUDED_VERIFICATION
from .normalize.medications import (
    ACTIVE_REQUEST_INTENT,
    ACTIVE_REQUEST_STATUS,
    ACTIVE_STATEMENT_STATUS,
    ingredient_matches,
    medication_code,
)
from .normalize.procedures import PERFORMED_STATUS
from .ruleset import RuleSet
from .sources import RawResource
from .terminology import codings_of
from .unrecognized import (
    STATUS_NOT_COUNTED,
    UNIT_NOT_CONVERTIBLE,
    CodingClassifier,
    CodingKey,
)

USED, SKIPPED, NOT_RELEVANT, UNRECOGNIZED, UNREADABLE = (
    "used", "skipped", "not-relevant", "unrecognized", "unreadable")
OUTCOMES = (USED, SKIPPED, UNRECOGNIZED, NOT_RELEVANT, UNREADABLE)
OLDER_THAN_LOOK_BACK = "older-than-look-back"
NOT_COUNTED = "not-counted"
NOT_EVALUATED = "patient-not-evaluated"
NO_PATIENT = "no-patient"
_MEMO_LIMIT = 1 << 16
CODED = frozenset({"Observation", "Condition", "Procedure", "Medication"})  # by `code`


@dataclass(slots=True)
class Seen:
    """A resource of a read type as it was read (only what the accounting needs)."""

    resource_type: str
    source: str
    entry: str
    reference: str
    owner: str | None
    element: str
    codeable: Any
    keys: tuple[str, ...] = ()
    """A Patient's or Medication's own keys (Type/id, fullUrl and its canonical form)."""


class Accounted(NamedTuple):
    seen: Seen
    outcome: str
    reason: str | None = None


@dataclass
class PatientCoverage:
    """One patient's accounting (`reference` None: resources that belong to no patient)."""

    reference: str | None
    accounted: list[Accounted] = field(default_factory=list)
    codings: Counter[CodingKey] = field(default_factory=Counter)

    def counts(self) -> dict[str, int]:
        found = Counter(a.outcome for a in self.accounted)
        return {outcome: found[outcome] for outcome in OUTCOMES}

    def section(self) -> list[UnrecognizedCoding]:
        """The Assessment's `unrecognized` section: looks-relevant first, then by count."""
        ordered = sorted(self.codings.items(),
                         key=lambda kv: (kv[0].looks_like is None, -kv[1], _sort_key(kv[0])))
        return [UnrecognizedCoding.model_validate({**key.to_json_dict(), "resources": count})
                for key, count in ordered]


def _sort_key(key: CodingKey) -> tuple[str, ...]:
    return (key.reason, key.resource_type, key.element, key.system or "", key.code or "",
            key.display or "", key.looks_like or "")


def coded_element(resource: Mapping[str, Any]) -> tuple[str, Any]:
    """The element a resource says what it is by: a drug's medication[x], else `code`."""
    if resource.get("resourceType") in CODED:
        return "code", resource.get("code")
    for element in ("medicationCodeableConcept", "medicationReference"):
        if element in resource:
            return element, resource[element] if element.endswith("Concept") else None
    if str(resource.get("resourceType", "")).startswith("Medication") and \
            resource.get("resourceType") != "Medication":
        return "medication[x]", None
    return "code", resource.get("code")


def _reference(raw: RawResource) -> str:
    """As normalization names a resource (normalize.common.reference_of)."""
    resource = raw.resource
    if isinstance(resource.get("id"), str):
        return f"{resource['resourceType']}/{resource['id']}"
    return f"{resource['resourceType']} at {raw.source} {raw.entry}"


def _own_keys(raw: RawResource) -> tuple[str, ...]:
    resource = raw.resource
    keys = []
    if isinstance(resource.get("id"), str):
        keys.append(f"{resource['resourceType']}/{resource['id']}")
    if raw.full_url:
        keys += [raw.full_url, canonical_reference(raw.full_url)]
    return tuple(dict.fromkeys(keys))


class Accountant:
    """Watches the resources a run reads, then accounts for each after the evaluation."""

    def __init__(self, ruleset: RuleSet) -> None:
        self.content = _content(ruleset)
        self.classifier = CodingClassifier(ruleset)
        self.seen: list[Seen] = []
        self._aliases: dict[str, str] = {}
        # a population repeats the same few hundred drugs and codes: matched once each
        self._matched: dict[bytes, tuple[str, ...]] = {}
        self._keys: dict[bytes, CodingKey] = {}

    def watch(self, items: Iterable[RawResource | InputError]) -> Iterator[
            RawResource | InputError]:
        """The items unchanged; each resource of a read type is noted on its way."""
        read_types = ingest.READ_TYPES
        for item in items:
            if isinstance(item, RawResource) and not item.draft_order and \
                    item.resource.get("resourceType") in read_types:
                self.note(item)
            yield item

    def note(self, raw: RawResource) -> None:
        resource = raw.resource
        resource_type = str(resource["resourceType"])
        element, codeable = coded_element(resource)
        keys: tuple[str, ...] = ()
        owner = ingest.patient_reference_of(resource)
        if resource_type in ("Patient", "Medication"):
            keys = _own_keys(raw)
            if resource_type == "Patient" and keys:
                owner = keys[0]
                for key in keys:
                    self._aliases.setdefault(key, keys[0])
        self.seen.append(Seen(resource_type, raw.source, raw.entry, _reference(raw), owner,
                              element, codeable, keys))

    def _resolve(self, reference: str | None) -> str | None:
        if reference is None:
            return None
        if reference in self._aliases:
            return self._aliases[reference]
        canonical = canonical_reference(reference)
        return self._aliases.get(canonical, canonical)

    def account(self, result: IngestResult,
                outcomes: Mapping[str, Assessment | None]) -> dict[str | None, PatientCoverage]:
        """Each noted resource's outcome, by patient. `outcomes`: each patient's Assessment,
        or None when it was not evaluated (an error row)."""
        records = {record.reference: record for record in result.patients}
        kept: dict[tuple[str, str], SourcedResource] = {}
        kept_patients = {(r.patient.source, r.patient.entry) for r in result.patients
                         if r.patient is not None}
        errors: set[tuple[str | None, str | None]] = {
            (e.source, e.entry) for e in [*result.errors, *result.bad_medications]}
        used: set[tuple[str, str]] = set()  # (patient, resource reference)
        for record in result.patients:
            for sourced in record.resources:
                kept[(sourced.source, sourced.entry)] = sourced
            errors |= {(e.source, e.entry) for e in [*record.errors, *record.unreadable]
                       if not _about_the_record(e)}
            assessment = outcomes.get(record.reference)
            if assessment is not None:
                for fact in assessment.facts:
                    used.add((record.reference, fact.reference))
                    used |= {(record.reference, r) for r in getattr(fact, "derived_from", ())}
        used_drugs = self._medications_named(result.patients, used)
        notices = {(o.patient.reference, n.reference): n.code for o in outcomes.values()
                   if o is not None for n in o.notices}
        by_patient: dict[str | None, PatientCoverage] = {}
        for seen in self.seen:
            patient = self._resolve(seen.owner)
            if patient is not None and patient not in records:
                patient = None  # a reference to no patient of the input
            coverage = by_patient.get(patient)
            if coverage is None:
                coverage = by_patient[patient] = PatientCoverage(patient)
            where = (seen.source, seen.entry)
            found = kept.get(where)
            if where in errors and found is None and where not in kept_patients:
                coverage.accounted.append(Accounted(seen, UNREADABLE))
                continue
            evaluated = patient is not None and outcomes.get(patient) is not None
            if seen.resource_type == "Patient":
                coverage.accounted.append(Accounted(seen, USED) if evaluated
                                          else Accounted(seen, SKIPPED, NOT_EVALUATED))
                continue
            if seen.resource_type == "Medication":
                named = any(k in used_drugs for k in seen.keys)
                self._decide(coverage, seen, seen.codeable, named, None, None, None)
                continue
            if found is not None and patient is not None:
                codeable = (medication_code(found)[0] if seen.element == "medicationReference"
                            else seen.codeable)
                self._decide(coverage, seen, codeable, (patient, seen.reference) in used,
                             notices.get((patient, seen.reference)), found.resource,
                             None if evaluated else NOT_EVALUATED)
            else:
                reason = OLDER_THAN_LOOK_BACK if seen.resource_type == "Observation" and \
                    patient is not None else NO_PATIENT
                self._decide(coverage, seen, seen.codeable, False, None, None,
                             NOT_EVALUATED if patient is not None and not evaluated else reason)
        return by_patient

    def record_codings(self, record: PatientRecord,
                       assessment: Assessment | None) -> PatientCoverage:
        """The codings of the resources a record kept that produced no fact: what `batch`
        counts where it evaluates (it counts what it did not keep where it partitions), with
        no resource noted on the way in. `assessment` None: the record was not evaluated."""
        coverage = PatientCoverage(record.reference)
        used: set[str] = set()
        notices: dict[str, str] = {}
        if assessment is not None:
            for fact in assessment.facts:
                used.add(fact.reference)
                used.update(getattr(fact, "derived_from", ()))
            notices = {n.reference: n.code for n in assessment.notices}
        for sourced in record.resources:
            reference = reference_of(sourced)
            if reference in used:
                continue
            resource = sourced.resource
            element, codeable = coded_element(resource)
            if element == "medicationReference":
                codeable = medication_code(sourced)[0]
            seen = Seen(str(resource["resourceType"]), sourced.source, sourced.entry, reference,
                        record.reference, element, codeable)
            self._decide(coverage, seen, codeable, False, notices.get(reference), resource,
                         None if assessment is not None else NOT_EVALUATED)
        return coverage

    def _medications_named(self, records: list[PatientRecord],
                           used: set[tuple[str, str]]) -> set[str]:
        """Keys of the Medications named by medication uses that produced a fact."""
        named: set[str] = set()
        for record in records:
            for sourced in record.resources:
                ref = sourced.resource.get("medicationReference")
                if not isinstance(ref, Mapping) or not isinstance(ref.get("reference"), str):
                    continue
                if (record.reference, reference_of(sourced)) in used:
                    named |= {ref["reference"], canonical_reference(ref["reference"])}
        return named

    def _decide(self, coverage: PatientCoverage, seen: Seen, codeable: Any, used: bool,
                notice: str | None, resource: Mapping[str, Any] | None,
                reason: str | None) -> None:
        """One resource's outcome from what matched and what became of it."""
        if used:
            coverage.accounted.append(Accounted(seen, USED))
            return
        concepts = self._concepts(seen, codeable)
        if not concepts:
            unmatched = self.classifier.unmatched(seen.resource_type, seen.element, codeable)
            coverage.accounted.append(Accounted(
                seen, UNRECOGNIZED if unmatched.looks_relevant else NOT_RELEVANT))
            for unmatched_key in unmatched.keys:
                coverage.codings[unmatched_key] += 1
            return
        if reason is None and resource is not None:
            key: CodingKey | None = None
            if notice is None:
                key = self._status_key(seen, resource, concepts)
            elif notice == UNIT_NOT_CONVERTIBLE:
                key = self._unit_key(seen, resource, concepts)
            if key is not None:
                coverage.codings[key] += 1
                reason = key.reason
            else:
                reason = notice or NOT_COUNTED
        coverage.accounted.append(Accounted(seen, SKIPPED, reason or NOT_COUNTED))

    def _concepts(self, seen: Seen, codeable: Any) -> tuple[str, ...]:
        if not isinstance(codeable, Mapping):
            return ()
        drug = seen.element.startswith("medication") or seen.resource_type == "Medication"
        try:
            key = orjson.dumps([drug, codeable])
        except TypeError:  # not JSON (a caller's own objects): no memo
            return self._match(drug, codeable)
        found = self._matched.get(key)
        if found is None:
            if len(self._matched) >= _MEMO_LIMIT:
                self._matched.clear()
            found = self._matched[key] = self._match(drug, codeable)
        return found

    def _match(self, drug: bool, codeable: Mapping[str, Any]) -> tuple[str, ...]:
        content = self.content
        if drug:
            return tuple(m.concept for m in ingredient_matches(content, codeable))
        return tuple(m.concept for m in content.term.match_codeable(codeable))

    def _status_key(self, seen: Seen, resource: Mapping[str, Any],
                    concepts: tuple[str, ...]) -> CodingKey | None:
        """The status that kept a recognized resource out, if that is what did."""
        kind = seen.resource_type
        checks: list[tuple[str, Any, frozenset[str]]] = []
        if kind == "Observation":
            checks = [("status", resource.get("status"), COUNTING_OBSERVATION_STATUS)]
        elif kind == "Procedure":
            checks = [("status", resource.get("status"), PERFORMED_STATUS)]
        elif kind == "MedicationRequest":
            checks = [("status", resource.get("status"), ACTIVE_REQUEST_STATUS),
                      ("intent", resource.get("intent"), ACTIVE_REQUEST_INTENT)]
        elif kind == "MedicationStatement":
            checks = [("status", resource.get("status"), ACTIVE_STATEMENT_STATUS)]
        elif kind == "Condition":
            verification = resource.get("verificationStatus")
            if status_code(verification) in EXCLUDED_VERIFICATION:
                return self._key(seen, "verificationStatus", verification, concepts)
            clinical = resource.get("clinicalStatus")
            code = status_code(clinical)
            if code is not None and code not in ACTIVE_CONDITION_STATUS:
                return self._key(seen, "clinicalStatus", clinical, concepts)
            return None
        for element, value, counting in checks:
            if value not in counting:
                return self._key(seen, element, value, concepts)
        return None

    def _key(self, seen: Seen, element: str, value: Any,
             concepts: tuple[str, ...]) -> CodingKey:
        try:
            memo = orjson.dumps([seen.resource_type, element, value, concepts])
        except TypeError:
            return self._new_key(seen.resource_type, element, value, concepts)
        found = self._keys.get(memo)
        if found is None:
            if len(self._keys) >= _MEMO_LIMIT:
                self._keys.clear()
            found = self._keys[memo] = self._new_key(seen.resource_type, element, value,
                                                     concepts)
        return found

    @staticmethod
    def _new_key(resource_type: str, element: str, value: Any,
                 concepts: tuple[str, ...]) -> CodingKey:
        system = code = display = None
        if isinstance(value, Mapping):
            first = next(iter(codings_of(value)), {})
            system, code = first.get("system"), first.get("code")
            display = first.get("display") or value.get("text")
        elif value is not None:
            code = value if isinstance(value, str) else str(value)
        return CodingKey(STATUS_NOT_COUNTED, resource_type, element,
                         _text(system), _text(code), _text(display), " ".join(sorted(concepts)))

    def _unit_key(self, seen: Seen, resource: Mapping[str, Any],
                  concepts: tuple[str, ...]) -> CodingKey:
        quantity = resource.get("valueQuantity")
        quantity = quantity if isinstance(quantity, Mapping) else {}
        return CodingKey(UNIT_NOT_CONVERTIBLE, seen.resource_type, "valueQuantity",
                         _text(quantity.get("system")), _text(quantity.get("code")),
                         _text(quantity.get("unit")), " ".join(sorted(concepts)))


def _about_the_record(error: InputError) -> bool:
    """The error of a record with no Patient names its first resource (ingest.Grouper.finish):
    that resource was read, whatever else it is."""
    return error.path is None and "no Patient resource for it was found" in error.message


@functools.lru_cache(maxsize=8)
def _content(ruleset: RuleSet) -> Content:
    return Content.of(ruleset)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None if value is None else str(value)

