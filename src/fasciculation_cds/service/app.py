"""The CDS Hooks 2.0 HTTP service (FastAPI): discovery, the three hooks, feedback, health."""

from __future__ import annotations

import ipaddress
import logging
from datetime import datetime, timezone
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from ..assessment import Assessment
from ..evaluate import PatientError, evaluate_each
from ..ruleset import RuleSet, load_rules
from .auth import Authenticator, AuthError
from .cards import to_cards
from .feedback import FeedbackStore
from .fhir_client import FhirClient, FhirUnavailableError, NotAllowedError, check_allowed
from .prefetch import gather, templates
from .settings import ServiceSettings

log = logging.getLogger("fasciculation_cds.service")

SERVICES = {
    "patient-view": ("fasciculation-cds-patient-view", "Muscle twitching and cramps: causes and "
                     "red flags", "When a chart opens for a patient who twitches, cramps or has "
                     "spasms: electrolyte, drug and nerve causes, and motor neuron disease red "
                     "flags, with evidence."),
    "order-select": ("fasciculation-cds-order-select", "Orders that may worsen twitching",
                     "While an order is chosen: drugs that provoke twitching, or that lower an "
                     "electrolyte that is already low."),
    "order-sign": ("fasciculation-cds-order-sign", "Orders that may worsen twitching",
                   "Before orders are signed: drugs that provoke twitching, or that lower an "
                   "electrolyte that is already low."),
}


class FhirAuthorization(BaseModel):
    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int
    scope: str
    subject: str


class HookRequest(BaseModel):
    hook: str
    hookInstance: str = Field(min_length=1)  # noqa: N815 - the CDS Hooks field name
    fhirServer: str | None = None  # noqa: N815
    fhirAuthorization: FhirAuthorization | None = None  # noqa: N815
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None


class FeedbackItem(BaseModel):
    card: str
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[dict[str, Any]] = Field(default_factory=list)  # noqa: N815
    overrideReason: dict[str, Any] | None = None  # noqa: N815
    outcomeTimestamp: str  # noqa: N815


class FeedbackRequest(BaseModel):
    feedback: list[FeedbackItem] = Field(min_length=1)


class BodyLimit:
    """Rejects bodies over the limit with 413 before they are read whole."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and int(declared) > self.limit:
            await _too_large(scope, receive, send, self.limit)
            return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLargeError
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLargeError:
            await _too_large(scope, receive, send, self.limit)


class _TooLargeError(Exception):
    pass


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    response = JSONResponse({"error": f"request body larger than {limit} bytes"}, 413)
    await response(scope, receive, send)


def _patient_id(request: HookRequest) -> str:
    patient_id = request.context.get("patientId")
    if not isinstance(patient_id, str) or not patient_id or "/" in patient_id:
        raise HTTPException(400, "context.patientId must be a FHIR id (not a reference)")
    return patient_id


def _draft_orders(request: HookRequest) -> list[dict[str, Any]]:
    if request.hook == "patient-view":
        return []
    bundle = request.context.get("draftOrders")
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise HTTPException(400, f"{request.hook} needs context.draftOrders (a FHIR Bundle)")
    orders = []
    for index, entry in enumerate(bundle.get("entry") or []):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or "resourceType" not in resource:
            raise HTTPException(400, f"context.draftOrders entry[{index}] has no resource")
        if resource["resourceType"] in ("MedicationRequest", "MedicationStatement"):
            orders.append(resource)
    if request.hook == "order-select" and not isinstance(request.context.get("selections"),
                                                           list):
        raise HTTPException(400, "order-select needs context.selections")
    return orders


def create_app(settings: ServiceSettings | None = None, *,
               ruleset: RuleSet | None = None, fhir_transport: Any = None) -> FastAPI:
    settings = settings or ServiceSettings()
    rules = ruleset or load_rules(settings.rules_dir)
    authenticator = Authenticator(settings)
    store = FeedbackStore(settings.feedback_database_url)
    app = FastAPI(title="fasciculation-cds CDS Hooks service", version="0.1.0",
                  description="CDS Hooks 2.0 service for muscle twitching, cramps and spasms.")

    def authenticated(request: Request) -> None:
        if settings.dev_insecure:
            host = request.client.host if request.client else ""
            try:
                if ipaddress.ip_address(host).is_loopback:
                    return
            except ValueError:
                pass
        try:
            authenticator.verify(request.headers.get("authorization"))
        except AuthError as exc:
            raise HTTPException(401, str(exc)) from None

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"invalid request: {where}: {first.get('msg', '')}"}, 400)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "rules_version": rules.version}

    @app.get("/cds-services", dependencies=[Depends(authenticated)])
    def discovery() -> dict[str, Any]:
        prefetch = templates(rules)
        return {"services": [{"hook": hook, "id": sid, "title": title, "description": text,
                              "prefetch": prefetch, "usageRequirements":
                              "Send the prefetch, or fhirServer with fhirAuthorization."}
                             for hook, (sid, title, text) in SERVICES.items()]}

    @app.post("/cds-services/{service_id}", dependencies=[Depends(authenticated)])
    async def call(service_id: str, http_request: Request) -> dict[str, Any]:
        hook = next((h for h, (sid, _, _) in SERVICES.items() if sid == service_id), None)
        if hook is None:
            raise HTTPException(404, f"no service {service_id!r}")
        try:
            request = HookRequest.model_validate(await http_request.json())
        except (ValidationError, ValueError) as exc:
            raise HTTPException(400, f"invalid CDS Hooks request: {str(exc)[:300]}") from None
        if request.hook != hook:
            raise HTTPException(400, f"service {service_id} answers {hook}, not {request.hook}")
        patient_id = _patient_id(request)
        drafts = _draft_orders(request)
        client = None
        if request.fhirServer:
            try:
                check_allowed(request.fhirServer, settings.fhir_servers)
            except NotAllowedError as exc:
                raise HTTPException(400, str(exc)) from None
            token = request.fhirAuthorization.access_token if request.fhirAuthorization else None
            client = FhirClient(request.fhirServer, token, allowed=settings.fhir_servers,
                                timeout=settings.fhir_timeout_seconds,
                                max_pages=settings.fhir_max_pages, transport=fhir_transport)
        try:
            resources = gather(request.prefetch, patient_id, rules, client,
                               datetime.now(timezone.utc).date())
        except FhirUnavailableError as exc:
            raise HTTPException(412, str(exc)) from None
        finally:
            if client is not None:
                client.close()
        if not any(r.get("resourceType") == "Patient" and r.get("id") == patient_id
                   for r in resources):
            raise HTTPException(412, "the Patient resource was neither prefetched nor fetched")
        cards = _assess(resources, drafts, patient_id, request)
        store.cards_shown(service_id, cards)
        log.info("hook=%s cards=%d", hook, len(cards))  # no patient data, no tokens
        return {"cards": cards}

    def _assess(resources: list[dict[str, Any]], drafts: list[dict[str, Any]], patient_id: str,
                request: HookRequest) -> list[dict[str, Any]]:
        reference = f"Patient/{patient_id}"
        for outcome in evaluate_each(resources, rules=rules, draft_orders=drafts):
            if isinstance(outcome, Assessment) and outcome.patient.reference == reference:
                return to_cards(outcome, rules, request.hook, request.hookInstance)
            if isinstance(outcome, PatientError) and outcome.patient == reference:
                raise HTTPException(412, f"the patient's data could not be read: "
                                         f"{outcome.message[:300]}")
        raise HTTPException(412, "no data for the patient")

    @app.post("/cds-services/{service_id}/feedback", dependencies=[Depends(authenticated)])
    def receive_feedback(service_id: str, body: FeedbackRequest) -> dict[str, int]:
        if service_id not in {sid for sid, _, _ in SERVICES.values()}:
            raise HTTPException(404, f"no service {service_id!r}")
        stored = store.record(service_id, [item.model_dump() for item in body.feedback])
        return {"stored": stored}

    app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                       allow_methods=["GET", "POST", "OPTIONS"],
                       allow_headers=["authorization", "content-type"], max_age=600)
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    app.state.feedback = store
    return app
