"""The prefetch templates each hook asks for, built from the rule set, and how the service gets a
complete record: the prefetch where it is complete, the FHIR server for the rest (paging links
included), or an error naming what is missing. A partial record is never evaluated."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Mapping
from datetime import date, timedelta
from typing import Any

from ..ruleset import RuleSet
from .fhir_client import (
    FhirClient,
    FhirUnavailableError,
    bundle_resources,
    next_link,
    search_matches,
    search_total,
)
from .needs import needs_of

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
PAGE_SIZE = 100
PATIENT_TOKEN = "{{context.patientId}}"
_TODAY_MINUS = re.compile(r"\{\{today\(\) - (\d{1,5}) days\}\}")


class RequestProblemError(Exception):
    """The request itself is malformed (the service answers 400)."""


class IncompleteRecordError(Exception):
    """Part of the record could not be had (the service answers 412, naming what is missing)."""


def lookback_days(ruleset: RuleSet) -> int:
    """Days of Observations to ask for: the rule set's longest look-back, and one more day
    because the search compares dates while the rules compare instants."""
    return math.ceil(ruleset.max_lookback_days) + 1


def _text_or_prefix_matching(ruleset: RuleSet, kinds: set[str]) -> bool:
    """Whether concepts of these kinds can be recognised otherwise than by an exact code: a
    search by code would then miss records."""
    term = ruleset.terminology
    return any(term.concepts[c].kind in kinds for c in term.matched_beyond_codes()
               if c in term.concepts)


def _codes(ruleset: RuleSet, kinds: set[str]) -> str:
    term = ruleset.terminology
    pairs = term.codes_of(c.id for c in term.concepts.values() if c.kind in kinds)
    return ",".join(f"{system}|{code}" for system, code in pairs)


def _search(resource_type: str, ruleset: RuleSet, kinds: set[str], *extra: str) -> str:
    query = [f"patient={PATIENT_TOKEN}", *extra]
    if kinds and not _text_or_prefix_matching(ruleset, kinds):
        query.append(f"code={_codes(ruleset, kinds)}")
    return f"{resource_type}?{'&'.join([*query, f'_count={PAGE_SIZE}'])}"


def templates(ruleset: RuleSet, hook: str) -> dict[str, str]:
    """Prefetch templates for one hook, with CDS Hooks tokens (`{{context.patientId}}`,
    `{{today() - N days}}`). Each asks only for what the hook's rules read."""
    needs = needs_of(ruleset, hook)
    found: dict[str, str] = {"patient": f"Patient/{PATIENT_TOKEN}"}
    if needs.observations:
        since = f"date=ge{{{{today() - {lookback_days(ruleset)} days}}}}"
        found["observations"] = _search("Observation", ruleset, {"lab", "finding"}, since)
    if needs.conditions:
        found["conditions"] = _search("Condition", ruleset, {"condition", "finding"})
    if needs.medications:
        for key, kind in (("medicationRequests", "MedicationRequest"),
                          ("medicationStatements", "MedicationStatement")):
            found[key] = _search(kind, ruleset, set(), f"_include={kind}:medication")
    has_procedures = any(c.kind == "procedure" for c in ruleset.terminology.concepts.values())
    if needs.procedures and has_procedures:
        found["procedures"] = _search("Procedure", ruleset, {"procedure"})
    return found


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
                    raise IncompleteRecordError(
                        f"prefetch '{key}' holds {matches} of {total} results and no link to "
                        "the rest")
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


async def gather(prefetch: Mapping[str, Any] | None, patient_id: str, wanted: Mapping[str, str],
                 client: FhirClient | None, today: date, *,
                 no_client_reason: str) -> list[dict[str, Any]]:
    """Every resource the hook's rules need: from the prefetch where complete, else from the
    FHIR server. Raises IncompleteRecordError naming each part that could not be had."""
    prefetch = prefetch or {}
    resources: list[dict[str, Any]] = []
    missing: list[str] = []
    jobs: list[tuple[str, Any]] = []
    for key, value in sorted(prefetch.items()):  # any key: EHRs also send their own queries
        if not _usable(value):
            continue
        if "?" in wanted.get(key, "") and value.get("resourceType") != "Bundle":
            raise RequestProblemError(f"prefetch '{key}' answers a search: it must be a Bundle")
        found, following = _page_of(key, value)
        if following is None:
            resources += found
        elif client is None:
            missing.append(f"'{key}' (page 1 only: Bundle.link next)")
        else:
            jobs.append((key, client.complete(value, pages=1)))
    for key, template in wanted.items():
        if _usable(prefetch.get(key)):
            continue
        if client is None:
            missing.append(f"'{key}'")
        else:
            jobs.append((key, client.read(fill(template, patient_id, today))))
    if missing:
        for _, job in jobs:
            job.close()  # never started
        raise IncompleteRecordError(f"prefetch {', '.join(missing)} incomplete or missing, and "
                                    f"{no_client_reason}")
    resources += await _run(jobs)
    # a medication order names its drug through a Medication resource the EHR may not have
    # included (`_include` is not supported everywhere): without it the drug is unknown
    unresolved = _unresolved_medications(resources)
    if unresolved and client is None:
        raise IncompleteRecordError(f"{', '.join(unresolved[:5])} referenced by a medication "
                                    f"order but not sent, and {no_client_reason}")
    if unresolved and client is not None:
        resources += await _run([(reference, client.read(reference))
                                 for reference in unresolved])
    return _unique(resources)


async def _run(jobs: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    results = await asyncio.gather(*(job for _, job in jobs), return_exceptions=True)
    resources: list[dict[str, Any]] = []
    for (key, _), result in zip(jobs, results, strict=True):
        if isinstance(result, FhirUnavailableError):
            raise IncompleteRecordError(f"'{key}' could not be fetched: {result}")
        if isinstance(result, BaseException):
            raise result
        resources += result
    return resources


_MEDICATION_REFERENCE = re.compile(r"^(?:.*/)?Medication/([A-Za-z0-9\-.]{1,64})$")


def _unresolved_medications(resources: list[dict[str, Any]]) -> list[str]:
    """`Medication/id` references of medication orders with no such Medication among the
    resources (contained ones, `#id`, are part of the order itself)."""
    have = {r.get("id") for r in resources if r.get("resourceType") == "Medication"}
    wanted = set()
    for resource in resources:
        if resource.get("resourceType") not in ("MedicationRequest", "MedicationStatement"):
            continue
        reference = resource.get("medicationReference")
        target = reference.get("reference") if isinstance(reference, Mapping) else None
        match = _MEDICATION_REFERENCE.match(target) if isinstance(target, str) else None
        if match and match[1] not in have:
            wanted.add(f"Medication/{match[1]}")
    return sorted(wanted)


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
