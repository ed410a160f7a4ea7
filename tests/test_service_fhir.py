"""Prefetch fallback against a real FHIR server (Medplum's FHIR router, in memory) on loopback."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fasciculation_cds.ruleset import RuleSet
from fasciculation_cds.service import create_app

from .conftest import REPO, shared_data
from .service_helpers import Keys, hook_request, prefetch_from_bundle

SERVER = REPO / "tests" / "fhir_server"
TOKEN = "test-access-token"
PV = "fasciculation-cds-patient-view"
SYNTHEA = "Abram_Lemke_6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2.json"
SYNTHEA_ID = "6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2"

pytestmark = pytest.mark.fhirserver


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


@pytest.fixture(scope="module")
def fhir_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    node = shutil.which("node")
    if node is None or not (SERVER / "node_modules").is_dir():
        pytest.skip("test FHIR server not installed (npm ci --prefix tests/fhir_server)")
    folder = tmp_path_factory.mktemp("fhir")
    _, prefetch = prefetch_from_bundle(json.loads(
        (REPO / "fhir_examples" / "hypomagnesemia-omeprazole.json").read_text()))
    lines = [prefetch["patient"]] + [e["resource"] for key in
                                    ("observations", "conditions", "medicationRequests")
                                    for e in prefetch[key]["entry"]]
    (folder / "example.ndjson").write_text("".join(json.dumps(r) + "\n" for r in lines))
    process = subprocess.Popen(
        [node, "--experimental-websocket", str(SERVER / "server.mjs"), "--port", "0",
         "--token", TOKEN, "--slow-ms", "3000", "--default-count", "3",
         "--load", str(shared_data("synthea", SYNTHEA)), str(folder / "example.ndjson")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("LISTENING"):
            pytest.fail(f"FHIR server did not start: {line} {process.stderr.read()[-2000:]}")
        yield f"http://127.0.0.1:{line.split()[1]}", str(prefetch["patient"]["id"])
    finally:
        process.terminate()
        process.communicate(timeout=10)  # also closes the pipes


def _client(keys: Keys, tmp_path: Path, ruleset: RuleSet, base: str, **extra: Any) -> TestClient:
    settings = keys.settings(feedback_database_url=f"sqlite:///{tmp_path / 'f.db'}",
                             fhir_servers=[base, f"{base}/fail500", f"{base}/slow"], **extra)
    return TestClient(create_app(settings, ruleset=ruleset))


def _auth(token: str = TOKEN) -> dict[str, Any]:
    return {"access_token": token, "token_type": "Bearer", "expires_in": 300,
            "scope": "patient/*.read", "subject": "cds-service"}


def test_everything_fetched_from_the_fhir_server(fhir_server: tuple[str, str], keys: Keys,
                                                 tmp_path: Path, ruleset: RuleSet) -> None:
    base, patient_id = fhir_server
    client = _client(keys, tmp_path, ruleset, base)
    answer = client.post(f"/cds-services/{PV}", headers=keys.headers(), json=hook_request(
        "patient-view", patient_id, None, fhirServer=base, fhirAuthorization=_auth()))
    assert answer.status_code == 200, answer.text
    topics = {c["source"]["topic"]["code"] for c in answer.json()["cards"]}
    assert {"electrolyte.hypomagnesemia", "medication.electrolyte-depleting"} <= topics


def test_partial_prefetch_is_completed_from_the_server(fhir_server: tuple[str, str], keys: Keys,
                                                       tmp_path: Path, ruleset: RuleSet) -> None:
    base, patient_id = fhir_server
    client = _client(keys, tmp_path, ruleset, base)
    patient = {"resourceType": "Patient", "id": patient_id, "gender": "female"}
    answer = client.post(f"/cds-services/{PV}", headers=keys.headers(), json=hook_request(
        "patient-view", patient_id, {"patient": patient, "conditions": None},
        fhirServer=base, fhirAuthorization=_auth()))
    assert answer.status_code == 200, answer.text
    assert any(c["source"]["topic"]["code"] == "electrolyte.hypomagnesemia"
               for c in answer.json()["cards"])


def test_paging_is_followed_and_bounded(fhir_server: tuple[str, str], keys: Keys,
                                        tmp_path: Path, ruleset: RuleSet) -> None:
    base, _ = fhir_server
    request = hook_request("patient-view", SYNTHEA_ID, None, fhirServer=base,
                           fhirAuthorization=_auth())
    paged = _client(keys, tmp_path, ruleset, base).post(
        f"/cds-services/{PV}", headers=keys.headers(), json=request)
    assert paged.status_code == 200, paged.text  # 7 Conditions, 3 per page: 3 pages
    bounded = _client(keys, tmp_path, ruleset, base, fhir_max_pages=1).post(
        f"/cds-services/{PV}", headers=keys.headers(), json=request)
    assert bounded.status_code == 412
    assert "pages" in bounded.json()["error"]


@pytest.mark.parametrize(("case", "suffix", "auth"), [
    ("401 wrong token", "", _auth("not-the-token")),
    ("no fhirAuthorization", "", None),
    ("500 from the server", "/fail500", _auth()),
    ("timeout", "/slow", _auth()),
    ("404 unknown patient", "", _auth()),
])
def test_server_failures_give_412(case: str, suffix: str, auth: dict[str, Any] | None,
                                  fhir_server: tuple[str, str], keys: Keys, tmp_path: Path,
                                  ruleset: RuleSet) -> None:
    base, patient_id = fhir_server
    client = _client(keys, tmp_path, ruleset, base, fhir_timeout_seconds=1.0)
    extra: dict[str, Any] = {"fhirServer": base + suffix}
    if auth is not None:
        extra["fhirAuthorization"] = auth
    who = "no-such-patient" if case.startswith("404") else patient_id
    answer = client.post(f"/cds-services/{PV}", headers=keys.headers(),
                         json=hook_request("patient-view", who, None, **extra))
    assert answer.status_code == 412, (case, answer.text)
    assert TOKEN not in answer.text
