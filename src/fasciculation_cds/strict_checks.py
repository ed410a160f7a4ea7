"""Invariants the FHIR validator enforces that the fhir.resources models do not.

`strict_problems` (used by --strict), on the raw JSON: resource id syntax (incl. contained
resources), Period start <= end (per-1), embedded HTML in strings and unsafe narrative, and
Bundle link relations (bdl-?).

`read_problems` (every resource the rules read, on the elements they read): codes of required
bindings (a status "FINAL" is no status), JSON types fhir.resources coerces (a date written as a
number, a decimal written as a string), Period start <= end, and a CodeableConcept with
neither coding nor text. The value sets are FHIR R4 4.0.1's required bindings of those elements.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from .fhir_time import parse_datetime
from .read_elements import is_read

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_HTML_TAG = re.compile(r"<\s*/?\s*[A-Za-z][A-Za-z0-9]*(\s[^<>]*)?/?\s*>")
_UNSAFE_NARRATIVE = re.compile(r"<\s*(script|iframe|object|embed|form|style)\b|\son[a-z]+\s*=|"
                               r"javascript:", re.IGNORECASE)


def strict_problems(resource: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(FHIR path, message) for each violated invariant."""
    resource_type = str(resource.get("resourceType"))
    yield from _id_problems(resource, resource_type)
    for index, contained in enumerate(resource.get("contained") or []):
        if isinstance(contained, Mapping):
            yield from _id_problems(contained, f"{resource_type}.contained[{index}]")
    yield from _walk(resource, resource_type)


def bundle_problems(bundle: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    seen: set[str] = set()
    for index, link in enumerate(bundle.get("link") or []):
        relation = link.get("relation") if isinstance(link, Mapping) else None
        if isinstance(relation, str):
            if relation in seen:
                yield (f"Bundle.link[{index}]",
                       f"the link relation {relation!r} can only occur once")
            seen.add(relation)


def _id_problems(resource: Mapping[str, Any], path: str) -> Iterator[tuple[str, str]]:
    value = resource.get("id")
    if value is not None and (not isinstance(value, str) or not _ID.match(value)):
        yield f"{path}.id", f"invalid resource id {str(value)[:70]!r} (1-64 of A-Z a-z 0-9 - .)"


def _walk(node: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, Mapping):
        start, end = parse_datetime(node.get("start")), parse_datetime(node.get("end"))
        if start and end and start > end:
            yield path, "period start is after its end (per-1)"
        for key, value in node.items():
            if key == "div" and isinstance(value, str):
                if _UNSAFE_NARRATIVE.search(value):
                    yield f"{path}.div", "narrative holds unsafe HTML (scripts, event handlers)"
                continue
            if key == "contained":
                continue
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _walk(item, f"{path}[{index}]")
    elif isinstance(node, str) and _HTML_TAG.search(node):
        yield path, "string looks like embedded HTML, which is not allowed here"


# FHIR R4 4.0.1 required bindings of the elements the rules read.
_REQUIRED_CODES: Mapping[tuple[str, str], frozenset[str]] = {
    ("Observation", "status"): frozenset({
        "registered", "preliminary", "final", "amended", "corrected", "cancelled",
        "entered-in-error", "unknown"}),
    ("DiagnosticReport", "status"): frozenset({
        "registered", "partial", "preliminary", "final", "amended", "corrected", "appended",
        "cancelled", "entered-in-error", "unknown"}),
    ("Condition", "clinicalStatus"): frozenset({
        "active", "recurrence", "relapse", "inactive", "remission", "resolved"}),
    ("Condition", "verificationStatus"): frozenset({
        "unconfirmed", "provisional", "differential", "confirmed", "refuted",
        "entered-in-error"}),
    ("Procedure", "status"): frozenset({
        "preparation", "in-progress", "not-done", "on-hold", "stopped", "completed",
        "entered-in-error", "unknown"}),
    ("MedicationRequest", "status"): frozenset({
        "active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped", "draft",
        "unknown"}),
    ("MedicationRequest", "intent"): frozenset({
        "proposal", "plan", "order", "original-order", "reflex-order", "filler-order",
        "instance-order", "option"}),
    ("MedicationStatement", "status"): frozenset({
        "active", "completed", "entered-in-error", "intended", "stopped", "on-hold", "unknown",
        "not-taken"}),
    ("MedicationDispense", "status"): frozenset({
        "preparation", "in-progress", "cancelled", "on-hold", "completed", "entered-in-error",
        "stopped", "declined", "unknown"}),
    ("MedicationAdministration", "status"): frozenset({
        "in-progress", "not-done", "on-hold", "completed", "entered-in-error", "stopped",
        "unknown"}),
    ("Patient", "gender"): frozenset({"male", "female", "other", "unknown"}),
}
# CodeableConcepts bound to a code system: the coding of that system must hold one of the codes
_BOUND_SYSTEMS: Mapping[tuple[str, str], str] = {
    ("Condition", "clinicalStatus"):
        "http://terminology.hl7.org/CodeSystem/condition-clinical",
    ("Condition", "verificationStatus"):
        "http://terminology.hl7.org/CodeSystem/condition-ver-status",
}
_COMPARATORS = frozenset({"<", "<=", ">=", ">"})
_CODEABLE_ELEMENTS = frozenset({"code", "medicationCodeableConcept"})
# Read elements whose value is a FHIR date, dateTime or instant (a JSON string).
_TIME_ELEMENTS = frozenset({
    "effectiveDateTime", "effectiveInstant", "issued", "onsetDateTime", "abatementDateTime",
    "recordedDate", "authoredOn", "dateAsserted", "performedDateTime", "whenHandedOver",
    "birthDate"})
_PERIOD_ELEMENTS = frozenset({"effectivePeriod", "onsetPeriod", "abatementPeriod",
                              "performedPeriod"})
_QUANTITY_ELEMENTS = frozenset({"valueQuantity", "daysSupply", "onsetAge", "abatementAge"})


def read_problems(resource: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(FHIR path, message) for what the rules read and fhir.resources lets through."""
    resource_type = str(resource.get("resourceType"))
    for key, value in resource.items():
        if not is_read(resource_type, key):
            continue
        path = f"{resource_type}.{key}"
        null = _null_in(value, path)
        if null is not None:  # FHIR JSON has no null element: present with a value, or absent
            yield null, "null is not a value in FHIR JSON"
            continue
        codes = _REQUIRED_CODES.get((resource_type, key))
        if codes is not None:
            yield from _code_problems(value, codes, _BOUND_SYSTEMS.get((resource_type, key)),
                                      path)
        if key in _TIME_ELEMENTS and not isinstance(value, str):
            yield path, f"a date or time must be a JSON string (not {_kind(value)})"
        elif key in _PERIOD_ELEMENTS or key == "dispenseRequest":
            period = value.get("validityPeriod") if key == "dispenseRequest" and isinstance(
                value, Mapping) else value
            yield from _period_problems(period, path)
        elif key in _QUANTITY_ELEMENTS:
            yield from _quantity_problems(value, path)
        elif key == "referenceRange" and isinstance(value, list):
            for index, item in enumerate(value):
                for bound in ("low", "high"):
                    if isinstance(item, Mapping) and bound in item:
                        yield from _quantity_problems(item[bound], f"{path}[{index}].{bound}")
        elif key == "valueInteger" and (isinstance(value, bool) or not isinstance(value, int)):
            yield path, f"an integer must be a JSON number (not {_kind(value)})"
        elif key in _CODEABLE_ELEMENTS and isinstance(value, Mapping) \
                and not value.get("coding") and not value.get("text"):
            yield path, "a CodeableConcept needs a coding or a text"


def _null_in(value: Any, path: str) -> str | None:
    """The path of the first null in an element (a null in a list of primitives that has a
    `_name` extension list beside it is allowed, but nothing the rules read is such a list)."""
    if value is None:
        return path
    if isinstance(value, Mapping):
        for key, inner in value.items():
            found = _null_in(inner, f"{path}.{key}")
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found = _null_in(inner, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _code_problems(value: Any, codes: frozenset[str], system: str | None,
                   path: str) -> Iterator[tuple[str, str]]:
    if system is None:
        if isinstance(value, str) and value not in codes:
            yield path, (f"{value[:40]!r} is not a code of the R4 value set "
                         f"({', '.join(sorted(codes))})")
        return
    codings = value.get("coding") if isinstance(value, Mapping) else None
    for index, coding in enumerate(codings if isinstance(codings, list) else []):
        if isinstance(coding, Mapping) and coding.get("system") == system \
                and coding.get("code") not in codes:
            yield (f"{path}.coding[{index}].code",
                   f"{str(coding.get('code'))[:40]!r} is not a code of {system}")


def _period_problems(period: Any, path: str) -> Iterator[tuple[str, str]]:
    if not isinstance(period, Mapping):
        return
    for bound in ("start", "end"):
        if bound in period and not isinstance(period[bound], str):
            yield (f"{path}.{bound}",
                   f"a date or time must be a JSON string (not {_kind(period[bound])})")
    start, end = parse_datetime(period.get("start")), parse_datetime(period.get("end"))
    if start and end and start > end:
        yield path, "period start is after its end (per-1)"


def _quantity_problems(quantity: Any, path: str) -> Iterator[tuple[str, str]]:
    if not isinstance(quantity, Mapping):
        return
    value = quantity.get("value")
    if "value" in quantity and (isinstance(value, (bool, str)) or value is None):
        yield f"{path}.value", f"a decimal must be a JSON number (not {_kind(value)})"
    comparator = quantity.get("comparator")
    if comparator is not None and comparator not in _COMPARATORS:
        yield f"{path}.comparator", f"{str(comparator)[:10]!r} is not a comparator (<, <=, >=, >)"


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "null" if value is None else type(value).__name__
