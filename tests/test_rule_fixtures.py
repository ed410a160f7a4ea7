"""Every rule's fixtures, discovered from rules/: fires/ must fire at the named severity,
quiet/ must not fire. Adding a rule and its fixtures never means editing this file."""

from __future__ import annotations

import pytest

from fasciculation_cds.rule_fixtures import SEVERITIES, FixtureCase, fixture_cases, run_fixture
from fasciculation_cds.ruleset import RuleSet

from .conftest import RULES_DIR

CASES = fixture_cases(RULES_DIR)


@pytest.mark.parametrize("case", CASES,
                         ids=[f"{c.rule_id}:{c.path.parent.name}/{c.path.name}" for c in CASES])
def test_fixture(case: FixtureCase, ruleset: RuleSet) -> None:
    # run_fixture raises when a filled summary passes 140 characters: rewrite the template
    found = run_fixture(case.path, ruleset)
    if case.severity is None:
        assert case.rule_id not in found, f"{case.rule_id} fired on a quiet fixture: {found}"
    else:
        assert case.severity in SEVERITIES, f"fires/ name must start with a severity: {case.path}"
        assert found.get(case.rule_id) == case.severity, (
            f"expected {case.rule_id} at {case.severity}, got {found}")


def test_every_rule_has_fixtures_both_ways(ruleset: RuleSet) -> None:
    with_fires = {c.rule_id for c in CASES if c.severity is not None}
    with_quiet = {c.rule_id for c in CASES if c.severity is None}
    for rule in ruleset.active_rules():
        assert rule.id in with_fires, f"{rule.id} has no fires/ fixture"
        assert rule.id in with_quiet, f"{rule.id} has no quiet/ fixture"
