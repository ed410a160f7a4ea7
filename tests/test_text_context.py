"""Free text read in context (RULES.md v3 "Text-only records", "Text context", "Negation", "Own
text", "Sign values"): the phrase table of tests/data/text-context-cases.yaml checked at the level
of the facts and notices normalization makes; FamilyMemberHistory; the cap per text; linear work;
and the property that uncertainty never lowers a severity nor brings the benign card."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from fasciculation_cds.normalize import NormalizedPatient
from fasciculation_cds.ruleset import RuleSet
from fasciculation_cds.text_context import TextReader

from .normalize_helpers import (
    PATIENT,
    assessed,
    codeable,
    condition,
    normalized,
    observation,
)
from .test_properties import PROPERTY, RANK, before_as_of, fhir_instant, recent_ages_in_minutes
from .test_properties_normalize import Rules, any_background, run_one

CASES = yaml.safe_load((Path(__file__).parent / "data" / "text-context-cases.yaml").read_text())
ALS = ("http://hl7.org/fhir/sid/icd-10-cm", "G12.21", "Amyotrophic lateral sclerosis")
SUSPECTED = "suspected-motor-neuron-disease"
NOTICE_OF = {"uncertain": "text-uncertain", "unclear": "sign-value-unclear"}


def facts_of(result: NormalizedPatient) -> dict[str, str]:
    return {f.concept: f.certainty for f in result.facts if f.kind in ("problem", "finding")}


def notices_of(result: NormalizedPatient) -> list[str]:
    return sorted(n.code for n in result.notices)


def expected_notices(facts: dict[str, str]) -> list[str]:
    return sorted(NOTICE_OF[c] for c in facts.values() if c in NOTICE_OF)


# --- the phrase table ------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES["conditions"], ids=lambda c: c["text"][:45])
def test_text_only_condition(ruleset: RuleSet, case: dict[str, Any]) -> None:
    result = normalized(ruleset, condition({"text": case["text"]}))
    assert facts_of(result) == case["facts"]
    assert notices_of(result) == expected_notices(case["facts"])
    for fact in result.facts:
        if fact.kind in ("problem", "finding"):
            assert fact.quote == case["text"]  # the card quotes the record's own words
            assert fact.matched_by == "text"


@pytest.mark.parametrize("case", CASES["conditions"], ids=lambda c: c["text"][:45])
def test_same_text_as_a_local_coding_display(ruleset: RuleSet, case: dict[str, Any]) -> None:
    """A display fallback is read like code.text (here on an exam Observation, no value)."""
    local = {"coding": [{"system": "http://hospital.example.org/exam", "code": "X1",
                         "display": case["text"]}]}
    result = normalized(ruleset, observation(local))
    assert facts_of(result) == case["facts"]


@pytest.mark.parametrize("case", CASES["observations"], ids=lambda c: c["name"])
def test_sign_observation_value(ruleset: RuleSet, case: dict[str, Any]) -> None:
    result = normalized(ruleset, observation(case["code"], **case["value"]))
    assert facts_of(result) == case["facts"]
    expected = ["sign-value-unclear"] if set(case["facts"].values()) - {"asserted"} else []
    if case["code"]["text"].startswith("?"):
        expected = ["text-uncertain"]  # the text doubts it; the value itself is clear
    assert notices_of(result) == expected


@pytest.mark.parametrize("case", CASES["coded"], ids=lambda c: c["name"])
def test_coded_condition_with_its_own_text(ruleset: RuleSet, case: dict[str, Any]) -> None:
    code = codeable(tuple(case["code"]), text=case["text"])
    result = normalized(ruleset, condition(code))
    assert facts_of(result) == case["facts"]
    assert notices_of(result) == expected_notices(case["facts"])
    assert all(f.matched_by != "text" for f in result.facts if f.kind in ("problem", "finding"))


def test_the_table_is_large_enough_and_covers_the_issue() -> None:
    texts = {c["text"] for c in CASES["conditions"]}
    for quoted in ("Family history of ALS", "Rule out ALS", "Suspected motor neurone disease",
                   "Babinski sign present, clonus absent",
                   "No fever, marked weakness and wasting of the hands",
                   "Denies dysphagia, slurred speech on examination",
                   "No improvement in weakness", "Nutritional wasting",
                   "Health anxiety (fears ALS)", "Clonus - negative",
                   "no weakness, wasting or tongue fasciculation", "ALS not ruled out"):
        assert quoted in texts
    assert len(CASES["conditions"]) + len(CASES["observations"]) >= 40


# --- what the facts do to the findings ----------------------------------------------------


@pytest.mark.parametrize("text", ["Rule out ALS", "Suspected motor neurone disease", "ALS",
                                  "Amyotrophic lateral sclerosis", "ALS not ruled out"])
def test_text_only_als_never_establishes_the_diagnosis(ruleset: RuleSet, text: str) -> None:
    found = assessed(ruleset, condition({"text": text}), condition(
        ("http://hl7.org/fhir/sid/icd-10-cm", "R25.3", "Fasciculation")))
    rule_ids = {f.rule_id for f in found.findings}
    assert "mnd.established-diagnosis" not in rule_ids
    assert "mnd.red-flags" in rule_ids  # a suspected MND is a group


@pytest.mark.parametrize("text", ["Family history of ALS", "Health anxiety (fears ALS)",
                                  "Patient worried about ALS"])
def test_relative_or_worry_is_no_established_and_no_suspected_mnd(ruleset: RuleSet,
                                                                   text: str) -> None:
    result = normalized(ruleset, condition({"text": text}))
    present = set(result.context.concepts_present)
    assert not {"motor-neuron-disease", SUSPECTED, "motor-neuron-disease-recorded"} & present
    assert result.context.group_set_counts["mnd_warning_groups"] == 0


def test_uncertain_match_still_counts_in_its_group(ruleset: RuleSet) -> None:
    result = normalized(ruleset, condition({"text": "Clonus not absent"}))
    assert result.context.group_counts["mnd-umn"] == 1


@pytest.mark.parametrize("verification", ["provisional", "confirmed", None])
def test_coded_als_whose_text_names_a_relative_is_a_family_history(
        ruleset: RuleSet, verification: str | None) -> None:
    code = codeable(ALS, text="Family history of ALS (father)")
    result = normalized(ruleset, condition(code, verification=verification))
    assert facts_of(result) == {"family-history-mnd": "asserted"}
    assert "motor-neuron-disease-recorded" not in result.context.concepts_present


def test_tongue_fasciculation_from_a_body_site_keeps_the_certainty(ruleset: RuleSet) -> None:
    tongue = {"text": "tongue"}
    result = normalized(ruleset, observation({"text": "Fasciculation"}, bodySite=tongue,
                                             valueString="equivocal"))
    assert facts_of(result) == {"fasciculation": "uncertain", "tongue-fasciculation": "uncertain"}


# --- FamilyMemberHistory ---------------------------------------------------------------------


def family_history(code: dict[str, Any], *, status: str = "completed") -> dict[str, Any]:
    return {"resourceType": "FamilyMemberHistory", "id": "fmh1", "status": status,
            "patient": {"reference": f"Patient/{PATIENT}"},
            "relationship": {"text": "mother"}, "condition": [{"code": code}]}


@pytest.mark.parametrize(("code", "status", "expected"), [
    (codeable(ALS), "completed", {"family-history-mnd": "asserted"}),
    (codeable(text="Motor neurone disease"), "partial", {"family-history-mnd": "asserted"}),
    (codeable(ALS), "entered-in-error", {}),
    (codeable(text="Multiple sclerosis"), "completed", {}),
    (codeable(text="no ALS"), "completed", {}),
], ids=["coded", "named", "entered-in-error", "other-condition", "negated"])
def test_family_member_history(ruleset: RuleSet, code: dict[str, Any], status: str,
                               expected: dict[str, str]) -> None:
    result = normalized(ruleset, family_history(code, status=status))
    assert facts_of(result) == expected
    assert "motor-neuron-disease-recorded" not in result.context.concepts_present


# --- the cap per text, and linear work --------------------------------------------------------


def test_text_beyond_the_cap_is_not_read_and_makes_the_record_partial(ruleset: RuleSet) -> None:
    reader = ruleset.terminology.reader
    assert reader is not None
    filler = "x" * reader.cap
    result = normalized(ruleset, condition({"text": f"Fasciculations. {filler} clonus"}))
    assert facts_of(result) == {"fasciculation": "asserted"}  # clonus lies beyond the cap
    assert notices_of(result) == ["resource-unreadable"]
    assert str(reader.cap) in result.notices[0].message
    assert result.context.partial
    short = normalized(ruleset, condition({"text": "Fasciculations. clonus"}))
    assert not short.context.partial


def _uncapped(ruleset: RuleSet) -> TextReader:
    reader = ruleset.terminology.reader
    assert reader is not None
    return dataclasses.replace(reader, cap=10**8)


# Texts shaped to make a reader that looks back (or ahead) over the clause do quadratic work:
# long clauses full of cues and terms, long comma lists, long bridges.
HEAVY_UNITS = (
    "no weakness, wasting or tongue fasciculation, ",
    "denies clonus and no hyperreflexia with fasciculations of the tongue noted ",
    "ALS is is is is not ruled out ? vs MND, ",
    "mother has ALS and brother fears MND and patient worried about ALS ",
    "weakness " * 5,
    "no " * 7,
)


@pytest.mark.parametrize("unit", HEAVY_UNITS, ids=lambda u: u[:20])
def test_reading_work_is_linear_in_text_length(ruleset: RuleSet, unit: str) -> None:
    reader = _uncapped(ruleset)
    small = reader.read(unit * 500)
    large = reader.read(unit * 2000)
    assert small.mentions or "no " in unit
    assert large.work <= 4.2 * small.work
    assert len(large.mentions) == 4 * len(small.mentions)


def test_a_1_8_mb_text_is_read_within_a_linear_budget(ruleset: RuleSet) -> None:
    reader = _uncapped(ruleset)
    text = ("Denies dysphagia, slurred speech on examination; no weakness, wasting or tongue "
            "fasciculation. ")
    text = text * (1_800_000 // len(text) + 1)
    reading = reader.read(text)
    assert len(text) >= 1_800_000
    assert reading.work <= 12 * len(text)  # a few units per character, never per pair
    capped = ruleset.terminology.reader
    assert capped is not None
    assert capped.read(text).capped
    assert capped.read(text).work <= 12 * capped.cap


# --- the property: uncertainty never lowers a severity nor brings the benign card -------------

HEDGED_TEXTS = ("? {0}", "possible {0}", "{0} not ruled out", "cannot exclude {0}",
                "rule out {0}", "{0} vs myopathy", "{0} not absent", "concern for {0}",
                "{0} unlikely", "{0} present. No {0}")
SIGN_WORDS = ("clonus", "hyperreflexia", "spasticity", "dysphagia", "tongue fasciculation",
              "muscle weakness", "muscle wasting", "Babinski sign", "fasciculations", "ALS",
              "motor neurone disease", "weakness", "wasting")
RELATIVE_TEXTS = ("Family history of ALS", "Mother has MND", "ALS in father",
                  "FH of motor neurone disease", "Brother: clonus and muscle wasting")
DOUBTFUL_VALUES = ({"valueString": "equivocal"}, {"valueString": "present; no clonus"},
                   {"valueString": "2+"}, {"valueQuantity": {"value": 1}},
                   {"valueCodeableConcept": {"text": "upgoing and downgoing"}})
SIGN_CODES = (("http://snomed.info/sct", "86854008", "Hyperreflexia"),
              ("http://snomed.info/sct", "221360009", "Spasticity (finding)"),
              ("http://snomed.info/sct", "40739000", "Dysphagia"),
              ("http://hl7.org/fhir/sid/icd-10-cm", "R25.3", "Fasciculation"))


@st.composite
def doubtful_items(draw: st.DrawFn) -> dict[str, Any]:
    when = fhir_instant(before_as_of(draw(recent_ages_in_minutes)))
    subject = {"reference": "Patient/pat-1"}
    kind = draw(st.sampled_from(["hedged", "relative", "value", "family-member-history"]))
    event(f"added: {kind}")
    if kind == "value":
        system, code, display = draw(st.sampled_from(SIGN_CODES))
        return {"resourceType": "Observation", "id": "pat-1-doubt", "status": "final",
                "code": {"coding": [{"system": system, "code": code, "display": display}]},
                "subject": subject, "effectiveDateTime": when,
                **draw(st.sampled_from(DOUBTFUL_VALUES))}
    if kind == "family-member-history":
        return {"resourceType": "FamilyMemberHistory", "id": "pat-1-fmh", "status": "completed",
                "patient": subject, "relationship": {"text": "father"},
                "condition": [{"code": {"text": "Amyotrophic lateral sclerosis"}}]}
    if kind == "hedged":
        text = draw(st.sampled_from(HEDGED_TEXTS)).format(draw(st.sampled_from(SIGN_WORDS)))
    else:
        text = draw(st.sampled_from(RELATIVE_TEXTS))
    return {"resourceType": "Condition", "id": "pat-1-doubt",
            "clinicalStatus": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                "code": "active"}]},
            "code": {"text": text}, "subject": subject, "onsetDateTime": when}


@pytest.fixture(scope="session")
def text_rules(ruleset: RuleSet) -> Rules:
    return Rules(ruleset)


@PROPERTY
@given(resources=any_background, added=doubtful_items(), assume_presentation=st.booleans())
def test_adding_uncertainty_never_lowers_severity_nor_brings_the_benign_card(
    resources: list[dict[str, Any]], added: dict[str, Any], assume_presentation: bool,
    text_rules: Rules,
) -> None:
    before = run_one(resources, text_rules, assume_presentation=assume_presentation)
    after = run_one([*resources, added], text_rules, assume_presentation=assume_presentation)
    assert RANK[after.highest_severity] >= RANK[before.highest_severity]
    before_ids = {f.rule_id for f in before.findings}
    after_ids = {f.rule_id for f in after.findings}
    assert "mnd.benign-pattern" in before_ids or "mnd.benign-pattern" not in after_ids
    assert "mnd.established-diagnosis" in before_ids or (
        "mnd.established-diagnosis" not in after_ids)


def _lines_executed(reader: TextReader, text: str) -> int:
    """Every line of text_context.py run while reading: counts work no counter was put on."""
    import sys
    from types import FrameType

    module = TextReader.read.__code__.co_filename
    count = 0

    def trace(frame: FrameType, what: str, arg: object) -> Any:
        nonlocal count
        if frame.f_code.co_filename != module:
            return None
        if what == "line":
            count += 1
        return trace

    sys.settrace(trace)
    try:
        reader.read(text)
    finally:
        sys.settrace(None)
    return count


@pytest.mark.parametrize("unit", HEAVY_UNITS, ids=lambda u: u[:20])
def test_every_line_of_the_reader_runs_a_linear_number_of_times(ruleset: RuleSet,
                                                                 unit: str) -> None:
    reader = _uncapped(ruleset)
    small, large = _lines_executed(reader, unit * 100), _lines_executed(reader, unit * 400)
    assert small > 0
    assert large <= 4.2 * small
