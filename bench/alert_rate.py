#!/usr/bin/env python3
"""How often the rule set alerts on real populations, under screening (every patient treated as
presenting, each patient's own newest recorded time as `as_of`).

    python bench/alert_rate.py [--data DIR] [--out docs/alert-rate-tables.md] [--json FILE]

Each population is a folder of the test data (tests/data, or the fuller corpus named with
--data). Per population: patients, the share whose highest finding is warning or critical, the
share with info findings only; per rule, the patients it reaches at warning or critical and at
info. Deterministic: the same data and rules give the same tables.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fasciculation_cds import evaluate_each, load_rules
from fasciculation_cds.assessment import Assessment

REPO = Path(__file__).resolve().parents[1]
POPULATIONS = (
    ("Synthea v2.5.0 bundles", "synthea"),
    ("Bulk Data: pathling 9 patients", "ndjson/pathling-9-patients"),
    ("Bulk Data: sample 10 patients", "ndjson/sample-bulk-10-patients"),
    ("Bulk Data: cumulus-etl", "ndjson/cumulus-etl-simple"),
    ("HL7 R4 examples", "hl7-examples"),
    ("Older Synthea (SMART R4 sample)", "real-world/gsd-r4-synthea"),
    ("eCQM QI-Core test patients", "real-world/ecqm"),
    ("US Core examples", "real-world/uscore-examples"),
    ("FHIR-Converter (C-CDA)", "real-world/msconv-ccda"),
    ("Inferno payer record", "real-world/inferno-ref"),
    ("Inferno Bulk export (HAPI)", "real-world/inferno-bulk"),
    ("VA lab response", "real-world/va-mhv"),
)


@dataclass
class Rate:
    name: str
    folder: str
    patients: int = 0
    errors: int = 0
    warning_plus: int = 0
    info_only: int = 0
    partial: int = 0
    by_rule: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, assessment: Assessment) -> None:
        self.patients += 1
        self.partial += bool(assessment.partial)
        highest = assessment.highest_severity
        if highest in ("warning", "critical"):
            self.warning_plus += 1
        elif highest == "info":
            self.info_only += 1
        for finding in assessment.findings:
            level = "warning+" if finding.severity in ("warning", "critical") else "info"
            self.by_rule.setdefault(finding.rule_id, Counter())[level] += 1


def measure(data: Path) -> list[Rate]:
    rules = load_rules()
    rates = []
    for name, folder in POPULATIONS:
        path = data / folder
        if not path.exists():
            continue
        rate = Rate(name, folder)
        for outcome in evaluate_each(path, as_of="auto", assume_presentation=True, rules=rules):
            if isinstance(outcome, Assessment):
                rate.add(outcome)
            else:
                rate.errors += 1
        rates.append(rate)
    return rates


def _share(count: int, total: int) -> str:
    return f"{count} ({100 * count / total:.1f} %)" if total else "—"


def markdown(rates: list[Rate]) -> str:
    lines = ["| population | patients | error rows | partial | warning or critical | "
             "info only |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rates:
        lines.append(f"| {r.name} (`{r.folder}`) | {r.patients} | {r.errors} | {r.partial} | "
                     f"{_share(r.warning_plus, r.patients)} | {_share(r.info_only, r.patients)} |")
    rules = sorted({rule for r in rates for rule in r.by_rule})
    lines += ["", "Per rule: patients with the finding at warning or critical / at info "
              "(shares of each population).", "",
              "| rule | " + " | ".join(r.folder for r in rates) + " |",
              "| --- | " + " | ".join("---" for _ in rates) + " |"]
    for rule in rules:
        cells = []
        for r in rates:
            counts = r.by_rule.get(rule, Counter())
            if not counts:
                cells.append("·")
                continue
            cells.append(" / ".join(
                f"{counts[level]} ({100 * counts[level] / r.patients:.0f} %)"
                if counts[level] else "0" for level in ("warning+", "info")))
        lines.append(f"| `{rule}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "tests" / "data")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rates = measure(args.data)
    text = markdown(rates)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    if args.json:
        args.json.write_text(json.dumps([{**r.__dict__, "by_rule": {
            k: dict(v) for k, v in sorted(r.by_rule.items())}} for r in rates], indent=2) + "\n")


if __name__ == "__main__":
    main()
