"""The checked section (issue 16 "What was checked"): read from the rules, filled from the
facts and notices, deterministic, and never an empty page."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from fasciculation_cds import evaluate, load_rules
from fasciculation_cds.assessment import Assessment, CheckedAnalyte, dumps_assessments
from fasciculation_cds.checked import consulted_labs
from fasciculation_cds.errors import RuleFileError
from fasciculation_cds.ruleset import RuleSet, clear_rules_cache

from .conftest import RULES_DIR
from .output_helpers import AS_OF, bundle, condition, fasciculation, lab, patient


def _assess(*resources: dict[str, object], ruleset: RuleSet) -> Assessment:
    [assessment] = evaluate(bundle(patient(), *resources), as_of=AS_OF, rules=ruleset)
    return assessment


def _analyte(assessment: Assessment, concept: str) -> CheckedAnalyte:
    assert assessment.checked is not None
    [found] = [a for a in assessment.checked.analytes if a.concept == concept]
    return found


def test_a_quiet_patient_reads_as_what_was_checked(ruleset: RuleSet) -> None:
    assessment = _assess(fasciculation(), lab("k", "2823-3", 4.1, "mmol/L"),
                         lab("mg", "19123-9", 2.1, "mg/dL"), ruleset=ruleset)
    assert assessment.checked is not None
    text = assessment.checked.text
    assert text.startswith("checked: K 4.1 mmol/L (2026-11-02), Mg 2.1 mg/dL (2026-11-02)")
    assert text.endswith("; no MND signs recorded")
    assert "Na: none in 90 days" in text
    assert _analyte(assessment, "magnesium").reference == "Observation/mg"


def test_analytes_and_look_backs_come_from_the_rules(ruleset: RuleSet) -> None:
    consulted = {c.key: c for c in consulted_labs(ruleset)}
    read = {concept for rule in ruleset.active_rules() for match in rule.match
            for pattern in match.facts.values() if "lab" in pattern.kinds
            for concept in pattern.named_concepts}
    family = {m: f for f, ms in ruleset.lab_families.items() for m in ms}
    derived = set(ruleset.derived.derived_concepts)  # made from other results, not read
    assert {family.get(c, c) for c in read} - derived <= set(consulted)
    assert not derived & set(consulted)
    assert consulted["glucose"].lookback_days == 30
    assert consulted["sodium"].lookbacks["electrolyte.dehydration"] == 30
    assert consulted["sodium"].lookback_days == 90
    assert consulted["egfr"].lookback_days == 365
    # read through a derived fact: HbA1c makes diabetes for the rules that test diabetes
    assert consulted["hba1c"].lookbacks == {
        r.id: ruleset.derived.diabetes_by_hba1c.lookback_days for r in ruleset.active_rules()
        if "diabetes-mellitus" in r.model_dump_json()}
    # every rule naming the analyte is listed, and only those
    assert set(consulted["creatine-kinase"].lookbacks) == {
        r.id for r in ruleset.active_rules()
        if "creatine-kinase" in str(r.model_dump(exclude={"description", "notes", "detail",
                                                          "summary", "recommendations"}))}


def test_a_rule_without_a_lab_drops_it_from_checked(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(RULES_DIR, rules)
    (rules / "neuropathy" / "b12-deficiency.yaml").unlink()
    shutil.rmtree(rules / "neuropathy" / "b12-deficiency.fires")
    shutil.rmtree(rules / "neuropathy" / "b12-deficiency.quiet")
    clear_rules_cache()
    try:
        changed = load_rules(rules)
        assert "vitamin-b12" not in {c.key for c in consulted_labs(changed)}
        assert "vitamin-b12" in {c.key for c in consulted_labs(load_rules(RULES_DIR))}
    finally:
        clear_rules_cache()


@pytest.mark.parametrize(("day", "counted"), [("2026-09-02", True), ("2026-09-01", False)])
def test_none_in_n_days_is_the_rule_look_back_in_calendar_days(
        day: str, counted: bool, ruleset: RuleSet) -> None:
    # as_of 2026-12-01, 90 days: 2026-09-02 is the first day inside
    found = _analyte(_assess(fasciculation(), lab("k", "2823-3", 4.0, "mmol/L", day),
                             ruleset=ruleset), "potassium")
    assert (found.state == "value") is counted
    assert found.text == (f"K 4.0 mmol/L ({day})" if counted else "K: none in 90 days")


def test_why_a_value_did_not_count(ruleset: RuleSet) -> None:
    assessment = _assess(
        fasciculation(),
        lab("na", "2951-2", 140, "furlongs"),
        lab("mg", "19123-9", 0.4, "mmol/L", status="preliminary"),
        lab("k", "2823-3", 3.0, "mmol/L", comparator="<"),
        ruleset=ruleset)
    sodium = _analyte(assessment, "sodium")
    assert sodium.state == "not-counted"
    assert [r.code for r in sodium.remarks] == ["unit-not-convertible"]
    assert "unit not convertible" in sodium.text
    magnesium = _analyte(assessment, "magnesium")
    assert magnesium.state == "not-counted"
    assert [(r.reference, r.code) for r in magnesium.remarks] == [("Observation/mg", "status")]
    assert "status preliminary" in magnesium.remarks[0].message
    potassium = _analyte(assessment, "potassium")
    assert "comparator-indeterminate" in [r.code for r in potassium.remarks]


def test_an_old_cancelled_result_is_not_a_reason(ruleset: RuleSet) -> None:
    found = _analyte(_assess(fasciculation(), lab("mg", "19123-9", 0.4, "mmol/L", "2025-01-01",
                                                  status="cancelled"), ruleset=ruleset),
                     "magnesium")
    assert found.state == "none"
    assert found.remarks == []


def test_calcium_says_what_the_value_is(ruleset: RuleSet) -> None:
    measured = _analyte(_assess(fasciculation(), lab("ca", "17861-6", 9.1, "mg/dL"),
                                ruleset=ruleset), "calcium-any")
    assert measured.what == "Calcium (total), as measured"
    assert "corrected" not in measured.text
    corrected = _analyte(_assess(fasciculation(), lab("ca", "17861-6", 7.6, "mg/dL"),
                                 lab("alb", "1751-7", 2.8, "g/dL"), ruleset=ruleset),
                         "calcium-any")
    assert corrected.what == "Calcium (total), corrected for albumin by this package"
    assert corrected.value == "8.56 mg/dL"


def test_signs_found_are_named_with_their_group(ruleset: RuleSet) -> None:
    assessment = _assess(fasciculation(), condition("hr", "86854008"), ruleset=ruleset)
    assert assessment.checked is not None
    [signs] = assessment.checked.signs
    assert [s.concept for s in signs.found] == ["hyperreflexia"]
    assert signs.text == "MND signs: Hyperreflexia (UMN sign) (upper motor neuron; 2026-10-01)"
    assert assessment.checked.text.endswith("; " + signs.text)
    assert "mnd.red-flags" in signs.rules


def test_checked_is_deterministic(ruleset: RuleSet) -> None:
    resources = [fasciculation(), lab("k", "2823-3", 4.1, "mmol/L"),
                 lab("na", "2951-2", 140, "furlongs"), condition("hr", "86854008")]
    first = dumps_assessments([_assess(*resources, ruleset=ruleset)])
    again = dumps_assessments([_assess(*reversed(resources), ruleset=ruleset)])
    assert first == again
    assert b'"checked"' in first


def _with_presentation(tmp_path: Path, change: dict[str, object]) -> Path:
    rules = tmp_path / "rules"
    shutil.copytree(RULES_DIR, rules)
    content = yaml.safe_load((rules / "presentation.yaml").read_text())
    content.update(change)
    (rules / "presentation.yaml").write_text(yaml.safe_dump(content))
    return rules


def test_every_rule_has_a_place_in_the_headline_order(tmp_path: Path) -> None:
    order = yaml.safe_load((RULES_DIR / "presentation.yaml").read_text())["headline_order"]
    rules = _with_presentation(tmp_path, {"headline_order": [
        r for r in order if r != "mnd.red-flags"]})
    clear_rules_cache()
    try:
        with pytest.raises(RuleFileError, match=r"mnd\.red-flags"):
            load_rules(rules)
    finally:
        clear_rules_cache()


def test_checked_words_name_only_known_concepts(tmp_path: Path) -> None:
    rules = _with_presentation(tmp_path, {"checked": {"analytes": {"potasium": "K"}}})
    clear_rules_cache()
    try:
        with pytest.raises(RuleFileError, match="potasium"):
            load_rules(rules)
    finally:
        clear_rules_cache()


def test_batch_rows_carry_what_was_checked(ruleset: RuleSet) -> None:
    from fasciculation_cds.batch.rows import ASSESSMENTS_SCHEMA, assessment_row
    from fasciculation_cds.evaluate import PatientError

    assessment = _assess(fasciculation(), lab("k", "2823-3", 4.1, "mmol/L"),
                         lab("na", "2951-2", 140, "furlongs"), ruleset=ruleset)
    row = assessment_row(assessment, AS_OF, ruleset.version)
    assert set(row) == set(ASSESSMENTS_SCHEMA.names)
    assert assessment.checked is not None
    assert row["checked"] == assessment.checked.text
    assert "potassium" not in row["checked_missing"]
    assert {"sodium", "magnesium", "calcium-any"} <= set(row["checked_missing"])
    error = assessment_row(PatientError("Patient/x", "bad"), AS_OF, ruleset.version)
    assert error["checked"] is None
    assert error["checked_missing"] == []


def test_a_sign_left_in_doubt_never_reads_as_none(ruleset: RuleSet) -> None:
    equivocal = {"resourceType": "Observation", "id": "hr", "status": "final",
                 "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-11-01",
                 "code": {"coding": [{"system": "http://snomed.info/sct", "code": "86854008"}]},
                 "valueString": "equivocal"}
    assessment = _assess(fasciculation(), equivocal, ruleset=ruleset)
    assert "sign-value-unclear" in [n.code for n in assessment.notices]
    assert assessment.checked is not None
    [signs] = assessment.checked.signs
    assert signs.found == []
    assert [(r.reference, r.code) for r in signs.remarks] == [("Observation/hr",
                                                               "sign-value-unclear")]
    assert signs.text == "no MND signs counted, 1 left in doubt by the record"
    assert "no MND signs recorded" not in assessment.checked.text


def test_an_implausible_albumin_is_named_on_the_calcium(ruleset: RuleSet) -> None:
    found = _analyte(_assess(fasciculation(), lab("ca", "17861-6", 8.0, "mg/dL"),
                             lab("alb", "1751-7", 3.5, "g/L"), ruleset=ruleset), "calcium-any")
    assert [(r.reference, r.code) for r in found.remarks] == [("Observation/alb",
                                                               "albumin-implausible")]
    assert found.what == "Calcium (total), as measured"
