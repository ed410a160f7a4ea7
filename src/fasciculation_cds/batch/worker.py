"""Evaluate one shard: the resources of a set of whole patients, with the package's evaluation.

Also what each worker process does when it starts: it must never outlive the batch process.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fhir.resources.R4B import get_fhir_model_class

from ..evaluate import InputProblem, Outcome, assess_all, evaluator_for, new_grouper
from ..ingest import READ_TYPES
from ..ruleset import RuleSet, load_rules
from ..sources import RawResource, fewer_collections
from .options import Settings
from .outputs import write_part
from .partition import Skipped, medication_files, read_records, shard_files, shard_name
from .rows import assessment_row, finding_rows

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass
class ShardResult:
    shard: str
    patients: int


def watch_parent(parent: int) -> None:
    """Worker start-up: die with the batch process, even when it is killed with SIGKILL.

    On Linux the kernel sends SIGKILL when the parent dies (PR_SET_PDEATHSIG); elsewhere, and
    as a second line on Linux, a thread polls the parent id. Ctrl-C reaches the whole process
    group: the parent decides what stops, so workers ignore SIGINT.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker inherits the run's handler
    if hasattr(signal, "pthread_sigmask"):  # blocked while the process started (pool.py)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)

    def poll() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=poll, name="parent-watch", daemon=True).start()


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
                                     record.latest)
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
