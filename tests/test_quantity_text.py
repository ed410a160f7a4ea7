"""The display contract: significant digits, the lab's unit first, corrections said plainly."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from fasciculation_cds.facts import LabResult
from fasciculation_cds.quantity_text import (
    converted_text,
    format_significant,
    sent_number,
    shown_text,
    used_text,
)
from fasciculation_cds.ruleset import RuleSet

WHEN = datetime(2026, 5, 30, tzinfo=timezone.utc)


def _lab(concept: str, value: float, sent: str, unit: str | None, **extra: object) -> LabResult:
    canonical = {"vitamin-d-25oh": "nmol/L"}.get(concept, "mmol/L")
    return LabResult.model_validate({
        "reference": "Observation/x", "concept": concept, "label": concept, "value": value,
        "unit": canonical, "original_value": sent, "original_unit": unit, "effective": WHEN,
        "age_days": 2.0, "is_latest": True, **extra})


@pytest.mark.parametrize(("value", "text"), [
    (1.996, "2.00"), (1.7964, "1.80"), (0.6994, "0.699"), (29.952, "30.0"), (145.6, "146"),
    (9.996, "10.0"), (0.0, "0.00"), (2612.4, "2612"), (3.4930, "3.49"), (2.6198, "2.62"),
])
def test_significant_digits_are_kept(value: float, text: str) -> None:
    assert format_significant(value) == text


def test_8_mg_dl_calcium_never_prints_as_2(ruleset: RuleSet) -> None:
    fact = _lab("calcium-total", 8.0 / 4.008, "8.0", "mg/dL")
    assert shown_text(fact, ruleset.units) == "8.0 mg/dL (2.00 mmol/L)"


def test_value_in_the_canonical_unit_is_shown_once(ruleset: RuleSet) -> None:
    fact = _lab("magnesium", 0.55, "0.55", "mmol/L")
    assert shown_text(fact, ruleset.units) == "0.55 mmol/L"


def test_comparator_appears_on_both_values(ruleset: RuleSet) -> None:
    fact = _lab("vitamin-d-25oh", 12 * 2.496, "12", "ng/mL", comparator="<")
    assert shown_text(fact, ruleset.units) == "< 12 ng/mL (< 30.0 nmol/L)"


def test_corrected_calcium_says_who_corrected_it(ruleset: RuleSet) -> None:
    corrected = (7.2 + 0.8 * (4.0 - 2.8)) / 4.008
    fact = _lab("calcium-corrected", corrected, "7.2", "mg/dL",
                derived_from=("Observation/ca", "Observation/alb"), provenance="corrected",
                measured_value=7.2 / 4.008, albumin_reported="2.8 g/dL")
    assert shown_text(fact, ruleset.units) == (
        "7.2 mg/dL (1.80 mmol/L); corrected for albumin 2.8 g/dL by this package: 8.16 mg/dL")
    assert used_text(fact, ruleset.units) == "8.16 mg/dL"
    assert "reported by the lab" not in shown_text(fact, ruleset.units)


def test_lab_corrected_calcium_is_the_labs(ruleset: RuleSet) -> None:
    fact = _lab("calcium-corrected", 2.05, "2.05", "mmol/L", provenance="lab-corrected")
    assert shown_text(fact, ruleset.units) == (
        "2.05 mmol/L; corrected for albumin, as reported by the lab")


def test_uncorrected_total_is_labelled_as_measured(ruleset: RuleSet) -> None:
    fact = _lab("calcium-corrected", 8.2 / 4.008, "8.2", "mg/dL",
                derived_from=("Observation/ca",))
    assert shown_text(fact, ruleset.units) == (
        "8.2 mg/dL (2.05 mmol/L), as measured (not corrected for albumin)")


def test_thresholds_convert_for_a_one_unit_chart(ruleset: RuleSet) -> None:
    units = ruleset.units
    assert converted_text(units, "calcium-total", 8.5, "mg/dL", "mmol/L") == "2.12 mmol/L"
    assert converted_text(units, "magnesium", 0.70, "mmol/L", "mg/dL") == "1.70 mg/dL"
    assert converted_text(units, "glucose", 70, "mg/dL", "mmol/L") == "3.89 mmol/L"
    assert converted_text(units, "magnesium", 0.70, "mmol/L", "g/L") is None


@pytest.mark.parametrize(("sent", "shown"), [
    ("65.566064456418", "65.57"), ("4.1", "4.1"), ("1.50", "1.50"), ("0.85", "0.85"),
    ("12345.678", "12346"), ("0.0012345", "0.001235"), ("140", "140"), ("9.99999", "10.00"),
])
def test_a_sent_number_keeps_its_digits_up_to_a_cap(sent: str, shown: str) -> None:
    assert sent_number(sent) == shown
