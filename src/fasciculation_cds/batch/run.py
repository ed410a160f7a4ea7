"""A batch run: partition (or resume), evaluate shards on the chosen engine, merge, report."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from collections import Counter
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import datetime
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .._version import __version__
from ..evaluate import fix_as_of
from ..fhir_time import iso_instant
from ..ruleset import load_rules
from ..sources import expand_paths
from .outputs import merge_parts, read_rows, shard_finished
from .partition import (
    PartitionResult,
    merge_file_results,
    partition_file,
    shard_files,
    shard_name,
)
from .worker import Settings, ShardResult, run_shard

Engine = Literal["local", "spark"]
WORK = "_work"
SHARD_TARGET_BYTES = 32 << 20  # of input per shard; a worker holds one (slimmed) shard at a time


@dataclass(frozen=True)
class BatchOptions:
    inputs: list[Path]
    out: Path
    output_format: Literal["parquet", "ndjson"] = "parquet"
    workers: int | None = None
    engine: Engine = "local"
    as_of: str | None = None
    assume_presentation: bool = False
    rules_dir: Path | None = None
    resume: bool = False
    strict: bool = False
    shards: int | None = None


@dataclass
class BatchSummary:
    patients: int
    evaluated: int
    errors: int
    severities: dict[str, int]
    top_rules: list[tuple[str, int]]
    problems: list[str]
    outputs: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)


def _fingerprint(options: BatchOptions, rules_version: str) -> str:
    """What must not change between a run and its resumption (the requested as_of included;
    "now" resumes at the interrupted run's instant)."""
    digest = hashlib.sha256()
    for path in expand_paths(options.inputs):
        stat = path.stat()
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    digest.update(f"{options.as_of or 'now'}|{options.assume_presentation}|{options.strict}|"
                  f"{options.output_format}|{rules_version}|{options.engine}".encode())
    return digest.hexdigest()


def describe_inputs(paths: list[Path]) -> list[dict[str, object]]:
    """Each input file with its size and SHA-256, for run.json."""
    described = []
    for path in expand_paths(paths):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        described.append({"path": str(path), "bytes": path.stat().st_size,
                          "sha256": digest.hexdigest()})
    return described


def _as_of_label(as_of: Any) -> str:
    if as_of == "auto" or isinstance(as_of, str):
        return str(as_of)
    return iso_instant(as_of) if isinstance(as_of, datetime) else str(as_of)


def _shard_count(options: BatchOptions, workers: int) -> int:
    if options.shards:
        return options.shards
    # uncompressed size, roughly: FHIR NDJSON gzips about 8 to 1
    size = sum(p.stat().st_size * (8 if p.name.endswith(".gz") else 1)
               for p in expand_paths(options.inputs))
    return max(4 * workers, -(-size // SHARD_TARGET_BYTES))


def run_batch(options: BatchOptions, console: Console | None = None) -> BatchSummary:
    console = console or Console(stderr=True)
    started = time.perf_counter()
    ruleset = load_rules(options.rules_dir)
    workers = options.workers or os.cpu_count() or 1
    out = options.out
    work = out / WORK
    state_file = work / "state.json"
    state: dict[str, Any] = {}
    if options.resume and state_file.exists():
        state = json.loads(state_file.read_text())
    as_of = state.get("as_of") if state else fix_as_of(options.as_of)
    label = _as_of_label(as_of)
    fingerprint = _fingerprint(options, ruleset.version)
    if state and state.get("fingerprint") != fingerprint:
        raise ValueError(f"{out}: --resume refused: the inputs or options differ from the "
                         "interrupted run (start afresh without --resume)")
    settings = Settings(str(options.rules_dir) if options.rules_dir else None, as_of, label,
                        options.assume_presentation, options.strict, options.output_format)
    timings: dict[str, float] = {}
    shards = int(state["shards"]) if state.get("partition") else _shard_count(options, workers)
    with _pool(workers) as pool:
        if state.get("partition"):
            parted = PartitionResult(**{**state["partition"], "shards": [
                Path(p) for p in state["partition"]["shards"]]})
            console.log(f"resuming: {shards} shards already partitioned")
        else:
            if work.exists():
                shutil.rmtree(work)
            work.mkdir(parents=True)
            t0 = time.perf_counter()
            if options.engine == "spark":
                parted = PartitionResult(shards=[], patients=0, resources=0, skipped_unowned=0)
            else:
                parted = _partition(options, work / "shards", shards, pool, settings)
            timings["partition"] = time.perf_counter() - t0
            state = {"fingerprint": fingerprint, "as_of": label, "shards": shards,
                     "partition": _jsonable(parted)}
            state_file.write_text(json.dumps(state, indent=2))
        t1 = time.perf_counter()
        if options.engine == "spark":
            from .spark import run_spark

            outputs = run_spark(options, settings, work, console)
        else:
            _run_local(parted, work, settings, shards, pool, console)
            outputs = merge_parts(work / "parts", out, options.output_format)
    timings["evaluate"] = time.perf_counter() - t1
    summary = _summarize(outputs, options.output_format, parted, work)
    summary.seconds = {**timings, "total": time.perf_counter() - started}
    _write_report(options, summary, parted, ruleset.version, label, workers)
    shutil.rmtree(work)  # finished: the shards (a copy of the input) are no longer needed
    return summary


def _jsonable(parted: PartitionResult) -> dict[str, Any]:
    data = asdict(parted)
    data["shards"] = [str(p) for p in parted.shards]
    return data


class _Serial:
    """The pool interface, in this process (one worker: no process start-up to pay)."""

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(fn(*args))
        return future

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _pool(workers: int) -> Any:
    # spawn, not fork: each worker builds its own durable-rules host from scratch
    if workers == 1:
        return _Serial()
    return ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))


def _partition(options: BatchOptions, work: Path, shards: int, pool: Any,
               settings: Settings) -> PartitionResult:
    files = expand_paths(options.inputs)
    futures = [pool.submit(partition_file, str(path), str(work), task, shards,
                           settings.rules_dir, options.strict)
               for task, path in enumerate(files)]
    try:
        return merge_file_results([f.result() for f in futures], shards)
    except KeyboardInterrupt:
        _cancel(pool, futures)
        raise


def _cancel(pool: Any, futures: list[Future[Any]]) -> None:
    """Ctrl-C: drop queued work at once; finished parts stay for --resume."""
    for future in futures:
        future.cancel()
    if isinstance(pool, ProcessPoolExecutor):
        pool.shutdown(wait=False, cancel_futures=True)


def _run_local(parted: PartitionResult, work: Path, settings: Settings, shards: int, pool: Any,
               console: Console) -> None:
    parts = work / "parts"
    todo = [i for i in range(shards)
            if not shard_finished(parts, Path(shard_name(i)).stem, settings.output_format)]
    total = parted.patients
    with _Progress(console, total) as progress:
        progress.already_done(
            total - _patients_in([p for i in todo for p in shard_files(work / "shards", i)]))
        futures = [pool.submit(run_shard, i, str(work / "shards"), str(parts), settings)
                   for i in todo]
        try:
            for future in as_completed(futures):
                finished: ShardResult = future.result()
                progress.advance(finished.patients)
        except KeyboardInterrupt:
            _cancel(pool, futures)
            raise


def _patients_in(files: list[Path]) -> int:
    keys: set[bytes] = set()
    for path in files:
        with path.open("rb") as handle:
            for line in handle:
                keys.add(line[: line.find(b'","s"')])
    return len(keys)


class _Progress:
    """A rich progress bar on a terminal; plain periodic log lines otherwise."""

    def __init__(self, console: Console, total: int) -> None:
        self.console, self.total, self.done, self.baseline = console, total, 0, 0
        self.last_logged = -1
        self.started = time.perf_counter()
        self.last_log = 0.0
        self.bar: Progress | None = None
        self.task: Any = None

    def __enter__(self) -> Any:
        if self.console.is_terminal:
            self.bar = Progress(TextColumn("patients"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                console=self.console)
            self.bar.__enter__()
            self.task = self.bar.add_task("evaluate", total=self.total, rate="")
        return self

    def already_done(self, patients: int) -> None:
        """Patients of shards finished before a resume: counted, but not in the rate."""
        self.baseline += patients
        self.advance(patients)

    def advance(self, patients: int) -> None:
        self.done += patients
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = f"{(self.done - self.baseline) / elapsed:,.0f}/s"
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, rate=rate)
        elif (time.perf_counter() - self.last_log >= 5 or self.done >= self.total) \
                and self.done != self.last_logged:
            self.last_logged = self.done
            self.last_log = time.perf_counter()
            self.console.log(f"patients {self.done}/{self.total} ({rate})")

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def _summarize(outputs: dict[str, Path], output_format: str, parted: PartitionResult,
               work: Path) -> BatchSummary:
    rows = read_rows([outputs["assessments"]], output_format)
    severities: Counter[str] = Counter()
    rules: Counter[str] = Counter()
    errors = 0
    for row in rows:
        if row["status"] == "error":
            errors += 1
        else:
            severities[row["highest_severity"] or "none"] += 1
            rules.update(row["rule_ids"] or [])
    problems = list(parted.problems)
    for path in sorted((work / "parts").glob("problems-*.json")):
        problems += orjson.loads(path.read_bytes())
    return BatchSummary(patients=len(rows), evaluated=len(rows) - errors, errors=errors,
                        severities=dict(sorted(severities.items())),
                        top_rules=rules.most_common(10), problems=problems,
                        outputs={k: str(v) for k, v in outputs.items()})


def _versions() -> dict[str, str]:
    versions = {"fasciculation-cds": __version__, "python": platform.python_version()}
    for name in ("durable-rules", "fhir.resources", "pyarrow", "pyspark"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _write_report(options: BatchOptions, summary: BatchSummary, parted: PartitionResult,
                  rules_version: str, as_of: str, workers: int) -> None:
    out = options.out
    (out / "problems.ndjson").write_bytes(b"".join(
        orjson.dumps({"problem": p}) + b"\n" for p in summary.problems))
    report = {
        "inputs": describe_inputs(options.inputs),
        "counts": {"patients": summary.patients, "evaluated": summary.evaluated,
                   "errors": summary.errors, "problems": len(summary.problems),
                   "resources": parted.resources, "skipped_unowned": parted.skipped_unowned,
                   "by_highest_severity": summary.severities,
                   "top_rules": dict(summary.top_rules)},
        "rules_version": rules_version, "as_of": as_of, "engine": options.engine,
        "workers": workers, "format": options.output_format,
        "assume_presentation": options.assume_presentation, "strict": options.strict,
        "timings_seconds": {k: round(v, 3) for k, v in summary.seconds.items()},
        "outputs": summary.outputs, "versions": _versions(),
    }
    (out / "run.json").write_text(json.dumps(report, indent=2) + "\n")
