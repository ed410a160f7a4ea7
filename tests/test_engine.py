"""The durable-rules wrapper: a patient's facts never outlive its evaluation, even when the
engine fails part-way."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fasciculation_cds import evaluate
from fasciculation_cds.evaluate import Evaluator, evaluate_each, evaluator_for
from fasciculation_cds.ruleset import RuleSet

from .conftest import EXAMPLES


def _findings(bundle: dict[str, Any], evaluator: Evaluator) -> list[tuple[str, str]]:
    [assessment] = evaluate(bundle, as_of="2026-11-30", rules=evaluator.ruleset)
    return [(f.rule_id, f.severity) for f in assessment.findings]


def test_a_failure_inside_the_engine_leaves_nothing_for_the_next_patient(
        ruleset: RuleSet, monkeypatch: pytest.MonkeyPatch) -> None:
    als = json.loads((EXAMPLES / "als-red-flags-critical.json").read_text())
    benign = json.loads((EXAMPLES / "benign-fasciculation.json").read_text())
    expected = _findings(benign, Evaluator(ruleset))

    evaluator = evaluator_for(ruleset)
    engine = evaluator._engine
    stage = evaluator._stages[0].name
    durable_rules = engine._host.get_ruleset(stage)
    real = durable_rules.do_actions
    calls = {"n": 0}

    def failing(state: Any, complete: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # after some of the ALS patient's facts were taken
            complete(RuntimeError("injected"), None)
            return
        real(state, complete)

    monkeypatch.setattr(durable_rules, "do_actions", failing)
    [outcome] = list(evaluate_each(als, as_of="2026-11-30", rules=ruleset))
    assert getattr(outcome, "kind", None) == "internal"
    assert "injected" in outcome.message  # type: ignore[union-attr]
    monkeypatch.setattr(durable_rules, "do_actions", real)
    assert _facts_left(durable_rules, "patient") == []  # the failed evaluation's session
    assert _findings(benign, evaluator) == expected
    assert _facts_left(durable_rules, engine._session) == []


def _facts_left(durable_rules: Any, session: str) -> list[Any]:
    try:
        return list(durable_rules.get_facts(session))
    except Exception:  # durable-rules raises for a session it never saw: nothing left there
        return []

