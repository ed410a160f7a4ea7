"""Reading FHIR JSON from disk: Bundles, single resources, Bulk Data NDJSON (.gz) and folders.

Yields each resource with where it came from (file, Bundle entry index or NDJSON line), so that
any later error can name the exact entry. Parsing is orjson; nothing here validates FHIR.
"""

from __future__ import annotations

import gc
import gzip
import json
import math
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from .errors import InputError
from .fhir_version import other_version_in
from .strict_checks import bundle_problems

# Bulk Data exports write an event log beside the resources; it holds no FHIR resources. A folder
# is read by its files, so its manifest.json (which lists the same files) is only followed when
# it is named on its own.
SKIPPED_IN_FOLDERS = frozenset({"log.ndjson", "log.ndjson.gz", "manifest.json"})
_BUNDLE_SKIP_TYPES = frozenset({"OperationOutcome"})
# What a damaged file raises while it is read: OSError (unreadable, BadGzipFile, CRC), EOFError
# (a gzip member cut short) and zlib.error (corrupt deflate data).
READ_ERRORS = (OSError, EOFError, zlib.error)
# Bulk Data names files by resource type: Observation.ndjson, Observation.000.ndjson.gz, ...
_TYPE_IN_NAME = re.compile(r"^([A-Z][A-Za-z]+)(?:[._-]|$)")
_CONTAINER_TYPES = frozenset({"Bundle", "Parameters"})  # hold resources of any type
# Quantity values (`"value": 0.69999999999999999999`: what the rules compare with thresholds,
# in results, reference ranges and supplies) that a double may not hold as written: 16 or more
# digits, or an exponent. The literal key makes this a fast search of the raw bytes.
_LONG_VALUE = re.compile(
    rb'"value"\s*:\s*(-?(?:\d[\d.]{15,}(?:[eE][+-]?\d+)?|[\d.]+[eE][+-]?\d+))')


def _doubles_hold(raw: bytes) -> bool:
    """Whether every such value in `raw` is exactly the double it parses to (Synthea writes
    doubles with 17 digits, which they hold; 0.69999999999999999999 is not)."""
    for match in _LONG_VALUE.finditer(raw):
        token = match[1].decode()
        try:
            value = float(token)
            if repr(value) == token:
                continue
            if not math.isfinite(value) or Decimal(token) != Decimal(repr(value)):
                return False
        except (ValueError, ArithmeticError):
            continue  # not a number after all: orjson decides
    return True


def loads_exact(data: bytes | str) -> Any:
    """Parsed JSON whose decimals keep the value they were written with.

    orjson reads every JSON number as a double: 0.69999999999999999999 would become 0.7 and
    cross a threshold, and 1e999 would be refused as infinity. Input holding such a number is
    parsed again with decimals kept as `Decimal` (FHIR decimals are exact: R4 2.24.0.1)."""
    raw = data.encode() if isinstance(data, str) else data
    if _doubles_hold(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if "infinity" not in str(exc):
                raise
    try:
        return json.loads(raw, parse_float=Decimal, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        # the same wording as orjson for JSON that is not valid (NaN, Infinity included)
        raise orjson.JSONDecodeError(str(exc), raw.decode("utf-8", "replace"), 0) from None


def dumps_exact(document: Any) -> bytes:
    """JSON of a document `loads_exact` read, its exact decimals written as they were read."""
    return orjson.dumps(document, default=_exact_default)


def _exact_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))
    raise TypeError(f"{type(value).__name__} is not JSON")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


@dataclass(frozen=True)
class RawResource:
    """One resource as parsed JSON, and where it was found."""

    resource: dict[str, Any]
    source: str
    entry: str
    full_url: str | None = None
    draft_order: bool = False  # a CDS Hooks draftOrders entry, not part of the record


@contextmanager
def fewer_collections(threshold: int = 100_000) -> Iterator[None]:
    """Reading FHIR allocates hundreds of thousands of small, acyclic dicts and lists; with
    the default threshold the cyclic collector runs every 700 of them and, as the heap grows,
    walks it again and again (a third of ingest time on Synthea Bundles). Collections are made
    rarer, not stopped, while a block of input is read; the previous thresholds come back."""
    previous = gc.get_threshold()
    gc.set_threshold(max(previous[0], threshold), *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)


def is_ndjson(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith((".ndjson", ".ndjson.gz", ".jsonl"))


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files to read, in a stable order: folders are walked, Bulk Data logs skipped, a Bulk
    Data manifest named on its own replaced by the local files it lists."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.name.lower() in SKIPPED_IN_FOLDERS:
                    continue
                # a data file's name that cannot be read (a broken link, a folder) is kept, so
                # that reading it is a problem rather than a silent gap
                if child.name.lower().endswith((".json", ".json.gz")) or is_ndjson(child):
                    files.append(child)
        elif path.exists():
            files += manifest_outputs(path) if path.name.lower() == "manifest.json" else [path]
        else:
            raise InputError("no such file or folder", source=str(path))
    return files


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except READ_ERRORS as exc:
        raise InputError(f"cannot read: {_reason(exc)}", source=str(path)) from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return f"the file ends early (truncated or corrupt compressed data: {exc})"
    return str(exc) or type(exc).__name__


def read_file(path: Path, *, strict: bool = False) -> Iterator[RawResource | InputError]:
    """Resources of one file; a broken NDJSON line is yielded as an error, the rest go on."""
    if is_ndjson(path):
        yield from _read_ndjson(path)
        return
    data = _read_bytes(path)
    if not data.strip():
        raise InputError("file is empty", source=str(path))
    try:
        document = loads_exact(data)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc}", source=str(path)) from None
    yield from resources_of(document, str(path), strict=strict)


def _open_lines(path: Path) -> Iterator[bytes]:
    """Lines of a (possibly gzipped) file, streamed: NDJSON exports are often larger than memory."""
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as handle:
            yield from handle
    except READ_ERRORS as exc:
        raise InputError(f"cannot read: {_reason(exc)}", source=str(path)) from None


def _read_ndjson(path: Path) -> Iterator[RawResource | InputError]:
    for number, line in enumerate(_open_lines(path), start=1):
        if line.strip():
            yield from ndjson_line_items(line, str(path), number)


def ndjson_line_items(line: bytes | str, source: str,
                      number: int) -> Iterator[RawResource | InputError]:
    """The resources of one NDJSON line: the resource, or the entries of a Bundle (some
    exporters write one Bundle per line), each entry named `line N entry[i]`."""
    parsed = parse_ndjson_line(line, source, number)
    if isinstance(parsed, RawResource) and parsed.resource["resourceType"] == "Bundle":
        entry = f"line {number}"
        try:
            for item in resources_of(parsed.resource, source):
                if isinstance(item, RawResource):
                    yield RawResource(item.resource, source, f"{entry} {item.entry}",
                                      item.full_url)
                else:
                    yield InputError(item.message, source=source,
                                     entry=f"{entry} {item.entry or ''}".strip(), path=item.path)
        except InputError as exc:
            yield InputError(exc.message, source=source, entry=entry, path=exc.path)
        return
    yield parsed


def parse_ndjson_line(line: bytes | str, source: str, number: int) -> RawResource | InputError:
    """One NDJSON line (1-based `number`), as a resource or an error naming file and line."""
    entry = f"line {number}"
    try:
        resource = loads_exact(line)
    except orjson.JSONDecodeError as exc:
        return InputError(f"not valid JSON: {exc}", source=source, entry=entry)
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        return InputError("not a FHIR resource (no resourceType)", source=source, entry=entry)
    version = other_version_in(resource)
    if version is not None:
        return InputError(version, source=source, entry=entry)
    return RawResource(resource, source, entry)


def resources_of(
    document: Any, source: str, *, strict: bool = False
) -> Iterator[RawResource | InputError]:
    """Resources in a parsed JSON document: a Bundle's entries, or the resource itself."""
    if isinstance(document, list):
        raise InputError("a JSON array is not a FHIR resource (use NDJSON for many)", source=source)
    if not isinstance(document, dict):
        raise InputError("not a FHIR resource (expected a JSON object)", source=source)
    resource_type = document.get("resourceType")
    if resource_type is None and _is_bulk_manifest(document):
        raise InputError("a Bulk Data manifest: name it on its own so its files are read",
                         source=source)
    if not isinstance(resource_type, str):
        raise InputError("not a FHIR resource (no resourceType)", source=source)
    version = other_version_in(document)
    if version is not None:
        raise InputError(version, source=source)
    if resource_type != "Bundle":
        yield RawResource(document, source, "resource")
        return
    if strict:
        for path, message in bundle_problems(document):
            yield InputError(message, source=source, entry="Bundle", path=path)
    entries = document.get("entry") or []
    if not isinstance(entries, list):
        raise InputError("Bundle.entry must be an array", source=source, path="Bundle.entry")
    for index, entry in enumerate(entries):
        where = f"entry[{index}]"
        if not isinstance(entry, dict):
            yield InputError("Bundle entry must be an object", source=source, entry=where)
            continue
        resource = entry.get("resource")
        if resource is None and isinstance(entry.get("resourceType"), str):
            resource = entry  # some servers list the resources themselves as entries
        if resource is None:  # e.g. a transaction DELETE: nothing to read
            continue
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            yield InputError("entry.resource is not a FHIR resource (no resourceType)",
                             source=source, entry=where)
            continue
        if resource["resourceType"] in _BUNDLE_SKIP_TYPES:
            continue
        full_url = entry.get("fullUrl")
        yield RawResource(resource, source, where, full_url if isinstance(full_url, str) else None)


def _is_bulk_manifest(document: Mapping[str, Any]) -> bool:
    return isinstance(document.get("output"), list) and "transactionTime" in document


def manifest_outputs(path: Path) -> list[Path]:
    """The local files a Bulk Data manifest.json lists (`output[].url`), in its order."""
    try:
        document = orjson.loads(_read_bytes(path))
    except orjson.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc}", source=str(path)) from None
    if not isinstance(document, dict) or not _is_bulk_manifest(document):
        return [path]  # an ordinary file that happens to be called manifest.json
    files = []
    for index, item in enumerate(document["output"]):
        url = item.get("url") if isinstance(item, dict) else None
        if not isinstance(url, str):
            raise InputError("manifest output has no url", source=str(path),
                             entry=f"output[{index}]")
        local = Path(url.removeprefix("file://"))
        candidates = [local if local.is_absolute() else path.parent / local,
                      path.parent / Path(url).name]
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            raise InputError(f"manifest file not found locally: {url}", source=str(path),
                             entry=f"output[{index}]")
        files.append(found)
    return files


def declared_types(paths: Iterable[str | Path]) -> dict[Path, str]:
    """The resource type each Bulk Data manifest says its files hold (`output[].type`), by
    resolved path.

    Read from a manifest.json named as an input and from the manifest.json of each input
    folder (its files are read by walking the folder, but the manifest still says their types).
    """
    types: dict[Path, str] = {}
    for raw in paths:
        path = Path(raw)
        manifests = sorted(path.rglob("manifest.json")) if path.is_dir() else [path]
        for manifest in manifests:
            if manifest.name.lower() != "manifest.json":
                continue
            try:
                document = orjson.loads(_read_bytes(manifest))
            except (InputError, orjson.JSONDecodeError):
                continue  # named on its own, expand_paths reports it; in a folder it is not data
            if not isinstance(document, dict) or not _is_bulk_manifest(document):
                continue
            for item in document["output"]:
                if isinstance(item, dict) and isinstance(item.get("url"), str) \
                        and isinstance(item.get("type"), str):
                    local = Path(str(item["url"]).removeprefix("file://"))
                    for candidate in (local if local.is_absolute() else manifest.parent / local,
                                      manifest.parent / local.name):
                        types[candidate.resolve()] = item["type"]
    return types


def type_from_name(path: Path) -> str | None:
    """The resource type a Bulk Data file name declares (`Observation.000.ndjson.gz`), if any.

    Only NDJSON files: a Bundle file holds resources of every type whatever its name.
    """
    if not is_ndjson(path):
        return None
    match = _TYPE_IN_NAME.match(path.name)
    if match is None or match[1] in _CONTAINER_TYPES:
        return None
    from fhir.resources.R4B import get_fhir_model_class

    try:
        get_fhir_model_class(match[1])
    except (ValueError, KeyError):
        return None
    return match[1]


STDIN = "<stdin>"


def read_stdin_bytes(data: bytes, *, strict: bool = False) -> Iterator[RawResource | InputError]:
    """What `-` names on the command line: one JSON document (a Bundle or a resource), or NDJSON
    (one resource per line); errors name `<stdin>` and the line."""
    if not data.strip():
        raise InputError("standard input is empty", source=STDIN)
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        lines = [line for line in data.splitlines() if line.strip()]
        if len(lines) < 2:
            raise InputError(f"not valid JSON: {exc}", source=STDIN) from None
        for number, line in enumerate(data.splitlines(), start=1):
            if line.strip():
                yield parse_ndjson_line(line, STDIN, number)
        return
    yield from resources_of(document, STDIN, strict=strict)
