"""Every rule's fixtures, discovered from rules/: fires/ must fire at the named severity,
quiet/ must not fire. Adding a rule and its fixtures never means editing this file."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from fasciculation_cds import evaluate
from fasciculation_cds.rule_docs import rule_examples, rule_page
from fasciculation_cds.rule_fixtures import (
    SEVERITIES,
    FixtureCase,
    fixture_cases,
    fixture_problems,
    run_fixture,
)
from fasciculation_cds.ruleset import RuleSet, load_rules

from .conftest import REPO, RULES_DIR

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


def test_a_summary_over_140_characters_is_an_error_in_checks_and_whole_words_at_run_time(
    tmp_path: Path,
) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(RULES_DIR, rules)
    rule_file = rules / "electrolyte" / "hypokalemia.yaml"
    text = rule_file.read_text(encoding="utf-8")
    long_summary = 'summary: "{{ \'Potassium is low \' * 12 }}"'
    rule_file.write_text(re.sub(r"^summary: .*$", long_summary, text, count=1, flags=re.M),
                         encoding="utf-8")
    ruleset = load_rules(rules)
    fixture = rules / "electrolyte" / "hypokalemia.fires" / "critical-k-2.3-mmol.json"
    with pytest.raises(ValueError, match="more than 140"):
        run_fixture(fixture, ruleset)
    assert any("more than 140" in p for p in fixture_problems(ruleset))
    bundle = json.loads(fixture.read_text(encoding="utf-8"))
    [assessment] = evaluate(bundle, as_of=bundle["timestamp"], rules=ruleset)
    [finding] = [f for f in assessment.findings if f.rule_id == "electrolyte.hypokalemia"]
    assert finding.summary == "Urgent review: Low serum potassium; see the details"


def test_rule_pages_are_up_to_date(ruleset: RuleSet) -> None:
    examples = rule_examples(ruleset)  # each page shows its rule's fixtures as cards
    for rule in ruleset.rules:
        page = REPO / "docs" / "rules" / f"{rule.id}.md"
        assert page.exists(), f"{page} is missing: run `fasciculation-cds rules docs`"
        assert page.read_text(encoding="utf-8") == rule_page(rule, examples.get(rule.id)), (
            f"{page} is stale: run `fasciculation-cds rules docs --out docs/rules`")
