"""The top-level elements of each resource type that grouping, normalization and `as_of=auto`
read: what is validated with fhir.resources before a resource reaches the rules.

A rule can only be misled by an element something reads, so those are validated in full (type,
cardinality, required children, FHIR primitives) and a problem there makes the patient an error
row, as ever. An element nothing reads (narrative, identifiers, encounter, performer, notes...)
cannot change any finding, and no longer turns a patient whose record is otherwise sound into an
error: `strict` still validates every element of every resource. `tests/test_read_elements.py`
records what normalization reads on real records and fails if it reads anything not listed here.

A name ending in `[x]` is a FHIR choice element: every `name*` key (valueQuantity, valueString...).
A primitive's extension (`_name`) goes with its element. A key that is no element of the type at
all (a misspelling, another FHIR version's name) is kept, so validation still refuses it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .fhir_validation import element_fields

# read for every type: grouping (subject, patient), references (id), contained Medications
_EVERY_TYPE = ("resourceType", "id", "subject", "patient", "contained")

READ_ELEMENTS: Mapping[str, tuple[str, ...]] = {
    "Patient": ("birthDate", "gender"),
    "Observation": ("status", "code", "value[x]", "dataAbsentReason", "effective[x]", "issued",
                    "interpretation", "referenceRange", "bodySite"),
    "Condition": ("clinicalStatus", "verificationStatus", "code", "onset[x]", "abatement[x]",
                  "recordedDate", "bodySite"),
    "Procedure": ("status", "code", "performed[x]"),
    "MedicationRequest": ("status", "intent", "medication[x]", "authoredOn", "dispenseRequest",
                          "dosageInstruction"),
    "MedicationStatement": ("status", "medication[x]", "effective[x]", "dateAsserted", "dosage"),
    "MedicationDispense": ("status", "medication[x]", "whenHandedOver", "daysSupply",
                           "dosageInstruction"),
    "MedicationAdministration": ("status", "medication[x]", "effective[x]", "dosage"),
    "DiagnosticReport": ("status", "code", "effective[x]", "issued", "result"),
    "Medication": ("code", "form"),
    "FamilyMemberHistory": ("status", "relationship", "condition"),  # relationship: required
}


@dataclass(frozen=True)
class _Matcher:
    exact: frozenset[str]
    prefixes: tuple[str, ...]
    elements: frozenset[str]
    """Every element (and `_element`) the type has in FHIR R4."""

    def keeps(self, key: str) -> bool:
        name = key[1:] if key.startswith("_") else key
        return name in self.exact or name.startswith(self.prefixes) or key not in self.elements


@functools.cache
def _matcher(resource_type: str) -> _Matcher | None:
    names = READ_ELEMENTS.get(resource_type)
    if names is None:
        return None
    elements = frozenset(element_fields(resource_type))
    return _Matcher(
        exact=frozenset(n for n in (*_EVERY_TYPE, *names) if not n.endswith("[x]")),
        prefixes=tuple(n.removesuffix("[x]") for n in names if n.endswith("[x]")),
        elements=elements | {"resourceType"})


def is_read(resource_type: str, element: str) -> bool:
    """Whether `element` of a `resource_type` is validated before rules see it: it is read, or
    it is no element of the type (unknown types: every element)."""
    matcher = _matcher(resource_type)
    return matcher is None or matcher.keeps(element)


def read_part(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The resource limited to what is validated (the whole of an unlisted type)."""
    matcher = _matcher(str(resource.get("resourceType")))
    if matcher is None:
        return dict(resource)
    return {key: value for key, value in resource.items() if matcher.keeps(key)}
