"""Evaluate one shard: the resources of a set of whole patients, with the package's evaluation."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..assessment import Assessment
from ..evaluate import AsOf, Outcome, PatientError, assess_all, new_grouper
from ..ruleset import RuleSet, load_rules
from .outputs import write_part
from .partition import decode_line, medication_files, shard_files, shard_name
from .rows import assessment_row, finding_rows


@dataclass(frozen=True)
class Settings:
    rules_dir: str | None
    as_of: AsOf | Literal["auto"]
    as_of_label: str
    assume_presentation: bool
    strict: bool
    output_format: str


@dataclass
class ShardResult:
    shard: str
    patients: int = 0
    errors: int = 0
    severities: Counter[str] = field(default_factory=Counter)
    rules: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def read_lines(paths: list[Path]) -> list[Any]:
    raws = []
    for path in paths:
        with path.open("rb") as handle:
            raws += [decode_line(line)[1] for line in handle if line.strip()]
    return raws


def evaluate_group(raws: list[Any], medications: list[Any], ruleset: RuleSet,
                   settings: Settings) -> list[Outcome]:
    """Outcomes for the resources of whole patients (the unit both engines evaluate)."""
    grouper = new_grouper(ruleset, settings.as_of, strict=settings.strict)
    for raw in medications:
        grouper.add(raw)
    for raw in raws:
        grouper.add(raw)
    return list(assess_all(grouper.finish(), ruleset, settings.as_of,
                           assume_presentation=settings.assume_presentation))


def summarize(outcomes: list[Outcome], result: ShardResult) -> None:
    for outcome in outcomes:
        if isinstance(outcome, PatientError) and outcome.patient is None:
            result.problems.append(outcome.message)
            continue
        result.patients += 1
        if isinstance(outcome, PatientError):
            result.errors += 1
        elif isinstance(outcome, Assessment):
            result.severities[outcome.highest_severity or "none"] += 1
            result.rules.update(f.rule_id for f in outcome.findings)


def run_shard(shard: int, work: str, parts: str, settings: Settings) -> ShardResult:
    """Worker entry point (one process; one durable-rules host per process)."""
    started = time.perf_counter()
    ruleset = load_rules(settings.rules_dir)
    medications = read_lines(medication_files(Path(work)))
    raws = read_lines(shard_files(Path(work), shard))
    read = time.perf_counter()
    outcomes = evaluate_group(raws, medications, ruleset, settings)
    evaluated = time.perf_counter()
    result = ShardResult(shard=shard_name(shard))
    summarize(outcomes, result)
    kept = [o for o in outcomes if not (isinstance(o, PatientError) and o.patient is None)]
    stem = Path(shard_name(shard)).stem
    write_part(Path(parts), stem, [assessment_row(o, settings.as_of_label, ruleset.version)
                                   for o in kept],
               [row for o in kept for row in finding_rows(o)], result.problems,
               settings.output_format)
    result.seconds = {"read": read - started, "evaluate": evaluated - read,
                      "write": time.perf_counter() - evaluated}
    return result
