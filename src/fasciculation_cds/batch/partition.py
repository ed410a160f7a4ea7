"""Streaming hash-partition of the input by patient into shard files, with bounded memory.

Each resource is written, with where it came from, to shard `crc32(patient key) % shards`, so
every resource of a patient lands in the same shard whatever file it came from (Bulk Data puts
each resource type in its own file). Medication resources go to a side file every shard reads.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import orjson

from ..errors import InputError
from ..ruleset import load_rules
from ..sources import RawResource, is_ndjson, read_file
from .keys import MEDICATION, UNOWNED, keyed, slim

MEDICATIONS_FILE = "medications.ndjson"


@dataclass
class PartitionResult:
    shards: list[Path]
    patients: int
    resources: int
    skipped_unowned: int
    problems: list[str] = field(default_factory=list)


def shard_of(key: str, shards: int) -> int:
    return zlib.crc32(key.encode()) % shards


def encode_line(key: str, item: RawResource) -> bytes:
    return orjson.dumps({"k": key, "s": item.source, "e": item.entry, "u": item.full_url,
                         "r": item.resource}) + b"\n"


def decode_line(line: bytes) -> tuple[str, RawResource]:
    data = orjson.loads(line)
    return data["k"], RawResource(data["r"], data["s"], data["e"], data["u"])


def _items(path: Path, strict: bool) -> Iterator[tuple[str, RawResource] | InputError]:
    """Keyed resources of one file: NDJSON streamed line by line, a Bundle as a whole."""
    try:
        if is_ndjson(path):
            for item in read_file(path, strict=strict):
                if isinstance(item, InputError):
                    yield item
                else:
                    yield from keyed([item])
            return
        items: list[RawResource] = []
        for item in read_file(path, strict=strict):
            if isinstance(item, InputError):
                yield item
            else:
                items.append(item)
        yield from keyed(items)
    except InputError as exc:
        yield exc


@dataclass
class FilePartition:
    """What partitioning one input file produced (its shard files live in their own folder)."""

    resources: int = 0
    skipped_unowned: int = 0
    keys: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def task_folder(work: Path, task: int) -> Path:
    return work / f"t{task:05d}"


def partition_file(path: str, work: str, task: int, shards: int,
                   rules_dir: str | None, strict: bool) -> FilePartition:
    """Hash-partition one input file into `work/tNNNNN/shard-*.ndjson` (one task of many).

    Runs in worker processes, so large exports are partitioned on every core; a shard is the
    union of its files across tasks, read in task order.
    """
    terminology = None if strict else load_rules(rules_dir).terminology
    folder = task_folder(Path(work), task)
    folder.mkdir(parents=True, exist_ok=True)
    handles: dict[int, IO[bytes]] = {}
    result = FilePartition()
    try:
        with (folder / MEDICATIONS_FILE).open("wb") as medications:
            for item in _items(Path(path), strict):
                if isinstance(item, InputError):
                    result.problems.append(item.describe())
                    continue
                key, raw = item[0], slim(item[1], terminology)
                result.resources += 1
                if key == MEDICATION:
                    medications.write(encode_line(key, raw))
                elif key == UNOWNED:
                    result.skipped_unowned += 1
                else:
                    result.keys.add(key)
                    shard = shard_of(key, shards)
                    if shard not in handles:
                        handles[shard] = (folder / shard_name(shard)).open("wb")
                    handles[shard].write(encode_line(key, raw))
    finally:
        for handle in handles.values():
            handle.close()
    return result


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.ndjson"


def shard_files(work: Path, shard: int) -> list[Path]:
    """The files that make up one shard, in input order."""
    return sorted(work.glob(f"t*/{shard_name(shard)}"))


def medication_files(work: Path) -> list[Path]:
    return sorted(work.glob(f"t*/{MEDICATIONS_FILE}"))


def merge_file_results(results: Sequence[FilePartition], shards: int) -> PartitionResult:
    keys: set[str] = set()
    merged = PartitionResult(shards=[], patients=0, resources=0, skipped_unowned=0)
    for result in results:
        keys |= result.keys
        merged.resources += result.resources
        merged.skipped_unowned += result.skipped_unowned
        merged.problems += result.problems
    merged.patients = len(keys)
    merged.shards = [Path(shard_name(i)) for i in range(shards)]
    return merged
