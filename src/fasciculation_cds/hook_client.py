"""An integrator's CDS Hooks client: build a hook request from a FHIR file, call a service, show
the cards. How an integrator checks a deployment in one line (`fasciculation-cds hook`).

The prefetch is filled from the service's own discovery document: each template names a read
(`Patient/{{context.patientId}}`) or a search (`Observation?patient=...`), answered from the
file's resources of that type. `paged` sends only the first resource of each search with a
`next` link, as an EHR whose server pages small does; `none` sends no prefetch.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import jwt

from .errors import InputError
from .sources import RawResource, expand_paths, read_file

Hook = Literal["patient-view", "order-select", "order-sign"]
PrefetchMode = Literal["full", "none", "paged"]
DRAFT_TYPES = frozenset({"MedicationRequest", "ServiceRequest", "NutritionOrder"})


class HookClientError(Exception):
    """The request could not be built or the service could not be called (message for users)."""


@dataclass(frozen=True)
class Signer:
    """Signs the request's JWT as an EHR does (`aud`: the exact URL of the service called)."""

    key_pem: bytes
    issuer: str
    kid: str | None = None

    def token(self, audience: str) -> str:
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            key = load_pem_private_key(self.key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise HookClientError(f"--key: not an unencrypted PEM private key ({exc})") from None
        algorithm = "ES384" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS384"
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": audience, "iat": now, "exp": now + 300,
                  "jti": str(uuid.uuid4()), "sub": "fasciculation-cds-hook-client"}
        headers = {"kid": self.kid} if self.kid else None
        return jwt.encode(claims, key, algorithm=algorithm, headers=headers)  # type: ignore[arg-type]


def read_resources(path: Path) -> list[dict[str, Any]]:
    """Every resource of a FHIR file or folder, references by `Type/id` as a FHIR server
    returns them (a Bundle may use `urn:uuid:` fullUrls); a bad file is a HookClientError."""
    import orjson

    items: list[RawResource] = []
    try:
        for file in expand_paths([path]):
            for item in read_file(file):
                if isinstance(item, InputError):
                    raise HookClientError(str(item))
                items.append(item)
    except InputError as exc:
        raise HookClientError(str(exc)) from None
    full_urls = {i.full_url: f"{i.resource['resourceType']}/{i.resource['id']}" for i in items
                 if i.full_url and isinstance(i.resource.get("id"), str)}
    text = orjson.dumps([i.resource for i in items]).decode()
    for url, reference in full_urls.items():
        text = text.replace(f'"{url}"', f'"{reference}"')
    resources: list[dict[str, Any]] = orjson.loads(text)
    return resources


def record_of(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """The patient id and the resources of a one-patient FHIR file."""
    resources = read_resources(path)
    patients = [r for r in resources if r.get("resourceType") == "Patient"]
    if len(patients) != 1 or not isinstance(patients[0].get("id"), str):
        raise HookClientError(f"{path}: --patient needs exactly one Patient with an id "
                              f"(found {len(patients)})")
    return patients[0]["id"], resources


def prefetch_for(templates: Mapping[str, str], patient_id: str,
                 resources: list[dict[str, Any]], mode: PrefetchMode) -> dict[str, Any] | None:
    """The prefetch a complete (or paging) EHR would send for these templates."""
    if mode == "none":
        return None
    prefetch: dict[str, Any] = {}
    by_id = {f"{r['resourceType']}/{r.get('id')}": r for r in resources}
    for key, template in templates.items():
        path, _, query = template.partition("?")
        if not query:  # a read: Patient/{{context.patientId}}
            kind = path.split("/", 1)[0]
            prefetch[key] = by_id.get(f"{kind}/{patient_id}")
            continue
        matches = [r for r in resources if r.get("resourceType") == path]
        if "_include=" in query:  # e.g. MedicationRequest:medication
            matches += _included(matches, by_id)
        prefetch[key] = _searchset(matches, key, mode)
    return prefetch


def _included(matches: Iterable[dict[str, Any]],
              by_id: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for resource in matches:
        reference = (resource.get("medicationReference") or {}).get("reference")
        if isinstance(reference, str) and reference in by_id:
            found.append(by_id[reference])
    return found


def _searchset(resources: list[dict[str, Any]], key: str, mode: PrefetchMode) -> dict[str, Any]:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                              "total": len(resources)}
    shown = resources[:1] if mode == "paged" and len(resources) > 1 else resources
    bundle["entry"] = [{"resource": r} for r in shown]
    if len(shown) < len(resources):
        bundle["link"] = [{"relation": "next",
                           "url": f"https://ehr.invalid/fhir/{key}?page=2"}]
    return bundle


def draft_orders_of(path: Path) -> list[dict[str, Any]]:
    orders = [r for r in read_resources(path) if r.get("resourceType") in DRAFT_TYPES]
    if not orders:
        raise HookClientError(f"{path}: --draft holds no MedicationRequest, ServiceRequest or "
                              "NutritionOrder")
    return orders


def build_request(hook: Hook, patient_id: str, prefetch: dict[str, Any] | None,
                  drafts: list[dict[str, Any]]) -> dict[str, Any]:
    context: dict[str, Any] = {"userId": "Practitioner/hook-client", "patientId": patient_id}
    if hook != "patient-view":
        if not drafts:
            raise HookClientError(f"{hook} needs --draft FILE (the orders being written)")
        context["draftOrders"] = {"resourceType": "Bundle", "type": "collection",
                                  "entry": [{"resource": r} for r in drafts]}
        if hook == "order-select":
            context["selections"] = [f"{r['resourceType']}/{r.get('id')}" for r in drafts]
    body: dict[str, Any] = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context}
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def call(url: str, hook: Hook, patient: Path, *, drafts: Path | None = None,
         prefetch: PrefetchMode = "full", signer: Signer | None = None,
         timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    """Discover the service for `hook` at `url` (the base, without `/cds-services`), call it
    with the record in `patient`; the HTTP status and the JSON answer."""
    base = url.rstrip("/").removesuffix("/cds-services")
    patient_id, resources = record_of(patient)
    orders = draft_orders_of(drafts) if drafts is not None else []
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        discovery_url = f"{base}/cds-services"
        answer = _get_json(client, discovery_url, signer)
        services = [s for s in answer.get("services", []) if s.get("hook") == hook]
        if not services:
            raise HookClientError(f"{discovery_url} offers no {hook} service")
        service = services[0]
        endpoint = f"{discovery_url}/{service['id']}"
        body = build_request(hook, patient_id,
                             prefetch_for(service.get("prefetch") or {}, patient_id, resources,
                                          prefetch), orders)
        headers = {"Authorization": f"Bearer {signer.token(endpoint)}"} if signer else {}
        try:
            response = client.post(endpoint, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise HookClientError(f"{endpoint}: {exc}") from None
    try:
        data = response.json()
    except ValueError:
        data = {"error": response.text[:500]}
    return response.status_code, data if isinstance(data, dict) else {"answer": data}


def _get_json(client: httpx.Client, url: str, signer: Signer | None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {signer.token(url)}"} if signer else {}
    try:
        response = client.get(url, headers=headers)
    except httpx.HTTPError as exc:
        raise HookClientError(f"{url}: {exc}") from None
    if response.status_code != 200:
        raise HookClientError(f"{url}: the service answered {response.status_code}: "
                              f"{response.text[:300]}")
    try:
        data = response.json()
    except ValueError:
        raise HookClientError(f"{url}: not a CDS Hooks discovery document") from None
    if not isinstance(data, dict):
        raise HookClientError(f"{url}: not a CDS Hooks discovery document")
    return data
