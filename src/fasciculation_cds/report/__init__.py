"""Clinician-facing summaries of Assessments: HTML pages (with an index), a Markdown note,
the terminal view, and FHIR DetectedIssue / GuidanceResponse resources."""

from .render import (
    render_document,
    render_fhir,
    render_html,
    render_index,
    render_markdown,
    write_reports,
)

__all__ = ["render_document", "render_fhir", "render_html", "render_index", "render_markdown",
           "write_reports"]
