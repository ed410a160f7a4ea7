"""The CDS Hooks 2.0 service: authentication, hooks, prefetch, cards, feedback, safety."""

from __future__ import annotations

import json
import logging
import time
from importlib import resources as package_files
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi.testclient import TestClient

from fasciculation_cds.ruleset import RuleSet
from fasciculation_cds.service import create_app
from fasciculation_cds.service.prefetch import templates

from .conftest import REPO, shared_data
from .service_helpers import Keys, hook_request, incomplete_detail, prefetch_from_bundle

SCHEMA = json.loads(package_files.files("fasciculation_cds.service").joinpath(
    "cds-hooks-response.schema.json").read_text())
PV = "fasciculation-cds-patient-view"
OS = "fasciculation-cds-order-select"
SIGN = "fasciculation-cds-order-sign"


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


class Recorder(httpx.MockTransport):
    """Counts requests a test FHIR server would have received (and answers 500)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        super().__init__(self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(str(request.url))
        return httpx.Response(500)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def client(keys: Keys, tmp_path: Path, ruleset: RuleSet, recorder: Recorder) -> TestClient:
    settings = keys.settings(feedback_database_url=f"sqlite:///{tmp_path / 'feedback.db'}",
                             fhir_servers=["https://fhir.example.org/r4"],
                             max_request_bytes=400_000)
    return TestClient(create_app(settings, ruleset=ruleset, fhir_transport=recorder))


def call(client: TestClient, keys: Keys, path: str, body: Any) -> httpx.Response:
    """POST with a token made for exactly this endpoint (its URL is the `aud`)."""
    return client.post(path, headers=keys.headers(path), json=body)


def _example(name: str) -> dict[str, Any]:
    return json.loads((REPO / "fhir_examples" / name).read_text())


def test_discovery_needs_a_valid_token(client: TestClient, keys: Keys) -> None:
    assert client.get("/cds-services").status_code == 401
    found = client.get("/cds-services", headers=keys.headers())
    assert found.status_code == 200
    services = {s["hook"]: s for s in found.json()["services"]}
    assert set(services) == {"patient-view", "order-select", "order-sign"}
    assert len({s["title"] for s in services.values()}) == 3  # one title per hook
    prefetch = services["patient-view"]["prefetch"]
    assert prefetch["patient"] == "Patient/{{context.patientId}}"
    assert "{{today() - 373 days}}" in prefetch["observations"]  # RuleSet.max_lookback_days + 1
    for service in services.values():
        assert "allow-list" in service["usageRequirements"]
        for key, template in service["prefetch"].items():
            assert key == "patient" or "_count=" in template, template
    assert client.get("/healthz").status_code == 200


def test_each_hook_asks_only_for_what_its_rules_read(client: TestClient, keys: Keys,
                                                     ruleset: RuleSet) -> None:
    from fasciculation_cds.service.needs import needs_of

    services = {s["hook"]: s for s in client.get("/cds-services", headers=keys.headers())
                .json()["services"]}
    view = set(services["patient-view"]["prefetch"])
    assert {"patient", "observations", "conditions", "medicationRequests",
            "medicationStatements"} <= view
    if any(c.kind == "procedure" for c in ruleset.terminology.concepts.values()):
        assert "procedures" in view  # renal dialysis (kind procedure) is read by a rule
    # order hooks show order cautions and findings that can be critical: fewer searches
    for hook in ("order-select", "order-sign"):
        asked = set(services[hook]["prefetch"])
        assert asked < view
        assert ("medicationRequests" in asked) == needs_of(ruleset, hook).medications


@pytest.mark.parametrize("bad", ["hs256", "none", "wrong-iss", "wrong-aud", "expired", "replay",
                                 "no-jti"])
def test_bad_tokens_are_rejected(bad: str, client: TestClient, keys: Keys) -> None:
    import jwt

    token = keys.token()
    if bad == "hs256":
        token = jwt.encode({"iss": "https://ehr.example.org"}, "s" * 48, algorithm="HS256")
    elif bad == "none":
        token = jwt.encode({"iss": "https://ehr.example.org"}, None, algorithm="none")
    elif bad == "wrong-iss":
        token = keys.token(iss="https://evil.example.org")
    elif bad == "wrong-aud":
        token = keys.token(aud="https://other.example.org/cds-services")
    elif bad == "expired":
        token = keys.token(exp=1_000_000, iat=999_000)
    elif bad == "replay":
        assert client.get("/cds-services", headers={"Authorization": f"Bearer {token}"}) \
            .status_code == 200
    elif bad == "no-jti":
        token = keys.token(jti=None)
    answer = client.get("/cds-services", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401
    assert "error" in answer.json()


def test_es384_tokens_are_accepted(client: TestClient, keys: Keys) -> None:
    assert client.get("/cds-services", headers=keys.headers(alg="ES384")).status_code == 200


def test_cors_preflight(client: TestClient) -> None:
    answer = client.options("/cds-services", headers={
        "Origin": "https://sandbox.cds-hooks.org", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert answer.status_code == 200
    assert "authorization" in answer.headers["access-control-allow-headers"].lower()


def test_patient_view_with_prefetch_gives_cards(client: TestClient, keys: Keys,
                                                recorder: Recorder) -> None:
    patient_id, prefetch = prefetch_from_bundle(_example("hypomagnesemia-omeprazole.json"))
    answer = call(client, keys, f"/cds-services/{PV}",
                  hook_request("patient-view", patient_id, prefetch))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    jsonschema.validate(body, SCHEMA)
    topics = {c["source"]["topic"]["code"]: c for c in body["cards"]}
    assert topics["electrolyte.hypomagnesemia"]["indicator"] == "warning"
    assert "medication.electrolyte-depleting" in topics
    assert recorder.calls == []  # everything came with the prefetch


def test_missing_electrolytes_card_offers_service_requests(client: TestClient,
                                                           keys: Keys) -> None:
    patient_id, prefetch = prefetch_from_bundle(_example("sciatica-cramps.json"))
    prefetch["observations"] = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    answer = call(client, keys, f"/cds-services/{PV}",
                  hook_request("patient-view", patient_id, prefetch))
    body = answer.json()
    jsonschema.validate(body, SCHEMA)
    [card] = [c for c in body["cards"]
              if c["source"]["topic"]["code"] == "workup.electrolytes-missing"]
    actions = [a for s in card["suggestions"] for a in s["actions"]]
    assert {a["type"] for a in actions} == {"create"}
    assert all(a["resource"]["resourceType"] == "ServiceRequest" for a in actions)
    assert card["selectionBehavior"] == "any"


def test_no_findings_gives_empty_cards(client: TestClient, keys: Keys) -> None:
    bundle = _example("benign-fasciculation.json")
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    patient_id, prefetch = prefetch_from_bundle(bundle)
    answer = call(client, keys, f"/cds-services/{PV}",
                  hook_request("patient-view", patient_id, prefetch))
    assert answer.json() == {"cards": []}


def test_order_select_draft_order_caution(client: TestClient, keys: Keys) -> None:
    patient_id, prefetch = prefetch_from_bundle(_example("benign-fasciculation.json"))
    draft = {"resourceType": "MedicationRequest", "id": "draft-1", "status": "draft",
             "intent": "order", "subject": {"reference": f"Patient/{patient_id}"},
             "medicationCodeableConcept": {"coding": [{
                 "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "435",
                 "display": "albuterol"}]}}
    context = {"draftOrders": {"resourceType": "Bundle", "type": "collection",
                               "entry": [{"fullUrl": "urn:uuid:draft-1", "resource": draft}]},
               "selections": ["MedicationRequest/draft-1"]}
    for service, hook in ((OS, "order-select"), (SIGN, "order-sign")):
        answer = call(client, keys, f"/cds-services/{service}",
                      hook_request(hook, patient_id, prefetch, context=context))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        jsonschema.validate(body, SCHEMA)
        [card] = body["cards"]  # order hooks show the order caution, not the benign info card
        assert card["source"]["topic"]["code"] == "medication.order-caution"
        [suggestion] = card["suggestions"]
        assert suggestion["actions"] == [{"type": "delete", "description":
                                          "Remove MedicationRequest/draft-1",
                                          "resourceId": ["MedicationRequest/draft-1"]}]


@pytest.mark.parametrize("folder", ["patient-view", "order-select", "order-sign"])
def test_shared_cds_hooks_requests(folder: str, client: TestClient, keys: Keys,
                                   recorder: Recorder) -> None:
    for path in sorted(shared_data("cds-hooks", folder).glob("*.json")):
        request = json.loads(path.read_text())
        request.setdefault("hook", folder)
        request.setdefault("hookInstance", "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea")
        service = {"patient-view": PV, "order-select": OS, "order-sign": SIGN}[folder]
        answer = client.post(f"/cds-services/{service}", headers=keys.headers(
            f"/cds-services/{service}"), json=request)
        # the examples' prefetch holds only part of what the rules need, and their fhirServer
        # is not on this service's allow-list: the service says what is missing and makes no
        # request (SSRF) instead of guessing, and shows no finding
        assert answer.status_code in (400, 200), (path.name, answer.text)
        assert answer.status_code == 400 or "missing" in incomplete_detail(answer)
        assert recorder.calls == []


def test_invalid_requests(client: TestClient, keys: Keys) -> None:
    for name in ("cds-hooks-request-patient-view-bad.json",
                 "cds-hooks-request-order-sign-bad-1.json",
                 "cds-hooks-request-order-select-bad.json"):
        request = json.loads(shared_data("invalid", name).read_text())
        service = {"patient-view": PV, "order-select": OS, "order-sign": SIGN}[request["hook"]]
        answer = call(client, keys, f"/cds-services/{service}", request)
        assert answer.status_code == 400, (name, answer.text)
    assert client.post("/cds-services/nope", headers=keys.headers(), json={}).status_code == 404
    wrong_hook = hook_request("order-sign", "x", None)
    assert call(client, keys, f"/cds-services/{PV}", wrong_hook).status_code == 400


def test_fhir_server_failure_is_one_warning_card_naming_every_part(
        client: TestClient, keys: Keys, recorder: Recorder, ruleset: RuleSet) -> None:
    request = hook_request("patient-view", "abc", None, fhirServer="https://fhir.example.org/r4",
                           fhirAuthorization={"access_token": "secret-token-xyz",
                                              "token_type": "Bearer", "expires_in": 300,
                                              "scope": "patient/*.read", "subject": "cds"})
    answer = call(client, keys, f"/cds-services/{PV}", request)
    detail = incomplete_detail(answer)
    assert recorder.calls
    assert recorder.calls[0].startswith("https://fhir.example.org/r4/")
    for key in templates(ruleset, "patient-view"):  # every failed part, not only the first
        assert f"'{key}' could not be fetched: FHIR server answered 500" in detail, key
    assert "secret-token-xyz" not in answer.text


def test_incomplete_record_412_keeps_the_error(keys: Keys, tmp_path: Path, ruleset: RuleSet,
                                               recorder: Recorder) -> None:
    settings = keys.settings(feedback_database_url=f"sqlite:///{tmp_path / 'feedback.db'}",
                             fhir_servers=["https://fhir.example.org/r4"],
                             incomplete_record="412")
    client = TestClient(create_app(settings, ruleset=ruleset, fhir_transport=recorder))
    request = hook_request("patient-view", "abc", None, fhirServer="https://fhir.example.org/r4")
    answer = call(client, keys, f"/cds-services/{PV}", request)
    assert answer.status_code == 412
    error = answer.json()["error"]
    assert all(f"'{key}' could not be fetched" in error
               for key in templates(ruleset, "patient-view") if key != "patient")


def test_request_size_is_bounded(client: TestClient, keys: Keys) -> None:
    huge = hook_request("patient-view", "abc", {"patient": {"resourceType": "Patient", "id": "abc",
                                                            "text": {"div": "x" * 500_000}}})
    answer = call(client, keys, f"/cds-services/{PV}", huge)
    assert answer.status_code == 413


def test_feedback_is_stored_and_reported(client: TestClient, keys: Keys) -> None:
    patient_id, prefetch = prefetch_from_bundle(_example("hypomagnesemia-omeprazole.json"))
    cards = call(client, keys, f"/cds-services/{PV}",
                  hook_request("patient-view", patient_id, prefetch)).json()["cards"]
    feedback = {"feedback": [
        {"card": cards[0]["uuid"], "outcome": "overridden",
         "overrideReason": {"reason": {"code": "already-addressed",
                                       "system": "https://fasciculation-cds.dev/override-reason",
                                       "display": "Already addressed"}},
         "outcomeTimestamp": "2026-11-26T10:00:00Z"},
        {"card": cards[1]["uuid"], "outcome": "accepted", "acceptedSuggestions": [],
         "outcomeTimestamp": "2026-11-26T10:01:00Z"}]}
    answer = call(client, keys, f"/cds-services/{PV}/feedback", feedback)
    assert answer.json() == {"stored": 2}
    report = {row["rule_id"]: row for row in client.app.state.feedback.report()}  # type: ignore[attr-defined]
    first = report[cards[0]["source"]["topic"]["code"]]
    assert first["shown"] == 1
    assert first["overridden"] == 1
    assert first["top_override_reasons"] == [["Already addressed", 1]] or \
        first["top_override_reasons"] == [("Already addressed", 1)]


def test_logs_carry_no_token_or_patient_data(client: TestClient, keys: Keys,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    patient_id, prefetch = prefetch_from_bundle(_example("hypomagnesemia-omeprazole.json"))
    headers = keys.headers()
    client.post(f"/cds-services/{PV}", headers=headers,
                json=hook_request("patient-view", patient_id, prefetch))
    text = caplog.text
    assert headers["Authorization"][7:] not in text
    assert patient_id not in text
    assert "0.58" not in text


def test_openapi_matches_the_endpoints(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/cds-services", "/cds-services/{service_id}",
            "/cds-services/{service_id}/feedback", "/healthz"} <= set(paths)


def test_feedback_report_command(client: TestClient, keys: Keys, tmp_path: Path) -> None:
    import subprocess
    import sys

    patient_id, prefetch = prefetch_from_bundle(_example("hypomagnesemia-omeprazole.json"))
    cards = call(client, keys, f"/cds-services/{PV}",
                  hook_request("patient-view", patient_id, prefetch)).json()["cards"]
    call(client, keys, f"/cds-services/{PV}/feedback", {"feedback": [
        {"card": cards[0]["uuid"], "outcome": "accepted",
         "outcomeTimestamp": "2026-11-26T10:00:00Z"}]})
    script = Path(sys.executable).parent / "fasciculation-cds"
    done = subprocess.run([str(script), "feedback", "report", "--database",
                           f"sqlite:///{tmp_path / 'feedback.db'}"], capture_output=True,
                          text=True, check=False, env={"COLUMNS": "200", "PATH": ""})
    assert done.returncode == 0, done.stderr
    assert cards[0]["source"]["topic"]["code"] in done.stdout
    assert "100%" in done.stdout


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fasciculation_cds.service.settings import load_settings

    config = tmp_path / "service.yaml"
    config.write_text("log_level: warning\nfhir_timeout_seconds: 3\n")
    monkeypatch.setenv("FASCICULATION_CDS_LOG_LEVEL", "debug")
    settings = load_settings(config, dev_insecure=True)
    assert settings.log_level == "debug"  # environment over file
    assert settings.fhir_timeout_seconds == 3  # file over default
    assert settings.dev_insecure  # flag over everything


def test_bad_feedback_body_is_a_400_with_an_error(client: TestClient, keys: Keys) -> None:
    answer = call(client, keys, f"/cds-services/{PV}/feedback", {"feedback": [{"card": "x"}]})
    assert answer.status_code == 400
    assert "error" in answer.json()


# --- cards ---------------------------------------------------------------------------------------


def _findings(name: str, ruleset: RuleSet) -> dict[str, Any]:
    from datetime import datetime, timezone

    from fasciculation_cds import evaluate

    [assessment] = evaluate(REPO / "fhir_examples" / name, rules=ruleset,
                            as_of=datetime.now(timezone.utc))
    return {f.rule_id: f for f in assessment.findings}


def test_cards_carry_the_findings_own_summary_links_and_source(
        client: TestClient, keys: Keys, ruleset: RuleSet) -> None:
    for name in ("als-red-flags-critical.json", "hypokalemia-hydrochlorothiazide.json",
                 "hypomagnesemia-omeprazole.json"):
        patient_id, prefetch = prefetch_from_bundle(_example(name))
        cards = call(client, keys, f"/cds-services/{PV}",
                     hook_request("patient-view", patient_id, prefetch)).json()["cards"]
        findings = _findings(name, ruleset)
        assert sorted(c["source"]["topic"]["code"] for c in cards) == sorted(findings)
        for card in cards:
            finding = findings[card["source"]["topic"]["code"]]
            assert card["summary"] == finding.summary  # never cut
            links = card.get("links", [])
            assert [link["url"] for link in links if link["type"] == "absolute"] == \
                [r.url for r in finding.references if r.url]
            # and, last, the full summary as a SMART app, for the patient of the card
            assert links[-1]["type"] == "smart"
            assert links[-1]["url"] == "http://testserver/smart/launch"
            assert json.loads(links[-1]["appContext"]) == {"patientId": patient_id}
            assert card["source"]["url"] == f"http://testserver/rules/{finding.rule_id}"
            doc = client.get(card["source"]["url"].removeprefix("http://testserver"))
            assert doc.status_code == 200
            assert finding.rule_id in doc.text
    [red_flag] = [c for c in call(client, keys, f"/cds-services/{PV}", hook_request(
        "patient-view", *prefetch_from_bundle(_example("als-red-flags-critical.json"))))
        .json()["cards"] if c["source"]["topic"]["code"] == "mnd.red-flags"]
    assert "urgent neurology review" in red_flag["summary"].lower()  # never cut away
    detail = red_flag["detail"].splitlines()
    first_item = next(i for i, line in enumerate(detail) if line.startswith("- "))
    assert detail[first_item - 1] == ""  # a Markdown list, not a run-on paragraph


def test_card_model_refuses_what_cds_hooks_refuses() -> None:
    from pydantic import ValidationError

    from fasciculation_cds.service.models import Card, Source

    good = {"uuid": "u", "summary": "x" * 140, "indicator": "info",
            "source": Source(label="fasciculation-cds")}
    assert Card.model_validate(good).summary == "x" * 140
    for bad in ({"summary": "x" * 141}, {"indicator": "danger"}, {"summary": ""}):
        with pytest.raises(ValidationError):
            Card.model_validate({**good, **bad})


def test_markdown_lists_are_set_off() -> None:
    from fasciculation_cds.service.cards import markdown_blocks

    assert markdown_blocks("Seen with:\n- a\n- b\nThen text.") == \
        "Seen with:\n\n- a\n- b\n\nThen text."


# --- hooks and prefetch policy from the rules ----------------------------------------------------


def test_order_hook_policy_comes_from_the_rules_hooks_field(ruleset: RuleSet) -> None:
    from fasciculation_cds.service.needs import rules_for

    order_select = {r.id for r in rules_for(ruleset, "order-select")}
    patient_view = {r.id for r in rules_for(ruleset, "patient-view")}
    assert "medication.order-caution" in order_select
    assert "medication.order-caution" not in patient_view  # hooks: {order-select, order-sign}
    assert "mnd.red-flags" in order_select  # can be critical, and order hooks show critical
    assert "medication.fasciculation-trigger" not in order_select  # never critical
    assert ruleset.rule("medication.order-caution").hooks == {"order-select": "info",
                                                              "order-sign": "info"}


def test_templates_ask_by_code_when_codes_are_all_the_rules_can_match(
        tmp_path: Path) -> None:
    """With no word or code-prefix matching, the searches name every code the rules read, labs
    and coded signs alike; with it (the shipped rules), a search by code would lose records."""
    import shutil

    import yaml

    from fasciculation_cds.ruleset import load_rules
    from fasciculation_cds.service.prefetch import templates

    from .conftest import RULES_DIR

    rules = tmp_path / "rules"
    shutil.copytree(RULES_DIR, rules)
    (rules / "text-matches.yaml").write_text("text: {}\nbody_site: {}\n")
    codes = yaml.safe_load((rules / "valuesets/codes.yaml").read_text())
    for concept in codes["concepts"].values():
        concept.pop("match_prefixes", None)
    (rules / "valuesets/codes.yaml").write_text(yaml.safe_dump(codes))
    coded = templates(load_rules(rules), "patient-view")
    assert "http://loinc.org|19123-9" in coded["observations"]  # a lab (magnesium)
    assert "http://snomed.info/sct|86854008" in coded["observations"]  # a sign (hyperreflexia)
    assert "code=" in coded["conditions"]
    shipped = templates(load_rules(RULES_DIR), "patient-view")
    assert "code=" not in shipped["observations"]


# --- order hooks ---------------------------------------------------------------------------------


def _draft_context(patient_id: str, **draft_fields: Any) -> dict[str, Any]:
    draft = {"resourceType": "MedicationRequest", "id": "draft-1", "status": "draft",
             "intent": "order", "subject": {"reference": f"Patient/{patient_id}"},
             "medicationCodeableConcept": {"coding": [{
                 "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "435",
                 "display": "albuterol"}]}, **draft_fields}
    return {"draftOrders": {"resourceType": "Bundle", "type": "collection",
                            "entry": [{"resource": draft}]},
            "selections": ["MedicationRequest/draft-1"]}


def test_draft_fields_no_rule_reads_never_fail_a_call(client: TestClient, keys: Keys) -> None:
    patient_id, prefetch = prefetch_from_bundle(_example("benign-fasciculation.json"))
    context = _draft_context(patient_id, category={"coding": [{"code": "community"}]},
                             dosageInstruction="twice a day", dispenseRequest=5,
                             authoredOn="yesterday")
    answer = call(client, keys, f"/cds-services/{OS}",
                  hook_request("order-select", patient_id, prefetch, context=context))
    assert answer.status_code == 200, answer.text
    assert [c["source"]["topic"]["code"] for c in answer.json()["cards"]] == \
        ["medication.order-caution"]
    context["draftOrders"]["entry"][0]["resource"].pop("id")
    answer = call(client, keys, f"/cds-services/{OS}",
                  hook_request("order-select", patient_id, prefetch, context=context))
    assert answer.status_code == 400  # a draft the card could not name is a request problem


def test_shown_is_counted_once_per_card_per_order(client: TestClient, keys: Keys) -> None:
    patient_id, prefetch = prefetch_from_bundle(_example("benign-fasciculation.json"))
    context = _draft_context(patient_id)
    uuids = set()
    for _ in range(3):  # order-select fires again on every change of the order form
        cards = call(client, keys, f"/cds-services/{OS}", hook_request(
            "order-select", patient_id, prefetch, context=context)).json()["cards"]
        uuids |= {c["uuid"] for c in cards}
    call(client, keys, f"/cds-services/{SIGN}",
         hook_request("order-sign", patient_id, prefetch, context=context))
    assert len(uuids) == 1
    report = {r["rule_id"]: r for r in client.app.state.feedback.report()}  # type: ignore[attr-defined]
    assert report["medication.order-caution"]["shown"] == 2  # once on select, once on sign
    other = _draft_context(patient_id)
    other["selections"] = ["MedicationRequest/draft-1", "MedicationRequest/draft-2"]
    call(client, keys, f"/cds-services/{OS}",
         hook_request("order-select", patient_id, prefetch, context=other))
    report = {r["rule_id"]: r for r in client.app.state.feedback.report()}  # type: ignore[attr-defined]
    assert report["medication.order-caution"]["shown"] == 3  # another order


# --- feedback database ---------------------------------------------------------------------------


def test_default_feedback_database_is_per_user_and_announced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ruleset: RuleSet,
        capsys: pytest.CaptureFixture[str]) -> None:
    from fasciculation_cds.service.settings import ServiceSettings

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    settings = ServiceSettings()
    expected = tmp_path / "data" / "fasciculation-cds" / "feedback.db"
    assert settings.feedback_database_url == f"sqlite:///{expected}"
    with TestClient(create_app(settings, ruleset=ruleset)) as client:
        assert client.get("/healthz").status_code == 200
    assert expected.is_file()
    assert not list(tmp_path.glob("*.db"))  # nothing in the folder serve started in
    assert f"feedback database sqlite:///{expected}" in capsys.readouterr().err


def test_evaluation_in_worker_processes_gives_the_same_cards(keys: Keys, tmp_path: Path,
                                                             ruleset: RuleSet) -> None:
    patient_id, prefetch = prefetch_from_bundle(_example("als-red-flags-critical.json"))
    body = hook_request("patient-view", patient_id, prefetch)
    answers = []
    for extra in ({}, {"evaluation_processes": 1}):
        settings = keys.settings(feedback_database_url=f"sqlite:///{tmp_path / 'f.db'}", **extra)
        with TestClient(create_app(settings, ruleset=ruleset)) as client:
            answer = call(client, keys, f"/cds-services/{PV}", {**body, "hookInstance": "a"})
            assert answer.status_code == 200, answer.text
            answers.append(answer.json())
    assert answers[0] == answers[1]


def test_medication_named_by_reference_is_fetched_or_refused(keys: Keys, tmp_path: Path,
                                                             ruleset: RuleSet) -> None:
    """An order whose drug is a Medication resource the EHR did not include: the drug is
    fetched from the FHIR server, never treated as unknown."""
    patient_id, prefetch = prefetch_from_bundle(_example("hypomagnesemia-omeprazole.json"))
    medications: dict[str, dict[str, Any]] = {}
    for entry in prefetch["medicationRequests"]["entry"]:
        order = entry["resource"]
        reference = f"Medication/med-{order['id'][:8]}"
        medications[reference] = {"resourceType": "Medication", "id": reference[11:],
                                  "code": order.pop("medicationCodeableConcept")}
        order["medicationReference"] = {"reference": reference}
    assert medications

    searches: list[str] = []

    def fhir(request: httpx.Request) -> httpx.Response:
        searches.append(str(request.url))
        assert request.url.path == "/r4/Medication"  # a search by _id, never a read per id
        ids = request.url.params["_id"].split(",")
        found = [medications[f"Medication/{i}"] for i in ids if f"Medication/{i}" in medications]
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset",
                                         "total": len(found),
                                         "entry": [{"resource": r} for r in found]})

    settings = keys.settings(feedback_database_url=f"sqlite:///{tmp_path / 'f.db'}",
                             fhir_servers=["https://fhir.example.org/r4"])
    client = TestClient(create_app(settings, ruleset=ruleset,
                                   fhir_transport=httpx.MockTransport(fhir)))
    refused = call(client, keys, f"/cds-services/{PV}",
                   hook_request("patient-view", patient_id, prefetch))
    detail = incomplete_detail(refused)
    assert all(reference in detail for reference in sorted(medications)[:5])
    fetched = call(client, keys, f"/cds-services/{PV}", hook_request(
        "patient-view", patient_id, prefetch, fhirServer="https://fhir.example.org/r4"))
    assert fetched.status_code == 200, fetched.text
    topics = {c["source"]["topic"]["code"] for c in fetched.json()["cards"]}
    assert "medication.electrolyte-depleting" in topics  # omeprazole, known from its Medication
    assert len(searches) == 1  # every Medication in one search


def test_feedback_report_shows_reason_displays(client: TestClient, keys: Keys) -> None:
    """The sandbox sends a reason's code without its display: the report shows the display
    (the card's own, or one the EHR sent with that code), the code only when none is known."""
    patient_id, prefetch = prefetch_from_bundle(_example("hypomagnesemia-omeprazole.json"))
    cards = call(client, keys, f"/cds-services/{PV}",
                 hook_request("patient-view", patient_id, prefetch)).json()["cards"]

    def overridden(code: str, display: str | None = None) -> dict[str, Any]:
        reason = {"code": code, "system": "https://ehr.example.org/reasons",
                  **({"display": display} if display else {})}
        return {"card": cards[0]["uuid"], "outcome": "overridden",
                "overrideReason": {"reason": reason}, "outcomeTimestamp": "2026-11-26T10:00:00Z"}

    feedback = {"feedback": [overridden("already-addressed"), overridden("already-addressed"),
                             overridden("ehr-own", "Patient declined"), overridden("ehr-own"),
                             overridden("bare-code")]}
    assert call(client, keys, f"/cds-services/{PV}/feedback", feedback).json() == {"stored": 5}
    report = {row["rule_id"]: row for row in client.app.state.feedback.report()}  # type: ignore[attr-defined]
    reasons = dict(report[cards[0]["source"]["topic"]["code"]]["top_override_reasons"])
    assert reasons == {"Already addressed": 2, "Patient declined": 2, "bare-code": 1}


def test_searches_follow_what_ingest_reads(monkeypatch: pytest.MonkeyPatch,
                                          ruleset: RuleSet) -> None:
    """One source: a type ingest comes to read is asked for, with the `_include` of the
    resources it names, on every hook; the service's tables only narrow known types."""
    from fasciculation_cds import ingest, read_elements

    added = {"DiagnosticReport": ("status", "code", "effective[x]", "issued", "result"),
             "MedicationDispense": ("status", "medication[x]", "whenHandedOver", "daysSupply"),
             "MedicationAdministration": ("status", "medication[x]", "effective[x]"),
             "FamilyMemberHistory": ("status", "relationship", "condition")}
    monkeypatch.setattr(ingest, "READ_TYPES", ingest.READ_TYPES | set(added))
    monkeypatch.setattr(ingest, "MEDICATION_USE_TYPES", ingest.MEDICATION_USE_TYPES | {
        "MedicationDispense", "MedicationAdministration"})
    monkeypatch.setattr(read_elements, "READ_ELEMENTS", {**read_elements.READ_ELEMENTS, **added})
    for hook in ("patient-view", "order-select", "order-sign"):
        asked = templates(ruleset, hook)
        patient = "patient={{context.patientId}}"
        assert asked["diagnosticReports"] == (
            f"DiagnosticReport?{patient}&_include=DiagnosticReport:result&_count=100")
        assert asked["medicationDispenses"] == (
            f"MedicationDispense?{patient}&_include=MedicationDispense:medication&_count=100")
        assert asked["medicationAdministrations"] == (
            f"MedicationAdministration?{patient}&_include=MedicationAdministration:medication"
            "&_count=100")
        assert asked["familyMemberHistories"] == f"FamilyMemberHistory?{patient}&_count=100"


def test_observations_without_effective_are_asked_for(ruleset: RuleSet) -> None:
    """The `date` search covers effective[x] only: Observations dated by `issued` (or by their
    report) come from a second search, and the service applies the look-back itself."""
    asked = templates(ruleset, "patient-view")
    assert "date=ge{{today() - 373 days}}" in asked["observations"]
    assert "date:missing=true" in asked["observationsUndated"]
    assert "date=ge" not in asked["observationsUndated"]
    for key, template in asked.items():  # no other search is narrowed by a date
        assert key.startswith("observations") or "date" not in template, key


def test_order_select_reuses_reads_of_the_same_session_only(keys: Keys, tmp_path: Path,
                                                            ruleset: RuleSet) -> None:
    """order-select fires on every change of the order form: the same hookInstance, patient,
    server and token reuse the reads for a short time; anything else reads again."""
    _, prefetch = prefetch_from_bundle(_example("hypomagnesemia-omeprazole.json"))
    pid = prefetch["patient"]["id"]
    requests: list[str] = []

    def fhir(request: httpx.Request) -> httpx.Response:
        requests.append(str(request.url))
        if "/Patient/" in request.url.path:
            return httpx.Response(200, json=prefetch["patient"])
        kind = request.url.path.rsplit("/", 1)[1]
        key = {"Observation": "observations", "Condition": "conditions",
               "MedicationRequest": "medicationRequests",
               "MedicationStatement": "medicationStatements"}.get(kind)
        if key == "observations" and "date:missing" in str(request.url):
            key = "observationsUndated"
        return httpx.Response(200, json=prefetch.get(key) or {
            "resourceType": "Bundle", "type": "searchset", "total": 0})

    settings = keys.settings(feedback_database_url=f"sqlite:///{tmp_path / 'f.db'}",
                             fhir_servers=["https://fhir.example.org/r4"],
                             fhir_reuse_seconds=1.0)
    client = TestClient(create_app(settings, ruleset=ruleset,
                                   fhir_transport=httpx.MockTransport(fhir)))
    draft = {"resourceType": "MedicationRequest", "id": "draft-1", "status": "draft",
             "intent": "order", "subject": {"reference": f"Patient/{pid}"},
             "medicationCodeableConcept": {"text": "omeprazole"}}

    def order_select(instance: str, token: str = "t-1", patient: str = pid) -> Any:
        body = hook_request("order-select", patient, None, hookInstance=instance,
                            fhirServer="https://fhir.example.org/r4",
                            fhirAuthorization={"access_token": token, "token_type": "Bearer",
                                               "expires_in": 300, "scope": "patient/*.read",
                                               "subject": "cds"},
                            context={"selections": ["MedicationRequest/draft-1"],
                                     "draftOrders": {"resourceType": "Bundle", "entry": [
                                         {"resource": draft}]}})
        answer = call(client, keys, f"/cds-services/{OS}", body)
        assert answer.status_code == 200, answer.text
        return answer.json()["cards"]

    first = order_select("session-1")
    once = len(requests)
    assert once >= 4
    assert order_select("session-1") == first  # a re-fire: no read at all
    assert len(requests) == once
    order_select("session-1", token="t-2")  # another token: read again
    assert len(requests) == 2 * once
    order_select("session-2")  # another session
    assert len(requests) == 3 * once
    time.sleep(1.1)
    order_select("session-1")  # too old
    assert len(requests) == 4 * once


def test_a_draft_naming_its_drug_by_reference_gets_it_or_no_finding(
        keys: Keys, tmp_path: Path, ruleset: RuleSet) -> None:
    """A draft order whose drug is a Medication the EHR did not send: fetched by `_id`, and the
    order caution shows; with no server to fetch it from, the call says the record is
    incomplete instead of evaluating an order whose drug is unknown."""
    patient_id, prefetch = prefetch_from_bundle(_example("benign-fasciculation.json"))
    albuterol = {"resourceType": "Medication", "id": "med-albuterol", "code": {"coding": [{
        "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "435",
        "display": "albuterol"}]}}
    searched: list[str] = []

    def fhir(request: httpx.Request) -> httpx.Response:
        searched.append(str(request.url))
        found = [albuterol] if request.url.params.get("_id") == "med-albuterol" else []
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset",
                                         "total": len(found),
                                         "entry": [{"resource": r} for r in found]})

    settings = keys.settings(feedback_database_url=f"sqlite:///{tmp_path / 'f.db'}",
                             fhir_servers=["https://fhir.example.org/r4"])
    client = TestClient(create_app(settings, ruleset=ruleset,
                                   fhir_transport=httpx.MockTransport(fhir)))
    draft = {"resourceType": "MedicationRequest", "id": "draft-1", "status": "draft",
             "intent": "order", "subject": {"reference": f"Patient/{patient_id}"},
             "medicationReference": {"reference": "Medication/med-albuterol"}}
    context = {"draftOrders": {"resourceType": "Bundle", "entry": [{"resource": draft}]},
               "selections": ["MedicationRequest/draft-1"]}
    unknown = call(client, keys, f"/cds-services/{OS}",
                   hook_request("order-select", patient_id, prefetch, context=context))
    assert "Medication/med-albuterol" in incomplete_detail(unknown)
    fetched = call(client, keys, f"/cds-services/{OS}", hook_request(
        "order-select", patient_id, prefetch, context=context,
        fhirServer="https://fhir.example.org/r4"))
    assert fetched.status_code == 200, fetched.text
    assert [c["source"]["topic"]["code"] for c in fetched.json()["cards"]] == [
        "medication.order-caution"]
    assert searched == ["https://fhir.example.org/r4/Medication?_id=med-albuterol&_count=1"]
