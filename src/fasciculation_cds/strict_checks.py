"""Invariants the FHIR validator enforces that the fhir.resources models do not (used by --strict).

Checked on the raw JSON: resource id syntax (incl. contained resources), Period start <= end
(per-1), embedded HTML in strings and unsafe narrative, and Bundle link relations (bdl-?).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from .fhir_time import parse_datetime

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_HTML_TAG = re.compile(r"<\s*/?\s*[A-Za-z][A-Za-z0-9]*(\s[^<>]*)?/?\s*>")
_UNSAFE_NARRATIVE = re.compile(r"<\s*(script|iframe|object|embed|form|style)\b|\son[a-z]+\s*=|"
                               r"javascript:", re.IGNORECASE)


def strict_problems(resource: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(FHIR path, message) for each violated invariant."""
    resource_type = str(resource.get("resourceType"))
    yield from _id_problems(resource, resource_type)
    for index, contained in enumerate(resource.get("contained") or []):
        if isinstance(contained, Mapping):
            yield from _id_problems(contained, f"{resource_type}.contained[{index}]")
    yield from _walk(resource, resource_type)


def bundle_problems(bundle: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    seen: set[str] = set()
    for index, link in enumerate(bundle.get("link") or []):
        relation = link.get("relation") if isinstance(link, Mapping) else None
        if isinstance(relation, str):
            if relation in seen:
                yield (f"Bundle.link[{index}]",
                       f"the link relation {relation!r} can only occur once")
            seen.add(relation)


def _id_problems(resource: Mapping[str, Any], path: str) -> Iterator[tuple[str, str]]:
    value = resource.get("id")
    if value is not None and (not isinstance(value, str) or not _ID.match(value)):
        yield f"{path}.id", f"invalid resource id {str(value)[:70]!r} (1-64 of A-Z a-z 0-9 - .)"


def _walk(node: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, Mapping):
        start, end = parse_datetime(node.get("start")), parse_datetime(node.get("end"))
        if start and end and start > end:
            yield path, "period start is after its end (per-1)"
        for key, value in node.items():
            if key == "div" and isinstance(value, str):
                if _UNSAFE_NARRATIVE.search(value):
                    yield f"{path}.div", "narrative holds unsafe HTML (scripts, event handlers)"
                continue
            if key == "contained":
                continue
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _walk(item, f"{path}[{index}]")
    elif isinstance(node, str) and _HTML_TAG.search(node):
        yield path, "string looks like embedded HTML, which is not allowed here"
