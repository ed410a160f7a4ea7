"""Conditions and signs (RULES.md v2, Definitions): verification status, suspected / recorded
MND, MS and the UMN group, recent-only conditions, Procedures, negation, text-only records."""

from __future__ import annotations

import pytest
import yaml

from fasciculation_cds.ruleset import RuleSet

from .conftest import RULES_DIR
from .normalize_helpers import (
    ALCOHOL_WITHDRAWAL,
    ALS,
    DIALYSIS,
    FASCICULATION,
    HYPERREFLEXIA,
    HYPOGLYCEMIA,
    LOCAL,
    LOINC,
    MS,
    SNOMED,
    WEAKNESS,
    assessed,
    concepts,
    condition,
    days_ago,
    normalized,
    notice_codes,
    observation,
    procedure,
)

ATROPHY = ("http://hl7.org/fhir/sid/icd-10-cm", "M62.50", "Muscle wasting and atrophy")

SUSPECTED = "suspected-motor-neuron-disease"
RECORDED = "motor-neuron-disease-recorded"

# --- verification status and MND -----------------------------------------------------------


@pytest.mark.parametrize("verification", ["confirmed", None])
def test_confirmed_or_absent_als_is_established(ruleset: RuleSet,
                                                verification: str | None) -> None:
    result = normalized(ruleset, condition(ALS, verification=verification))
    assert "motor-neuron-disease" in concepts(result, "problem")
    assert SUSPECTED not in concepts(result)
    assert RECORDED in result.context.concepts_present


@pytest.mark.parametrize("verification", ["provisional", "differential", "unconfirmed"])
def test_unconfirmed_als_is_suspected_not_established(ruleset: RuleSet,
                                                      verification: str) -> None:
    result = normalized(ruleset, condition(ALS, verification=verification))
    assert "motor-neuron-disease" not in result.context.concepts_present
    assert SUSPECTED in concepts(result, "finding")
    assert RECORDED in result.context.concepts_present
    assert result.context.group_counts["mnd-suspected"] == 1
    assert result.context.group_set_counts["mnd_warning_groups"] == 1
    assert result.context.group_set_counts["mnd_suspected"] == 1


@pytest.mark.parametrize("verification", ["refuted", "entered-in-error"])
def test_refuted_als_counts_nowhere(ruleset: RuleSet, verification: str) -> None:
    clinical = None if verification == "entered-in-error" else "active"
    result = normalized(ruleset, condition(ALS, verification=verification, clinical=clinical))
    assert not ({"motor-neuron-disease", SUSPECTED, RECORDED}
                & set(result.context.concepts_present))


@pytest.mark.parametrize("clinical", ["resolved", "inactive", "remission"])
def test_inactive_als_is_recorded_only(ruleset: RuleSet, clinical: str) -> None:
    result = normalized(ruleset, condition(ALS, clinical=clinical, verification="provisional"))
    assert set(result.context.concepts_present) == {RECORDED}


def test_condition_without_clinical_status_is_active_unless_abated(ruleset: RuleSet) -> None:
    assert "muscle-weakness" in concepts(normalized(ruleset, condition(WEAKNESS, clinical=None)))
    abated = condition(WEAKNESS, clinical=None, abatementDateTime=days_ago(2))
    assert not concepts(normalized(ruleset, abated))


def test_provisional_sign_condition_still_counts(ruleset: RuleSet) -> None:
    result = normalized(ruleset, condition(WEAKNESS, verification="differential"))
    assert "muscle-weakness" in concepts(result, "finding")


def test_derived_concepts_are_declared_in_derived_yaml(ruleset: RuleSet) -> None:
    derived = yaml.safe_load((RULES_DIR / "derived.yaml").read_text())["derived_concepts"]
    for cid in (SUSPECTED, RECORDED):
        assert ruleset.terminology.concepts[cid].label == derived[cid]["label"]
    assert ruleset.terminology.groups["mnd-suspected"] == (SUSPECTED,)


# --- multiple sclerosis: UMN signs form no MND group ---------------------------------------


def test_ms_with_hyperreflexia_counts_no_umn_group(ruleset: RuleSet) -> None:
    # RULES.md v3 "Explaining conditions": a coded, confirmed MS removes UMN signs and weakness
    # (v2 removed only UMN signs); wasting still counts; a resolved or provisional MS removes
    # nothing
    sign = observation(HYPERREFLEXIA)
    alone = normalized(ruleset, sign)
    assert alone.context.group_set_counts["mnd_warning_groups"] == 1
    with_ms = normalized(ruleset, sign, condition(MS))
    assert with_ms.context.group_counts["mnd-umn"] == 0
    assert "mnd-sign-explained" in with_ms.context.concepts_present
    assert "mnd-red-flag-cap" in with_ms.context.concepts_present
    assert with_ms.context.group_set_counts["mnd_warning_groups"] == 0
    with_weakness = normalized(ruleset, sign, condition(MS), condition(WEAKNESS),
                               condition(FASCICULATION))
    assert with_weakness.context.group_set_counts["mnd_warning_groups"] == 0
    with_wasting = normalized(ruleset, sign, condition(MS), condition(ATROPHY))
    assert with_wasting.context.group_set_counts["mnd_groups"] == 1
    resolved_ms = normalized(ruleset, sign, condition(MS, clinical="resolved"))
    assert resolved_ms.context.group_set_counts["mnd_warning_groups"] == 1
    provisional_ms = normalized(ruleset, sign, condition(MS, verification="provisional"))
    assert provisional_ms.context.group_set_counts["mnd_warning_groups"] == 1
    assert "mnd-red-flag-cap" not in provisional_ms.context.concepts_present


# --- recent-only conditions ----------------------------------------------------------------


@pytest.mark.parametrize("coding", [ALCOHOL_WITHDRAWAL, HYPOGLYCEMIA])
@pytest.mark.parametrize(("fields", "counts"), [
    ({"onsetDateTime": days_ago(29)}, True),
    ({"onsetDateTime": days_ago(31)}, False),
    ({"onsetDateTime": days_ago(31), "recordedDate": days_ago(2)}, False),
    ({"recordedDate": days_ago(29)}, True),
    ({"recordedDate": days_ago(31)}, False),
    ({"onsetPeriod": {"start": days_ago(10)}}, True),
    ({"onsetString": "last week"}, False),
    ({"onsetAge": {"value": 50, "unit": "a"}}, False),
    # v3: an onset age decides (birthDate 1970-01-01: at 50 is 2020), never the recordedDate
    ({"onsetAge": {"value": 50, "unit": "a"}, "recordedDate": days_ago(5)}, False),
    ({"onsetString": "last week", "recordedDate": days_ago(5)}, True),
], ids=["onset-29d", "onset-31d", "onset-wins-over-recorded", "recorded-29d", "recorded-31d",
        "onset-period", "onset-string", "onset-age", "onset-age-recorded-5d",
        "onset-string-recorded-5d"])
def test_recent_only_conditions(ruleset: RuleSet, coding: tuple[str, str, str],
                                fields: dict[str, object], counts: bool) -> None:
    result = normalized(ruleset, condition(coding, **fields))
    assert bool(concepts(result)) is counts


def test_recent_only_observation_uses_its_effective_time(ruleset: RuleSet) -> None:
    assert concepts(normalized(ruleset, observation(HYPOGLYCEMIA, days=20)))
    assert not concepts(normalized(ruleset, observation(HYPOGLYCEMIA, days=40)))


def test_other_conditions_have_no_recency_limit(ruleset: RuleSet) -> None:
    assert concepts(normalized(ruleset, condition(MS, onsetDateTime=days_ago(4000))))


# --- procedures ----------------------------------------------------------------------------


def test_completed_dialysis_procedure_is_a_fact(ruleset: RuleSet) -> None:
    result = normalized(ruleset, procedure(DIALYSIS, performedDateTime=days_ago(10)))
    (fact,) = [f for f in result.facts if f.kind == "procedure"]
    assert fact.concept == "renal-dialysis-procedure"
    assert fact.status == "completed"
    assert fact.age_days == pytest.approx(10)
    assert "kidney-failure" in fact.groups


def test_in_progress_dialysis_runs_to_as_of(ruleset: RuleSet) -> None:
    """v3 "Time": a Period is a span; one without an end runs to as_of."""
    result = normalized(ruleset, procedure(DIALYSIS, status="in-progress",
                                           performedPeriod={"start": days_ago(200)}))
    assert [f.age_days for f in result.facts if f.kind == "procedure"] == [0]
    result = normalized(ruleset, procedure(DIALYSIS, performedPeriod={
        "start": days_ago(120), "end": days_ago(89)}))
    assert [f.age_days for f in result.facts if f.kind == "procedure"] == [89]


@pytest.mark.parametrize("status", ["not-done", "entered-in-error", "preparation", "stopped"])
def test_procedure_not_performed_is_no_fact(ruleset: RuleSet, status: str) -> None:
    result = normalized(ruleset, procedure(DIALYSIS, status=status,
                                           performedDateTime=days_ago(3)))
    assert not concepts(result, "procedure")


def test_future_or_undated_procedure_is_no_fact(ruleset: RuleSet) -> None:
    future = procedure(DIALYSIS, performedDateTime=days_ago(-3))
    undated = procedure(DIALYSIS)
    result = normalized(ruleset, future, undated)
    assert not concepts(result, "procedure")
    assert notice_codes(result) == ["no-effective-time"]


def test_kidney_failure_fires_on_a_recent_dialysis_procedure(ruleset: RuleSet) -> None:
    if "metabolic.kidney-failure" not in {r.id for r in ruleset.active_rules()}:
        pytest.skip("rule not in this rule set")
    found = assessed(ruleset, procedure(DIALYSIS, performedDateTime=days_ago(10)),
                     assume_presentation=True)
    assert "metabolic.kidney-failure" in {f.rule_id for f in found.findings}
    old = assessed(ruleset, procedure(DIALYSIS, performedDateTime=days_ago(100)),
                   assume_presentation=True)
    assert "metabolic.kidney-failure" not in {f.rule_id for f in old.findings}


# --- negation: Observation values ------------------------------------------------------------

ABSENT = {"coding": [{"system": SNOMED, "code": "2667000", "display": "Absent (qualifier value)"}]}
NEGATIVE = {"coding": [{"system": LOINC, "code": "LA6577-6", "display": "Negative"}]}


@pytest.mark.parametrize("value", [
    {"valueCodeableConcept": ABSENT},
    {"valueCodeableConcept": NEGATIVE},
    {"valueCodeableConcept": {"text": "Not present"}},
    {"valueBoolean": False},
    {"valueString": "absent"},
    {"valueString": "Negative"},
    {"valueString": "no"},
    {"valueString": "none"},
], ids=["absent-code", "negative-code", "not-present-text", "false", "absent", "negative", "no",
        "none"])
def test_sign_observation_valued_absent_does_not_count(ruleset: RuleSet,
                                                       value: dict[str, object]) -> None:
    result = normalized(ruleset, observation(HYPERREFLEXIA, **value))
    assert not concepts(result)
    assert result.notices == []


@pytest.mark.parametrize("value", [
    {}, {"valueBoolean": True}, {"valueString": "present"}, {"valueString": "Positive"},
    {"valueCodeableConcept": {"text": "Present bilaterally"}},
], ids=["no-value", "true", "present", "positive", "present-text"])
def test_sign_observation_present_counts(ruleset: RuleSet, value: dict[str, object]) -> None:
    result = normalized(ruleset, observation(HYPERREFLEXIA, **value))
    assert concepts(result) == {"hyperreflexia"}


# v3 ("Sign values"): "downgoing" and "flexor" are negative words now (they were unclear in v2),
# and an unclear value keeps its fact, as unclear, so that it blocks reassurance.
@pytest.mark.parametrize("value", [
    {"valueString": "downgoing"},
    {"valueCodeableConcept": {"text": "Flexor plantar response"}},
    {"dataAbsentReason": {"text": "not performed"}},
], ids=["downgoing", "flexor", "data-absent"])
def test_sign_observation_valued_negative_in_v3_words(ruleset: RuleSet,
                                                      value: dict[str, object]) -> None:
    result = normalized(ruleset, observation(HYPERREFLEXIA, **value))
    assert not concepts(result)
    assert result.notices == []


@pytest.mark.parametrize("value", [
    {"valueString": "equivocal"},
    {"valueString": "2+"},
    {"valueQuantity": {"value": 3, "unit": "{grade}"}},
], ids=["equivocal", "number-text", "quantity"])
def test_sign_observation_with_unclear_value_is_kept_as_unclear(
        ruleset: RuleSet, value: dict[str, object]) -> None:
    result = normalized(ruleset, observation(HYPERREFLEXIA, **value))
    (fact,) = [f for f in result.facts if f.kind == "finding"]
    assert (fact.concept, fact.certainty) == ("hyperreflexia", "unclear")
    # it forms no mnd.* group, but blocks the benign card (mnd-sign-unclear)
    assert not [g for g in fact.groups if g.startswith("mnd-") and g != "mnd-unclear"]
    assert "mnd-sign-unclear" in result.context.concepts_present
    assert result.context.group_set_counts["mnd_warning_groups"] == 0
    assert notice_codes(result) == ["sign-value-unclear"]
    assert "equivocal" not in result.notices[0].message.lower()  # no patient value text


def test_red_flags_ignore_a_hyperreflexia_valued_absent(ruleset: RuleSet) -> None:
    fasciculation = condition(FASCICULATION)
    absent = assessed(ruleset, fasciculation, observation(HYPERREFLEXIA,
                                                          valueCodeableConcept=ABSENT))
    assert "mnd.red-flags" not in {f.rule_id for f in absent.findings}
    present = assessed(ruleset, fasciculation, observation(HYPERREFLEXIA))
    assert "mnd.red-flags" in {f.rule_id for f in present.findings}


# --- negation: text ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("No weakness, wasting or tongue fasciculation", set()),
    ("no weakness but clonus", {"clonus"}),
    ("Denies twitching", set()),
    ("Clonus absent", set()),
    ("Negative for clonus", set()),
    ("clonus: no", set()),
    ("Free of fasciculations", set()),
    ("ALS ruled out", set()),
    ("no weakness; clonus at both ankles", {"clonus"}),
    ("no weakness\nclonus", {"clonus"}),
    ("no weakness. Fasciculations in both calves", {"fasciculation"}),
    ("Fasciculations, no weakness", {"fasciculation"}),
    ("wasting of hand muscles, however no weakness", {"muscle-atrophy"}),
    # v3: text alone never establishes a diagnosis; ALS from text is a suspected MND
    ("Amyotrophic lateral sclerosis", {SUSPECTED}),
    ("Tongue fasciculations", {"tongue-fasciculation", "fasciculation"}),
    ("Alendronic acid", set()),
], ids=lambda v: str(v)[:30])
def test_negated_text_never_counts(ruleset: RuleSet, text: str, expected: set[str]) -> None:
    result = normalized(ruleset, condition({"text": text}))
    assert concepts(result) == expected
    assert all(f.matched_by == "text" for f in result.facts if f.kind in ("problem", "finding"))


def test_negated_text_in_a_coding_display_with_a_local_code(ruleset: RuleSet) -> None:
    coded = {"coding": [{"system": LOCAL, "code": "N-12", "display": "No clonus"}]}
    assert not concepts(normalized(ruleset, observation(coded)))
    coded = {"coding": [{"system": LOCAL, "code": "N-13", "display": "Clonus"}]}
    assert concepts(normalized(ruleset, observation(coded))) == {"clonus"}


def test_text_is_read_only_when_no_coding_is_known(ruleset: RuleSet) -> None:
    known = {"coding": [{"system": FASCICULATION[0], "code": FASCICULATION[1],
                         "display": "Fasciculation"}], "text": "fasciculation and clonus"}
    # R25.3 codes fasciculation and muscle twitch; the text's "clonus" is not read
    assert concepts(normalized(ruleset, condition(known))) == {"fasciculation", "muscle-twitch"}


def test_text_matches_whole_words_only(ruleset: RuleSet) -> None:
    assert not concepts(normalized(ruleset, condition({"text": "Totals reviewed; spastica"})))


def _first_phrases() -> list[tuple[str, str]]:
    data = yaml.safe_load((RULES_DIR / "text-matches.yaml").read_text())
    return sorted((cid, phrases[0]) for cid, phrases in data["text"].items())


@pytest.mark.parametrize(("concept", "phrase"), _first_phrases(), ids=lambda v: str(v))
def test_every_text_synonym_reaches_its_concept(ruleset: RuleSet, concept: str,
                                               phrase: str) -> None:
    kind = ruleset.terminology.concepts[concept].kind
    if kind == "procedure":
        result = normalized(ruleset, procedure((LOCAL, "P1", phrase.upper()),
                                               performedDateTime=days_ago(1)))
    else:
        result = normalized(ruleset, condition({"text": phrase.upper()},
                                               onsetDateTime=days_ago(1)))
    # v3: an ALS/MND text match is a suspected MND (text never establishes the diagnosis)
    concept = SUSPECTED if concept == "motor-neuron-disease" else concept
    assert concept in concepts(result)
    assert concept not in concepts(normalized(ruleset, condition(
        {"text": f"no {phrase}"}, onsetDateTime=days_ago(1))))


def test_text_only_als_blocks_reassurance_through_the_recorded_concept(
        ruleset: RuleSet) -> None:
    result = normalized(ruleset, condition({"text": "ALS"}, clinical="inactive"))
    assert RECORDED in result.context.concepts_present
