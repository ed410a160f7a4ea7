"""What every output shows the same way: the order of findings and patients, and the system that
names rule ids in FHIR resources and CDS Hooks cards.

JSON, terminal text, Markdown, HTML, FHIR and cards all put the most severe first and, within a
severity, follow the clinical priority of rules/presentation.yaml (`headline_order`, the v3
"Presentation of findings"); keeping the order in one place means a change to it cannot make two
outputs disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from .rule_schema import SEVERITY_RANK

if TYPE_CHECKING:
    from .assessment import Assessment, Evidence

# The code system of rule ids (DetectedIssue.code, GuidanceResponse.moduleUri, card topics).
RULES_SYSTEM = "https://fasciculation-cds.dev/rules"


class _Ranked(Protocol):
    @property
    def severity(self) -> str: ...

    @property
    def rule_id(self) -> str: ...


F = TypeVar("F", bound=_Ranked)


def severity_rank(severity: str | None) -> int:
    """1 info, 2 warning, 3 critical; 0 for no finding at all."""
    return SEVERITY_RANK.get(severity or "", 0)


Priority = Mapping[str, int]
"""A rule id's place in the headline order (0 first); see `priority_of`."""


def priority_of(order: Sequence[str]) -> Priority:
    return {rule_id: index for index, rule_id in enumerate(order)}


def finding_order(finding: _Ranked, priority: Priority | None = None) -> tuple[int, int, str]:
    """Sort key: most severe first, then by clinical priority (a rule not placed goes last),
    then by rule id."""
    place = (priority or {}).get(finding.rule_id, len(priority or {}))
    return -severity_rank(finding.severity), place, finding.rule_id


def order_findings(findings: Iterable[F], priority: Priority | None = None) -> list[F]:
    return sorted(findings, key=lambda finding: finding_order(finding, priority))


def patient_order(assessment: Assessment) -> tuple[int, str]:
    """Sort key: the patient with the most severe finding first, then by patient reference."""
    return -severity_rank(assessment.highest_severity), assessment.patient.reference


def most_severe_first(assessments: Iterable[Assessment]) -> list[Assessment]:
    return sorted(assessments, key=patient_order)


# How a problem, sign or drug was read from the record, as evidence says it.
MATCHED_BY_WORDS = {
    "code": "coded",
    "code-prefix": "coded (code group)",
    "text": "read from the record's text",
    "ingredient-name-fallback": "read from the drug's name in its display",
}
CERTAINTY_WORDS = {"uncertain": "uncertain in the record", "unclear": "unclear in the record"}


def matched_words(matched_by: str | None) -> str | None:
    if matched_by is None:
        return None
    return MATCHED_BY_WORDS.get(matched_by, matched_by)


def evidence_value(item: Evidence, with_date: bool = True) -> str:
    """What an evidence item is, never only a label and a date: the lab value as sent (and
    what it is), the drug as the record names it and its status, or a problem or sign with
    the record's own words, how it was read and any doubt; then its date."""
    parts: list[str] = []
    if item.shown or item.reported:
        parts.append(item.shown or item.reported or "")
    elif item.display:
        parts.append(item.display)
    if item.quote:
        parts.append(f"“{item.quote}”")
    how = matched_words(item.matched_by)
    if how and not (item.shown or item.reported):
        parts.append(how)
    if item.certainty:
        parts.append(CERTAINTY_WORDS.get(item.certainty, item.certainty))
    if item.status and not (item.shown or item.reported):
        parts.append(item.status)
    text = "; ".join(p for p in parts if p) or "recorded"
    if item.effective and with_date:
        text += f" ({date_text(item)})"
    return text


def date_text(item: Evidence) -> str:
    """The date and its source: `2026-11-20` (a result), `onset 2026-11-20`, `onset at age 12
    (1982)`, or `recorded 2026-11-25 (no onset given)`."""
    day = item.effective or ""
    if item.dated_by == "recorded":
        return f"recorded {day} (no onset given)"
    if item.dated_by == "onset-age":
        return f"onset at age {item.onset_age or '?'} ({day[:4]})"
    if item.dated_by == "onset":
        return f"onset {day}"
    return day


def evidence_line(item: Evidence) -> str:
    """`Label: what it is (date)`, the one evidence line of the terminal, Markdown and cards."""
    return f"{item.label or item.concept}: {evidence_value(item)}"
