"""Keys, tokens and requests for the CDS Hooks service tests."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fasciculation_cds.service.searches import prefetch_key, searched_types
from fasciculation_cds.service.settings import ServiceSettings, TrustedIssuer

ISSUER = "https://ehr.example.org"
BASE_URL = "http://testserver"
AUDIENCE = f"{BASE_URL}/cds-services"


class Keys:
    def __init__(self, folder: Path) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP384R1())
        jwks = {"keys": [
            {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa.public_key())),
             "kid": "rsa-1", "alg": "RS384", "use": "sig"},
            {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec.public_key())),
             "kid": "ec-1", "alg": "ES384", "use": "sig"},
        ]}
        self.jwks_file = folder / "jwks.json"
        self.jwks_file.write_text(json.dumps(jwks))

    def settings(self, **extra: Any) -> ServiceSettings:
        return ServiceSettings(public_base_url=BASE_URL, issuers=[TrustedIssuer(
            iss=ISSUER, jwks_file=self.jwks_file)], **extra)

    def token(self, path: str = "/cds-services", *, alg: str = "RS384",
              header: dict[str, Any] | None = None, **claims: Any) -> str:
        """A token as an EHR makes it: `aud` is the URL of the endpoint at `path`."""
        now = int(time.time())
        body = {"iss": ISSUER, "aud": f"{BASE_URL}{path}", "iat": now, "exp": now + 300,
                "jti": str(uuid.uuid4()), "sub": "client", **claims}
        body = {k: v for k, v in body.items() if v is not None}
        key = self.ec if alg == "ES384" else self.rsa
        kid = "ec-1" if alg == "ES384" else "rsa-1"
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid, **(header or {})})

    def headers(self, path: str = "/cds-services", **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(path, **claims)}"}


def prefetch_from_bundle(bundle: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The patient id and a complete prefetch (our keys) built from a patient Bundle."""
    # as a FHIR server would hold them: references by Type/id, not the Bundle's urn:uuid
    by_url = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}"
              for e in bundle["entry"] if "fullUrl" in e}
    text = json.dumps([e["resource"] for e in bundle["entry"]])
    for url, reference in by_url.items():
        text = text.replace(f'"{url}"', f'"{reference}"')
    resources = json.loads(text)
    patient = next(r for r in resources if r["resourceType"] == "Patient")

    return patient["id"], {"patient": patient, **complete_searches(resources)}


def _dated(resource: dict[str, Any]) -> bool:
    return any(key.startswith("effective") for key in resource)


def complete_searches(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every search the templates can ask for, answered whole from `resources` as an EHR that
    follows every page sends them (the Observations split as the window search and the search
    for those without effective[x] split them)."""
    def search(kind: str, keep: Any = lambda r: True) -> dict[str, Any]:
        found = [r for r in resources if r["resourceType"] == kind and keep(r)]
        return {"resourceType": "Bundle", "type": "searchset", "total": len(found),
                "entry": [{"resource": r} for r in found]}

    searches = {prefetch_key(kind): search(kind) for kind in searched_types()}
    searches[prefetch_key("Observation")] = search("Observation", _dated)
    searches[f"{prefetch_key('Observation')}Undated"] = search(
        "Observation", lambda r: not _dated(r))
    return searches


def hook_request(hook: str, patient_id: str, prefetch: dict[str, Any] | None,
                 **extra: Any) -> dict[str, Any]:
    context: dict[str, Any] = {"userId": "Practitioner/example", "patientId": patient_id}
    context.update(extra.pop("context", {}))
    body: dict[str, Any] = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context}
    if prefetch is not None:
        body["prefetch"] = prefetch
    body.update(extra)
    return body


FHIR_SERVER_DIR = Path(__file__).resolve().parent / "fhir_server"


class FhirServer:
    """The in-memory test FHIR server (tests/fhir_server) on a free loopback port."""

    def __init__(self, files: list[Path], *, default_count: int = 20, slow_ms: int = 3000,
                 token: str | None = None, max_count: int = 0,
                 smart_config: Path | None = None) -> None:
        import shutil
        import subprocess

        import pytest

        node = shutil.which("node")
        if node is None or not (FHIR_SERVER_DIR / "node_modules").is_dir():
            pytest.skip("test FHIR server not installed (npm ci --prefix tests/fhir_server)")
        command = [node, "--experimental-websocket", str(FHIR_SERVER_DIR / "server.mjs"),
                   "--port", "0", "--slow-ms", str(slow_ms), "--default-count",
                   str(default_count), "--max-count", str(max_count),
                   "--load", *map(str, files)]
        if token is not None:
            command += ["--token", token]
        if smart_config is not None:
            command += ["--smart-config", str(smart_config)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("LISTENING"):
            self.stop()
            pytest.fail(f"FHIR server did not start: {line}")
        self.base = f"http://127.0.0.1:{line.split()[1]}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.communicate(timeout=10)  # also closes the pipes


def write_ndjson(path: Path, resources: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in resources))
    return path


def card_findings(cards: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((c["source"]["topic"]["code"], c["indicator"]) for c in cards)


INCOMPLETE = "service.record-incomplete"


def incomplete_detail(answer: Any) -> str:
    """The detail of the one card a call whose record could not be read completely answers
    with; fails if the answer is anything else (another card beside it, no card, an error)."""
    assert answer.status_code == 200, answer.text
    [card] = answer.json()["cards"]
    assert card["source"]["topic"]["code"] == INCOMPLETE, card
    assert card["indicator"] == "warning"
    assert card["summary"].startswith("Twitching assessment not available: the record could not")
    return str(card["detail"])


def free_port() -> int:
    """A loopback port free now (for a `serve` started by a test)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RunningServe:
    """`fasciculation-cds serve ARGS` in its own process on a loopback port, its feedback
    database under `folder`; `base` once /healthz answers, `stderr` once it has stopped."""

    def __init__(self, folder: Path, *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.args = args
        self.folder = folder
        self.stderr = ""

    def __enter__(self) -> RunningServe:
        import os
        import subprocess
        import sys

        import httpx
        import pytest

        env = {**os.environ, "XDG_DATA_HOME": str(self.folder / "data")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fasciculation_cds", "serve", "--port", str(self.port),
             *self.args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            self.__exit__()
            pytest.fail(f"serve did not start: {self.stderr[-2000:]}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        _, self.stderr = self.process.communicate(timeout=30)
