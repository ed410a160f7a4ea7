"""CDS Hooks JWT authentication: RS384/ES384 only, trusted issuers, their JWKS, audience,
expiry with small skew, and replay (`jti`) rejection. A `jku` header is never followed."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import jwt

from .settings import ServiceSettings, TrustedIssuer

ALGORITHMS = ("RS384", "ES384")


class AuthError(Exception):
    """The request is not authenticated; the message is safe to return (no token in it)."""


class Authenticator:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self._issuers = {i.iss: i for i in settings.issuers}
        self._clients: dict[str, jwt.PyJWKClient] = {}
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def _key(self, issuer: TrustedIssuer, token: str, kid: str | None) -> Any:
        if issuer.jwks_file is not None:
            keys = jwt.PyJWKSet.from_dict(json.loads(issuer.jwks_file.read_text()))
            for key in keys.keys:
                if kid is None or key.key_id == kid:
                    return key.key
            raise AuthError("no key with this kid in the issuer's JWKS")
        if issuer.jwks_url is None:
            raise AuthError("issuer has no JWKS configured")
        client = self._clients.setdefault(
            issuer.iss, jwt.PyJWKClient(issuer.jwks_url, cache_keys=True, timeout=5))
        try:  # PyJWKClient refetches the JWKS when the kid is unknown
            return client.get_signing_key_from_jwt(token).key
        except jwt.PyJWKClientError as exc:
            raise AuthError(f"signing key not found: {exc}") from None

    def verify(self, authorization: str | None) -> dict[str, Any]:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise AuthError("missing bearer token")
        token = authorization[7:].strip()
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthError("malformed token") from None
        if header.get("alg") not in ALGORITHMS:
            raise AuthError("token algorithm must be RS384 or ES384")
        issuer = self._issuers.get(str(unverified.get("iss")))
        if issuer is None:
            raise AuthError("token issuer is not trusted")
        key = self._key(issuer, token, header.get("kid"))
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[header["alg"]], audience=self.settings.audience,
                issuer=issuer.iss, leeway=self.settings.clock_skew_seconds,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]})
        except jwt.PyJWTError as exc:
            raise AuthError(f"token rejected: {exc}") from None
        if float(claims["iat"]) > time.time() + self.settings.clock_skew_seconds:
            raise AuthError("token issued in the future")
        self._check_replay(f"{issuer.iss}|{claims['jti']}", float(claims["exp"]))
        return claims

    def _check_replay(self, jti: str, expires: float) -> None:
        now = time.time()
        with self._lock:
            for seen, until in list(self._seen.items()):
                if until + self.settings.clock_skew_seconds < now:
                    del self._seen[seen]
            if jti in self._seen:
                raise AuthError("token replayed (jti already used)")
            self._seen[jti] = expires
