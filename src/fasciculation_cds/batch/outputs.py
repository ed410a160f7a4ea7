"""Writing rows: per-shard parts (atomically, so a killed run never leaves a half part that
looks finished) and the final sorted files (staged, then moved into place, run.json last)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
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


def write_rows(path: Path, rows: list[Row], table: str, output_format: str) -> None:
    ordered = sorted(rows, key=sort_key)
    if output_format == "parquet":
        data = pa.Table.from_pylist(ordered, schema=TABLES[table])
        atomic_write(path, lambda target: pq.write_table(data, target))
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


def read_rows(paths: Iterable[Path], output_format: str) -> list[Row]:
    rows: list[Row] = []
    for path in paths:
        if output_format == "parquet":
            rows += pq.read_table(path).to_pylist()  # a file, or a folder of parts (Spark)
            continue
        for part in sorted(path.glob("*.json")) if path.is_dir() else [path]:
            with part.open("rb") as handle:
                rows += [orjson.loads(line) for line in handle if line.strip()]
    return rows


def part_problems(parts: Path) -> list[str]:
    problems: list[str] = []
    for path in sorted(parts.glob("problems-*.json")):
        problems += orjson.loads(path.read_bytes())
    return problems


def merge_parts(parts: Path, staging: Path, output_format: str, note: str | None) -> None:
    """Final files in `staging`, rows sorted by patient (and rule): the same input gives the
    same bytes. With `note` (the run had input problems) `ok` rows are written `partial`."""
    staging.mkdir(parents=True, exist_ok=True)
    for table in TABLES:
        sources = sorted(parts.glob(f"{table}-*.{extension(output_format)}"))
        write_rows(staging / f"{table}.{extension(output_format)}",
                   mark_partial(read_rows(sources, output_format), note), table, output_format)


def write_problems(path: Path, problems: list[str]) -> None:
    payload = b"".join(orjson.dumps({"problem": p}) + b"\n" for p in problems)
    atomic_write(path, lambda target: target.write_bytes(payload))
