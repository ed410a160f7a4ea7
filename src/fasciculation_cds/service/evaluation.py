"""Evaluation off the event loop: the same path as `evaluate`, for one patient, on worker
threads that each own a compiled rule engine (durable-rules is not thread-safe), or on worker
processes (`evaluation_processes`) when more than one core should evaluate at once."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import threading
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from ..assessment import Assessment
from ..evaluate import Evaluator, PatientError, new_grouper
from ..facts import LabResult
from ..parent_watch import watch_parent
from ..ruleset import RuleSet, load_rules
from ..sources import RawResource
from .prefetch import IncompleteRecordError


def assess_one(evaluator: Evaluator, resources: list[dict[str, Any]],
               drafts: list[dict[str, Any]], patient_id: str, as_of: datetime) -> Assessment:
    """The patient's assessment from exactly these resources, as `evaluate` makes it."""
    grouper = new_grouper(evaluator.ruleset, as_of, strict=False)
    for index, resource in enumerate(resources):
        grouper.add(RawResource(resource, "prefetch", f"item {index}"))
    for index, draft in enumerate(drafts):
        grouper.add(RawResource(draft, "draftOrders", f"entry[{index}]", draft_order=True))
    result = grouper.finish()
    record = next((r for r in result.patients if r.reference == f"Patient/{patient_id}"), None)
    if record is None or (record.patient is None and not record.errors):
        raise IncompleteRecordError("the Patient resource was neither prefetched nor fetched")
    outcome = evaluator.assess(record, as_of)  # a record with errors gives a PatientError
    if isinstance(outcome, PatientError):
        raise IncompleteRecordError(f"the patient's data could not be read: "
                                    f"{outcome.message[:300]}")
    return outcome


_process_evaluator: Evaluator | None = None


def _start_process(parent: int, rules_dir: str) -> None:
    global _process_evaluator
    watch_parent(parent)
    _process_evaluator = Evaluator(load_rules(Path(rules_dir)))
    gc.collect()
    gc.freeze()  # as in the service process: long-lived objects out of the collector's walk


def _process_ready() -> None:
    if _process_evaluator is None:
        raise RuntimeError("worker process not initialised")


def _assess_in_process(*args: Any) -> Assessment:
    assert _process_evaluator is not None, "worker process not initialised"
    assessment = assess_one(_process_evaluator, *args)
    # cards read only the lab results (a lab's earlier values on its card): the rest is not
    # worth pickling back
    assessment._facts = tuple(f for f in assessment.facts if isinstance(f, LabResult))
    return assessment


class EvaluationPool:
    def __init__(self, ruleset: RuleSet, *, threads: int, processes: int = 0) -> None:
        self.ruleset = ruleset
        self._local = threading.local()
        self.workers = processes if processes > 0 else threads
        self.executor: Executor
        if processes > 0:
            # spawn: a forked copy of a process with threads (uvicorn's) is not safe
            self.executor = ProcessPoolExecutor(
                max_workers=processes, mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_process, initargs=(os.getpid(), str(ruleset.directory)))
            self._call: Any = _assess_in_process
        else:
            self.executor = ThreadPoolExecutor(max_workers=threads,
                                               thread_name_prefix="fasciculation-evaluate")
            self._call = self._assess_in_thread

    def _assess_in_thread(self, *args: Any) -> Assessment:
        evaluator = getattr(self._local, "evaluator", None)
        if evaluator is None:
            evaluator = self._local.evaluator = Evaluator(self.ruleset)
        return assess_one(evaluator, *args)

    def warm_up(self) -> None:
        """Start every worker and compile its engine now, not during the first calls."""
        if isinstance(self.executor, ThreadPoolExecutor):
            barrier = threading.Barrier(self.workers)  # each thread takes exactly one
            futures = [self.executor.submit(self._thread_ready, barrier)
                       for _ in range(self.workers)]
        else:
            futures = [self.executor.submit(_process_ready) for _ in range(self.workers)]
        for future in futures:
            future.result()

    def _thread_ready(self, barrier: threading.Barrier) -> None:
        barrier.wait(timeout=120)
        if getattr(self._local, "evaluator", None) is None:
            self._local.evaluator = Evaluator(self.ruleset)

    async def run(self, resources: list[dict[str, Any]], drafts: list[dict[str, Any]],
                  patient_id: str, as_of: datetime) -> Assessment:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._call, resources, drafts,
                                          patient_id, as_of)

    def close(self) -> None:
        # processes are waited for (they finish a call in milliseconds) so none is left behind
        self.executor.shutdown(wait=isinstance(self.executor, ProcessPoolExecutor),
                               cancel_futures=True)
