"""The one place the service calls a FHIR server: allow-listed base URLs only (compared as parsed
URLs, never as string prefixes), bearer token, per-read timeouts, one budget per call (bytes,
reads, reads in flight), bounded `Bundle.link[next]` paging that never leaves the allowed server,
and references resolved in batched searches."""

from __future__ import annotations

import asyncio
import posixpath
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx
import orjson

from .jsonparse import loads_off_loop

DEFAULT_PORTS = {"http": 80, "https": 443}
IDS_PER_SEARCH = 50  # `_id=a,b,...` per search: short enough for any server's URL limit
_PATH_SAFE = "/-._~!$&'()*+,=:@"


class CallBudget:
    """What one hook call may still take from FHIR servers: bytes (the request body counted
    first), reads (pages included) and reads in flight at once. Exceeding it makes the record
    incomplete, never partly evaluated."""

    def __init__(self, *, max_bytes: int, max_requests: int, concurrency: int,
                 spent_bytes: int = 0) -> None:
        self.max_bytes, self.max_requests = max_bytes, max_requests
        self.bytes_left = max_bytes - spent_bytes
        self.requests_left = max_requests
        self.slots = asyncio.Semaphore(concurrency)

    def take_request(self) -> None:
        if self.requests_left <= 0:
            raise FhirUnavailableError(f"more than {self.max_requests} FHIR reads for one call "
                                       "(fhir_max_requests)")
        self.requests_left -= 1

    def take_bytes(self, count: int) -> None:
        self.bytes_left -= count
        if self.bytes_left < 0:
            raise FhirUnavailableError(f"the call's data is larger than {self.max_bytes} bytes "
                                       "(fhir_max_bytes)")


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
        raw_path = _decoded_path(parts.path)
        path = posixpath.normpath("/" + raw_path.lstrip("/")) if raw_path else "/"
        path = "" if path == "/" else path.rstrip("/")
        return cls(scheme, parts.hostname.lower().rstrip("."), port or DEFAULT_PORTS[scheme],
                   path, parts.query)

    @property
    def url(self) -> str:
        """The URL as the service requests it: rebuilt from the checked parts, so what is
        requested is what was checked."""
        return f"{self.origin_and_path}{'?' if self.query else ''}{self.query}"

    def is_at_or_below(self, base: ServerUrl) -> bool:
        return (self.scheme, self.host, self.port) == (base.scheme, base.host, base.port) and (
            self.path == base.path or self.path.startswith(base.path + "/"))

    @property
    def origin_and_path(self) -> str:
        default = DEFAULT_PORTS[self.scheme] == self.port
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = quote(self.path, safe=_PATH_SAFE)
        return f"{self.scheme}://{host}{'' if default else f':{self.port}'}{path}"


def _decoded_path(path: str) -> str:
    """The path percent-decoded until it no longer changes (`%252e` is a dot too); dot
    segments, also with path parameters (`..;`, which some servers read as `..`), and any `;`
    are refused: a FHIR server's paths have none."""
    decoded = path
    for _ in range(3):
        once = unquote(decoded)
        if once == decoded:
            break
        decoded = once
    else:
        raise NotAllowedError("URL path is encoded more than twice")
    if ";" in decoded:
        raise NotAllowedError("URL paths with parameters (;) are not allowed")
    if any(segment in (".", "..") for segment in decoded.split("/")):
        raise NotAllowedError("URL paths with dot segments are not allowed")
    return decoded


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
    be the base or below it; the token is only ever sent there. All reads of one call share
    one CallBudget."""

    def __init__(self, base: str, token: str | None, *, allowed: list[str], timeout: float,
                 max_pages: int, budget: CallBudget,
                 transport: httpx.AsyncBaseTransport | None = None,
                 observe: Callable[[float, str], None] | None = None) -> None:
        self.base = allowed_base(base, allowed)
        headers = {"Accept": "application/fhir+json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(headers=headers, timeout=timeout, follow_redirects=False,
                                       transport=transport, trust_env=False)
        self.max_pages = max_pages
        self.budget = budget
        self.observe = observe  # (seconds, outcome) of each read, for the service's metrics

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
        self.budget.take_request()
        async with self.budget.slots:
            started = time.perf_counter()
            try:
                body = await self._body(target.url)
            except FhirUnavailableError:
                if self.observe is not None:
                    self.observe(time.perf_counter() - started, "failed")
                raise
            if self.observe is not None:
                self.observe(time.perf_counter() - started, "ok")
        try:
            return await loads_off_loop(body)
        except orjson.JSONDecodeError:
            raise FhirUnavailableError("FHIR server did not answer with JSON") from None

    async def _body(self, url: str) -> bytes:
        budget = self.budget
        try:
            async with self._http.stream("GET", url) as response:
                if response.status_code != 200:
                    raise FhirUnavailableError(f"FHIR server answered {response.status_code}")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > budget.bytes_left:
                    budget.take_bytes(int(declared))  # raises: over the call's budget
                chunks: list[bytes] = []
                async for chunk in response.aiter_bytes():
                    budget.take_bytes(len(chunk))
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise FhirUnavailableError(f"FHIR server unreachable ({type(exc).__name__})") from None
        return b"".join(chunks)

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

    async def read_ids(self, resource_type: str, ids: list[str]) -> list[dict[str, Any]]:
        """Resources of one type by id, in searches of IDS_PER_SEARCH ids each (never one
        read per id), run together within the call's budget."""
        chunks = [ids[i:i + IDS_PER_SEARCH] for i in range(0, len(ids), IDS_PER_SEARCH)]
        found = await asyncio.gather(*(
            self.read(f"{resource_type}?_id={','.join(chunk)}&_count={len(chunk)}")
            for chunk in chunks), return_exceptions=True)  # none left running on a failure
        resources: list[dict[str, Any]] = []
        for page in found:
            if isinstance(page, BaseException):
                raise page
            resources += page
        return resources

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
                raise FhirUnavailableError(f"more than {self.max_pages} pages of results "
                                           "(fhir_max_pages)")
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
