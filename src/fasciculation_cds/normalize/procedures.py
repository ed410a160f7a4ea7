"""Procedure resources (renal dialysis...) to Procedure facts."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..facts import Procedure
from ..fhir_time import parse_datetime
from ..ingest import SourcedResource
from .common import Content, Notice, days_between, reference_of

PERFORMED_STATUS = frozenset({"completed", "in-progress"})


def performed_time(resource: Mapping[str, Any]) -> datetime | None:
    """performedDateTime, else the end (or, while in progress, the start) of performedPeriod."""
    period = resource.get("performedPeriod")
    if isinstance(period, Mapping):
        return parse_datetime(period.get("end")) or parse_datetime(period.get("start"))
    return parse_datetime(resource.get("performedDateTime"))


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
    performed = performed_time(resource)
    if performed is None:
        return [], [Notice("no-effective-time", reference,
                           f"{reference} has no performed time and was not used")]
    if performed > as_of:
        return [], []
    facts = []
    for match in matches:
        concept = term.concepts[match.concept]
        facts.append(Procedure(reference=reference, concept=concept.id, label=concept.label,
                               groups=concept.groups, status=str(status), performed=performed,
                               age_days=days_between(performed, as_of),
                               matched_by=match.matched_by))
    return facts, []
