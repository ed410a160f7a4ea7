"""Values at the edges of what JSON can carry reach an assessment, never an internal error."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from fasciculation_cds import Assessment, RuleSet, evaluate_each

EXAMPLE = Path(__file__).resolve().parents[1] / "fhir_examples" / "hypomagnesemia-omeprazole.json"
AS_OF = "2026-11-26T00:00:00Z"


def _bundle() -> dict[str, Any]:
    return json.loads(EXAMPLE.read_text())  # type: ignore[no-any-return]


def _magnesium(bundle: dict[str, Any]) -> dict[str, Any]:
    return next(e["resource"] for e in bundle["entry"]
                if e["resource"]["resourceType"] == "Observation"
                and "valueQuantity" in e["resource"])  # type: ignore[no-any-return]


def _rules_of(bundle: dict[str, Any], ruleset: RuleSet) -> dict[str, str]:
    outcomes = list(evaluate_each(bundle, as_of=AS_OF, rules=ruleset))
    assert len(outcomes) == 1, outcomes
    (outcome,) = outcomes
    assert isinstance(outcome, Assessment), outcome
    return {f.rule_id: f.severity for f in outcome.findings}


@pytest.mark.parametrize(("value", "rule", "severity"), [
    (1e-05, "electrolyte.hypomagnesemia", "critical"),
    (1e20, "electrolyte.hypermagnesemia", "critical"),
    (-1e308, "electrolyte.hypomagnesemia", "critical"),
])
def test_values_python_writes_in_exponent_form(value: float, rule: str, severity: str,
                                               ruleset: RuleSet) -> None:
    bundle = _bundle()
    _magnesium(bundle)["valueQuantity"]["value"] = value
    assert _rules_of(bundle, ruleset)[rule] == severity


def test_a_result_a_second_before_as_of(ruleset: RuleSet) -> None:
    bundle = _bundle()
    _magnesium(bundle)["effectiveDateTime"] = "2026-11-25T23:59:59Z"  # age 1.2e-05 days
    assert "electrolyte.hypomagnesemia" in _rules_of(bundle, ruleset)


@pytest.mark.parametrize("coding", [1, True, -1e308, "abc", [1]])
def test_coding_that_is_not_a_list_of_objects(coding: Any, ruleset: RuleSet) -> None:
    bundle = copy.deepcopy(_bundle())
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] in ("Observation", "Condition"):
            resource["code"]["coding"] = coding
    _rules_of(bundle, ruleset)  # an assessment, not an internal error
