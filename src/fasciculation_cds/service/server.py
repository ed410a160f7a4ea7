"""Running the service under uvicorn, with a read timeout on request headers.

uvicorn times out idle keep-alive connections but not a client that sends its headers a byte at
a time (slowloris): each byte restarts nothing, and the connection stays open for as long as
the client likes. Here every connection must deliver a request's headers within
`request_read_timeout_seconds` of opening (and of finishing the previous response), or is
closed. The body's own timeout is guard.BodyLimit's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import ServiceSettings


class HeaderTimeoutProtocol(H11Protocol):
    header_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:
            self._disarm()  # the headers are in: the body has its own timeout

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _too_slow(self) -> None:
        self._header_timer = None
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()


def protocol_for(settings: ServiceSettings) -> type[H11Protocol]:
    return type("ServiceProtocol", (HeaderTimeoutProtocol,),
                {"header_timeout": settings.request_read_timeout_seconds})


def uvicorn_config(app: Any, settings: ServiceSettings, *, host: str, port: int,
                   **extra: Any) -> uvicorn.Config:
    """The uvicorn configuration `serve` runs (tests run the same)."""
    return uvicorn.Config(app, host=host, port=port, log_level=settings.log_level,
                          proxy_headers=False, http=protocol_for(settings), **extra)
