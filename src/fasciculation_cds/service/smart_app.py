"""The full summary as a SMART on FHIR app (EHR launch), opened from a card's `smart` link.

    EHR ── GET /smart/launch?iss&launch ──> discovery at {iss}/.well-known/smart-configuration
        (iss must be on the FHIR allow-list) ──> 302 to the EHR's authorize endpoint (PKCE S256,
        state, launch, aud, scopes of what the rules read)
    EHR ── GET /smart/callback?code&state ──> state checked, code exchanged (authlib), patient
        checked against the card's appContext ──> 303 to /smart/summary (no code, no state)
    GET /smart/summary ──> the record read with the app's token (the service's own FHIR path),
        evaluated as `evaluate` does, rendered as the `report` command renders it.

Sessions live in memory (smart_sessions); the browser holds only a signed random id.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import httpx2
from authlib.common.security import generate_token
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from ..report import render_html
from ..ruleset import RuleSet
from .evaluation import EvaluationPool
from .fhir_client import CallBudget, FhirClient, NotAllowedError, ServerUrl, allowed_base
from .models import Card, Link
from .prefetch import FHIR_ID, IncompleteRecordError, RequestProblemError, gather
from .settings import ServiceSettings
from .smart_pages import (
    ACCESS_DENIED,
    EXPIRED,
    MISMATCH,
    NOT_ALLOWED,
    STATE_MISMATCH,
    message_page,
    summary_page,
)
from .smart_scopes import record_templates, smart_scopes
from .smart_sessions import COOKIE_NAME, SessionStore, SmartSession

log = logging.getLogger("fasciculation_cds.service")

LINK_LABEL = "Open the full twitching summary"
MAX_PARAMETER = 2048  # iss, launch, code and state are never longer in practice
MAX_DISCOVERY_BYTES = 200_000
_ERROR_CODE = re.compile(r"^[a-z_]{1,40}$")  # RFC 6749 error codes, safe to log


def summary_link(base: str, patient_id: str) -> Link:
    """The card's `smart` link. appContext names the patient the card is about: the EHR hands
    it back with the token, and the app refuses a token for anyone else."""
    return Link(label=LINK_LABEL, url=f"{base}/smart/launch", type="smart",
                app_context=json.dumps({"patientId": patient_id}))


def with_summary_link(cards: list[Card], base: str, patient_id: str) -> list[Card]:
    for card in cards:
        card.links = [*(card.links or []), summary_link(base, patient_id)]
    return cards


class DiscoveryError(Exception):
    """The FHIR server's SMART configuration could not be had or is unusable."""


async def discover(iss: ServerUrl, *, timeout: float,
                   transport: httpx.AsyncBaseTransport | None) -> tuple[str, str]:
    """The authorize and token endpoints from `{iss}/.well-known/smart-configuration`."""
    url = f"{iss.origin_and_path}/.well-known/smart-configuration"
    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False,
                                     transport=transport) as http:
            response = await http.get(url, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise DiscoveryError(f"unreachable ({type(exc).__name__})") from None
    if response.status_code != 200:
        raise DiscoveryError(f"answered {response.status_code}")
    if len(response.content) > MAX_DISCOVERY_BYTES:
        raise DiscoveryError("answer too large")
    try:
        config = response.json()
    except ValueError:
        raise DiscoveryError("answer is not JSON") from None
    if not isinstance(config, dict):
        raise DiscoveryError("answer is not a JSON object")
    methods = config.get("code_challenge_methods_supported")
    if isinstance(methods, list) and "S256" not in methods:
        raise DiscoveryError("the server does not support PKCE with S256")
    endpoints = []
    for key in ("authorization_endpoint", "token_endpoint"):
        value = config.get(key)
        try:
            parsed = ServerUrl.parse(value) if isinstance(value, str) else None
        except NotAllowedError:
            parsed = None
        # plain http only where the FHIR server itself is plain http (a test set-up)
        if parsed is None or (parsed.scheme == "http" and iss.scheme == "https"):
            raise DiscoveryError(f"no usable {key}")
        endpoints.append(str(value))
    return endpoints[0], endpoints[1]


def _parameter(request: Request, name: str) -> str:
    value = request.query_params.get(name, "")
    return value if len(value) <= MAX_PARAMETER else ""


def smart_router(settings: ServiceSettings, rules: RuleSet, *, now: Callable[[], datetime],
                 fhir_transport: httpx.AsyncBaseTransport | None = None,
                 wall_clock: Callable[[], float] = time.time) -> APIRouter:
    """The app's three pages. `now` dates the evaluation (as for the hooks); `wall_clock`
    decides whether the access token has expired."""
    smart = settings.smart
    base = settings.public_base_url
    secret = (smart.cookie_secret.get_secret_value().encode() if smart.cookie_secret
              else secrets.token_bytes(32))
    sessions = SessionStore(secret, lifetime=smart.session_seconds, limit=smart.max_sessions)
    scope = smart_scopes(rules, openid=smart.openid)
    wanted = record_templates(rules)
    redirect_uri = f"{base}/smart/callback"
    secure_cookie = base.startswith("https://") or smart.cookie_same_site == "none"
    # the path the browser sees (a proxy may mount the service below a path of its own)
    cookie_path = f"{urlsplit(base).path.rstrip('/')}/smart"
    pool = EvaluationPool(rules, threads=1)  # started on the first summary, not at start-up
    router = APIRouter(prefix="/smart", include_in_schema=False)

    def oauth_client() -> AsyncOAuth2Client:
        client_secret = smart.client_secret.get_secret_value() if smart.client_secret else None
        return AsyncOAuth2Client(
            client_id=smart.client_id, client_secret=client_secret,
            token_endpoint_auth_method="client_secret_basic" if client_secret else "none",
            scope=scope, redirect_uri=redirect_uri, code_challenge_method="S256",
            timeout=settings.fhir_timeout_seconds, follow_redirects=False, trust_env=False)

    @router.get("/launch")
    async def launch(request: Request) -> Response:
        iss, launch_id = _parameter(request, "iss"), _parameter(request, "launch")
        if not iss or not launch_id:
            if "fhirServiceUrl" in request.query_params:
                # what the CDS Hooks sandbox sends for a FHIR server without authorization:
                # no token to read with, and the patient id in the URL
                return message_page(400, "Launch incomplete",
                                    "The app was opened without a SMART launch (no iss and "
                                    "launch): it reads the record only with an access token "
                                    "the EHR grants, and never takes the patient from the URL.",
                                    "Launch it from an EHR with a secured FHIR server.")
            return message_page(400, "Launch incomplete",
                                "The app was opened without the EHR's launch parameters "
                                "(iss and launch): it can only be opened from the EHR.")
        try:
            iss_url = allowed_base(iss, settings.fhir_servers)
        except NotAllowedError:
            log.warning("smart launch refused: iss is not on the FHIR allow-list")
            return message_page(403, *NOT_ALLOWED)
        try:
            authorize, token_endpoint = await discover(
                iss_url, timeout=settings.fhir_timeout_seconds, transport=fhir_transport)
        except DiscoveryError as exc:
            log.warning("smart launch: discovery failed (%s)", exc)
            return message_page(502, "The EHR's SMART configuration could not be read",
                                f"{iss_url.origin_and_path}/.well-known/smart-configuration: "
                                f"{exc}.", "Ask the EHR's administrators; then open the "
                                "summary again from the card.")
        verifier = generate_token(64)
        cookie, session = sessions.create(iss=iss, launch=launch_id, state=generate_token(32),
                                          code_verifier=verifier, token_endpoint=token_endpoint)
        async with oauth_client() as oauth:
            url, _ = oauth.create_authorization_url(
                authorize, state=session.state, code_verifier=verifier, launch=launch_id,
                aud=iss)  # SMART: the FHIR base URL exactly as the EHR named it
        response = RedirectResponse(url, 302)
        _set_cookie(response, cookie)
        return response

    def _set_cookie(response: Response, cookie: str) -> None:
        # no Max-Age: the browser keeps it for the window; the server decides when it ends
        response.set_cookie(COOKIE_NAME, cookie, path=cookie_path,
                            secure=secure_cookie, httponly=True,
                            samesite=smart.cookie_same_site)

    @router.get("/callback")
    async def callback(request: Request) -> Response:
        cookie = request.cookies.get(COOKIE_NAME)
        session = sessions.get(cookie)
        if session is None:
            return message_page(401, *EXPIRED)
        state = _parameter(request, "state")
        if not state or not hmac.compare_digest(state.encode(), session.state.encode()):
            sessions.end(cookie)  # a forged or replayed answer ends the launch it targeted
            log.warning("smart callback refused: state does not match the launch")
            return message_page(400, *STATE_MISMATCH)
        error = _parameter(request, "error")
        if error:
            sessions.end(cookie)
            log.info("smart callback: authorization not granted (%s)",
                     error if _ERROR_CODE.match(error) else "unlisted error code")
            if error == "access_denied":
                return message_page(403, *ACCESS_DENIED)
            return message_page(403, "Access not granted",
                                f"The EHR's authorization server answered “{error[:80]}”.")
        code = _parameter(request, "code")
        if not code:
            sessions.end(cookie)
            return message_page(400, *STATE_MISMATCH)
        try:
            async with oauth_client() as oauth:
                token = dict(await oauth.fetch_token(session.token_endpoint, code=code,
                                                     code_verifier=session.code_verifier))
        # httpx2 is authlib's transport; older authlib versions use httpx
        except (OAuthError, httpx2.HTTPError, httpx.HTTPError, ValueError, KeyError,
                TypeError) as exc:
            sessions.end(cookie)
            log.warning("smart token exchange failed (%s)", type(exc).__name__)
            return message_page(502, "Access could not be obtained",
                                "The EHR's authorization server did not give an access token "
                                "for this launch.")
        refusal = _check_context(token, session)
        if refusal is not None:
            sessions.end(cookie)
            log.warning("smart callback refused: %s", refusal)
            return message_page(403, *MISMATCH) if refusal == "patient mismatch" else \
                message_page(403, "No patient in context", "The EHR gave access without "
                             "saying which patient: the summary is only shown for the "
                             "patient the card was about.")
        session.token, session.patient = token, str(token["patient"])
        session.state = secrets.token_urlsafe(32)  # spent: a replayed callback is refused
        # the code and state are spent; the summary's own URL carries neither
        response = RedirectResponse(f"{base}/smart/summary", 303)
        fresh = sessions.rekey(cookie)
        if fresh is not None:
            _set_cookie(response, fresh)
        return response

    @router.get("/summary")
    async def summary(request: Request) -> Response:
        session = sessions.get(request.cookies.get(COOKIE_NAME))
        if session is None or session.token is None or session.patient is None:
            return message_page(401, *EXPIRED)
        expires_at = session.token.get("expires_at")
        if isinstance(expires_at, (int, float)) and expires_at <= wall_clock():
            sessions.end(request.cookies.get(COOKIE_NAME))
            return message_page(401, "Access has expired",
                                "The EHR's access token for this launch has expired.")
        started = time.perf_counter()
        try:
            html = await _render(session.iss, str(session.token.get("access_token", "")),
                                 session.patient)
        except TimeoutError:
            return message_page(504, "The record could not be read in time",
                                "The EHR's FHIR server did not answer within "
                                f"{settings.request_deadline_seconds:g} s.",
                                "Try again in a moment.")
        except (IncompleteRecordError, RequestProblemError) as exc:
            return message_page(502, "The record could not be read completely",
                                f"{exc}. A summary of part of the record is never shown: the "
                                "missing part can hold a newer normal or abnormal result.",
                                "Try again in a moment, or open the summary again from the "
                                "card if access has expired.")
        log.info("smart summary shown ms=%.0f", (time.perf_counter() - started) * 1000)
        return summary_page(html)

    async def _render(iss: str, access_token: str, patient: str) -> str:
        as_of = now()
        budget = CallBudget(max_bytes=settings.fhir_max_bytes,
                            max_requests=settings.fhir_max_requests,
                            concurrency=settings.fhir_max_concurrency)
        client = FhirClient(iss, access_token,
                            allowed=settings.fhir_servers, timeout=settings.fhir_timeout_seconds,
                            max_pages=settings.fhir_max_pages, budget=budget,
                            transport=fhir_transport)
        try:
            with anyio.fail_after(settings.request_deadline_seconds):
                resources, _ = await gather(None, patient, wanted, client, as_of.date(),
                                         no_client_reason="the FHIR server could not be used")
        finally:
            await client.aclose()
        assessment = await pool.run(resources, [], patient, as_of)
        return await run_in_threadpool(render_html, assessment, rules)

    return router


def _check_context(token: dict[str, Any], session: SmartSession) -> str | None:
    """None if the token is for the patient the card was about; else why not (no PHI)."""
    patient = token.get("patient")
    if not isinstance(patient, str) or not FHIR_ID.match(patient):
        return "no patient in the token response"
    context = token.get("appContext")
    if context is None:
        return None  # an EHR that does not pass appContext: its launch context decides
    try:  # a JSON string, as CDS Hooks defines it; some EHRs pass the object itself
        found = json.loads(context) if isinstance(context, str) else context
    except ValueError:
        found = None
    expected = found.get("patientId") if isinstance(found, dict) else None
    if expected != patient:
        return "patient mismatch"
    return None
