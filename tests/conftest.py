"""Shared paths and helpers for the test suite."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from fasciculation_cds import load_rules
from fasciculation_cds.ruleset import RuleSet, default_rules_dir

REPO = Path(__file__).resolve().parents[1]
# The S3 emulator's dummy credentials, set before any long-lived helper process starts: batch's
# worker pool (a forkserver) and Spark's JVM keep the environment they started with, so a test
# that set them later would leave those processes without any (tests/test_batch_storage.py).
for _name, _value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                      ("AWS_DEFAULT_REGION", "us-east-1")):
    os.environ.setdefault(_name, _value)
os.environ.pop("AWS_PROFILE", None)
# Real data made by other projects, copied into tests/data (see its README and MANIFEST.tsv);
# FASCICULATION_CDS_SHARED_DATA names a fuller corpus of the same layout to read instead.
SHARED_DATA = Path(os.environ.get("FASCICULATION_CDS_SHARED_DATA") or REPO / "tests" / "data")
RULES_DIR = REPO / "rules"
EXAMPLES = REPO / "fhir_examples"


@pytest.fixture(scope="session")
def ruleset() -> RuleSet:
    return load_rules(RULES_DIR if RULES_DIR.is_dir() else default_rules_dir())


def shared_data(*parts: str) -> Path:
    """A file or folder of the test data; missing data fails the test, it never skips it."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"test data {path} is missing (tests/data, or FASCICULATION_CDS_SHARED_DATA)")
    return path


def bundle_files(*parts: str) -> list[Path]:
    """The JSON files of a test-data folder, `.json` or `.json.gz`; never an empty list."""
    folder = shared_data(*parts)
    files = sorted(p for p in folder.iterdir() if p.name.endswith((".json", ".json.gz")))
    if not files:
        pytest.fail(f"no JSON files in {folder}")
    return files


def data_file(*parts: str) -> Path:
    """A test-data file by its source name, stored as is or gzip-compressed (`name.gz`)."""
    path = SHARED_DATA.joinpath(*parts)
    return path if path.exists() else shared_data(*parts[:-1], parts[-1] + ".gz")


def read_json(path: Path) -> Any:
    """A JSON file, gzip-compressed or not."""
    raw = path.read_bytes()
    return orjson.loads(gzip.decompress(raw) if path.name.endswith(".gz") else raw)
