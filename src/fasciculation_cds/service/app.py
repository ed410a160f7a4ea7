"""The CDS Hooks 2.0 HTTP service (FastAPI): discovery, the three hooks, feedback, health and
readiness.

The event loop only parses small bodies, authenticates and waits: large bodies are parsed on a
thread, FHIR reads are asynchronous and bounded per call, and evaluation runs on worker threads
(or processes) that each own a compiled rule engine (durable-rules is not thread-safe). A
whole-request deadline bounds every hook call. A record that cannot be read completely gives
one warning card saying so (or 412), never a finding.
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any

import anyio
import httpx
import orjson
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._version import __version__
from ..rule_docs import rule_page
from ..ruleset import RuleSet, load_rules
from .auth import Authenticator, AuthError
from .cards import card_uuid, to_cards
from .drafts import order_key, read_draft_orders
from .evaluation import EvaluationPool, WorkerUnavailableError
from .feedback import FeedbackStore, FeedbackStoreError
from .fhir_client import CallBudget, FhirClient, NotAllowedError, allowed_base
from .guard import BodyLimit, Guard, JsonCors, QueryTokens, parse_json_body, quiet_logs
from .incomplete import incomplete_card
from .models import Card, FeedbackRequest, HookRequest
from .needs import HOOKS
from .observability import CallLog, Metrics
from .prefetch import (
    FHIR_ID,
    IncompleteRecordError,
    Pending,
    RequestProblemError,
    gather,
    templates,
)
from .reuse import ReadCache, reuse_key
from .settings import ServiceSettings
from .smart_app import smart_router, with_summary_link

log = logging.getLogger("fasciculation_cds.service")
SWITCH_INTERVAL = 0.001

SERVICES: dict[str, tuple[str, str, str]] = {
    "patient-view": (
        "fasciculation-cds-patient-view",
        "Muscle twitching and cramps: causes and red flags",
        "When a chart opens for a patient who twitches, cramps or has spasms: electrolyte, drug "
        "and nerve causes, and motor neuron disease red flags, with evidence."),
    "order-select": (
        "fasciculation-cds-order-select",
        "Twitching risk of the order being chosen",
        "While an order is chosen: drugs that provoke twitching, or that lower an electrolyte "
        "that is already low; and critical findings of the record."),
    "order-sign": (
        "fasciculation-cds-order-sign",
        "Twitching risk of the orders to sign",
        "Before orders are signed: drugs that provoke twitching, or that lower an electrolyte "
        "that is already low; and critical findings of the record."),
}
USAGE = ("Send the prefetch, or fhirServer with fhirAuthorization. A prefetch that is complete "
         "(no Bundle.link next) is used as sent and fhirServer is not contacted, whatever it "
         "is; the service contacts fhirServer only for a missing or paged prefetch, and only "
         "if it is on the service's allow-list. Otherwise it answers with one warning card "
         "(or 412, as configured) naming what could not be read, and no finding.")


class ORJSONBody(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _problem(status: int, message: str) -> HTTPException:
    return HTTPException(status, message)


def _validation_message(exc: ValidationError, what: str) -> str:
    """Where and what, never the offending value (it may be patient data or a token)."""
    errors = exc.errors()
    if not errors:
        return f"invalid {what}"
    where = ".".join(str(p) for p in errors[0]["loc"])
    return f"invalid {what}: {where}: {errors[0]['msg']}"


def _model(model: type[BaseModel], document: Any, what: str) -> Any:
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise _problem(400, _validation_message(exc, what)) from None


def create_app(settings: ServiceSettings | None = None, *, ruleset: RuleSet | None = None,
               fhir_transport: httpx.AsyncBaseTransport | None = None,
               clock: Callable[[], datetime] | None = None) -> FastAPI:
    """The service. `clock` gives "now" for evaluation (tests pin it); default: the wall clock."""
    settings = settings or ServiceSettings()
    rules = ruleset or load_rules(settings.rules_dir)
    now = clock or (lambda: datetime.now(timezone.utc))
    authenticator = Authenticator(settings)
    store = FeedbackStore(settings.feedback_database_url)
    pool = EvaluationPool(rules, threads=settings.evaluation_workers,
                          processes=settings.evaluation_processes)
    hook_templates: dict[str, dict[str, str]] = {hook: templates(rules, hook) for hook in HOOKS}
    reuse = ReadCache(settings.fhir_reuse_seconds, settings.fhir_max_bytes)
    service_of = {sid: hook for hook, (sid, _, _) in SERVICES.items()}
    base = settings.public_base_url
    metrics = Metrics()
    quiet_logs()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        print(f"fasciculation-cds: feedback database {store.location}", file=sys.stderr)
        # an evaluating thread hands the interpreter back every 1 ms instead of 5: the event
        # loop (/healthz, /readyz, other calls' I/O) waits at most that long for each step
        sys.setswitchinterval(SWITCH_INTERVAL)
        pool.warm_up()
        # What start-up built (rules, compiled engine, models) lives as long as the service:
        # kept out of the collector's sight, a full collection no longer walks it mid-call.
        gc.collect()
        gc.freeze()
        yield
        pool.close()
        store.close()

    # /docs and /redoc load their scripts from a CDN: off unless `api_docs` asks for them
    docs = settings.api_docs
    app = FastAPI(title="fasciculation-cds CDS Hooks service", version=__version__,
                  description="CDS Hooks 2.0 service for muscle twitching, cramps and spasms.",
                  lifespan=lifespan, docs_url="/docs" if docs else None,
                  redoc_url="/redoc" if docs else None)

    async def authenticate(request: Request, endpoint: str) -> None:
        """`endpoint` is the path under the public base URL: the token's `aud` must be exactly
        the URL of the endpoint called."""
        if settings.dev_insecure:
            host = request.client.host if request.client else ""
            try:
                if ipaddress.ip_address(host).is_loopback:
                    return
            except ValueError:
                pass
        try:
            token = authenticator.read(request.headers.get("authorization"))
            if token.keys_at_hand:  # a signature check: shorter than a hop to a thread
                authenticator.verify_read(token, f"{base}{endpoint}")
            else:  # off the loop: the issuer's JWKS URL may have to be fetched
                await run_in_threadpool(authenticator.verify_read, token, f"{base}{endpoint}")
        except AuthError as exc:
            raise _problem(401, str(exc)) from None

    def hook_of(service_id: str) -> str:
        hook = service_of.get(service_id)
        if hook is None:
            raise _problem(404, "no such service")
        return hook

    @app.exception_handler(StarletteHTTPException)  # also 404 and 405 from the router
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        return JSONResponse({"error": message}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "invalid request"}, 400)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process answers (liveness)."""
        return {"status": "ok", "rules_version": rules.version}

    @app.get("/metrics", include_in_schema=False)
    async def metrics_page() -> Response:
        """Prometheus metrics (counts and timings, no patient data), as /healthz unauthenticated:
        expose the port to the scraper only."""
        if not settings.metrics:
            raise _problem(404, "metrics are off (metrics: false)")
        body, kind = metrics.exposition()
        return Response(body, media_type=kind)

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Whether a call would be evaluated now: 503 while no evaluation worker is available
        (starting, or replacing a worker process that died)."""
        if pool.ready:
            return JSONResponse({"status": "ready", "rules_version": rules.version})
        return JSONResponse({"error": "no evaluation worker is available"}, 503)

    @app.get("/rules/{rule_id}", response_class=PlainTextResponse)
    async def rule_doc(rule_id: str) -> PlainTextResponse:
        """The documentation of one rule (each card's `source.url`)."""
        try:
            page = rule_page(rules.rule(rule_id))
        except KeyError:
            raise _problem(404, "no such rule") from None
        return PlainTextResponse(page, media_type="text/markdown; charset=utf-8")

    @app.get("/cds-services")
    async def discovery(request: Request) -> dict[str, Any]:
        await authenticate(request, "/cds-services")
        return {"services": [{"hook": hook, "id": sid, "title": title, "description": text,
                              "prefetch": hook_templates[hook], "usageRequirements": USAGE}
                             for hook, (sid, title, text) in SERVICES.items()]}

    @app.post("/cds-services/{service_id}")
    async def call(service_id: str, http_request: Request) -> Response:
        hook = hook_of(service_id)
        try:
            return await _call(service_id, hook, http_request)
        except StarletteHTTPException as exc:
            metrics.calls.labels(hook=hook, status=str(exc.status_code)).inc()
            log.info("hook=%s status=%d cards=0", hook, exc.status_code,
                     extra={"hook": hook, "status": exc.status_code, "cards": 0})
            raise

    async def _call(service_id: str, hook: str, http_request: Request) -> Response:
        await authenticate(http_request, f"/cds-services/{service_id}")
        started = time.perf_counter()
        body = await http_request.body()
        request: HookRequest = _model(HookRequest, await parse_json_body(body),
                                      "CDS Hooks request")
        if request.hook != hook:
            raise _problem(400, f"service {service_id} answers {hook}, not another hook")
        drafts, key = _drafts_and_key(service_id, hook, request)
        pending = Pending()
        try:
            with anyio.fail_after(settings.request_deadline_seconds):
                cards = await _answer(service_id, hook, request, drafts, key, len(body),
                                      pending)
        except TimeoutError:
            deadline = (f"the request deadline ({settings.request_deadline_seconds:g} s, "
                        "request_deadline_seconds) passed")
            cards = _incomplete(hook, key, [f"'{part}' was still being read when {deadline}"
                                            for part in sorted(pending.parts)] or [
                f"the record could not be completed: {deadline}"])
        except IncompleteRecordError as exc:
            cards = _incomplete(hook, key, exc.parts)
        except WorkerUnavailableError as exc:
            raise _problem(503, str(exc)) from None
        elapsed = time.perf_counter() - started
        log.info("hook=%s status=200 cards=%d ms=%.0f", hook, len(cards), elapsed * 1000,
                 extra={"hook": hook, "status": 200, "cards": len(cards),
                        "ms": round(elapsed * 1000, 1)})  # no patient data, no tokens
        shown = [card.to_json() for card in cards]
        metrics.calls.labels(hook=hook, status="200").inc()
        metrics.call_seconds.labels(hook=hook).observe(elapsed)
        for card in shown:
            metrics.card(card)
        store.count_shown(service_id, shown)
        # a ready JSON body: FastAPI's response validation would walk every card again
        return ORJSONBody({"cards": shown})

    def _incomplete(hook: str, key: str, parts: list[str]) -> list[Card]:
        """One warning card naming every part that failed, or 412 (`incomplete_record`)."""
        log.warning("hook=%s record incomplete (%d part(s))", hook, len(parts))
        if settings.incomplete_record == "412":
            raise _problem(412, "; ".join(parts))
        return [incomplete_card(parts, key)]

    def _drafts_and_key(service_id: str, hook: str,
                        request: HookRequest) -> tuple[list[dict[str, Any]], str]:
        patient_id = request.context.get("patientId")
        try:
            if not isinstance(patient_id, str) or not FHIR_ID.match(patient_id):
                raise RequestProblemError(
                    "context.patientId must be a FHIR id (not a reference)")
            drafts = read_draft_orders(request.context, hook, patient_id)
        except RequestProblemError as exc:
            raise _problem(400, str(exc)) from None
        if hook == "patient-view":
            return drafts, request.hook_instance  # each opening of the chart is a showing
        # order-select re-fires on every change of the form: one showing per order
        return drafts, card_uuid(f"{service_id}|Patient/{patient_id}",
                                 order_key(request.context, drafts))

    async def _answer(service_id: str, hook: str, request: HookRequest,
                      drafts: list[dict[str, Any]], key: str, body_bytes: int,
                      pending: Pending) -> list[Card]:
        patient_id = str(request.context["patientId"])
        as_of = now()
        budget = CallBudget(max_bytes=settings.fhir_max_bytes,
                            max_requests=settings.fhir_max_requests,
                            concurrency=settings.fhir_max_concurrency, spent_bytes=body_bytes)
        client, reason = _client_for(request, budget)
        token = request.fhir_authorization.access_token if request.fhir_authorization else None
        session = (reuse_key(request.hook_instance, patient_id, request.fhir_server or "", token)
                   if hook == "order-select" else None)
        try:
            resources, reads = await gather(
                request.prefetch, patient_id, hook_templates[hook], client, as_of.date(),
                no_client_reason=reason, reused=reuse.get(session) if session else None,
                drafts=drafts, pending=pending)
        except RequestProblemError as exc:
            raise _problem(400, str(exc)) from None
        finally:
            if client is not None:
                await client.aclose()
        if session is not None:
            reuse.put(session, reads, settings.fhir_max_bytes - body_bytes - budget.bytes_left)
        assessment = await pool.run(resources, drafts, patient_id, as_of)
        draft_references = frozenset(f"{d['resourceType']}/{d['id']}" for d in drafts)
        cards = to_cards(assessment, rules, hook, key, f"{base}/rules", draft_references)
        return with_summary_link(cards, base, patient_id) if settings.smart.enabled else cards

    def _client_for(request: HookRequest,
                    budget: CallBudget) -> tuple[FhirClient | None, str]:
        if not request.fhir_server:
            return None, "no fhirServer was sent"
        try:
            allowed_base(request.fhir_server, settings.fhir_servers)
        except NotAllowedError:
            return None, "fhirServer is not on this service's allow-list"
        token = request.fhir_authorization.access_token if request.fhir_authorization else None
        client = FhirClient(request.fhir_server, token, allowed=settings.fhir_servers,
                            timeout=settings.fhir_timeout_seconds,
                            max_pages=settings.fhir_max_pages, budget=budget,
                            transport=fhir_transport, observe=metrics.fhir_read)
        return client, ""

    @app.post("/cds-services/{service_id}/feedback")
    async def receive_feedback(service_id: str, http_request: Request) -> dict[str, int]:
        hook_of(service_id)
        await authenticate(http_request, f"/cds-services/{service_id}/feedback")
        body: FeedbackRequest = _model(FeedbackRequest,
                                       await parse_json_body(await http_request.body()),
                                       "feedback")
        items = [item.model_dump(by_alias=True, exclude_none=True) for item in body.feedback]
        try:
            stored = await run_in_threadpool(store.record, service_id, items)
        except FeedbackStoreError as exc:
            log.error("feedback not stored: %s", exc)
            raise _problem(503, "feedback could not be stored") from None
        for item in items:
            metrics.feedback.labels(outcome=str(item.get("outcome", "unknown"))).inc()
        return {"stored": stored}

    if settings.smart.enabled:
        app.include_router(smart_router(settings, rules, now=now, fhir_transport=fhir_transport))
    app.add_middleware(Guard)
    app.add_middleware(JsonCors, allow_origins=settings.cors_origins,
                       allow_methods=["GET", "POST", "OPTIONS"],
                       allow_headers=["authorization", "content-type"], max_age=600)
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes,
                       read_timeout=settings.request_read_timeout_seconds)
    app.add_middleware(QueryTokens)  # a token in a URL goes no further
    app.add_middleware(CallLog, metrics=metrics)  # outermost: every answer counted and logged
    app.state.feedback = store
    app.state.evaluation = pool
    return app
