"""Which evidence dates are only the day a Condition was recorded, not when it began.

A Condition without an onset is dated by its recordedDate (docs/clinical-basis.md, "Conditions
and signs"); evidence then says "recorded on DATE (no onset given)" rather than passing the day
of data entry off as an onset.
"""

from __future__ import annotations

from collections.abc import Sequence

from .assessment import RuleFinding
from .fhir_time import iso_day, parse_datetime
from .ingest import SourcedResource
from .normalize.common import reference_of

ONSET_KEYS = ("onsetDateTime", "onsetPeriod", "onsetAge", "onsetRange")


def recorded_only(resources: Sequence[SourcedResource]) -> dict[str, str]:
    """Conditions with no onset but a recordedDate: reference -> that day."""
    out = {}
    for sourced in resources:
        resource = sourced.resource
        if resource.get("resourceType") != "Condition" or any(k in resource for k in ONSET_KEYS):
            continue
        recorded = parse_datetime(resource.get("recordedDate"))
        if recorded is not None:
            out[reference_of(sourced)] = iso_day(recorded)
    return out


def mark_recorded_dates(findings: Sequence[RuleFinding],
                        resources: Sequence[SourcedResource]) -> list[RuleFinding]:
    """The findings with `dated_by: recorded` on evidence dated by a recordedDate."""
    recorded = recorded_only(resources)
    if not recorded:
        return list(findings)
    out = []
    for finding in findings:
        evidence = [item.model_copy(update={"dated_by": "recorded"})
                    if item.effective and recorded.get(item.reference) == item.effective
                    else item for item in finding.evidence]
        out.append(finding.model_copy(update={"evidence": evidence}))
    return out
