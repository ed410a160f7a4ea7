"""Shared paths and helpers for the test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fasciculation_cds import load_rules
from fasciculation_cds.ruleset import RuleSet, default_rules_dir

REPO = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout; FASCICULATION_CDS_SHARED_DATA points elsewhere (a worktree).
SHARED_DATA = Path(os.environ.get("FASCICULATION_CDS_SHARED_DATA",
                                  REPO.parent / "shared" / "data"))
RULES_DIR = REPO / "rules"
EXAMPLES = REPO / "fhir_examples"


@pytest.fixture(scope="session")
def ruleset() -> RuleSet:
    return load_rules(RULES_DIR if RULES_DIR.is_dir() else default_rules_dir())


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path
