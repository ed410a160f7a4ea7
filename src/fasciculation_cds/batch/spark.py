"""The same batch job on Apache Spark (pyspark): group by patient, evaluate in the executors.

Each input file is read in an executor by the same router as the local partitioner (the same
relevance, the same per-patient summaries of what no rule reads, the same problems for a file
that cannot be read to its end), so files must be on a file system every executor sees at the
same path, or on object storage, which the executors read through fsspec. For an
object-storage `--out` each partition writes its part with pyarrow, so no Hadoop connector is
needed. Each patient's group is evaluated with the package's own evaluation, one
durable-rules host per Python worker.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from ..evaluate import InputProblem
from ..ruleset import load_rules
from ..sources import RawResource
from . import storage
from .keys import MEDICATION
from .options import BatchOptions, Settings
from .outputs import TABLES, extension
from .partition import Router, decode_record, route_file
from .rows import assessment_row, finding_rows, incomplete_note, mark_partial, sort_key
from .worker import evaluate_group

PROBLEM = "\x00problem"


def _keyed_file(settings: Settings, path: str) -> list[tuple[str, Any]]:
    """(key, shard record) pairs of one input file, and (PROBLEM, text) for its problems."""
    records: list[tuple[str, Any]] = []
    summaries: list[tuple[str, Any]] = []
    router = Router(settings, lambda key, record: records.append((key, record)),
                    lambda key, record: summaries.append((key, record)),
                    count=False)  # a Spark run writes no unrecognized table
    storage.use(settings.storage)
    route_file(path, router)
    router.close()
    # the summaries after the kept resources, as the local engine reads them
    return [(PROBLEM, problem) for problem in router.result.problems] + records + summaries


def _evaluate_partition(groups: Iterable[tuple[str, Iterable[Any]]], medications: list[Any],
                        settings: Settings) -> Iterator[tuple[str, dict[str, Any]]]:
    ruleset = load_rules(settings.rules_dir)
    shared = [r for r in (decode_record(line) for line in medications)
              if isinstance(r, RawResource)]
    for _, lines in groups:
        for outcome in evaluate_group((decode_record(line) for line in lines), shared,
                                      ruleset, settings):
            if isinstance(outcome, InputProblem):
                yield "problem", {"problem": outcome.message}
                continue
            yield "assessments", assessment_row(outcome, settings.as_of_label, ruleset.version)
            for row in finding_rows(outcome):
                yield "findings", row


def _is_table(table: str, item: tuple[str, Any]) -> bool:
    return item[0] == table


def _as_tuple(names: list[str], row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[name] for name in names)


def _spark_schema(table: str) -> Any:
    from pyspark.sql import types as T  # noqa: N812 - Spark's own idiom

    def convert(arrow_type: Any) -> Any:
        import pyarrow as pa

        if pa.types.is_list(arrow_type):
            return T.ArrayType(convert(arrow_type.value_type))
        if pa.types.is_int32(arrow_type):
            return T.IntegerType()
        return T.StringType()

    return T.StructType([T.StructField(f.name, convert(f.type), True) for f in TABLES[table]])


def _session(workers: int) -> Any:
    """A session on FASCICULATION_CDS_SPARK_MASTER, else on the master spark-submit was given,
    else on local[workers]."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("fasciculation-cds batch").config(
        "spark.sql.session.timeZone", "UTC")
    master = os.environ.get("FASCICULATION_CDS_SPARK_MASTER")
    # under spark-submit the JVM (and its --master) is already up: PYSPARK_GATEWAY_PORT is set
    if master is None and "PYSPARK_GATEWAY_PORT" not in os.environ:
        master = f"local[{workers}]"
        builder = builder.config("spark.ui.enabled", "false")
    return (builder.master(master) if master else builder).getOrCreate()


def _stamped(note: str | None, row: dict[str, Any]) -> dict[str, Any]:
    return mark_partial([dict(row)], note)[0]


def _write_part(target: str, table: str, output_format: str, settings: Settings, index: int,
                rows: Iterable[dict[str, Any]]) -> Iterator[int]:
    """One partition's rows (already in order) as one part of `target` on object storage."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    storage.use(settings.storage)
    batch = list(rows)
    fs, folder = storage.filesystem(target)
    with fs.open(f"{folder}/part-{index:05d}.{'parquet' if output_format == 'parquet' else 'json'}",
                 "wb") as handle:
        if output_format == "parquet":
            pq.write_table(pa.Table.from_pylist(batch, schema=TABLES[table]), handle)
        else:
            handle.write(b"".join(orjson.dumps(row) + b"\n" for row in batch))
    yield len(batch)


def run_spark(options: BatchOptions, settings: Settings, work: Path, staging: Path,
              files: list[str], console: Console, remote: str | None = None,
              timings: dict[str, float] | None = None) -> list[str]:
    """Write the tables to `staging` (to be moved into place by the caller), or with `remote`
    (an object-storage `--out`) as parts written by the executors there; the problems. The
    time of each stage goes to `timings` (session, read, group_evaluate, write)."""
    timings = {} if timings is None else timings
    started = time.perf_counter()
    from pyspark import StorageLevel
    from pyspark.sql import SparkSession

    workers = options.workers or os.cpu_count() or 1
    # local mode: the executors' Python is this one (the package is installed here)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    spark = SparkSession.getActiveSession() or _session(workers)
    context = spark.sparkContext
    timings["session"] = time.perf_counter() - started  # starting the JVM, in local mode
    started = time.perf_counter()
    paths = [str(p) for p in files]
    everything = (context.parallelize(paths, max(1, min(len(paths), 4 * workers)))
                  .flatMap(functools.partial(_keyed_file, settings))
                  if paths else context.emptyRDD())
    # read once, used three times; at scale what does not fit in memory spills to the
    # executors' disks instead of being read from the inputs again
    everything.persist(StorageLevel.MEMORY_AND_DISK)
    medications = everything.filter(lambda kv: kv[0] == MEDICATION).values().collect()
    timings["read"] = time.perf_counter() - started  # the collect above read every input
    shared = context.broadcast(medications)
    problems = everything.filter(lambda kv: kv[0] == PROBLEM).values().collect()
    patients = everything.filter(lambda kv: kv[0] not in (MEDICATION, PROBLEM))
    rows = patients.groupByKey(numPartitions=max(1, 4 * workers)).mapPartitions(
        lambda groups: _evaluate_partition(groups, shared.value, settings))
    rows.persist(StorageLevel.MEMORY_AND_DISK)
    problems += [p["problem"] for p in rows.filter(lambda kv: kv[0] == "problem").values()
                 .collect()]
    note = incomplete_note(problems)
    timings["group_evaluate"] = time.perf_counter() - started - timings["read"]
    staging.mkdir(parents=True, exist_ok=True)
    for table in TABLES:
        if remote is not None:
            parts = storage.join(remote, f"{table}.{extension(options.output_format)}")
            (rows.filter(functools.partial(_is_table, table)).values()
             .map(functools.partial(_stamped, note))
             .sortBy(sort_key, numPartitions=max(1, 4 * workers))
             .mapPartitionsWithIndex(functools.partial(
                 _write_part, parts, table, options.output_format, settings))
             .sum())
            continue
        names = TABLES[table].names
        frame = spark.createDataFrame(
            rows.filter(functools.partial(_is_table, table)).values()
            .map(functools.partial(_stamped, note))
            .map(functools.partial(_as_tuple, names)), _spark_schema(table))
        target = staging / f"{table}.{extension(options.output_format)}"
        writer = frame.orderBy(*(["patient", "rule_id"] if table == "findings" else ["patient"]))
        if options.output_format == "parquet":
            writer.write.mode("overwrite").parquet(str(target))
        else:
            writer.write.mode("overwrite").option("ignoreNullFields", "false").json(str(target))
    everything.unpersist()
    rows.unpersist()
    timings["write"] = time.perf_counter() - started - timings["read"] - timings["group_evaluate"]
    console.log(f"spark: evaluated on {context.master}")
    return problems
