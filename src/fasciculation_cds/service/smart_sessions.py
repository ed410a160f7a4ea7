"""Server-side sessions of the SMART app: in memory, with an expiry, reached through a cookie
that holds only a random id and its signature. Tokens and patient ids never leave the server."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

COOKIE_NAME = "fasciculation_cds_smart"


@dataclass
class SmartSession:
    """One launch: what the authorization step needs, then the token and its context."""

    expires: float
    iss: str
    launch: str
    state: str
    code_verifier: str
    token_endpoint: str
    token: dict[str, Any] | None = None
    patient: str | None = None


class SessionStore:
    """At most `limit` sessions (the oldest dropped first); each lives `lifetime` seconds from
    its launch and is gone for good after that."""

    def __init__(self, secret: bytes, *, lifetime: float, limit: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._secret = secret
        self._lifetime = lifetime
        self._limit = limit
        self._clock = clock
        self._sessions: OrderedDict[str, SmartSession] = OrderedDict()
        self._lock = threading.Lock()

    def _sign(self, session_id: str) -> str:
        return hmac.new(self._secret, session_id.encode(), hashlib.sha256).hexdigest()

    def create(self, **values: Any) -> tuple[str, SmartSession]:
        """A new session and the cookie value that names it."""
        session_id = secrets.token_urlsafe(32)
        session = SmartSession(expires=self._clock() + self._lifetime, **values)
        with self._lock:
            self._drop_expired()
            while len(self._sessions) >= self._limit:
                self._sessions.popitem(last=False)
            self._sessions[session_id] = session
        return f"{session_id}.{self._sign(session_id)}", session

    def get(self, cookie: str | None) -> SmartSession | None:
        """The live session the cookie names; None for no cookie, a forged one, or an expired
        or dropped session."""
        if not cookie or "." not in cookie:
            return None
        session_id, signature = cookie.rsplit(".", 1)
        if not hmac.compare_digest(signature, self._sign(session_id)):
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires <= self._clock():
                del self._sessions[session_id]
                return None
            return session

    def rekey(self, cookie: str | None) -> str | None:
        """The same session under a new id (after authorization: an id seen before it no
        longer reaches the token); None if the cookie names no live session."""
        session = self.get(cookie)
        if session is None or cookie is None:
            return None
        session_id = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions.pop(cookie.rsplit(".", 1)[0], None)
            self._sessions[session_id] = session
        return f"{session_id}.{self._sign(session_id)}"

    def end(self, cookie: str | None) -> None:
        if cookie and "." in cookie:
            with self._lock:
                self._sessions.pop(cookie.rsplit(".", 1)[0], None)

    def _drop_expired(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._sessions.items() if s.expires <= now]:
            del self._sessions[key]

    def __len__(self) -> int:
        with self._lock:
            self._drop_expired()
            return len(self._sessions)
