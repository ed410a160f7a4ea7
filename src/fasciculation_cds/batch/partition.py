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
from ..sources import RawResource, expand_paths, is_ndjson, read_file
from .keys import MEDICATION, UNOWNED, keyed

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


def partition(paths: Sequence[str | Path], work: Path, shards: int, *,
              strict: bool = False) -> PartitionResult:
    """Write shard files under `work`; every problem without a patient is kept as a message."""
    work.mkdir(parents=True, exist_ok=True)
    files = expand_paths(paths)
    names = [work / f"shard-{i:05d}.ndjson" for i in range(shards)]
    handles: list[IO[bytes]] = [name.open("wb") for name in names]
    keys: set[str] = set()
    result = PartitionResult(shards=names, patients=0, resources=0, skipped_unowned=0)
    try:
        with (work / MEDICATIONS_FILE).open("wb") as medications:
            for path in files:
                for item in _items(path, strict):
                    if isinstance(item, InputError):
                        result.problems.append(item.describe())
                        continue
                    key, raw = item
                    result.resources += 1
                    if key == MEDICATION:
                        medications.write(encode_line(key, raw))
                    elif key == UNOWNED:
                        result.skipped_unowned += 1
                    else:
                        keys.add(key)
                        handles[shard_of(key, shards)].write(encode_line(key, raw))
    finally:
        for handle in handles:
            handle.close()
    result.patients = len(keys)
    return result
