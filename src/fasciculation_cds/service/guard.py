"""The service's outer defences: a body size limit and read timeout, requests carrying a token in
the query string refused, JSON parsing (off the event loop when large) with a depth limit, a
last-resort handler that answers 500 JSON without details, and log filters that keep URLs with
patient ids, headers and query strings out of every log line at every level."""

from __future__ import annotations

import logging
import re
import time
from typing import Any
from urllib.parse import parse_qsl

import anyio
import orjson
from fastapi import HTTPException
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .jsonparse import loads_off_loop

MAX_JSON_DEPTH = 64  # FHIR resources nest far less; deeper is an attack, not data
log = logging.getLogger("fasciculation_cds.service")


async def parse_json_body(body: bytes) -> Any:
    """parse_json, on a worker thread for a large body: the event loop (/healthz, every other
    call) must not wait for it."""
    return await loads_off_loop(body, parse_json)


def parse_json(body: bytes) -> Any:
    """The request body as JSON; 400 if it is not JSON or nests deeper than MAX_JSON_DEPTH."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise HTTPException(400, "the body is not JSON (or nests too deep)") from None
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:  # iterative: a recursive walk is what deep nesting attacks
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise HTTPException(400, f"the body nests deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(value, dict):
            stack += [(v, depth + 1) for v in value.values() if isinstance(v, (dict, list))]
        elif isinstance(value, list):
            stack += [(v, depth + 1) for v in value if isinstance(v, (dict, list))]
    return document


class BodyLimit:
    """Rejects bodies over the limit with 413 before they are read whole, and bodies that take
    longer than `read_timeout` seconds to arrive (a slow sender holds a connection) with 408."""

    def __init__(self, app: ASGIApp, limit: int, read_timeout: float = 10.0) -> None:
        self.app, self.limit, self.read_timeout = app, limit, read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _error(scope, receive, send, 413, f"request body larger than {self.limit} bytes")
            return
        seen = 0
        deadline: float | None = None
        done = False

        async def limited() -> Message:
            nonlocal seen, deadline, done
            if done:  # the body was read: this waits for a disconnect, no deadline
                return await receive()
            deadline = deadline or time.monotonic() + self.read_timeout
            try:
                with anyio.fail_after(max(0.0, deadline - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                raise _SlowBodyError from None
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLargeError
            done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLargeError:
            await _error(scope, receive, send, 413, f"request body larger than {self.limit} bytes")
        except _SlowBodyError:
            await _error(scope, receive, send, 408, "the request body did not arrive in time")


class _TooLargeError(Exception):
    pass


class _SlowBodyError(Exception):
    pass


async def _error(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    response = JSONResponse({"error": message}, status,
                            headers={"Connection": "close"} if status == 408 else None)
    await response(scope, receive, send)


# Query parameters that carry credentials, and what a JWT looks like wherever it is put.
_TOKEN_PARAMS = frozenset({"access_token", "id_token", "token", "jwt", "authorization",
                           "bearer", "refresh_token", "assertion"})
_JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{4,}(?:\.|%2[eE])[A-Za-z0-9_-]{4,}")


class QueryTokens:
    """A request with a token in its query string is refused (400) before anything reads it:
    query strings end up in proxies' and servers' logs, and the service takes tokens only in
    the Authorization header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = scope.get("query_string") or b"" if scope["type"] == "http" else b""
        if query and _carries_token(bytes(query)):
            await _error(scope, receive, send, 400,
                         "tokens are accepted only in the Authorization header, never in the "
                         "query string")
            return
        await self.app(scope, receive, send)


def _carries_token(query: bytes) -> bool:
    if _JWT.search(query):
        return True
    try:
        names = {name.lower() for name, _ in parse_qsl(query.decode("latin-1"),
                                                        keep_blank_values=True)}
    except ValueError:
        return True  # not a query string a client of this service sends
    return bool(names & _TOKEN_PARAMS)


class Guard:
    """Any exception that escapes a handler: 500 `{"error": "internal error"}`, logged by type
    only (an exception's text can hold request data), and never re-raised to the server."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception as exc:
            if isinstance(exc, (_TooLargeError, _SlowBodyError)):
                raise
            log.error("internal error (%s) on %s", type(exc).__name__, scope.get("method"))
            if not started:
                await JSONResponse({"error": "internal error"}, 500)(scope, receive, send)


class JsonCors(CORSMiddleware):
    """CORS whose refused preflight is the service's JSON error like every other status (its
    CORS headers kept, so a browser still sees why)."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code == 200:
            return response
        headers = {k: v for k, v in response.headers.items()
                   if k.lower() not in ("content-length", "content-type")}
        return JSONResponse({"error": bytes(response.body).decode()}, response.status_code,
                            headers=headers)


class _DropRecords(logging.Filter):
    """httpx logs every request URL at INFO: FHIR search URLs carry patient ids."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


class _PathWithoutQuery(logging.Filter):
    """uvicorn's access log prints the query string, where a client may put a token."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
        return True


class _RedactAsgi(logging.Filter):
    """uvicorn at `trace` logs every ASGI scope and message: headers (Authorization) and the
    query string are replaced before the line is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(a) for a in record.args)
        return True


def _redacted(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    hidden = {"headers", "query_string", "raw_path", "path", "client"}
    return {k: ("<hidden>" if k in hidden else v) for k, v in value.items()}


def quiet_logs() -> None:
    for name in ("httpx", "httpcore", "httpcore.connection", "httpcore.http11",
                 "httpcore.http2", "httpcore.proxy", "httpcore.socks"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropRecords) for f in logger.filters):
            logger.addFilter(_DropRecords())
    asgi = logging.getLogger("uvicorn.asgi")
    if not any(isinstance(f, _RedactAsgi) for f in asgi.filters):
        asgi.addFilter(_RedactAsgi())
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _PathWithoutQuery) for f in access.filters):
        access.addFilter(_PathWithoutQuery())
