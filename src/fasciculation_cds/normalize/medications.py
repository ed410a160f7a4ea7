"""MedicationRequest / MedicationStatement to Medication facts; draft orders to DraftOrder facts.

`medicationReference` was resolved by ingest (`SourcedResource.medication_code`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..facts import DraftOrder, Medication
from ..fhir_time import parse_datetime
from ..ingest import SourcedResource
from ..terminology import ConceptMatch, codings_of
from .common import Content, reference_of

ACTIVE_REQUEST_STATUS = frozenset({"active", "on-hold"})
ACTIVE_REQUEST_INTENT = frozenset({"order", "original-order", "instance-order", "plan"})
ACTIVE_STATEMENT_STATUS = frozenset({"active", "intended"})


def medication_facts(
    content: Content, sourced: SourcedResource, as_of: datetime
) -> list[Medication]:
    """The ingredients of an active medication (docs/clinical-basis.md "Active medication")."""
    resource = sourced.resource
    status = str(resource.get("status") or "")
    if resource["resourceType"] == "MedicationRequest":
        active = status in ACTIVE_REQUEST_STATUS and resource.get("intent") in \
            ACTIVE_REQUEST_INTENT
        dispense = resource.get("dispenseRequest")
        validity = dispense.get("validityPeriod") if isinstance(dispense, Mapping) else None
        end = parse_datetime(validity.get("end")) if isinstance(validity, Mapping) else None
        started = parse_datetime(resource.get("authoredOn"))
    else:
        active = status in ACTIVE_STATEMENT_STATUS
        period = resource.get("effectivePeriod")
        end = parse_datetime(period.get("end")) if isinstance(period, Mapping) else None
        started = parse_datetime(resource.get("effectiveDateTime")) or (
            parse_datetime(period.get("start")) if isinstance(period, Mapping) else None)
    if end is not None and end < as_of:
        active = False
    if started is not None and started > as_of:
        active = False
    if not active:
        return []
    codeable, display = medication_code(sourced)
    reference = reference_of(sourced)
    facts = []
    for match in ingredient_matches(content, codeable):
        concept = content.term.concepts[match.concept]
        facts.append(Medication(
            reference=reference, concept=concept.id, label=concept.label,
            classes=concept.classes, status=status, display=display,
            matched_by=match.matched_by, authored=started))
    return facts


def draft_order_facts(content: Content, drafts: list[SourcedResource]) -> list[DraftOrder]:
    facts = []
    for sourced in sorted(drafts, key=reference_of):
        codeable, display = medication_code(sourced)
        for match in ingredient_matches(content, codeable):
            concept = content.term.concepts[match.concept]
            facts.append(DraftOrder(reference=reference_of(sourced), concept=concept.id,
                                    label=concept.label, classes=concept.classes,
                                    display=display, matched_by=match.matched_by))
    return facts


def ingredient_matches(
    content: Content, codeable: Mapping[str, Any] | None
) -> list[ConceptMatch]:
    """Ingredients of a medication: by code; else (last resort) by name in an RxNorm display;
    else, for a medication given as text only, by name in its text (names and variants)."""
    term = content.term
    matches = [m for m in term.match_codeable(codeable)
               if term.concepts[m.concept].kind == "medication"]
    return (matches or term.match_ingredient_name(codeable)
            or term.match_medication_text(codeable))


def medication_code(sourced: SourcedResource) -> tuple[Mapping[str, Any] | None, str | None]:
    """The drug's CodeableConcept and the name to show for it."""
    codeable = sourced.resource.get("medicationCodeableConcept")
    if not isinstance(codeable, Mapping):
        codeable = sourced.medication_code
    if not isinstance(codeable, Mapping):
        return None, None
    display = codeable.get("text")
    for coding in codings_of(codeable):
        if not display and isinstance(coding, Mapping):
            display = coding.get("display")
    return codeable, str(display) if display else None
