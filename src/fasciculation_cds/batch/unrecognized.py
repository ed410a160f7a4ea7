"""`unrecognized.parquet` of a batch run: one row per coding the rules did not understand, with
the resources and patients it was found in (docs/coverage.md).

Counted in two places, so that no resource is read twice: where the input is partitioned (the
resources no rule can use, never written to a shard) and where a shard is evaluated (the
resources kept: a drug no value set knows named by `medicationReference`, a status or unit that
kept a recognized resource out). Each writes a tally file; the run merges them.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from .. import ingest
from ..coverage import CODED, Accountant, PatientCoverage, coded_element
from ..ruleset import RuleSet, load_rules
from ..unrecognized import CodingClassifier, CodingKey
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


NO_PATIENT = ""  # in a tally file, the patient of a resource of no patient (a Medication)


class Tally:
    """Resources per coding and patient (NO_PATIENT: a resource of no patient). A tally file
    holds one line per coding: its key fields, then {patient: resources}."""

    def __init__(self) -> None:
        self.by_coding: dict[CodingKey, dict[str, int]] = {}

    def add_coverage(self, coverage: PatientCoverage) -> None:
        patient = coverage.reference or NO_PATIENT
        for key, count in coverage.codings.items():
            found = self.by_coding.setdefault(key, {})
            found[patient] = found.get(patient, 0) + count

    def write(self, path: Path) -> None:
        lines = sorted(orjson.dumps([*(getattr(key, f) for f in _KEY_FIELDS), patients])
                       for key, patients in self.by_coding.items())
        path.write_bytes(b"".join(line + b"\n" for line in lines))


class PartitionTally(Tally):
    """What the partitioner does not keep, by coding: resources of a read type whose code no
    value set knows (a recognized one left out is an Observation older than every look-back,
    not a coding to add).

    `note` runs for every resource the partitioner does not keep, so it only counts each
    element as it is, serialized, in the patient's summary the router holds anyway; `add`
    takes a patient's counts when the router writes its summary, and each distinct element is
    classified once, when the tally is written."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.classifier = classifier_for(load_rules(settings.rules_dir))
        self.other_types = ingest.READ_TYPES - CODED - {"Patient"}
        self.seen: dict[bytes, dict[str, int]] = {}
        self.medications: dict[bytes, int] = {}
        """The counts of Medication resources: they belong to no patient."""

    def note(self, elements: dict[bytes, int], resource: dict[str, Any],
             found: bytes | None = None) -> None:
        """Count the resource's element in `elements`; `found`: the element already serialized
        as `(type, "code", code)` (the partitioner's relevance memo key)."""
        if found is not None:
            elements[found] = elements.get(found, 0) + 1
            return
        resource_type = resource.get("resourceType")
        try:
            if resource_type in CODED:
                found = orjson.dumps((resource_type, "code", resource.get("code")))
            elif resource_type in self.other_types:
                found = orjson.dumps((resource_type, *coded_element(resource)))
            else:
                return
        except TypeError:  # not JSON (a caller's own objects): as near as it can be
            found = orjson.dumps((resource_type, *coded_element(resource)), default=repr)
        elements[found] = elements.get(found, 0) + 1

    def add(self, patient: str, elements: dict[bytes, int]) -> None:
        for found, count in elements.items():
            patients = self.seen.get(found)
            if patients is None:
                patients = self.seen[found] = {}
            patients[patient] = patients.get(patient, 0) + count

    def write(self, path: Path) -> None:
        self.add(NO_PATIENT, self.medications)
        self.medications = {}
        for found, patients in self.seen.items():
            resource_type, element, codeable = orjson.loads(found)
            unmatched = self.classifier.unmatched(resource_type, element, codeable)
            if unmatched.recognized:
                continue
            for coding in unmatched.keys:
                into = self.by_coding.get(coding)
                if into is None:
                    self.by_coding[coding] = dict(patients)
                    continue
                for patient, count in patients.items():
                    into[patient] = into.get(patient, 0) + count
        self.seen.clear()
        super().write(path)


@functools.lru_cache(maxsize=4)
def classifier_for(ruleset: RuleSet) -> CodingClassifier:
    """One per process: every file of an export repeats the same elements."""
    return CodingClassifier(ruleset)


@functools.lru_cache(maxsize=4)
def accountant_for(ruleset: RuleSet) -> Accountant:
    """One per process, for `record_codings` (which keeps no state but its memos)."""
    return Accountant(ruleset)


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
                *fields, counts = orjson.loads(line)
                key = tuple(fields)
                resources[key] += sum(counts.values())
                found = patients.setdefault(key, set())
                found.update(counts)
    for found in patients.values():
        found.discard(NO_PATIENT)
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
