"""The one place the service calls a FHIR server: allow-listed base URLs only, bearer token,
timeouts, and bounded `Bundle.link[next]` paging that never leaves the allowed server."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx


class FhirUnavailableError(Exception):
    """The data could not be had (the service answers 412, never a guess)."""


class NotAllowedError(Exception):
    """The fhirServer is not on the allow-list (the service answers 400, makes no request)."""


def _normalized(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path.rstrip('/')}"


def check_allowed(base: str, allowed: list[str]) -> str:
    normalized = _normalized(base)
    if not any(normalized == _normalized(a) for a in allowed):
        raise NotAllowedError("fhirServer is not on this service's allow-list")
    return normalized


class FhirClient:
    def __init__(self, base: str, token: str | None, *, allowed: list[str], timeout: float,
                 max_pages: int, transport: httpx.BaseTransport | None = None) -> None:
        self.base = check_allowed(base, allowed)
        headers = {"Accept": "application/fhir+json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(headers=headers, timeout=timeout, follow_redirects=False,
                                  transport=transport)
        self.max_pages = max_pages

    def close(self) -> None:
        self._http.close()

    def _get(self, url: str) -> Any:
        if not _normalized(url).startswith(self.base):
            raise FhirUnavailableError("a paging link points outside the FHIR server")
        try:
            response = self._http.get(url)
        except httpx.HTTPError as exc:
            raise FhirUnavailableError(f"FHIR server unreachable ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise FhirUnavailableError(f"FHIR server answered {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise FhirUnavailableError("FHIR server did not answer with JSON") from None

    def read(self, path: str) -> list[dict[str, Any]]:
        """`Type/id` or `Type?query`: the resources, following paging up to the bound."""
        document = self._get(f"{self.base}/{path.lstrip('/')}")
        if not isinstance(document, Mapping):
            raise FhirUnavailableError("FHIR server answered with an unexpected document")
        if document.get("resourceType") != "Bundle":
            return [dict(document)]
        resources: list[dict[str, Any]] = []
        pages = 1
        while True:
            for entry in document.get("entry") or []:
                resource = entry.get("resource") if isinstance(entry, Mapping) else None
                if isinstance(resource, Mapping) and resource.get("resourceType") != \
                        "OperationOutcome":
                    resources.append(dict(resource))
            following = next((link.get("url") for link in document.get("link") or []
                              if isinstance(link, Mapping) and link.get("relation") == "next"),
                             None)
            if not following:
                return resources
            if pages >= self.max_pages:
                raise FhirUnavailableError(f"more than {self.max_pages} pages of results")
            document = self._get(str(following))
            pages += 1
