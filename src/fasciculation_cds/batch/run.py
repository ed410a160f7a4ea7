"""A batch run: plan the inputs, partition (or resume), evaluate shards on the chosen engine,
merge, report. Outputs appear only complete: staged, moved into place, run.json last."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import shutil
import time
from collections import Counter
from dataclasses import asdict, fields
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console

from .._version import __version__
from ..evaluate import fix_as_of
from ..fhir_time import iso_instant
from ..ingest import READ_TYPES
from ..ruleset import load_rules
from ..sources import type_from_name
from . import storage
from .options import (
    BatchOptions,
    BatchSummary,
    MissingDependencyError,
    Settings,
)
from .outputs import (
    RUN_REPORT,
    UNRECOGNIZED,
    atomic_write,
    clear_outputs,
    extension,
    final_names,
    iter_rows,
    merge_parts,
    part_problems,
    part_rows,
    publish,
    shard_finished,
    write_problems,
)
from .partition import (
    FilePartition,
    PartitionResult,
    PartitionTask,
    merge_file_results,
    partition_file,
    shard_name,
)
from .pool import Workers, sigterm_stops, workers_of
from .progress import ShardProgress
from .rows import incomplete_note
from .unrecognized import TOP, merged_rows, tally_files, write_table
from .worker import run_shard as run_shard  # re-exported: tests stand in for it

WORK = "_work"
SHARD_TARGET_BYTES = 32 << 20  # of input per shard; a worker holds one shard at a time


def _fingerprint(files: list[str], options: BatchOptions, rules_version: str) -> str:
    """What must not change between a run and its resumption (the requested as_of included;
    "now" resumes at the interrupted run's instant)."""
    digest = hashlib.sha256()
    for path in files:  # size and modification time (an object's ETag)
        digest.update(f"{path}|{storage.version(path)}\n".encode())
    digest.update(f"{options.as_of or 'now'}|{options.assume_presentation}|{options.strict}|"
                  f"{options.output_format}|{rules_version}|{options.engine}".encode())
    return digest.hexdigest()


def _as_of_label(as_of: Any) -> str:
    if as_of == "auto" or isinstance(as_of, str):
        return str(as_of)
    return iso_instant(as_of) if isinstance(as_of, datetime) else str(as_of)


def _size(path: str) -> int:
    return storage.size(path)


def _shard_count(options: BatchOptions, read: list[str], workers: int) -> int:
    if options.shards:
        return options.shards
    # uncompressed size, roughly: FHIR NDJSON gzips about 8 to 1
    size = sum(_size(p) * (8 if p.endswith(".gz") else 1) for p in read)
    return max(4 * workers, -(-size // SHARD_TARGET_BYTES))


def plan_inputs(files: list[str], options: BatchOptions, as_of: Any) -> list[dict[str, Any]]:
    """Each input file, its declared resource type, and whether it is read.

    A file declared (by its Bulk Data manifest, else its name) to hold a type no rule reads is
    not read, unless a patient's "now" comes from every resource (`--as-of auto`) or every
    resource is validated (`--strict`).
    """
    manifest = storage.declared(storage.location(i) for i in options.inputs)
    every_file = as_of == "auto" or options.strict
    planned = []
    for path in files:
        declared = manifest.get(storage.key(path)) or type_from_name(Path(storage.name(path)))
        read = every_file or declared is None or declared in READ_TYPES
        planned.append({"path": path, "bytes": _size(path), "type": declared,
                        "read": read})
    return planned


def check_engine(options: BatchOptions) -> None:
    if options.engine != "spark":
        return
    if importlib.util.find_spec("pyspark") is None:
        raise MissingDependencyError(
            "--engine spark needs pyspark: pip install 'fasciculation-cds[spark]'")
    if "PYSPARK_GATEWAY_PORT" not in os.environ and not (
            shutil.which("java") or os.environ.get("JAVA_HOME")):
        raise MissingDependencyError(
            "--engine spark needs a Java runtime (Java 17): put java on the PATH or set JAVA_HOME")


def run_batch(options: BatchOptions, console: Console | None = None) -> BatchSummary:
    """Raises InputError (an input cannot be read), ValueError (--resume refused),
    MissingDependencyError, OutputError, WorkerDiedError, KeyboardInterrupt or Stopped."""
    console = console or Console(stderr=True, log_path=False)
    started = time.perf_counter()
    check_engine(options)
    ruleset = load_rules(options.rules_dir)
    workers = options.workers or os.cpu_count() or 1
    rules_dir = str(options.rules_dir) if options.rules_dir else None
    # the worker processes start (and warm up) now, while the inputs are being planned
    storage.use(options.storage)
    out = storage.location(options.out)
    with sigterm_stops(), workers_of(workers if options.engine == "local" else 1,
                                     rules_dir) as pool:
        files = storage.expand(storage.location(i) for i in options.inputs)
        work = storage.work_folder(out, options.scratch, WORK)
        state_file = work / "state.json"
        state: dict[str, Any] = {}
        if options.resume and state_file.exists():
            state = json.loads(state_file.read_text())
        as_of = state.get("as_of") if state else fix_as_of(options.as_of)
        label = _as_of_label(as_of)
        fingerprint = _fingerprint(files, options, ruleset.version)
        if state and state.get("fingerprint") != fingerprint:
            raise ValueError(f"{out}: --resume refused: the inputs or options differ from the "
                             "interrupted run (start afresh without --resume)")
        settings = Settings(rules_dir, as_of, label, options.assume_presentation,
                            options.strict, options.output_format, options.storage)
        try:
            if storage.is_uri(out):
                storage.clear_remote(out, [RUN_REPORT, *final_names("parquet"),
                                           *final_names("ndjson"), WORK])
            else:
                Path(out).mkdir(parents=True, exist_ok=True)
                clear_outputs(Path(out))
            summary = _run(options, files, state, fingerprint, settings, work, pool, console)
        except OSError as exc:
            raise storage.output_error(exc, out) from None
        except Exception as exc:  # a cloud SDK's own errors (refused credentials)
            if storage.denied(exc) is None:
                raise
            raise storage.output_error(exc, out) from None
    summary.seconds["total"] = time.perf_counter() - started
    _write_report(options, summary, ruleset.version, label, workers)
    shutil.rmtree(work, ignore_errors=True)  # finished: the shards are no longer needed
    return summary


def _run(options: BatchOptions, files: list[str], state: dict[str, Any], fingerprint: str,
         settings: Settings, work: Path, pool: Workers, console: Console) -> BatchSummary:
    timings: dict[str, float] = {}
    planned = plan_inputs(files, options, settings.as_of)
    read = [str(p["path"]) for p in planned if p["read"]]
    if state.get("partition"):
        shards = int(state["shards"])
        parted = _partition_result(state["partition"])
        console.log(f"resuming: {shards} shards already partitioned")
    else:
        shards = _shard_count(options, read, pool.size)
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        t0 = time.perf_counter()
        if options.engine == "spark":
            parted = PartitionResult(shards=[], resources=0, skipped_unowned=0)
        else:
            parted = _partition(read, work / "shards", shards, pool, settings, console)
        parted.inputs = _describe(planned, parted.inputs)
        timings["partition"] = time.perf_counter() - t0
        state = {"fingerprint": fingerprint, "as_of": settings.as_of_label, "shards": shards,
                 "partition": _jsonable(parted)}
        atomic_write(work / "state.json",
                     lambda target: target.write_text(json.dumps(state, indent=2)))
    t1 = time.perf_counter()
    staging = work / "final"
    if options.engine == "spark":
        from .spark import run_spark

        out = storage.location(options.out)
        problems = run_spark(options, settings, work, staging, read, console,
                             storage.remote_staging(out, WORK) if storage.is_uri(out) else None,
                             timings)
        parted.problems = problems
    else:
        _run_local(work, settings, shards, pool, console)
        timings["evaluate"] = time.perf_counter() - t1
        problems = parted.problems + part_problems(work / "parts")
        merge_parts(work / "parts", staging, options.output_format, incomplete_note(problems))
        unrecognized = merged_rows(tally_files(work))
        write_table(staging / f"{UNRECOGNIZED}.{extension(options.output_format)}",
                    unrecognized, options.output_format)
    write_problems(staging / "problems.ndjson", problems)
    out = storage.location(options.out)
    if storage.is_uri(out):
        t2 = time.perf_counter()
        outputs = {k: str(v) for k, v in storage.publish_remote(
            staging, out, final_names(options.output_format), WORK).items()}
        timings["upload"] = time.perf_counter() - t2
    else:
        outputs = {k: str(v) for k, v in
                   publish(staging, Path(out), options.output_format).items()}
    timings["merge" if options.engine == "local" else "evaluate"] = (
        time.perf_counter() - t1 - timings.get("evaluate", 0.0) - timings.get("upload", 0.0))
    summary = _summarize(outputs, options.output_format, problems)
    if options.engine == "local":
        summary.unrecognized = unrecognized[:TOP]
        summary.unrecognized_codings = len(unrecognized)
    summary.seconds = timings
    summary.inputs = parted.inputs
    summary.resources, summary.skipped_unowned = parted.resources, parted.skipped_unowned
    return summary


def _describe(planned: list[dict[str, Any]], read: list[dict[str, Any]]) -> list[dict[str, Any]]:
    digests = {entry["path"]: entry.get("sha256") for entry in read}
    return [{**entry, "sha256": digests.get(entry["path"])} for entry in planned]


def _partition_result(saved: dict[str, Any]) -> PartitionResult:
    """From state.json (a field an earlier version wrote and this one no longer has is
    ignored)."""
    known = {f.name for f in fields(PartitionResult)}
    return PartitionResult(**{**{k: v for k, v in saved.items() if k in known},
                              "shards": [Path(p) for p in saved["shards"]]})


def _jsonable(parted: PartitionResult) -> dict[str, Any]:
    data = asdict(parted)
    data["shards"] = [str(p) for p in parted.shards]
    return data


def _partition(files: list[str], work: Path, shards: int, pool: Workers,
               settings: Settings, console: Console) -> PartitionResult:
    tasks = [(PartitionTask(str(path), str(work), task, shards, settings),)
             for task, path in enumerate(files)]
    # largest first, so that no big file starts last while the other workers wait
    weight = {p: _size(p) * (8 if p.endswith(".gz") else 1) for p in files}
    tasks.sort(key=lambda call: -weight[call[0].path])
    results = {}
    with ShardProgress(console, len(tasks), unit="input files") as progress:
        for task, partitioned in pool.unordered(_partition_one, tasks):
            results[task] = partitioned
            progress.advance(0)
    ordered = [results[i] for i in range(len(tasks))]  # input order, whatever finished first
    merged = merge_file_results(ordered, shards)
    merged.inputs = [{"path": str(path), "sha256": result.sha256}
                     for path, result in zip(files, ordered, strict=True)]
    return merged


def _partition_one(task: PartitionTask) -> tuple[int, FilePartition]:
    return task.task, partition_file(task)


def _run_local(work: Path, settings: Settings, shards: int, pool: Workers,
               console: Console) -> None:
    parts = work / "parts"
    finished = [i for i in range(shards) if shard_finished(parts, _stem(i))]
    todo = sorted(set(range(shards)) - set(finished))
    with ShardProgress(console, shards) as progress:
        progress.already_done(len(finished), sum(part_rows(parts, _stem(i)) for i in finished))
        for result in pool.unordered(run_shard_task, [(i, str(work / "shards"), str(parts),
                                                       settings) for i in todo]):
            progress.advance(result.patients)


def _stem(shard: int) -> str:
    return Path(shard_name(shard)).stem


def run_shard_task(shard: int, work: str, parts: str, settings: Settings) -> Any:
    # looked up at call time, so a test can stand in for run_shard
    return run_shard(shard, work, parts, settings)


def _summarize(outputs: dict[str, str], output_format: str,
               problems: list[str]) -> BatchSummary:
    columns = ["status", "highest_severity", "rule_ids"]
    rows = (storage.iter_remote_rows(outputs["assessments"], output_format, columns)
            if storage.is_uri(outputs["assessments"]) else
            iter_rows([Path(outputs["assessments"])], output_format, columns=columns))
    severities: Counter[str] = Counter()
    rules: Counter[str] = Counter()
    patients = errors = partial = 0
    for row in rows:  # streamed: memory stays flat in the patients
        patients += 1
        if row["status"] == "error":
            errors += 1
            continue
        partial += row["status"] == "partial"
        severities[row["highest_severity"] or "none"] += 1
        rules.update(row["rule_ids"] or [])
    return BatchSummary(patients=patients, evaluated=patients - errors, errors=errors,
                        severities=dict(sorted(severities.items())),
                        top_rules=rules.most_common(10), problems=problems,
                        outputs=dict(outputs), partial=partial)


def _versions() -> dict[str, str]:
    versions = {"fasciculation-cds": __version__, "python": platform.python_version()}
    for name in ("durable-rules", "fhir.resources", "pyarrow", "pyspark"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _write_report(options: BatchOptions, summary: BatchSummary, rules_version: str,
                  as_of: str, workers: int) -> None:
    """run.json, written last: its presence says the outputs beside it are complete."""
    report = {
        "inputs": summary.inputs,
        "counts": {"patients": summary.patients, "evaluated": summary.evaluated,
                   "ok": summary.evaluated - summary.partial, "partial": summary.partial,
                   "errors": summary.errors, "problems": len(summary.problems),
                   "resources": summary.resources,
                   "skipped_unowned": summary.skipped_unowned,
                   "by_highest_severity": summary.severities,
                   "unrecognized_codings": summary.unrecognized_codings,
                   "top_rules": dict(summary.top_rules)},
        "rules_version": rules_version, "as_of": as_of, "engine": options.engine,
        "workers": workers, "format": options.output_format,
        "assume_presentation": options.assume_presentation, "strict": options.strict,
        "timings_seconds": {k: round(v, 3) for k, v in summary.seconds.items()},
        "outputs": summary.outputs, "versions": _versions(),
    }
    if options.storage.describe():  # non-secret by construction (StorageOptions)
        report["storage"] = options.storage.describe()
    payload = json.dumps(report, indent=2) + "\n"
    out = storage.location(options.out)
    try:
        if storage.is_uri(out):
            storage.write_remote(storage.join(out, RUN_REPORT), payload.encode())
        else:
            atomic_write(Path(out) / RUN_REPORT, lambda target: target.write_text(payload))
    except Exception as exc:
        if not isinstance(exc, OSError) and storage.denied(exc) is None:
            raise
        raise storage.output_error(exc, out) from None
