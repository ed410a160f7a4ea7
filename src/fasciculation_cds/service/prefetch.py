"""How the service gets a complete record for a call: the prefetch where it is complete, the FHIR
server for the rest (paging links and the resources orders and reports name included), or an
error naming every part that could not be had. A partial record is never evaluated. The
templates themselves come from searches.py."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from .fhir_client import (
    FhirClient,
    FhirUnavailableError,
    bundle_resources,
    next_link,
    search_matches,
    search_total,
)
from .searches import PATIENT_TOKEN, references, searched_types, templates

__all__ = ["FHIR_ID", "IncompleteRecordError", "RequestProblemError", "fill", "gather",
           "templates"]

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_TODAY_MINUS = re.compile(r"\{\{today\(\) - (\d{1,5}) days\}\}")


class RequestProblemError(Exception):
    """The request itself is malformed (the service answers 400)."""


class IncompleteRecordError(Exception):
    """Parts of the record could not be had: `parts` names each, with why."""

    def __init__(self, parts: list[str]) -> None:
        super().__init__("; ".join(parts))
        self.parts = parts


def fill(template: str, patient_id: str, today: date) -> str:
    if not FHIR_ID.match(patient_id):
        raise RequestProblemError("context.patientId must be a FHIR id")
    query = template.replace(PATIENT_TOKEN, patient_id)
    return _TODAY_MINUS.sub(lambda m: (today - timedelta(days=int(m[1]))).isoformat(), query)


def _page_of(key: str, value: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """Resources of one prefetched value, and its `next` link if it is page 1 of many."""
    try:
        if value.get("resourceType") == "Bundle":
            resources = bundle_resources(value)
            following = next_link(value)
            if following is None:
                total, matches = search_total(value), search_matches(value)
                if total is not None and total > matches:
                    raise IncompleteRecordError([
                        f"prefetch '{key}' holds {matches} of {total} results and no link to "
                        "the rest"])
            return resources, following
    except FhirUnavailableError as exc:
        raise RequestProblemError(f"prefetch '{key}': {exc}") from None
    return [dict(value)], None


def _usable(value: Any) -> bool:
    """A prefetch value the service can use; null or an OperationOutcome means the EHR's query
    failed (the service then asks the FHIR server itself)."""
    if value is None:
        return False
    if not isinstance(value, Mapping) or not isinstance(value.get("resourceType"), str):
        raise RequestProblemError("every prefetch value must be a FHIR resource or null")
    return value.get("resourceType") != "OperationOutcome"


@dataclass
class Reads:
    """What the service itself read from the FHIR server for one call, by prefetch key (and
    `references` for the resources orders and reports name): kept a short time so that the
    re-fires of one order-select session need not read it again."""

    by_key: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass
class Pending:
    """The parts of a call's record still being read: what a deadline names as not read."""

    parts: set[str] = field(default_factory=set)


async def gather(prefetch: Mapping[str, Any] | None, patient_id: str, wanted: Mapping[str, str],
                 client: FhirClient | None, today: date, *, no_client_reason: str,
                 reused: Reads | None = None, drafts: list[dict[str, Any]] | None = None,
                 pending: Pending | None = None) -> tuple[list[dict[str, Any]], Reads]:
    """Every resource the hook's rules need: from the prefetch where complete, else from the
    FHIR server (or from `reused` reads of the same session); with the Medications the draft
    orders name. Raises IncompleteRecordError naming every part that could not be had, and
    why."""
    prefetch = prefetch or {}
    reused = reused or Reads()
    reads = Reads()
    resources: list[dict[str, Any]] = []
    unsent: list[str] = []  # parts that need the FHIR server
    failed: list[str] = []
    jobs: list[tuple[str, Any]] = []
    for key, value in sorted(prefetch.items()):  # any key: EHRs also send their own queries
        if not _usable(value):
            continue
        if "?" in wanted.get(key, "") and value.get("resourceType") != "Bundle":
            raise RequestProblemError(f"prefetch '{key}' answers a search: it must be a Bundle")
        try:
            found, following = _page_of(key, value)
        except IncompleteRecordError as exc:
            failed += exc.parts
            continue
        if following is None:
            resources += found
        elif key in reused.by_key:
            reads.by_key[key] = reused.by_key[key]
        elif client is None:
            unsent.append(f"'{key}' (page 1 only: Bundle.link next)")
        else:
            jobs.append((key, client.complete(value, pages=1)))
    for key, template in wanted.items():
        if _usable(prefetch.get(key)):
            continue
        if key in reused.by_key:
            reads.by_key[key] = reused.by_key[key]
        elif client is None:
            unsent.append(f"'{key}'")
        else:
            jobs.append((key, client.read(fill(template, patient_id, today))))
    if unsent:
        # the reason first: a long list of keys must never crowd it out of the card
        failed.append(f"{no_client_reason}, and prefetch {', '.join(unsent)} incomplete or "
                      "missing")
    if failed:
        for _, job in jobs:
            job.close()  # never started: the record is incomplete whatever they bring
        raise IncompleteRecordError(failed)
    reads.by_key.update(await _run(jobs, pending or Pending()))
    for found in reads.by_key.values():
        resources += found
    # an order names its drug, a report its results, by references to resources the EHR may
    # not have included (`_include` is not supported everywhere): without them the record is
    # not whole
    await _resolve_references([*resources, *(drafts or [])], reads, reused, client,
                              no_client_reason, pending or Pending())
    return _unique([*resources, *reads.by_key.get(REFERENCED, [])]), reads


REFERENCED = "references"  # the key of resolved references in Reads (never a prefetch key)


async def _tracked(key: str, job: Any, pending: Pending) -> Any:
    """`job`, with `key` in `pending` until it ends (and left there when the deadline cancels
    it: it was not read)."""
    pending.parts.add(key)
    try:
        result = await job
    except asyncio.CancelledError:
        raise
    except BaseException:
        pending.parts.discard(key)
        raise
    pending.parts.discard(key)
    return result


async def _run(jobs: list[tuple[str, Any]],
               pending: Pending) -> dict[str, list[dict[str, Any]]]:
    """Every job's resources by key; a failure of any is raised once all have ended, naming
    every part that failed."""
    results = await asyncio.gather(*(_tracked(key, job, pending) for key, job in jobs),
                                   return_exceptions=True)
    found: dict[str, list[dict[str, Any]]] = {}
    failed: list[str] = []
    for (key, _), result in zip(jobs, results, strict=True):
        if isinstance(result, FhirUnavailableError):
            failed.append(f"'{key}' could not be fetched: {result}")
        elif isinstance(result, BaseException):
            raise result
        else:
            found[key] = result
    if failed:
        raise IncompleteRecordError(failed)
    return found


async def _resolve_references(resources: list[dict[str, Any]], reads: Reads, reused: Reads,
                              client: FhirClient | None, no_client_reason: str,
                              pending: Pending) -> None:
    if REFERENCED in reused.by_key:
        reads.by_key[REFERENCED] = reused.by_key[REFERENCED]
        resources = [*resources, *reused.by_key[REFERENCED]]
    unresolved = unresolved_references(resources)
    if not unresolved:
        return
    named = [f"{kind}/{rid}" for kind, ids in sorted(unresolved.items()) for rid in ids]
    shown = ", ".join(named[:5]) + (f" and {len(named) - 5} more" if len(named) > 5 else "")
    if client is None:
        raise IncompleteRecordError([f"{shown} referenced by the record but not sent, and "
                                     f"{no_client_reason}"])
    batches = await asyncio.gather(*(_tracked(f"{shown} (referenced by the record)",
                                              client.read_ids(kind, ids), pending)
                                     for kind, ids in sorted(unresolved.items())),
                                   return_exceptions=True)
    fetched: list[dict[str, Any]] = list(reads.by_key.get(REFERENCED, []))
    for batch in batches:
        if isinstance(batch, FhirUnavailableError):
            raise IncompleteRecordError([f"{shown} (referenced by the record) could not be "
                                         f"fetched: {batch}"])
        if isinstance(batch, BaseException):
            raise batch
        fetched += batch
    reads.by_key[REFERENCED] = fetched


_REFERENCE = re.compile(r"^(?:.*/)?([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


def unresolved_references(resources: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Ids by type of the resources the record's references name (an order's Medication, a
    report's results) that are not among the resources; contained ones (`#id`) are part of the
    resource itself."""
    searched = set(searched_types())
    have = {(str(r.get("resourceType")), r["id"]) for r in resources
            if isinstance(r.get("id"), str)}
    wanted: dict[str, set[str]] = {}
    for resource in resources:
        kind = resource.get("resourceType")
        if kind not in searched:
            continue
        for reference in references(str(kind)):
            values = resource.get(reference.element)
            for value in values if isinstance(values, list) else [values]:
                target = value.get("reference") if isinstance(value, Mapping) else None
                match = _REFERENCE.match(target) if isinstance(target, str) else None
                if match and match[1] == reference.target and (match[1], match[2]) not in have:
                    wanted.setdefault(match[1], set()).add(match[2])
    return {kind: sorted(ids) for kind, ids in wanted.items()}


def _unique(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One copy of each resource (the same one can arrive under two prefetch keys)."""
    seen: set[tuple[str, str]] = set()
    out = []
    for resource in resources:
        rid = resource.get("id")
        if isinstance(rid, str):
            key = (str(resource["resourceType"]), rid)
            if key in seen:
                continue
            seen.add(key)
        out.append(resource)
    return out
