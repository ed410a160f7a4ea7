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
    return [f"{table}.{extension(output_format)}" for table in TABLES] + [PROBLEMS]


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
        (staging / name).replace(out / name)
        placed[name.split(".")[0]] = out / name
    return {table: placed[table] for table in TABLES}


PART_ROW_GROUP = 64  # rows: the merge holds one row group of every part at a time


def write_rows(path: Path, rows: list[Row], table: str, output_format: str) -> None:
    ordered = sorted(rows, key=sort_key)
    if output_format == "parquet":
        data = pa.Table.from_pylist(ordered, schema=TABLES[table])
        atomic_write(path, lambda target: pq.write_table(data, target,
                                                         row_group_size=PART_ROW_GROUP))
    else:
        payload = b"".join(orjson.dumps(row) + b"\n" for row in ordered)
        atomic_write(path, lambda target: target.write_bytes(payload))


def part_path(parts: Path, table: str, stem: str, output_format: str) -> Path:
    return parts / f"{table}-{stem}.{extension(output_format)}"


def write_part(parts: Path, stem: str, assessments: list[Row], findings: list[Row],
               problems: list[str], output_format: str) -> None:
    parts.mkdir(parents=True, exist_ok=True)
    # the assessments part is written last: its presence marks the shard finished
    write_rows(part_path(parts, "findings", stem, output_format), findings, "findings",
               output_format)
    payload = orjson.dumps(problems)
    atomic_write(parts / f"problems-{stem}.json", lambda target: target.write_bytes(payload))
    write_rows(part_path(parts, "assessments", stem, output_format), assessments, "assessments",
               output_format)


def shard_finished(parts: Path, stem: str, output_format: str) -> bool:
    return part_path(parts, "assessments", stem, output_format).exists()


def read_rows(paths: Iterable[Path], output_format: str,
              columns: list[str] | None = None) -> list[Row]:
    rows: list[Row] = []
    for path in paths:
        if output_format == "parquet":  # a file, or a folder of parts (Spark)
            rows += pq.read_table(path, columns=columns).to_pylist()
            continue
        for part in sorted(path.glob("*.json")) if path.is_dir() else [path]:
            with part.open("rb") as handle:
                for line in handle:
                    if line.strip():
                        row = orjson.loads(line)
                        rows.append(row if columns is None else
                                    {name: row.get(name) for name in columns})
    return rows


def part_problems(parts: Path) -> list[str]:
    problems: list[str] = []
    for path in sorted(parts.glob("problems-*.json")):
        problems += orjson.loads(path.read_bytes())
    return problems


MERGE_BATCH_ROWS = 2048  # rows per write while merging: memory stays flat in the patients


def _part_rows(path: Path, output_format: str) -> Iterator[Row]:
    """The rows of one (sorted) part, a batch at a time."""
    if output_format == "parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=PART_ROW_GROUP):
            yield from batch.to_pylist()
        return
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                yield orjson.loads(line)


def merge_parts(parts: Path, staging: Path, output_format: str, note: str | None) -> None:
    """Final files in `staging`, rows sorted by patient (and rule): each part is sorted, so
    they are merged as streams and written in batches of a fixed size; the same rows give the
    same bytes, however many shards. With `note` (the run had input problems) `ok` rows are
    written `partial`."""
    staging.mkdir(parents=True, exist_ok=True)
    for table in TABLES:
        sources = sorted(parts.glob(f"{table}-*.{extension(output_format)}"))
        rows = heapq.merge(*(_part_rows(path, output_format) for path in sources),
                           key=sort_key)
        target = staging / f"{table}.{extension(output_format)}"
        atomic_write(target, functools.partial(_write_stream, rows=rows, table=table,
                                               output_format=output_format, note=note))


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
