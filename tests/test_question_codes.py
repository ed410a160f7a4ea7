"""Question codes count by their value only (docs/clinical-basis.md, v3 "Records as other systems
write them"): AUDIT-C by its total and the patient's sex, smoking and alcohol status by a coded
answer; never by the question's own code, display or text."""

from __future__ import annotations

from typing import Any

import pytest

from fasciculation_cds.evaluate import ingest
from fasciculation_cds.normalize import Normalizer
from fasciculation_cds.ruleset import RuleSet

from .normalize_helpers import AS_OF, LOINC, PATIENT, SNOMED, codeable, observation

AUDIT_C_TOTAL = (LOINC, "75626-2", "Total score [AUDIT-C]")
AUDIT_C_PANEL = (LOINC, "72109-2", "Alcohol Use Disorder Identification Test - Consumption")
AUDIT_FULL = (LOINC, "72110-0", "Alcohol Use Disorder Identification Test [AUDIT]")
SMOKING = (LOINC, "72166-2", "Tobacco smoking status")
ALCOHOL_STATUS = (LOINC, "11331-6", "History of Alcohol use")


def lifestyle(ruleset: RuleSet, resource: dict[str, Any], gender: str | None) -> set[str]:
    patient: dict[str, Any] = {"resourceType": "Patient", "id": PATIENT}
    if gender is not None:
        patient["gender"] = gender
    (record,) = ingest([patient, resource], ruleset).patients
    facts = Normalizer(ruleset).run(record, AS_OF, assume_presentation=True).facts
    return {str(getattr(f, "concept", "")) for f in facts} & {"alcohol-use", "tobacco-use"}


def score(value: Any, unit: str | None = "{score}") -> dict[str, Any]:
    quantity: dict[str, Any] = {"value": value}
    if unit is not None:
        quantity.update(unit=unit, code=unit, system="http://unitsofmeasure.org")
    return {"valueQuantity": quantity}


@pytest.mark.parametrize(("total", "gender", "counts"), [
    (4, "male", True), (3, "male", False), (3, "female", True), (2, "female", False),
    (3, None, True), (3, "other", True), (3, "unknown", True), (12, "male", True),
    (0, "female", False)])
def test_audit_c_total_is_alcohol_use_at_the_cut_off_for_the_sex(
        ruleset: RuleSet, total: int, gender: str | None, counts: bool) -> None:
    found = lifestyle(ruleset, observation(AUDIT_C_TOTAL, **score(total)), gender)
    assert (found == {"alcohol-use"}) is counts
    as_integer = lifestyle(ruleset, observation(AUDIT_C_TOTAL, valueInteger=total), gender)
    assert as_integer == found


@pytest.mark.parametrize("unit", ["{score}", "1", "score", None])
def test_audit_c_total_in_a_score_unit_or_none_counts(ruleset: RuleSet, unit: str | None) -> None:
    assert lifestyle(ruleset, observation(AUDIT_C_TOTAL, **score(5, unit)), "male") == {
        "alcohol-use"}


def test_a_total_in_another_unit_or_with_a_comparator_is_no_total(ruleset: RuleSet) -> None:
    assert lifestyle(ruleset, observation(AUDIT_C_TOTAL, **score(5, "mg/dL")), "male") == set()
    bound = score(5)
    bound["valueQuantity"]["comparator"] = ">"
    assert lifestyle(ruleset, observation(AUDIT_C_TOTAL, **bound), "male") == set()


def test_the_question_code_display_and_text_never_count(ruleset: RuleSet) -> None:
    worded = codeable(AUDIT_C_PANEL, text="Alcohol use; alcohol misuse screen")
    worded["coding"][0]["display"] = "Alcohol use"
    assert lifestyle(ruleset, observation(worded), "female") == set()
    assert lifestyle(ruleset, observation(worded, **score(1)), "female") == set()
    assert lifestyle(ruleset, observation(worded, **score(3)), "female") == {"alcohol-use"}
    smoking = codeable(SMOKING, text="Tobacco use")
    assert lifestyle(ruleset, observation(smoking), "female") == set()


def test_the_full_audit_has_no_threshold_and_counts_for_nothing(ruleset: RuleSet) -> None:
    assert lifestyle(ruleset, observation(AUDIT_FULL, **score(30)), "male") == set()


@pytest.mark.parametrize(("question", "answer", "item"), [
    (SMOKING, "449868002", "tobacco-use"), (SMOKING, "77176002", "tobacco-use"),
    (SMOKING, "8517006", None), (SMOKING, "266919005", None), (SMOKING, "266927001", None),
    (ALCOHOL_STATUS, "219006", "alcohol-use"), (ALCOHOL_STATUS, "105542008", None),
    (ALCOHOL_STATUS, "82581004", None), (ALCOHOL_STATUS, "449868002", None)])
def test_status_questions_count_by_a_coded_answer_of_their_own(
        ruleset: RuleSet, question: tuple[str, str, str], answer: str, item: str | None) -> None:
    coding = {"system": SNOMED, "code": answer}
    value: dict[str, Any] = {"valueCodeableConcept": {"coding": [coding]}}
    assert lifestyle(ruleset, observation(question, **value), "female") == (
        {item} if item else set())


def test_a_text_answer_is_nothing(ruleset: RuleSet) -> None:
    for value in ({"valueString": "Current every day smoker"},
                  {"valueCodeableConcept": {"text": "Current every day smoker"}}):
        assert lifestyle(ruleset, observation(SMOKING, **value), "female") == set()


def test_an_old_answer_is_outside_the_sign_look_back(ruleset: RuleSet) -> None:
    old = observation(AUDIT_C_TOTAL, days=366, **score(9))
    assert lifestyle(ruleset, old, "male") == set()
