"""The one place the service calls a FHIR server: allow-listed base URLs only (compared as parsed
URLs, never as string prefixes), bearer token, per-read timeouts, a size cap on every answer,
and bounded `Bundle.link[next]` paging that never leaves the allowed server."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import orjson

DEFAULT_PORTS = {"http": 80, "https": 443}


class FhirUnavailableError(Exception):
    """The data could not be had (the service answers 412, never a guess)."""


class NotAllowedError(Exception):
    """A URL is not on this service's FHIR allow-list (no request is made to it)."""


@dataclass(frozen=True)
class ServerUrl:
    """A parsed http(s) URL: scheme, host, port and a normalised path (no dot segments)."""

    scheme: str
    host: str
    port: int
    path: str
    query: str

    @classmethod
    def parse(cls, url: str) -> ServerUrl:
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError:
            raise NotAllowedError("not a valid URL") from None
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS or not parts.hostname:
            raise NotAllowedError("only absolute http(s) URLs are allowed")
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise NotAllowedError("URLs with user information are not allowed")
        if "\\" in url or any(ord(c) < 0x21 for c in url.strip()):
            raise NotAllowedError("URL has characters a FHIR server URL never has")
        raw_path = unquote(parts.path)
        segments = raw_path.split("/")
        if ".." in segments or "." in segments:
            raise NotAllowedError("URL paths with dot segments are not allowed")
        path = posixpath.normpath("/" + raw_path.lstrip("/")) if raw_path else "/"
        path = "" if path == "/" else path.rstrip("/")
        return cls(scheme, parts.hostname.lower().rstrip("."), port or DEFAULT_PORTS[scheme],
                   path, parts.query)

    def is_at_or_below(self, base: ServerUrl) -> bool:
        return (self.scheme, self.host, self.port) == (base.scheme, base.host, base.port) and (
            self.path == base.path or self.path.startswith(base.path + "/"))

    @property
    def origin_and_path(self) -> str:
        default = DEFAULT_PORTS[self.scheme] == self.port
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}{'' if default else f':{self.port}'}{self.path}"


def allowed_base(base: str, allowed: list[str]) -> ServerUrl:
    """The fhirServer, parsed, if it is exactly one of the allowed bases; else NotAllowedError."""
    parsed = ServerUrl.parse(base)
    for entry in allowed:
        try:
            candidate = ServerUrl.parse(entry)
        except NotAllowedError:
            continue
        if (parsed.scheme, parsed.host, parsed.port, parsed.path) == (
                candidate.scheme, candidate.host, candidate.port, candidate.path):
            return parsed
    raise NotAllowedError("fhirServer is not on this service's allow-list")


class FhirClient:
    """Reads from one allowed FHIR server. Every URL it requests, paging links included, must
    be the base or below it; the token is only ever sent there."""

    def __init__(self, base: str, token: str | None, *, allowed: list[str], timeout: float,
                 max_pages: int, max_bytes: int,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base = allowed_base(base, allowed)
        headers = {"Accept": "application/fhir+json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(headers=headers, timeout=timeout, follow_redirects=False,
                                       transport=transport, trust_env=False)
        self.max_pages = max_pages
        self.max_bytes = max_bytes

    async def aclose(self) -> None:
        await self._http.aclose()

    def url_for(self, path: str) -> str:
        return f"{self.base.origin_and_path}/{path.lstrip('/')}"

    async def get_json(self, url: str) -> Any:
        try:
            target = ServerUrl.parse(url)
        except NotAllowedError:
            raise FhirUnavailableError("a paging link is not a valid URL") from None
        if not target.is_at_or_below(self.base):
            raise FhirUnavailableError("a paging link points outside the FHIR server")
        try:
            async with self._http.stream("GET", url) as response:
                if response.status_code != 200:
                    raise FhirUnavailableError(f"FHIR server answered {response.status_code}")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self.max_bytes:
                    raise FhirUnavailableError(
                        f"FHIR answer larger than {self.max_bytes} bytes")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise FhirUnavailableError(
                            f"FHIR answer larger than {self.max_bytes} bytes")
        except httpx.HTTPError as exc:
            raise FhirUnavailableError(f"FHIR server unreachable ({type(exc).__name__})") from None
        try:
            return orjson.loads(bytes(body))
        except orjson.JSONDecodeError:
            raise FhirUnavailableError("FHIR server did not answer with JSON") from None

    async def read(self, path: str) -> list[dict[str, Any]]:
        """`Type/id` or `Type?query`: the resources, following paging up to the bound."""
        document = await self.get_json(self.url_for(path))
        if not isinstance(document, Mapping):
            raise FhirUnavailableError("FHIR server answered with an unexpected document")
        if document.get("resourceType") != "Bundle":
            if document.get("resourceType") == "OperationOutcome":
                raise FhirUnavailableError("FHIR server answered with an OperationOutcome")
            return [dict(document)]
        return await self.complete(document, pages=1)

    async def complete(self, document: Mapping[str, Any], *,
                       pages: int) -> list[dict[str, Any]]:
        """The resources of a searchset Bundle and of every page after it (`link` next);
        a search the server says it cut short is an unavailable answer, never a result."""
        resources: list[dict[str, Any]] = []
        total = search_total(document)
        matches = 0
        while True:
            resources += bundle_resources(document)
            matches += search_matches(document)
            following = next_link(document)
            if following is None:
                if total is not None and total > matches:
                    raise FhirUnavailableError(f"the search gave {matches} of {total} results "
                                               "and no link to the rest")
                return resources
            if pages >= self.max_pages:
                raise FhirUnavailableError(f"more than {self.max_pages} pages of results")
            document = await self.get_json(following)
            if not isinstance(document, Mapping) or document.get("resourceType") != "Bundle":
                raise FhirUnavailableError("a paging link did not give a Bundle")
            pages += 1


# OperationOutcome issue codes by which a server says a search was cut short
_TRUNCATION_CODES = frozenset({"too-costly", "incomplete", "throttled", "too-long"})


def search_total(document: Mapping[str, Any]) -> int | None:
    """`Bundle.total` when sent; anything but a whole number there is a malformed answer."""
    total = document.get("total")
    if total is None:
        return None
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        raise FhirUnavailableError("Bundle.total is not a whole number")
    return total


def search_matches(document: Mapping[str, Any]) -> int:
    """The matches on one page (entries with a resource, `include`s and outcomes left out);
    an outcome saying the search was cut short makes the page an unavailable answer."""
    count = 0
    for entry in document.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(resource, Mapping):
            continue
        if resource.get("resourceType") == "OperationOutcome":
            for issue in resource.get("issue") or []:
                if isinstance(issue, Mapping) and (
                        issue.get("severity") in ("error", "fatal")
                        or issue.get("code") in _TRUNCATION_CODES):
                    raise FhirUnavailableError("the server says the search was cut short "
                                               f"({issue.get('code')})")
            continue
        search = entry.get("search")
        if not (isinstance(search, Mapping) and search.get("mode") == "include"):
            count += 1
    return count


def bundle_resources(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The resources of one Bundle page; a malformed `entry` is a malformed answer."""
    entries = document.get("entry")
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise FhirUnavailableError("Bundle.entry is not a list")
    resources = []
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if isinstance(resource, Mapping) and isinstance(resource.get("resourceType"), str) \
                and resource["resourceType"] != "OperationOutcome":
            resources.append(dict(resource))
    return resources


def next_link(document: Mapping[str, Any]) -> str | None:
    """`Bundle.link` where relation is next; a malformed `link` is a malformed answer."""
    links = document.get("link")
    if links is None:
        return None
    if not isinstance(links, list):
        raise FhirUnavailableError("Bundle.link is not a list")
    for link in links:
        if isinstance(link, Mapping) and link.get("relation") == "next":
            url = link.get("url")
            if not isinstance(url, str) or not url:
                raise FhirUnavailableError("Bundle.link next has no URL")
            return url
    return None
