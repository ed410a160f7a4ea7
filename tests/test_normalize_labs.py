"""Labs (RULES.md v2, Definitions): comparators, albumin correction and its provenance, the
lab-reported corrected calcium, same-time ties; and medication names."""

from __future__ import annotations

from fractions import Fraction

import pytest

from fasciculation_cds.facts import LabResult
from fasciculation_cds.ruleset import RuleSet
from fasciculation_cds.thresholds import Interval, ValueTest

from .normalize_helpers import (
    FASCICULATION,
    LOCAL,
    RXNORM,
    assessed,
    codeable,
    condition,
    lab,
    medication_request,
    normalized,
    notice_codes,
)

VITAMIN_D = ("62292-8", "ng/mL")
MAGNESIUM = ("2601-3", "mmol/L")
POTASSIUM = ("2823-3", "mmol/L")
CALCIUM = ("17861-6", "mg/dL")
ALBUMIN = ("1751-7", "g/dL")
LAB_CORRECTED = ("29265-6", "mmol/L")


def _labs(result: object, concept: str) -> list[LabResult]:
    return [f for f in result.facts  # type: ignore[attr-defined]
            if isinstance(f, LabResult) and f.concept == concept]


def _latest(result: object, concept: str) -> LabResult:
    (latest,) = [f for f in _labs(result, concept) if f.is_latest]
    return latest


def _severity(ruleset: RuleSet, rule_id: str, *resources: dict[str, object]) -> str | None:
    found = assessed(ruleset, condition(FASCICULATION), *resources)
    return next((f.severity for f in found.findings if f.rule_id == rule_id), None)


# --- comparators -------------------------------------------------------------------------------


@pytest.mark.parametrize(("comparator", "value", "severity", "notice"), [
    ("<", 12, "warning", False),  # below 20 and below 12, without doubt
    ("<", 20, "info", True),  # below 20; perhaps below 12
    ("<", 25, None, True),  # does not decide "below 20": counts as missing
    (">", 100, None, False),  # not low, without doubt
    ("<=", 11.9, "warning", False),
    ("<=", 12, "info", True),
])
def test_vitamin_d_comparators(ruleset: RuleSet, comparator: str, value: float,
                               severity: str | None, notice: bool) -> None:
    result = lab(*VITAMIN_D[:1], value, VITAMIN_D[1], comparator=comparator)
    assert _severity(ruleset, "electrolyte.vitamin-d-deficiency", result) == severity
    codes = notice_codes(normalized(ruleset, result))
    assert codes == (["comparator-indeterminate"] if notice else [])


def test_indeterminate_comparator_counts_as_missing(ruleset: RuleSet) -> None:
    result = normalized(ruleset, lab(VITAMIN_D[0], 25, VITAMIN_D[1], comparator="<"),
                        lab(VITAMIN_D[0], 15, VITAMIN_D[1], days=40))
    latest = _latest(result, "vitamin-d-25oh")
    assert latest.original_value == "15"  # the older result that counts is not hidden


def test_magnesium_at_or_below_half_is_warning_with_notice(ruleset: RuleSet) -> None:
    mg = lab(MAGNESIUM[0], 0.5, MAGNESIUM[1], comparator="<=")
    assert _severity(ruleset, "electrolyte.hypomagnesemia", mg) == "warning"
    result = normalized(ruleset, mg)
    assert notice_codes(result) == ["comparator-indeterminate"]
    assert "may be more severe" in result.notices[0].message
    fact = _latest(result, "magnesium")
    assert fact.comparator == "<="
    assert fact.original_value == "0.5"


def test_comparator_against_both_directions(ruleset: RuleSet) -> None:
    """Potassium has low and high rules: `>5.0` decides neither "above 5.5" nor not."""
    undecided = normalized(ruleset, lab(POTASSIUM[0], 5.0, POTASSIUM[1], comparator=">"))
    assert not _labs(undecided, "potassium")
    low = lab(POTASSIUM[0], 3.0, POTASSIUM[1], comparator="<")
    assert _severity(ruleset, "electrolyte.hypokalemia", low) == "warning"
    if "electrolyte.hyperkalemia" in {r.id for r in ruleset.active_rules()}:
        high = lab(POTASSIUM[0], 7.0, POTASSIUM[1], comparator=">")
        assert _severity(ruleset, "electrolyte.hyperkalemia", high) == "critical"


def test_unknown_comparator_is_an_unreadable_result(ruleset: RuleSet) -> None:
    """"ad" is no R4 comparator: the result is unreadable (RULES.md v3), so the record is
    partial and the result is not used."""
    result = normalized(ruleset, lab(MAGNESIUM[0], 0.6, MAGNESIUM[1], comparator="ad"))
    assert not _labs(result, "magnesium")
    assert result.context.partial


def test_interval_logic() -> None:
    below_12 = Interval.of("<", Fraction(12))
    assert below_12 is not None
    assert ValueTest("value", (("lt", Fraction(12)),)).over(below_12) is True
    assert ValueTest("value", (("lt", Fraction(11)),)).over(below_12) is None
    assert ValueTest("value", (("gte", Fraction(12)),)).over(below_12) is False
    at_most = Interval.of("<=", Fraction(12))
    assert at_most is not None
    assert ValueTest("value", (("lt", Fraction(12)),)).over(at_most) is None
    assert ValueTest("value", (("lte", Fraction(12)),)).over(at_most) is True
    above = Interval.of(">", Fraction(100))
    assert above is not None
    assert ValueTest("value", (("gt", Fraction(100)),)).over(above) is True
    assert ValueTest("value", (("lt", Fraction(50)),)).over(above) is False
    assert Interval.of("ad", Fraction(1)) is None


def test_thresholds_come_from_the_rule_models(ruleset: RuleSet) -> None:
    ladders = ruleset.lab_thresholds("vitamin-d-25oh")
    rule = ruleset.rule("electrolyte.vitamin-d-deficiency")
    assert {ladder.source for ladder in ladders} == {rule.id}
    (ladder,) = ladders
    assert ladder.test.bounds == (("lt", Fraction(20) * Fraction("2.496")),)
    assert [(s, t.bounds) for s, t in ladder.steps] == [
        ("warning", (("lt", Fraction(12) * Fraction("2.496")),))]


# --- albumin correction ------------------------------------------------------------------------


@pytest.mark.parametrize(("albumin", "unit", "corrected"), [
    (3.9, "g/dL", True),
    (4.0, "g/dL", False),
    (4.1, "g/dL", False),
    (40, "g/L", False),
    (39, "g/L", True),
])
def test_albumin_correction_only_below_4(ruleset: RuleSet, albumin: float, unit: str,
                                         corrected: bool) -> None:
    result = normalized(ruleset, lab(CALCIUM[0], 8.0, CALCIUM[1]),
                        lab(ALBUMIN[0], albumin, unit, days=4))
    fact = _latest(result, "calcium-corrected")
    measured = 8.0 / 4.008
    assert fact.original_value == "8.0"
    assert fact.original_unit == "mg/dL"
    if corrected:
        assert fact.provenance == "corrected"
        assert fact.value == pytest.approx((8.0 + 0.8 * 0.1) / 4.008)
        assert fact.measured_value == pytest.approx(measured)
        assert fact.albumin_reported == f"{albumin} {unit}"
        assert fact.note is not None
        assert fact.note.startswith(f"corrected for albumin {albumin} {unit} by this package")
    else:
        assert fact.provenance == "measured"
        assert fact.value == pytest.approx(measured)
        assert fact.measured_value is None
        assert fact.albumin_reported is None
        assert fact.note is not None
        assert "not below 4.0 g/dL" in fact.note


def test_high_albumin_never_creates_hypocalcaemia(ruleset: RuleSet) -> None:
    """v1 corrected 8.6 mg/dL with albumin 4.5 down to 8.2 (a false warning)."""
    assert _severity(ruleset, "electrolyte.hypocalcemia", lab(CALCIUM[0], 8.6, CALCIUM[1]),
                     lab(ALBUMIN[0], 4.5, ALBUMIN[1])) is None


def test_no_albumin_leaves_the_measured_total(ruleset: RuleSet) -> None:
    fact = _latest(normalized(ruleset, lab(CALCIUM[0], 8.0, CALCIUM[1])), "calcium-corrected")
    assert fact.provenance == "measured"
    assert fact.note == "not corrected: no albumin within 7 days of this calcium"


@pytest.mark.parametrize(("albumin", "unit"), [(3.5, "g/L"), (65, "g/L"), (6.5, "g/dL")])
def test_implausible_albumin_is_not_used(ruleset: RuleSet, albumin: float, unit: str) -> None:
    result = normalized(ruleset, lab(CALCIUM[0], 8.0, CALCIUM[1]),
                        lab(ALBUMIN[0], albumin, unit))
    assert notice_codes(result) == ["albumin-implausible"]
    assert _latest(result, "calcium-corrected").provenance == "measured"


def test_albumin_with_a_comparator_is_not_used(ruleset: RuleSet) -> None:
    result = normalized(ruleset, lab(CALCIUM[0], 8.0, CALCIUM[1]),
                        lab(ALBUMIN[0], 2.0, ALBUMIN[1], comparator="<"))
    assert "comparator-indeterminate" in notice_codes(result)
    assert _latest(result, "calcium-corrected").provenance == "measured"


def test_lab_corrected_calcium_only_without_a_same_time_measured_total(
        ruleset: RuleSet) -> None:
    same_time = normalized(ruleset, lab(CALCIUM[0], 9.0, CALCIUM[1], days=2),
                           lab(LAB_CORRECTED[0], 2.0, LAB_CORRECTED[1], days=2))
    (only,) = _labs(same_time, "calcium-corrected")
    assert only.provenance == "measured"
    alone = normalized(ruleset, lab(CALCIUM[0], 9.0, CALCIUM[1], days=5),
                       lab(LAB_CORRECTED[0], 2.0, LAB_CORRECTED[1], days=2))
    latest = _latest(alone, "calcium-corrected")
    assert latest.provenance == "lab-corrected"
    assert latest.value == pytest.approx(2.0)


# --- same-time ties: the more abnormal result decides ------------------------------------------


@pytest.mark.parametrize(("values", "latest"), [
    ((4.0, 5.0), "4.0"),  # neither abnormal: the lower, as before
    ((3.4, 2.4), "2.4"),  # critical low beats warning low
    ((3.0, 2.9), "2.9"),  # same severity: the more extreme in its direction
])
def test_same_time_potassium_more_abnormal_decides(ruleset: RuleSet, values: tuple[float, ...],
                                                   latest: str) -> None:
    result = normalized(ruleset, *(lab(POTASSIUM[0], v, POTASSIUM[1], days=1) for v in values))
    assert _latest(result, "potassium").original_value == latest


def test_same_time_high_beats_normal(ruleset: RuleSet) -> None:
    if "electrolyte.hyperkalemia" not in {r.id for r in ruleset.active_rules()}:
        pytest.skip("no hyperkalemia rule in this rule set")
    result = normalized(ruleset, lab(POTASSIUM[0], 4.0, POTASSIUM[1], days=1),
                        lab(POTASSIUM[0], 6.6, POTASSIUM[1], days=1))
    assert _latest(result, "potassium").original_value == "6.6"


def test_same_time_opposite_sides_both_decide(ruleset: RuleSet) -> None:
    """RULES.md v3 "Same-time results": K 3.3 and 5.8 at one time -- both findings fire, each
    naming its own value, with notice `conflicting-results` and the concept in the context."""
    result = normalized(ruleset, lab(POTASSIUM[0], 5.8, POTASSIUM[1], days=1),
                        lab(POTASSIUM[0], 3.3, POTASSIUM[1], days=1),
                        lab(POTASSIUM[0], 4.2, POTASSIUM[1], days=1))
    latest = sorted(f.original_value for f in _labs(result, "potassium") if f.is_latest)
    assert latest == ["3.3", "5.8"]
    assert "conflicting-results" in notice_codes(result)
    assert result.context.conflicting == ("potassium",)
    found = assessed(ruleset, condition(FASCICULATION),
                     lab(POTASSIUM[0], 5.8, POTASSIUM[1], days=1),
                     lab(POTASSIUM[0], 3.3, POTASSIUM[1], days=1))
    by_rule = {f.rule_id: f for f in found.findings}
    assert "3.3" in by_rule["electrolyte.hypokalemia"].summary
    assert "5.8" in by_rule["electrolyte.hyperkalemia"].summary


def test_same_side_ties_are_no_conflict(ruleset: RuleSet) -> None:
    result = normalized(ruleset, lab(POTASSIUM[0], 3.4, POTASSIUM[1], days=1),
                        lab(POTASSIUM[0], 2.4, POTASSIUM[1], days=1))
    assert "conflicting-results" not in notice_codes(result)
    assert result.context.conflicting == ()
    result = normalized(ruleset, lab(POTASSIUM[0], 3.3, POTASSIUM[1], days=2),
                        lab(POTASSIUM[0], 5.8, POTASSIUM[1], days=1))
    assert _latest(result, "potassium").original_value == "5.8"  # not the same time
    assert result.context.conflicting == ()


# --- medication names --------------------------------------------------------------------------


def _drugs(ruleset: RuleSet, medication: dict[str, object]) -> set[tuple[str, str]]:
    result = normalized(ruleset, medication_request(medication))
    return {(f.concept, f.matched_by) for f in result.facts  # type: ignore[union-attr]
            if f.kind == "medication"}


@pytest.mark.parametrize(("text", "concept"), [
    ("Alendronic acid 70 mg weekly", "alendronate"),
    ("alendronate", "alendronate"),
    ("Zoledronate 5 mg infusion", "zoledronic-acid"),
    ("zoledronic acid", "zoledronic-acid"),
    ("Salbutamol inhaler", "albuterol"),
    ("FUROSEMIDE 40MG", "furosemide"),
])
def test_text_only_medications(ruleset: RuleSet, text: str, concept: str) -> None:
    assert _drugs(ruleset, {"text": text}) == {(concept, "text")}


def test_text_only_medication_with_a_local_code(ruleset: RuleSet) -> None:
    local = codeable((LOCAL, "D-77", "Alendronic acid 70 mg tablet"))
    assert _drugs(ruleset, local) == {("alendronate", "text")}


def test_ingredient_fallback_knows_name_variants(ruleset: RuleSet) -> None:
    scd = codeable((RXNORM, "999999901", "alendronic acid 70 MG Oral Tablet"))
    assert _drugs(ruleset, scd) == {("alendronate", "ingredient-name-fallback")}


def test_medication_names_are_whole_words(ruleset: RuleSet) -> None:
    assert _drugs(ruleset, {"text": "Prednisolone oral tablets"}) == {("prednisolone", "text")}
    assert _drugs(ruleset, {"text": "Vitamin supplement"}) == set()


@pytest.mark.parametrize(("comparator", "value", "kept", "notice"), [
    (">", 2000, True, False),  # above 10 x the default upper limit: decided
    (">", 1000, True, True),  # above the limit, perhaps not above 10 x
    ("<", 100, True, False),  # below the limit: decided
    ("<", 300, False, True),  # may or may not be above 200 U/L
])
def test_ck_comparators_against_the_upper_limit(ruleset: RuleSet, comparator: str, value: int,
                                                kept: bool, notice: bool) -> None:
    result = normalized(ruleset, lab("2157-6", value, "U/L", comparator=comparator))
    assert bool(_labs(result, "creatine-kinase")) is kept
    assert notice_codes(result) == (["comparator-indeterminate"] if notice else [])


def test_ck_comparator_uses_the_labs_own_upper_limit(ruleset: RuleSet) -> None:
    high = {"referenceRange": [{"high": {"value": 400, "unit": "U/L"}}]}
    result = normalized(ruleset, lab("2157-6", 300, "U/L", comparator="<", **high))
    (fact,) = _labs(result, "creatine-kinase")
    assert fact.above_upper_limit is False
    assert notice_codes(result) == []
