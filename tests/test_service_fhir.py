"""The service against a real FHIR server (Medplum's FHIR router, in memory) on loopback: the
recorded request shapes of the CDS Hooks sandbox, prefetch completion, paging, failures."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from fasciculation_cds import evaluate
from fasciculation_cds.ruleset import RuleSet
from fasciculation_cds.service import create_app
from fasciculation_cds.service.needs import shown_on

from .conftest import REPO, data_file, read_json, shared_data
from .service_helpers import (
    FhirServer,
    Keys,
    card_findings,
    hook_request,
    incomplete_detail,
    prefetch_from_bundle,
    write_ndjson,
)

TOKEN = "test-access-token"
PV = "fasciculation-cds-patient-view"
OS = "fasciculation-cds-order-select"
SIGN = "fasciculation-cds-order-sign"
SERVICE_OF = {"patient-view": PV, "order-select": OS, "order-sign": SIGN}
SYNTHEA = "Abram_Lemke_6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2.json"
SYNTHEA_ID = "6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2"
SANDBOX_BASE = "http://127.0.0.1:8092/fhir"  # as recorded in sandbox-shapes/
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"

pytestmark = pytest.mark.fhirserver


def _shape(name: str) -> dict[str, Any]:
    return json.loads(shared_data("cds-hooks", "sandbox-shapes", name).read_text())


def _condition(rid: str, patient: str, system: str, code: str, display: str) -> dict[str, Any]:
    return {"resourceType": "Condition", "id": rid, "subject": {"reference": f"Patient/{patient}"},
            "clinicalStatus": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                "code": "active"}]},
            "code": {"coding": [{"system": system, "code": code, "display": display}]},
            "onsetDateTime": "2026-10-20"}


def _potassium(rid: str, patient: str, value: float) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "subject": {"reference": f"Patient/{patient}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3",
                                 "display": "Potassium [Moles/volume] in Serum or Plasma"}]},
            "effectiveDateTime": "2026-11-25T08:00:00Z",
            "valueQuantity": {"value": value, "unit": "mmol/L",
                              "system": "http://unitsofmeasure.org", "code": "mmol/L"}}


def shape_records() -> dict[str, list[dict[str, Any]]]:
    """The whole record behind each sandbox shape: what the prefetch shows, and the rest."""
    view = _shape("patient-view.json")
    pv_id = view["context"]["patientId"]
    shown = [e["resource"] for e in view["prefetch"]["conditions"]["entry"]]
    # page 2 of the conditions, which the sandbox did not send: an upper motor neuron sign,
    # which makes the red flag critical (signs of two groups)
    rest = _condition("shape-c3", pv_id, SNOMED, "86854008", "Hyperreflexia")
    order = _shape("order-select.json")
    os_id = order["context"]["patientId"]
    return {
        pv_id: [view["prefetch"]["patient"], *shown, rest],
        os_id: [order["prefetch"]["patient"], _potassium("shape-k1", os_id, 3.1),
                _condition("shape-c4", os_id, ICD10CM, "R25.3", "Fasciculation")],
    }


@pytest.fixture(scope="module")
def fhir_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirServer]:
    folder = tmp_path_factory.mktemp("fhir")
    _, prefetch = prefetch_from_bundle(json.loads(
        (REPO / "fhir_examples" / "hypomagnesemia-omeprazole.json").read_text()))
    example = [prefetch["patient"]] + [e["resource"] for key in
                                      ("observations", "conditions", "medicationRequests")
                                      for e in prefetch[key]["entry"]]
    synthea = folder / SYNTHEA  # the server loads plain JSON
    synthea.write_bytes(orjson.dumps(read_json(data_file("synthea", SYNTHEA))))
    files = [synthea, write_ndjson(folder / "example.ndjson", example),
             write_ndjson(folder / "shapes.ndjson",
                          [r for rs in shape_records().values() for r in rs])]
    server = FhirServer(files, default_count=3, token=TOKEN)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


def _client(keys: Keys, tmp_path: Path, ruleset: RuleSet, base: str, **extra: Any) -> TestClient:
    settings = keys.settings(feedback_database_url=f"sqlite:///{tmp_path / 'f.db'}",
                             fhir_servers=[base, f"{base}/fail500", f"{base}/slow"], **extra)
    return TestClient(create_app(settings, ruleset=ruleset, clock=lambda: NOW))


def _auth(token: str = TOKEN) -> dict[str, Any]:
    return {"access_token": token, "token_type": "Bearer", "expires_in": 300,
            "scope": "patient/*.read", "subject": "cds-service"}


def _post(client: TestClient, keys: Keys, service: str, body: dict[str, Any]) -> Any:
    return client.post(f"/cds-services/{service}", headers=keys.headers(
        f"/cds-services/{service}"), json=body)


def _expected(ruleset: RuleSet, records: list[dict[str, Any]], hook: str,
              drafts: list[dict[str, Any]] | None = None) -> list[tuple[str, str]]:
    [assessment] = evaluate(records, as_of=NOW, rules=ruleset, draft_orders=drafts or [])
    return sorted((f.rule_id, f.severity) for f in assessment.findings
                  if shown_on(ruleset.rule(f.rule_id), hook, f.severity))


def _from_sandbox(shape: dict[str, Any], base: str, *, auth: bool = True) -> dict[str, Any]:
    """The recorded request, pointed at this test's FHIR server."""
    text = json.dumps(shape).replace(SANDBOX_BASE, base)
    request = json.loads(text)
    if auth:  # the test server wants a token (the sandbox's needs none)
        request["fhirAuthorization"] = _auth()
    return request


def test_sandbox_patient_view_paged_prefetch_is_completed(
        fhir_server: FhirServer, keys: Keys, tmp_path: Path, ruleset: RuleSet) -> None:
    shape = _shape("patient-view.json")
    record = shape_records()[shape["context"]["patientId"]]
    expected = _expected(ruleset, record, "patient-view")
    assert ("mnd.red-flags", "critical") in expected  # needs page 2 of the conditions
    client = _client(keys, tmp_path, ruleset, fhir_server.base)
    answer = _post(client, keys, PV, _from_sandbox(shape, fhir_server.base))
    assert answer.status_code == 200, answer.text
    assert card_findings(answer.json()["cards"]) == expected


def test_sandbox_paged_prefetch_without_an_allowed_server_is_never_all_clear(
        fhir_server: FhirServer, keys: Keys, tmp_path: Path, ruleset: RuleSet) -> None:
    """The sandbox shows a 412 as "All clear": by default the answer is one warning card
    saying the record could not be read, never the page-1-only findings; 412 on request."""
    shape = _shape("patient-view.json")
    client = _client(keys, tmp_path, ruleset, "https://fhir.other.example.org")
    detail = incomplete_detail(_post(client, keys, PV, _from_sandbox(shape, fhir_server.base)))
    assert "'conditions' (page 1 only: Bundle.link next)" in detail
    assert "fhirServer is not on this service's allow-list" in detail
    client = _client(keys, tmp_path, ruleset, "https://fhir.other.example.org",
                     incomplete_record="412")
    answer = _post(client, keys, PV, _from_sandbox(shape, fhir_server.base))
    assert answer.status_code == 412, answer.text
    error = answer.json()["error"]
    assert "'conditions' (page 1 only" in error
    assert "allow-list" in error


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_sandbox_order_hooks_with_r4_draft(hook: str, fhir_server: FhirServer, keys: Keys,
                                           tmp_path: Path, ruleset: RuleSet) -> None:
    shape = _shape(f"{hook}.json")
    assert isinstance(shape["context"]["draftOrders"]["entry"][0]["resource"]["category"], dict)
    record = shape_records()[shape["context"]["patientId"]]
    draft = copy.deepcopy(shape["context"]["draftOrders"]["entry"][0]["resource"])
    draft.pop("category")  # evaluate validates drafts it is given; the service never needs to
    expected = _expected(ruleset, record, hook, [draft])
    assert ("medication.order-caution", "warning") in expected
    client = _client(keys, tmp_path, ruleset, fhir_server.base)
    answer = _post(client, keys, SERVICE_OF[hook], _from_sandbox(shape, fhir_server.base))
    assert answer.status_code == 200, answer.text
    assert card_findings(answer.json()["cards"]) == expected
    [card] = [c for c in answer.json()["cards"]
              if c["source"]["topic"]["code"] == "medication.order-caution"]
    assert card["suggestions"][0]["actions"][0]["resourceId"] == ["MedicationRequest/request-123"]


def test_sandbox_feedback_shapes(fhir_server: FhirServer, keys: Keys, tmp_path: Path,
                                 ruleset: RuleSet) -> None:
    client = _client(keys, tmp_path, ruleset, fhir_server.base)
    for name in ("feedback-accepted.json", "feedback-overridden.json",
                 "feedback-dismissed.json"):
        answer = client.post(f"/cds-services/{PV}/feedback",
                             headers=keys.headers(f"/cds-services/{PV}/feedback"),
                             json=_shape(name))
        assert answer.status_code == 200, (name, answer.text)
        assert answer.json() == {"stored": 1}


def test_everything_fetched_from_the_fhir_server(fhir_server: FhirServer, keys: Keys,
                                                 tmp_path: Path, ruleset: RuleSet) -> None:
    client = _client(keys, tmp_path, ruleset, fhir_server.base)
    _, prefetch = prefetch_from_bundle(json.loads(
        (REPO / "fhir_examples" / "hypomagnesemia-omeprazole.json").read_text()))
    patient_id = prefetch["patient"]["id"]
    answer = _post(client, keys, PV, hook_request(
        "patient-view", patient_id, None, fhirServer=fhir_server.base,
        fhirAuthorization=_auth()))
    assert answer.status_code == 200, answer.text
    topics = {c["source"]["topic"]["code"] for c in answer.json()["cards"]}
    assert {"electrolyte.hypomagnesemia", "medication.electrolyte-depleting"} <= topics


def test_paging_is_followed_and_bounded(fhir_server: FhirServer, keys: Keys, tmp_path: Path,
                                        ruleset: RuleSet) -> None:
    patient = {"resourceType": "Patient", "id": SYNTHEA_ID}
    page = httpx.get(f"{fhir_server.base}/Condition?patient={SYNTHEA_ID}&_count=1",
                     headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert any(link["relation"] == "next" for link in page["link"])
    request = hook_request("patient-view", SYNTHEA_ID, {"patient": patient, "conditions": page},
                           fhirServer=fhir_server.base, fhirAuthorization=_auth())
    followed = _post(_client(keys, tmp_path, ruleset, fhir_server.base), keys, PV, request)
    assert followed.status_code == 200, followed.text
    bounded = _post(_client(keys, tmp_path, ruleset, fhir_server.base, fhir_max_pages=2),
                    keys, PV, request)
    assert "more than 2 pages" in incomplete_detail(bounded)


@pytest.mark.parametrize(("case", "suffix", "auth"), [
    ("401 wrong token", "", _auth("not-the-token")),
    ("no fhirAuthorization", "", None),
    ("500 from the server", "/fail500", _auth()),
    ("timeout", "/slow", _auth()),
    ("404 unknown patient", "", _auth()),
])
def test_server_failures_give_the_incomplete_card(
        case: str, suffix: str, auth: dict[str, Any] | None, fhir_server: FhirServer,
        keys: Keys, tmp_path: Path, ruleset: RuleSet) -> None:
    client = _client(keys, tmp_path, ruleset, fhir_server.base, fhir_timeout_seconds=1.0)
    extra: dict[str, Any] = {"fhirServer": fhir_server.base + suffix}
    if auth is not None:
        extra["fhirAuthorization"] = auth
    who = "no-such-patient" if case.startswith("404") else SYNTHEA_ID
    answer = _post(client, keys, PV, hook_request("patient-view", who, None, **extra))
    detail = incomplete_detail(answer)
    assert "could not be fetched" in detail or "Patient resource" in detail, case
    assert TOKEN not in answer.text
