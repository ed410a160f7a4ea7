"""What a batch run is asked to do, what it reports and how it can fail (both engines)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from .. import errors
from ..evaluate import AsOf

Engine = Literal["local", "spark"]

# Exit codes of `fasciculation-cds batch` (docs/batch.md, "Guarantees and exit codes").
EXIT_INCOMPLETE = 2  # the run finished, but some row is not `ok` or the input had problems
EXIT_UNREADABLE_INPUT = 3  # an input named on the command line cannot be read: nothing written
EXIT_OUTPUT_FAILED = 4  # the output folder cannot be written (full disk, permissions)
EXIT_MISSING_DEPENDENCY = errors.EXIT_MISSING_DEPENDENCY  # e.g. --engine spark without pyspark
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C)
EXIT_TERMINATED = 143  # SIGTERM


@dataclass(frozen=True)
class StorageOptions:
    """Non-secret options of object storage (docs/batch.md, "Object storage"); credentials
    come only from each cloud's own chain, never from here."""

    region: str | None = None
    endpoint_url: str | None = None
    sse: str | None = None  # server-side encryption: AES256 or aws:kms
    kms_key_id: str | None = None  # an identifier (ARN or alias), not key material

    def describe(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}


@dataclass(frozen=True)
class BatchOptions:
    # paths, or URIs of object storage (s3://, abfss://, ...: see storage.location)
    inputs: Sequence[Path | str]
    out: Path | str
    output_format: Literal["parquet", "ndjson"] = "parquet"
    workers: int | None = None
    engine: Engine = "local"
    as_of: str | None = None
    assume_presentation: bool = False
    rules_dir: Path | None = None
    resume: bool = False
    strict: bool = False
    shards: int | None = None
    scratch: Path | None = None  # the working folder's parent when --out is object storage
    storage: StorageOptions = field(default_factory=StorageOptions)


@dataclass
class BatchSummary:
    patients: int
    evaluated: int
    errors: int
    severities: dict[str, int]
    top_rules: list[tuple[str, int]]
    problems: list[str]
    outputs: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)
    partial: int = 0  # evaluated, but the run had input problems (see docs/batch.md)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    resources: int = 0
    skipped_unowned: int = 0
    unrecognized: list[dict[str, Any]] = field(default_factory=list)
    """The codings the rules did not understand that affect the most patients (local engine;
    all of them are in unrecognized.parquet)."""
    unrecognized_codings: int | None = None


@dataclass(frozen=True)
class Settings:
    """What every worker (process or Spark executor) needs to know of the run."""

    rules_dir: str | None
    as_of: AsOf | Literal["auto"]
    as_of_label: str
    assume_presentation: bool
    strict: bool
    output_format: str
    storage: StorageOptions | None = None


class OutputError(Exception):
    """The output folder could not be written; no output of this run looks complete."""


class MissingDependencyError(Exception):
    """An optional dependency the chosen engine needs is not installed."""


class Stopped(BaseException):
    """SIGTERM, turned into an exception so the run stops as cleanly as on Ctrl-C."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(f"stopped by signal {signal_number}")
        self.signal_number = signal_number
