#!/usr/bin/env python3
"""A synthetic population for tests and benchmarks, made from the Synthea records in the repository.

    python bench/population.py --patients N --out DIR [--format ndjson|bundles] [--gzip]
                               [--seed S] [--jitter [FRAC]] [--source DIR] [--types T,T|read]

Output patient n copies source patient n mod (number of sources), with new identifiers: every
id in the source record is replaced by a deterministic UUID derived from (seed, n, old id), in
ids, fullUrls and references alike, so copies never collide. The sources are the Synthea
transaction Bundles in `tests/data/synthea/` (`.json` or `.json.gz`).

`--format ndjson` writes a Bulk Data export: one file per resource type, `Type.000.ndjson`
(`.ndjson.gz` with `--gzip`), at most 100,000 lines a file, references as `Type/id`, and a
`manifest.json`. `--format bundles` writes one transaction Bundle per patient.

`--jitter FRAC` multiplies each laboratory value (`valueQuantity.value` of an Observation in
category laboratory, and of its components) by a factor in [1 - FRAC, 1 + FRAC], kept to the
source value's number of decimals, so that copies differ in their results as real patients do.

`--types` keeps only resources of the types named (`read`: the types the rules read, and
Patient), as an export requested with `_type` would: a large population then costs less disk.

Everything is a function of the arguments: the same command writes the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import random
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import orjson

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO / "tests" / "data" / "synthea"
LINES_PER_FILE = 100_000
_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class Template:
    """One source resource, serialised once and cut at every id it holds."""

    resource_type: str
    pieces: tuple[bytes, ...]  # literal, id, literal, id, ..., literal
    lab: dict[str, Any] | None  # the parsed resource when --jitter must touch its values


@dataclass(frozen=True)
class SourcePatient:
    name: str
    ids: frozenset[bytes]
    resources: tuple[Template, ...]


def read_sources(folder: Path, *, as_ndjson: bool, keep_labs: bool) -> list[SourcePatient]:
    files = sorted(p for p in folder.iterdir()
                   if p.name.endswith((".json", ".json.gz")) and not p.name.startswith("_"))
    if not files:
        raise SystemExit(f"no Synthea Bundles (*.json, *.json.gz) in {folder}")
    return [_read_source(path, as_ndjson=as_ndjson, keep_labs=keep_labs) for path in files]


def _read_source(path: Path, *, as_ndjson: bool, keep_labs: bool) -> SourcePatient:
    raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    bundle = orjson.loads(raw)
    resources = [entry["resource"] for entry in bundle.get("entry", [])]
    types = {r["id"]: r["resourceType"] for r in resources if "id" in r}
    ids = frozenset(i.encode() for i in types)
    templates = []
    for resource in resources:
        if as_ndjson:
            resource = _relative_references(resource, types)
        text = orjson.dumps(resource)
        lab = resource if keep_labs and _is_lab(resource) else None
        templates.append(Template(resource["resourceType"], _cut(text, ids), lab))
    return SourcePatient(path.name, ids, tuple(templates))


def _relative_references(node: Any, types: dict[str, str]) -> Any:
    """`urn:uuid:X` references become `Type/X`, as a Bulk Data export writes them."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "reference" and isinstance(value, str) and value.startswith("urn:uuid:"):
                target = value[len("urn:uuid:"):]
                value = f"{types[target]}/{target}" if target in types else value
            out[key] = _relative_references(value, types)
        return out
    if isinstance(node, list):
        return [_relative_references(item, types) for item in node]
    return node


def _is_lab(resource: dict[str, Any]) -> bool:
    if resource.get("resourceType") != "Observation":
        return False
    return any(coding.get("code") == "laboratory"
               for category in resource.get("category", [])
               for coding in category.get("coding", []))


def _cut(text: bytes, ids: frozenset[bytes]) -> tuple[bytes, ...]:
    pieces: list[bytes] = []
    start = 0
    for match in _UUID.finditer(text):
        if match.group() in ids:
            pieces += [text[start:match.start()], match.group()]
            start = match.end()
    pieces.append(text[start:])
    return tuple(pieces)


class Renderer:
    def __init__(self, seed: int, jitter: float) -> None:
        self.seed = seed
        self.jitter = jitter

    def new_id(self, patient: int, old: bytes) -> bytes:
        digest = hashlib.blake2b(b"%d:%d:" % (self.seed, patient) + old, digest_size=16)
        return str(uuid.UUID(bytes=digest.digest(), version=4)).encode()

    def render(self, patient: int, source: SourcePatient) -> Iterator[tuple[str, bytes]]:
        ids = {old: self.new_id(patient, old) for old in source.ids}
        rng = random.Random(f"{self.seed}:{patient}")
        for template in source.resources:
            if template.lab is not None and self.jitter:
                pieces = _cut(orjson.dumps(self._jittered(template.lab, rng)), source.ids)
            else:
                pieces = template.pieces
            yield template.resource_type, b"".join(
                ids[piece] if i % 2 else piece for i, piece in enumerate(pieces))

    def _jittered(self, node: Any, rng: random.Random) -> Any:
        if isinstance(node, dict):
            out = {key: self._jittered(value, rng) for key, value in node.items()}
            quantity = node.get("valueQuantity")
            if isinstance(quantity, dict) and isinstance(quantity.get("value"), (int, float)):
                out["valueQuantity"] = {**out["valueQuantity"],
                                        "value": self._scaled(quantity["value"], rng)}
            return out
        if isinstance(node, list):
            return [self._jittered(item, rng) for item in node]
        return node

    def _scaled(self, value: float, rng: random.Random) -> float | int:
        places = max(0, -Decimal(repr(value)).as_tuple().exponent)  # type: ignore[operator]
        scaled = round(value * rng.uniform(1 - self.jitter, 1 + self.jitter), places)
        return int(scaled) if places == 0 and isinstance(value, int) else scaled


class NdjsonWriter:
    """One file per resource type, split every LINES_PER_FILE lines."""

    def __init__(self, out: Path, gz: bool) -> None:
        self.out, self.gz = out, gz
        self.handles: dict[str, tuple[IO[bytes], int, int]] = {}  # type -> (file, part, lines)
        self.files: list[tuple[str, Path]] = []

    def write(self, resource_type: str, line: bytes) -> None:
        handle, part, lines = self.handles.get(resource_type) or self._open(resource_type, 0)
        if lines >= LINES_PER_FILE:
            handle.close()
            handle, part, lines = self._open(resource_type, part + 1)
        handle.write(line + b"\n")
        self.handles[resource_type] = (handle, part, lines + 1)

    def _open(self, resource_type: str, part: int) -> tuple[IO[bytes], int, int]:
        path = self.out / f"{resource_type}.{part:03d}.ndjson{'.gz' if self.gz else ''}"
        self.files.append((resource_type, path))
        # mtime=0: the same arguments write the same bytes
        handle: IO[bytes] = (gzip.GzipFile(path, "wb", compresslevel=1, mtime=0) if self.gz
                             else path.open("wb"))
        return handle, part, 0

    def close(self) -> None:
        for handle, _, _ in self.handles.values():
            handle.close()
        manifest = {
            "transactionTime": "2026-11-26T00:00:00Z",
            "request": "$export",
            "requiresAccessToken": False,
            "output": [{"type": t, "url": p.name} for t, p in sorted(self.files)],
            "error": [],
        }
        (self.out / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))


def write_population(patients: int, out: Path, *, fmt: str = "ndjson", gz: bool = False,
                     seed: int = 1, jitter: float = 0.0,
                     source: Path = DEFAULT_SOURCE, types: frozenset[str] | None = None) -> None:
    sources = read_sources(source, as_ndjson=fmt == "ndjson", keep_labs=jitter > 0)
    if types is not None:
        sources = [SourcePatient(s.name, s.ids, tuple(t for t in s.resources
                                                      if t.resource_type in types))
                   for s in sources]
    renderer = Renderer(seed, jitter)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "ndjson":
        writer = NdjsonWriter(out, gz)
        for n in range(patients):
            for resource_type, line in renderer.render(n, sources[n % len(sources)]):
                writer.write(resource_type, line)
        writer.close()
        return
    for n in range(patients):
        source_patient = sources[n % len(sources)]
        entries = [b'{"fullUrl":"urn:uuid:%s","resource":%s,"request":{"method":"POST","url":"%s"}}'
                   % (orjson.loads(line)["id"].encode(), line, resource_type.encode())
                   for resource_type, line in renderer.render(n, source_patient)]
        body = b'{"resourceType":"Bundle","type":"transaction","entry":[' + b",".join(entries) + b"]}"
        name = f"patient-{n:06d}.json"
        if gz:
            (out / f"{name}.gz").write_bytes(gzip.compress(body, compresslevel=1, mtime=0))
        else:
            (out / name).write_bytes(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--format", choices=("ndjson", "bundles"), default="ndjson")
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jitter", type=float, nargs="?", const=0.05, default=0.0)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--types", default=None,
                        help="comma-separated resource types to keep, or 'read'")
    args = parser.parse_args()
    write_population(args.patients, args.out, fmt=args.format, gz=args.gzip, seed=args.seed,
                     jitter=args.jitter, source=args.source, types=_types(args.types))


def _types(named: str | None) -> frozenset[str] | None:
    if named is None:
        return None
    if named == "read":
        from fasciculation_cds.ingest import READ_TYPES

        return frozenset({*READ_TYPES, "Patient"})
    return frozenset(t.strip() for t in named.split(",") if t.strip())


if __name__ == "__main__":
    main()
