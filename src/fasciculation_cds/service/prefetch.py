"""The prefetch templates the service asks for, and how it gets what an EHR did not send."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta
from typing import Any

from ..ruleset import RuleSet
from .fhir_client import FhirClient, FhirUnavailableError

LOOKBACK_DAYS = 400  # a little more than the rules' largest look-back (372 days)


def lab_codes(ruleset: RuleSet) -> str:
    lab_concepts = [c.id for c in ruleset.terminology.concepts.values() if c.kind == "lab"]
    pairs = ruleset.terminology.codes_of(lab_concepts)
    loinc = ruleset.terminology.system_uri("loinc")
    return ",".join(f"{system}|{code}" for system, code in pairs if system == loinc)


def templates(ruleset: RuleSet) -> dict[str, str]:
    """Prefetch templates with CDS Hooks tokens: `{{context.patientId}}`, `{{today() - N days}}`."""
    patient = "{{context.patientId}}"
    return {
        "patient": f"Patient/{patient}",
        "observations": f"Observation?patient={patient}&code={lab_codes(ruleset)}"
                        f"&date=ge{{{{today() - {LOOKBACK_DAYS} days}}}}&_count=200",
        "conditions": f"Condition?patient={patient}",
        "medicationRequests": f"MedicationRequest?patient={patient}",
        "medicationStatements": f"MedicationStatement?patient={patient}",
    }


def fill(template: str, patient_id: str, today: date) -> str:
    query = template.replace("{{context.patientId}}", patient_id)
    marker = "{{today() - "
    while marker in query:
        start = query.index(marker)
        end = query.index("}}", start)
        days = int(query[start + len(marker):end].split()[0])
        query = query[:start] + (today - timedelta(days=days)).isoformat() + query[end + 2:]
    return query


def prefetched_resources(value: Any) -> list[dict[str, Any]] | None:
    """Resources from one prefetch value; None when it cannot be used (missing, null, error)."""
    if not isinstance(value, Mapping):
        return None
    if value.get("resourceType") == "OperationOutcome":
        return None
    if value.get("resourceType") == "Bundle":
        return [dict(e["resource"]) for e in value.get("entry") or []
                if isinstance(e, Mapping) and isinstance(e.get("resource"), Mapping)
                and e["resource"].get("resourceType") != "OperationOutcome"]
    return [dict(value)]


def gather(prefetch: Mapping[str, Any] | None, patient_id: str, ruleset: RuleSet,
           client: FhirClient | None, today: date) -> list[dict[str, Any]]:
    """Every resource the evaluation needs: from the prefetch where sent, else from FHIR."""
    resources: list[dict[str, Any]] = []
    prefetch = prefetch or {}
    for value in prefetch.values():  # any key: EHRs also send data under their own keys
        found = prefetched_resources(value)
        if found:
            resources += found
    for key, template in templates(ruleset).items():
        if prefetched_resources(prefetch.get(key)) is not None:
            continue
        if client is None:
            raise FhirUnavailableError(f"prefetch '{key}' missing and no fhirServer to ask")
        resources += client.read(fill(template, patient_id, today))
    return resources
