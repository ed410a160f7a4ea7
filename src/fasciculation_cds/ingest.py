"""From parsed resources to one record per patient: cheap relevance filter, validation, grouping.

Only resources the rules can use are validated with fhir.resources (R4 through the R4B models):
Patient, and Observation / Condition / Procedure / medication uses (requests, statements,
dispenses, administrations) / Medication whose codes are in the value sets, and DiagnosticReports
holding results; and of those, the elements something reads (read_elements.py), then the R4 rules
fhir.resources leaves out (strict_checks.read_problems). Everything else is counted and skipped
without validation, unless `strict` asks for every element of every resource to be validated.

Malformed is never "not relevant" (docs/clinical-basis.md, "Unreadable resources"): relevance is
decided on a resource's type and whatever of its code or text can be read; a resource of a type
the rules read that fails validation is kept as unreadable on its patient's record (named on the
assessment, which is then partial), and makes the patient an error row only with `strict`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import orjson
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from .errors import InputError
from .fhir_time import latest_recorded_time, valid_times
from .fhir_validation import ShapeValidator
from .fhir_version import other_version_in
from .read_elements import read_part
from .report_results import CODE_UNREADABLE, REPORT_TYPE, ReportResults
from .sources import RawResource
from .strict_checks import read_problems, strict_problems
from .terminology import Terminology

CODED_TYPES: Mapping[str, str] = {"Observation": "code", "Condition": "code",
                                  "Procedure": "code"}
MEDICATION_USE_TYPES = frozenset({"MedicationRequest", "MedicationStatement",
                                  "MedicationDispense", "MedicationAdministration"})
# A relative's ALS/MND (family-history-mnd) from its conditions' codes (docs/clinical-basis.md,
# "Negation and text context")
FAMILY_HISTORY_TYPE = "FamilyMemberHistory"
# Every resource type `is_relevant` can accept, from the same tables: a Bulk Data file declared
# to hold another type cannot give any rule anything, so batch need not read it.
READ_TYPES = frozenset({"Patient", "Medication", REPORT_TYPE, FAMILY_HISTORY_TYPE, *CODED_TYPES,
                        *MEDICATION_USE_TYPES})
Relevance = Literal["relevant", "not-relevant", "unreadable"]
# `as_of=auto` refuses a recorded time later than the run's own clock by more than this.
AS_OF_CLOCK_MARGIN = timedelta(days=1)
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
    reference: str | None = None
    """Where a resource without an identity of its own came from: an Observation contained
    in a DiagnosticReport is `DiagnosticReport/x#obs`."""
    medication_form: Mapping[str, Any] | None = None
    """The referenced Medication's `form` (dose form), for the route of a product."""


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
    "Unreadable resources"): named on the assessment, which is then `partial`."""
    notes: list[tuple[str, str, str]] = field(default_factory=list)
    """(notice code, reference, message) that ingest has to say about this record."""
    refused_times: list[str] = field(default_factory=list)
    """Recorded times `as_of=auto` refused as implausible (later than the run's clock)."""


@dataclass
class IngestResult:
    patients: list[PatientRecord]
    medications: dict[str, dict[str, Any]]
    errors: list[InputError]
    counts: dict[str, int]
    bad_medications: list[InputError] = field(default_factory=list)
    """Medication resources that could not be read (named on each use that refers to one)."""


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
    """Decided on raw JSON without validation: must this resource be read (a rule could use
    it, or it is of a type the rules read but its code cannot be read)?"""
    return relevance_of(resource, terminology) != "not-relevant"


def relevance_of(resource: Mapping[str, Any], terminology: Terminology) -> Relevance:
    """`relevant`, `not-relevant`, or `unreadable`: a type the rules read whose code (or drug)
    cannot be read as FHIR R4 and whose readable parts do not show it irrelevant."""
    resource_type = resource.get("resourceType")
    if resource_type in ("Patient", "Medication"):
        return "relevant"
    if resource_type in CODED_TYPES:
        return _code_relevance(resource.get(CODED_TYPES[str(resource_type)]), terminology)
    if resource_type in MEDICATION_USE_TYPES:
        if "medicationReference" in resource:
            ref = resource["medicationReference"]
            readable = isinstance(ref, dict) and isinstance(ref.get("reference", ""), str)
            return "relevant" if readable else "unreadable"
        return _code_relevance(resource.get("medicationCodeableConcept"), terminology)
    if resource_type == REPORT_TYPE:
        return _report_relevance(resource, terminology)
    if resource_type == FAMILY_HISTORY_TYPE:
        conditions = resource.get("condition", [])
        if not isinstance(conditions, list):
            return "unreadable"
        found = [_code_relevance(c.get("code"), terminology) if isinstance(c, dict)
                 else "unreadable" for c in conditions]
        return ("relevant" if "relevant" in found
                else "unreadable" if "unreadable" in found else "not-relevant")
    return "not-relevant"


def _code_relevance(codeable: Any, terminology: Terminology) -> Relevance:
    """The relevance of a code element: a pure function of its JSON, so kept per concept (a
    population repeats the same few hundred)."""
    held = _relevance_memos.get(id(terminology))
    if held is None or held[0] is not terminology:
        held = _relevance_memos[id(terminology)] = (terminology, {})
    memo = held[1]
    try:
        key = orjson.dumps(codeable)
    except TypeError:  # not plain JSON (exact decimals, a caller's objects): no memo
        return _decide_code_relevance(codeable, terminology)
    found = memo.get(key)
    if found is None:
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()
        found = memo[key] = _decide_code_relevance(codeable, terminology)
    return found


def _decide_code_relevance(codeable: Any, terminology: Terminology) -> Relevance:
    if well_formed_codeable(codeable):
        if _has_relevant_code(codeable, terminology):
            return "relevant"
        # "HTTP://LOINC.ORG" or ICD-10 "r25.3": a known code in the wrong case is no code the
        # rules can read, but it says what the resource is
        variant = _case_variant(codeable)
        if variant is not None and _has_relevant_code(variant, terminology):
            return "unreadable"
        return "not-relevant"
    salvaged, complete = salvage_codeable(codeable)
    if salvaged and complete and not terminology.has_relevant_code(salvaged):
        return "not-relevant"  # every coding and text can be read: no rule uses it
    return "unreadable"


def _case_variant(codeable: Mapping[str, Any]) -> dict[str, Any] | None:
    """The codings with their systems in lower case and codes in upper case (as every code
    system the rules read writes them), when that changes any; else None."""
    codings = []
    for coding in codeable.get("coding", []):
        system, code = coding.get("system"), coding.get("code")
        codings.append({**coding, "system": system.lower() if system else system,
                        "code": code.upper() if code else code})
    changed = codings != codeable.get("coding", [])
    return {"coding": codings} if changed else None


def _report_relevance(report: Mapping[str, Any], terminology: Terminology) -> Relevance:
    contained, results = report.get("contained", []), report.get("result", [])
    if not isinstance(contained, list) or not isinstance(results, list):
        return "unreadable"
    for inner in contained:
        if isinstance(inner, Mapping) and inner.get("resourceType") == "Observation" \
                and relevance_of(inner, terminology) != "not-relevant":
            return "relevant"
    # a referenced result may lack a time of its own and take the report's
    return "relevant" if results else "not-relevant"


_CODEABLE_KEYS = frozenset({"id", "extension", "coding", "text"})
_CODING_KEYS = frozenset({"id", "extension", "system", "version", "code", "display",
                          "userSelected"})


def well_formed_codeable(codeable: Any) -> bool:
    """A CodeableConcept as R4 JSON writes it: an object with a list of coding objects whose
    strings are strings, or a text; nothing else."""
    if not isinstance(codeable, Mapping) or not set(codeable) <= _CODEABLE_KEYS:
        return False
    text, coding = codeable.get("text"), codeable.get("coding", [])
    if (text is not None and not isinstance(text, str)) or not isinstance(coding, list):
        return False
    for item in coding:
        if not isinstance(item, Mapping) or not set(item) <= _CODING_KEYS:
            return False
        if any(key in item and not isinstance(item[key], str)
               for key in ("system", "version", "code", "display")):
            return False
    return bool(coding or text)


def salvage_codeable(codeable: Any) -> tuple[dict[str, Any] | None, bool]:
    """What a malformed CodeableConcept still says (codings written as an object instead of a
    list, a text), and whether all of it could be read: each coding's system and code strings,
    its display and the text strings where present."""
    if isinstance(codeable, str) and codeable.strip():
        return {"text": codeable}, False  # a bare string: what it names is not known
    if not isinstance(codeable, Mapping):
        return None, False
    found = codeable.get("coding", [])
    items = found if isinstance(found, list) else [found]
    codings, complete = [], True
    for item in items:
        if not isinstance(item, Mapping):
            complete = False
            continue
        coding = {key: item[key] for key in ("system", "code", "display")
                  if isinstance(item.get(key), str)}
        complete &= "system" in coding and "code" in coding and all(
            isinstance(item[key], str) for key in ("display", "version") if key in item)
        if coding:
            codings.append(coding)
    salvaged: dict[str, Any] = {"coding": codings} if codings else {}
    text = codeable.get("text")
    if isinstance(text, str) and text.strip():
        salvaged["text"] = text
    complete &= text is None or isinstance(text, str)
    return salvaged or None, complete


def loose_subject(resource: Mapping[str, Any]) -> str | None:
    """The patient a resource names even where its reference is malformed (`subject` as a
    string, a reference that is not a string): for naming it as unreadable on that patient."""
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, str) and ref:
            return ref
        if isinstance(ref, Mapping):
            inner = ref.get("reference")
            if isinstance(inner, (str, int)) and not isinstance(inner, bool) and str(inner):
                return str(inner)
    return None


# A population repeats the same few hundred CodeableConcepts (one per kind of test or drug)
# hundreds of thousands of times: the answer, a pure function of the concept's JSON, is kept.
_MEMO_LIMIT = 1 << 16
_memos: dict[int, tuple[Terminology, dict[bytes, bool]]] = {}
_relevance_memos: dict[int, tuple[Terminology, dict[bytes, Relevance]]] = {}


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
    """fhir.resources validation of the elements that are read (`whole`: of every element),
    then the R4 rules it leaves out on the elements read; the error names file, entry,
    resource, FHIR path and what is wrong."""
    resource_type = str(raw.resource.get("resourceType"))
    named = resource_name(raw)
    try:
        model = get_fhir_model_class(resource_type)
    except ValueError:
        return InputError(f"unknown resourceType {resource_type!r} (is this FHIR R4?)",
                          source=raw.source, entry=raw.entry, resource=named)
    try:
        if whole:
            model.model_validate(raw.resource)
        else:
            _validator.validate(read_part(raw.resource))
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join([resource_type, *(str(p) for p in first["loc"] if p != "__root__")])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        return InputError(f"{first['msg']}{more}", source=raw.source, entry=raw.entry, path=path,
                          resource=named)
    except (TypeError, ValueError, RecursionError) as exc:
        return InputError(str(exc) or type(exc).__name__, source=raw.source, entry=raw.entry,
                          resource=named)
    for path, message in read_problems(raw.resource):
        return InputError(message, source=raw.source, entry=raw.entry, path=path, resource=named)
    return None


def resource_name(raw: SourcedResource) -> str:
    """`Observation/x` (or where a resource without an id was found), as evidence names it."""
    if raw.reference:
        return raw.reference
    resource = raw.resource
    if isinstance(resource.get("id"), str):
        return f"{resource.get('resourceType')}/{resource['id']}"
    return f"{resource.get('resourceType')} at {raw.source} {raw.entry}"


def _no_patient(sourced: SourcedResource) -> InputError:
    return InputError("names no patient by reference (subject), so no patient's assessment can "
                      "use it", source=sourced.source, entry=sourced.entry,
                      resource=resource_name(sourced))


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
        # `as_of=auto` takes no recorded time later than this (implausible)
        self._latest_plausible = datetime.now(timezone.utc) + AS_OF_CLOCK_MARGIN
        self._times_by_ref: dict[str, datetime] = {}
        self._refused_times: dict[str, list[str]] = {}
        self._patients: dict[str, SourcedResource] = {}
        self._aliases: dict[str, str] = {}
        self._by_ref: dict[str, list[SourcedResource]] = {}
        self._errors_by_ref: dict[str, list[InputError]] = {}
        self._unreadable_by_ref: dict[str, list[InputError]] = {}
        self._skipped_by_ref: dict[str, int] = {}
        self._first_seen: dict[str, SourcedResource] = {}
        self._drafts_by_ref: dict[str, list[SourcedResource]] = {}
        self._reports = ReportResults()
        self._bad_medications: dict[str, InputError] = {}
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
        relevance = relevance_of(resource, self._terminology)
        relevant = relevance != "not-relevant"
        if relevance == "relevant" and self._observations_since is not None \
                and resource_type == "Observation":
            # older than every look-back: no rule can use it, so it is not worth validating
            when = latest_recorded_time(resource)
            relevant = when is None or when >= self._observations_since
        subject = patient_reference_of(resource)
        if subject is None and relevant:
            subject = loose_subject(resource)
        if not (relevant or self._strict or raw.draft_order):
            self._skip(resource, raw, subject)  # most of a record: counted, never validated
            return
        sourced = SourcedResource(resource, raw.source, raw.entry)
        version = None if raw.draft_order else other_version_in(resource)
        if version is not None:  # refused whole, like a document of that version
            self._refuse(InputError(version, source=raw.source, entry=raw.entry), subject)
            return
        # A draft order is an order form being filled in, not a record: callers pass only the
        # fields the rules read (service/drafts.py), so it is not validated as a resource.
        if (relevant or self._strict) and not raw.draft_order:
            self.counts["validated"] += 1
            error = validate(sourced, whole=self._strict)
            if error is None and self._strict:
                error = _strict_error(raw)
            if error is None and relevance == "unreadable":
                error = InputError(CODE_UNREADABLE, source=raw.source, entry=raw.entry,
                                   resource=resource_name(sourced))
            if error is not None:
                self._unreadable(error, resource, raw, subject)
                return
        if raw.draft_order:
            if subject is not None and resource_type in MEDICATION_USE_TYPES:
                self._drafts_by_ref.setdefault(subject, []).append(sourced)
        elif resource_type == "Patient":
            self._add_patient(sourced, raw.full_url)
        elif resource_type == "Medication" and relevant:
            for key in self._keys_of(resource, raw.full_url):
                self.medications[key] = resource
        elif resource_type == REPORT_TYPE and relevant and subject is not None:
            self._reports.add_report(sourced, subject)
            self._first_seen.setdefault(canonical_reference(subject), sourced)
        elif subject is not None and relevant:
            self._first_seen.setdefault(canonical_reference(subject), sourced)
            self._by_ref.setdefault(subject, []).append(sourced)
            if resource_type == "Observation":
                self._reports.add_observation(sourced, self._keys_of(resource, raw.full_url))
        elif relevant and resource_type == "Observation":
            # a result naming no patient counts for the patient of a report listing it
            self._reports.add_orphan(sourced, self._keys_of(resource, raw.full_url))
        elif relevant and resource_type in READ_TYPES:
            self.errors.append(_no_patient(sourced))
        else:
            self._skip(resource, raw, subject)

    def _refuse(self, error: InputError, subject: str | None) -> None:
        if subject is None:
            self.errors.append(error)
        else:
            self._errors_by_ref.setdefault(subject, []).append(error)

    def _unreadable(self, error: InputError, resource: Mapping[str, Any], raw: RawResource,
                    subject: str | None) -> None:
        """A resource that fails validation: an error of its patient with `strict`, else named
        on the patient's record as unreadable (docs/clinical-basis.md). A Patient that cannot be
        identified, or a resource naming no patient at all, is a problem of the input."""
        resource_type = resource.get("resourceType")
        if resource_type == "Medication":
            keys = self._keys_of(resource, raw.full_url)
            for key in keys:
                self._bad_medications[key] = error
            if keys and not self._strict:
                return  # named on each patient whose medication use refers to it
        owner = self._owner_of(resource, raw, subject)
        if owner is None:
            self.errors.append(error)
        elif self._strict:
            self._errors_by_ref.setdefault(owner, []).append(error)
        else:
            if resource_type == "Patient":
                self._add_patient(SourcedResource(dict(resource), raw.source, raw.entry),
                                  raw.full_url)
            self._first_seen.setdefault(canonical_reference(owner),
                                        SourcedResource(dict(resource), raw.source, raw.entry))
            self._unreadable_by_ref.setdefault(owner, []).append(error)

    def _skip(self, resource: dict[str, Any], raw: RawResource, subject: str | None) -> None:
        """A resource no rule can use: counted for its patient (and its time for as_of=auto)."""
        self.counts["skipped"] += 1
        if subject is None:
            return
        key = canonical_reference(subject)
        if key not in self._first_seen:
            self._first_seen[key] = SourcedResource(resource, raw.source, raw.entry)
        if self._track_times:
            self._note_times(subject, valid_times(resource), resource, raw)
        self._skipped_by_ref[subject] = self._skipped_by_ref.get(subject, 0) + 1

    def _note_times(self, subject: str, times: list[datetime],
                    resource: Mapping[str, Any] | None, raw: RawResource | None) -> None:
        """Keep a patient's newest valid recorded time for `as_of=auto`; refuse (and note) one
        later than the run's own clock allows."""
        for when in times:
            if when > self._latest_plausible:
                where = (f"{resource.get('resourceType')} at {raw.source} {raw.entry}"
                         if resource is not None and raw is not None else "a skipped resource")
                refused = self._refused_times.setdefault(subject, [])
                if len(refused) < 3:
                    refused.append(f"{when.isoformat()} ({where})")
            elif subject not in self._times_by_ref or when > self._times_by_ref[subject]:
                self._times_by_ref[subject] = when

    def note_skipped(self, reference: str, count: int, source: str, entry: str,
                     latest_time: datetime | None, refused: Iterable[str] = ()) -> None:
        """`count` resources of `reference` that no rule can use, summarised where they were
        read (batch): counted, and their latest time kept for `as_of=auto`, as `add` would."""
        self.counts["resources"] += count
        self.counts["skipped"] += count
        self._first_seen.setdefault(canonical_reference(reference),
                                    SourcedResource({}, source, entry))
        self._skipped_by_ref[reference] = self._skipped_by_ref.get(reference, 0) + count
        if self._track_times and latest_time is not None:
            self._note_times(reference, [latest_time], None, None)
        if refused:
            held = self._refused_times.setdefault(reference, [])
            held.extend(list(refused)[:max(0, 3 - len(held))])

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

    def _with_medication(self, sourced: SourcedResource, rec: PatientRecord) -> SourcedResource:
        """Resolve `medicationReference` here, so a record carries the drug it names. A
        Medication that is not there (or cannot be read) is named on the record: with the
        reference's display the drug is read from that (notice), without it the use is
        unreadable."""
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
        elif target:
            medication = self.medications.get(target) or self.medications.get(
                canonical_reference(target))
        code = medication.get("code") if isinstance(medication, Mapping) else None
        form = medication.get("form") if isinstance(medication, Mapping) else None
        name = resource_name(sourced)
        if not isinstance(code, Mapping):
            bad = self._bad_medications.get(target) or self._bad_medications.get(
                canonical_reference(target))
            display = ref.get("display")
            why = (f"its Medication {target} cannot be read ({bad.message})" if bad else
                   f"its Medication {target or '(no reference)'} is not in the input")
            if isinstance(display, str) and display.strip():
                code = {"text": display}
                rec.notes.append(("medication-not-found", name,
                                  f"{name}: {why}; the drug was read from the reference's "
                                  f"display {display!r}"))
            else:
                rec.unreadable.append(InputError(
                    f"{why}, and the reference has no display: the drug is unknown",
                    source=sourced.source, entry=sourced.entry, resource=name))
                return sourced
        return replace(sourced, medication_code=code,
                       medication_form=form if isinstance(form, Mapping) else None)

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

        dated = self._reports.dated_results()
        for reference, resources in self._by_ref.items():
            rec = record(reference)
            rec.resources.extend(self._with_medication(dated.get(id(r), r), rec)
                                 for r in resources)
        for reference, sourced, problem in self._reports.contained_results(
                lambda r: relevance_of(r, self._terminology), validate):
            rec = record(reference)
            if problem is not None:
                rec.unreadable.append(problem)
            elif sourced is not None:
                rec.resources.append(sourced)
        claimed, orphans = self._reports.claim_orphans()
        for reference, sourced in claimed:
            rec = record(reference)
            error = validate(sourced)
            if error is None:
                rec.resources.append(sourced)
            else:
                rec.unreadable.append(error)
        # a resource a rule would read that names no patient cannot be charged to one: a
        # problem of the input, never dropped without a word
        self.errors += [_no_patient(o) for o in orphans]
        for reference, drafts in self._drafts_by_ref.items():
            rec = record(reference)
            rec.draft_orders.extend(self._with_medication(d, rec) for d in drafts)
        for reference, errors in self._errors_by_ref.items():
            record(reference).errors.extend(errors)
        for reference, unreadable in self._unreadable_by_ref.items():
            record(reference).unreadable.extend(unreadable)
        for reference, skipped in self._skipped_by_ref.items():
            record(reference).skipped += skipped
        for reference, when in self._times_by_ref.items():
            rec = record(reference)
            if rec.latest_time is None or when > rec.latest_time:
                rec.latest_time = when
        for reference, refused in self._refused_times.items():
            record(reference).refused_times.extend(refused)
        for rec in records.values():
            if self._strict and rec.unreadable:  # with strict, what is unreadable is an error
                rec.errors += rec.unreadable
                rec.unreadable = []
            if rec.patient is None and not rec.errors:
                count = len(rec.resources) + rec.skipped + len(rec.unreadable)
                first = self._first_seen.get(rec.reference)
                rec.errors.append(InputError(
                    f"{count} resource(s) refer to {rec.reference}, but no Patient resource for it "
                    "was found in the input",
                    source=first.source if first else None, entry=first.entry if first else None))
        patients = sorted(records.values(), key=lambda r: r.reference)
        bad = list({(e.source, e.entry): e for e in self._bad_medications.values()}.values())
        return IngestResult(patients, self.medications, self.errors, dict(self.counts),
                            bad_medications=bad)
