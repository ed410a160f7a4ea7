"""The full summary as a SMART app, launched from a card: the service, the test FHIR server
(publishing its SMART configuration) and a SMART authorization server (authlib) on loopback."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from fasciculation_cds import evaluate
from fasciculation_cds.report import render_html
from fasciculation_cds.ruleset import RuleSet
from fasciculation_cds.service import create_app
from fasciculation_cds.service.smart_app import LINK_LABEL
from fasciculation_cds.service.smart_scopes import record_templates, smart_scopes
from fasciculation_cds.service.smart_sessions import COOKIE_NAME

from .conftest import REPO
from .service_helpers import (
    BASE_URL,
    FhirServer,
    Keys,
    hook_request,
    prefetch_from_bundle,
    write_ndjson,
)
from .smart_auth_server import Launch, SmartAuthServer

pytestmark = pytest.mark.fhirserver

TOKEN = "smart-access-token-3f9c"
CLIENT_ID = "fasciculation-cds"
PV = "fasciculation-cds-patient-view"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
EXAMPLE = "hypomagnesemia-omeprazole"
AUTH_SERVER_LOGGERS = ("authlib.oauth2.rfc6749", "werkzeug", "smart-auth-server")


def _records(name: str) -> tuple[str, list[dict[str, Any]]]:
    """A patient's resources as a FHIR server holds them (references by Type/id)."""
    patient_id, prefetch = prefetch_from_bundle(json.loads(
        (REPO / "fhir_examples" / f"{name}.json").read_text()))
    resources = [prefetch["patient"]] + [e["resource"] for key, value in prefetch.items()
                                         if key != "patient" for e in value["entry"]]
    return patient_id, resources


@pytest.fixture(scope="module")
def auth_server() -> Iterator[SmartAuthServer]:
    server = SmartAuthServer(CLIENT_ID, f"{BASE_URL}/smart/callback", TOKEN)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def fhir_server(tmp_path_factory: pytest.TempPathFactory,
                auth_server: SmartAuthServer) -> Iterator[FhirServer]:
    folder = tmp_path_factory.mktemp("smart-fhir")
    config = folder / "smart-configuration.json"
    config.write_text(json.dumps(auth_server.configuration()))
    files = [write_ndjson(folder / f"{name}.ndjson", _records(name)[1])
             for name in (EXAMPLE, "als-red-flags-critical")]
    server = FhirServer(files, default_count=2, token=TOKEN, smart_config=config)
    try:
        yield server
    finally:
        server.stop()


def _service(keys: Keys, tmp_path: Path, ruleset: RuleSet, fhir_base: str,
             **smart: Any) -> TestClient:
    settings = keys.settings(feedback_database_url=f"sqlite:///{tmp_path / 'f.db'}",
                             fhir_servers=[fhir_base], smart=smart)
    return TestClient(create_app(settings, ruleset=ruleset, clock=lambda: NOW))


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


def _card_link(client: TestClient, keys: Keys, patient_id: str) -> dict[str, Any]:
    """The `smart` link of the patient's first card, as the EHR receives it."""
    _, prefetch = prefetch_from_bundle(json.loads(
        (REPO / "fhir_examples" / f"{EXAMPLE}.json").read_text()))
    answer = client.post(f"/cds-services/{PV}", headers=keys.headers(f"/cds-services/{PV}"),
                         json=hook_request("patient-view", patient_id, prefetch))
    assert answer.status_code == 200, answer.text
    [link] = [link for link in answer.json()["cards"][0]["links"] if link["type"] == "smart"]
    return dict(link)


def _start(client: TestClient, fhir_base: str, launch_id: str) -> str:
    """EHR launch up to the authorization server's answer: the callback URL it redirects to."""
    started = client.get("/smart/launch", params={"iss": fhir_base, "launch": launch_id},
                         follow_redirects=False)
    assert started.status_code == 302, started.text
    authorized = httpx.get(started.headers["location"], follow_redirects=False)
    assert authorized.status_code == 302, authorized.text
    callback: str = authorized.headers["location"]
    assert callback.startswith(f"{BASE_URL}/smart/callback?")
    return callback


def _finish(client: TestClient, callback: str) -> httpx.Response:
    answer = client.get(callback.removeprefix(BASE_URL), follow_redirects=False)
    if answer.status_code != 303:
        return answer
    assert answer.headers["location"] == f"{BASE_URL}/smart/summary"  # no code, no state
    return client.get("/smart/summary")


def _expected_html(ruleset: RuleSet, name: str) -> str:
    [assessment] = evaluate(_records(name)[1], as_of=NOW, rules=ruleset)
    return render_html(assessment, ruleset)


def test_card_launches_the_summary_of_its_patient(
        fhir_server: FhirServer, auth_server: SmartAuthServer, keys: Keys, tmp_path: Path,
        ruleset: RuleSet, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    patient_id = _records(EXAMPLE)[0]
    client = _service(keys, tmp_path, ruleset, fhir_server.base)
    link = _card_link(client, keys, patient_id)
    assert link["label"] == LINK_LABEL
    assert link["url"] == f"{BASE_URL}/smart/launch"
    launch_id = auth_server.add_launch(Launch(patient_id, link["appContext"]))
    callback = _start(client, fhir_server.base, launch_id)

    asked = auth_server.authorize_requests[-1]
    assert asked["code_challenge_method"] == "S256"
    assert len(asked["code_challenge"]) == 43
    assert asked["launch"] == launch_id
    assert asked["aud"] == fhir_server.base
    assert asked["client_id"] == CLIENT_ID
    assert asked["response_type"] == "code"
    assert asked["scope"] == smart_scopes(ruleset)
    assert asked["redirect_uri"] == f"{BASE_URL}/smart/callback"
    assert parse_qs(urlsplit(callback).query)["state"] == [asked["state"]]
    cookie = client.cookies.jar  # signed id only: never the patient or the token
    [session_cookie] = [c for c in cookie if c.name == COOKIE_NAME]
    assert patient_id not in str(session_cookie.value)
    assert TOKEN not in str(session_cookie.value)

    page = _finish(client, callback)
    assert page.status_code == 200, page.text
    assert auth_server.token_requests[-1]["code_verifier"]  # PKCE completed
    assert page.text == _expected_html(ruleset, EXAMPLE)  # same page as `report`
    assert 'id="electrolyte.hypomagnesemia"' in page.text
    assert "Lab trends" in page.text
    assert page.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in page.headers["content-security-policy"]
    again = client.get("/smart/summary")  # a reload reads the record again
    assert again.status_code == 200
    assert again.text == page.text
    # every log line but the authorization server's own (it logs the tokens it issues)
    logged = "\n".join(r.getMessage() for r in caplog.records
                       if not r.name.startswith(AUTH_SERVER_LOGGERS))
    assert TOKEN not in logged
    assert patient_id not in logged
    assert "smart summary shown" in logged


def test_session_cookie_attributes(fhir_server: FhirServer, auth_server: SmartAuthServer,
                                   keys: Keys, tmp_path: Path, ruleset: RuleSet) -> None:
    client = _service(keys, tmp_path, ruleset, fhir_server.base)
    launch_id = auth_server.add_launch(Launch(_records(EXAMPLE)[0]))
    started = client.get("/smart/launch", params={"iss": fhir_server.base, "launch": launch_id},
                         follow_redirects=False)
    header = started.headers["set-cookie"].lower()
    assert "httponly" in header
    assert "samesite=lax" in header
    assert "path=/smart" in header
    value = started.cookies[COOKIE_NAME]
    session_id, signature = value.rsplit(".", 1)
    forged = f"{session_id}.{'0' * len(signature)}"
    client.cookies.clear()
    client.cookies.set(COOKIE_NAME, forged)
    callback = httpx.get(started.headers["location"], follow_redirects=False).headers["location"]
    refused = client.get(callback.removeprefix(BASE_URL), follow_redirects=False)
    assert refused.status_code == 401
    assert "Session expired" in refused.text


def test_refused_consent_gives_a_clear_page(fhir_server: FhirServer,
                                            auth_server: SmartAuthServer, keys: Keys,
                                            tmp_path: Path, ruleset: RuleSet) -> None:
    client = _service(keys, tmp_path, ruleset, fhir_server.base)
    launch_id = auth_server.add_launch(Launch(_records(EXAMPLE)[0], grant=False))
    callback = _start(client, fhir_server.base, launch_id)
    assert parse_qs(urlsplit(callback).query)["error"] == ["access_denied"]
    page = _finish(client, callback)
    assert page.status_code == 403
    assert "Access not granted" in page.text
    assert "refused" in page.text
    assert client.get("/smart/summary").status_code == 401  # nothing left to show


def test_expired_token_gives_a_clear_page(fhir_server: FhirServer,
                                          auth_server: SmartAuthServer, keys: Keys,
                                          tmp_path: Path, ruleset: RuleSet) -> None:
    client = _service(keys, tmp_path, ruleset, fhir_server.base)
    launch_id = auth_server.add_launch(Launch(_records(EXAMPLE)[0], expires_in=1))
    callback = _start(client, fhir_server.base, launch_id)
    assert client.get(callback.removeprefix(BASE_URL),
                      follow_redirects=False).status_code == 303
    time.sleep(1.1)
    page = client.get("/smart/summary")
    assert page.status_code == 401
    assert "Access has expired" in page.text
    assert "electrolyte" not in page.text


def test_expired_session_gives_a_clear_page(fhir_server: FhirServer,
                                            auth_server: SmartAuthServer, keys: Keys,
                                            tmp_path: Path, ruleset: RuleSet) -> None:
    client = _service(keys, tmp_path, ruleset, fhir_server.base, session_seconds=1)
    patient_id = _records(EXAMPLE)[0]
    # expired between the launch and the callback
    callback = _start(client, fhir_server.base, auth_server.add_launch(Launch(patient_id)))
    time.sleep(1.1)
    page = _finish(client, callback)
    assert page.status_code == 401
    assert "Session expired" in page.text
    # expired after the summary was shown
    callback = _start(client, fhir_server.base, auth_server.add_launch(Launch(patient_id)))
    assert _finish(client, callback).status_code == 200
    time.sleep(1.1)
    page = client.get("/smart/summary")
    assert page.status_code == 401
    assert "Session expired" in page.text


def test_patient_mismatch_is_refused(fhir_server: FhirServer, auth_server: SmartAuthServer,
                                     keys: Keys, tmp_path: Path, ruleset: RuleSet) -> None:
    client = _service(keys, tmp_path, ruleset, fhir_server.base)
    patient_id = _records(EXAMPLE)[0]
    other = _records("als-red-flags-critical")[0]
    link = _card_link(client, keys, patient_id)
    launch_id = auth_server.add_launch(Launch(other, link["appContext"]))
    page = _finish(client, _start(client, fhir_server.base, launch_id))
    assert page.status_code == 403
    assert "Patient does not match" in page.text
    assert other not in page.text
    assert patient_id not in page.text
    assert client.get("/smart/summary").status_code == 401  # the token was not kept
    # a token without any patient is refused as well
    launch_id = auth_server.add_launch(Launch(None, link["appContext"]))
    page = _finish(client, _start(client, fhir_server.base, launch_id))
    assert page.status_code == 403
    assert "No patient in context" in page.text


@pytest.mark.parametrize("iss", ["https://fhir.elsewhere.example/r4", "{base}/other",
                                 "{base}/../x", "not a url"])
def test_iss_not_on_the_allow_list_is_refused(iss: str, fhir_server: FhirServer,
                                              auth_server: SmartAuthServer, keys: Keys,
                                              tmp_path: Path, ruleset: RuleSet) -> None:
    client = _service(keys, tmp_path, ruleset, fhir_server.base)
    asked = len(auth_server.authorize_requests)
    page = client.get("/smart/launch", params={"iss": iss.format(base=fhir_server.base),
                                               "launch": "x"}, follow_redirects=False)
    assert page.status_code == 403
    assert "FHIR server not allowed" in page.text
    assert COOKIE_NAME not in page.headers.get("set-cookie", "")
    assert len(auth_server.authorize_requests) == asked


def test_state_mismatch_is_refused(fhir_server: FhirServer, auth_server: SmartAuthServer,
                                   keys: Keys, tmp_path: Path, ruleset: RuleSet) -> None:
    client = _service(keys, tmp_path, ruleset, fhir_server.base)
    launch_id = auth_server.add_launch(Launch(_records(EXAMPLE)[0]))
    callback = _start(client, fhir_server.base, launch_id)
    exchanged = len(auth_server.token_requests)
    tampered = re.sub(r"state=[^&]+", "state=forged", callback)
    page = client.get(tampered.removeprefix(BASE_URL), follow_redirects=False)
    assert page.status_code == 400
    assert "Launch not recognised" in page.text
    assert len(auth_server.token_requests) == exchanged  # the code was never exchanged
    # the launch it targeted is over: even the genuine answer is no longer accepted
    assert _finish(client, callback).status_code == 401


def test_unreadable_smart_configuration_gives_a_clear_page(
        fhir_server: FhirServer, keys: Keys, tmp_path: Path, ruleset: RuleSet) -> None:
    failing = f"{fhir_server.base}/fail500"  # allowed, but it publishes no SMART configuration
    settings = keys.settings(feedback_database_url=f"sqlite:///{tmp_path / 'f.db'}",
                             fhir_servers=[failing])
    client = TestClient(create_app(settings, ruleset=ruleset, clock=lambda: NOW))
    page = client.get("/smart/launch", params={"iss": failing, "launch": "x"},
                      follow_redirects=False)
    assert page.status_code == 502
    assert "SMART configuration could not be read" in page.text
    assert "answered 401" in page.text


def test_replayed_callback_and_refused_code(fhir_server: FhirServer,
                                            auth_server: SmartAuthServer, keys: Keys,
                                            tmp_path: Path, ruleset: RuleSet) -> None:
    client = _service(keys, tmp_path, ruleset, fhir_server.base)
    patient_id = _records(EXAMPLE)[0]
    callback = _start(client, fhir_server.base, auth_server.add_launch(Launch(patient_id)))
    assert _finish(client, callback).status_code == 200
    exchanged = len(auth_server.token_requests)
    replayed = client.get(callback.removeprefix(BASE_URL), follow_redirects=False)
    assert replayed.status_code == 400  # the state is spent
    assert "Launch not recognised" in replayed.text
    assert len(auth_server.token_requests) == exchanged
    assert client.get("/smart/summary").status_code == 401
    # a code the authorization server does not know: no token, a clear page
    callback = _start(client, fhir_server.base, auth_server.add_launch(Launch(patient_id)))
    wrong = re.sub(r"code=[^&]+", "code=not-a-code", callback)
    page = client.get(wrong.removeprefix(BASE_URL), follow_redirects=False)
    assert page.status_code == 502
    assert "Access could not be obtained" in page.text
    assert client.get("/smart/summary").status_code == 401


def test_unreadable_record_is_never_summarised(fhir_server: FhirServer,
                                               auth_server: SmartAuthServer, keys: Keys,
                                               tmp_path: Path, ruleset: RuleSet) -> None:
    client = _service(keys, tmp_path, ruleset, fhir_server.base)
    launch_id = auth_server.add_launch(Launch("no-such-patient"))
    page = _finish(client, _start(client, fhir_server.base, launch_id))
    assert page.status_code == 502
    assert "could not be read completely" in page.text
    assert "NO FINDINGS" not in page.text  # never an empty summary


def test_callback_and_summary_without_a_launch(fhir_server: FhirServer, keys: Keys,
                                               tmp_path: Path, ruleset: RuleSet) -> None:
    client = _service(keys, tmp_path, ruleset, fhir_server.base)
    for path in ("/smart/summary", "/smart/callback?code=x&state=y"):
        page = client.get(path, follow_redirects=False)
        assert page.status_code == 401
        assert "Session expired" in page.text
    page = client.get("/smart/launch", follow_redirects=False)
    assert page.status_code == 400
    assert "Launch incomplete" in page.text
    # an open-server launch (fhirServiceUrl, patientId): the patient is never taken from the URL
    page = client.get("/smart/launch", params={"fhirServiceUrl": fhir_server.base,
                                               "patientId": "p1"}, follow_redirects=False)
    assert page.status_code == 400
    assert "never takes the patient from the URL" in page.text
    assert COOKIE_NAME not in page.headers.get("set-cookie", "")


def test_scopes_read_what_the_service_reads(ruleset: RuleSet) -> None:
    scopes = smart_scopes(ruleset).split()
    assert scopes[0] == "launch"
    read = {s.removeprefix("patient/").removesuffix(".read") for s in scopes[1:]}
    assert all(s.startswith("patient/") and s.endswith(".read") for s in scopes[1:])
    kinds = {t.split("?")[0].split("/")[0] for t in record_templates(ruleset).values()}
    assert kinds <= read
    assert read - kinds == {"Medication"}
    assert "openid fhirUser" in smart_scopes(ruleset, openid=True)


def test_cards_carry_no_link_when_the_app_is_off(keys: Keys, tmp_path: Path,
                                                 ruleset: RuleSet) -> None:
    client = _service(keys, tmp_path, ruleset, "https://fhir.example.org", enabled=False)
    _, prefetch = prefetch_from_bundle(json.loads(
        (REPO / "fhir_examples" / f"{EXAMPLE}.json").read_text()))
    answer = client.post(f"/cds-services/{PV}", headers=keys.headers(f"/cds-services/{PV}"),
                         json=hook_request("patient-view", prefetch["patient"]["id"], prefetch))
    assert answer.json()["cards"]
    assert all(link["type"] == "absolute" for card in answer.json()["cards"]
               for link in card.get("links", []))
    assert client.get("/smart/launch", params={"iss": "x", "launch": "y"}).status_code == 404


@pytest.mark.browser
def test_summary_from_a_card_renders_in_headless_chromium(
        fhir_server: FhirServer, auth_server: SmartAuthServer, keys: Keys, tmp_path: Path,
        ruleset: RuleSet) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (make test / .ci/run install it)")
    from PIL import Image, ImageStat

    patient_id = _records(EXAMPLE)[0]
    client = _service(keys, tmp_path, ruleset, fhir_server.base)
    link = _card_link(client, keys, patient_id)
    launch_id = auth_server.add_launch(Launch(patient_id, link["appContext"]))
    summary = _finish(client, _start(client, fhir_server.base, launch_id))
    assert summary.status_code == 200
    page = tmp_path / "summary.html"
    page.write_text(summary.text)
    shot = tmp_path / "summary.png"
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
         "--v=0", "--hide-scrollbars", "--window-size=1100,1900", f"--screenshot={shot}",
         page.as_uri()], capture_output=True, text=True, timeout=120, check=False)
    assert shot.exists(), done.stderr[-2000:]
    with Image.open(shot) as image:
        assert ImageStat.Stat(image.convert("L")).stddev[0] > 10  # not a blank page
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(shot, REPO / "docs" / "img" / "smart-summary.png")
