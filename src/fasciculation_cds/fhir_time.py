"""FHIR date/dateTime/instant parsing. Values without a time zone are read as UTC (DESIGN.md)."""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

_PARTIAL = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")
# FHIR R4 dateTime / instant as the specification's regex writes them (a time needs a zone).
_FHIR_DATETIME = re.compile(
    r"^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|"
    r"3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|"
    r"1[0-3]):[0-5][0-9]|14:00)))?)?)?$")

# Top-level elements that carry when something happened, for `as_of=auto`.
TIME_FIELDS = ("effectiveDateTime", "effectiveInstant", "issued", "onsetDateTime",
                "recordedDate", "authoredOn", "occurrenceDateTime", "performedDateTime",
                "dateAsserted", "date")
PERIOD_FIELDS = ("effectivePeriod", "period", "performedPeriod", "onsetPeriod")


def parse_datetime(value: Any) -> datetime | None:
    """A timezone-aware datetime, or None when the value is not a FHIR date/dateTime."""
    if not isinstance(value, str) or not value:
        return None
    partial = _PARTIAL.match(value)
    if partial:
        year, month, day = partial.groups()
        try:
            return datetime(int(year), int(month or 1), int(day or 1), tzinfo=timezone.utc)
        except ValueError:
            return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Span:
    """When something happened (v3 clinical basis, Definitions "Time"): a dateTime is a point; a
    Period or a partial date (YYYY, YYYY-MM) is a span. `start` orders a partial date, `order`
    orders it among results ("latest": a Period by its end, else start); `end` is its last
    instant (None: runs to as_of)."""

    start: datetime
    end: datetime | None
    order: datetime

    def until(self, as_of: datetime) -> datetime:
        """The last instant of the span not after as_of (a window holds a span it overlaps)."""
        return as_of if self.end is None or self.end > as_of else self.end


def parse_span(value: Any) -> Span | None:
    """A FHIR date/dateTime as a span: a partial date covers its month or year."""
    start = parse_datetime(value)
    if start is None:
        return None
    partial = _PARTIAL.match(value)
    if partial and not partial.group(3):
        year, month = int(partial.group(1)), partial.group(2)
        if month is None:
            last = datetime(year, 12, 31, tzinfo=timezone.utc)
        else:
            last = datetime(year, int(month), calendar.monthrange(year, int(month))[1],
                            tzinfo=timezone.utc)
        return Span(start, last + timedelta(days=1) - timedelta(microseconds=1), start)
    return Span(start, start, start)


def period_span(period: Any) -> Span | None:
    """A FHIR Period as a span: no end runs on (to as_of); no start begins at its end."""
    if not isinstance(period, Mapping):
        return None
    start, end = parse_span(period.get("start")), parse_span(period.get("end"))
    if start is None and end is None:
        return None
    if end is None:
        assert start is not None
        return Span(start.start, None, start.start)
    first = start.start if start is not None else end.start
    return Span(first, end.end, end.start)


def utc_day(moment: datetime) -> date:
    return moment.astimezone(timezone.utc).date()


def calendar_days(earlier: datetime, later: datetime) -> int:
    """Whole UTC calendar days from `earlier` to `later` (v3 clinical basis "Time": a look-back of
    N days holds t when D - N <= the UTC date of t <= D)."""
    return (utc_day(later) - utc_day(earlier)).days


def in_lookback(span: Span, as_of: datetime, days: float) -> bool:
    """Whether a look-back of `days` whole calendar days before as_of holds (overlaps) the
    span; nothing that starts after as_of counts."""
    if span.start > as_of:
        return False
    return calendar_days(span.until(as_of), as_of) <= days


def add_years_months(day: date, years: int = 0, months: int = 0) -> date:
    """A calendar date plus whole years and months (29 February to 28 February)."""
    total = day.year * 12 + (day.month - 1) + years * 12 + months
    year, month = divmod(total, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return date(year, month + 1, min(day.day, last))


def birth_date(value: Any) -> date | None:
    """Patient.birthDate; a partial date counts as its last day (v3 clinical basis "Age")."""
    span = parse_span(value)
    if span is None or span.end is None:
        return None
    return utc_day(span.end)


def age_in_years(birth: date, on: date) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def parse_date(value: Any) -> date | None:
    parsed = parse_datetime(value)
    return parsed.date() if parsed else None


def parse_as_of(value: str | date | datetime | None) -> datetime:
    """The evaluation instant: a date means the end of that day (UTC); None means now."""
    if value is None:
        return datetime.now(timezone.utc)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, 23, 59, 59, tzinfo=timezone.utc)
    if _PARTIAL.match(value) and len(value) == 10:
        day = date.fromisoformat(value)
        return datetime(day.year, day.month, day.day, 23, 59, 59, tzinfo=timezone.utc)
    parsed = parse_datetime(value)
    if parsed is None:
        raise ValueError(f"not a date or date-time: {value!r} (use YYYY-MM-DD, ISO 8601 or auto)")
    return parsed


def latest_recorded_time(resource: Mapping[str, Any]) -> datetime | None:
    """The newest time a resource records at its top level (used by `as_of=auto`)."""
    times = [parse_datetime(resource.get(name)) for name in TIME_FIELDS]
    for name in PERIOD_FIELDS:
        period = resource.get(name)
        if isinstance(period, Mapping):
            times += [parse_datetime(period.get("end")), parse_datetime(period.get("start"))]
    known = [t for t in times if t is not None]
    return max(known) if known else None


def parse_valid_datetime(value: Any) -> datetime | None:
    """As `parse_datetime`, for a value that is a valid FHIR R4 dateTime only."""
    if not isinstance(value, str) or _FHIR_DATETIME.match(value) is None:
        return None
    return parse_datetime(value)


def valid_times(resource: Mapping[str, Any]) -> list[datetime]:
    """The times a resource records at its top level (as `latest_recorded_time` reads them),
    valid FHIR dateTimes only: `as_of=auto` takes "now" from these (an Encounter ending
    "99991231" is no time at all)."""
    times = [parse_valid_datetime(resource.get(name)) for name in TIME_FIELDS]
    for name in PERIOD_FIELDS:
        period = resource.get(name)
        if isinstance(period, Mapping):
            times += [parse_valid_datetime(period.get("end")),
                      parse_valid_datetime(period.get("start"))]
    return [t for t in times if t is not None]


def iso_day(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).date().isoformat()


def iso_instant(moment: datetime) -> str:
    """Whole seconds in UTC with Z, for stable output."""
    return moment.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace(
        "+00:00", "Z")
