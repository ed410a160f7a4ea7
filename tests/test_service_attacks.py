"""Attacks on the CDS Hooks service: SSRF through the FHIR allow-list and paging links, a stalled
FHIR server, oversized answers, malformed input of every kind (always a 4xx JSON error, never a
500 or a traceback), secrets and patient data in logs, and forged or misused tokens."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient

from fasciculation_cds.ruleset import RuleSet
from fasciculation_cds.service import create_app
from fasciculation_cds.service.fhir_client import NotAllowedError, ServerUrl, allowed_base
from fasciculation_cds.service.prefetch import templates
from fasciculation_cds.service.server import uvicorn_config
from fasciculation_cds.service.settings import ServiceSettings, TrustedIssuer

from .conftest import REPO
from .service_helpers import ISSUER, Keys, hook_request, incomplete_detail, prefetch_from_bundle

PV = "fasciculation-cds-patient-view"
OS = "fasciculation-cds-order-select"
ALLOWED = "https://fhir.example.org/r4"
FHIR_TOKEN = "fhir-secret-token-4711"


class Recorder(httpx.MockTransport):
    """Every request the service would have sent, answered by `answer` (default: 500)."""

    def __init__(self, answer: Any = None) -> None:
        self.calls: list[httpx.Request] = []
        self._answer = answer or (lambda request: httpx.Response(500))
        super().__init__(self._record)

    def _record(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        return self._answer(request)  # type: ignore[no-any-return]


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


def make_client(keys: Keys, tmp_path: Path, ruleset: RuleSet, transport: httpx.MockTransport,
                **extra: Any) -> TestClient:
    # 412 by default here: an attack's refusal then reads as a status; the card that
    # `incomplete_record: card` gives instead is checked where it matters
    extra.setdefault("incomplete_record", "412")
    settings = keys.settings(feedback_database_url=f"sqlite:///{tmp_path / 'f.db'}",
                             fhir_servers=[ALLOWED], **extra)
    return TestClient(create_app(settings, ruleset=ruleset, fhir_transport=transport),
                      raise_server_exceptions=False)


def call(client: TestClient, keys: Keys, path: str, body: Any = None, *,
         content: bytes | None = None) -> httpx.Response:
    headers = {**keys.headers(path), "Content-Type": "application/json"}
    if content is None:
        content = json.dumps(body).encode()
    return client.post(path, headers=headers, content=content)


def example() -> tuple[str, dict[str, Any]]:
    return prefetch_from_bundle(json.loads(
        (REPO / "fhir_examples" / "hypomagnesemia-omeprazole.json").read_text()))


def _auth(token: str = FHIR_TOKEN) -> dict[str, Any]:
    return {"access_token": token, "token_type": "Bearer", "expires_in": 300,
            "scope": "patient/*.read", "subject": "cds"}


def assert_clean_4xx(answer: httpx.Response) -> None:
    assert 400 <= answer.status_code < 500, answer.text
    assert set(answer.json()) == {"error"}
    assert "Traceback" not in answer.text


# --- 8: the allow-list compares parsed URLs ------------------------------------------------------


@pytest.mark.parametrize("url", [
    "https://fhir.example.org.attacker.test/r4",
    "http://fhir.example.org/r4",  # scheme
    "https://fhir.example.org:8443/r4",  # port
    "https://fhir.example.org/r4x",
    "https://fhir.example.org/",
    "https://fhir.example.org/r4/../admin",
    "https://fhir.example.org/r4/%2e%2e/admin",
    "https://fhir.example.org@attacker.test/r4",
    "https://user:pw@fhir.example.org/r4",
    "https://fhir.example.org\\@attacker.test/r4",
    "file:///etc/passwd",
    "not a url",
])
def test_allow_list_refuses_look_alikes(url: str) -> None:
    with pytest.raises(NotAllowedError):
        allowed_base(url, [ALLOWED])


def test_allow_list_normalises() -> None:
    for url in ("https://FHIR.example.org/r4/", "https://fhir.example.org:443/r4",
                "https://fhir.example.org./r4"):
        assert allowed_base(url, [ALLOWED]).origin_and_path == ALLOWED
    base = ServerUrl.parse(ALLOWED)
    assert ServerUrl.parse(f"{ALLOWED}/Observation?_offset=2").is_at_or_below(base)
    assert not ServerUrl.parse("https://fhir.example.org/r4-other/x").is_at_or_below(base)


@pytest.mark.parametrize("link", [
    "https://fhir.example.org.attacker.test/r4/Condition?page=2",
    "http://fhir.example.org@attacker.test/r4/Condition?page=2",
    "https://fhir.example.org/r4/../private/Condition",
    "https://fhir.example.org:444/r4/Condition",
    "http://fhir.example.org/r4/Condition?page=2",
])
def test_paging_links_never_leave_the_server(link: str, keys: Keys, tmp_path: Path,
                                             ruleset: RuleSet) -> None:
    recorder = Recorder()
    client = make_client(keys, tmp_path, ruleset, recorder)
    patient_id, prefetch = example()
    prefetch["conditions"]["link"] = [{"relation": "next", "url": link}]
    answer = call(client, keys, f"/cds-services/{PV}", hook_request(
        "patient-view", patient_id, prefetch, fhirServer=ALLOWED, fhirAuthorization=_auth()))
    assert answer.status_code == 412, answer.text
    assert "outside the FHIR server" in answer.json()["error"] or "valid" in answer.text
    assert recorder.calls == []  # the token went nowhere


def test_allow_list_applies_only_when_the_server_is_contacted(keys: Keys, tmp_path: Path,
                                                              ruleset: RuleSet) -> None:
    recorder = Recorder()
    client = make_client(keys, tmp_path, ruleset, recorder)
    patient_id, prefetch = example()
    answer = call(client, keys, f"/cds-services/{PV}", hook_request(
        "patient-view", patient_id, prefetch, fhirServer="https://not-allowed.example.net/fhir"))
    assert answer.status_code == 200, answer.text  # the prefetch is complete
    assert answer.json()["cards"]
    assert recorder.calls == []


# --- 9: blocking work off the loop, a whole-request deadline, a size cap -------------------------


class DripServer:
    """A FHIR server that answers 1 byte every `interval` seconds (a stalled fallback)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.base = f"http://127.0.0.1:{self.socket.getsockname()[1]}/fhir"
        self.interval, self.stopped = interval, threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            threading.Thread(target=self._drip, args=(connection,), daemon=True).start()

    def _drip(self, connection: socket.socket) -> None:
        body = b'{"resourceType": "Bundle", "type": "searchset", "entry": []}' * 1000
        try:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\n"
                               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
            for byte in body:
                if self.stopped.wait(self.interval):
                    break
                connection.sendall(bytes([byte]))
        except OSError:
            pass
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()
        self.socket.close()


@pytest.fixture
def drip() -> Iterator[DripServer]:
    server = DripServer()
    yield server
    server.stop()


class LiveService:
    """The app under uvicorn in a thread, on a free loopback port (one event loop for all)."""

    def __init__(self, app: Any, settings: ServiceSettings | None = None) -> None:
        # as `serve` runs it (its header timeout included), logging at DEBUG or as set
        settings = settings or ServiceSettings(log_level="debug")
        config = uvicorn_config(app, settings, host="127.0.0.1", port=0, log_config=None,
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                break
            time.sleep(0.02)
        [sock] = [s for server in self.server.servers for s in server.sockets][:1]
        self.base = f"http://127.0.0.1:{sock.getsockname()[1]}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def test_stalled_fhir_server_neither_freezes_the_service_nor_outlives_the_deadline(
        drip: DripServer, keys: Keys, tmp_path: Path, ruleset: RuleSet) -> None:
    settings = keys.settings(feedback_database_url=f"sqlite:///{tmp_path / 'f.db'}",
                             fhir_servers=[drip.base], request_deadline_seconds=3,
                             fhir_timeout_seconds=2)  # each read is quick: only a deadline helps
    settings = settings.model_copy(update={"public_base_url": "http://testserver"})
    live = LiveService(create_app(settings, ruleset=ruleset))
    try:
        outcome: dict[str, Any] = {}

        def stalled_call() -> None:
            started = time.monotonic()
            path = f"/cds-services/{PV}"
            outcome["answer"] = httpx.post(
                f"{live.base}{path}", headers=keys.headers(path), timeout=30,
                json=hook_request("patient-view", "abc", None, fhirServer=drip.base))
            outcome["seconds"] = time.monotonic() - started

        worker = threading.Thread(target=stalled_call)
        worker.start()
        time.sleep(0.5)  # the call is now waiting on the drip
        health = [httpx.get(f"{live.base}/healthz", timeout=5) for _ in range(5)]
        assert worker.is_alive()  # still stalled while /healthz answered
        assert all(h.status_code == 200 for h in health)
        worker.join(timeout=30)
        detail = incomplete_detail(outcome["answer"])  # one card, no finding
        for key in templates(ruleset, "patient-view"):  # each part not read by the deadline
            assert f"'{key}' was still being read when the request deadline (3 s" in detail
        assert outcome["seconds"] < 10
    finally:
        live.stop()


def test_fhir_answers_are_size_capped(keys: Keys, tmp_path: Path, ruleset: RuleSet) -> None:
    big = {"resourceType": "Bundle", "type": "searchset",
           "entry": [{"resource": {"resourceType": "Observation", "id": f"o{i}",
                                   "status": "final"}} for i in range(2000)]}
    recorder = Recorder(lambda request: httpx.Response(200, json=big))
    client = make_client(keys, tmp_path, ruleset, recorder, fhir_max_bytes=10_000)
    answer = call(client, keys, f"/cds-services/{PV}", hook_request(
        "patient-view", "abc", None, fhirServer=ALLOWED, fhirAuthorization=_auth()))
    assert answer.status_code == 412
    assert "larger than" in answer.json()["error"]


# --- 10: malformed input is a 4xx JSON error -----------------------------------------------------


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"{}" + b"}" * depth


def _bad_requests() -> dict[str, tuple[str, Any]]:
    patient_id, prefetch = example()
    pv = f"/cds-services/{PV}"
    os_ = f"/cds-services/{OS}"
    fb = f"/cds-services/{PV}/feedback"

    def with_prefetch(**changes: Any) -> dict[str, Any]:
        return hook_request("patient-view", patient_id, {**prefetch, **changes})

    draft_orders = {"resourceType": "Bundle", "entry": {"resource": {}}}
    return {
        "deep JSON": (pv, b'{"hook": "patient-view", "context": ' + _nested(1000) + b"}"),
        "deep JSON in feedback": (fb, b'{"feedback": [' + _nested(1000) + b"]}"),
        "JSON 100 deep": (pv, b'{"hook": "patient-view", "context": ' + _nested(100) + b"}"),
        "not JSON": (pv, b"{not json"),
        "JSON list": (pv, []),
        "prefetch entry not a list": (pv, with_prefetch(
            conditions={"resourceType": "Bundle", "type": "searchset", "entry": {"x": 1}})),
        "prefetch link not a list": (pv, with_prefetch(
            conditions={"resourceType": "Bundle", "type": "searchset", "entry": [],
                        "link": "next"})),
        "prefetch value not a resource": (pv, with_prefetch(conditions="Condition?x")),
        "draftOrders entry not a list": (os_, hook_request(
            "order-select", patient_id, prefetch,
            context={"draftOrders": draft_orders, "selections": []})),
        "draftOrders entry without resource": (os_, hook_request(
            "order-select", patient_id, prefetch,
            context={"draftOrders": {"resourceType": "Bundle", "entry": [{"x": 1}]},
                     "selections": []})),
        "patientId template": (pv, hook_request("patient-view", "{{today() - abc}}", None,
                                                fhirServer=ALLOWED)),
        "patientId query injection": (pv, hook_request("patient-view", "x&_count=1", None,
                                                       fhirServer=ALLOWED)),
        "patientId reference": (pv, hook_request("patient-view", "Patient/x", None)),
        "patientId number": (pv, hook_request("patient-view", 7, None)),  # type: ignore[arg-type]
        "context not an object": (pv, {"hook": "patient-view", "hookInstance": "x",
                                       "context": []}),
        "feedback reason not an object": (fb, {"feedback": [{
            "card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-11-30T10:00:00Z",
            "overrideReason": {"reason": "already-addressed"}}]}),
        "feedback outcome unknown": (fb, {"feedback": [{
            "card": "c", "outcome": "liked", "outcomeTimestamp": "2026-11-30T10:00:00Z"}]}),
        "feedback not a list": (fb, {"feedback": {"card": "c"}}),
        "fhirAuthorization malformed": (pv, hook_request(
            "patient-view", patient_id, prefetch, fhirAuthorization={"access_token": 1})),
    }


@pytest.mark.parametrize("case", sorted(_bad_requests()))
def test_malformed_input_is_a_4xx(case: str, keys: Keys, tmp_path: Path,
                                  ruleset: RuleSet) -> None:
    recorder = Recorder()
    client = make_client(keys, tmp_path, ruleset, recorder)
    path, body = _bad_requests()[case]
    answer = call(client, keys, path, content=body if isinstance(body, bytes) else None,
                  body=body)
    assert_clean_4xx(answer)
    assert recorder.calls == []  # a malformed id never reaches a FHIR query


def test_malformed_fhir_answers_are_412(keys: Keys, tmp_path: Path, ruleset: RuleSet) -> None:
    for document in ({"resourceType": "Bundle", "entry": {"resource": {}}},
                     {"resourceType": "Bundle", "entry": [], "link": {"relation": "next"}},
                     [1, 2, 3], "text"):
        recorder = Recorder(lambda request, d=document: httpx.Response(200, json=d))
        client = make_client(keys, tmp_path, ruleset, recorder)
        answer = call(client, keys, f"/cds-services/{PV}", hook_request(
            "patient-view", "abc", None, fhirServer=ALLOWED, fhirAuthorization=_auth()))
        assert answer.status_code == 412, (document, answer.text)
        assert set(answer.json()) == {"error"}


def test_token_kid_naming_a_key_of_another_type(keys: Keys, tmp_path: Path,
                                                ruleset: RuleSet) -> None:
    client = make_client(keys, tmp_path, ruleset, Recorder())
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "http://testserver/cds-services", "iat": now,
              "exp": now + 300, "jti": "k1"}
    token = jwt.encode(claims, keys.ec, algorithm="ES384", headers={"kid": "rsa-1"})
    answer = client.get("/cds-services", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401
    assert_clean_4xx(answer)


def test_missing_jwks_file_is_401(keys: Keys, tmp_path: Path, ruleset: RuleSet) -> None:
    settings = keys.settings(feedback_database_url=f"sqlite:///{tmp_path / 'f.db'}")
    settings = settings.model_copy(update={"issuers": [
        TrustedIssuer(iss=ISSUER, jwks_file=tmp_path / "gone.json")]})
    client = TestClient(create_app(settings, ruleset=ruleset), raise_server_exceptions=False)
    answer = client.get("/cds-services", headers=keys.headers())
    assert answer.status_code == 401
    assert_clean_4xx(answer)


# --- 11: no patient text, comment or token in any log line ---------------------------------------


def test_logs_carry_no_patient_data_comment_or_token(keys: Keys, tmp_path: Path,
                                                     ruleset: RuleSet,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    patient_id, prefetch = example()
    prefetch["patient"]["name"] = [{"family": "Quuxington", "given": ["Zebulon"]}]
    recorder = Recorder()
    client = make_client(keys, tmp_path, ruleset, recorder)
    bearer = keys.headers(f"/cds-services/{PV}")
    client.post(f"/cds-services/{PV}", headers=bearer,
                json=hook_request("patient-view", patient_id, prefetch))
    # a FHIR fallback: httpx would log the search URL, with the patient id in it
    call(client, keys, f"/cds-services/{PV}", hook_request(
        "patient-view", patient_id, None, fhirServer=ALLOWED, fhirAuthorization=_auth()))
    assert recorder.calls
    # a refused token in the query string
    client.get("/cds-services?access_token=query-secret-xyz")
    # a comment that meets a database error
    client.app.state.feedback.engine.dispose()  # type: ignore[attr-defined]
    with client.app.state.feedback.engine.begin() as db:  # type: ignore[attr-defined]
        db.exec_driver_sql("DROP TABLE feedback")
    answer = call(client, keys, f"/cds-services/{PV}/feedback", {"feedback": [{
        "card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-11-30T10:00:00Z",
        "overrideReason": {"userComment": "patient Zebulon told me a secret"}}]})
    assert answer.status_code == 503
    # every record but the test client's own (TestClient logs its requests through httpx2)
    text = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records
                     if not r.name.startswith("httpx2"))
    for secret in (bearer["Authorization"][7:], FHIR_TOKEN, "query-secret-xyz", patient_id,
                   "Zebulon", "Quuxington", "0.58"):
        assert secret not in text, secret
    assert "feedback" in text  # the failure itself is logged


def test_access_log_drops_the_query_string(keys: Keys, tmp_path: Path, ruleset: RuleSet,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = keys.settings(feedback_database_url=f"sqlite:///{tmp_path / 'f.db'}")
    live = LiveService(create_app(settings, ruleset=ruleset))
    try:
        answer = httpx.get(f"{live.base}/cds-services?q=query-secret-xyz")
        assert answer.status_code == 401
    finally:
        live.stop()
    assert "GET /cds-services" in caplog.text
    assert "query-secret-xyz" not in caplog.text


# --- 12 and the classic token attacks ------------------------------------------------------------


def _raw_token(keys: Keys, claims: dict[str, Any], *, alg: str = "RS384",
               header: dict[str, Any] | None = None) -> str:
    key = keys.ec if alg == "ES384" else keys.rsa
    return jwt.encode(claims, key, algorithm=alg,
                      headers={"kid": "ec-1" if alg == "ES384" else "rsa-1", **(header or {})})


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "aud": "http://testserver/cds-services", "iat": now,
            "exp": now + 300, "jti": f"j-{time.monotonic_ns()}", **changes}


def _forged(keys: Keys, case: str) -> str:
    now = int(time.time())
    if case == "alg none":
        return jwt.encode(_claims(), None, algorithm="none")
    if case == "HS384 with the RSA public key as secret":
        public = keys.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        header = json.dumps({"alg": "HS384", "typ": "JWT", "kid": "rsa-1"}).encode()
        body = json.dumps(_claims()).encode()
        signing = f"{jwt.utils.base64url_encode(header).decode()}." \
                  f"{jwt.utils.base64url_encode(body).decode()}"
        import hashlib
        import hmac

        signature = hmac.new(public, signing.encode(), hashlib.sha384).digest()
        return f"{signing}.{jwt.utils.base64url_encode(signature).decode()}"
    if case == "expired":
        return _raw_token(keys, _claims(iat=now - 900, exp=now - 600))
    if case == "numeric-string exp":
        return _raw_token(keys, _claims(exp=str(now + 300)))
    if case == "lifetime over 5 minutes":
        return _raw_token(keys, _claims(exp=now + 3600))
    if case == "issued in the future":
        return _raw_token(keys, _claims(iat=now + 600, exp=now + 700))
    if case == "no jti":
        claims = _claims()
        del claims["jti"]
        return _raw_token(keys, claims)
    if case == "untrusted issuer":
        return _raw_token(keys, _claims(iss="https://evil.example.org"))
    if case == "aud of another endpoint":
        return _raw_token(keys, _claims(aud=f"http://testserver/cds-services/{PV}"))
    if case == "aud of another host":
        return _raw_token(keys, _claims(aud="https://other.example.org/cds-services"))
    if case == "aud as a prefix":
        return _raw_token(keys, _claims(aud="http://testserver"))
    if case == "signed by an unknown key":
        from cryptography.hazmat.primitives.asymmetric import rsa

        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return jwt.encode(_claims(), other, algorithm="RS384", headers={"kid": "rsa-1"})
    raise AssertionError(case)


@pytest.mark.parametrize("case", [
    "alg none", "HS384 with the RSA public key as secret", "expired", "numeric-string exp",
    "lifetime over 5 minutes", "issued in the future", "no jti", "untrusted issuer",
    "aud of another endpoint", "aud of another host", "aud as a prefix",
    "signed by an unknown key"])
def test_forged_or_misused_tokens_are_refused(case: str, keys: Keys, tmp_path: Path,
                                              ruleset: RuleSet) -> None:
    client = make_client(keys, tmp_path, ruleset, Recorder())
    answer = client.get("/cds-services", headers={"Authorization": f"Bearer {_forged(keys, case)}"})
    assert answer.status_code == 401, case
    assert_clean_4xx(answer)


def test_replayed_token_is_refused(keys: Keys, tmp_path: Path, ruleset: RuleSet) -> None:
    client = make_client(keys, tmp_path, ruleset, Recorder())
    headers = keys.headers()
    assert client.get("/cds-services", headers=headers).status_code == 200
    assert client.get("/cds-services", headers=headers).status_code == 401


def test_used_token_ids_are_forgotten_once_their_tokens_expire(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Replay memory is bounded by the tokens still valid, not by every token ever seen."""
    from fasciculation_cds.service.auth import Authenticator, AuthError
    from fasciculation_cds.service.settings import ServiceSettings

    authenticator = Authenticator(ServiceSettings(clock_skew_seconds=10))
    now = 1_000_000.0
    monkeypatch.setattr(time, "time", lambda: now)
    for index in range(1000):
        authenticator._check_replay(f"iss|{index}", now + 60)
    with pytest.raises(AuthError):
        authenticator._check_replay("iss|5", now + 60)
    now += 71  # past exp + skew: every one of them could only be refused as expired now
    authenticator._check_replay("iss|new", now + 60)
    assert set(authenticator._seen) == {"iss|new"}
    authenticator._check_replay("iss|5", now + 60)  # an expired jti no longer blocks anything


def test_token_lifetime_is_configurable(keys: Keys, tmp_path: Path, ruleset: RuleSet) -> None:
    client = make_client(keys, tmp_path, ruleset, Recorder(), max_token_lifetime_seconds=3600)
    token = _raw_token(keys, _claims(exp=int(time.time()) + 3000))
    assert client.get("/cds-services", headers={"Authorization": f"Bearer {token}"}) \
        .status_code == 200


def test_token_for_one_endpoint_is_refused_at_another(keys: Keys, tmp_path: Path,
                                                      ruleset: RuleSet) -> None:
    client = make_client(keys, tmp_path, ruleset, Recorder())
    patient_id, prefetch = example()
    body = hook_request("patient-view", patient_id, prefetch)
    for minted_for in ("/cds-services", f"/cds-services/{OS}", f"/cds-services/{PV}/feedback"):
        answer = client.post(f"/cds-services/{PV}", headers=keys.headers(minted_for), json=body)
        assert answer.status_code == 401, minted_for
    assert call(client, keys, f"/cds-services/{PV}", body).status_code == 200


def test_sandbox_token_with_jku_is_verified_without_fetching_it(
        keys: Keys, tmp_path: Path, ruleset: RuleSet) -> None:
    """The sandbox's token (sandbox-shapes/jwt.md): ES384, a `jku`, `aud` the exact URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.2)
    jku = f"http://127.0.0.1:{listener.getsockname()[1]}/.well-known/jwks.json"
    try:
        settings = keys.settings(feedback_database_url=f"sqlite:///{tmp_path / 'f.db'}")
        client = TestClient(create_app(settings, ruleset=ruleset))
        patient_id, prefetch = example()
        path = f"/cds-services/{PV}"
        token = keys.token(path, alg="ES384", header={"jku": jku}, sub="sandbox-client")
        answer = client.post(path, headers={"Authorization": f"Bearer {token}"},
                             json=hook_request("patient-view", patient_id, prefetch))
        assert answer.status_code == 200, answer.text
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody ever connected to the jku
    finally:
        listener.close()


# --- partial records the EHR or the FHIR server marks as such ------------------------------------

_CUT_SHORT = {"resourceType": "OperationOutcome", "issue": [
    {"severity": "warning", "code": "too-costly", "diagnostics": "results truncated"}]}


@pytest.mark.parametrize("page", [
    {"resourceType": "Bundle", "type": "searchset", "total": 500, "entry": []},
    {"resourceType": "Bundle", "type": "searchset",
     "entry": [{"resource": _CUT_SHORT, "search": {"mode": "outcome"}}]},
    {"resourceType": "Bundle", "type": "searchset", "total": "3", "entry": []},
], ids=["total-above-entries", "outcome-too-costly", "total-not-a-number"])
def test_a_search_the_fhir_server_cut_short_is_412(page: dict[str, Any], keys: Keys,
                                                  tmp_path: Path, ruleset: RuleSet) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/Patient/abc"):
            return httpx.Response(200, json={"resourceType": "Patient", "id": "abc"})
        return httpx.Response(200, json=page)

    client = make_client(keys, tmp_path, ruleset, Recorder(answer))
    answer_ = call(client, keys, f"/cds-services/{PV}", hook_request(
        "patient-view", "abc", None, fhirServer=ALLOWED, fhirAuthorization=_auth()))
    assert answer_.status_code == 412, answer_.text
    assert set(answer_.json()) == {"error"}


def test_a_complete_empty_search_from_the_fhir_server_is_answered(
        keys: Keys, tmp_path: Path, ruleset: RuleSet) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/Patient/abc"):
            return httpx.Response(200, json={"resourceType": "Patient", "id": "abc"})
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset",
                                         "total": 0, "entry": []})

    client = make_client(keys, tmp_path, ruleset, Recorder(answer))
    answer_ = call(client, keys, f"/cds-services/{PV}", hook_request(
        "patient-view", "abc", None, fhirServer=ALLOWED, fhirAuthorization=_auth()))
    assert answer_.status_code == 200, answer_.text


@pytest.mark.parametrize("conditions", [
    {"resourceType": "Basic", "id": "b"},
    {"resourceType": "Bundle", "type": "searchset", "total": "3", "entry": []},
    {"resourceType": "Bundle", "type": "collection", "total": 3, "entry": []},
    {"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": _CUT_SHORT, "search": {"mode": "outcome"}}]},
], ids=["not-a-bundle", "total-not-a-number", "collection-with-total", "outcome-too-costly"])
def test_a_prefetch_search_that_is_not_whole_never_gives_cards(
        conditions: dict[str, Any], keys: Keys, tmp_path: Path, ruleset: RuleSet) -> None:
    patient_id, prefetch = example()
    client = make_client(keys, tmp_path, ruleset, Recorder())
    answer = call(client, keys, f"/cds-services/{PV}", hook_request(
        "patient-view", patient_id, {**prefetch, "conditions": conditions}))
    assert_clean_4xx(answer)


# --- v3: bounded FHIR reads, one budget per call, no stall, no slow sender, no dead worker -------


def _orders_naming_unsent_medications(count: int) -> tuple[str, dict[str, Any]]:
    patient_id, prefetch = example()
    order = prefetch["medicationRequests"]["entry"][0]["resource"]
    orders = []
    for index in range(count):
        copy = {k: v for k, v in order.items() if k != "medicationCodeableConcept"}
        orders.append({"resource": {**copy, "id": f"order-{index}",
                                    "medicationReference": {"reference": f"Medication/m{index}"}}})
    prefetch["medicationRequests"] = {"resourceType": "Bundle", "type": "searchset",
                                      "total": count, "entry": orders}
    return patient_id, prefetch


class CountingTransport(httpx.AsyncBaseTransport):
    """Answers every Medication search with the Medications asked for, after `delay` seconds,
    counting requests and the most in flight at once."""

    def __init__(self, delay: float = 0.02) -> None:
        self.requests: list[httpx.URL] = []
        self.in_flight = self.most_in_flight = 0
        self.delay = delay

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        import asyncio

        self.requests.append(request.url)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        ids = request.url.params.get("_id", "")
        found = [{"resource": {"resourceType": "Medication", "id": i,
                               "code": {"text": "omeprazole"}}} for i in ids.split(",") if i]
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset",
                                         "total": len(found), "entry": found})


def test_medication_references_are_resolved_in_batched_searches(keys: Keys, tmp_path: Path,
                                                                ruleset: RuleSet) -> None:
    """1,200 orders naming Medications the EHR did not send: a few `_id` searches, a few at a
    time, never one read per reference all at once (which froze the event loop)."""
    transport = CountingTransport()
    settings = keys.settings(feedback_database_url=f"sqlite:///{tmp_path / 'f.db'}",
                             fhir_servers=[ALLOWED], fhir_max_concurrency=3)
    settings = settings.model_copy(update={"public_base_url": "http://testserver"})
    live = LiveService(create_app(settings, ruleset=ruleset, fhir_transport=transport))
    patient_id, prefetch = _orders_naming_unsent_medications(1200)
    path = f"/cds-services/{PV}"
    stop = threading.Event()
    took: list[float] = []
    prober = threading.Thread(target=lambda: took.extend(_latencies(live.base, stop)))
    try:
        prober.start()
        answer = httpx.post(f"{live.base}{path}", headers=keys.headers(path), timeout=60,
                            json=hook_request("patient-view", patient_id, prefetch,
                                              fhirServer=ALLOWED, fhirAuthorization=_auth()))
    finally:
        stop.set()
        prober.join(timeout=30)
        live.stop()
    assert answer.status_code == 200, answer.text
    # one read per reference held /healthz 15-28 s; the evaluation of 1,200 orders shares the
    # interpreter, so on a loaded machine a probe can wait a few switch intervals
    _assert_responsive(took, longest=1.0)
    assert "medication.electrolyte-depleting" in {
        c["source"]["topic"]["code"] for c in answer.json()["cards"]}
    assert len(transport.requests) == 24  # 1,200 ids, 50 a search
    assert all(url.path == "/r4/Medication" for url in transport.requests)
    assert transport.most_in_flight <= 3


def test_fhir_reads_per_call_are_bounded(keys: Keys, tmp_path: Path, ruleset: RuleSet) -> None:
    transport = CountingTransport(delay=0)
    settings = keys.settings(feedback_database_url=f"sqlite:///{tmp_path / 'f.db'}",
                             fhir_servers=[ALLOWED], fhir_max_requests=10)
    client = TestClient(create_app(settings, ruleset=ruleset, fhir_transport=transport))
    patient_id, prefetch = _orders_naming_unsent_medications(3000)  # 60 searches needed
    answer = call(client, keys, f"/cds-services/{PV}", hook_request(
        "patient-view", patient_id, prefetch, fhirServer=ALLOWED, fhirAuthorization=_auth()))
    assert "more than 10 FHIR reads" in incomplete_detail(answer)
    assert len(transport.requests) <= 10


def test_one_byte_budget_for_the_whole_call(keys: Keys, tmp_path: Path,
                                            ruleset: RuleSet) -> None:
    """Pages each well under the budget, together over it: refused (a budget per page let four
    20 MB pages through)."""
    filler = "x" * 3_000

    def pages(request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params.get("_offset", "0"))
        return httpx.Response(200, json={
            "resourceType": "Bundle", "type": "searchset", "entry": [
                {"resource": {"resourceType": "Basic", "id": f"b{offset}", "text": filler}}],
            "link": [{"relation": "next",
                      "url": f"{ALLOWED}/Condition?patient=abc&_offset={offset + 1}"}]})

    client = make_client(keys, tmp_path, ruleset, Recorder(pages), fhir_max_bytes=20_000,
                         incomplete_record="card")
    patient_id, prefetch = example()
    prefetch["conditions"]["link"] = [
        {"relation": "next", "url": f"{ALLOWED}/Condition?patient=abc&_offset=1"}]
    answer = call(client, keys, f"/cds-services/{PV}", hook_request(
        "patient-view", patient_id, prefetch, fhirServer=ALLOWED, fhirAuthorization=_auth()))
    assert "larger than 20000 bytes" in incomplete_detail(answer)


@pytest.mark.parametrize("link", [
    "https://fhir.example.org/r4/..;/private/Condition",
    "https://fhir.example.org/r4/%2e%2e;/private/Condition",
    "https://fhir.example.org/r4/%252e%252e/private/Condition",
    "https://fhir.example.org/r4/.%2e/private/Condition",
    "https://fhir.example.org/r4/Condition;jsessionid=1/../../private",
])
def test_paging_links_with_disguised_dot_segments_are_refused(link: str, keys: Keys,
                                                             tmp_path: Path,
                                                             ruleset: RuleSet) -> None:
    recorder = Recorder()
    client = make_client(keys, tmp_path, ruleset, recorder)
    patient_id, prefetch = example()
    prefetch["conditions"]["link"] = [{"relation": "next", "url": link}]
    answer = call(client, keys, f"/cds-services/{PV}", hook_request(
        "patient-view", patient_id, prefetch, fhirServer=ALLOWED, fhirAuthorization=_auth()))
    assert answer.status_code == 412, answer.text
    assert recorder.calls == []  # the token went nowhere


def test_paging_links_are_requested_as_checked(keys: Keys, tmp_path: Path,
                                               ruleset: RuleSet) -> None:
    recorder = Recorder(lambda request: httpx.Response(200, json={
        "resourceType": "Bundle", "type": "searchset", "entry": []}))
    client = make_client(keys, tmp_path, ruleset, recorder)
    patient_id, prefetch = example()
    prefetch["conditions"]["link"] = [
        {"relation": "next", "url": "HTTPS://FHIR.example.org.:443/r4/Condition?_offset=1"}]
    answer = call(client, keys, f"/cds-services/{PV}", hook_request(
        "patient-view", patient_id, prefetch, fhirServer=ALLOWED, fhirAuthorization=_auth()))
    assert answer.status_code == 200, answer.text
    assert [str(r.url) for r in recorder.calls] == [f"{ALLOWED}/Condition?_offset=1"]


def _latencies(base: str, stop: threading.Event) -> list[float]:
    """/healthz and /readyz round trips until `stop` (at least ten)."""
    took: list[float] = []
    with httpx.Client(timeout=10) as probe:
        while not stop.is_set() or len(took) < 10:
            for path in ("/healthz", "/readyz"):
                started = time.perf_counter()
                assert probe.get(f"{base}{path}").status_code == 200
                took.append(time.perf_counter() - started)
            time.sleep(0.01)
    return took


# The event loop answers /healthz in about 1 ms; on these shared two-core machines a probe can
# wait a few ms for the CPU, so the bound allows for that while staying far below the seconds
# a blocked loop takes.
HEALTH_BOUND = 0.020


def _assert_responsive(took: list[float], longest: float = 0.25) -> None:
    took = sorted(took)
    assert took[len(took) // 2] < HEALTH_BOUND, took[-5:]  # median
    assert took[int(len(took) * 0.9)] < HEALTH_BOUND * 5, took[-5:]
    assert took[-1] < longest, took[-5:]


def test_a_large_body_is_parsed_off_the_event_loop(keys: Keys, tmp_path: Path,
                                                   ruleset: RuleSet) -> None:
    """A body just under `max_request_bytes` made of 600,000 tiny JSON containers: parsed and
    walked for its depth on the event loop, it held /healthz for as long as that takes. Off
    the loop, /healthz waits at most for the C parse itself (which holds the interpreter;
    `max_request_bytes` bounds it): well under half of that."""
    from fasciculation_cds.service.guard import parse_json

    settings = keys.settings(feedback_database_url=f"sqlite:///{tmp_path / 'f.db'}")
    path = f"/cds-services/{PV}"
    patient_id, prefetch = example()
    prefetch["bulk"] = {"resourceType": "Basic", "id": "bulk", "extension": [[]] * 600_000}
    body = json.dumps(hook_request("patient-view", patient_id, prefetch),
                      separators=(",", ":")).encode()
    assert 1_500_000 < len(body) < settings.max_request_bytes
    started = time.perf_counter()
    parse_json(body)
    on_the_loop = time.perf_counter() - started  # what the loop was held for before
    live = LiveService(create_app(settings, ruleset=ruleset))
    stop = threading.Event()
    took: list[float] = []
    prober = threading.Thread(target=lambda: took.extend(_latencies(live.base, stop)))
    try:
        prober.start()
        for _ in range(3):
            answer = httpx.post(f"{live.base}{path}", content=body, timeout=60, headers={
                **keys.headers(path), "Content-Type": "application/json"})
            assert answer.status_code == 200, answer.text
    finally:
        stop.set()
        prober.join(timeout=30)
        live.stop()
    _assert_responsive(took, longest=max(0.1, on_the_loop / 2))


def _slow_sender(port: int, first: bytes, then: bytes, seconds: float) -> tuple[float, bytes]:
    """Sends `first`, then `then` a byte every 0.2 s: how long until the server hung up (at
    most `seconds`), and what it answered."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.settimeout(0.2)
        started = time.monotonic()
        connection.sendall(first)
        for byte in then * 100:
            if time.monotonic() - started > seconds:
                break
            try:
                connection.sendall(bytes([byte]))
                chunk = connection.recv(4096)
                if not chunk:
                    break
                answer += chunk
            except TimeoutError:
                continue
            except OSError:
                break
        return time.monotonic() - started, answer


def test_slow_senders_are_cut_off(keys: Keys, tmp_path: Path, ruleset: RuleSet) -> None:
    """Slowloris: headers, or a body, a byte at a time. Each connection is closed after the
    read timeout (uvicorn alone keeps it open for as long as the client likes), and the
    service answers others meanwhile."""
    settings = keys.settings(feedback_database_url=f"sqlite:///{tmp_path / 'f.db'}",
                             request_read_timeout_seconds=1.0)
    live = LiveService(create_app(settings, ruleset=ruleset), settings.model_copy(
        update={"log_level": "debug"}))
    port = int(live.base.rsplit(":", 1)[1])
    stop = threading.Event()
    took: list[float] = []
    prober = threading.Thread(target=lambda: took.extend(_latencies(live.base, stop)))
    try:
        prober.start()
        seconds, _ = _slow_sender(port, b"GET /healthz HTTP/1.1\r\n", b"X-a: b\r\n", 5)
        assert seconds < 3, "headers"
        path = f"/cds-services/{PV}"
        headers = "".join(f"{k}: {v}\r\n" for k, v in keys.headers(path).items())
        seconds, answer = _slow_sender(
            port, f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: 100000\r\n{headers}\r\n".encode(), b'{"a": 1} ', 5)
        assert seconds < 3, "body"
        assert b"408" in answer.split(b"\r\n", 1)[0]
        assert b'{"error":' in answer
    finally:
        stop.set()
        prober.join(timeout=30)
        live.stop()
    _assert_responsive(took)


def test_a_dead_evaluation_worker_is_replaced(keys: Keys, tmp_path: Path,
                                              ruleset: RuleSet) -> None:
    """The OOM killer takes an evaluation process: the call is retried on a new one (never a
    500), and /readyz says not ready until a worker is back."""
    import os
    import signal

    settings = keys.settings(feedback_database_url=f"sqlite:///{tmp_path / 'f.db'}",
                             evaluation_processes=1)
    path = f"/cds-services/{PV}"
    patient_id, prefetch = example()
    with TestClient(create_app(settings, ruleset=ruleset)) as client:
        before = client.post(path, headers=keys.headers(path),
                             json=hook_request("patient-view", patient_id, prefetch))
        assert before.status_code == 200
        assert client.get("/readyz").status_code == 200
        processes = list(client.app.state.evaluation.executor._processes)  # type: ignore
        assert processes
        for process in processes:
            os.kill(process, signal.SIGKILL)
        deadline = time.monotonic() + 10
        ready = client.get("/readyz")
        while ready.status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
            ready = client.get("/readyz")
        assert ready.status_code == 503, ready.text
        assert set(ready.json()) == {"error"}
        after = client.post(path, headers=keys.headers(path),
                            json=hook_request("patient-view", patient_id, prefetch))
        assert after.status_code == 200, after.text
        assert [c["source"]["topic"]["code"] for c in after.json()["cards"]] == [
            c["source"]["topic"]["code"] for c in before.json()["cards"]]
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get("/readyz").status_code == 200


def test_no_worker_to_be_had_is_a_clear_503(keys: Keys, tmp_path: Path,
                                           ruleset: RuleSet) -> None:
    """Workers that cannot be replaced (here: their rules are gone): a clear 503, never a 500,
    and /readyz not ready."""
    import os
    import signal
    from types import SimpleNamespace

    settings = keys.settings(feedback_database_url=f"sqlite:///{tmp_path / 'f.db'}",
                             evaluation_processes=1)
    path = f"/cds-services/{PV}"
    patient_id, prefetch = example()
    with TestClient(create_app(settings, ruleset=ruleset)) as client:
        pool = client.app.state.evaluation  # type: ignore[attr-defined]
        pool.ruleset = SimpleNamespace(directory=tmp_path / "no-rules")
        for process in list(pool.executor._processes):
            os.kill(process, signal.SIGKILL)
        answer = client.post(path, headers=keys.headers(path),
                             json=hook_request("patient-view", patient_id, prefetch))
        assert answer.status_code == 503, answer.text
        assert answer.json() == {"error": "no evaluation worker is available; retry shortly"}
        assert client.get("/readyz").status_code == 503


def test_a_refused_cors_preflight_is_json(keys: Keys, tmp_path: Path,
                                          ruleset: RuleSet) -> None:
    client = make_client(keys, tmp_path, ruleset, Recorder(),
                         cors_origins=["https://ehr.example.org"])
    answer = client.options("/cds-services", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert answer.status_code == 400
    assert_clean_4xx(answer)
    allowed = client.options("/cds-services", headers={
        "Origin": "https://ehr.example.org", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert allowed.status_code == 200


# --- v3: secrets and errors ---------------------------------------------------------------------


@pytest.mark.parametrize("query", ["access_token=query-secret-xyz", "token=query-secret-xyz",
                                   "x=eyJhbGciOiJSUzM4NCJ9.eyJpc3MiOiJ4In0.query-secret-xyz"])
def test_tokens_in_the_query_string_are_refused(query: str, keys: Keys, tmp_path: Path,
                                                ruleset: RuleSet) -> None:
    client = make_client(keys, tmp_path, ruleset, Recorder())
    answer = client.get(f"/cds-services?{query}", headers=keys.headers())
    assert answer.status_code == 400
    assert_clean_4xx(answer)
    assert "query string" in answer.json()["error"]


def test_no_token_in_any_log_even_at_trace(keys: Keys, tmp_path: Path, ruleset: RuleSet,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(1)  # everything, uvicorn's TRACE (5) included
    settings = keys.settings(feedback_database_url=f"sqlite:///{tmp_path / 'f.db'}",
                             log_level="trace")
    live = LiveService(create_app(settings, ruleset=ruleset), settings)
    path = f"/cds-services/{PV}"
    bearer = keys.headers(path)
    patient_id, prefetch = example()
    try:
        httpx.get(f"{live.base}/cds-services?access_token=query-secret-xyz")
        answer = httpx.post(f"{live.base}{path}", headers=bearer,
                            json=hook_request("patient-view", patient_id, prefetch))
        assert answer.status_code == 200
    finally:
        live.stop()
    text = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert "ASGI" in text  # uvicorn's message log was on
    for secret in (bearer["Authorization"][7:], "query-secret-xyz", patient_id):
        assert secret not in text, secret


def test_aud_may_be_a_list_holding_the_exact_url(keys: Keys, tmp_path: Path,
                                                 ruleset: RuleSet) -> None:
    client = make_client(keys, tmp_path, ruleset, Recorder())
    url = "http://testserver/cds-services"

    def with_aud(aud: Any) -> int:
        token = keys.token(aud=aud)
        return client.get("/cds-services", headers={"Authorization": f"Bearer {token}"}
                          ).status_code

    assert with_aud([url]) == 200
    assert with_aud(["https://other.example", url]) == 200
    assert with_aud(["http://testserver/cds-services/x"]) == 401
    assert with_aud(["http://testserver/cds-service"]) == 401  # a prefix of it
    assert with_aud([]) == 401
    assert with_aud([["nested"], url]) == 401


@pytest.mark.parametrize("content", ['[{"kty": "RSA"}]', '{"keys": "x"}', '{"keys": [1]}',
                                     "not json", '{"keys": [{"kty": 5}]}'])
def test_a_malformed_jwks_file_is_401_and_logged(content: str, keys: Keys, tmp_path: Path,
                                                 ruleset: RuleSet,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    keys.jwks_file.write_text(content)
    client = make_client(keys, tmp_path, ruleset, Recorder())
    answer = client.get("/cds-services", headers=keys.headers())
    assert answer.status_code == 401
    assert_clean_4xx(answer)
    assert "JWKS file" in caplog.text


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", f"/cds-services/{PV}", 405), ("PUT", "/cds-services", 405),
    ("GET", "/nowhere", 404), ("GET", "/docs", 404), ("GET", "/redoc", 404),
    ("POST", f"/cds-services/{PV}?a=%zz&token=1", 400)])
def test_every_error_has_one_json_shape(method: str, path: str, status: int, keys: Keys,
                                        tmp_path: Path, ruleset: RuleSet) -> None:
    client = make_client(keys, tmp_path, ruleset, Recorder())
    answer = client.request(method, path, headers=keys.headers())
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert set(answer.json()) == {"error"}


def test_api_docs_load_no_script_from_a_cdn_unless_asked(keys: Keys, tmp_path: Path,
                                                         ruleset: RuleSet) -> None:
    assert make_client(keys, tmp_path, ruleset, Recorder()).get("/docs").status_code == 404
    asked = make_client(keys, tmp_path, ruleset, Recorder(), api_docs=True)
    assert "cdn" in asked.get("/docs").text  # documented: these pages need the CDN
    assert asked.get("/openapi.json").status_code == 200


def test_feedback_database_is_private_whatever_the_umask(tmp_path: Path) -> None:
    import os
    import stat

    from fasciculation_cds.service.feedback import FeedbackStore

    old = os.umask(0)
    try:
        path = tmp_path / "new" / "folder" / "feedback.db"
        store = FeedbackStore(f"sqlite:///{path}")
        store.record("s", [{"card": "c", "outcome": "accepted", "outcomeTimestamp": "t"}])
        store.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    for made in path.parent.iterdir():  # the database and its -wal and -shm files
        assert stat.S_IMODE(made.stat().st_mode) == 0o600, made.name


def test_the_default_feedback_folder_is_made_private(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A default folder left 0755 (and a database 0644) by an earlier version is tightened."""
    import stat

    from fasciculation_cds.service.feedback import FeedbackStore
    from fasciculation_cds.service.settings import default_feedback_database

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    path = default_feedback_database()
    path.parent.mkdir(parents=True)
    for folder in (path.parent, path.parent.parent):
        folder.chmod(0o755)
    path.touch()
    path.chmod(0o644)
    FeedbackStore(f"sqlite:///{path}").close()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o755  # nothing above it


def test_serve_without_a_usable_home_fails_clearly(tmp_path: Path) -> None:
    """HOME is a file: the default feedback database cannot be made there. (An empty or unset
    HOME falls back to the user's home from the password database, and works.)"""
    import os
    import subprocess
    import sys

    (tmp_path / "home").write_text("not a folder")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XDG_", "FASCICULATION_CDS_"))}
    env["HOME"] = str(tmp_path / "home")
    done = subprocess.run([sys.executable, "-m", "fasciculation_cds.cli", "serve", "--port",
                           "0"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "feedback_database_url" in done.stderr
