"""The coverage report of an input: resources by outcome, and the table of what was not
understood, sorted by patients affected (text, CSV, JSON). docs/coverage.md."""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .assessment import Assessment
from .coverage import OUTCOMES, Accountant, PatientCoverage
from .ingest import IngestResult
from .unrecognized import CodingKey

COLUMNS = ("patients", "resources", "reason", "resource_type", "element", "system", "code",
           "display", "looks_like")


@dataclass
class CoverageReport:
    """Counts over any number of patients (and of the resources that belong to none)."""

    patients: int = 0
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(resource type, outcome) -> resources."""
    reasons: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(outcome, reason) -> resources, for the outcomes that have a reason."""
    resources: Counter[CodingKey] = field(default_factory=Counter)
    affected: dict[CodingKey, set[str]] = field(default_factory=dict)

    def add(self, coverage: PatientCoverage) -> None:
        if coverage.reference is not None:
            self.patients += 1
        for accounted in coverage.accounted:
            self.outcomes[(accounted.seen.resource_type, accounted.outcome)] += 1
            if accounted.reason:
                self.reasons[(accounted.outcome, accounted.reason)] += 1
        for key, count in coverage.codings.items():
            self.resources[key] += count
            if coverage.reference is not None:
                self.affected.setdefault(key, set()).add(coverage.reference)

    def totals(self) -> dict[str, int]:
        """Resources of read types: read, then by outcome (and unrecognized resources split)."""
        by_outcome = Counter[str]()
        for (_, outcome), count in self.outcomes.items():
            by_outcome[outcome] += count
        return {"read": sum(by_outcome.values()),
                **{outcome: by_outcome[outcome] for outcome in OUTCOMES}}

    def rows(self) -> list[dict[str, Any]]:
        """One row per coding, most patients first (then most resources)."""
        rows = [{"patients": len(self.affected.get(key, ())), "resources": count,
                 **{name: getattr(key, name) for name in COLUMNS[2:]}}
                for key, count in self.resources.items()]
        rows.sort(key=lambda r: (-r["patients"], -r["resources"],
                                 *(str(r[c] or "") for c in COLUMNS[2:])))
        return rows

    def to_json_dict(self) -> dict[str, Any]:
        by_type: dict[str, dict[str, int]] = {}
        for (resource_type, outcome), count in sorted(self.outcomes.items()):
            by_type.setdefault(resource_type, {})[outcome] = count
        reasons: dict[str, dict[str, int]] = {}
        for (outcome, reason), count in sorted(self.reasons.items()):
            reasons.setdefault(outcome, {})[reason] = count
        return {"patients": self.patients, "resources": self.totals(), "by_type": by_type,
                "reasons": reasons, "codings": self.rows()}


def accounted(accountant: Accountant, result: IngestResult,
              outcomes: Iterable[Any]) -> Iterator[tuple[Any, PatientCoverage | None]]:
    """Each outcome with its patient's coverage; last, the coverage of resources of no patient
    (as `(None, coverage)`), if there are any."""
    kept = list(outcomes)
    assessments: dict[str, Assessment | None] = {r.reference: None for r in result.patients}
    for outcome in kept:
        if isinstance(outcome, Assessment):
            assessments[outcome.patient.reference] = outcome
    by_patient = accountant.account(result, assessments)
    for outcome in kept:
        reference = (outcome.patient.reference if isinstance(outcome, Assessment)
                     else getattr(outcome, "patient", None))
        yield outcome, by_patient.pop(reference, None) if isinstance(reference, str) else None
    for coverage in by_patient.values():
        yield None, coverage


def with_section(outcome: Any, coverage: PatientCoverage | None) -> Any:
    """An Assessment with its `unrecognized` section; any other outcome as it is."""
    if not isinstance(outcome, Assessment):
        return outcome
    section = coverage.section() if coverage is not None else []
    updated = outcome.model_copy(update={"unrecognized": section})
    updated._facts = outcome._facts
    return updated


def render(report: CoverageReport, fmt: str,
           limit: int | None = None) -> str:
    rows = report.rows()[:limit] if limit else report.rows()
    if fmt == "json":
        import orjson

        data = report.to_json_dict()
        data["codings"] = rows
        return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()
    return _text(report, rows)


def _text(report: CoverageReport, rows: Sequence[Mapping[str, Any]]) -> str:
    totals = report.totals()
    lines = [f"{report.patients} patients; resources of the types the rules read: "
             + ", ".join(f"{name} {count}" for name, count in totals.items())]
    for (outcome, reason), count in sorted(report.reasons.items()):
        lines.append(f"  {outcome}: {reason} {count}")
    lines.append("")
    header = ("patients", "resources", "reason", "type.element", "system|code", "display",
              "looks like")
    table = [header]
    for row in rows:
        table.append((str(row["patients"]), str(row["resources"]), row["reason"],
                      f"{row['resource_type']}.{row['element']}",
                      f"{row['system'] or '-'}|{row['code'] or '-'}",
                      _clip(row["display"] or "-"), row["looks_like"] or ""))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for row_cells in table:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row_cells, widths, strict=True))
                     .rstrip())
    return "\n".join(lines) + "\n"


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"
