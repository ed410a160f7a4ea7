"""JSON parsing that keeps the event loop answering: a large document is parsed on a worker
thread, with the cyclic garbage collector paused meanwhile (allocating a large document's
objects otherwise sets off full collections, several times the parse itself, all holding the
interpreter lock). The C parse itself holds the lock for its duration (about 10-20 ms per MB):
`max_request_bytes` and `fhir_max_bytes` bound it."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from typing import Any

import anyio
import orjson

OFF_LOOP_BYTES = 64_000  # smaller is parsed at once: a hop to a thread costs more
_paused = 0
_lock = threading.Lock()


def _without_collections(parse: Callable[[bytes], Any], body: bytes) -> Any:
    global _paused
    with _lock:
        _paused += 1
        gc.disable()
    try:
        return parse(body)
    finally:
        with _lock:
            _paused -= 1
            if _paused == 0:
                gc.enable()


async def loads_off_loop(body: bytes, parse: Callable[[bytes], Any] = orjson.loads) -> Any:
    """`parse(body)`, on a worker thread for a large body (its exceptions are raised here)."""
    if len(body) <= OFF_LOOP_BYTES:
        return parse(body)
    return await anyio.to_thread.run_sync(_without_collections, parse, body)
