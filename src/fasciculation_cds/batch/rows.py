"""The rows a batch run writes, and their declared Arrow schemas (docs/batch.md)."""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa

from ..assessment import Assessment
from ..evaluate import PatientError


def _strings() -> pa.DataType:
    # "element" is the Parquet list convention Spark writes too, so both engines match exactly
    return pa.list_(pa.field("element", pa.string()))


ASSESSMENTS_SCHEMA = pa.schema([
    pa.field("patient", pa.string()),
    pa.field("as_of", pa.string()),
    pa.field("status", pa.string()),
    pa.field("error", pa.string()),
    pa.field("highest_severity", pa.string()),
    pa.field("rule_ids", _strings()),
    pa.field("presentation", _strings()),
    pa.field("notices", pa.int32()),
    pa.field("checked", pa.string()),
    pa.field("checked_missing", _strings()),
    pa.field("rules_version", pa.string()),
    pa.field("assessment", pa.string()),
])

FINDINGS_SCHEMA = pa.schema([
    pa.field("patient", pa.string()),
    pa.field("status", pa.string()),
    pa.field("rule_id", pa.string()),
    pa.field("category", pa.string()),
    pa.field("severity", pa.string()),
    pa.field("summary", pa.string()),
    pa.field("evidence", _strings()),
])

Row = dict[str, Any]


def assessment_row(outcome: Assessment | PatientError, as_of: str, rules_version: str) -> Row:
    if isinstance(outcome, PatientError):
        return {"patient": outcome.patient, "as_of": as_of, "status": "error",
                "error": outcome.message, "highest_severity": None, "rule_ids": [],
                "presentation": [], "notices": 0, "checked": None, "checked_missing": [],
                "rules_version": rules_version, "assessment": None}
    checked = outcome.checked
    return {"patient": outcome.patient.reference, "as_of": outcome.as_of, "status": "ok",
            "error": None, "highest_severity": outcome.highest_severity,
            "rule_ids": [f.rule_id for f in outcome.findings],
            "presentation": list(outcome.presentation), "notices": len(outcome.notices),
            "checked": checked.text if checked else None,
            # the analytes the rules read that had no counting result in their look-back
            "checked_missing": [a.concept for a in checked.analytes if a.state != "value"]
            if checked else [],
            "rules_version": outcome.rules_version,
            "assessment": orjson.dumps(outcome.to_json_dict()).decode()}


def finding_rows(outcome: Assessment | PatientError) -> list[Row]:
    if isinstance(outcome, PatientError):
        return []
    return [{"patient": outcome.patient.reference, "status": "ok", "rule_id": f.rule_id,
             "category": f.category, "severity": f.severity, "summary": f.summary,
             "evidence": [e.reference for e in f.evidence]} for f in outcome.findings]


def sort_key(row: Row) -> tuple[str, str]:
    return (str(row.get("patient") or ""), str(row.get("rule_id") or ""))


def incomplete_note(problems: list[str]) -> str | None:
    """Why every `ok` row of a run with input problems is `partial` instead, or None.

    Which lines a damaged file held is unknown (a Bulk Data file mixes patients), so any
    patient's data could have been in it: every patient of the run is affected.
    """
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more, see problems.ndjson)" if len(problems) > 1 else ""
    return (f"incomplete input: {problems[0]}{more}; any patient's data could have been in "
            "what was not read")


def mark_partial(rows: list[Row], note: str | None) -> list[Row]:
    """`ok` rows become `partial`, with `note` in `error` (assessments rows only)."""
    if note is None:
        return rows
    for row in rows:
        if row.get("status") == "ok":
            row["status"] = "partial"
            if "error" in row:
                row["error"] = note
    return rows
