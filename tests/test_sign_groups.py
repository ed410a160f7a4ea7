"""Which recorded signs form a motor-neuron-disease group (normalize/sign_groups.py, v3).

Facts are built directly here, so that certainty and how a fact matched (code, text) can be set
exactly as the text reading sets them; the FHIR-level behaviour is in the rule fixtures and
tests/test_properties_mnd.py.
"""

from __future__ import annotations

import pytest

from fasciculation_cds.facts import Finding, Problem
from fasciculation_cds.normalize.common import Content
from fasciculation_cds.normalize.conditions import Coded
from fasciculation_cds.normalize.sign_groups import counted_sign_groups
from fasciculation_cds.ruleset import RuleSet

MND_GROUPS = {"mnd-lmn", "mnd-bulbar", "mnd-umn", "mnd-umn-nonspecific", "mnd-suspected"}


@pytest.fixture(scope="module")
def content(ruleset: RuleSet) -> Content:
    return Content.of(ruleset)


def finding(content: Content, concept: str, ref: str = "", **fields: object) -> Finding:
    spec = content.term.concepts[concept]
    return Finding.model_validate({
        "reference": ref or f"Observation/{concept}", "concept": concept, "label": spec.label,
        "groups": spec.groups, "matched_by": "code", **fields})


def problem(content: Content, concept: str, **fields: object) -> Problem:
    spec = content.term.concepts[concept]
    return Problem.model_validate({
        "reference": f"Condition/{concept}", "concept": concept, "label": spec.label,
        "groups": spec.groups, "matched_by": "code", "verification_status": "confirmed",
        "clinical_status": "active", **fields})


def counted(content: Content, *facts: Coded) -> tuple[dict[str, set[str]], set[str]]:
    """Each concept's mnd groups as counted, and the derived concepts yielded."""
    out, yields = counted_sign_groups(content, list(facts))
    return {f.concept: set(f.groups) & (MND_GROUPS | {"mnd-unclear", "mnd-explained"})
            for f in out}, yields


def test_weakness_is_lmn_only_beside_a_fasciculation_or_a_suspected_mnd(
        content: Content) -> None:
    alone, _ = counted(content, finding(content, "muscle-weakness"),
                       finding(content, "muscle-cramp"))
    assert alone["muscle-weakness"] == set()
    with_fasciculation, yields = counted(content, finding(content, "muscle-weakness"),
                                         finding(content, "fasciculation"))
    assert with_fasciculation["muscle-weakness"] == {"mnd-lmn"}
    assert "fasciculation-presentation" in yields
    with_suspected, _ = counted(content, finding(content, "muscle-weakness"),
                                finding(content, "suspected-motor-neuron-disease"))
    assert with_suspected["muscle-weakness"] == {"mnd-lmn"}
    # wasting and an abnormal EMG need no fasciculation
    wasting, _ = counted(content, finding(content, "muscle-atrophy"),
                         finding(content, "abnormal-emg"))
    assert wasting == {"muscle-atrophy": {"mnd-lmn"}, "abnormal-emg": {"mnd-lmn"}}


@pytest.mark.parametrize("certainty", ["asserted", "uncertain"])
def test_asserted_and_uncertain_signs_form_groups(content: Content, certainty: str) -> None:
    groups, yields = counted(content, finding(content, "hyperreflexia", certainty=certainty))
    assert groups["hyperreflexia"] == {"mnd-umn"}
    assert "mnd-sign-unclear" not in yields


def test_an_unclear_sign_forms_no_group_and_is_named(content: Content) -> None:
    groups, yields = counted(content, finding(content, "muscle-atrophy", certainty="unclear"),
                             finding(content, "fasciculation"))
    assert groups["muscle-atrophy"] == {"mnd-unclear"}
    assert "mnd-sign-unclear" in yields


@pytest.mark.parametrize("explainer", ["multiple-sclerosis", "stroke", "stroke-sequelae",
                                       "cerebral-palsy", "spinal-cord-injury"])
def test_a_qualifying_explaining_condition_removes_what_it_explains_and_caps(
        content: Content, explainer: str) -> None:
    signs = [finding(content, c) for c in (
        "hyperreflexia", "babinski-sign", "spasticity", "clonus", "abnormal-reflex",
        "muscle-weakness", "dysarthria", "dysphagia", "muscle-atrophy", "abnormal-emg",
        "tongue-fasciculation", "fasciculation")]
    groups, yields = counted(content, *signs, problem(content, explainer))
    removed = {"hyperreflexia", "babinski-sign", "spasticity", "clonus", "abnormal-reflex",
               "muscle-weakness"}
    if explainer != "spinal-cord-injury":  # spinal cord injury explains no bulbar sign
        removed |= {"dysarthria", "dysphagia"}
    for concept in removed:
        assert groups[concept] == {"mnd-explained"}, concept
    kept = {"muscle-atrophy": {"mnd-lmn"}, "abnormal-emg": {"mnd-lmn"},
            "tongue-fasciculation": {"mnd-bulbar"}}
    if explainer == "spinal-cord-injury":
        kept |= {"dysarthria": {"mnd-bulbar"}, "dysphagia": {"mnd-bulbar"}}
    for concept, expected in kept.items():
        assert groups[concept] == expected, concept
    assert {"mnd-sign-explained", "mnd-red-flag-cap"} <= yields


@pytest.mark.parametrize("fields", [
    {"verification_status": "provisional"}, {"verification_status": "differential"},
    {"verification_status": "unconfirmed"}, {"matched_by": "text"},
    {"certainty": "uncertain"}, {"certainty": "unclear"},
], ids=["provisional", "differential", "unconfirmed", "text", "doubted", "unclear"])
def test_only_a_coded_confirmed_undoubted_condition_removes_or_caps(
        content: Content, fields: dict[str, object]) -> None:
    for concept in ("stroke", "cervical-myelopathy"):
        groups, yields = counted(content, finding(content, "hyperreflexia"),
                                 finding(content, "fasciculation"),
                                 problem(content, concept, **fields))
        assert groups["hyperreflexia"] == {"mnd-umn"}, concept
        assert not {"mnd-sign-explained", "mnd-red-flag-cap"} & yields, concept
    _, unverified = counted(content, problem(content, "cervical-myelopathy",
                                             verification_status=None))
    assert "mnd-red-flag-cap" in unverified


def test_cervical_myelopathy_caps_but_removes_nothing(content: Content) -> None:
    groups, yields = counted(content, finding(content, "hyperreflexia"),
                             finding(content, "muscle-weakness"),
                             finding(content, "fasciculation"),
                             problem(content, "cervical-myelopathy"))
    assert groups["hyperreflexia"] == {"mnd-umn"}
    assert groups["muscle-weakness"] == {"mnd-lmn"}
    assert "mnd-red-flag-cap" in yields
    assert "mnd-sign-explained" not in yields


@pytest.mark.parametrize(("fields", "established"), [
    ({}, True), ({"verification_status": None}, True),
    ({"matched_by": "code-prefix"}, True),
    ({"matched_by": "text"}, False), ({"certainty": "uncertain"}, False),
    ({"certainty": "unclear"}, False),
], ids=["confirmed", "unverified", "prefix", "text", "doubted", "unclear"])
def test_established_mnd_only_from_a_qualifying_code_else_suspected(
        content: Content, fields: dict[str, object], established: bool) -> None:
    out, _ = counted_sign_groups(content, [problem(content, "motor-neuron-disease", **fields)])
    [fact] = out
    if established:
        assert (fact.concept, fact.kind) == ("motor-neuron-disease", "problem")
    else:
        assert (fact.concept, fact.kind) == ("suspected-motor-neuron-disease", "finding")
        assert fact.matched_by == fields.get("matched_by", "code")
        assert fact.certainty == fields.get("certainty", "asserted")


@pytest.mark.parametrize(("certainties", "only_uncertain"), [
    (("asserted",), False), (("uncertain",), True), (("unclear",), True),
    (("uncertain", "asserted"), False), (("uncertain", "unclear"), True),
])
def test_a_fasciculation_only_uncertain_is_named(
        content: Content, certainties: tuple[str, ...], only_uncertain: bool) -> None:
    facts = [finding(content, "fasciculation", ref=f"Observation/f{i}", certainty=c)
             for i, c in enumerate(certainties)]
    _, yields = counted(content, *facts)
    assert ("fasciculation-uncertain-only" in yields) is only_uncertain
    assert "fasciculation-presentation" in yields
