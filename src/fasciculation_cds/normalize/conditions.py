"""Conditions, and sign/symptom Observations, to Problem and Finding facts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import date, datetime
from typing import Any

from ..facts import Finding, Problem
from ..ingest import SourcedResource
from ..terminology import MATCHED_BY_CODE, MATCHED_BY_TEXT, ConceptMatch, ReadMatch, codings_of
from ..text_context import Certainty
from .common import Content, Notice, days_between, reference_of, status_code
from .onset import condition_onset, recent_enough, recent_window

ACTIVE_CONDITION_STATUS = frozenset({"active", "recurrence", "relapse"})
EXCLUDED_VERIFICATION = frozenset({"refuted", "entered-in-error"})
CODED_KINDS = ("condition", "finding")

Coded = Problem | Finding


def condition_facts(
    content: Content, sourced: SourcedResource, as_of: datetime, birth: date | None = None
) -> tuple[list[Coded], set[str], list[Notice]]:
    """The problems and findings an active, not refuted Condition codes, read with its text
    (docs/clinical-basis.md, "Negation and text context"); the derived concepts recorded by any
    not refuted Condition, whatever its statuses (derived.yaml `recorded_conditions`); and
    notices about its text. Recent-only conditions count whatever their clinicalStatus, dated
    by their onset (an age or a range with `birth`)."""
    resource = sourced.resource
    derived = content.ruleset.derived
    verification = status_code(resource.get("verificationStatus"))
    if verification in EXCLUDED_VERIFICATION:
        return [], set(), []
    began = condition_onset(content.units, resource, birth)
    if began is not None and began.span.start > as_of:
        return [], set(), []
    onset = began.span.start if began is not None else None
    reference = reference_of(sourced)
    reads, notices, _ = read_code(content, resource, reference)
    recorded = {derived.recorded_conditions[r.match.concept] for r in reads
                if r.match.concept in derived.recorded_conditions and r.experiencer == "patient"}
    clinical = status_code(resource.get("clinicalStatus"))
    # R4 requires clinicalStatus on a live problem; without it, an abatement means resolved.
    # Recent-only conditions count whatever their clinicalStatus (v3 clinical basis).
    inactive = (clinical not in ACTIVE_CONDITION_STATUS if clinical is not None
                else any(key.startswith("abatement") for key in resource))
    facts = []
    for read in reads:
        if inactive and recent_window(content, read.match.concept) is None:
            continue
        if not recent_enough(content, read.match.concept, began, as_of):
            continue
        match = read.match
        unconfirmed = derived.unconfirmed_diagnoses.get(match.concept)
        if (unconfirmed is not None and verification in unconfirmed.verification
                and read.experiencer == "patient"):  # a relative's stays a family history
            read = replace(read, match=ConceptMatch(unconfirmed.yields, match.matched_by,
                                                    match.code, match.system))
        fact = context_fact(content, read, reference, onset, resource, clinical=clinical,
                            verification=verification)
        if fact is None:
            continue
        if isinstance(fact, Problem) and began is not None:
            fact = fact.model_copy(update={"onset_text": began.text})
        facts.append(fact)
    return facts, recorded, notices + certainty_notices(facts)


def read_code(content: Content, resource: Mapping[str, Any],
              reference: str) -> tuple[list[ReadMatch], list[Notice], list[ReadMatch]]:
    """The condition and finding concepts a resource's code names, read in context, and those
    its text only negates; a text beyond the cap is named (its record is then partial: it never
    reassures)."""
    reading = content.term.read_codeable(resource.get("code"))
    reads = [r for r in reading.matches
             if content.term.concepts[r.match.concept].kind in CODED_KINDS]
    negated = [r for r in reading.negated
               if content.term.concepts[r.match.concept].kind in CODED_KINDS]
    notices = []
    if reading.capped and content.term.reader is not None:
        notices.append(Notice("resource-unreadable", reference, (
            f"{reference}: its text is longer than {content.term.reader.cap} characters; the "
            "rest was not read, so this record cannot be read completely")))
    return reads, notices, negated


def context_fact(content: Content, read: ReadMatch, reference: str, when: datetime | None,
                 resource: Mapping[str, Any], *, clinical: str | None = None,
                 verification: str | None = None) -> Coded | None:
    """The fact a match in context makes (None: a relative's concept other than ALS/MND)."""
    match = read.match
    reader = content.term.reader
    concept = match.concept
    if reader is not None:
        made = reader.yields(concept, read.experiencer, by_text=match.matched_by == MATCHED_BY_TEXT,
                             certainty=read.certainty)
        if made is None:
            return None
        concept = made
    fact = coded_fact(content, ConceptMatch(concept, match.matched_by, match.code, match.system),
                      reference, when, resource, clinical=clinical, verification=verification)
    return fact.model_copy(update={"certainty": read.certainty, "quote": read.quote})


def certainty_notices(facts: list[Coded]) -> list[Notice]:
    """v3: an uncertain text match gives `text-uncertain`; a bare weakness/wasting text
    gives `sign-value-unclear` naming it."""
    notices = []
    for fact in facts:
        quote = _short(fact.quote)
        if fact.certainty == "uncertain":
            notices.append(Notice("text-uncertain", fact.reference, (
                f"{fact.reference}: {fact.label} is hedged, double-negated or contradicted in "
                f"its text ({quote}); it is counted, as uncertain")))
        elif fact.certainty == "unclear":
            notices.append(Notice("sign-value-unclear", fact.reference, (
                f"{fact.reference}: the text {quote} names no particular motor sign; it forms "
                f"no {fact.label.lower()} sign group but is not reassuring")))
    return notices


def _short(quote: str | None, limit: int = 80) -> str:
    if not quote:
        return "(no text)"
    flat = " ".join(quote.split())
    return f'"{flat}"' if len(flat) <= limit else f'"{flat[:limit - 1]}\u2026"'


def observation_facts(
    content: Content,
    resource: Mapping[str, Any],
    reference: str,
    effective: datetime,
    as_of: datetime,
) -> tuple[list[Coded], list[Notice]]:
    """Signs and conditions a final Observation codes, within the sign look-back, read with its
    text and its value (docs/clinical-basis.md, "Negation and text context"): a value saying
    absent makes no fact; one saying both or neither an uncertain or unclear one
    (`sign-value-unclear`); an unclear presentation still presents, as uncertain."""
    reads, notices, negated = read_code(content, resource, reference)
    if days_between(effective, as_of) > content.constants.sign_lookback_days:
        return [], []
    meaning = observation_value(content, resource)
    if meaning == ABSENT:
        return [], notices
    contradicted = negated if meaning == PRESENT else []
    if contradicted:
        # the text negates a sign its value asserts ("No clonus", value "present"): uncertain
        reads += contradicted
        labels = ", ".join(sorted(content.term.concepts[r.match.concept].label
                                  for r in contradicted))
        notices.append(Notice("sign-value-unclear", reference, (
            f"{labels} Observation {reference}: its text negates what its value asserts; "
            "counted as uncertain, never as reassurance")))
    if not reads:
        return [], notices
    facts = [fact for read in reads
             if recent_enough(content, read.match.concept, effective, as_of)
             and (fact := context_fact(content, read, reference, effective, resource))]
    against_value = {r.match.concept for r in contradicted}  # named by the notice above
    notices += certainty_notices([f for f in facts if f.concept not in against_value])
    if meaning in (PRESENT, NO_VALUE) or not facts:
        return facts, notices
    presentation = content.term.groups.get(content.ruleset.derived.presentation_group, ())
    for index, fact in enumerate(facts):
        if fact.certainty != "unclear":
            doubt: Certainty = "uncertain" if (
                meaning == UNCERTAIN or fact.concept in presentation) else "unclear"
            facts[index] = fact.model_copy(update={"certainty": doubt})
    labels = ", ".join(sorted({f.label for f in facts}))
    says = "both present and absent" if meaning == UNCERTAIN else "neither present nor absent"
    notices.append(Notice("sign-value-unclear", reference, (
        f"{labels} Observation {reference} has a value that says {says}: counted as "
        f"{'uncertain' if meaning == UNCERTAIN else 'unclear'}, never as reassurance")))
    return facts, notices


PRESENT, ABSENT, UNCERTAIN, UNCLEAR = "present", "absent", "uncertain", "unclear"
NO_VALUE = "no-value"  # counts as present, but asserts nothing against the text
NEGATIVE_ANSWER = "negative-answer"


def observation_value(content: Content, resource: Mapping[str, Any]) -> str:
    """What a sign Observation's value says (docs/clinical-basis.md, "Negation and text
    context"): no value, true, or positive words only -> present; false, a `negative-answer`
    code or negative words only -> absent; a dataAbsentReason -> absent (it counts for
    nothing); both kinds of word -> uncertain; anything else (a number, "equivocal") ->
    unclear."""
    term = content.term
    keys = [key for key in resource if key.startswith("value")]
    if not keys:
        return ABSENT if "dataAbsentReason" in resource else NO_VALUE
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
        return term.sign_value(pieces)
    if keys[0] == "valueString" and isinstance(value, str):
        return term.sign_value([value])
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
