"""Service == evaluate: the cards' rule ids and severities equal `evaluate`'s findings for the same
record, however the record reaches the service — a complete prefetch, a prefetch paged at page
size 1 whose other pages the service fetches, no prefetch at all (the FHIR server serves pages
of one), or a Bundle through the CLI. Where the record cannot be completed: no finding (412
here), never a card of the partial record.

The records use every way a counted resource can be dated (effective, `issued` only, Condition
onset, `recordedDate` only, onset as an age) and every resource type the v3 rules read
(DiagnosticReport with referenced and contained results, MedicationDispense,
MedicationAdministration, FamilyMemberHistory, drugs named by a Medication reference).

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
from .service_helpers import (
    FhirServer,
    Keys,
    card_findings,
    complete_searches,
    hook_request,
    prefetch_from_bundle,
)

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
                              fhir_servers=[fhir_server.base], fhir_max_pages=1000,
                              fhir_max_requests=100_000, incomplete_record="412")
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
    """What an EHR sends for our templates when it follows every page itself (`_include`d
    Medications and report results included)."""
    searches = complete_searches(records)
    medications = [r for r in records if r["resourceType"] == "Medication"]
    prefetch: dict[str, Any] = {}
    for key, template in templates(ruleset, "patient-view").items():
        if key == "patient":
            prefetch[key] = next(r for r in records if r["resourceType"] == "Patient")
            continue
        bundle = searches[key]
        if ":medication" in template:
            bundle["entry"] += [{"resource": m, "search": {"mode": "include"}}
                                for m in medications]
        prefetch[key] = bundle
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


def test_exam_finding_dated_only_by_issued_reaches_the_rules(ruleset: RuleSet,
                                                            fhir_server: FhirServer,
                                                            service: tuple[TestClient, Keys],
                                                            tmp_path: Path) -> None:
    """Hyperreflexia recorded without effective[x], dated by `issued` only: `evaluate` counts
    it (critical); a search by `date` alone never returns it, which made the service's answer
    a warning."""
    example = json.loads((EXAMPLES / "als-red-flags-critical.json").read_text())
    old_id = _records(example)[0]["id"]
    records = json.loads(json.dumps(_records(example)).replace(old_id, "issued-only"))
    [sign] = [r for r in records if r["resourceType"] == "Observation"
              and "Hyperreflexia" in json.dumps(r["code"])]
    sign["issued"] = sign.pop("effectiveDateTime")
    assert ("mnd.red-flags", "critical") in expected(records, ruleset)
    without = [r for r in records if r is not sign]
    assert ("mnd.red-flags", "critical") not in expected(without, ruleset)
    _store(fhir_server.base, records)
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

    born = draw(st.integers(1940, 2005))
    records: list[dict[str, Any]] = [{
        "resourceType": "Patient", "id": pid, "gender": draw(st.sampled_from(["female", "male"])),
        "birthDate": f"{born}-03-02"}]
    age_now = NOW.year - born - (1 if (NOW.month, NOW.day) < (3, 2) else 0)
    condition_dates = st.one_of(
        days_ago.map(lambda d: {"onsetDateTime": when(d)}),
        days_ago.map(lambda d: {"recordedDate": when(d)}),  # no onset: recordedDate decides
        st.sampled_from([age_now, age_now - 1, age_now - 5]).map(lambda a: {"onsetAge": {
            "value": a, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"}}),
        st.just({}))  # undated
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
            **draw(condition_dates)})
    signs = _coded(ruleset, {"finding"}, {SNOMED})
    for index in range(draw(st.integers(0, 2))):
        system, code, label = draw(st.sampled_from(signs))
        # an exam finding may carry only `issued` (R4, US Core): the date search misses it
        dated = draw(st.sampled_from(["effectiveDateTime", "issued"]))
        records.append({
            "resourceType": "Observation", "id": f"{pid}-s{index}", "status": "final",
            "subject": subject, dated: when(draw(days_ago)),
            "code": {"coding": [{"system": system, "code": code, "display": label}]}})
    for index in range(draw(st.integers(0, 1))):  # a relative's ALS/MND, or another condition
        system, code, label = draw(st.sampled_from(coded))
        records.append({
            "resourceType": "FamilyMemberHistory", "id": f"{pid}-f{index}",
            "status": "completed", "patient": subject,
            "relationship": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                "code": "MTH", "display": "mother"}]},
            "condition": [{"code": {"coding": [{"system": system, "code": code,
                                                "display": label}]}}]})
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
        result = {
            "resourceType": "Observation", "id": f"{pid}-l{index}", "status": "final",
            "subject": subject, "effectiveDateTime": when(draw(days_ago)),
            "code": {"coding": [{"system": LOINC, "code": loinc[0]}]},
            "valueQuantity": {"value": value, "unit": unit,
                              "system": "http://unitsofmeasure.org", "code": unit}}
        way = draw(st.sampled_from(["alone", "in a report", "contained", "report-dated"]))
        if way == "alone":
            records.append(result)
            continue
        # a result inside a DiagnosticReport: referenced, contained (no subject: the
        # report's), or without effective[x] (dated by the report)
        report: dict[str, Any] = {
            "resourceType": "DiagnosticReport", "id": f"{pid}-r{index}", "status": "final",
            "subject": subject, "code": {"text": "Laboratory panel"},
            "effectiveDateTime": when(draw(days_ago)), "issued": when(0)}
        if way == "contained":
            contained = {k: v for k, v in result.items() if k != "subject"}
            report["contained"] = [{**contained, "id": "res"}]
            report["result"] = [{"reference": "#res"}]
        else:
            if way == "report-dated":
                result.pop("effectiveDateTime")
            records.append(result)
            report["result"] = [{"reference": f"Observation/{result['id']}"}]
        records.append(report)
    procedures = _coded(ruleset, {"procedure"})
    for index in range(draw(st.integers(0, 1)) if procedures else 0):
        system, code, label = draw(st.sampled_from(procedures))
        records.append({
            "resourceType": "Procedure", "id": f"{pid}-p{index}", "subject": subject,
            "status": draw(st.sampled_from(["completed", "in-progress", "not-done"])),
            "code": {"coding": [{"system": system, "code": code, "display": label}]},
            "performedDateTime": when(draw(days_ago))})
    drugs = _coded(ruleset, {"medication"}, {RXNORM})
    for index in range(draw(st.integers(0, 4))):
        system, code, label = draw(st.sampled_from(drugs))
        drug: dict[str, Any] = {"medicationCodeableConcept": {"coding": [{
            "system": system, "code": code, "display": label}]}}
        if draw(st.booleans()):  # the drug named by a Medication resource
            records.append({"resourceType": "Medication", "id": f"{pid}-med{index}",
                            "code": drug.pop("medicationCodeableConcept")})
            drug["medicationReference"] = {"reference": f"Medication/{pid}-med{index}"}
        kind = draw(st.sampled_from(["MedicationRequest", "MedicationDispense",
                                     "MedicationAdministration"]))
        if kind == "MedicationRequest":
            records.append({
                "resourceType": kind, "id": f"{pid}-m{index}", "subject": subject,
                "status": draw(st.sampled_from(["active", "active", "stopped"])),
                "intent": "order", "authoredOn": when(draw(days_ago)), **drug})
        elif kind == "MedicationDispense":
            records.append({
                "resourceType": kind, "id": f"{pid}-m{index}", "subject": subject,
                "status": draw(st.sampled_from(["completed", "in-progress", "cancelled"])),
                "whenHandedOver": when(draw(days_ago)),
                **draw(st.sampled_from([{}, {"daysSupply": {"value": 30, "unit": "d"}}])),
                **drug})
        else:
            records.append({
                "resourceType": kind, "id": f"{pid}-m{index}", "subject": subject,
                "status": draw(st.sampled_from(["completed", "in-progress", "stopped"])),
                "effectiveDateTime": when(draw(st.sampled_from([0, 3, 6, 8, 30]))), **drug})
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
