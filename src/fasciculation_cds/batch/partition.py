"""Streaming hash-partition of the input by patient into shard files, with bounded memory.

Each line is parsed once. A resource some rule can use is written to shard
`crc32(patient key) % shards` as the bytes it was read as (an NDJSON line is not re-encoded);
every other resource of a patient is only counted, and each input file writes summary records
per patient instead (with the latest time, for `--as-of auto`). So every resource of a
patient lands in the same shard whatever file it came from (Bulk Data puts each resource type
in its own file), and the shards hold only what the evaluation reads. Medication resources go to
a side file every shard reads.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

import orjson

from ..errors import InputError
from ..fhir_time import (
    PERIOD_FIELDS,
    TIME_FIELDS,
    latest_recorded_time,
    parse_as_of,
    valid_times,
)
from ..fhir_version import other_version_in
from ..ingest import AS_OF_CLOCK_MARGIN, CODED_TYPES, READ_TYPES, is_relevant
from ..ruleset import load_rules
from ..sources import (
    READ_ERRORS,
    RawResource,
    dumps_exact,
    fewer_collections,
    is_ndjson,
    loads_exact,
    ndjson_line_items,
    parse_ndjson_line,
    read_file,
)
from ..terminology import Terminology
from . import storage
from .keys import MEDICATION, UNOWNED, keyed, patient_key
from .options import OutputError, Settings
from .unrecognized import TALLY_FILE, PartitionTally

MEDICATIONS_FILE = "medications.ndjson"
SPILL_FILE = "summaries.spill"  # a task's summaries until its shard files are complete
RESOURCE, SKIPPED = "r", "s"


@dataclass
class PartitionResult:
    shards: list[Path]
    resources: int
    skipped_unowned: int
    problems: list[str] = field(default_factory=list)
    inputs: list[dict[str, Any]] = field(default_factory=list)


def shard_of(key: str, shards: int) -> int:
    return zlib.crc32(key.encode()) % shards


def encode_record(key: str, source: str, entry: str, full_url: str | None,
                  resource: bytes) -> bytes:
    """A shard record: a compact JSON header, a tab, the resource's JSON (one line)."""
    return orjson.dumps([RESOURCE, key, source, entry, full_url]) + b"\t" + resource + b"\n"


def encode_skipped(key: str, source: str, entry: str, count: int,
                   latest: datetime | None, refused: list[str] | None = None) -> bytes:
    return orjson.dumps([SKIPPED, key, source, entry, count,
                         latest.isoformat() if latest else None, refused or []]) + b"\n"


@dataclass(frozen=True)
class Skipped:
    """Resources of one patient in one file that no rule can use (see Grouper.note_skipped)."""

    key: str
    source: str
    entry: str
    count: int
    latest: datetime | None
    refused: tuple[str, ...] = ()
    """Times `as_of=auto` refused as later than the run's clock (a few, for the notice)."""


def decode_key(line: bytes) -> str:
    tab = line.find(b"\t")
    key: str = orjson.loads(line[:tab] if tab >= 0 else line)[1]
    return key


def decode_record(line: bytes) -> RawResource | Skipped:
    tab = line.find(b"\t")
    if tab < 0:
        _, key, source, entry, count, latest, refused = orjson.loads(line)
        return Skipped(key, source, entry, count,
                       datetime.fromisoformat(latest) if latest else None, tuple(refused))
    _, _, source, entry, full_url = orjson.loads(line[:tab])
    return RawResource(loads_exact(line[tab + 1:]), source, entry, full_url)


@dataclass
class FilePartition:
    """What partitioning one input file produced (its shard files live in their own folder)."""

    resources: int = 0
    skipped_unowned: int = 0
    problems: list[str] = field(default_factory=list)
    sha256: str | None = None


@dataclass(frozen=True)
class PartitionTask:
    path: str
    work: str
    task: int
    shards: int
    settings: Settings


class _HashingReader(io.RawIOBase):
    """Hashes the file's bytes as they are read, so an input is read from disk once."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.digest = raw, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count: int = self.raw.readinto(buffer)  # type: ignore[attr-defined]
        self.digest.update(memoryview(buffer)[:count])
        return count


TIMED_FIELDS = (*TIME_FIELDS, *PERIOD_FIELDS)  # all that latest_recorded_time reads
BY_CODE = frozenset(t for t, element in CODED_TYPES.items() if element == "code")
RECENT_MEMO_LIMIT = 1 << 16


class Relevance:
    """Which resources a shard keeps whole: those some rule can use (all of them with
    `--strict`, which validates every resource), minus Observations older than every look-back."""

    def __init__(self, settings: Settings) -> None:
        ruleset = load_rules(settings.rules_dir)
        self.terminology: Terminology | None = None if settings.strict else ruleset.terminology
        self.track_times = settings.as_of == "auto"
        self.latest_plausible = datetime.now(timezone.utc) + AS_OF_CLOCK_MARGIN
        self.since: datetime | None = None
        if settings.as_of not in (None, "auto"):
            self.since = parse_as_of(settings.as_of) - timedelta(days=ruleset.max_lookback_days)

        # the answer for each distinct set of time elements: the Observations of one panel
        # or visit share theirs, so most are decided by one dictionary look-up
        self.recent: dict[bytes, bool] = {}
        self.by_code: dict[bytes, bool] = {}

    def keeps(self, resource: dict[str, Any]) -> bool:
        return self.decide(resource)[0]

    def decide(self, resource: dict[str, Any]) -> tuple[bool, bytes | None]:
        """Whether the shard keeps the resource; and for a type whose relevance ingest decides
        by its `code` alone (`ingest.CODED_TYPES`), that element serialized: the key of this
        memo of `is_relevant`, and of the unrecognized tally (one serialization serves both)."""
        if self.terminology is None:
            return True, None
        resource_type = resource.get("resourceType")
        found = None
        if resource_type in BY_CODE:
            try:
                found = orjson.dumps((resource_type, "code", resource.get("code")))
            except TypeError:  # not JSON (a caller's own objects): no memo
                found = None
        if found is None:
            relevant = is_relevant(resource, self.terminology)
        else:
            known = self.by_code.get(found)
            if known is None:
                known = is_relevant(resource, self.terminology)
                if len(self.by_code) < RECENT_MEMO_LIMIT:
                    self.by_code[found] = known
            relevant = known
        if not relevant:
            return False, found
        if self.since is not None and resource_type == "Observation":
            return self._recent(resource), found  # else the grouper would skip it unvalidated
        return True, found

    def _recent(self, resource: dict[str, Any]) -> bool:
        try:
            key = orjson.dumps([resource.get(name) for name in TIMED_FIELDS])
        except TypeError:  # not JSON (a caller's own objects): no memo
            return self._newer_than_since(resource)
        known = self.recent.get(key)
        if known is None:
            if len(self.recent) >= RECENT_MEMO_LIMIT:
                self.recent.clear()
            known = self.recent[key] = self._newer_than_since(resource)
        return known

    def _newer_than_since(self, resource: dict[str, Any]) -> bool:
        when = latest_recorded_time(resource)
        return when is None or self.since is None or when >= self.since


SUMMARIES_HELD = 8192  # patients: more, and the summaries held so far are written out


class Router:
    """Routes one file's resources: kept whole, summed up per patient, or dropped.

    `emit(key, record)` receives each kept resource's shard record, and `emit_summary(key,
    record)` the summaries of what no rule can use: whenever SUMMARIES_HELD patients have one,
    and at `close()`, so that memory stays flat in the patients of the file. A patient may then
    have several summaries of one file: the evaluation adds them up, and their first names the
    patient's first such line. The local engine writes summaries after every kept resource of
    the file (`ShardWriter`), Spark collects them, so the evaluation sees them in that order.
    """

    def __init__(self, settings: Settings, emit: Callable[[str, bytes], None],
                 emit_summary: Callable[[str, bytes], None], *, count: bool = True) -> None:
        self.relevance = Relevance(settings)
        self.emit, self.emit_summary = emit, emit_summary
        # what is not kept, by coding (docs/coverage.md); with --strict everything is kept
        self.tally = PartitionTally(settings) if count and not settings.strict else None
        # key -> [source, entry, count, latest, {element: count}]
        self.skipped: dict[str, list[Any]] = {}
        self.result = FilePartition()

    def route(self, key: str, resource: dict[str, Any], source: str, entry: str,
              full_url: str | None, line: bytes | None) -> None:
        self.result.resources += 1
        if key == UNOWNED:
            self.result.skipped_unowned += 1
            if resource.get("resourceType") in READ_TYPES and self.relevance.keeps(resource):
                # a resource a rule would read that names no patient (or a Patient without
                # id): a problem of the run, never dropped without a word
                what = ("Patient has neither id nor fullUrl" if resource["resourceType"] ==
                        "Patient" else "names no patient by reference (subject), so no "
                        "patient's assessment can use it")
                self.result.problems.append(InputError(what, source=source,
                                                       entry=entry).describe())
            return
        relevant, found = self.relevance.decide(resource)
        if key == MEDICATION and not relevant:
            if self.tally is not None:
                self.tally.note(self.tally.medications, resource, found)
            return
        if relevant:
            self.emit(key, encode_record(key, source, entry, full_url,
                                         line or dumps_exact(resource)))
            return
        # only valid, plausible times count for as_of=auto (as the evaluation takes them); a
        # few refused ones are kept for the patient's notice
        latest, refused = None, []
        if self.relevance.track_times:
            limit = self.relevance.latest_plausible
            times = valid_times(resource)
            latest = max((t for t in times if t <= limit), default=None)
            refused = [f"{t.isoformat()} ({resource.get('resourceType')} at {source} {entry})"
                       for t in times if t > limit]
        seen = self.skipped.get(key)
        if seen is None:
            if len(self.skipped) == SUMMARIES_HELD:
                self.close()
            seen = self.skipped[key] = [source, entry, 0, latest, [], {}]
        elif latest is not None and (seen[3] is None or latest > seen[3]):
            seen[3] = latest
        seen[2] += 1
        if refused and len(seen[4]) < 3:
            seen[4] += refused[:3 - len(seen[4])]
        if self.tally is not None:  # by element, in the patient's summary (docs/coverage.md)
            self.tally.note(seen[5], resource, found)

    def close(self) -> None:
        """Write out the summaries held (at the end of the file, or to make room)."""
        for key, (source, entry, count, latest, refused, elements) in self.skipped.items():
            self.emit_summary(key, encode_skipped(key, source, entry, count, latest, refused))
            if self.tally is not None:
                self.tally.add(key, elements)
        self.skipped.clear()


class ShardWriter:
    """One task's shard files and Medication side file, in its own folder.

    Summaries are spilled to a file of the task as the router writes them out, and appended to
    the shard files by `finish()`: so a shard file holds every kept resource of the input file
    first and then the summaries, in the order they were written out, however often that was.
    """

    def __init__(self, folder: Path, shards: int) -> None:
        self.folder, self.shards = folder, shards
        self.handles: dict[int, IO[bytes]] = {}
        self.medications = (folder / MEDICATIONS_FILE).open("wb")
        self.spill: IO[bytes] | None = None

    def __call__(self, key: str, record: bytes) -> None:
        if key == MEDICATION:
            self.medications.write(record)
            return
        shard = shard_of(key, self.shards)
        handle = self.handles.get(shard)
        if handle is None:
            handle = self.handles[shard] = (self.folder / shard_name(shard)).open("wb")
        handle.write(record)

    def summary(self, key: str, record: bytes) -> None:
        if self.spill is None:
            self.spill = (self.folder / SPILL_FILE).open("w+b")
        self.spill.write(record)

    def finish(self) -> None:
        """The spilled summaries, after everything else, each to its patient's shard."""
        if self.spill is None:
            return
        self.spill.seek(0)
        for line in self.spill:
            self(decode_key(line), line)
        self.spill.close()
        (self.folder / SPILL_FILE).unlink()
        self.spill = None

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()
        self.medications.close()
        if self.spill is not None:
            self.spill.close()


def route_file(path: Path | str, router: Router) -> str | None:
    """Route every resource of one input file (a path or an object's URI: give a URI as a
    string); its SHA-256. A file that cannot be read to its end is a problem of the run (whose
    lines were lost is unknown), never a silent gap."""
    where = str(path)
    try:
        if is_ndjson(Path(storage.name(where))):
            return _ndjson(where, router, where)
        _bundle(where, router, where)
        return storage.sha256(where) if storage.is_uri(where) else _sha256(Path(where))
    except InputError as exc:
        router.result.problems.append(exc.describe())
        return None


def _ndjson(path: str, router: Router, source: str) -> str:
    """Route every line of an NDJSON file; the file's SHA-256 (raises InputError on a read
    error, after the lines before it were routed)."""
    try:
        with storage.open_input(path) as file:
            hashing = _HashingReader(file)
            buffered = io.BufferedReader(hashing, 1 << 20)
            # lines split by a buffer in C over large reads of the decompressed stream (a
            # GzipFile's own line iteration costs a Python call per line)
            handle: IO[bytes] = (io.BufferedReader(gzip.GzipFile(
                fileobj=buffered, mode="rb"), 1 << 20)
                if path.lower().endswith(".gz") else buffered)
            for number, line in enumerate(handle, start=1):
                try:
                    resource = loads_exact(line)
                except orjson.JSONDecodeError:
                    if line.strip():
                        router.result.problems.append(
                            _line_problem(line, source, number).describe())
                    continue
                if not isinstance(resource, dict) or \
                        not isinstance(resource.get("resourceType"), str) or \
                        other_version_in(resource) is not None:
                    router.result.problems.append(
                        _line_problem(line, source, number).describe())
                    continue
                try:
                    if resource["resourceType"] == "Bundle":  # one Bundle per line: its entries
                        _bundle_line(line, source, number, router)
                        continue
                    router.route(patient_key(resource, None, {}), resource, source,
                                 f"line {number}", None, line.rstrip(b"\r\n"))
                except OSError as exc:  # writing a shard, not reading the input
                    raise OutputError(f"cannot write a shard file: {exc}") from None
            return hashing.digest.hexdigest()
    except READ_ERRORS as exc:
        # the shard files are written by the router, not here: this is the input failing
        reason = (f"the file ends early (truncated or corrupt compressed data: {exc})"
                  if isinstance(exc, EOFError) else str(exc) or type(exc).__name__)
        raise InputError(f"cannot read: {reason}", source=source) from None


def _bundle_line(line: bytes, source: str, number: int, router: Router) -> None:
    """An NDJSON line holding a Bundle is read as that Bundle, never skipped."""
    items: list[RawResource] = []
    for item in ndjson_line_items(line, source, number):
        if isinstance(item, InputError):
            router.result.problems.append(item.describe())
        else:
            items.append(item)
    for key, raw in keyed(items):
        router.route(key, raw.resource, raw.source, raw.entry, raw.full_url, None)


def _line_problem(line: bytes, source: str, number: int) -> InputError:
    parsed = parse_ndjson_line(line, source, number)
    return parsed if isinstance(parsed, InputError) else InputError(
        "not a FHIR resource", source=source, entry=f"line {number}")


def _bundle(path: str, router: Router, source: str) -> None:
    items: list[RawResource] = []
    strict = router.relevance.terminology is None
    for item in (storage.read_document(path, strict=strict) if storage.is_uri(path)
                 else read_file(Path(path), strict=strict)):
        if isinstance(item, InputError):
            router.result.problems.append(item.describe())
        else:
            items.append(item)
    try:
        for key, raw in keyed(items):
            router.route(key, raw.resource, raw.source, raw.entry, raw.full_url, None)
    except OSError as exc:
        raise OutputError(f"cannot write a shard file: {exc}") from None


def _sha256(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def partition_file(task: PartitionTask) -> FilePartition:
    """Hash-partition one input file into `work/tNNNNN/shard-*.ndjson` (one task of many).

    Runs in worker processes, so large exports are partitioned on every core; a shard is the
    union of its files across tasks, read in task order.
    """
    folder = task_folder(Path(task.work), task.task)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        writer = ShardWriter(folder, task.shards)
    except OSError as exc:
        raise OutputError(f"cannot write {folder}: {exc}") from None
    router = Router(task.settings, writer, writer.summary)
    storage.use(task.settings.storage)
    try:
        with fewer_collections():
            router.result.sha256 = route_file(task.path, router)
        router.close()
        writer.finish()
        if router.tally is not None:
            router.tally.write(folder / TALLY_FILE)
    except OSError as exc:
        raise OutputError(f"cannot write {folder}: {exc}") from None
    finally:
        writer.close()
    return router.result


def task_folder(work: Path, task: int) -> Path:
    return work / f"t{task:05d}"


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.ndjson"


def shard_files(work: Path, shard: int) -> list[Path]:
    """The files that make up one shard, in input order."""
    return sorted(work.glob(f"t*/{shard_name(shard)}"))


def medication_files(work: Path) -> list[Path]:
    return sorted(work.glob(f"t*/{MEDICATIONS_FILE}"))


def read_records(paths: Sequence[Path]) -> Iterator[RawResource | Skipped]:
    for path in paths:
        with path.open("rb") as handle:
            for line in handle:
                yield decode_record(line)


def merge_file_results(results: Sequence[FilePartition], shards: int) -> PartitionResult:
    merged = PartitionResult(shards=[], resources=0, skipped_unowned=0)
    for result in results:
        merged.resources += result.resources
        merged.skipped_unowned += result.skipped_unowned
        merged.problems += result.problems
    merged.shards = [Path(shard_name(i)) for i in range(shards)]
    return merged
