"""Clinician-facing terminal summary (rich): one block per patient, most severe first."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console, Group
from rich.panel import Panel
from rich.text import Text

from .assessment import Assessment
from .presentation import evidence_line, most_severe_first
from .record_text import terminal_text

STYLE = {"critical": "bold white on red", "warning": "bold black on yellow", "info": "bold cyan"}
BORDER = {"critical": "red", "warning": "yellow", "info": "cyan", None: "green"}


def _text(text: str, style: str = "") -> Text:
    """Record text for the terminal: `Text` never reads markup; control characters go."""
    return Text(terminal_text(text), style=style)


def render_assessment(assessment: Assessment) -> Panel:
    patient = assessment.patient
    who = [patient.reference]
    if patient.age is not None:
        who.append(f"{patient.age} y")
    if patient.sex:
        who.append(patient.sex)
    presenting = ", ".join(assessment.presentation) or "no recorded presentation"
    parts: list[Text] = [_text(f"Presents with: {presenting}   (as of {assessment.as_of})",
                               "dim")]
    if not assessment.findings:
        parts.append(Text("No findings.", style="green"))
    for finding in assessment.findings:
        line = Text()
        line.append(f" {finding.severity.upper()} ", style=STYLE[finding.severity])
        line.append(f" {terminal_text(finding.summary)}")
        line.append(f"  [{finding.rule_id}]", style="dim")
        parts.append(line)
        # every severity: the benign card's safety net is one of its recommendations
        for recommendation in finding.recommendations:
            parts.append(_text(f"     • {recommendation}"))
        for item in finding.evidence:
            parts.append(_text(f"     {evidence_line(item)}", "dim"))
        cited = ", ".join(dict.fromkeys(e.reference for e in finding.evidence))
        if cited:
            parts.append(_text(f"     evidence: {cited}", "dim"))
    if assessment.checked is not None:
        parts.append(_text(assessment.checked.text, "dim"))
    for notice in assessment.notices:
        parts.append(_text(f"data quality: {notice.message}", "italic dim"))
    return Panel(Group(*parts), title=_text(" · ".join(who)), title_align="left",
                 border_style=BORDER[assessment.highest_severity])


def print_summary(assessments: Sequence[Assessment], console: Console) -> None:
    for assessment in most_severe_first(assessments):
        console.print(render_assessment(assessment))


FILE_WIDTH = 110  # columns when the summary goes to a file rather than a terminal


def write_summary(assessments: Sequence[Assessment], out: Path | None) -> None:
    """The summary on standard output (as wide as the terminal), or in a file."""
    if out is None:
        print_summary(assessments, Console())
        return
    with out.open("w", encoding="utf-8") as handle:
        print_summary(assessments, Console(file=handle, width=FILE_WIDTH))
