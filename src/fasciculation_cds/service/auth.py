"""CDS Hooks JWT authentication: RS384/ES384 only, trusted issuers and their JWKS, `aud` equal to
the exact URL of the endpoint called, numeric `exp`/`iat` with a bounded lifetime and small skew,
and replay (`jti`) rejection. A `jku` header is never followed."""

from __future__ import annotations

import heapq
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from .settings import ServiceSettings, TrustedIssuer

ALGORITHMS = ("RS384", "ES384")
KEY_TYPE_OF_ALG = {"RS384": "RSA", "ES384": "EC"}
MAX_TOKEN_CHARS = 16_000
log = logging.getLogger("fasciculation_cds.service.auth")


class AuthError(Exception):
    """The request is not authenticated; the message is safe to return (no token in it)."""


def _numeric(claims: dict[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AuthError(f"token claim {name!r} must be a number (NumericDate)")
    return float(value)


def _exact_audience(aud: Any, audience: str) -> None:
    """`aud` is the URL called, or a list holding it (RFC 7519 allows both); compared as whole
    strings, never as prefixes."""
    values = aud if isinstance(aud, list) else [aud]
    if not values or not all(isinstance(v, str) for v in values) or audience not in values:
        raise AuthError("token rejected: audience is not this endpoint")


@dataclass(frozen=True)
class UnverifiedToken:
    """A bearer token read but not yet trusted: its header, issuer and the key it names."""

    token: str
    alg: str
    kid: str | None
    issuer: TrustedIssuer

    @property
    def keys_at_hand(self) -> bool:
        """Whether verifying needs no network: the issuer's keys are in a local file."""
        return self.issuer.jwks_file is not None


class Authenticator:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self._issuers = {i.iss: i for i in settings.issuers}
        self._clients: dict[str, jwt.PyJWKClient] = {}
        self._seen: dict[str, float] = {}
        self._expiry: list[tuple[float, str]] = []  # heap of (forget after, jti) for _seen
        self._lock = threading.Lock()
        self._key_files: dict[Path, tuple[tuple[int, int], jwt.PyJWKSet]] = {}

    def _key_set(self, path: Path) -> jwt.PyJWKSet:
        """The JWKS file's keys, parsed again only when the file changes (mtime, size)."""
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self._key_files.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        keys = jwt.PyJWKSet.from_dict(json.loads(path.read_text()))
        self._key_files[path] = (stamp, keys)
        return keys

    def _key(self, issuer: TrustedIssuer, token: str, kid: str | None, alg: str) -> Any:
        wanted_type = KEY_TYPE_OF_ALG[alg]
        if issuer.jwks_file is not None:
            try:
                keys = self._key_set(issuer.jwks_file)
            except Exception as exc:  # unreadable, not JSON, not a key set (a list): one answer
                log.error("the JWKS file configured for a trusted issuer cannot be read (%s)",
                          type(exc).__name__)
                raise AuthError("the issuer's keys are not available") from None
            for key in keys.keys:
                if (kid is None or key.key_id == kid) and key.key_type == wanted_type:
                    return key.key
            raise AuthError("no key with this kid and algorithm in the issuer's JWKS")
        if issuer.jwks_url is None:
            raise AuthError("issuer has no JWKS configured")
        client = self._clients.setdefault(
            issuer.iss, jwt.PyJWKClient(issuer.jwks_url, cache_keys=True, timeout=5))
        try:  # PyJWKClient refetches the configured JWKS when the kid is unknown
            found = client.get_signing_key_from_jwt(token)
        except jwt.PyJWTError:
            raise AuthError("signing key not found") from None
        if found.key_type != wanted_type:
            raise AuthError("the key named by kid is not for this algorithm")
        return found.key

    def verify(self, authorization: str | None, audience: str) -> dict[str, Any]:
        """The token's claims if it was made by a trusted issuer for exactly `audience`."""
        return self.verify_read(self.read(authorization), audience)

    def read(self, authorization: str | None) -> UnverifiedToken:
        """The bearer token's header and issuer, checked for form only (cheap, no key yet)."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise AuthError("missing bearer token")
        token = authorization[7:].strip()
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthError("token too long")
        try:
            parts = jwt.api_jwt.decode_complete(token, options={"verify_signature": False})
        except (jwt.PyJWTError, ValueError, TypeError):
            raise AuthError("malformed token") from None
        header, unverified = parts["header"], parts["payload"]
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise AuthError("token algorithm must be RS384 or ES384")
        issuer = self._issuers.get(str(unverified.get("iss")))
        if issuer is None:
            raise AuthError("token issuer is not trusted")
        kid = header.get("kid")
        return UnverifiedToken(token, str(alg), kid if isinstance(kid, str) else None, issuer)

    def verify_read(self, read: UnverifiedToken, audience: str) -> dict[str, Any]:
        """Signature, audience, times and replay of a token `read` returned (may fetch a JWKS
        when the issuer's keys are at a URL)."""
        token, alg, issuer = read.token, read.alg, read.issuer
        key = self._key(issuer, token, read.kid, alg)
        skew = self.settings.clock_skew_seconds
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[str(alg)], audience=audience, issuer=issuer.iss,
                leeway=skew, options={"require": ["iss", "aud", "exp", "iat", "jti"]})
        except jwt.PyJWTError as exc:
            raise AuthError(f"token rejected: {exc}") from None
        except (TypeError, ValueError):  # e.g. a key that does not fit the algorithm
            raise AuthError("token rejected: key and algorithm do not fit") from None
        _exact_audience(claims.get("aud"), audience)
        issued, expires = _numeric(claims, "iat"), _numeric(claims, "exp")
        if issued > time.time() + skew:
            raise AuthError("token issued in the future")
        if expires - issued > self.settings.max_token_lifetime_seconds + skew:
            raise AuthError("token lifetime too long (exp too far after iat)")
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti:
            raise AuthError("token jti must be a non-empty string")
        self._check_replay(f"{issuer.iss}|{jti}", expires)
        return claims

    def _check_replay(self, jti: str, expires: float) -> None:
        """Each jti once while its token could still be accepted; forgotten after that, oldest
        first, so a check costs the same however many tokens are remembered."""
        now = time.time()
        skew = self.settings.clock_skew_seconds
        with self._lock:
            while self._expiry and self._expiry[0][0] + skew < now:
                _, old = heapq.heappop(self._expiry)
                if self._seen.get(old, now) + skew < now:
                    del self._seen[old]
            if jti in self._seen:
                raise AuthError("token replayed (jti already used)")
            self._seen[jti] = expires
            heapq.heappush(self._expiry, (expires, jti))
