"""Writing rows: per-shard parts (atomically, so a killed run never leaves a half part that
looks finished) and the final sorted files."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from .rows import ASSESSMENTS_SCHEMA, FINDINGS_SCHEMA, Row, sort_key

TABLES = {"assessments": ASSESSMENTS_SCHEMA, "findings": FINDINGS_SCHEMA}


def _extension(output_format: str) -> str:
    return "parquet" if output_format == "parquet" else "ndjson"


def _atomic_write(path: Path, write: object) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(temporary)  # type: ignore[operator]
    temporary.replace(path)


def write_rows(path: Path, rows: list[Row], table: str, output_format: str) -> None:
    ordered = sorted(rows, key=sort_key)
    if output_format == "parquet":
        data = pa.Table.from_pylist(ordered, schema=TABLES[table])
        _atomic_write(path, lambda target: pq.write_table(data, target))
    else:
        payload = b"".join(orjson.dumps(row) + b"\n" for row in ordered)
        _atomic_write(path, lambda target: target.write_bytes(payload))


def part_path(parts: Path, table: str, stem: str, output_format: str) -> Path:
    return parts / f"{table}-{stem}.{_extension(output_format)}"


def write_part(parts: Path, stem: str, assessments: list[Row], findings: list[Row],
               problems: list[str], output_format: str) -> None:
    parts.mkdir(parents=True, exist_ok=True)
    # the assessments part is written last: its presence marks the shard finished
    write_rows(part_path(parts, "findings", stem, output_format), findings, "findings",
               output_format)
    payload = orjson.dumps(problems)
    _atomic_write(parts / f"problems-{stem}.json", lambda target: target.write_bytes(payload))
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


def merge_parts(parts: Path, out: Path, output_format: str) -> dict[str, Path]:
    """Final files, rows sorted by patient (and rule): the same input gives the same bytes."""
    written = {}
    extension = _extension(output_format)
    for table in TABLES:
        sources = sorted(parts.glob(f"{table}-*.{extension}"))
        target = out / f"{table}.{extension}"
        write_rows(target, read_rows(sources, output_format), table, output_format)
        written[table] = target
    return written
