"""Recognising a document written in another FHIR version than R4 (DSTU2, STU3, R5).

Such a document often parses as R4 resources with a few elements ignored or types unknown, so
its orders and results would silently go missing. It is refused instead, naming the version.
The markers are resource types and elements that exist in that version and not in R4, or an
element whose JSON type differs (a `code` string where R4 has a CodeableConcept), from the
published FHIR specifications: DSTU2 1.0.2 (hl7.org/fhir/DSTU2), STU3 3.0.2 (hl7.org/fhir/STU3),
R4 4.0.1 and R5 5.0.0 (hl7.org/fhir/R5) resource lists and element tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

R4_ONLY = "this package reads FHIR R4 only"

# Resource types of another version that R4 (and R4B) do not have.
_TYPES: Mapping[str, str] = {
    "MedicationOrder": "DSTU2", "DiagnosticOrder": "DSTU2", "DeviceUseRequest": "DSTU2",
    "Order": "DSTU2", "OrderResponse": "DSTU2", "Conformance": "DSTU2",
    "ImagingObjectSelection": "DSTU2",
    "ProcedureRequest": "STU3 (or DSTU2)", "ReferralRequest": "STU3 (or DSTU2)",
    "ProcessRequest": "STU3 (or DSTU2)", "ProcessResponse": "STU3 (or DSTU2)",
    "EligibilityRequest": "STU3", "EligibilityResponse": "STU3", "BodySite": "STU3",
    "DataElement": "STU3", "ImagingManifest": "STU3", "Sequence": "STU3",
    "ServiceDefinition": "STU3", "DeviceComponent": "STU3",
    "MedicationUsage": "R5", "ActorDefinition": "R5",
    "Requirements": "R5", "InventoryItem": "R5", "InventoryReport": "R5", "Transport": "R5",
    "FormularyItem": "R5", "GenomicStudy": "R5", "ArtifactAssessment": "R5",
    "ConditionDefinition": "R5", "DeviceDispense": "R5", "DeviceUsage": "R5",
    "EncounterHistory": "R5", "NutritionIntake": "R5", "Permission": "R5", "TestPlan": "R5",
    "ImagingSelection": "R5",
}

# (type, element) present only in another version.
_ELEMENTS: Mapping[tuple[str, str], str] = {
    ("Encounter", "patient"): "DSTU2", ("Immunization", "wasNotGiven"): "DSTU2",
    ("Immunization", "reported"): "DSTU2", ("Condition", "dateRecorded"): "DSTU2",
    ("Patient", "careProvider"): "DSTU2", ("MedicationStatement", "wasNotTaken"): "DSTU2",
    ("MedicationStatement", "reasonNotTaken"): "STU3 (or DSTU2)",
    ("Observation", "context"): "STU3", ("DiagnosticReport", "context"): "STU3",
    ("MedicationRequest", "context"): "STU3",
    ("MedicationStatement", "taken"): "STU3", ("MedicationDispense", "notDone"): "STU3",
    ("MedicationAdministration", "notGiven"): "STU3", ("Procedure", "notDone"): "STU3",
    ("Procedure", "context"): "STU3", ("Condition", "assertedDate"): "STU3",
    ("Condition", "context"): "STU3", ("Immunization", "notGiven"): "STU3",
    ("CarePlan", "context"): "STU3",
    ("MedicationRequest", "medication"): "R5", ("MedicationStatement", "medication"): "R5",
    ("MedicationDispense", "medication"): "R5", ("MedicationAdministration", "medication"): "R5",
    ("Procedure", "occurrenceDateTime"): "R5", ("Procedure", "occurrencePeriod"): "R5",
    ("Encounter", "actualPeriod"): "R5", ("Condition", "participant"): "R5",
}

# (type, element) that R4 has as an object but the other version as a string (a code).
_STRING_ELEMENTS: Mapping[tuple[str, str], str] = {
    ("Condition", "clinicalStatus"): "STU3 (or DSTU2)",
    ("Condition", "verificationStatus"): "STU3 (or DSTU2)",
    ("AllergyIntolerance", "clinicalStatus"): "STU3",
    ("AllergyIntolerance", "verificationStatus"): "STU3",
    ("Encounter", "class"): "DSTU2",
}


def _by_type(table: Mapping[tuple[str, str], str]) -> dict[str, frozenset[str]]:
    found: dict[str, set[str]] = {}
    for resource_type, element in table:
        found.setdefault(resource_type, set()).add(element)
    return {key: frozenset(value) for key, value in found.items()}


# The same tables by type, so that a resource of a type with no marker costs one look-up.
_ELEMENTS_BY_TYPE = _by_type(_ELEMENTS)
_STRINGS_BY_TYPE = _by_type(_STRING_ELEMENTS)
_EMPTY: frozenset[str] = frozenset()


def other_version(resource: Mapping[str, Any]) -> tuple[str, str] | None:
    """(version, marker) when `resource` is written in another FHIR version than R4."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        return None
    if resource_type in _TYPES:
        return _TYPES[resource_type], f"resource type {resource_type}"
    present = resource.keys() & _ELEMENTS_BY_TYPE.get(resource_type, _EMPTY)
    if present:
        key = min(present)
        return _ELEMENTS[resource_type, key], f"{resource_type}.{key}"
    for key in sorted(resource.keys() & _STRINGS_BY_TYPE.get(resource_type, _EMPTY)):
        if isinstance(resource[key], str):
            return _STRING_ELEMENTS[resource_type, key], f"{resource_type}.{key} as a code"
    return None


def other_version_in(document: Mapping[str, Any]) -> str | None:
    """The refusal of a document (a resource, or a Bundle and its entries and contained
    resources) written in another FHIR version, naming the version and where it shows; None
    for R4."""
    found = _in_resource(document, "")
    if found is None:
        return None
    version, where = found
    return f"FHIR {version} content ({where}): {R4_ONLY}"


def _in_resource(resource: Mapping[str, Any], path: str) -> tuple[str, str] | None:
    found = other_version(resource)
    if found is not None:
        return found[0], f"{path}{found[1]}"
    for index, contained in enumerate(_objects(resource.get("contained"))):
        inner = _in_resource(contained, f"{path}contained[{index}] ")
        if inner is not None:
            return inner
    if resource.get("resourceType") == "Bundle":
        for index, entry in enumerate(_objects(resource.get("entry"))):
            inner_resource = entry.get("resource")
            if isinstance(inner_resource, Mapping):
                inner = _in_resource(inner_resource, f"{path}entry[{index}] ")
                if inner is not None:
                    return inner
    return None


def _objects(items: Any) -> list[Mapping[str, Any]]:
    return [i for i in items if isinstance(i, Mapping)] if isinstance(items, list) else []
