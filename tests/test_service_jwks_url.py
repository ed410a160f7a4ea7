"""An issuer whose keys are at a JWKS URL (as the CDS Hooks sandbox publishes them): fetched
over HTTP off the event loop, cached, fetched again for a new kid, never taken from `jku`."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fasciculation_cds.ruleset import RuleSet
from fasciculation_cds.service import create_app
from fasciculation_cds.service.settings import ServiceSettings, TrustedIssuer

from .service_helpers import BASE_URL, ISSUER, Keys


class JwksServer:
    """Serves a JWKS document on loopback and counts the fetches."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.fetches = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches += 1
                body = json.dumps(owner.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


@pytest.fixture
def jwks(keys: Keys) -> Iterator[JwksServer]:
    document = json.loads(keys.jwks_file.read_text())
    server = JwksServer({"keys": [k for k in document["keys"] if k["kid"] == "rsa-1"]})
    yield server
    server.close()


def _client(jwks: JwksServer, tmp_path: Path, ruleset: RuleSet) -> TestClient:
    settings = ServiceSettings(public_base_url=BASE_URL, issuers=[TrustedIssuer(
        iss=ISSUER, jwks_url=jwks.url)], feedback_database_url=f"sqlite:///{tmp_path / 'f.db'}")
    return TestClient(create_app(settings, ruleset=ruleset), raise_server_exceptions=False)


def test_tokens_are_checked_against_the_keys_at_the_jwks_url(
        keys: Keys, jwks: JwksServer, tmp_path: Path, ruleset: RuleSet) -> None:
    client = _client(jwks, tmp_path, ruleset)
    for _ in range(3):
        assert client.get("/cds-services", headers=keys.headers()).status_code == 200
    assert jwks.fetches == 1  # cached after the first fetch


def test_a_kid_the_jwks_lacks_is_refused(
        keys: Keys, jwks: JwksServer, tmp_path: Path, ruleset: RuleSet) -> None:
    client = _client(jwks, tmp_path, ruleset)
    answer = client.get("/cds-services", headers=keys.headers(alg="ES384"))  # kid ec-1
    assert answer.status_code == 401
    assert answer.json() == {"error": "signing key not found"}
    assert jwks.fetches == 1


def test_unknown_kids_cannot_make_the_service_hammer_the_jwks_url(
        keys: Keys, jwks: JwksServer, tmp_path: Path, ruleset: RuleSet) -> None:
    client = _client(jwks, tmp_path, ruleset)
    assert client.get("/cds-services", headers=keys.headers()).status_code == 200
    for _ in range(5):  # a kid the issuer never published, again and again
        answer = client.get("/cds-services", headers=keys.headers(alg="ES384"))
        assert answer.status_code == 401
    assert jwks.fetches == 1  # refetches wait for PyJWKClient's cooldown (30 s)


def test_jku_in_the_token_is_never_fetched(
        keys: Keys, jwks: JwksServer, tmp_path: Path, ruleset: RuleSet) -> None:
    elsewhere = JwksServer(json.loads(keys.jwks_file.read_text()))
    try:
        client = _client(jwks, tmp_path, ruleset)
        token = keys.token(alg="ES384", header={"jku": elsewhere.url})
        answer = client.get("/cds-services", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 401
        assert elsewhere.fetches == 0
    finally:
        elsewhere.close()


def test_an_unreachable_jwks_url_is_a_401_not_a_500(keys: Keys, tmp_path: Path,
                                                    ruleset: RuleSet) -> None:
    server = JwksServer({"keys": []})
    server.close()  # nothing listens there now
    client = _client(server, tmp_path, ruleset)
    answer = client.get("/cds-services", headers=keys.headers())
    assert answer.status_code == 401
    assert "error" in answer.json()
