"""Real records from other projects (tests/data/real-world, listed in tests/data/MANIFEST.tsv):
each patient's findings (rule id, severity) and each input's coverage report are pinned, so a
regression in reading other systems' records fails here.

The pins change whenever the rules or the reading of records change on purpose. Regenerate
them with one command, then review the diff of tests/real_world_pins.json:

    FASCICULATION_CDS_UPDATE_PINS=1 pytest tests/test_real_world.py
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fasciculation_cds import evaluate_each
from fasciculation_cds.assessment import Assessment
from fasciculation_cds.evaluate import PatientError, coverage_of
from fasciculation_cds.ruleset import RuleSet

DATA = Path(__file__).parent / "data"
MANIFEST = DATA / "MANIFEST.tsv"
PINS = Path(__file__).parent / "real_world_pins.json"
UPDATE = os.environ.get("FASCICULATION_CDS_UPDATE_PINS") == "1"
AS_OF = "auto"  # each patient's newest recorded time: these records span 2009 to 2026


def _manifest_files() -> list[str]:
    lines = MANIFEST.read_text().splitlines() if MANIFEST.exists() else []
    return sorted(line.split("\t")[0] for line in lines[1:]
                  if line.startswith("real-world/"))


def _is_bundle(path: Path) -> bool:
    if not path.name.endswith((".json", ".json.gz")):
        return False
    data = path.read_bytes()
    document = json.loads(gzip.decompress(data) if path.name.endswith(".gz") else data)
    return bool(document.get("resourceType") == "Bundle")


def units() -> list[str]:
    """What is evaluated together: a folder of Bundles gives one unit per Bundle; any other
    folder (single resources of one patient, a Bulk Data export) is one unit."""
    by_folder: dict[str, list[str]] = {}
    for name in _manifest_files():
        by_folder.setdefault(str(Path(name).parent), []).append(name)
    found: list[str] = []
    for folder, names in sorted(by_folder.items()):
        if all((DATA / n).exists() and _is_bundle(DATA / n) for n in names):
            found += names
        else:
            found.append(folder)
    return found


UNITS = units()


def _evaluated(unit: str, ruleset: RuleSet) -> dict[str, Any]:
    """Each patient's findings as presented and as screened (`assume_presentation`: most of
    these patients present with no twitch or cramp, and screening is what shows the drugs,
    labs and conditions that were read), input problems, and the coverage report."""
    patients: dict[str, Any] = {}
    problems: list[str] = []
    for key, assume in (("findings", False), ("screening", True)):
        for outcome in evaluate_each(Path(unit), as_of=AS_OF, rules=ruleset,
                                     assume_presentation=assume):
            if isinstance(outcome, Assessment):
                pinned = patients.setdefault(outcome.patient.reference, {})
                pinned[key] = sorted([f.rule_id, f.severity] for f in outcome.findings)
                if outcome.partial:
                    pinned["partial"] = True
            elif isinstance(outcome, PatientError):
                patients[outcome.patient] = {"error": outcome.message}
            elif not assume:
                problems.append(outcome.message)
    report = coverage_of(Path(unit), as_of=AS_OF, rules=ruleset).to_json_dict()
    return {"patients": patients, "problems": problems, "coverage": report}


@pytest.fixture(scope="module")
def pins() -> Iterator[dict[str, Any]]:
    saved: dict[str, Any] = json.loads(PINS.read_text()) if PINS.exists() else {}
    current = dict(saved)
    yield current
    if UPDATE:
        current = {unit: current[unit] for unit in UNITS if unit in current}
        PINS.write_text(json.dumps(current, indent=1, sort_keys=True, ensure_ascii=False)
                        + "\n")


def test_the_corpus_is_there() -> None:
    """No data is a failure, never a skip: the corpus lives in the repository."""
    files = _manifest_files()
    assert len(files) >= 79, f"{MANIFEST}: expected the real-world files, found {len(files)}"
    missing = [name for name in files if not (DATA / name).is_file()]
    assert not missing, f"listed in {MANIFEST} but absent: {missing[:5]}"
    assert len(UNITS) >= 10


def test_every_unit_is_pinned_and_every_pin_is_a_unit() -> None:
    if UPDATE:
        return  # the pin file is being rewritten from the units
    assert PINS.exists(), f"{PINS} missing: FASCICULATION_CDS_UPDATE_PINS=1 writes it"
    pinned = set(json.loads(PINS.read_text()))
    assert pinned == set(UNITS), (sorted(pinned - set(UNITS)), sorted(set(UNITS) - pinned))


@pytest.mark.parametrize("unit", UNITS)
def test_real_world_records_as_pinned(unit: str, ruleset: RuleSet, pins: dict[str, Any],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DATA)  # messages name files relative to tests/data, on any machine
    assert any((DATA / name).stat().st_size for name in _manifest_files()
               if name == unit or name.startswith(f"{unit}/")), f"{unit}: no data"
    found = _evaluated(unit, ruleset)
    totals = found["coverage"]["resources"]
    assert totals["read"] == sum(v for k, v in totals.items() if k != "read")
    if UPDATE:
        pins[unit] = found
        return
    assert unit in pins, f"{unit} is not pinned: FASCICULATION_CDS_UPDATE_PINS=1 pins it"
    expected = pins[unit]
    assert found["patients"] == expected["patients"]
    assert found["problems"] == expected["problems"]
    assert found["coverage"] == expected["coverage"]
