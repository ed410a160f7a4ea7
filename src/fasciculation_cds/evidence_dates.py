"""What a Condition's evidence date is: its onset, an onset given as an age, or only the day it
was recorded.

A Condition without an onset is dated by its recordedDate (docs/clinical-basis.md, "Conditions
and signs"); evidence then says "recorded 2026-11-25 (no onset given)" rather than passing the
day of data entry off as an onset, and an onset given as an age says so: "onset at age 12
(1982)".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .assessment import RuleFinding
from .fhir_time import iso_day, parse_datetime
from .ingest import SourcedResource
from .normalize.common import reference_of


def _age(quantity: Any) -> str | None:
    if isinstance(quantity, Mapping) and isinstance(quantity.get("value"), (int, float)):
        value = quantity["value"]
        return str(int(value)) if float(value).is_integer() else str(value)
    return None


def condition_dates(resources: Sequence[SourcedResource]) -> dict[str, tuple[str, str | None]]:
    """Condition reference -> (how it is dated, the age or recorded day)."""
    out: dict[str, tuple[str, str | None]] = {}
    for sourced in resources:
        resource = sourced.resource
        if resource.get("resourceType") != "Condition":
            continue
        reference = reference_of(sourced)
        if "onsetDateTime" in resource or "onsetPeriod" in resource:
            out[reference] = ("onset", None)
        elif "onsetAge" in resource:
            out[reference] = ("onset-age", _age(resource["onsetAge"]))
        elif "onsetRange" in resource:
            onset = resource["onsetRange"]
            low = _age(onset.get("low")) if isinstance(onset, Mapping) else None
            high = _age(onset.get("high")) if isinstance(onset, Mapping) else None
            out[reference] = ("onset-age", f"{low or '?'}-{high or '?'}")
        else:
            recorded = parse_datetime(resource.get("recordedDate"))
            if recorded is not None:
                out[reference] = ("recorded", iso_day(recorded))
    return out


def mark_condition_dates(findings: Sequence[RuleFinding],
                         resources: Sequence[SourcedResource]) -> list[RuleFinding]:
    """The findings with `dated_by` (and `onset_age`) on evidence dated by a Condition."""
    dates = condition_dates(resources)
    if not dates:
        return list(findings)
    out = []
    for finding in findings:
        evidence = []
        for item in finding.evidence:
            kind, detail = dates.get(item.reference, ("", None))
            if not item.effective or not kind or (kind == "recorded" and detail != item.effective):
                evidence.append(item)
                continue
            update: dict[str, Any] = {"dated_by": kind}
            if kind == "onset-age":
                update["onset_age"] = detail
            evidence.append(item.model_copy(update=update))
        out.append(finding.model_copy(update={"evidence": evidence}))
    return out
