"""What an operator sees of the service: one log line per call (text or JSON) and Prometheus
metrics at `/metrics`. Neither carries patient data or a token: a line names the path without
its query, the status and the time; metrics are counts by hook, rule, indicator and status.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("fasciculation_cds.service.calls")


def _formatter(fmt: LogFormat) -> logging.Formatter:
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        return JsonFormatter(JSON_FIELDS, rename_fields={"asctime": "time", "levelname": "level",
                                                         "name": "logger"})
    return logging.Formatter(TEXT_FORMAT)


def configure_logging(level: str, fmt: LogFormat) -> None:
    """The package's loggers write to standard error at `level`, as text or as one JSON object
    per line (for log collectors); uvicorn's take the same form through `uvicorn_log_config`."""
    handler = logging.StreamHandler()
    handler.setFormatter(_formatter(fmt))
    logger = logging.getLogger("fasciculation_cds")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(5 if level == "trace" else level.upper())  # uvicorn's TRACE is 5


def uvicorn_log_config(fmt: LogFormat) -> dict[str, Any] | None:
    """uvicorn's logging, so that its own lines take the same form (None: its default); the
    package's loggers are set up by `configure_logging` when the app starts."""
    if fmt == "text":
        return None
    formatter = {"()": "pythonjsonlogger.json.JsonFormatter", "fmt": JSON_FIELDS,
                 "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"}}
    handler = {"class": "logging.StreamHandler", "formatter": "json",
               "stream": "ext://sys.stderr"}
    return {"version": 1, "disable_existing_loggers": False,
            "formatters": {"json": formatter}, "handlers": {"default": handler},
            "loggers": {name: {"handlers": ["default"], "propagate": False}
                        for name in ("uvicorn", "uvicorn.error", "uvicorn.access")}}


class Metrics:
    """The service's metrics, in a registry of its own (one per app: tests make many)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.calls = Counter("fasciculation_cds_hook_calls", "Hook calls answered, by hook and "
                             "HTTP status.", ["hook", "status"], registry=r)
        self.call_seconds = Histogram(
            "fasciculation_cds_hook_call_seconds", "Time to answer a hook call.", ["hook"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20), registry=r)
        self.cards = Counter("fasciculation_cds_cards", "Cards returned, by rule and indicator.",
                             ["rule", "indicator"], registry=r)
        self.responses = Counter("fasciculation_cds_http_responses", "HTTP responses by status "
                                 "class (2xx, 4xx, 5xx).", ["status_class"], registry=r)
        self.fhir_reads = Counter("fasciculation_cds_fhir_reads", "Reads from EHR FHIR servers, "
                                  "by outcome.", ["outcome"], registry=r)
        self.fhir_read_seconds = Histogram(
            "fasciculation_cds_fhir_read_seconds", "Time of one read from a FHIR server.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r)
        self.feedback = Counter("fasciculation_cds_feedback", "Card feedback received, by "
                                "outcome.", ["outcome"], registry=r)

    def card(self, card: MutableMapping[str, Any]) -> None:
        topic = ((card.get("source") or {}).get("topic") or {}).get("code") or "none"
        self.cards.labels(rule=topic, indicator=card.get("indicator", "info")).inc()

    def fhir_read(self, seconds: float, outcome: str) -> None:
        self.fhir_reads.labels(outcome=outcome).inc()
        self.fhir_read_seconds.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class CallLog:
    """ASGI middleware: one log line per request (method, path without its query, status,
    milliseconds) and the status-class counter. The path of a hook call names the service, never
    the patient; a query (a SMART callback's code and state) is never written."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            code = status["code"]
            ms = (time.perf_counter() - started) * 1000
            self.metrics.responses.labels(status_class=f"{code // 100}xx").inc()
            path = scope.get("path", "")
            if path not in ("/healthz", "/readyz", "/metrics"):  # probes would drown the log
                log.info("%s %s status=%d ms=%.0f", scope.get("method", ""), path, code, ms,
                         extra={"method": scope.get("method", ""), "path": path,
                                "status": code, "ms": round(ms, 1)})
