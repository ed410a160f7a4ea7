"""Rendering summaries from the view. Jinja2 with autoescaping for HTML: every value that came
from a record is untrusted text."""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from fhir.resources.R4B.bundle import Bundle
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markdown_it import MarkdownIt
from markupsafe import Markup

from ..assessment import Assessment, RuleFinding
from ..facts import Medication
from ..presentation import (
    RULES_SYSTEM,
    date_text,
    evidence_line,
    evidence_value,
    patient_order,
    severity_rank,
)
from ..record_text import CONTROL, markdown_text, plain
from ..ruleset import RuleSet
from .charts import plot
from .view import PatientView, build_view

TEMPLATES = Path(__file__).parent / "templates"
_HTML = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True,
                    undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                    finalize=lambda value: _html_text(value))
# A detail's Markdown: raw HTML stays escaped, and no link or image is made at all (rule details
# have none; record text in them is escaped already, this holds even if it were not)
_CONTROL_FREE = functools.partial(CONTROL.sub, "")
_MARKDOWN = MarkdownIt("commonmark", {"html": False}).disable(["link", "image", "autolink"])
_HTML.filters["markdown"] = lambda text: Markup(_MARKDOWN.render(_CONTROL_FREE(str(text))))
_HTML.filters["evidence_value"] = evidence_value
_HTML.filters["date_text"] = date_text
# The Markdown note: every value written into it is escaped as Markdown text (record text
# never becomes a link, image or HTML; our own text renders the same either way)
_TEXT = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=False,
                    undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                    finalize=lambda value: markdown_text(value) if isinstance(value, str)
                    else value)
_TEXT.filters["evidence_line"] = evidence_line
_TEXT.filters["capitalize_first"] = lambda text: str(text)[:1].upper() + str(text)[1:]


def _html_text(value: Any) -> Any:
    """Text for the page without control characters (escape sequences, bidi overrides) before
    autoescaping; rendered Markdown (Markup) is built from text already made plain."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return plain(value)
    return value


FHIR_SEVERITY = {"critical": "high", "warning": "moderate", "info": "low"}
_LOCAL_REFERENCE = re.compile(r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")


def render_html(assessment: Assessment, ruleset: RuleSet) -> str:
    """One self-contained page (inline CSS and SVG, no scripts, no network)."""
    view = build_view(assessment, ruleset)
    charts = [(series, plot(series)) for series in view.series]
    return _HTML.get_template("patient.html.j2").render(a=assessment, v=view, charts=charts)


def render_index(views: Sequence[tuple[PatientView, str]]) -> str:
    return _HTML.get_template("index.html.j2").render(rows=list(views), rank=severity_rank)


def render_markdown(assessment: Assessment) -> str:
    """A short note a clinician could paste into the chart."""
    flagged = sorted({f"{m.display or m.label}" for m in assessment.facts
                      if isinstance(m, Medication) and any(
                          e.reference == m.reference for f in assessment.findings
                          for e in f.evidence)})
    text = _TEXT.get_template("note.md.j2").render(a=assessment, meds=flagged)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def render_fhir(assessment: Assessment) -> dict[str, Any]:
    """A Bundle: one DetectedIssue per finding and a GuidanceResponse with the rules version,
    validated with fhir.resources before it is returned."""
    patient = {"reference": assessment.patient.reference}
    entries: list[dict[str, Any]] = []
    for index, finding in enumerate(assessment.findings, start=1):
        implicated = sorted({e.reference for e in finding.evidence
                             if _LOCAL_REFERENCE.match(e.reference)})
        issue: dict[str, Any] = {
            "resourceType": "DetectedIssue", "id": f"finding-{index}", "status": "final",
            "code": {"coding": [{"system": RULES_SYSTEM, "code": finding.rule_id,
                                 "display": finding.title}], "text": finding.title},
            "severity": FHIR_SEVERITY[finding.severity], "patient": patient,
            "identifiedDateTime": assessment.as_of,
            "text": {"status": "generated", "div": _narrative(finding)},
            "detail": f"{finding.summary}\n\n{finding.detail}",
            "mitigation": [{"action": {"text": r}} for r in finding.recommendations],
        }
        if implicated:
            issue["implicated"] = [{"reference": r} for r in implicated]
        entries.append(issue)
    guidance = {
        "resourceType": "GuidanceResponse", "id": "guidance", "status": "success",
        "moduleUri": RULES_SYSTEM, "subject": patient,
        "occurrenceDateTime": assessment.as_of,
        "identifier": [{"system": f"{RULES_SYSTEM}/version", "value": assessment.rules_version}],
        "note": [{"text": f"{len(assessment.findings)} finding(s); decision support, not a "
                          "diagnosis."}],
    }
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"fullUrl": f"urn:fasciculation-cds:{r['id']}", "resource": r}
                        for r in [guidance, *entries]]}
    Bundle.model_validate(bundle)
    return bundle


def _narrative(finding: RuleFinding) -> str:
    """The DetectedIssue's XHTML narrative: every piece escaped, no control character (invalid
    in XML even when escaped)."""
    def text(value: str) -> str:
        return html.escape(plain(value), quote=True)

    items = "".join(f"<li>{text(r)}</li>" for r in finding.recommendations)
    evidence = "".join(f"<li>{text(evidence_line(e))} ({text(e.reference)})</li>"
                       for e in finding.evidence)
    return (f'<div xmlns="http://www.w3.org/1999/xhtml"><p><b>{text(finding.title)}</b>: '
            f"{text(finding.summary)}</p>"
            + (f"<p>Evidence</p><ul>{evidence}</ul>" if evidence else "")
            + f"<p>Recommended</p><ul>{items}</ul></div>")


def _slug(reference: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", reference).strip("-")


def render_document(assessments: Sequence[Assessment], ruleset: RuleSet, fmt: str) -> bytes:
    """Every patient in one document: Markdown notes between rules, a FHIR Bundle (a JSON array
    of them for several patients), or the HTML page of a single patient."""
    if fmt == "markdown":
        return "\n---\n\n".join(render_markdown(a) for a in assessments).encode()
    if fmt == "fhir":
        bundles = [render_fhir(a) for a in assessments]
        payload = bundles[0] if len(bundles) == 1 else bundles
        return orjson.dumps(payload, option=orjson.OPT_INDENT_2) + b"\n"
    if fmt == "html":
        if len(assessments) != 1:
            raise ValueError("an HTML page holds one patient; write several to a folder")
        return render_html(assessments[0], ruleset).encode()
    raise ValueError(f"unknown report format {fmt!r}")


def write_reports(assessments: Sequence[Assessment], ruleset: RuleSet, fmt: str,
                  out: Path) -> list[Path]:
    """Write the report to `out`; returns what was written.

    HTML for several patients, or to a path without a suffix, is a folder: one page per patient
    plus `index.html`, most severe first. Every other case is one file (`render_document`).
    """
    if fmt == "html" and (len(assessments) > 1 or out.suffix == ""):
        out.mkdir(parents=True, exist_ok=True)
        rows = []
        written: list[Path] = []
        for assessment in assessments:
            name = f"{_slug(assessment.patient.reference)}.html"
            (out / name).write_text(render_html(assessment, ruleset), encoding="utf-8")
            written.append(out / name)
            rows.append((build_view(assessment, ruleset), name))
        rows.sort(key=lambda row: patient_order(row[0].assessment))
        index = out / "index.html"
        index.write_text(render_index(rows), encoding="utf-8")
        return [index, *written]
    out.write_bytes(render_document(assessments, ruleset, fmt))
    return [out]
