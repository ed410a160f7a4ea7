"""When a Condition began, for the recent-only conditions (v3 clinical basis, "Recent-only
conditions").

The onset decides whenever there is one: onsetDateTime (a partial date is a span), onsetPeriod,
or onsetAge / onsetRange converted with Patient.birthDate into [birth + age, birth + age + 1 unit)
(a Range: to high + 1 unit). Only a Condition with no onset[x], or only onsetString, falls back to
its recordedDate. An onsetAge without a birthDate, or no usable date at all, gives no onset: such
a Condition does not count where a date is needed (notice `onset-not-usable`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from ..fhir_time import Span, add_years_months, in_lookback, parse_span, period_span
from ..units import UnitTable
from .common import Content, Notice, number

ONSET_NOT_USABLE = "onset-not-usable"


@dataclass(frozen=True)
class Onset:
    """A usable onset: its span, and the date used with its source, as cards show it ("onset
    2026-11-20", "onset at age 12 (1982)", "recorded 2026-11-25 (no onset given)")."""

    span: Span
    text: str


def condition_onset(units: UnitTable, resource: Mapping[str, Any],
                    birth: date | None) -> Onset | None:
    """The Condition's onset as a span, or None when it has no usable date."""
    keys = [key for key in resource if key.startswith("onset")]
    if not keys or keys == ["onsetString"]:
        recorded = parse_span(resource.get("recordedDate"))
        if recorded is None:
            return None
        return Onset(recorded, f"recorded {_day(recorded.start)} (no onset given)")
    key = keys[0]
    value = resource[key]
    if key == "onsetDateTime":
        span = parse_span(value)
        text = f"onset {value}" if isinstance(value, str) and len(value) < 10 else None
    elif key == "onsetPeriod":
        span = period_span(value)
        text = None
    elif key == "onsetAge":
        span = _age_span(units, birth, value, value)
        text = f"onset at age {_age_text(value)}"
    elif key == "onsetRange" and isinstance(value, Mapping):
        span = _age_span(units, birth, value.get("low"), value.get("high"))
        text = f"onset at age {_age_text(value.get('low'))}-{_age_text(value.get('high'))}"
    else:
        span = None
    if span is None:
        return None
    if key in ("onsetAge", "onsetRange"):
        return Onset(span, f"{text} ({span.start.year})")
    if text is None:
        text = f"onset {_day(span.start)}" + (
            f" to {_day(span.end)}" if key == "onsetPeriod" and span.end is not None else "")
    return Onset(span, text)


def _day(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).date().isoformat()


def _age_text(age: Any) -> str:
    if not isinstance(age, Mapping):
        return "?"
    unit = age.get("unit") or age.get("code") or ""
    value = age.get("value")
    return f"{value}" if str(unit).lower() in ("a", "year", "years", "yr", "yrs") else \
        f"{value} {unit}"


def _age_span(units: UnitTable, birth: date | None, low: Any, high: Any) -> Span | None:
    """[birth + low, birth + high + 1 unit): the ages of the onset as instants (UTC)."""
    if birth is None:
        return None
    start = _after_birth(units, birth, low, 0) if low is not None else _midnight(birth)
    if start is None:
        return None
    if high is None:
        return Span(start, None, start)
    end = _after_birth(units, birth, high, 1)
    if end is None or end <= start:
        return None
    return Span(start, end - timedelta(microseconds=1), start)


def _after_birth(units: UnitTable, birth: date, age: Any, extra: int) -> datetime | None:
    """birth + age (+ `extra` units of the age's own unit), or None when the age is unusable."""
    if not isinstance(age, Mapping):
        return None
    amount = number(age.get("value"))
    unit = age.get("code") or age.get("unit")
    calendar_unit = units.age_units.get(str(unit).lower()) if isinstance(unit, str) else None
    if amount is None or amount < 0 or calendar_unit is None:
        return None
    if calendar_unit in ("years", "months"):
        if amount.denominator != 1:
            return None  # a fractional year or month has no calendar meaning
        whole = int(amount) + extra
        day = add_years_months(birth, years=whole if calendar_unit == "years" else 0,
                               months=whole if calendar_unit == "months" else 0)
        return _midnight(day)
    seconds = {"weeks": 604800, "days": 86400, "hours": 3600, "minutes": 60}[calendar_unit]
    return _midnight(birth) + timedelta(seconds=float((amount + extra) * seconds))


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=timezone.utc)


def recent_window(content: Content, concept: str) -> int | None:
    """The window (days) of a recent-only concept, or None for a concept of any date."""
    derived = content.ruleset.derived
    for window in derived.recent_only_windows:
        if concept in window.concepts:
            return window.days
    recent_only = derived.recent_only_conditions
    return recent_only.days if concept in recent_only.concepts else None


def recent_enough(content: Content, concept: str, onset: Onset | Span | datetime | None,
                  as_of: datetime) -> bool:
    """A recent-only concept counts only when its onset overlaps its window; others always."""
    days = recent_window(content, concept)
    if days is None:
        return True
    if onset is None:
        return False
    if isinstance(onset, datetime):
        onset = Span(onset, onset, onset)
    span = onset.span if isinstance(onset, Onset) else onset
    return in_lookback(span, as_of, days)


def onset_notices(content: Content, resource: Mapping[str, Any], concepts: list[str],
                  birth: date | None, reference: str) -> list[Notice]:
    """`onset-not-usable` for a recent-only Condition without a usable date."""
    recent = sorted(c for c in concepts if recent_window(content, c) is not None)
    if not recent or condition_onset(content.units, resource, birth) is not None:
        return []
    labels = ", ".join(content.term.concepts[c].label for c in recent)
    why = ("an onset age without the patient's birth date"
           if any(k in resource for k in ("onsetAge", "onsetRange")) and birth is None
           else "no usable onset or recorded date")
    return [Notice(ONSET_NOT_USABLE, reference,
                   f"{labels} Condition {reference} has {why}; it counts only when recent, so it "
                   "was not used")]
