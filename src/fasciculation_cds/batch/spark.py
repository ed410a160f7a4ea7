"""The same batch job on Apache Spark (pyspark): group by patient, evaluate in the executors.

Reads NDJSON with Spark (plain or gzipped; any Hadoop file system), Bundles from a shared file
system; keys resources with the same function as the local partitioner and evaluates each
patient's group with the package's own evaluation, one durable-rules host per Python worker.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from ..errors import InputError
from ..ruleset import load_rules
from ..sources import RawResource, expand_paths, is_ndjson, parse_ndjson_line, read_file
from ..terminology import Terminology
from .keys import MEDICATION, UNOWNED, keyed, slim
from .outputs import TABLES
from .partition import decode_line, encode_line
from .rows import assessment_row, finding_rows
from .worker import Settings, evaluate_group

if TYPE_CHECKING:
    from .run import BatchOptions

PROBLEM = "\x00problem"


def _terminology(settings: Settings) -> Terminology | None:
    return None if settings.strict else load_rules(settings.rules_dir).terminology


def _keyed_ndjson(source: str, settings: Settings,
                  items: Iterable[tuple[str, int]]) -> Iterator[tuple[str, Any]]:
    """One partition of (line, index) pairs: the rule set is looked up once per partition."""
    terminology = _terminology(settings)
    for line, index in items:
        if not line.strip():
            continue
        parsed = parse_ndjson_line(line, source, index + 1)
        if isinstance(parsed, InputError):
            yield PROBLEM, parsed.describe()
            continue
        # shuffled as the same compact lines the local shards hold (cheaper than pickled dicts)
        for key, raw in keyed([parsed]):
            yield key, encode_line(key, slim(raw, terminology))


def _keyed_bundle(settings: Settings, path: str) -> list[tuple[str, Any]]:
    items: list[RawResource] = []
    problems: list[tuple[str, Any]] = []
    try:
        for item in read_file(Path(path)):
            if isinstance(item, InputError):
                problems.append((PROBLEM, item.describe()))
            else:
                items.append(item)
    except InputError as exc:
        problems.append((PROBLEM, exc.describe()))
    terminology = _terminology(settings)
    return problems + [(key, encode_line(key, slim(raw, terminology)))
                       for key, raw in keyed(items)]


def _evaluate_partition(groups: Iterable[tuple[str, Iterable[Any]]], medications: list[Any],
                        settings: Settings) -> Iterator[tuple[str, dict[str, Any]]]:
    ruleset = load_rules(settings.rules_dir)
    shared = [decode_line(line)[1] for line in medications]
    for _, lines in groups:
        raws = [decode_line(line)[1] for line in lines]
        for outcome in evaluate_group(raws, shared, ruleset, settings):
            if getattr(outcome, "patient", "") is None:
                yield "problem", {"problem": outcome.message}  # type: ignore[union-attr]
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


def run_spark(options: BatchOptions, settings: Settings, work: Path,
              console: Console) -> dict[str, Path]:
    from pyspark.sql import SparkSession

    workers = options.workers or os.cpu_count() or 1
    # local mode: the executors' Python is this one (the package is installed here)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    spark = SparkSession.getActiveSession() or _session(workers)
    context = spark.sparkContext
    files = expand_paths(options.inputs)
    parts = []
    for path in files:
        if is_ndjson(path):
            lines = context.textFile(str(path)).zipWithIndex()
            parts.append(lines.mapPartitions(
                functools.partial(_keyed_ndjson, str(path), settings)))
    bundles = [str(p) for p in files if not is_ndjson(p)]
    if bundles:
        parts.append(context.parallelize(bundles, max(1, min(len(bundles), 4 * workers)))
                     .flatMap(functools.partial(_keyed_bundle, settings)))
    everything = context.union(parts) if parts else context.emptyRDD()
    everything.cache()
    medications = everything.filter(lambda kv: kv[0] == MEDICATION).values().collect()
    shared = context.broadcast(medications)
    problems = everything.filter(lambda kv: kv[0] == PROBLEM).values().collect()
    patients = everything.filter(lambda kv: kv[0] not in (MEDICATION, UNOWNED, PROBLEM))
    rows = patients.groupByKey(numPartitions=max(1, 4 * workers)).mapPartitions(
        lambda groups: _evaluate_partition(groups, shared.value, settings))
    rows.cache()
    outputs: dict[str, Path] = {}
    for table in TABLES:
        names = TABLES[table].names
        frame = spark.createDataFrame(
            rows.filter(functools.partial(_is_table, table)).values().map(
                functools.partial(_as_tuple, names)), _spark_schema(table))
        target = options.out / f"{table}.{options.output_format}"
        writer = frame.orderBy(*(["patient", "rule_id"] if table == "findings" else ["patient"]))
        if options.output_format == "parquet":
            writer.write.mode("overwrite").parquet(str(target))
        else:
            writer.write.mode("overwrite").option("ignoreNullFields", "false").json(str(target))
        outputs[table] = target
    problems += [p["problem"] for p in rows.filter(lambda kv: kv[0] == "problem").values()
                 .collect()]
    (work / "parts").mkdir(parents=True, exist_ok=True)
    (work / "parts" / "problems-spark.json").write_text(
        json.dumps(problems))
    everything.unpersist()
    rows.unpersist()
    console.log(f"spark: evaluated on {context.master}")
    return outputs
