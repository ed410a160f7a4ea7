"""Kidney facts the rules cannot compute from single results (v3 clinical basis
`metabolic.kidney-failure`, derived.yaml `kidney_by_egfr`, `established_conditions`).

From the eGFRs in the look-back, one per time (same-time ties decided by the code, then the lower
value), this derives a reading of `earlier_low_yields` -- an eGFR below the threshold at least
`chronic_days_apart` calendar days before a latest eGFR that is also below it, with none at or
above it strictly between -- and one of `before_fall_yields` -- the highest earlier eGFR that is
at least `fall_ratio` times the latest. Both carry the earlier result, so a card can name it.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from ..facts import Problem
from ..fhir_time import calendar_days
from ..terminology import MATCHED_BY_CODE
from ..units import parse_number
from .common import Content
from .conditions import Coded
from .labs import LabReading, same_time_rank

CONFIRMED_OR_ABSENT = frozenset({None, "confirmed"})


def kidney_readings(content: Content, readings: list[LabReading],
                    as_of: datetime) -> list[LabReading]:
    """The derived eGFR readings (none, one or two)."""
    spec = content.ruleset.derived.kidney_by_egfr
    if spec is None:
        return []
    series = _one_per_time(content, spec.concept, readings, as_of, spec.lookback_days)
    if not series:
        return []
    latest, earlier = series[-1], series[:-1]
    threshold = content.units.to_canonical(spec.concept, parse_number(spec.below.value),
                                           spec.below.unit)
    out: list[LabReading] = []
    if threshold is not None and latest.value < threshold:
        for lab in reversed(earlier):
            if lab.effective == latest.effective:
                continue
            if lab.value >= threshold:
                break  # an eGFR at or above the threshold lies between
            if calendar_days(lab.effective, latest.effective) >= spec.chronic_days_apart:
                out.append(replace(lab, concept=spec.earlier_low_yields))
                break
    ratio = parse_number(spec.fall_ratio)
    higher = [lab for lab in earlier
              if lab.effective < latest.effective and lab.value >= ratio * latest.value]
    if higher:
        highest = max(higher, key=lambda lab: (lab.value, lab.effective.timestamp()))
        out.append(replace(highest, concept=spec.before_fall_yields))
    return out


def _one_per_time(content: Content, concept: str, readings: list[LabReading],
                  as_of: datetime, days: int) -> list[LabReading]:
    """The deciding reading of each time in the look-back, oldest first."""
    rank = same_time_rank(content, concept, readings)
    by_time: dict[datetime, LabReading] = {}
    for lab in readings:
        if lab.concept != concept or calendar_days(lab.until, as_of) > days:
            continue
        kept = by_time.get(lab.effective)
        if kept is None or (rank(lab), lab.value) < (rank(kept), kept.value):
            by_time[lab.effective] = lab
    return [by_time[t] for t in sorted(by_time)]


def established_conditions(content: Content, coded: list[Coded]) -> list[Problem]:
    """A derived Problem for each coded Condition that establishes its concept: matched by a
    code, verificationStatus confirmed or absent, not doubted by its own text."""
    out = []
    for yields, members in content.ruleset.derived.established_conditions.items():
        concept = content.term.concepts[yields]
        for fact in coded:
            if (isinstance(fact, Problem) and fact.concept in members
                    and fact.matched_by == MATCHED_BY_CODE
                    and fact.verification_status in CONFIRMED_OR_ABSENT
                    and fact.certainty == "asserted"):
                out.append(Problem(reference=fact.reference, concept=concept.id,
                                   label=concept.label, groups=concept.groups,
                                   clinical_status=fact.clinical_status,
                                   verification_status=fact.verification_status,
                                   onset=fact.onset, matched_by=f"derived from {fact.label}"))
    return out
