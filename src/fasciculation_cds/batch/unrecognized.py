"""`unrecognized.parquet` of a batch run: one row per coding the rules did not understand, with
the resources and patients it was found in (docs/coverage.md).

Counted in two places, so that no resource is read twice: where the input is partitioned (the
resources no rule can use, never written to a shard) and where a shard is evaluated (the
resources kept: a drug no value set knows named by `medicationReference`, a status or unit that
kept a recognized resource out). Each writes a tally file; the run merges them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from .. import ingest
from ..coverage import PatientCoverage, coded_element
from ..ruleset import load_rules
from ..unrecognized import CodingClassifier, CodingKey
from .keys import MEDICATION
from .options import Settings

TALLY_FILE = "unrecognized.ndjson"  # in each task folder (partition) and parts folder (shards)
TABLE = "unrecognized"
SCHEMA = pa.schema([
    pa.field("patients", pa.int64()),
    pa.field("resources", pa.int64()),
    pa.field("reason", pa.string()),
    pa.field("resource_type", pa.string()),
    pa.field("element", pa.string()),
    pa.field("system", pa.string()),
    pa.field("code", pa.string()),
    pa.field("display", pa.string()),
    pa.field("looks_like", pa.string()),
])
_KEY_FIELDS = SCHEMA.names[2:]
TOP = 10  # codings printed in the summary


class Tally:
    """Resources per (coding, patient); a patient of None: a resource of no patient."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[CodingKey, str | None]] = Counter()

    def add_coverage(self, coverage: PatientCoverage) -> None:
        for key, count in coverage.codings.items():
            self.counts[(key, coverage.reference)] += count

    def write(self, path: Path) -> None:
        payload = b"".join(
            orjson.dumps([patient, *(getattr(key, f) for f in _KEY_FIELDS), count]) + b"\n"
            for (key, patient), count in sorted(self.counts.items(), key=_tally_order))
        path.write_bytes(payload)


def _tally_order(item: tuple[tuple[CodingKey, str | None], int]) -> tuple[str, ...]:
    (key, patient), _ = item
    return (patient or "", *(str(getattr(key, f) or "") for f in _KEY_FIELDS))


class PartitionTally(Tally):
    """What the partitioner does not keep, by coding: resources of a read type whose code no
    value set knows (a recognized one left out is an Observation older than every look-back,
    not a coding to add). Counted per distinct element and patient on the hot path, expanded
    to codings when written."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.classifier = CodingClassifier(load_rules(settings.rules_dir))
        self.read_types = ingest.READ_TYPES - {"Patient"}
        self.by_entry: dict[tuple[int, str | None], int] = {}

    def note(self, key: str, resource: dict[str, Any]) -> None:
        resource_type = resource.get("resourceType")
        if resource_type not in self.read_types:
            return
        element, codeable = coded_element(resource)
        index = self.classifier.index(str(resource_type), element, codeable)
        if index >= 0:
            entry = (index, None if key == MEDICATION else key)
            self.by_entry[entry] = self.by_entry.get(entry, 0) + 1

    def write(self, path: Path) -> None:
        entries = self.classifier.entries
        for (index, patient), count in self.by_entry.items():
            for coding in entries[index].keys:
                self.counts[(coding, patient)] += count
        self.by_entry.clear()
        super().write(path)


def tally_files(work: Path) -> list[Path]:
    """Every tally of a run: of each partition task, then of each shard."""
    return [*sorted(work.glob(f"shards/t*/{TALLY_FILE}")),
            *sorted(work.glob(f"parts/{TABLE}-*.ndjson"))]


def merged_rows(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """One row per coding, most patients first, then most resources."""
    resources: Counter[tuple[Any, ...]] = Counter()
    patients: dict[tuple[Any, ...], set[str]] = {}
    for path in paths:
        with path.open("rb") as handle:
            for line in handle:
                patient, *fields, count = orjson.loads(line)
                key = tuple(fields)
                resources[key] += count
                found = patients.setdefault(key, set())
                if patient is not None:
                    found.add(patient)
    rows = [{"patients": len(patients[key]), "resources": count,
             **dict(zip(_KEY_FIELDS, key, strict=True))} for key, count in resources.items()]
    rows.sort(key=lambda r: (-r["patients"], -r["resources"],
                             *(str(r[f] or "") for f in _KEY_FIELDS)))
    return rows


def write_table(path: Path, rows: list[dict[str, Any]], output_format: str) -> None:
    if output_format == "parquet":
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
        return
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
