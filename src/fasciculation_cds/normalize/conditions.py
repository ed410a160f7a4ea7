"""Conditions, and sign/symptom Observations, to Problem and Finding facts."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from ..facts import Finding, Problem
from ..fhir_time import parse_datetime
from ..ingest import SourcedResource
from ..terminology import MATCHED_BY_CODE, ConceptMatch, codings_of
from .common import Content, Notice, days_between, reference_of, status_code
from .onset import condition_onset, recent_enough, recent_window

ACTIVE_CONDITION_STATUS = frozenset({"active", "recurrence", "relapse"})
EXCLUDED_VERIFICATION = frozenset({"refuted", "entered-in-error"})
CODED_KINDS = ("condition", "finding")

Coded = Problem | Finding


def condition_time(resource: Mapping[str, Any]) -> datetime | None:
    """When a Condition began: onsetDateTime or onsetPeriod.start, else its recordedDate (an
    onset given as an age, range or string is no date)."""
    period = resource.get("onsetPeriod")
    onset = parse_datetime(resource.get("onsetDateTime")) or (
        parse_datetime(period.get("start")) if isinstance(period, Mapping) else None)
    return onset or parse_datetime(resource.get("recordedDate"))


def condition_facts(
    content: Content, sourced: SourcedResource, as_of: datetime, birth: date | None = None
) -> tuple[list[Coded], set[str]]:
    """The problems and findings an active, not refuted Condition codes; and the derived
    concepts recorded by any not refuted Condition, whatever its statuses (derived.yaml
    `recorded_conditions`)."""
    resource = sourced.resource
    derived = content.ruleset.derived
    verification = status_code(resource.get("verificationStatus"))
    if verification in EXCLUDED_VERIFICATION:
        return [], set()
    began = condition_onset(content.units, resource, birth)
    if began is not None and began.span.start > as_of:
        return [], set()
    onset = began.span.start if began is not None else None
    matches = [m for m in content.term.match_codeable(resource.get("code"))
               if content.term.concepts[m.concept].kind in CODED_KINDS]
    recorded = {derived.recorded_conditions[m.concept] for m in matches
                if m.concept in derived.recorded_conditions}
    clinical = status_code(resource.get("clinicalStatus"))
    # R4 requires clinicalStatus on a live problem; without it, an abatement means resolved.
    # Recent-only conditions count whatever their clinicalStatus (v3 clinical basis).
    inactive = (clinical not in ACTIVE_CONDITION_STATUS if clinical is not None
                else any(key.startswith("abatement") for key in resource))
    reference = reference_of(sourced)
    facts = []
    for match in matches:
        if inactive and recent_window(content, match.concept) is None:
            continue
        if not recent_enough(content, match.concept, began, as_of):
            continue
        unconfirmed = derived.unconfirmed_diagnoses.get(match.concept)
        if unconfirmed is not None and verification in unconfirmed.verification:
            match = ConceptMatch(unconfirmed.yields, match.matched_by, match.code, match.system)
        fact = coded_fact(content, match, reference, onset, resource, clinical=clinical,
                          verification=verification)
        if isinstance(fact, Problem) and began is not None:
            fact = fact.model_copy(update={"onset_text": began.text})
        facts.append(fact)
    return facts, recorded


def observation_facts(
    content: Content,
    resource: Mapping[str, Any],
    matches: list[ConceptMatch],
    reference: str,
    effective: datetime,
    as_of: datetime,
) -> tuple[list[Coded], list[Notice]]:
    """Signs and conditions a final Observation codes, within the sign look-back, unless its
    value says absent (or says nothing clear: notice `sign-value-unclear`)."""
    coded = [m for m in matches if content.term.concepts[m.concept].kind in CODED_KINDS]
    if not coded or days_between(effective, as_of) > content.constants.sign_lookback_days:
        return [], []
    meaning = observation_value(content, resource)
    if meaning == ABSENT:
        return [], []
    notices = []
    if meaning == UNCLEAR:
        labels = ", ".join(sorted(content.term.concepts[m.concept].label for m in coded))
        notices.append(Notice("sign-value-unclear", reference,
                              f"{labels} Observation {reference} has a value that says neither "
                              "present nor absent: it forms no sign group and blocks the benign "
                              "card"))
    facts = [coded_fact(content, match, reference, effective, resource) for match in coded
             if recent_enough(content, match.concept, effective, as_of)]
    if meaning == UNCLEAR:  # v3 sign values: a presentation presents, as uncertain
        presentation = content.term.groups[content.ruleset.derived.presentation_group]
        facts = [f.model_copy(update={"certainty": "uncertain" if f.concept in presentation
                                      else "unclear"}) for f in facts]
    return facts, notices


PRESENT, ABSENT, UNCLEAR = "present", "absent", "unclear"
NEGATIVE_ANSWER = "negative-answer"


def observation_value(content: Content, resource: Mapping[str, Any]) -> str:
    """What a sign Observation's value says (docs/clinical-basis.md, "Negation"): no value, true,
    or a value meaning present -> present; false, a `negative-answer` code or a negative word ->
    absent."""
    term = content.term
    keys = [key for key in resource if key.startswith("value")]
    if not keys:
        return PRESENT
    value = resource[keys[0]]
    if keys[0] == "valueBoolean":
        return PRESENT if value is True else ABSENT if value is False else UNCLEAR
    if keys[0] == "valueCodeableConcept" and isinstance(value, Mapping):
        # v3: answer concepts also hold values meaning present (current smoker); only the
        # negative-answer concept means absent
        if any(m.concept == NEGATIVE_ANSWER for m in term.match_codeable(value)):
            return ABSENT
        pieces = [str(value.get("text") or "")]
        pieces += [str(c.get("display") or "") for c in codings_of(value)
                   if isinstance(c, Mapping)]
        return term.value_meaning(pieces) or UNCLEAR
    if keys[0] == "valueString" and isinstance(value, str):
        return term.value_meaning([value]) or UNCLEAR
    return UNCLEAR


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
            words += [str(c.get("display") or "") for c in codings_of(item)
                      if isinstance(c, Mapping)]
    text = " ".join(w for w in words if w).strip()
    return text or None


def recorded_concepts(content: Content, coded: list[Coded]) -> set[str]:
    """Recorded concepts implied by counted facts (an MND coded by an Observation, a suspicion)."""
    derived = content.ruleset.derived
    sources = {spec.yields: cid for cid, spec in derived.unconfirmed_diagnoses.items()}
    recorded = set()
    for fact in coded:
        concept = sources.get(fact.concept, fact.concept)
        if concept in derived.recorded_conditions:
            recorded.add(derived.recorded_conditions[concept])
    return recorded


def dedupe(coded: list[Coded]) -> list[Coded]:
    """One fact per (resource, concept), a code match preferred; sorted for stable output."""
    seen: dict[tuple[str, str], Coded] = {}
    for fact in coded:
        key = (fact.reference, fact.concept)
        if key not in seen or (fact.matched_by == MATCHED_BY_CODE):
            seen[key] = fact
    return sorted(seen.values(), key=lambda f: (f.concept, f.reference))
