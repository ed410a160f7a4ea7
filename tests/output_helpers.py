"""Small FHIR records for the output tests (checked section, presentation, escaping)."""

from __future__ import annotations

from typing import Any

AS_OF = "2026-12-01"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ACTIVE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                      "code": "active"}]}


def patient(pid: str = "p1", birth: str = "1970-01-01") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "birthDate": birth, "gender": "female"}


def condition(cid: str, code: str, *, text: str | None = None, onset: str = "2026-10-01",
              pid: str = "p1", system: str = SNOMED) -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": [{"system": system, "code": code}]}
    if text is not None:
        concept = {"text": text}
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": f"Patient/{pid}"},
            "clinicalStatus": ACTIVE, "code": concept, "onsetDateTime": onset}


def fasciculation(pid: str = "p1") -> dict[str, Any]:
    # R25.3 Fasciculation (no SNOMED CT code is in the value sets for it)
    return condition("fasc", "R25.3", pid=pid, system="http://hl7.org/fhir/sid/icd-10-cm")


def lab(oid: str, loinc: str, value: float | str, unit: str, day: str = "2026-11-02", *,
        status: str = "final", pid: str = "p1", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": status,
            "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": LOINC, "code": loinc}]}, "effectiveDateTime": day,
            "valueQuantity": {"value": value, "unit": unit, "code": unit, **extra}}


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": r} for r in resources]}
