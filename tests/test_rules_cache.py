"""Rule sets are cached per folder for the life of the process; `clear_rules_cache` reloads."""

from __future__ import annotations

import shutil
from pathlib import Path

from fasciculation_cds import evaluate, load_rules
from fasciculation_cds.ruleset import clear_rules_cache

from .conftest import EXAMPLES, RULES_DIR


def test_edited_rules_are_seen_only_after_clearing_the_cache(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(RULES_DIR, rules, ignore=shutil.ignore_patterns("*.fires", "*.quiet"))
    first = load_rules(rules)
    target = rules / "electrolyte" / "hypomagnesemia.yaml"
    text = target.read_text()
    title = first.rule("electrolyte.hypomagnesemia").title
    target.write_text(text.replace(f"title: {title}", "title: Magnesium below the line", 1))

    assert load_rules(rules) is first  # cached: the edit is not seen
    clear_rules_cache()
    second = load_rules(rules)
    assert second is not first
    assert second.version != first.version
    assert second.rule("electrolyte.hypomagnesemia").title == "Magnesium below the line"
    [assessment] = evaluate(EXAMPLES / "hypomagnesemia-omeprazole.json", as_of="2026-11-26",
                            rules=second)
    titles = {f.rule_id: f.title for f in assessment.findings}
    assert titles["electrolyte.hypomagnesemia"] == "Magnesium below the line"
