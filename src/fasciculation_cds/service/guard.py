"""The service's outer defences: a body size limit, JSON parsing with a depth limit, a last-resort
handler that answers 500 JSON without details, and log filters that keep URLs with patient ids
or tokens in their query out of every log line."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_JSON_DEPTH = 64  # FHIR resources nest far less; deeper is an attack, not data
log = logging.getLogger("fasciculation_cds.service")


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
    """Rejects bodies over the limit with 413 before they are read whole."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _too_large(scope, receive, send, self.limit)
            return
        seen = 0

        async def limited() -> Message:
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
            if isinstance(exc, _TooLargeError):
                raise
            log.error("internal error (%s) on %s", type(exc).__name__, scope.get("method"))
            if not started:
                await JSONResponse({"error": "internal error"}, 500)(scope, receive, send)


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


def quiet_logs() -> None:
    for name in ("httpx", "httpcore", "httpcore.connection", "httpcore.http11",
                 "httpcore.http2", "httpcore.proxy", "httpcore.socks"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropRecords) for f in logger.filters):
            logger.addFilter(_DropRecords())
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _PathWithoutQuery) for f in access.filters):
        access.addFilter(_PathWithoutQuery())
