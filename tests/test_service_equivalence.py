"""Service == evaluate: the cards' rule ids and severities equal `evaluate`'s findings for the same
record, however the record reaches the service — a complete prefetch, a prefetch paged at page
size 1 whose other pages the service fetches, no prefetch at all (the FHIR server serves pages
of one), or a Bundle through the CLI. Where the record cannot be completed: 412, never a card.

Patients: every fhir_examples/ Bundle, and hypothesis-generated records whose codes, units and
values are drawn from the rule set itself (concepts of the value sets, thresholds of the rules).
One FHIR server for the module; generated records are PUT into it as they are drawn.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fasciculation_cds import evaluate
from fasciculation_cds.cli import app as cli_app
from fasciculation_cds.ruleset import RuleSet
from fasciculation_cds.service import create_app
from fasciculation_cds.service.prefetch import fill, templates

from .conftest import EXAMPLES, RULES_DIR
from .service_helpers import FhirServer, Keys, card_findings, hook_request, prefetch_from_bundle

pytestmark = pytest.mark.fhirserver

PV = "fasciculation-cds-patient-view"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.json"))
PROPERTY = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
_ids = itertools.count()


@pytest.fixture(scope="module")
def fhir_server() -> Iterator[FhirServer]:
    server = FhirServer(EXAMPLE_FILES, max_count=1)  # every search answers one per page
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def service(fhir_server: FhirServer, ruleset: RuleSet,
            tmp_path_factory: pytest.TempPathFactory) -> tuple[TestClient, Keys]:
    folder = tmp_path_factory.mktemp("svc")
    keys = Keys(folder)
    settings_ = keys.settings(feedback_database_url=f"sqlite:///{folder / 'f.db'}",
                              fhir_servers=[fhir_server.base], fhir_max_pages=1000)
    return TestClient(create_app(settings_, ruleset=ruleset, clock=lambda: NOW)), keys


def _records(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The Bundle's resources as a FHIR server holds them (references by Type/id)."""
    _, prefetch = prefetch_from_bundle(bundle)
    resources = [prefetch["patient"]]
    for key, value in prefetch.items():
        if key != "patient":
            resources += [e["resource"] for e in value["entry"]]
    return resources


def expected(records: list[dict[str, Any]], ruleset: RuleSet) -> list[tuple[str, str]]:
    [assessment] = evaluate(records, as_of=NOW, rules=ruleset)
    return sorted((f.rule_id, f.severity) for f in assessment.findings)


def complete_prefetch(records: list[dict[str, Any]], ruleset: RuleSet) -> dict[str, Any]:
    """What an EHR sends for our templates when it follows every page itself."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in records:
        by_type.setdefault(resource["resourceType"], []).append(resource)
    prefetch: dict[str, Any] = {}
    for key, template in templates(ruleset, "patient-view").items():
        kind = template.split("?")[0].split("/")[0]
        if key == "patient":
            prefetch[key] = by_type["Patient"][0]
        else:
            prefetch[key] = {"resourceType": "Bundle", "type": "searchset",
                             "total": len(by_type.get(kind, [])),
                             "entry": [{"resource": r} for r in by_type.get(kind, [])]}
    return prefetch


def paged_prefetch(base: str, patient_id: str, ruleset: RuleSet) -> dict[str, Any]:
    """What the CDS Hooks sandbox sends: page 1 of each search, with its `next` link."""
    prefetch = {}
    for key, template in templates(ruleset, "patient-view").items():
        prefetch[key] = httpx.get(f"{base}/{fill(template, patient_id, NOW.date())}").json()
    return prefetch


def call(service: tuple[TestClient, Keys], body: dict[str, Any]) -> httpx.Response:
    client, keys = service
    return client.post(f"/cds-services/{PV}", headers=keys.headers(f"/cds-services/{PV}"),
                       json=body)


def through_cli(records: list[dict[str, Any]], folder: Path) -> list[tuple[str, str]]:
    path = folder / f"bundle-{next(_ids)}.json"
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                                "entry": [{"resource": r} for r in records]}))
    done = CliRunner().invoke(cli_app, ["evaluate", str(path), "--as-of", NOW.isoformat(),
                                        "--format", "json", "--rules", str(RULES_DIR)])
    assert done.exit_code == 0, done.output
    [assessment] = json.loads(done.stdout)
    return sorted((f["rule_id"], f["severity"]) for f in assessment["findings"])


def check_every_way(records: list[dict[str, Any]], ruleset: RuleSet, fhir_server: FhirServer,
                    service: tuple[TestClient, Keys], folder: Path) -> None:
    patient_id = records[0]["id"]
    want = expected(records, ruleset)
    ways = {
        "complete prefetch": hook_request("patient-view", patient_id,
                                          complete_prefetch(records, ruleset)),
        "paged prefetch": hook_request("patient-view", patient_id,
                                       paged_prefetch(fhir_server.base, patient_id, ruleset),
                                       fhirServer=fhir_server.base),
        "no prefetch": hook_request("patient-view", patient_id, None,
                                    fhirServer=fhir_server.base),
    }
    for way, body in ways.items():
        answer = call(service, body)
        assert answer.status_code == 200, (way, answer.text)
        assert card_findings(answer.json()["cards"]) == want, way
    assert through_cli(records, folder) == want, "CLI"
    # the paged prefetch with no server to complete it from: refused, never a card
    paged = ways["paged prefetch"]
    paged.pop("fhirServer")
    pages = [v for v in paged["prefetch"].values() if any(
        link.get("relation") == "next" for link in v.get("link", []))]
    if pages:
        answer = call(service, paged)
        assert answer.status_code == 412, answer.text
        assert "cards" not in answer.json()


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_examples_service_equals_evaluate(example: Path, ruleset: RuleSet,
                                          fhir_server: FhirServer,
                                          service: tuple[TestClient, Keys],
                                          tmp_path: Path) -> None:
    records = _records(json.loads(example.read_text()))
    check_every_way(records, ruleset, fhir_server, service, tmp_path)


# --- generated records ----------------------------------------------------------------------


def _thresholds(ruleset: RuleSet) -> dict[str, set[tuple[Fraction, str]]]:
    """Every (value, unit) a rule compares a lab concept against."""
    found: dict[str, set[tuple[Fraction, str]]] = {}
    for rule in ruleset.active_rules():
        for match in rule.match:
            for pattern in [*match.facts.values(),
                            *(p for e in match.escalate for p in e.facts.values())]:
                if pattern.value is None:
                    continue
                unit = pattern.value.unit
                for concept in [*(pattern.concepts or []), *filter(None, [pattern.concept])]:
                    unit = unit or ruleset.units.canonical_unit(concept)
                    for bound in (pattern.value.lt, pattern.value.lte, pattern.value.gt,
                                  pattern.value.gte):
                        if bound is not None and unit:
                            found.setdefault(concept, set()).add(
                                (Fraction(str(bound)), unit))
    return found


def _coded(ruleset: RuleSet, kinds: set[str],
           systems: set[str] | None = None) -> list[tuple[str, str, str]]:
    term = ruleset.terminology
    out = []
    for concept in sorted(c.id for c in term.concepts.values() if c.kind in kinds):
        pairs = [(s, c) for s, c in term.codes_of([concept]) if systems is None or s in systems]
        if pairs:
            out.append((pairs[0][0], pairs[0][1], term.concepts[concept].label))
    return out


LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


@st.composite
def patient_records(draw: st.DrawFn, ruleset: RuleSet) -> list[dict[str, Any]]:
    pid = f"gen-{next(_ids)}"
    subject = {"reference": f"Patient/{pid}"}
    days_ago = st.sampled_from([0, 1, 20, 29, 31, 89, 91, 200, 364, 366, 380])

    def when(days: int) -> str:
        return (NOW - timedelta(days=days, hours=1)).isoformat().replace("+00:00", "Z")

    records: list[dict[str, Any]] = [{
        "resourceType": "Patient", "id": pid, "gender": draw(st.sampled_from(["female", "male"])),
        "birthDate": f"{draw(st.integers(1940, 2005))}-03-02"}]
    coded = _coded(ruleset, {"condition", "finding"}, {ICD10CM, SNOMED})
    for index in range(draw(st.integers(0, 4))):
        system, code, label = draw(st.sampled_from(coded))
        records.append({
            "resourceType": "Condition", "id": f"{pid}-c{index}", "subject": subject,
            "clinicalStatus": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                "code": draw(st.sampled_from(["active", "active", "resolved"]))}]},
            "verificationStatus": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                "code": draw(st.sampled_from(["confirmed", "provisional", "refuted"]))}]},
            "code": {"coding": [{"system": system, "code": code, "display": label}]},
            "onsetDateTime": when(draw(days_ago))})
    signs = _coded(ruleset, {"finding"}, {SNOMED})
    for index in range(draw(st.integers(0, 2))):
        system, code, label = draw(st.sampled_from(signs))
        records.append({
            "resourceType": "Observation", "id": f"{pid}-s{index}", "status": "final",
            "subject": subject, "effectiveDateTime": when(draw(days_ago)),
            "code": {"coding": [{"system": system, "code": code, "display": label}]}})
    thresholds = _thresholds(ruleset)
    labs = sorted(thresholds)
    for index in range(draw(st.integers(0, 5))):
        concept = draw(st.sampled_from(labs))
        loinc = [c for s, c in ruleset.terminology.codes_of([concept]) if s == LOINC]
        if not loinc:
            continue
        bound, unit = draw(st.sampled_from(sorted(thresholds[concept])))
        factor = draw(st.sampled_from(["0.7", "0.95", "1", "1.05", "1.4"]))
        value = float(round(bound * Fraction(factor), 2))
        records.append({
            "resourceType": "Observation", "id": f"{pid}-l{index}", "status": "final",
            "subject": subject, "effectiveDateTime": when(draw(days_ago)),
            "code": {"coding": [{"system": LOINC, "code": loinc[0]}]},
            "valueQuantity": {"value": value, "unit": unit,
                              "system": "http://unitsofmeasure.org", "code": unit}})
    procedures = _coded(ruleset, {"procedure"})
    for index in range(draw(st.integers(0, 1)) if procedures else 0):
        system, code, label = draw(st.sampled_from(procedures))
        records.append({
            "resourceType": "Procedure", "id": f"{pid}-p{index}", "subject": subject,
            "status": draw(st.sampled_from(["completed", "in-progress", "not-done"])),
            "code": {"coding": [{"system": system, "code": code, "display": label}]},
            "performedDateTime": when(draw(days_ago))})
    drugs = _coded(ruleset, {"medication"}, {RXNORM})
    for index in range(draw(st.integers(0, 3))):
        system, code, label = draw(st.sampled_from(drugs))
        records.append({
            "resourceType": "MedicationRequest", "id": f"{pid}-m{index}", "subject": subject,
            "status": draw(st.sampled_from(["active", "active", "stopped"])), "intent": "order",
            "authoredOn": when(draw(days_ago)),
            "medicationCodeableConcept": {"coding": [{"system": system, "code": code,
                                                      "display": label}]}})
    return records


def _store(base: str, records: list[dict[str, Any]]) -> None:
    for resource in records:
        answer = httpx.put(f"{base}/{resource['resourceType']}/{resource['id']}", json=resource,
                           headers={"Content-Type": "application/fhir+json"})
        assert answer.status_code in (200, 201), answer.text


def test_generated_service_equals_evaluate(ruleset: RuleSet, fhir_server: FhirServer,
                                           service: tuple[TestClient, Keys],
                                           tmp_path: Path) -> None:
    @PROPERTY
    @given(records=patient_records(ruleset))
    def check(records: list[dict[str, Any]]) -> None:
        _store(fhir_server.base, records)
        check_every_way(records, ruleset, fhir_server, service, tmp_path)

    check()
