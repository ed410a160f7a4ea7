"""Which patient a raw resource belongs to, decided on the raw JSON (no validation).

Shared by the local partitioner and the Spark job so that both group resources identically.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ..ingest import canonical_reference, loose_subject, patient_reference_of
from ..sources import RawResource

MEDICATION = "\x00medication"  # not a patient: shared by every patient that refers to it
UNOWNED = "\x00unowned"  # Practitioner, Organization...: no rule reads them


def bundle_aliases(items: Iterable[RawResource]) -> dict[str, str]:
    """fullUrl -> `Patient/id` for the Patient entries of one Bundle (urn:uuid references)."""
    aliases = {}
    for item in items:
        resource = item.resource
        if resource.get("resourceType") == "Patient" and item.full_url:
            aliases[item.full_url] = patient_key(resource, item.full_url, {})
    return aliases


def patient_key(resource: Mapping[str, Any], full_url: str | None,
                aliases: Mapping[str, str]) -> str:
    resource_type = resource.get("resourceType")
    if resource_type == "Patient":
        if isinstance(resource.get("id"), str):
            return f"Patient/{resource['id']}"
        return full_url or UNOWNED
    if resource_type == "Medication":
        return MEDICATION
    # a malformed subject still names its patient: the resource is unreadable on that
    # patient's record (docs/clinical-basis.md), never dropped as nobody's
    reference = patient_reference_of(resource) or loose_subject(resource)
    if reference is None:
        return UNOWNED
    return aliases.get(reference) or canonical_reference(reference)


def keyed(items: list[RawResource]) -> Iterator[tuple[str, RawResource]]:
    """(patient key, resource) for the resources of one file or Bundle."""
    aliases = bundle_aliases(items)
    for item in items:
        yield patient_key(item.resource, item.full_url, aliases), item
