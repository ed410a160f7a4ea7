"""The public API is small and deliberate: this test fails when it changes by accident."""

from __future__ import annotations

import fasciculation_cds


def test_public_names() -> None:
    assert sorted(fasciculation_cds.__all__) == sorted([
        "Assessment", "InputError", "InputProblem", "PatientError", "RuleFileError",
        "RuleFinding", "RuleSet",
        "__version__", "evaluate", "evaluate_each", "load_rules",
    ])
    for name in fasciculation_cds.__all__:
        assert hasattr(fasciculation_cds, name)
