"""From parsed resources to one record per patient: cheap relevance filter, validation, grouping.

Only resources the rules can use are validated with fhir.resources (R4 through the R4B models):
Patient, and Observation / Condition / MedicationRequest / MedicationStatement / Medication whose
codes are in the value sets; and of those, the elements something reads (read_elements.py).
Everything else is counted and skipped without validation, unless `strict` asks for every element
of every resource to be validated.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from .errors import InputError
from .fhir_time import latest_recorded_time
from .fhir_validation import ShapeValidator
from .read_elements import read_part
from .sources import RawResource
from .strict_checks import strict_problems
from .terminology import Terminology

CODED_TYPES: Mapping[str, str] = {"Observation": "code", "Condition": "code",
                                  "Procedure": "code"}
MEDICATION_USE_TYPES = frozenset({"MedicationRequest", "MedicationStatement"})
# A relative's ALS/MND (family-history-mnd) from its conditions' codes (docs/clinical-basis.md,
# "Negation and text context")
FAMILY_HISTORY_TYPE = "FamilyMemberHistory"
# Every resource type `is_relevant` can accept, from the same tables: a Bulk Data file declared
# to hold another type cannot give any rule anything, so batch need not read it.
READ_TYPES = frozenset({"Patient", "Medication", FAMILY_HISTORY_TYPE, *CODED_TYPES,
                        *MEDICATION_USE_TYPES})
_ABSOLUTE_REF = re.compile(
    r"(?:^|/)(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


@dataclass(frozen=True)
class SourcedResource:
    resource: dict[str, Any]
    source: str
    entry: str
    medication_code: Mapping[str, Any] | None = None
    """For a medication use or draft order naming its drug by `medicationReference`: the
    referenced Medication's `code` (contained or in the input), else the reference's display."""


@dataclass
class PatientRecord:
    """Everything known of one patient after ingest."""

    reference: str
    patient: SourcedResource | None = None
    resources: list[SourcedResource] = field(default_factory=list)
    errors: list[InputError] = field(default_factory=list)
    draft_orders: list[SourcedResource] = field(default_factory=list)
    skipped: int = 0
    latest_time: datetime | None = None
    unreadable: list[InputError] = field(default_factory=list)
    """Resources of a type the rules read that could not be read as FHIR R4 (docs/clinical-basis.md,
    v3 "Unreadable resources"): named on the assessment, which is then `partial`."""


@dataclass
class IngestResult:
    patients: list[PatientRecord]
    medications: dict[str, dict[str, Any]]
    errors: list[InputError]
    counts: dict[str, int]


@functools.lru_cache(maxsize=1 << 16)  # every resource of a patient names the same reference
def canonical_reference(reference: str) -> str:
    """`Patient/123` for relative, absolute and versioned forms; other forms as given."""
    match = _ABSOLUTE_REF.search(reference)
    return f"{match['type']}/{match['id']}" if match else reference


def patient_reference_of(resource: Mapping[str, Any]) -> str | None:
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            return str(ref["reference"])
    return None


def is_relevant(resource: Mapping[str, Any], terminology: Terminology) -> bool:
    """Decided on raw JSON without validation: could any rule use this resource?"""
    resource_type = resource.get("resourceType")
    if resource_type in ("Patient", "Medication"):
        return True
    if resource_type in CODED_TYPES:
        code = resource.get(CODED_TYPES[str(resource_type)])
        return isinstance(code, dict) and _has_relevant_code(code, terminology)
    if resource_type in MEDICATION_USE_TYPES:
        if isinstance(resource.get("medicationReference"), dict):
            return True
        medication = resource.get("medicationCodeableConcept")
        return isinstance(medication, dict) and _has_relevant_code(medication, terminology)
    if resource_type == FAMILY_HISTORY_TYPE:
        conditions = resource.get("condition")
        return isinstance(conditions, list) and any(
            isinstance(c, dict) and isinstance(c.get("code"), dict)
            and _has_relevant_code(c["code"], terminology) for c in conditions)
    return False


# A population repeats the same few hundred CodeableConcepts (one per kind of test or drug)
# hundreds of thousands of times: the answer, a pure function of the concept's JSON, is kept.
_MEMO_LIMIT = 1 << 16
_memos: dict[int, tuple[Terminology, dict[bytes, bool]]] = {}


def _has_relevant_code(codeable: dict[str, Any], terminology: Terminology) -> bool:
    held = _memos.get(id(terminology))
    if held is None or held[0] is not terminology:
        held = _memos[id(terminology)] = (terminology, {})
    memo = held[1]
    try:
        key = orjson.dumps(codeable)
    except TypeError:  # not JSON (a caller's own objects): no memo
        return terminology.has_relevant_code(codeable)
    found = memo.get(key)
    if found is None:
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()
        found = memo[key] = terminology.has_relevant_code(codeable)
    return found


_validator = ShapeValidator()  # one per process: a population's shapes are worth keeping


def validate(raw: SourcedResource, *, whole: bool = False) -> InputError | None:
    """fhir.resources validation of the elements that are read (`whole`: of every element); the
    error names file, entry, FHIR path and what is wrong."""
    resource_type = str(raw.resource.get("resourceType"))
    try:
        model = get_fhir_model_class(resource_type)
    except ValueError:
        return InputError(f"unknown resourceType {resource_type!r} (is this FHIR R4?)",
                          source=raw.source, entry=raw.entry)
    try:
        if whole:
            model.model_validate(raw.resource)
        else:
            _validator.validate(read_part(raw.resource))
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join([resource_type, *(str(p) for p in first["loc"] if p != "__root__")])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        return InputError(f"{first['msg']}{more}", source=raw.source, entry=raw.entry, path=path)
    except (TypeError, ValueError) as exc:
        return InputError(str(exc), source=raw.source, entry=raw.entry)
    return None


def _strict_error(raw: RawResource) -> InputError | None:
    if raw.full_url and ":" not in raw.full_url:
        return InputError(f"fullUrl must be an absolute URL (not {raw.full_url!r})",
                          source=raw.source, entry=raw.entry, path="Bundle.entry.fullUrl")
    for path, message in strict_problems(raw.resource):
        return InputError(message, source=raw.source, entry=raw.entry, path=path)
    return None


class Grouper:
    """Collects resources by patient across any number of files, then resolves references."""

    def __init__(
        self,
        terminology: Terminology,
        *,
        strict: bool = False,
        track_times: bool = False,
        observations_since: datetime | None = None,
    ) -> None:
        self._terminology = terminology
        self._observations_since = observations_since
        self._strict = strict
        self._track_times = track_times
        self._times_by_ref: dict[str, datetime] = {}
        self._patients: dict[str, SourcedResource] = {}
        self._aliases: dict[str, str] = {}
        self._by_ref: dict[str, list[SourcedResource]] = {}
        self._errors_by_ref: dict[str, list[InputError]] = {}
        self._skipped_by_ref: dict[str, int] = {}
        self._first_seen: dict[str, SourcedResource] = {}
        self._drafts_by_ref: dict[str, list[SourcedResource]] = {}
        self.medications: dict[str, dict[str, Any]] = {}
        self.errors: list[InputError] = []
        self.counts: dict[str, int] = {"resources": 0, "validated": 0, "skipped": 0}

    def add_all(self, items: Iterable[RawResource | InputError]) -> None:
        for item in items:
            if isinstance(item, InputError):
                self.errors.append(item)
            else:
                self.add(item)

    def add(self, raw: RawResource) -> None:
        resource = raw.resource
        self.counts["resources"] += 1
        resource_type = resource["resourceType"]
        relevant = is_relevant(resource, self._terminology)
        if relevant and self._observations_since is not None and resource_type == "Observation":
            # older than every look-back: no rule can use it, so it is not worth validating
            when = latest_recorded_time(resource)
            relevant = when is None or when >= self._observations_since
        subject = patient_reference_of(resource)
        if not (relevant or self._strict or raw.draft_order):
            self._skip(resource, raw, subject)  # most of a record: counted, never validated
            return
        sourced = SourcedResource(resource, raw.source, raw.entry)
        # A draft order is an order form being filled in, not a record: callers pass only the
        # fields the rules read (service/drafts.py), so it is not validated as a resource.
        if (relevant or self._strict) and not raw.draft_order:
            self.counts["validated"] += 1
            error = validate(sourced, whole=self._strict)
            if error is None and self._strict:
                error = _strict_error(raw)
            if error is not None:
                owner = self._owner_of(resource, raw, subject)
                if owner is None:
                    self.errors.append(error)
                else:
                    self._errors_by_ref.setdefault(owner, []).append(error)
                return
        if raw.draft_order:
            if subject is not None and resource_type in MEDICATION_USE_TYPES:
                self._drafts_by_ref.setdefault(subject, []).append(sourced)
        elif resource_type == "Patient":
            self._add_patient(sourced, raw.full_url)
        elif resource_type == "Medication" and relevant:
            for key in self._keys_of(resource, raw.full_url):
                self.medications[key] = resource
        elif subject is not None and relevant:
            self._first_seen.setdefault(canonical_reference(subject), sourced)
            self._by_ref.setdefault(subject, []).append(sourced)
        else:
            self._skip(resource, raw, subject)

    def _skip(self, resource: dict[str, Any], raw: RawResource, subject: str | None) -> None:
        """A resource no rule can use: counted for its patient (and its time for as_of=auto)."""
        self.counts["skipped"] += 1
        if subject is None:
            return
        key = canonical_reference(subject)
        if key not in self._first_seen:
            self._first_seen[key] = SourcedResource(resource, raw.source, raw.entry)
        if self._track_times:
            when = latest_recorded_time(resource)
            if when is not None and (subject not in self._times_by_ref
                                     or when > self._times_by_ref[subject]):
                self._times_by_ref[subject] = when
        self._skipped_by_ref[subject] = self._skipped_by_ref.get(subject, 0) + 1

    def note_skipped(self, reference: str, count: int, source: str, entry: str,
                     latest_time: datetime | None) -> None:
        """`count` resources of `reference` that no rule can use, summarised where they were
        read (batch): counted, and their latest time kept for `as_of=auto`, as `add` would."""
        self.counts["resources"] += count
        self.counts["skipped"] += count
        self._first_seen.setdefault(canonical_reference(reference),
                                    SourcedResource({}, source, entry))
        self._skipped_by_ref[reference] = self._skipped_by_ref.get(reference, 0) + count
        if self._track_times and latest_time is not None and (
                reference not in self._times_by_ref or latest_time > self._times_by_ref[reference]):
            self._times_by_ref[reference] = latest_time

    def _owner_of(
        self, resource: Mapping[str, Any], raw: RawResource, subject: str | None
    ) -> str | None:
        if resource.get("resourceType") == "Patient":
            keys = self._keys_of(resource, raw.full_url)
            return keys[0] if keys else None
        return subject

    @staticmethod
    def _keys_of(resource: Mapping[str, Any], full_url: str | None) -> list[str]:
        keys = []
        if isinstance(resource.get("id"), str):
            keys.append(f"{resource['resourceType']}/{resource['id']}")
        if full_url:
            keys.append(full_url)
            keys.append(canonical_reference(full_url))
        return list(dict.fromkeys(keys))

    def _add_patient(self, sourced: SourcedResource, full_url: str | None) -> None:
        keys = self._keys_of(sourced.resource, full_url)
        if not keys:
            self.errors.append(InputError("Patient has neither id nor fullUrl",
                                          source=sourced.source, entry=sourced.entry))
            return
        key = keys[0]
        if key in self._patients:
            first = self._patients[key]
            if first.resource != sourced.resource:
                self._errors_by_ref.setdefault(key, []).append(InputError(
                    f"{key} appears twice with different content (first in {first.source} "
                    f"{first.entry})", source=sourced.source, entry=sourced.entry))
            return
        self._patients[key] = sourced
        for alias in keys:
            self._aliases.setdefault(alias, key)

    def _resolve(self, reference: str) -> str:
        if reference in self._aliases:
            return self._aliases[reference]
        canonical = canonical_reference(reference)
        return self._aliases.get(canonical, canonical)

    def _with_medication(self, sourced: SourcedResource) -> SourcedResource:
        """Resolve `medicationReference` here, so a record carries the drug it names."""
        resource = sourced.resource
        ref = resource.get("medicationReference")
        if isinstance(resource.get("medicationCodeableConcept"), Mapping) or not isinstance(
                ref, Mapping):
            return sourced
        target = str(ref.get("reference") or "")
        medication: Any = None
        if target.startswith("#"):
            for contained in resource.get("contained") or []:
                if isinstance(contained, Mapping) and contained.get("id") == target[1:]:
                    medication = contained
        else:
            medication = self.medications.get(target) or self.medications.get(
                canonical_reference(target))
        code = medication.get("code") if isinstance(medication, Mapping) else None
        if not isinstance(code, Mapping) and ref.get("display"):
            code = {"text": ref.get("display")}
        return replace(sourced, medication_code=code) if isinstance(code, Mapping) else sourced

    def finish(self) -> IngestResult:
        records: dict[str, PatientRecord] = {
            key: PatientRecord(reference=key, patient=sourced)
            for key, sourced in self._patients.items()
        }

        def record(reference: str) -> PatientRecord:
            key = self._resolve(reference)
            if key not in records:
                records[key] = PatientRecord(reference=key)
            return records[key]

        for reference, resources in self._by_ref.items():
            record(reference).resources.extend(self._with_medication(r) for r in resources)
        for reference, drafts in self._drafts_by_ref.items():
            record(reference).draft_orders.extend(self._with_medication(d) for d in drafts)
        for reference, errors in self._errors_by_ref.items():
            record(reference).errors.extend(errors)
        for reference, skipped in self._skipped_by_ref.items():
            record(reference).skipped += skipped
        for reference, when in self._times_by_ref.items():
            rec = record(reference)
            if rec.latest_time is None or when > rec.latest_time:
                rec.latest_time = when
        for rec in records.values():
            if rec.patient is None and not rec.errors:
                count = len(rec.resources) + rec.skipped
                first = self._first_seen.get(rec.reference)
                rec.errors.append(InputError(
                    f"{count} resource(s) refer to {rec.reference}, but no Patient resource for it "
                    "was found in the input",
                    source=first.source if first else None, entry=first.entry if first else None))
        patients = sorted(records.values(), key=lambda r: r.reference)
        return IngestResult(patients, self.medications, self.errors, dict(self.counts))

