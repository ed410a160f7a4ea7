"""FHIR date/dateTime/instant parsing. Values without a time zone are read as UTC (DESIGN.md)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime, timezone
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
