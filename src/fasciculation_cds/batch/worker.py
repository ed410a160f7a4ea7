"""Evaluate one shard: the resources of a set of whole patients, with the package's evaluation.

Also what each worker process does when it starts: it must never outlive the batch process.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fhir.resources.R4B import get_fhir_model_class

from ..assessment import Assessment
from ..evaluate import InputProblem, Outcome, assess_all, evaluator_for, new_grouper
from ..ingest import READ_TYPES
from ..parent_watch import watch_parent
from ..ruleset import RuleSet, load_rules
from ..sources import RawResource, fewer_collections
from .options import Settings
from .outputs import write_part
from .partition import Skipped, medication_files, read_records, shard_files, shard_name
from .rows import assessment_row, finding_rows
from .unrecognized import TABLE, Tally, accountant_for


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
                   ruleset: RuleSet, settings: Settings,
                   tally: Tally | None = None) -> list[Outcome]:
    """Outcomes for the resources of whole patients (the unit both engines evaluate); with
    `tally`, the codings of the kept resources the rules did not understand are added to it
    (the Medications every shard shares are not: their uses are)."""
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
    result = grouper.finish()
    outcomes = list(assess_all(result, ruleset, settings.as_of,
                               assume_presentation=settings.assume_presentation))
    if tally is not None:
        accountant = accountant_for(ruleset)
        assessed = {o.patient.reference: o for o in outcomes if isinstance(o, Assessment)}
        for patient in result.patients:
            tally.add_coverage(accountant.record_codings(patient,
                                                         assessed.get(patient.reference)))
    return outcomes


def run_shard(shard: int, work: str, parts: str, settings: Settings) -> ShardResult:
    """Worker entry point (one process; one durable-rules host per process)."""
    ruleset = load_rules(settings.rules_dir)
    medications = [r for r in read_records(medication_files(Path(work)))
                   if isinstance(r, RawResource)]
    tally = Tally()
    outcomes = evaluate_group(read_records(shard_files(Path(work), shard)), medications,
                              ruleset, settings, tally)
    problems = [o.message for o in outcomes if isinstance(o, InputProblem)]
    kept = [o for o in outcomes if not isinstance(o, InputProblem)]
    stem = Path(shard_name(shard)).stem
    Path(parts).mkdir(parents=True, exist_ok=True)
    tally.write(Path(parts) / f"{TABLE}-{stem}.ndjson")  # before the part that marks it done
    write_part(Path(parts), Path(shard_name(shard)).stem,
               [assessment_row(o, settings.as_of_label, ruleset.version) for o in kept],
               [row for o in kept for row in finding_rows(o)], problems)
    return ShardResult(shard=shard_name(shard), patients=len(kept))
