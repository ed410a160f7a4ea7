"""Procedure resources (renal dialysis...) to Procedure facts."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..facts import Procedure
from ..fhir_time import Span, parse_span, period_span
from ..ingest import SourcedResource
from .common import Content, Notice, days_between, reference_of

PERFORMED_STATUS = frozenset({"completed", "in-progress"})


def performed_span(resource: Mapping[str, Any]) -> Span | None:
    """performedDateTime, else performedPeriod, as a span (v3 clinical basis, "Time": a Period
    is a span, ordered by its end, else start; no end runs to as_of)."""
    if "performedPeriod" in resource:
        return period_span(resource["performedPeriod"])
    return parse_span(resource.get("performedDateTime"))


def procedure_facts(
    content: Content, sourced: SourcedResource, as_of: datetime
) -> tuple[list[Procedure], list[Notice]]:
    """Facts for a completed or in-progress Procedure performed by as_of."""
    resource = sourced.resource
    status = resource.get("status")
    if status not in PERFORMED_STATUS:
        return [], []
    term = content.term
    matches = [m for m in term.match_codeable(resource.get("code"))
               if term.concepts[m.concept].kind == "procedure"]
    if not matches:
        return [], []
    reference = reference_of(sourced)
    span = performed_span(resource)
    if span is None:
        return [], [Notice("no-effective-time", reference,
                           f"{reference} has no performed time and was not used")]
    if span.start > as_of:
        return [], []
    performed = min(span.order, as_of)
    facts = []
    for match in matches:
        concept = term.concepts[match.concept]
        facts.append(Procedure(reference=reference, concept=concept.id, label=concept.label,
                               groups=concept.groups, status=str(status), performed=performed,
                               age_days=days_between(span.until(as_of), as_of),
                               matched_by=match.matched_by))
    return facts, []
