"""`fasciculation-cds hook`: an integrator's one-line check of a running service, against a real
`serve` on loopback (unsigned in --dev-insecure, and signed with an issuer's key)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fasciculation_cds import evaluate

from .conftest import REPO
from .service_helpers import RunningServe, free_port

pytestmark = pytest.mark.cli
EXAMPLE = REPO / "fhir_examples" / "hypomagnesemia-omeprazole.json"
ISSUER = "https://ehr.example.org"


@pytest.fixture(scope="module")
def insecure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with RunningServe(tmp_path_factory.mktemp("insecure"), "--dev-insecure") as serve:
        yield serve.base


def _hook(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fasciculation_cds", "hook", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def _topics(answer: dict[str, object]) -> list[tuple[str, str]]:
    cards = answer.get("cards") or []
    assert isinstance(cards, list)
    return sorted((c["source"]["topic"]["code"], c["indicator"]) for c in cards)


def test_patient_view_cards_are_the_findings_of_evaluate(insecure: str) -> None:
    result = _hook("patient-view", "--patient", str(EXAMPLE), "--url", insecure,
                   "--format", "json")
    assert result.returncode == 0, result.stderr
    findings = sorted((f.rule_id, f.severity)
                      for a in evaluate(EXAMPLE) for f in a.findings)
    assert _topics(json.loads(result.stdout)) == findings
    shown = _hook("patient-view", "--patient", str(EXAMPLE), "--url", insecure)
    assert shown.returncode == 0
    assert "electrolyte.hypomagnesemia" in shown.stdout
    assert "WARNING" in shown.stdout


def test_a_paged_prefetch_never_gives_a_clinical_card(insecure: str) -> None:
    result = _hook("patient-view", "--patient", str(EXAMPLE), "--url", insecure,
                   "--prefetch", "paged", "--format", "json")
    answer = json.loads(result.stdout)
    if result.returncode == 4:  # refused (412): the service could not complete the record
        assert "error" in answer
        return
    assert result.returncode == 0, result.stderr
    rules = {f.rule_id for a in evaluate(EXAMPLE) for f in a.findings}
    assert not {code for code, _ in _topics(answer)} & rules


def test_order_sign_with_a_draft_order(insecure: str, tmp_path: Path) -> None:
    draft = tmp_path / "draft.json"
    draft.write_text(json.dumps({
        "resourceType": "MedicationRequest", "id": "draft-1", "status": "draft",
        "intent": "order", "subject": {"reference": "Patient/a303f450-0b6b-5107-a880-e1af4e58b775"},
        "medicationCodeableConcept": {"coding": [{
            "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "4603",
            "display": "furosemide"}]}}))
    result = _hook("order-sign", "--patient", str(EXAMPLE), "--draft", str(draft), "--url",
                   insecure, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert ("medication.order-caution", "warning") in _topics(json.loads(result.stdout))
    missing = _hook("order-sign", "--patient", str(EXAMPLE), "--url", insecure)
    assert missing.returncode == 2
    assert "needs --draft" in missing.stderr


def test_a_signed_call_is_accepted_and_an_unsigned_one_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    pem = tmp_path / "ehr.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    (tmp_path / "jwks.json").write_text(json.dumps(
        {"keys": [{**jwk, "kid": "ehr-1", "alg": "ES384", "use": "sig"}]}))
    port = free_port()
    config = tmp_path / "service.yaml"
    config.write_text(
        f"public_base_url: http://127.0.0.1:{port}\n"
        f"issuers: [{{iss: '{ISSUER}', jwks_file: '{tmp_path / 'jwks.json'}'}}]\n")
    with RunningServe(tmp_path, "--config", str(config), port=port) as serve:
        base = serve.base
        signed = _hook("patient-view", "--patient", str(EXAMPLE), "--url", base, "--key",
                       str(pem), "--iss", ISSUER, "--kid", "ehr-1", "--format", "json")
        assert signed.returncode == 0, signed.stderr
        assert _topics(json.loads(signed.stdout))
        unsigned = _hook("patient-view", "--patient", str(EXAMPLE), "--url", base)
        assert unsigned.returncode == 2  # discovery itself needs a token here
        assert "401" in unsigned.stderr
