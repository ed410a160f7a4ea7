"""FHIR reads kept a short time for the re-fires of one order-select session: the EHR calls
order-select again on every change of the order form, with the same hookInstance and patient.
In memory only, bounded in age, entries and bytes, and keyed by everything that decides what
may be read (hookInstance, patient, FHIR server and a digest of its token): never shared across
patients, servers or tokens."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict

from .prefetch import Reads

MAX_ENTRIES = 64


def reuse_key(hook_instance: str, patient_id: str, fhir_server: str, token: str | None) -> str:
    digest = hashlib.sha256((token or "").encode()).hexdigest()
    return "\x1f".join([hook_instance, patient_id, fhir_server, digest])


class ReadCache:
    def __init__(self, seconds: float, max_bytes: int) -> None:
        self.seconds, self.max_bytes = seconds, max_bytes
        self._entries: OrderedDict[str, tuple[float, int, Reads]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> Reads | None:
        if self.seconds <= 0:
            return None
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            if found[0] < time.monotonic():
                self._drop(key)
                return None
            return found[2]

    def put(self, key: str, reads: Reads, size: int) -> None:
        """Keep `reads` (`size`: the bytes read for them) unless that alone is over the bound."""
        if self.seconds <= 0 or not reads.by_key or size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = (time.monotonic() + self.seconds, size, reads)
            self._bytes += size
            while self._entries and (len(self._entries) > MAX_ENTRIES
                                     or self._bytes > self.max_bytes):
                self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        _, size, _ = self._entries.pop(key)
        self._bytes -= size
