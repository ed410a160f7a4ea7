"""Conditions, and sign/symptom Observations, to Problem and Finding facts."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..facts import Finding, Problem
from ..fhir_time import parse_datetime
from ..ingest import SourcedResource
from ..terminology import MATCHED_BY_CODE, ConceptMatch
from .common import Content, days_between, reference_of, status_code

ACTIVE_CONDITION_STATUS = frozenset({"active", "recurrence", "relapse"})
EXCLUDED_VERIFICATION = frozenset({"refuted", "entered-in-error"})
CODED_KINDS = ("condition", "finding")

Coded = Problem | Finding


def condition_facts(content: Content, sourced: SourcedResource, as_of: datetime) -> list[Coded]:
    """The problems and findings an active, not refuted Condition codes."""
    resource = sourced.resource
    verification = status_code(resource.get("verificationStatus"))
    if verification in EXCLUDED_VERIFICATION:
        return []
    clinical = status_code(resource.get("clinicalStatus"))
    if clinical is None:
        # R4 requires clinicalStatus on a live problem; without it, an abatement means resolved
        if any(key.startswith("abatement") for key in resource):
            return []
    elif clinical not in ACTIVE_CONDITION_STATUS:
        return []
    onset = parse_datetime(resource.get("onsetDateTime")) or parse_datetime(
        resource.get("recordedDate"))
    if onset is not None and onset > as_of:
        return []
    reference = reference_of(sourced)
    return [coded_fact(content, match, reference, onset, resource, clinical=clinical,
                       verification=verification)
            for match in content.term.match_codeable(resource.get("code"))
            if content.term.concepts[match.concept].kind in CODED_KINDS]


def observation_facts(
    content: Content,
    resource: Mapping[str, Any],
    matches: list[ConceptMatch],
    reference: str,
    effective: datetime,
    as_of: datetime,
) -> list[Coded]:
    """Signs and conditions a final Observation codes, within the sign look-back."""
    if resource.get("valueBoolean") is False:
        return []
    if days_between(effective, as_of) > content.constants.sign_lookback_days:
        return []
    return [coded_fact(content, match, reference, effective, resource) for match in matches
            if content.term.concepts[match.concept].kind in CODED_KINDS]


def coded_fact(
    content: Content,
    match: ConceptMatch,
    reference: str,
    when: datetime | None,
    resource: Mapping[str, Any],
    *,
    clinical: str | None = None,
    verification: str | None = None,
) -> Coded:
    concept = content.term.concepts[match.concept]
    if concept.kind == "condition":
        return Problem(reference=reference, concept=concept.id, label=concept.label,
                       groups=concept.groups, clinical_status=clinical,
                       verification_status=verification, onset=when,
                       matched_by=match.matched_by)
    return Finding(reference=reference, concept=concept.id, label=concept.label,
                   groups=concept.groups, body_site=_body_site_text(resource),
                   effective=when, matched_by=match.matched_by)


def _body_site_text(resource: Mapping[str, Any]) -> str | None:
    site = resource.get("bodySite")
    sites = site if isinstance(site, list) else [site]
    words = []
    for item in sites:
        if isinstance(item, Mapping):
            words.append(str(item.get("text") or ""))
            words += [str(c.get("display") or "") for c in item.get("coding") or []
                      if isinstance(c, Mapping)]
    text = " ".join(w for w in words if w).strip()
    return text or None


def dedupe(coded: list[Coded]) -> list[Coded]:
    """One fact per (resource, concept), a code match preferred; sorted for stable output."""
    seen: dict[tuple[str, str], Coded] = {}
    for fact in coded:
        key = (fact.reference, fact.concept)
        if key not in seen or (fact.matched_by == MATCHED_BY_CODE):
            seen[key] = fact
    return sorted(seen.values(), key=lambda f: (f.concept, f.reference))
