"""Clinician-facing terminal summary (rich): one block per patient, most severe first."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console, Group
from rich.panel import Panel
from rich.text import Text

from .assessment import Assessment
from .presentation import most_severe_first

STYLE = {"critical": "bold white on red", "warning": "bold black on yellow", "info": "bold cyan"}
BORDER = {"critical": "red", "warning": "yellow", "info": "cyan", None: "green"}


def render_assessment(assessment: Assessment) -> Panel:
    patient = assessment.patient
    who = [patient.reference]
    if patient.age is not None:
        who.append(f"{patient.age} y")
    if patient.sex:
        who.append(patient.sex)
    presenting = ", ".join(assessment.presentation) or "no recorded presentation"
    parts: list[Text] = [Text(f"Presents with: {presenting}   (as of {assessment.as_of})",
                              style="dim")]
    if not assessment.findings:
        parts.append(Text("No findings.", style="green"))
    for finding in assessment.findings:
        line = Text()
        line.append(f" {finding.severity.upper()} ", style=STYLE[finding.severity])
        line.append(f" {finding.summary}")
        line.append(f"  [{finding.rule_id}]", style="dim")
        parts.append(line)
        if finding.severity != "info":
            for recommendation in finding.recommendations:
                parts.append(Text(f"     • {recommendation}"))
        # lab values as every output shows them (the lab's unit, the canonical one beside)
        for item in finding.evidence:
            if item.shown:
                when = f" on {item.effective}" if item.effective else ""
                parts.append(Text(f"     {item.label or item.concept}: {item.shown}{when}",
                                  style="dim"))
        cited = ", ".join(dict.fromkeys(e.reference for e in finding.evidence))
        if cited:
            parts.append(Text(f"     evidence: {cited}", style="dim"))
    for notice in assessment.notices:
        parts.append(Text(f"note: {notice.message}", style="italic dim"))
    return Panel(Group(*parts), title=" · ".join(who), title_align="left",
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
