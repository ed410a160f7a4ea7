"""Draft orders (context.draftOrders), read only for what the rules use.

EHRs send drafts as they stand in an order form, often not valid FHIR (the CDS Hooks sandbox
sends an R4 MedicationRequest whose `category` is an object, not a list). The rules read a
draft's id, subject and medication; nothing else is looked at, so a malformed field no rule
reads never fails a call. A request that is not shaped like a CDS Hooks order hook is a 400.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .prefetch import FHIR_ID, RequestProblemError

ORDER_TYPES = frozenset({"MedicationRequest", "MedicationStatement"})


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _coding(value: Any) -> dict[str, str] | None:
    if not isinstance(value, Mapping):
        return None
    kept = {k: v for k in ("system", "code", "display") if (v := _string(value.get(k)))}
    return kept or None


def _codeable(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, Mapping):
        return None
    codings = value.get("coding")
    kept: dict[str, Any] = {}
    if isinstance(codings, list):
        found = [c for c in (_coding(item) for item in codings) if c]
        if found:
            kept["coding"] = found
    if text := _string(value.get("text")):
        kept["text"] = text
    return kept or None


def _reference(value: Any) -> dict[str, str] | None:
    if not isinstance(value, Mapping):
        return None
    kept = {k: v for k in ("reference", "display") if (v := _string(value.get(k)))}
    return kept or None


def _medication_of(resource: Mapping[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    if codeable := _codeable(resource.get("medicationCodeableConcept")):
        kept["medicationCodeableConcept"] = codeable
    if reference := _reference(resource.get("medicationReference")):
        kept["medicationReference"] = reference
        contained = resource.get("contained")
        if isinstance(contained, list):
            medications = [{"resourceType": "Medication", "id": item["id"], "code": code}
                           for item in contained if isinstance(item, Mapping)
                           and item.get("resourceType") == "Medication"
                           and isinstance(item.get("id"), str)
                           and (code := _codeable(item.get("code")))]
            if medications:
                kept["contained"] = medications
    return kept


def read_draft_orders(context: Mapping[str, Any], hook: str, patient_id: str
                      ) -> list[dict[str, Any]]:
    """The medication drafts of an order hook, reduced to the fields the rules read."""
    if hook == "patient-view":
        return []
    bundle = context.get("draftOrders")
    if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
        raise RequestProblemError(f"{hook} needs context.draftOrders (a FHIR Bundle)")
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise RequestProblemError("context.draftOrders.entry must be a list")
    if hook == "order-select":
        selections = context.get("selections")
        if not isinstance(selections, list) or not all(isinstance(s, str) for s in selections):
            raise RequestProblemError("order-select needs context.selections (a list of ids)")
    drafts = []
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(resource, Mapping) or not isinstance(resource.get("resourceType"),
                                                                  str):
            raise RequestProblemError(f"context.draftOrders entry[{index}] has no resource")
        if resource["resourceType"] not in ORDER_TYPES:
            continue  # no rule reads other kinds of draft order
        rid = resource.get("id")
        if not isinstance(rid, str) or not FHIR_ID.match(rid):
            raise RequestProblemError(f"context.draftOrders entry[{index}] has no valid id")
        draft: dict[str, Any] = {"resourceType": resource["resourceType"], "id": rid,
                                 "status": "draft",
                                 "subject": {"reference": f"Patient/{patient_id}"}}
        drafts.append({**draft, **_medication_of(resource)})
    return drafts


def order_key(context: Mapping[str, Any], drafts: list[dict[str, Any]]) -> str:
    """What identifies "this order" across re-fires of an order hook: the selected drafts
    (order-select) or all drafts (order-sign)."""
    selections = context.get("selections")
    if isinstance(selections, list) and selections:
        return ",".join(sorted(str(s) for s in selections))
    return ",".join(sorted(f"{d['resourceType']}/{d['id']}" for d in drafts))
