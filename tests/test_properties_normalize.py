"""Property tests (hypothesis) for the normalization invariants of RULES.md v2.

The patients are generated as FHIR by the strategies of test_properties.py; each property adds
hand-shaped resources to them. Same settings: derandomized, no example database.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from fasciculation_cds import evaluate
from fasciculation_cds.assessment import Assessment
from fasciculation_cds.ruleset import RuleSet

from .test_properties import (
    AS_OF,
    AS_OF_TIME,
    PRESENTATION,
    PROPERTY,
    RANK,
    RED_FLAG_SIGNS,
    before_as_of,
    bundle,
    condition,
    decimals,
    fhir_instant,
    json_number,
    patients,
    recent_ages_in_minutes,
)

Resource = dict[str, Any]
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ALS = ("http://hl7.org/fhir/sid/icd-10-cm", "G12.21", "Amyotrophic lateral sclerosis")


class Rules:
    """The session rule set with a short repr (hypothesis prints failing arguments)."""

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset

    def __repr__(self) -> str:
        return f"Rules({self.ruleset.version[:23]}...)"


@pytest.fixture(scope="session")
def norm_rules(ruleset: RuleSet) -> Rules:
    return Rules(ruleset)


def run_one(resources: Sequence[Resource], rules: Rules, **options: Any) -> Assessment:
    (assessment,) = evaluate(bundle(resources), as_of=AS_OF, rules=rules.ruleset, **options)
    return assessment


def findings(assessment: Assessment) -> list[dict[str, Any]]:
    return [f.model_dump(mode="json") for f in assessment.findings]


any_background = st.one_of(patients(), patients(lean_benign=True))

# --- 1. a negated sign never changes any finding -----------------------------------------------

# Signs with a code (Observation forms) and their words (text forms).
SIGN_CODES: dict[str, tuple[str, str, str]] = {
    "hyperreflexia": (SNOMED, "86854008", "Hyperreflexia"),
    "spasticity": (SNOMED, "221360009", "Spasticity (finding)"),
    "dysphagia": (SNOMED, "40739000", "Dysphagia"),
    "weakness": RED_FLAG_SIGNS["weakness"],
    "fasciculation": PRESENTATION["fasciculation"],
}
SIGN_WORDS = ("clonus", "weakness", "wasting", "tongue fasciculation", "hyperreflexia",
              "twitching", "fasciculations", "dysphagia", "Babinski sign", "spasticity")
NEGATIVE_VALUES: tuple[dict[str, Any], ...] = (
    {"valueBoolean": False},
    {"valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "2667000",
                                          "display": "Absent (qualifier value)"}]}},
    {"valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "260385009",
                                          "display": "Negative (qualifier value)"}]}},
    {"valueCodeableConcept": {"coding": [{"system": LOINC, "code": "LA6577-6",
                                          "display": "Negative"}]}},
    {"valueString": "absent"},
    {"valueString": "Negative"},
    {"valueString": "no"},
    {"valueString": "not present"},
)
TEXT_FORMS = ("no {0}", "No {0}.", "denies {0}", "{0} absent", "negative for {0}",
              "{0}: no", "without {0}", "{0} not present", "free of {0}",
              "no weakness, wasting or {0}", "Exam: no {0}; reviewed")


@st.composite
def negated_signs(draw: st.DrawFn) -> Resource:
    """A final Observation of a sign valued absent, or a record whose text negates a sign."""
    when = fhir_instant(before_as_of(draw(recent_ages_in_minutes)))
    subject = {"reference": "Patient/pat-1"}
    if draw(st.booleans()):
        system, code, display = SIGN_CODES[draw(st.sampled_from(sorted(SIGN_CODES)))]
        return {"resourceType": "Observation", "id": "pat-1-negated", "status": "final",
                "code": {"coding": [{"system": system, "code": code, "display": display}]},
                "subject": subject, "effectiveDateTime": when,
                **draw(st.sampled_from(NEGATIVE_VALUES))}
    text = draw(st.sampled_from(TEXT_FORMS)).format(draw(st.sampled_from(SIGN_WORDS)))
    if draw(st.booleans()):
        return {"resourceType": "Condition", "id": "pat-1-negated",
                "clinicalStatus": {"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active"}]},
                "code": {"text": text}, "subject": subject, "onsetDateTime": when}
    return {"resourceType": "Observation", "id": "pat-1-negated", "status": "final",
            "code": {"coding": [{"system": "http://hospital.example.org/exam", "code": "NEU-1",
                                 "display": text}]},
            "subject": subject, "effectiveDateTime": when}


@PROPERTY
@given(resources=any_background, negated=negated_signs(), assume_presentation=st.booleans())
def test_adding_a_negated_sign_never_changes_any_finding(
    resources: list[Resource], negated: Resource, assume_presentation: bool, norm_rules: Rules
) -> None:
    before = run_one(resources, norm_rules, assume_presentation=assume_presentation)
    after = run_one([*resources, negated], norm_rules, assume_presentation=assume_presentation)
    event(f"negated {negated['resourceType']}; highest {before.highest_severity}")
    assert findings(after) == findings(before)


# --- 2. provisional instead of confirmed never lowers the highest severity ---------------------


@PROPERTY
@given(resources=any_background, with_fasciculation=st.booleans(),
       clinical=st.sampled_from(["active", "active", "recurrence"]),
       verification=st.sampled_from(["provisional", "differential", "unconfirmed"]),
       assume_presentation=st.booleans(), onset_days=st.integers(0, 2000))
def test_provisional_mnd_never_lowers_the_highest_severity(
    resources: list[Resource], with_fasciculation: bool, clinical: str, verification: str,
    assume_presentation: bool, onset_days: int, norm_rules: Rules,
) -> None:
    if with_fasciculation:
        resources = [*resources, condition("pat-1-fasc", "pat-1", PRESENTATION["fasciculation"],
                                           onset=AS_OF_TIME)]
    onset = before_as_of(onset_days * 24 * 60)
    confirmed = condition("pat-1-als", "pat-1", ALS, clinical=clinical, onset=onset)
    provisional = copy.deepcopy(confirmed)
    provisional["verificationStatus"]["coding"][0]["code"] = verification
    as_confirmed = run_one([*resources, confirmed], norm_rules,
                           assume_presentation=assume_presentation)
    as_provisional = run_one([*resources, provisional], norm_rules,
                             assume_presentation=assume_presentation)
    before = {f.rule_id for f in as_confirmed.findings}
    after = {f.rule_id for f in as_provisional.findings}
    event(f"{as_confirmed.highest_severity} -> {as_provisional.highest_severity}")
    turned = "mnd.established-diagnosis" in before and "mnd.red-flags" in after
    assert turned or RANK[as_provisional.highest_severity] >= RANK[as_confirmed.highest_severity], (
        sorted(before), sorted(after))
    assert "mnd.benign-pattern" not in after


# --- 3. the same value in another convertible unit gives the same findings (v2 labs) -----------


@dataclass(frozen=True)
class UnitCase:
    """A value drawn in the first form's unit; every form sends the same quantity."""

    name: str
    loinc: str
    low: str
    high: str
    places: int
    edges: tuple[str, ...]
    forms: tuple[tuple[str, str], ...]  # (unit, factor from the first unit)


UNIT_CASES = (
    UnitCase("glucose", "2345-7", "1.500", "12.000", 3, ("2.997", "2.998", "3.885", "3.886"),
             (("mmol/L", "1"), ("mg/dL", "18.016"), ("mmol/l", "1"))),
    UnitCase("tsh", "3016-3", "0.01", "25.00", 2, ("0.10", "10.00"),
             (("m[IU]/L", "1"), ("uIU/mL", "1"))),
    UnitCase("potassium-high", "2823-3", "3.0", "8.0", 1, ("5.5", "6.5"),
             (("mmol/L", "1"), ("mEq/L", "1"))),
    UnitCase("magnesium-high", "2601-3", "0.50", "2.50", 2, ("1.10", "2.00"),
             (("mmol/L", "1"), ("mEq/L", "2"), ("mg/dL", "2.431"))),
    UnitCase("calcium-high", "17861-6", "2.000", "4.000", 3, ("2.620", "3.493"),
             (("mmol/L", "1"), ("mg/dL", "4.008"), ("mEq/L", "2"))),
    UnitCase("creatine-kinase", "2157-6", "0.500", "60.000", 3, ("3.333", "3.334"),
             (("ukat/L", "1"), ("U/L", "60"))),
)


@pytest.mark.parametrize("case", UNIT_CASES, ids=[c.name for c in UNIT_CASES])
@settings(PROPERTY, max_examples=15)
@given(data=st.data())
def test_same_quantity_in_another_unit_gives_the_same_findings(
    case: UnitCase, data: st.DataObject, norm_rules: Rules
) -> None:
    background = [r for r in data.draw(patients(), label="background")
                  if r["resourceType"] != "Observation"]
    background.append(condition("pat-1-presents", "pat-1", PRESENTATION["fasciculation"],
                                onset=AS_OF_TIME))
    value = data.draw(st.one_of(decimals(case.low, case.high, case.places),
                                st.sampled_from([Decimal(e) for e in case.edges])),
                      label=f"value in {case.forms[0][0]}")
    comparator = data.draw(st.sampled_from([None, None, "<", "<=", ">", ">="]),
                           label="comparator")
    effective = fhir_instant(before_as_of(data.draw(recent_ages_in_minutes)))
    results = {}
    for unit, factor in case.forms:
        quantity: Resource = {"value": json_number(value * Decimal(factor)), "unit": unit,
                              "system": UCUM, "code": unit}
        if comparator:
            quantity["comparator"] = comparator
        probe = {"resourceType": "Observation", "id": "pat-1-probe", "status": "final",
                 "code": {"coding": [{"system": LOINC, "code": case.loinc}]},
                 "subject": {"reference": "Patient/pat-1"}, "effectiveDateTime": effective,
                 "valueQuantity": quantity}
        assessment = run_one([*background, probe], norm_rules)
        results[unit] = ([(f.rule_id, f.severity) for f in assessment.findings],
                         sorted(n.code for n in assessment.notices))
    first = next(iter(results.values()))
    event(f"{case.name}: {first}")
    assert all(found == first for found in results.values()), results
