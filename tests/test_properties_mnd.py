"""Property tests (hypothesis) for the motor-neuron-disease invariants of RULES.md v3.

The strategy generates FHIR R4 records (Patient, Conditions, sign Observations with and without
values, lab Observations) around a fasciculation or cramp, never facts, so terminology, sign
values, the group counting of normalization and both engine stages run inside every property.
The oracles read the generated record, not the implementation: what RULES.md v3 says blocks
`mnd.benign-pattern`, and which findings explain a blocked benign card.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fasciculation_cds import evaluate
from fasciculation_cds.assessment import Assessment
from fasciculation_cds.errors import InputError
from fasciculation_cds.evaluate import Evaluator, ingest
from fasciculation_cds.findings import strict_summaries
from fasciculation_cds.normalize import NormalizedPatient, Normalizer
from fasciculation_cds.ruleset import RuleSet

Resource = dict[str, Any]
Coding = tuple[str, str, str]

AS_OF = "2026-06-01T12:00:00Z"
AS_OF_TIME = datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
RANK = {None: 0, "info": 1, "warning": 2, "critical": 3}

PROPERTY = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# codes exactly as in rules/valuesets/codes.yaml
FASCICULATION: Coding = (ICD10CM, "R25.3", "Fasciculation")
CRAMP: Coding = (ICD10CM, "R25.2", "Cramp and spasm")
SIGNS: dict[str, Coding] = {
    "weakness": (ICD10CM, "M62.81", "Muscle weakness (generalized)"),
    "atrophy": (ICD10CM, "M62.50",
                "Muscle wasting and atrophy, not elsewhere classified, unspecified site"),
    "emg": (ICD10CM, "R94.131", "Abnormal electromyogram [EMG]"),
    "reflex": (ICD10CM, "R29.2", "Abnormal reflex"),
    "hyperreflexia": (SNOMED, "86854008", "Hyperreflexia"),
    "spasticity": (SNOMED, "221360009", "Spasticity (finding)"),
    "dysphagia": (ICD10CM, "R13.10", "Dysphagia, unspecified"),
    "dysarthria": (ICD10CM, "R47.1", "Dysarthria and anarthria"),
}
ALS: Coding = (ICD10CM, "G12.21", "Amyotrophic lateral sclerosis")
CONDITIONS: dict[str, Coding] = {
    "multiple-sclerosis": (ICD10CM, "G35", "Multiple sclerosis"),
    "stroke": (ICD10CM, "I63.9", "Cerebral infarction, unspecified"),
    "stroke-sequelae": (ICD10CM, "I69.351", "Hemiplegia and hemiparesis following cerebral "
                        "infarction affecting right dominant side"),
    "spinal-cord-injury": (ICD10CM, "S14.109S", "Unspecified injury at unspecified level of "
                           "cervical spinal cord, sequela"),
    "cerebral-palsy": (ICD10CM, "G80.1", "Spastic diplegic cerebral palsy"),
    "cervical-myelopathy": (ICD10CM, "M47.12",
                            "Other spondylosis with myelopathy, cervical region"),
}
LABS: dict[str, tuple[str, str, str, int, int, int]] = {
    # key: (LOINC, display, unit, low, high, scale) -- values drawn as integers / scale
    "calcium": ("17861-6", "Calcium [Mass/volume] in Serum or Plasma", "mg/dL", 80, 110, 10),
    "magnesium": ("19123-9", "Magnesium [Mass/volume] in Serum or Plasma", "mg/dL", 15, 26, 10),
    "potassium": ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 30, 58, 10),
    "creatine-kinase": ("2157-6", "Creatine kinase [Enzymatic activity/volume] in Serum or "
                        "Plasma", "U/L", 40, 1200, 1),
}
CK_DEFAULT_LIMIT = 200.0  # derived.yaml creatine_kinase_upper_limit (no referenceRange sent)
SIGN_VALUES = (None, "present", "equivocal", "absent")
UNCLEAR = "equivocal"

# Findings that explain a blocked benign card by themselves (RULES.md v3 mnd.not-benign-pattern:
# "the blocker's own card, else mnd.not-benign-pattern"); workup when Ca, Mg or K is missing.
EXPLAINING_PREFIXES = ("mnd.", "electrolyte.hypo", "electrolyte.hyper", "metabolic.",
                       "differential.", "context.withdrawal", "workup.electrolytes-missing")


@pytest.fixture(autouse=True)
def _summaries_must_fit() -> Iterator[None]:
    with strict_summaries():
        yield


class Rules:
    """The session rule set with a short repr (hypothesis prints arguments of failures)."""

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset

    def __repr__(self) -> str:
        return "Rules(...)"


@pytest.fixture(scope="session")
def rules(ruleset: RuleSet) -> Rules:
    return Rules(ruleset)


# --- the generated record and what it says, independently of the implementation ---------------


@dataclass(frozen=True)
class Item:
    """One clinical resource of a generated record."""

    name: str  # "fasciculation", "cramp", a SIGNS key, "als" or a CONDITIONS key
    observation: bool = False
    value: str | None = None  # an Observation's valueString
    verification: str | None = "confirmed"
    clinical: str = "active"
    tongue: bool = False
    text_only: bool = False
    days_ago: int = 10

    @property
    def counts(self) -> bool:
        """Recorded in RULES.md's sense: an active, not refuted Condition; or an Observation
        not valued absent (all dates here are inside every look-back)."""
        if self.observation:
            return self.value != "absent"
        return self.clinical == "active" and self.verification not in ("refuted",)


@dataclass(frozen=True)
class Record:
    items: tuple[Item, ...]
    labs: tuple[tuple[str, int], ...]  # (LABS key, scaled integer value)

    def with_items(self, *items: Item) -> Record:
        return dataclasses.replace(self, items=(*self.items, *items))

    def resources(self) -> list[Resource]:
        out: list[Resource] = [{"resourceType": "Patient", "id": "p1", "gender": "female",
                                "birthDate": "1968-02-03"}]
        for index, item in enumerate(self.items):
            out.append(_resource(f"r{index}", item))
        for index, (key, scaled) in enumerate(self.labs):
            out.append(_lab(f"l{index}", key, scaled))
        return out

    def lab(self, key: str) -> float | None:
        values = [scaled / LABS[key][5] for k, scaled in self.labs if k == key]
        return values[0] if values else None

    def fasciculation_items(self) -> list[Item]:
        return [i for i in self.items if i.name == "fasciculation" and i.counts]


# how a record names a concept in words alone (text-only Conditions)
TEXTS = {"cervical-myelopathy": "Cervical spondylotic myelopathy"}


def _when(days_ago: int) -> str:
    moment = AS_OF_TIME - timedelta(days=days_ago)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _coding(name: str) -> Coding:
    if name == "fasciculation":
        return FASCICULATION
    if name == "cramp":
        return CRAMP
    if name == "als":
        return ALS
    return SIGNS.get(name) or CONDITIONS[name]


def _resource(rid: str, item: Item) -> Resource:
    system, code, display = _coding(item.name)
    codeable: dict[str, Any] = ({"text": TEXTS.get(item.name, display)} if item.text_only else
                                {"coding": [{"system": system, "code": code,
                                             "display": display}]})
    subject = {"reference": "Patient/p1"}
    if item.observation:
        resource: Resource = {"resourceType": "Observation", "id": rid, "status": "final",
                              "code": codeable, "subject": subject,
                              "effectiveDateTime": _when(item.days_ago)}
        if item.value is not None:
            resource["valueString"] = item.value
    else:
        resource = {"resourceType": "Condition", "id": rid,
                    "clinicalStatus": {"coding": [{"system": CLINICAL,
                                                   "code": item.clinical}]},
                    "code": codeable, "subject": subject,
                    "onsetDateTime": _when(item.days_ago)}
        if item.verification is not None:
            resource["verificationStatus"] = {"coding": [{"system": VERIFICATION,
                                                          "code": item.verification}]}
    if item.tongue:
        resource["bodySite"] = [{"text": "Tongue"}] if not item.observation else \
            {"text": "Tongue"}
    return resource


def _lab(rid: str, key: str, scaled: int) -> Resource:
    loinc, display, unit, _, _, scale = LABS[key]
    value: float | int = scaled if scale == 1 else scaled / scale
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "code": {"coding": [{"system": LOINC, "code": loinc, "display": display}]},
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": _when(5),
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}}


fasciculations = st.builds(
    Item, name=st.just("fasciculation"), observation=st.booleans(),
    value=st.sampled_from((None, None, "present", UNCLEAR)),
    tongue=st.sampled_from((False, False, True)))
signs = st.builds(Item, name=st.sampled_from(sorted(SIGNS)), observation=st.booleans(),
                  value=st.sampled_from(SIGN_VALUES))
diagnoses = st.builds(
    Item, name=st.just("als"),
    verification=st.sampled_from(("confirmed", None, "provisional", "differential",
                                  "unconfirmed", "refuted")),
    clinical=st.sampled_from(("active", "active", "inactive", "resolved")),
    text_only=st.sampled_from((False, False, True)))
others = st.builds(Item, name=st.sampled_from(sorted(CONDITIONS)),
                   verification=st.sampled_from(("confirmed", None, "provisional")))


def lab_values(key: str) -> st.SearchStrategy[tuple[str, int]]:
    _, _, _, low, high, _ = LABS[key]
    return st.integers(low, high).map(lambda v: (key, v))


NORMAL_RANGES = {"calcium": (86, 104), "magnesium": (18, 25), "potassium": (36, 50),
                 "creatine-kinase": (150, 260)}


@st.composite
def records(draw: st.DrawFn, *, fasciculation: bool | None = None) -> Record:
    """A record around a presentation: fasciculation (always when `fasciculation`), a cramp,
    a few signs and conditions, and Ca, Mg, K (usually) and CK (sometimes). Half the records
    lean benign: normal Ca, Mg and K, a CK near its limit, and at most one other item, so
    that each single blocker meets an otherwise benign record."""
    lean = draw(st.booleans())
    items: list[Item] = []
    with_fasciculation = draw(st.booleans()) if fasciculation is None else fasciculation
    if with_fasciculation or lean:
        items += draw(st.lists(fasciculations, min_size=1, max_size=1 if lean else 2))
    if (not lean and draw(st.booleans())) or not items:
        items.append(Item(name="cramp"))
    if lean:
        items += draw(st.lists(st.one_of(signs, diagnoses, others), max_size=1))
    else:
        rarely = st.integers(0, 3).map(lambda n: n == 0)
        for kind in (signs, diagnoses, others):
            if draw(rarely):
                items += draw(st.lists(kind, min_size=1, max_size=2))
    labs = []
    for key in ("calcium", "magnesium", "potassium", "creatine-kinase"):
        if lean:
            if key != "creatine-kinase" or draw(st.booleans()):
                low, high = NORMAL_RANGES[key]
                labs.append((key, draw(st.integers(low, high))))
        elif draw(st.integers(0, 5)) > (4 if key == "creatine-kinase" else 0):
            labs.append(draw(lab_values(key)))
    return Record(tuple(items), tuple(labs))


def assess(record: Record | Sequence[Resource], rules: Rules,
           assume_presentation: bool = False) -> Assessment:
    resources = record.resources() if isinstance(record, Record) else list(record)
    source = {"resourceType": "Bundle", "type": "collection", "timestamp": AS_OF,
              "entry": [{"resource": r} for r in resources]}
    [assessment] = evaluate(source, as_of=AS_OF, rules=rules.ruleset,
                            assume_presentation=assume_presentation)
    return assessment


def rule_ids(assessment: Assessment) -> set[str]:
    return {f.rule_id for f in assessment.findings}


def benign_blockers(record: Record) -> list[str]:
    """What RULES.md v3 "What blocks mnd.benign-pattern" finds in the record itself."""
    found = []
    if any(i.name in SIGNS and i.counts for i in record.items):
        found.append("an MND sign or abnormal reflex recorded (counted, explained or unclear)")
    if any(i.name == "als" and i.verification != "refuted" for i in record.items):
        found.append("an ALS/MND Condition of any status")
    if any(i.name == "cervical-myelopathy" and i.counts for i in record.items):
        found.append("a cervical myelopathy")
    fasciculation = record.fasciculation_items()
    if fasciculation and all(i.observation and i.value == UNCLEAR for i in fasciculation):
        found.append("a fasciculation presentation that is only uncertain")
    if any(i.tongue for i in fasciculation):
        found.append("a tongue fasciculation")
    ck = record.lab("creatine-kinase")
    if ck is not None and ck > CK_DEFAULT_LIMIT:
        found.append("a CK above the upper limit")
    if any(record.lab(k) is None for k in ("calcium", "magnesium", "potassium")):
        found.append("Ca, Mg or K not measured")
    return found


# --- 0. the generator reaches every outcome the properties speak of ----------------------------


def test_the_records_reach_the_rules(rules: Rules) -> None:
    labs = (("calcium", 94), ("magnesium", 20), ("potassium", 42))
    benign = Record((Item("fasciculation"),), labs)
    assert "mnd.benign-pattern" in rule_ids(assess(benign, rules))
    ck = dataclasses.replace(benign, labs=(*labs, ("creatine-kinase", 900)))
    assert rule_ids(assess(ck, rules)) == {"mnd.not-benign-pattern"}
    red = benign.with_items(Item("weakness"), Item("hyperreflexia", observation=True))
    assert ("mnd.red-flags", "critical") in {(f.rule_id, f.severity)
                                             for f in assess(red, rules).findings}
    established = benign.with_items(Item("als"))
    assert "mnd.established-diagnosis" in rule_ids(assess(established, rules))


# --- 1. mnd.benign-pattern never appears beside any blocker RULES.md lists ----------------------


@settings(PROPERTY, max_examples=80)
@given(record=records(), assume_presentation=st.booleans())
def test_benign_pattern_never_beside_a_blocker(record: Record, assume_presentation: bool,
                                               rules: Rules) -> None:
    assessment = assess(record, rules, assume_presentation)
    found = {(f.rule_id, f.severity) for f in assessment.findings}
    if "mnd.benign-pattern" not in rule_ids(assessment):
        event("benign: absent")
        return
    event("benign: present")
    assert benign_blockers(record) == [], (record, found)
    assert record.fasciculation_items(), (record, found)
    others = {(r, s) for r, s in found if r != "mnd.benign-pattern"}
    assert not [r for r, s in others if RANK[s] >= RANK["warning"]], found
    assert not [r for r, _ in others if r.startswith(EXPLAINING_PREFIXES)], found


# --- 2. a fasciculation presentation always gets a finding; a blocked benign card is explained --


@settings(PROPERTY, max_examples=80)
@given(record=records(fasciculation=True))
def test_fasciculation_always_gets_a_finding_and_a_blocked_benign_card_is_explained(
        record: Record, rules: Rules) -> None:
    assessment = assess(record, rules)
    ids = rule_ids(assessment)
    assert ids, record
    if "mnd.benign-pattern" in ids:
        event("benign: present")
        return
    event(f"blockers in the record: {len(benign_blockers(record))}")
    explained = [r for r in ids if r.startswith(EXPLAINING_PREFIXES)]
    high = [f.rule_id for f in assessment.findings if RANK[f.severity] >= RANK["warning"]]
    assert explained or high, (record, ids)


# Each blocker RULES.md v3 lists that a generated record can carry, alone on a benign record.
SINGLE_BLOCKERS: dict[str, tuple[Item, ...]] = {
    **{f"sign {name}": (Item(name),) for name in SIGNS},
    **{f"sign {name} as an Observation": (Item(name, observation=True),) for name in SIGNS},
    **{f"unclear {name}": (Item(name, observation=True, value=UNCLEAR),) for name in SIGNS},
    **{f"{name} explained by a stroke": (Item(name), Item("stroke"))
       for name in ("weakness", "reflex", "hyperreflexia", "dysphagia")},
    **{f"ALS {v or 'no verification'}": (Item("als", verification=v),)
       for v in ("confirmed", None, "provisional", "differential", "unconfirmed")},
    "ALS inactive": (Item("als", clinical="inactive"),),
    "ALS resolved, provisional": (Item("als", clinical="resolved", verification="provisional"),),
    "ALS text only": (Item("als", text_only=True),),
    "cervical myelopathy": (Item("cervical-myelopathy"),),
    "cervical myelopathy provisional": (Item("cervical-myelopathy", verification="provisional"),),
    "cervical myelopathy text only": (Item("cervical-myelopathy", text_only=True),),
    "tongue fasciculation": (Item("fasciculation", observation=True, tongue=True),),
}


@pytest.mark.parametrize("blocker", sorted(SINGLE_BLOCKERS))
def test_each_blocker_alone_removes_the_benign_card_and_a_card_says_why(
        blocker: str, rules: Rules) -> None:
    base = Record((Item("fasciculation"),), NORMAL)
    assert "mnd.benign-pattern" in rule_ids(assess(base, rules))
    record = base.with_items(*SINGLE_BLOCKERS[blocker])
    assert benign_blockers(record), blocker  # the oracle agrees it is a blocker
    ids = rule_ids(assess(record, rules))
    assert "mnd.benign-pattern" not in ids, ids
    assert [r for r in ids if r.startswith(EXPLAINING_PREFIXES)], ids


@pytest.mark.parametrize("items", [
    (Item("fasciculation", observation=True, value=UNCLEAR),),
    (Item("fasciculation", observation=True, value=UNCLEAR),
     Item("fasciculation", observation=True, value=UNCLEAR)),
], ids=["one", "two"])
def test_a_fasciculation_that_is_only_uncertain_blocks_and_says_why(
        items: tuple[Item, ...], rules: Rules) -> None:
    ids = rule_ids(assess(Record(items, NORMAL), rules))
    assert ids == {"mnd.not-benign-pattern"}, ids
    asserted = rule_ids(assess(Record((*items, Item("fasciculation")), NORMAL), rules))
    assert asserted == {"mnd.benign-pattern"}, asserted


def test_a_ck_just_above_its_limit_blocks_and_at_the_limit_does_not(rules: Rules) -> None:
    at = rule_ids(assess(Record((Item("fasciculation"),), (*NORMAL, ("creatine-kinase", 200))),
                         rules))
    above = rule_ids(assess(Record((Item("fasciculation"),),
                                   (*NORMAL, ("creatine-kinase", 201))), rules))
    assert at == {"mnd.benign-pattern"}
    assert above == {"mnd.not-benign-pattern"}


# --- 3. provisional instead of confirmed MND never lowers the highest severity ------------------


@settings(PROPERTY)
@given(record=records(), instead=st.sampled_from(("provisional", "differential", "unconfirmed")),
       assume_presentation=st.booleans())
def test_provisional_instead_of_confirmed_mnd_never_lowers_the_highest_severity(
        record: Record, instead: str, assume_presentation: bool, rules: Rules) -> None:
    confirmed = assess(record.with_items(Item("als")), rules, assume_presentation)
    doubted = assess(record.with_items(Item("als", verification=instead)), rules,
                     assume_presentation)
    event(f"{confirmed.highest_severity} -> {doubted.highest_severity}")
    assert RANK[doubted.highest_severity] >= RANK[confirmed.highest_severity], record


# --- 4. adding a red-flag sign never lowers the highest severity --------------------------------


@settings(PROPERTY)
@given(record=records(), sign=st.sampled_from(sorted(SIGNS)), observation=st.booleans(),
       assume_presentation=st.booleans())
def test_adding_a_red_flag_sign_never_lowers_the_highest_severity(
        record: Record, sign: str, observation: bool, assume_presentation: bool,
        rules: Rules) -> None:
    before = assess(record, rules, assume_presentation)
    after = assess(record.with_items(Item(sign, observation=observation)), rules,
                   assume_presentation)
    event(f"{before.highest_severity} -> {after.highest_severity}")
    assert RANK[after.highest_severity] >= RANK[before.highest_severity], record


# --- and the v3 principle for the MND rules: doubt never lowers, text never establishes ---------


@settings(PROPERTY)
@given(record=records(), sign=st.sampled_from(sorted(SIGNS)), assume_presentation=st.booleans())
def test_an_unclear_sign_never_lowers_a_severity_nor_adds_the_benign_card(
        record: Record, sign: str, assume_presentation: bool, rules: Rules) -> None:
    before = assess(record, rules, assume_presentation)
    after = assess(record.with_items(Item(sign, observation=True, value=UNCLEAR)), rules,
                   assume_presentation)
    assert RANK[after.highest_severity] >= RANK[before.highest_severity], record
    assert "mnd.benign-pattern" not in rule_ids(after), record
    severities = {f.rule_id: RANK[f.severity] for f in after.findings}
    for finding in before.findings:
        assert finding.rule_id == "mnd.benign-pattern" or \
            severities.get(finding.rule_id, 0) >= RANK[finding.severity], (record, finding.rule_id)


@settings(PROPERTY)
@given(record=records(), clinical=st.sampled_from(("active", "inactive")),
       assume_presentation=st.booleans())
def test_text_only_als_never_establishes_a_diagnosis(
        record: Record, clinical: str, assume_presentation: bool, rules: Rules) -> None:
    record = Record(tuple(i for i in record.items if i.name != "als"), record.labs)
    assessment = assess(record.with_items(Item("als", text_only=True, clinical=clinical)),
                        rules, assume_presentation)
    assert "mnd.established-diagnosis" not in rule_ids(assessment)
    assert "mnd.benign-pattern" not in rule_ids(assessment)


# --- the closed-world fields other parts of the record fill: partial and conflicting ------------

NORMAL = (("calcium", 94), ("magnesium", 20), ("potassium", 42))


def _assess_record(rules: Rules, record: Record, *, unreadable: bool = False,
                   conflicting: tuple[str, ...] = (),
                   monkeypatch: pytest.MonkeyPatch | None = None) -> Assessment:
    source = {"resourceType": "Bundle", "type": "collection", "timestamp": AS_OF,
              "entry": [{"resource": r} for r in record.resources()]}
    [patient] = ingest(source, rules.ruleset).patients
    if unreadable:
        patient = dataclasses.replace(patient, unreadable=[InputError("Observation/x: invalid")])
    if conflicting and monkeypatch is not None:
        original = Normalizer.run

        def run(self: Normalizer, *args: Any, **kwargs: Any) -> NormalizedPatient:
            result = original(self, *args, **kwargs)
            result.context = result.context.model_copy(update={"conflicting": conflicting})
            return result

        monkeypatch.setattr(Normalizer, "run", run)
    outcome = Evaluator(rules.ruleset).assess(patient, AS_OF)
    assert isinstance(outcome, Assessment)
    return outcome


def test_a_partial_assessment_blocks_the_benign_card_and_says_why(rules: Rules) -> None:
    record = Record((Item("fasciculation"),), NORMAL)
    assert rule_ids(_assess_record(rules, record)) == {"mnd.benign-pattern"}
    partial = _assess_record(rules, record, unreadable=True)
    assert rule_ids(partial) == {"mnd.not-benign-pattern"}
    [card] = partial.findings
    assert "unreadable" in card.summary


@pytest.mark.parametrize(("conflicting", "blocked"), [
    (("potassium",), True), (("magnesium",), True), (("calcium-total",), True),
    (("calcium-ionized",), True), (("sodium",), False)])
def test_conflicting_ca_mg_or_k_results_block_the_benign_card(
        rules: Rules, monkeypatch: pytest.MonkeyPatch, conflicting: tuple[str, ...],
        blocked: bool) -> None:
    record = Record((Item("fasciculation"),), NORMAL)
    assessment = _assess_record(rules, record, conflicting=conflicting,
                                monkeypatch=monkeypatch)
    expected = {"mnd.not-benign-pattern"} if blocked else {"mnd.benign-pattern"}
    assert rule_ids(assessment) == expected
    if blocked:
        assert "conflicting" in assessment.findings[0].summary


# --- wording RULES.md v3 fixes ----------------------------------------------------------------


def _finding(assessment: Assessment, rule_id: str) -> Any:
    [finding] = [f for f in assessment.findings if f.rule_id == rule_id]
    return finding


def test_red_flags_name_the_recorded_presentation_never_twitching_for_a_cramp(
        rules: Rules) -> None:
    cramp = Record((Item("cramp"), Item("als", verification="provisional"), Item("weakness")),
                   NORMAL)
    card = _finding(assess(cramp, rules), "mnd.red-flags")
    assert card.severity == "critical"
    assert "cramp" in card.summary.lower()
    assert "twitch" not in (card.summary + card.detail + " ".join(card.recommendations)).lower()


def test_red_flags_card_names_the_myelopathy_and_the_signs_a_condition_explains(
        rules: Rules) -> None:
    record = Record((Item("fasciculation"), Item("atrophy"), Item("weakness"),
                     Item("hyperreflexia", observation=True), Item("stroke"),
                     Item("cervical-myelopathy")), NORMAL)
    card = _finding(assess(record, rules), "mnd.red-flags")
    assert card.severity == "warning"  # wasting alone counts; capped either way
    assert "main ALS mimic" in card.detail
    assert "Not counted here, because a recorded condition explains them" in card.detail
    assert "Hyperreflexia" in card.detail.split("Not counted here")[1]


def test_ms_card_with_fasciculation_says_ms_does_not_explain_it(rules: Rules) -> None:
    record = Record((Item("fasciculation"), Item("multiple-sclerosis"), Item("weakness")),
                    NORMAL)
    card = _finding(assess(record, rules), "differential.multiple-sclerosis")
    text = card.summary + card.detail
    assert "MS does not explain" in card.detail
    assert "examine for wasting" in card.detail
    assert "may be spasticity" not in text
    assert "Muscle weakness" in card.detail  # the sign it explains is listed


def test_not_benign_card_with_a_raised_ck_asks_to_repeat_it_after_7_days(rules: Rules) -> None:
    record = Record((Item("fasciculation"),), (*NORMAL, ("creatine-kinase", 900)))
    card = _finding(assess(record, rules), "mnd.not-benign-pattern")
    assert "repeat CK after 7 days" in card.detail.replace("\n", " ")
    assert "900 U/L" in card.detail
    assert card.summary.startswith("Fasciculation, not the benign pattern: CK above its limit")


def test_benign_card_names_its_values_and_keeps_the_safety_net(rules: Rules) -> None:
    card = _finding(assess(Record((Item("fasciculation"),), NORMAL), rules),
                    "mnd.benign-pattern")
    assert "Ca 9.4 mg/dL, Mg 2.0 mg/dL, K 4.2 mmol/L" in card.summary
    net = "Review if weakness, wasting, or a change in swallowing or speech appears."
    assert net in card.recommendations
    assert net in card.detail.replace("\n", " ")


def test_established_diagnosis_says_no_new_alarm_only_without_signs(rules: Rules) -> None:
    quiet = _finding(assess(Record((Item("fasciculation"), Item("als")), NORMAL), rules),
                     "mnd.established-diagnosis")
    assert "no new alarm" in quiet.summary
    with_emg = _finding(assess(Record((Item("fasciculation"), Item("als"), Item("emg")),
                                      NORMAL), rules), "mnd.established-diagnosis")
    assert "no new alarm" not in (with_emg.summary + with_emg.detail)


@pytest.mark.parametrize("presentation", ["fasciculation", "cramp"])
@pytest.mark.parametrize("diagnosis", ["als-provisional", "multiple-sclerosis", "stroke"])
def test_summaries_fit_with_every_sign_at_once(presentation: str, diagnosis: str,
                                                rules: Rules) -> None:
    # strict summaries (autouse): a card over 140 characters raises
    items = [Item(presentation), *(Item(name) for name in SIGNS),
             *(Item(name, observation=True, value=UNCLEAR) for name in SIGNS),
             Item("fasciculation", observation=True, tongue=True),
             Item("als", verification="provisional") if diagnosis == "als-provisional"
             else Item(diagnosis), Item("cervical-myelopathy")]
    assessment = assess(Record(tuple(items), (*NORMAL, ("creatine-kinase", 900))), rules)
    assert "mnd.red-flags" in rule_ids(assessment)
