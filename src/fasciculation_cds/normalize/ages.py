"""How old a problem or finding is, in whole UTC calendar days (docs/clinical-basis.md, v3
"Time"), so a rule can limit it with `max_age_days` like a lab result (lifestyle contributors:
365 days)."""

from __future__ import annotations

from datetime import datetime, timezone

from .conditions import Coded


def with_ages(coded: list[Coded], as_of: datetime) -> list[Coded]:
    """Each fact with `age_days` from its date (a Problem's onset, else recordedDate; a
    Finding's effective time); an undated fact keeps None and fails every look-back."""
    day = as_of.astimezone(timezone.utc).date()
    out: list[Coded] = []
    for fact in coded:
        when = getattr(fact, "onset", None) or getattr(fact, "effective", None)
        if when is not None:
            age = float((day - when.astimezone(timezone.utc).date()).days)
            fact = fact.model_copy(update={"age_days": age})
        out.append(fact)
    return out
