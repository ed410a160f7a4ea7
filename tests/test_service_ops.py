"""Operating the service: the per-call log line (text and JSON), Prometheus metrics, and that
neither carries a patient id or a token."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from fasciculation_cds.ruleset import RuleSet
from fasciculation_cds.service import create_app

from .conftest import REPO
from .service_helpers import Keys, RunningServe, hook_request, prefetch_from_bundle

PV = "/cds-services/fasciculation-cds-patient-view"
EXAMPLE = REPO / "fhir_examples" / "hypomagnesemia-omeprazole.json"


def _request() -> tuple[str, dict[str, Any]]:
    patient_id, prefetch = prefetch_from_bundle(json.loads(EXAMPLE.read_text()))
    return patient_id, hook_request("patient-view", patient_id, prefetch)


def _client(keys: Keys, tmp_path: Path, ruleset: RuleSet, **settings: Any) -> TestClient:
    return TestClient(create_app(keys.settings(
        feedback_database_url=f"sqlite:///{tmp_path / 'fb.db'}", **settings), ruleset=ruleset))


def test_metrics_count_calls_cards_and_statuses_without_patient_data(
        tmp_path: Path, ruleset: RuleSet) -> None:
    keys = Keys(tmp_path)
    patient_id, body = _request()
    with _client(keys, tmp_path, ruleset) as client:
        answered = client.post(PV, headers=keys.headers(PV), json=body)
        assert answered.status_code == 200
        assert client.post(PV, json=body).status_code == 401
        page = client.get("/metrics")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/plain")
    text = page.text
    assert 'fasciculation_cds_hook_calls_total{hook="patient-view",status="200"} 1.0' in text
    assert 'fasciculation_cds_hook_calls_total{hook="patient-view",status="401"} 1.0' in text
    for card in answered.json()["cards"]:
        rule = card["source"]["topic"]["code"]
        assert (f'fasciculation_cds_cards_total{{indicator="{card["indicator"]}",'
                f'rule="{rule}"}} 1.0') in text
    assert 'fasciculation_cds_http_responses_total{status_class="4xx"}' in text
    assert "fasciculation_cds_hook_call_seconds_bucket" in text
    assert patient_id not in text


def test_metrics_can_be_turned_off(tmp_path: Path, ruleset: RuleSet) -> None:
    keys = Keys(tmp_path)
    with _client(keys, tmp_path, ruleset, metrics=False) as client:
        answer = client.get("/metrics")
    assert answer.status_code == 404
    assert answer.json() == {"error": "metrics are off (metrics: false)"}


def test_one_log_line_per_call_names_hook_status_cards_and_time(
        tmp_path: Path, ruleset: RuleSet, caplog: pytest.LogCaptureFixture) -> None:
    keys = Keys(tmp_path)
    patient_id, body = _request()
    token = keys.token(PV)
    with caplog.at_level(logging.INFO, logger="fasciculation_cds"), \
            _client(keys, tmp_path, ruleset) as client:
        cards = client.post(PV, headers={"Authorization": f"Bearer {token}"}, json=body).json()
        client.post(PV, json=body)  # 401
    lines = [r.getMessage() for r in caplog.records]
    n = len(cards["cards"])
    assert any(line.startswith(f"hook=patient-view status=200 cards={n} ms=") for line in lines)
    assert any(line.startswith("hook=patient-view status=401 cards=0") for line in lines)
    assert any(line.startswith(f"POST {PV} status=200 ms=") for line in lines)
    assert not [line for line in lines if patient_id in line or token in line]


@pytest.mark.cli
def test_serve_writes_json_log_lines(tmp_path: Path) -> None:
    patient_id, body = _request()
    with RunningServe(tmp_path, "--dev-insecure", "--log-format", "json") as serve:
        assert httpx.post(f"{serve.base}{PV}", json=body, timeout=30).status_code == 200
    stderr = serve.stderr
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    calls = [r for r in records if r.get("hook") == "patient-view"]
    assert calls, stderr[-2000:]
    assert calls[0]["status"] == 200
    assert {"time", "level", "logger", "message", "ms", "cards"} <= set(calls[0])
    assert any(r.get("path") == PV and r.get("status") == 200 for r in records)
    assert any(r.get("logger", "").startswith("uvicorn") for r in records)  # uvicorn's too
    assert patient_id not in stderr
