"""Every rule's fixtures, discovered from rules/: fires/ must fire at the named severity,
quiet/ must not fire. Adding a rule and its fixtures never means editing this file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fasciculation_cds import evaluate
from fasciculation_cds.ruleset import RuleSet, iter_rule_files

from .conftest import RULES_DIR

ASSUME_TAG = ("https://fasciculation-cds.dev/fixture", "assume-presentation")
DRAFT_TAG = {"system": "https://fasciculation-cds.dev/fixture", "code": "draft-order"}
SEVERITIES = ("info", "warning", "critical")


def _cases() -> list[tuple[str, Path, str | None]]:
    cases = []
    for rule_file in iter_rule_files(RULES_DIR):
        rule_id = f"{rule_file.parent.name}.{rule_file.stem}"
        for fixture in sorted(rule_file.parent.glob(f"{rule_file.stem}.fires/*.json")):
            severity = fixture.name.split("-", 1)[0]
            cases.append((rule_id, fixture, severity))
        for fixture in sorted(rule_file.parent.glob(f"{rule_file.stem}.quiet/*.json")):
            cases.append((rule_id, fixture, None))
    return cases


CASES = _cases()


def _run(fixture: Path, ruleset: RuleSet) -> dict[str, str]:
    bundle = json.loads(fixture.read_text())
    tags = {(t.get("system"), t.get("code")) for t in bundle.get("meta", {}).get("tag", [])}
    # entries tagged draft-order play the CDS Hooks draftOrders: orders being written
    drafts = [e["resource"] for e in bundle["entry"]
              if DRAFT_TAG in e["resource"].get("meta", {}).get("tag", [])]
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"] not in drafts]
    assessments = evaluate(bundle, as_of=bundle["timestamp"], draft_orders=drafts,
                           assume_presentation=ASSUME_TAG in tags, rules=ruleset)
    assert len(assessments) == 1, "a fixture holds exactly one patient"
    return {f.rule_id: f.severity for f in assessments[0].findings}


@pytest.mark.parametrize(("rule_id", "fixture", "severity"), CASES,
                         ids=[f"{c[0]}:{c[1].parent.name}/{c[1].name}" for c in CASES])
def test_fixture(rule_id: str, fixture: Path, severity: str | None, ruleset: RuleSet) -> None:
    found = _run(fixture, ruleset)
    if severity is None:
        assert rule_id not in found, f"{rule_id} fired on a quiet fixture: {found}"
    else:
        assert severity in SEVERITIES, f"fires/ fixture name must start with a severity: {fixture}"
        assert found.get(rule_id) == severity, f"expected {rule_id} at {severity}, got {found}"


def test_every_rule_has_fixtures_both_ways(ruleset: RuleSet) -> None:
    with_fires = {c[0] for c in CASES if c[2] is not None}
    with_quiet = {c[0] for c in CASES if c[2] is None}
    for rule in ruleset.active_rules():
        assert rule.id in with_fires, f"{rule.id} has no fires/ fixture"
        assert rule.id in with_quiet, f"{rule.id} has no quiet/ fixture"
