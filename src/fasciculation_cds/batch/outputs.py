"""Writing rows: per-shard parts (atomically, so a killed run never leaves a half part that
looks finished) and the final sorted files (staged, then moved into place, run.json last)."""

from __future__ import annotations

import functools
import heapq
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from .rows import ASSESSMENTS_SCHEMA, FINDINGS_SCHEMA, Row, mark_partial, sort_key

TABLES = {"assessments": ASSESSMENTS_SCHEMA, "findings": FINDINGS_SCHEMA}
RUN_REPORT = "run.json"
PROBLEMS = "problems.ndjson"
UNRECOGNIZED = "unrecognized"  # written by the local engine only (docs/coverage.md)


def extension(output_format: str) -> str:
    return "parquet" if output_format == "parquet" else "ndjson"


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(temporary)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def final_names(output_format: str) -> list[str]:
    return [f"{table}.{extension(output_format)}" for table in TABLES] + [
        PROBLEMS, f"{UNRECOGNIZED}.{extension(output_format)}"]


def clear_outputs(out: Path) -> None:
    """Before a run writes anything: run.json first, whose presence says the outputs beside it
    are complete, then any earlier tables (of either format) and problems."""
    (out / RUN_REPORT).unlink(missing_ok=True)
    for name in [*final_names("parquet"), *final_names("ndjson")]:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def publish(staging: Path, out: Path, output_format: str) -> dict[str, Path]:
    """Move the staged tables and problems into `out` (renames on one file system)."""
    placed = {}
    for name in final_names(output_format):
        if name.startswith(UNRECOGNIZED) and not (staging / name).exists():
            continue  # a Spark run does not count them
        (staging / name).replace(out / name)
        placed[name.split(".")[0]] = out / name
    return {table: placed[table] for table in [*TABLES, UNRECOGNIZED] if table in placed}


def write_part(parts: Path, stem: str, assessments: list[Row], findings: list[Row],
               problems: list[str]) -> None:
    """One shard's rows, each table sorted, as NDJSON whatever the output format: the merge
    then holds one line of each part (a Parquet reader per part holds buffers of its own, and
    the parts grow in number with the patients)."""
    parts.mkdir(parents=True, exist_ok=True)
    # the assessments part is written last: its presence marks the shard finished
    _write_sorted(part_path(parts, "findings", stem), findings)
    payload = orjson.dumps(problems)
    atomic_write(parts / f"problems-{stem}.json", lambda target: target.write_bytes(payload))
    _write_sorted(part_path(parts, "assessments", stem), assessments)


def _write_sorted(path: Path, rows: list[Row]) -> None:
    payload = b"".join(orjson.dumps(row) + b"\n" for row in sorted(rows, key=sort_key))
    atomic_write(path, lambda target: target.write_bytes(payload))


def part_path(parts: Path, table: str, stem: str) -> Path:
    return parts / f"{table}-{stem}.ndjson"


def shard_finished(parts: Path, stem: str) -> bool:
    return part_path(parts, "assessments", stem).exists()


def part_rows(parts: Path, stem: str) -> int:
    """The patients of a finished shard (one assessments line each)."""
    with part_path(parts, "assessments", stem).open("rb") as handle:
        return sum(1 for _ in handle)


def iter_rows(paths: Iterable[Path], output_format: str,
              columns: list[str] | None = None) -> Iterator[Row]:
    """The rows of final output files (each a file, or a folder of parts as Spark writes
    them), read a batch at a time."""
    for path in paths:
        if output_format == "parquet":
            for file in _parquet_files(path):
                for batch in pq.ParquetFile(file).iter_batches(batch_size=MERGE_BATCH_ROWS,
                                                               columns=columns):
                    yield from batch.to_pylist()
            continue
        for part in sorted(path.glob("*.json")) if path.is_dir() else [path]:
            with part.open("rb") as handle:
                for line in handle:
                    if line.strip():
                        row = orjson.loads(line)
                        yield row if columns is None else {name: row.get(name)
                                                           for name in columns}


def part_problems(parts: Path) -> list[str]:
    problems: list[str] = []
    for path in sorted(parts.glob("problems-*.json")):
        problems += orjson.loads(path.read_bytes())
    return problems


def _parquet_files(path: Path) -> list[Path]:
    """A Parquet file, or the data files of a folder of parts (not Spark's `_SUCCESS` or
    `.crc` files), in name order."""
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.glob("*.parquet") if not p.name.startswith(("_", ".")))


MERGE_BATCH_ROWS = 2048  # rows per write while merging: memory stays flat in the patients
MERGE_FAN_IN = 64  # parts read at once; more are first merged into runs of this many
MERGE_RUNS = "merging"  # the folder of those runs, in the parts folder


def _lines(path: Path) -> Iterator[Row]:
    with path.open("rb") as handle:
        for line in handle:
            yield orjson.loads(line)


def _merged(sources: list[Path]) -> Iterator[Row]:
    # heapq.merge is stable: rows with equal keys keep the order of `sources`
    return heapq.merge(*(_lines(path) for path in sources), key=sort_key)


def _fewer_sources(sources: list[Path], runs: Path, table: str) -> list[Path]:
    """At most MERGE_FAN_IN sorted files holding the rows of `sources`: consecutive groups are
    merged into runs (which keeps the order of equal rows), so a merge holds a bounded number
    of open files and rows however many shards the run has."""
    level = 0
    while len(sources) > MERGE_FAN_IN:
        runs.mkdir(parents=True, exist_ok=True)
        merged = []
        for start in range(0, len(sources), MERGE_FAN_IN):
            target = runs / f"{table}-{level:02d}-{start // MERGE_FAN_IN:06d}.ndjson"
            with target.open("wb") as handle:
                for chunk in _chunks(_merged(sources[start:start + MERGE_FAN_IN])):
                    handle.write(b"".join(orjson.dumps(row) + b"\n" for row in chunk))
            merged.append(target)
        sources, level = merged, level + 1
    return sources


def merge_parts(parts: Path, staging: Path, output_format: str, note: str | None) -> None:
    """Final files in `staging`, rows sorted by patient (and rule): each part is sorted, so
    they are merged as streams and written in batches of a fixed size; the same rows give the
    same bytes, however many shards. With `note` (the run had input problems) `ok` rows are
    written `partial`."""
    staging.mkdir(parents=True, exist_ok=True)
    runs = parts / MERGE_RUNS
    shutil.rmtree(runs, ignore_errors=True)  # left by an interrupted merge
    for table in TABLES:
        sources = _fewer_sources(sorted(parts.glob(f"{table}-*.ndjson")), runs, table)
        target = staging / f"{table}.{extension(output_format)}"
        atomic_write(target, functools.partial(_write_stream, rows=_merged(sources),
                                               table=table, output_format=output_format,
                                               note=note))
    shutil.rmtree(runs, ignore_errors=True)


def _write_stream(path: Path, rows: Iterator[Row], table: str, output_format: str,
                  note: str | None) -> None:
    schema = TABLES[table]
    if output_format == "parquet":
        with pq.ParquetWriter(path, schema) as writer:
            wrote = False
            for chunk in _chunks(rows):
                writer.write_table(pa.Table.from_pylist(mark_partial(chunk, note),
                                                        schema=schema))
                wrote = True
            if not wrote:
                writer.write_table(schema.empty_table())
        return
    with path.open("wb") as handle:
        for chunk in _chunks(rows):
            handle.write(b"".join(orjson.dumps(row) + b"\n"
                                  for row in mark_partial(chunk, note)))


def _chunks(rows: Iterator[Row]) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == MERGE_BATCH_ROWS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_problems(path: Path, problems: list[str]) -> None:
    payload = b"".join(orjson.dumps({"problem": p}) + b"\n" for p in problems)
    atomic_write(path, lambda target: target.write_bytes(payload))
