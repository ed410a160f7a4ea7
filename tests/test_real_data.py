"""The whole rule set over real data made by other projects (tests/data)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from fasciculation_cds import Assessment, InputProblem, PatientError, evaluate_each
from fasciculation_cds.findings import strict_summaries
from fasciculation_cds.ruleset import RuleSet

from .conftest import REPO, shared_data

pytestmark = pytest.mark.realdata

# Alert-fatigue guard (Sigma-style regression over a benign population): under screening, the
# share of patients alerted at warning or above must stay below this bound on each population
# (measured: 1/43 Synthea patients with rules v2, 0/43 with v3 and 0 in each Bulk Data export;
# docs/alert-rate.md).
MAX_ALERTED_SHARE = 0.10
# Info cards other than the missing-electrolytes prompt (measured: 4/43 patients with rules v2).
MAX_OTHER_INFO_SHARE = 0.20
WORKUP = "workup.electrolytes-missing"


@pytest.fixture(autouse=True)
def _summaries_must_fit() -> Iterator[None]:
    """A filled summary over 140 characters fails the test instead of falling back."""
    with strict_summaries():
        yield


def _outcomes(
    path: Path, ruleset: RuleSet, **kwargs: object
) -> list[Assessment | PatientError | InputProblem]:
    return list(evaluate_each(path, rules=ruleset, **kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize("folder", ["synthea", "ndjson/pathling-9-patients",
                                    "ndjson/sample-bulk-10-patients", "ndjson/cumulus-etl-simple"])
@pytest.mark.parametrize("options", [{"as_of": "2026-11-26"},
                                     {"as_of": "auto", "assume_presentation": True}])
def test_real_patients_evaluate_without_internal_error(
    folder: str, options: dict[str, object], ruleset: RuleSet
) -> None:
    outcomes = _outcomes(shared_data(folder), ruleset, **options)
    internal = [o for o in outcomes if isinstance(o, PatientError) and o.kind == "internal"]
    assert not internal, internal[:3]
    assert any(isinstance(o, Assessment) for o in outcomes)


def test_synthea_alert_rate_under_screening(ruleset: RuleSet) -> None:
    outcomes = _outcomes(shared_data("synthea"), ruleset, as_of="auto", assume_presentation=True)
    assessments = [o for o in outcomes if isinstance(o, Assessment)]
    assert len(assessments) == 43
    alerted = [a for a in assessments if a.highest_severity in ("warning", "critical")]
    share = len(alerted) / len(assessments)
    rules = Counter(f.rule_id for a in assessments for f in a.findings)
    print(f"\nSynthea under --assume-presentation --as-of auto: {len(alerted)}/{len(assessments)}"
          f" alerted at warning or above ({share:.0%}); by rule: {dict(sorted(rules.items()))}")
    assert share <= MAX_ALERTED_SHARE
    # Every patient gets the missing-electrolytes info card under screening, and only because
    # Synthea never records magnesium: RULES.md asks for it in every presenting patient without a
    # recent Ca, Mg or K. Any other reason for it, or any other info card spreading, fails here.
    for assessment in assessments:
        for finding in assessment.findings:
            if finding.rule_id == WORKUP:
                assert "magnesium" in finding.summary, finding.summary
    other_info = [a for a in assessments
                  if any(f.severity == "info" and f.rule_id != WORKUP for f in a.findings)]
    print(f"info cards other than {WORKUP}: {len(other_info)}/{len(assessments)}")
    assert len(other_info) / len(assessments) <= MAX_OTHER_INFO_SHARE


@pytest.mark.parametrize("folder", ["synthea", "ndjson/pathling-9-patients",
                                    "ndjson/sample-bulk-10-patients"])
def test_alert_rate_under_screening_on_each_population(folder: str, ruleset: RuleSet) -> None:
    outcomes = _outcomes(shared_data(folder), ruleset, as_of="auto", assume_presentation=True)
    assessments = [o for o in outcomes if isinstance(o, Assessment)]
    assert len(assessments) >= 9
    alerted = [a for a in assessments if a.highest_severity in ("warning", "critical")]
    assert len(alerted) / len(assessments) <= MAX_ALERTED_SHARE, [
        (a.patient.reference, [f.rule_id for f in a.findings]) for a in alerted]


def test_bundle_folder_and_ndjson_give_the_same_patients(ruleset: RuleSet) -> None:
    outcomes = _outcomes(shared_data("ndjson/pathling-9-patients"), ruleset, as_of="2026-11-26")
    references = [o.patient.reference for o in outcomes if isinstance(o, Assessment)]
    assert len(references) == len(set(references)) == 9


def test_hl7_examples_evaluate_or_fail_cleanly(ruleset: RuleSet) -> None:
    outcomes = _outcomes(shared_data("hl7-examples"), ruleset, as_of="2026-11-26")
    assert not [o for o in outcomes if isinstance(o, PatientError) and o.kind == "internal"]


def test_fhir_examples_all_evaluate(ruleset: RuleSet) -> None:
    outcomes = _outcomes(REPO / "fhir_examples", ruleset, as_of="2026-11-26")
    assert outcomes
    assert all(isinstance(o, Assessment) for o in outcomes)
    assert all(o.findings for o in outcomes if isinstance(o, Assessment))
