"""Time, onsets, units and same-time results (RULES.md v3 Definitions "Time", "Recent-only
conditions", "Age", "eGFR units", "Same-time results"; thresholds.md v3 section 1)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fasciculation_cds import evaluate
from fasciculation_cds.evaluate import ingest
from fasciculation_cds.facts import LabResult, Problem
from fasciculation_cds.fhir_time import (
    birth_date,
    calendar_days,
    in_lookback,
    parse_as_of,
    parse_span,
    period_span,
)
from fasciculation_cds.normalize import Normalizer
from fasciculation_cds.normalize.onset import condition_onset
from fasciculation_cds.ruleset import RuleSet

from .normalize_helpers import (
    FASCICULATION,
    HYPOGLYCEMIA,
    assessed,
    codeable,
    condition,
    lab,
    normalized,
    notice_codes,
)

EGFR, EGFR_RACE_FREE, EGFR_RACE_BASED = "33914-3", "98979-8", "48642-3"
CK = "2157-6"
DAY_AS_OF = parse_as_of("2026-06-01")  # a date-only as_of: the end of that UTC day


def _labs(result: Any, concept: str) -> list[LabResult]:
    return [f for f in result.facts if isinstance(f, LabResult) and f.concept == concept]


def _at(when: str, value: float, loinc: str = CK, unit: str = "U/L") -> dict[str, Any]:
    resource = lab(loinc, value, unit)
    resource["effectiveDateTime"] = when
    return resource


# --- look-backs in whole UTC calendar days ------------------------------------------------------


@pytest.mark.parametrize(("when", "inside"), [
    ("2026-03-03", True),
    ("2026-03-03T00:00:00Z", True),
    ("2026-03-03T23:59:59Z", True),
    ("2026-03-02T23:59:59Z", False),
    ("2026-03-03T00:59:59+01:00", False),  # 2026-03-02T23:59:59Z
    ("2026-03-02T23:30:00-01:00", True),  # 2026-03-03T00:30:00Z
    ("2026-06-01T23:59:59Z", True),
    ("2026-06-02", False),
])
def test_lookback_90_days_with_as_of_2026_06_01(when: str, inside: bool) -> None:
    span = parse_span(when)
    assert span is not None
    assert in_lookback(span, DAY_AS_OF, 90) is inside


@settings(max_examples=200, deadline=None)
@given(day=st.dates(min_value=date(2025, 1, 1), max_value=date(2026, 12, 31)),
       seconds=st.integers(min_value=0, max_value=86399),
       days=st.sampled_from([0, 7, 30, 90, 365]),
       as_of_seconds=st.integers(min_value=0, max_value=86399))
def test_date_only_and_any_clock_time_of_that_day_are_equally_in_or_out(
        day: date, seconds: int, days: int, as_of_seconds: int) -> None:
    """RULES.md v3: a date-only value and the same UTC date at any clock time are equally in or
    out of a look-back; with an instant as_of, a clock time after it is in the future."""
    clock = datetime(day.year, day.month, day.day, tzinfo=timezone.utc) + timedelta(
        seconds=seconds)
    date_only, timed = parse_span(day.isoformat()), parse_span(clock.isoformat())
    assert date_only is not None
    assert timed is not None
    as_of_day = parse_as_of(date(2026, 6, 1))
    assert in_lookback(date_only, as_of_day, days) == in_lookback(timed, as_of_day, days)
    instant = datetime(2026, 6, 1, tzinfo=timezone.utc) + timedelta(seconds=as_of_seconds)
    if clock > instant:
        assert not in_lookback(timed, instant, days)
    else:
        assert in_lookback(date_only, instant, days) == in_lookback(timed, instant, days)


@settings(max_examples=60, deadline=None)
@given(seconds=st.integers(min_value=0, max_value=86399), back=st.integers(0, 120))
def test_normalized_lab_age_is_the_calendar_day(ruleset: RuleSet, seconds: int,
                                                back: int) -> None:
    day = date(2026, 6, 1) - timedelta(days=back)
    clock = datetime(day.year, day.month, day.day, tzinfo=timezone.utc) + timedelta(
        seconds=seconds)
    if clock > datetime(2026, 6, 1, 12, tzinfo=timezone.utc):
        return
    ages = {fact.age_days for when in (day.isoformat(), clock.isoformat().replace("+00:00", "Z"))
            for fact in _labs(normalized(ruleset, _at(when, 150)), "creatine-kinase")}
    assert ages == {float(back)}


def test_calendar_days_take_the_utc_date() -> None:
    late = datetime(2026, 3, 1, 1, tzinfo=timezone(timedelta(hours=2)))  # 2026-02-28 in UTC
    assert calendar_days(late, datetime(2026, 5, 29, 12, tzinfo=timezone.utc)) == 90


def test_partial_dates_and_periods_are_spans() -> None:
    month = parse_span("2026-02")
    year = parse_span("2024")
    assert month is not None
    assert month.end is not None
    assert year is not None
    assert (month.start.date(), month.end.date()) == (date(2026, 2, 1), date(2026, 2, 28))
    assert year.end is not None
    assert year.end.date() == date(2024, 12, 31)
    assert month.order == month.start  # "latest" orders a partial date by its start
    period = period_span({"start": "2026-01-01", "end": "2026-03-04T10:00:00Z"})
    assert period is not None
    assert period.order == datetime(2026, 3, 4, 10, tzinfo=timezone.utc)
    assert in_lookback(period, DAY_AS_OF, 90)
    open_ended = period_span({"start": "2020-01-01"})
    assert open_ended is not None
    assert in_lookback(open_ended, DAY_AS_OF, 0)
    assert not in_lookback(parse_span("2026-02") or month, DAY_AS_OF, 90)  # ends 2026-02-28


def test_a_partial_date_lab_counts_when_it_overlaps(ruleset: RuleSet) -> None:
    (fact,) = _labs(normalized(ruleset, _at("2026-03", 150)), "creatine-kinase")
    assert fact.age_days == 62  # its last day, 2026-03-31
    assert fact.effective == datetime(2026, 3, 1, tzinfo=timezone.utc)  # ordered by its start


def test_future_results_do_not_count(ruleset: RuleSet) -> None:
    result = normalized(ruleset, _at("2026-06-01T12:00:01Z", 150))  # as_of is 12:00:00Z
    assert _labs(result, "creatine-kinase") == []
    assert _labs(normalized(ruleset, _at("2026-06-01", 150)), "creatine-kinase")


# --- issued as a fallback time --------------------------------------------------------------------


def test_observation_without_effective_is_dated_by_issued(ruleset: RuleSet) -> None:
    resource = lab(CK, 150, "U/L")
    del resource["effectiveDateTime"]
    resource["issued"] = "2026-05-30T09:00:00Z"
    result = normalized(ruleset, resource)
    (fact,) = _labs(result, "creatine-kinase")
    assert fact.effective == datetime(2026, 5, 30, 9, tzinfo=timezone.utc)
    assert notice_codes(result) == ["time-from-issued"]
    del resource["issued"]
    result = normalized(ruleset, resource)
    assert _labs(result, "creatine-kinase") == []
    assert notice_codes(result) == ["no-effective-time"]


# --- onsets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "birth", "span", "text"), [
    ({"onsetAge": {"value": 40, "unit": "a"}}, "1968-04-12",
     ("2008-04-12", "2009-04-11"), "onset at age 40 (2008)"),
    ({"onsetAge": {"value": 7, "code": "mo"}}, "2024-01-31",
     ("2024-08-31", "2024-09-29"), "onset at age 7 mo (2024)"),
    ({"onsetRange": {"low": {"value": 57, "unit": "years"}, "high": {"value": 58, "unit": "yr"}}},
     "1968-04-12", ("2025-04-12", "2027-04-11"), "onset at age 57-58 (2025)"),
    ({"onsetAge": {"value": 1, "unit": "a"}}, "2020-02-29",
     ("2021-02-28", "2022-02-27"), "onset at age 1 (2021)"),
    ({"onsetDateTime": "2026-05"}, None, ("2026-05-01", "2026-05-31"), "onset 2026-05"),
    ({"onsetString": "in childhood", "recordedDate": "2026-05-27"}, None,
     ("2026-05-27", "2026-05-27"), "recorded 2026-05-27 (no onset given)"),
])
def test_condition_onset_spans(ruleset: RuleSet, fields: dict[str, Any], birth: str | None,
                               span: tuple[str, str], text: str) -> None:
    onset = condition_onset(ruleset.units, fields, birth_date(birth))
    assert onset is not None
    assert onset.span.end is not None
    assert (onset.span.start.date().isoformat(), onset.span.end.date().isoformat()) == span
    assert onset.text == text


@pytest.mark.parametrize("fields", [
    {"onsetAge": {"value": 40, "unit": "a"}, "recordedDate": "2026-05-30"},  # no birthDate
    {"onsetAge": {"value": 40, "unit": "fortnights"}},
    {},
])
def test_unusable_onsets(ruleset: RuleSet, fields: dict[str, Any]) -> None:
    assert condition_onset(ruleset.units, fields, None) is None


def test_onset_not_usable_gives_a_notice(ruleset: RuleSet) -> None:
    resource = condition(HYPOGLYCEMIA, onsetAge={"value": 58, "unit": "a"})
    (assessment,) = evaluate([{"resourceType": "Patient", "id": "p1"}, resource],
                             as_of="2026-06-01T12:00:00Z", rules=ruleset)
    assert "onset-not-usable" in {n.code for n in assessment.notices}
    result = normalized(ruleset, condition(HYPOGLYCEMIA, onsetAge={"value": 56, "unit": "a"}))
    (problem,) = [f for f in result.facts if isinstance(f, Problem)]
    assert problem.onset_text == "onset at age 56 (2026)"  # birthDate 1970-01-01
    assert "onset-not-usable" not in notice_codes(result)


@pytest.mark.parametrize(("clinical", "counts"), [("resolved", True), ("inactive", True),
                                                  ("remission", True)])
def test_recent_only_conditions_count_whatever_their_status(
        ruleset: RuleSet, clinical: str, counts: bool) -> None:
    result = normalized(ruleset, condition(HYPOGLYCEMIA, clinical=clinical,
                                           onsetDateTime="2026-05-20"))
    assert any(isinstance(f, Problem) and f.concept == "hypoglycemia"
               for f in result.facts) is counts


def test_other_inactive_conditions_still_do_not_count(ruleset: RuleSet) -> None:
    result = normalized(ruleset, condition(FASCICULATION, clinical="resolved"))
    assert not [f for f in result.facts if f.kind in ("problem", "finding")]


def test_acute_kidney_injury_counts_for_90_days(ruleset: RuleSet) -> None:
    aki = ("http://hl7.org/fhir/sid/icd-10-cm", "N17.9", "Acute kidney failure, unspecified")
    for onset, counts in (("2026-03-03", True), ("2026-03-02", False)):
        result = normalized(ruleset, condition(aki, onsetDateTime=onset))
        assert any(getattr(f, "concept", "") == "acute-kidney-injury"
                   for f in result.facts) is counts


# --- age ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("birth", "age"), [
    ("2008", 17),  # a partial birthDate counts as its last day: 2008-12-31
    ("2008-06", 17),  # 2008-06-30
    ("2008-05", 18),  # 2008-05-31
    ("2008-06-01", 18),
    ("2008-06-02", 17),
])
def test_age_at_as_of_with_partial_birth_dates(ruleset: RuleSet, birth: str, age: int) -> None:
    (record,) = ingest([{"resourceType": "Patient", "id": "p1", "birthDate": birth}],
                       ruleset).patients
    patient = Normalizer(ruleset).run(record, parse_as_of("2026-06-01T12:00:00Z"),
                                      assume_presentation=False).patient
    assert patient.age == age


# --- units ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("concept", "value", "unit", "canonical"), [
    ("potassium", "13.68", "mg/dL", Fraction("13.68") / Fraction("3.910")),
    ("potassium", "1", "meq/L", Fraction(1)),
    ("glucose", "2.998", "mmol/L", Fraction("2.998") * Fraction("18.016")),
    ("glucose", "54", "mg/dl", Fraction(54)),
    ("free-t4", "10.29", "pmol/L", Fraction("10.29") / Fraction("12.87")),
    ("free-t4", "8", "ng/L", Fraction("0.8")),
    ("free-t4", "0.207", "ng/dl", Fraction("0.207")),
    ("tsh", "2", "uIU/mL", Fraction(2)),
    ("tsh", "2", "mIU/L", Fraction(2)),
    ("egfr", "25", "mL/min/1.73m2", Fraction(25)),
    ("egfr", "25", "mL/min/{1.73_m2}", Fraction(25)),
    ("egfr", "25", "ml/min/1.73 m^2", Fraction(25)),
    ("audit-c", "4", "{score}", Fraction(4)),
    ("audit-c", "4", "1", Fraction(4)),
    ("audit-c", "4", "score", Fraction(4)),
    ("audit-c", "4", None, Fraction(4)),
])
def test_units_v3(ruleset: RuleSet, concept: str, value: str, unit: str | None,
                  canonical: Fraction) -> None:
    assert ruleset.units.to_canonical(concept, Fraction(value), unit) == canonical


def test_egfr_in_ml_min_is_assumed_once_per_patient(ruleset: RuleSet) -> None:
    result = normalized(ruleset, lab(EGFR, 25, "mL/min", days=40), lab(EGFR, 24, "mL/min", days=2),
                        lab(EGFR_RACE_FREE, 23, "mL/min", days=1))
    assert notice_codes(result) == ["unit-assumed"]
    assert sorted(f.value for f in _labs(result, "egfr")) == [23, 24, 25]
    assert ruleset.units.to_canonical("egfr", Fraction(25), "mL/min") is None  # not in general
    assert ruleset.units.to_canonical("creatine-kinase", Fraction(25), "mL/min") is None


def test_race_free_egfr_codes_convert(ruleset: RuleSet) -> None:
    result = normalized(ruleset, lab(EGFR_RACE_FREE, 25, "mL/min/{1.73_m2}", days=1))
    assert notice_codes(result) == []
    assert [f.value for f in _labs(result, "egfr")] == [25]


def test_reference_range_without_unit_is_read_in_the_values_unit(ruleset: RuleSet) -> None:
    resource = lab("14920-3", 12, "pmol/L", days=1,
                   referenceRange=[{"low": {"value": 12.5}, "high": {"value": 22}}])
    (fact,) = _labs(normalized(ruleset, resource), "free-t4")
    assert fact.reference_low == pytest.approx(12.5 / 12.87)
    assert fact.reference_high == pytest.approx(22 / 12.87)


# --- same-time results ----------------------------------------------------------------------------


@pytest.mark.parametrize(("results", "latest"), [
    (((EGFR_RACE_BASED, 29), (EGFR_RACE_FREE, 31)), 31),  # race-free first
    (((EGFR_RACE_BASED, 29), (EGFR, 31)), 31),  # then other egfr codes
    (((EGFR, 31), (EGFR, 29)), 29),  # lower value within a tier
    (((EGFR_RACE_FREE, 33), (EGFR_RACE_FREE, 32), (EGFR, 20)), 32),
])
def test_egfr_ties_by_code_then_lower_value(ruleset: RuleSet,
                                            results: tuple[tuple[str, float], ...],
                                            latest: float) -> None:
    result = normalized(ruleset, *(lab(code, v, "mL/min/{1.73_m2}", days=1)
                                   for code, v in results))
    assert [f.value for f in _labs(result, "egfr") if f.is_latest] == [latest]
    assert result.context.conflicting == ()
    assert "conflicting-results" not in notice_codes(result)


def test_conflicting_results_never_lower_a_severity(ruleset: RuleSet) -> None:
    alone = assessed(ruleset, condition(FASCICULATION), lab("2823-3", 3.3, "mmol/L", days=1))
    both = assessed(ruleset, condition(FASCICULATION), lab("2823-3", 3.3, "mmol/L", days=1),
                    lab("2823-3", 5.8, "mmol/L", days=1))
    severity = {f.rule_id: f.severity for f in alone.findings}
    severity_both = {f.rule_id: f.severity for f in both.findings}
    rank = {"info": 1, "warning": 2, "critical": 3}
    for rule_id, level in severity.items():
        assert rank[severity_both.get(rule_id, "info")] >= rank[level], rule_id
        assert rule_id in severity_both, rule_id
    assert "electrolyte.hyperkalemia" in severity_both
    assert "mnd.benign-pattern" not in severity_both


# --- kidney -------------------------------------------------------------------------------------


def _kidney(ruleset: RuleSet, *egfrs: tuple[str, float]) -> dict[str, list[float]]:
    result = normalized(ruleset, *(_at(when, v, EGFR, "mL/min/{1.73_m2}") for when, v in egfrs))
    return {c: sorted(f.value for f in _labs(result, c))
            for c in ("egfr-low-earlier", "egfr-before-fall")}


@pytest.mark.parametrize(("egfrs", "earlier", "fall"), [
    ((("2026-02-28", 25), ("2026-05-29", 25)), [25], []),  # 90 days apart
    ((("2026-03-01", 25), ("2026-05-29", 25)), [], []),  # 89 days apart
    ((("2026-01-10", 25), ("2026-03-15", 30), ("2026-05-29", 25)), [], []),  # 30 between
    ((("2026-01-10", 25), ("2026-05-29", 16.67)), [25], []),  # ratio 1.4997
    ((("2026-01-10", 25), ("2026-05-29", 16.66)), [25], [25]),  # ratio 1.5006
    ((("2026-01-10", 27), ("2026-05-29", 18)), [27], [27]),  # exactly 1.5: "at least"
    ((("2026-04-01", 90), ("2026-04-20", 60), ("2026-05-29", 40)), [], [90]),  # the highest
    ((("2025-05-31", 90), ("2026-05-29", 40)), [], []),  # 366 days: outside the look-back
    ((("2026-05-29", 25),), [], []),
])
def test_kidney_derivations(ruleset: RuleSet, egfrs: tuple[tuple[str, float], ...],
                            earlier: list[float], fall: list[float]) -> None:
    assert _kidney(ruleset, *egfrs) == {"egfr-low-earlier": earlier, "egfr-before-fall": fall}


def test_any_counting_hba1c_makes_diabetes(ruleset: RuleSet) -> None:
    result = normalized(ruleset, lab("4548-4", 7.0, "%", days=300), lab("4548-4", 6.0, "%",
                                                                         days=10))
    assert any(getattr(f, "concept", "") == "diabetes-mellitus" for f in result.facts)
    result = normalized(ruleset, lab("4548-4", 7.0, "%", days=366))
    assert not any(getattr(f, "concept", "") == "diabetes-mellitus" for f in result.facts)


# --- recommendations that name values or drop out ---------------------------------------------


def test_statin_card_asks_for_ck_only_without_one(ruleset: RuleSet) -> None:
    statin = {"resourceType": "MedicationRequest", "id": "m1", "status": "active",
              "intent": "order", "subject": {"reference": "Patient/p1"},
              "medicationCodeableConcept": codeable(
                  ("http://www.nlm.nih.gov/research/umls/rxnorm", "617312",
                   "atorvastatin 10 MG Oral Tablet"))}
    cramp = condition(("http://hl7.org/fhir/sid/icd-10-cm", "R25.2", "Cramp and spasm"))

    def card(*extra: dict[str, Any]) -> Any:
        found = assessed(ruleset, cramp, statin, *extra)
        return next(f for f in found.findings if f.rule_id == "medication.statin-muscle-symptoms")

    assert "Check CK." in card().recommendations
    with_ck = card(lab(CK, 150, "U/L", days=10))
    assert "Check CK." not in with_ck.recommendations
    assert "150 U/L" in with_ck.detail
    assert "Check CK." in card(lab(CK, 150, "U/L", days=91)).recommendations
    critical = card(lab(CK, 2001, "U/L", days=1))
    assert critical.severity == "critical"
    assert critical.recommendations[0] == "Stop the statin now."
    assert "rhabdomyolysis" in critical.recommendations[1]


def test_diabetes_drugs_reviewed_only_when_one_is_active(ruleset: RuleSet) -> None:
    glucose = lab("2345-7", 65, "mg/dL", days=1)
    found = assessed(ruleset, condition(FASCICULATION), glucose)
    (card,) = [f for f in found.findings if f.rule_id == "metabolic.hypoglycemia"]
    assert card.severity == "info"
    assert not any("diabetes drugs" in r for r in card.recommendations)
    glipizide = {"resourceType": "MedicationRequest", "id": "m2", "status": "active",
                 "intent": "order", "subject": {"reference": "Patient/p1"},
                 "medicationCodeableConcept": codeable(
                     ("http://www.nlm.nih.gov/research/umls/rxnorm", "310488",
                      "glipizide 10 MG Oral Tablet"))}
    diabetes = condition(("http://hl7.org/fhir/sid/icd-10-cm", "E11.9",
                          "Type 2 diabetes mellitus without complications"))
    found = assessed(ruleset, condition(FASCICULATION), glucose, glipizide, diabetes)
    (card,) = [f for f in found.findings if f.rule_id == "metabolic.hypoglycemia"]
    assert card.severity == "warning"
    assert any("Review diabetes drugs" in r for r in card.recommendations)



_RANK = {"info": 1, "warning": 2, "critical": 3}


@settings(max_examples=40, deadline=None)
@given(first=st.decimals("1.5", "8.0", places=1), second=st.decimals("1.5", "8.0", places=1))
def test_a_same_time_result_never_lowers_a_finding(ruleset: RuleSet, first: Any,
                                                   second: Any) -> None:
    """v3 principle: adding a same-time potassium (conflicting or not) never lowers any
    finding's severity and never adds the benign card."""
    alone = assessed(ruleset, condition(FASCICULATION), lab("2823-3", float(first), "mmol/L",
                                                            days=1))
    both = assessed(ruleset, condition(FASCICULATION),
                    lab("2823-3", float(first), "mmol/L", days=1),
                    lab("2823-3", float(second), "mmol/L", days=1))
    after = {f.rule_id: _RANK[f.severity] for f in both.findings}
    for finding in alone.findings:
        assert after.get(finding.rule_id, 0) >= _RANK[finding.severity], finding.rule_id
    assert "mnd.benign-pattern" not in after or any(
        f.rule_id == "mnd.benign-pattern" for f in alone.findings)
