"""Medication uses to Medication facts; draft orders to DraftOrder facts.

Requests and statements by their status and dates; dispenses and administrations by
docs/clinical-basis.md "Dispensed and administered drugs" (active for a window after the drug
was handed over or given). `medicationReference` was resolved by ingest
(`SourcedResource.medication_code`). A class that counts only systemic forms
(docs/clinical-basis.md, Route) does not count a product whose display, dose form or route text
names a local form (rules/valuesets/routes.yaml).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from ..facts import DraftOrder, Medication
from ..fhir_time import parse_datetime
from ..ingest import SourcedResource
from ..terminology import ConceptMatch, codings_of
from .common import Content, number, reference_of

ACTIVE_REQUEST_STATUS = frozenset({"active", "on-hold"})
ACTIVE_REQUEST_INTENT = frozenset({"order", "original-order", "instance-order", "plan"})
ACTIVE_STATEMENT_STATUS = frozenset({"active", "intended"})
ACTIVE_SUPPLY_STATUS = frozenset({"completed", "in-progress"})  # dispenses, administrations
# docs/clinical-basis.md: a dispense is active for daysSupply + 30 days, or 90 days without a
# daysSupply; an administration while D <= its UTC date + 7 days.
DISPENSE_EXTRA_DAYS = 30
DISPENSE_DEFAULT_DAYS = 90
ADMINISTRATION_DAYS = 7
_DAY_UNITS = {"d": 1, "day": 1, "days": 1, "wk": 7, "week": 7, "weeks": 7, "mo": 30,
              "month": 30, "months": 30}


def medication_facts(
    content: Content, sourced: SourcedResource, as_of: datetime
) -> list[Medication]:
    """The ingredients of an active medication (docs/clinical-basis.md "Active medication")."""
    resource = sourced.resource
    status = str(resource.get("status") or "")
    if resource["resourceType"] in ("MedicationDispense", "MedicationAdministration"):
        active, started, end = _supply_window(resource, as_of)
    elif resource["resourceType"] == "MedicationRequest":
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
    local = _local_form(content, sourced)
    facts = []
    for match in ingredient_matches(content, codeable):
        concept = content.term.concepts[match.concept]
        if local is not None and concept.id in local:
            continue  # counted only as a systemic form, which this product is not
        facts.append(Medication(
            reference=reference, concept=concept.id, label=concept.label,
            classes=concept.classes, status=status, display=display,
            matched_by=match.matched_by, authored=started))
    return facts


def _supply_window(resource: Mapping[str, Any],
                   as_of: datetime) -> tuple[bool, datetime | None, datetime | None]:
    """(active, start, end) of a dispense or administration (docs/clinical-basis.md)."""
    if resource.get("status") not in ACTIVE_SUPPLY_STATUS:
        return False, None, None
    if resource["resourceType"] == "MedicationDispense":
        started = parse_datetime(resource.get("whenHandedOver"))
        if started is None:
            return False, None, None  # v3: no whenHandedOver, not active
        supply = _days(resource.get("daysSupply"))
        days = supply + DISPENSE_EXTRA_DAYS if supply is not None else DISPENSE_DEFAULT_DAYS
        end = _after(started, days)
        return started <= as_of <= end, started, end
    period = resource.get("effectivePeriod")
    started = parse_datetime(resource.get("effectiveDateTime"))
    given = started
    if isinstance(period, Mapping):
        started = parse_datetime(period.get("start"))
        given = parse_datetime(period.get("end")) or started
    if given is None:
        return False, None, None
    # active while the evaluation day is at most N days after the UTC day it was given
    last_day = _after(given.astimezone(as_of.tzinfo), ADMINISTRATION_DAYS).date()
    active = (started or given) <= as_of and as_of.date() <= last_day
    return active, started or given, None


def _after(moment: datetime, days: float) -> datetime:
    """`moment` plus `days`, or the last representable instant (a supply of 1e300 days, or a
    date in the year 9999, is active to the end of time rather than a crash)."""
    try:
        return moment + timedelta(days=days)
    except OverflowError:
        return datetime.max.replace(tzinfo=moment.tzinfo)


def _days(quantity: Any) -> float | None:
    """daysSupply in days (UCUM d, wk, mo; a quantity without a unit is taken as days)."""
    if not isinstance(quantity, Mapping):
        return None
    value = number(quantity.get("value"))
    if value is None or value < 0:
        return None
    unit = quantity.get("code") or quantity.get("unit") or "d"
    factor = _DAY_UNITS.get(str(unit).lower())
    return float(value) * factor if factor is not None else None


class _RouteWords(BaseModel):
    model_config = ConfigDict(extra="forbid")

    systemic_only_classes: list[str]
    local_form_words: list[str]
    source: str


@functools.cache
def _route_words(directory: Path) -> _RouteWords:
    with (directory / "valuesets" / "routes.yaml").open("rb") as handle:
        return _RouteWords.model_validate(yaml.safe_load(handle))


def _local_form(content: Content, sourced: SourcedResource) -> frozenset[str] | None:
    """The concepts that count only in systemic forms (members of a systemic-only class, in
    every class they have: valuesets/codes.yaml notes), when the product names a local form in its
    display, dose form or route text; None when it names none (oral, injectable, rectal and
    unnamed forms count)."""
    words = _route_words(content.ruleset.directory)
    pieces = [_codeable_text(sourced.medication_code),
              _codeable_text(sourced.resource.get("medicationCodeableConcept")),
              _codeable_text(sourced.medication_form)]
    for key in ("dosageInstruction", "dosage"):
        dosages = sourced.resource.get(key)
        for dosage in dosages if isinstance(dosages, list) else [dosages]:
            if isinstance(dosage, Mapping):
                pieces.append(_codeable_text(dosage.get("route")))
    tokens = set(re.findall(r"[a-z]+", " ".join(pieces).lower()))
    if not tokens & set(words.local_form_words):
        return None
    classes = content.term.classes
    return frozenset(cid for name in words.systemic_only_classes for cid in classes.get(name, ()))


def _codeable_text(codeable: Any) -> str:
    if not isinstance(codeable, Mapping):
        return ""
    pieces = [str(codeable.get("text") or "")]
    pieces += [str(c.get("display") or "") for c in codings_of(codeable)]
    return " ".join(pieces)


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
