"""Evaluate one shard: the resources of a set of whole patients, with the package's evaluation.

Also what each worker process does when it starts: it must never outlive the batch process.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fhir.resources.R4B import get_fhir_model_class

from ..evaluate import InputProblem, Outcome, assess_all, evaluator_for, new_grouper
from ..ingest import READ_TYPES
from ..parent_watch import watch_parent
from ..ruleset import RuleSet, load_rules
from ..sources import RawResource, fewer_collections
from .options import Settings
from .outputs import write_part
from .partition import Skipped, medication_files, read_records, shard_files, shard_name
from .rows import assessment_row, finding_rows


@dataclass
class ShardResult:
    shard: str
    patients: int


def start_worker(parent: int, rules_dir: str | None) -> None:
    """Worker start-up: watch the parent, then compile the rules and import the FHIR models of
    the types that are validated, once, while the batch process is still planning."""
    watch_parent(parent)
    evaluator_for(load_rules(rules_dir))
    for resource_type in sorted(READ_TYPES):
        get_fhir_model_class(resource_type)


def evaluate_group(records: Iterable[RawResource | Skipped], medications: Iterable[RawResource],
                   ruleset: RuleSet, settings: Settings) -> list[Outcome]:
    """Outcomes for the resources of whole patients (the unit both engines evaluate)."""
    grouper = new_grouper(ruleset, settings.as_of, strict=settings.strict)
    with fewer_collections():
        for raw in medications:
            grouper.add(raw)
        for record in records:
            if isinstance(record, Skipped):
                grouper.note_skipped(record.key, record.count, record.source, record.entry,
                                     record.latest, record.refused)
            else:
                grouper.add(record)
    return list(assess_all(grouper.finish(), ruleset, settings.as_of,
                           assume_presentation=settings.assume_presentation))


def run_shard(shard: int, work: str, parts: str, settings: Settings) -> ShardResult:
    """Worker entry point (one process; one durable-rules host per process)."""
    ruleset = load_rules(settings.rules_dir)
    medications = [r for r in read_records(medication_files(Path(work)))
                   if isinstance(r, RawResource)]
    outcomes = evaluate_group(read_records(shard_files(Path(work), shard)), medications,
                              ruleset, settings)
    problems = [o.message for o in outcomes if isinstance(o, InputProblem)]
    kept = [o for o in outcomes if not isinstance(o, InputProblem)]
    write_part(Path(parts), Path(shard_name(shard)).stem,
               [assessment_row(o, settings.as_of_label, ruleset.version) for o in kept],
               [row for o in kept for row in finding_rows(o)], problems)
    return ShardResult(shard=shard_name(shard), patients=len(kept))
