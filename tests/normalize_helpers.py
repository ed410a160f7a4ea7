"""Hand-built FHIR for the normalization tests, and a way to see the facts it becomes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from fasciculation_cds import evaluate
from fasciculation_cds.assessment import Assessment
from fasciculation_cds.evaluate import ingest
from fasciculation_cds.normalize import NormalizedPatient, Normalizer
from fasciculation_cds.ruleset import RuleSet

Resource = dict[str, Any]

AS_OF = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
PATIENT = "p1"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
LOCAL = "http://hospital.example.org/codes"

FASCICULATION = (ICD10CM, "R25.3", "Fasciculation")
ALS = (ICD10CM, "G12.21", "Amyotrophic lateral sclerosis")
WEAKNESS = (ICD10CM, "M62.81", "Muscle weakness (generalized)")
HYPERREFLEXIA = (SNOMED, "86854008", "Hyperreflexia")
MS = (ICD10CM, "G35", "Multiple sclerosis")
ALCOHOL_WITHDRAWAL = (SNOMED, "191480000", "Alcohol withdrawal syndrome (disorder)")
HYPOGLYCEMIA = (SNOMED, "302866003", "Hypoglycemia (disorder)")
DIALYSIS = (SNOMED, "265764009", "Renal dialysis (procedure)")

_counter = iter(range(1, 1_000_000))


def days_ago(days: float) -> str:
    return (AS_OF - timedelta(days=days)).isoformat().replace("+00:00", "Z")


def codeable(coding: tuple[str, str, str] | None = None, text: str | None = None) -> Resource:
    out: Resource = {}
    if coding is not None:
        out["coding"] = [{"system": coding[0], "code": coding[1], "display": coding[2]}]
    if text is not None:
        out["text"] = text
    return out


def patient() -> Resource:
    return {"resourceType": "Patient", "id": PATIENT, "gender": "female",
            "birthDate": "1970-01-01"}


def condition(code: Resource | tuple[str, str, str], *, clinical: str | None = "active",
              verification: str | None = "confirmed", rid: str | None = None,
              **fields: Any) -> Resource:
    resource: Resource = {"resourceType": "Condition", "id": rid or f"c{next(_counter)}",
                          "subject": {"reference": f"Patient/{PATIENT}"},
                          "code": code if isinstance(code, dict) else codeable(code)}
    if clinical is not None:
        resource["clinicalStatus"] = {"coding": [{"system": CLINICAL, "code": clinical}]}
    if verification is not None:
        resource["verificationStatus"] = {"coding": [{"system": VERIFICATION,
                                                      "code": verification}]}
    if "onsetDateTime" not in fields and "recordedDate" not in fields and not any(
            key.startswith("onset") for key in fields):
        fields["onsetDateTime"] = days_ago(20)
    resource.update(fields)
    return resource


def observation(code: Resource | tuple[str, str, str], *, days: float = 3,
                status: str = "final", rid: str | None = None, **value: Any) -> Resource:
    return {"resourceType": "Observation", "id": rid or f"o{next(_counter)}", "status": status,
            "code": code if isinstance(code, dict) else codeable(code),
            "subject": {"reference": f"Patient/{PATIENT}"},
            "effectiveDateTime": days_ago(days), **value}


def lab(loinc: str, value: float | int, unit: str, *, days: float = 3,
        comparator: str | None = None, rid: str | None = None, **extra: Any) -> Resource:
    quantity: Resource = {"value": value, "unit": unit, "system": "http://unitsofmeasure.org",
                          "code": unit}
    if comparator:
        quantity["comparator"] = comparator
    return observation(codeable((LOINC, loinc, loinc)), days=days, rid=rid,
                       valueQuantity=quantity, **extra)


def medication_request(medication: Resource, *, rid: str | None = None) -> Resource:
    return {"resourceType": "MedicationRequest", "id": rid or f"m{next(_counter)}",
            "status": "active", "intent": "order", "subject": {"reference": f"Patient/{PATIENT}"},
            "authoredOn": days_ago(10), "medicationCodeableConcept": medication}


def procedure(code: tuple[str, str, str], *, status: str = "completed", **fields: Any) -> Resource:
    resource: Resource = {"resourceType": "Procedure", "id": f"pr{next(_counter)}",
                          "status": status, "code": codeable(code),
                          "subject": {"reference": f"Patient/{PATIENT}"}}
    resource.update(fields)
    return resource


def normalized(ruleset: RuleSet, *resources: Resource,
               assume_presentation: bool = False) -> NormalizedPatient:
    result = ingest([patient(), *resources], ruleset)
    (record,) = result.patients
    return Normalizer(ruleset).run(record, AS_OF, assume_presentation=assume_presentation)


def assessed(ruleset: RuleSet, *resources: Resource,
             assume_presentation: bool = False) -> Assessment:
    (assessment,) = evaluate([patient(), *resources], as_of=AS_OF, rules=ruleset,
                             assume_presentation=assume_presentation)
    return assessment


def concepts(result: NormalizedPatient, kind: str | None = None) -> set[str]:
    return {str(getattr(f, "concept", "")) for f in result.facts
            if (kind is None or f.kind == kind) and f.kind != "patient"}


def notice_codes(result: NormalizedPatient) -> list[str]:
    return sorted(n.code for n in result.notices)
