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


@pytest.mark.parametrize(("literal", "rule", "severity"), [
    ("4e-1", "electrolyte.hypomagnesemia", "critical"),
    ("0.00004E4", "electrolyte.hypomagnesemia", "critical"),
    ("0.69999999999999999999", "electrolyte.hypomagnesemia", "warning"),
    ("0.49999999999999999999", "electrolyte.hypomagnesemia", "critical"),
    ("1.10000000000000000001", "electrolyte.hypermagnesemia", "warning"),
    ("0.70000000000000000001", None, None),
    ("1.09999999999999999999", None, None),
])
def test_values_written_in_exponent_form_or_beyond_a_double(
        literal: str, rule: str | None, severity: str | None, ruleset: RuleSet,
        tmp_path: Path) -> None:
    """Read from the JSON text as exact decimals: beyond a double's digits a value is not
    rounded across a threshold (0.69999999999999999999 is below 0.70)."""
    bundle = _bundle()
    _magnesium(bundle)["valueQuantity"]["value"] = 123456.25
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle).replace("123456.25", literal))
    outcomes = list(evaluate_each(path, as_of=AS_OF, rules=ruleset))
    assert len(outcomes) == 1, outcomes
    assert isinstance(outcomes[0], Assessment), outcomes
    found = {f.rule_id: f.severity for f in outcomes[0].findings}
    if rule is None:  # just inside the normal range: neither low nor high
        assert not {"electrolyte.hypomagnesemia", "electrolyte.hypermagnesemia"} & set(found)
    else:
        assert found[rule] == severity


@pytest.mark.parametrize("value", [1e-05, 1e20, -1e308, 1.5e308, -0.5])
def test_values_no_measurement_can_be_are_named_never_a_card(value: float,
                                                              ruleset: RuleSet) -> None:
    """docs/clinical-basis.md: outside rules/plausible-ranges.yaml a value is not evaluated and
    named (value-implausible); the assessment is partial, so nothing reassures either."""
    bundle = _bundle()
    _magnesium(bundle)["valueQuantity"]["value"] = value
    (outcome,) = list(evaluate_each(bundle, as_of=AS_OF, rules=ruleset))
    assert isinstance(outcome, Assessment)
    assert not any(f.rule_id.startswith("electrolyte.hyp") for f in outcome.findings)
    assert [n.code for n in outcome.notices if n.code == "value-implausible"]
    assert outcome.partial is True


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
