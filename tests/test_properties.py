"""Property tests (hypothesis) for the safety invariants of RULES.md.

The strategies generate FHIR R4 resources (Patient, Condition, Observation, MedicationRequest),
never facts, so that parsing, terminology, unit conversion, status and look-back handling run
inside every property. Codes and displays are exactly those of rules/valuesets/codes.yaml.

Settings: derandomize=True (the same examples on every run, for CI) and no example database.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fasciculation_cds import evaluate
from fasciculation_cds.assessment import Assessment, dumps_assessments
from fasciculation_cds.evaluate import evaluator_for
from fasciculation_cds.findings import strict_summaries
from fasciculation_cds.ruleset import RuleSet

Resource = dict[str, Any]

AS_OF = "2026-06-01T12:00:00Z"
AS_OF_TIME = datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
BASE = "http://example.org/fhir"

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"

RANK = {None: 0, "info": 1, "warning": 2, "critical": 3}

PROPERTY = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

@pytest.fixture(autouse=True)
def _summaries_must_fit() -> Iterator[None]:
    """A filled summary over 140 characters fails the test instead of falling back."""
    with strict_summaries():
        yield


# --- codes (system, code, display), as in rules/valuesets/codes.yaml ---------------------------

Coding = tuple[str, str, str]

PRESENTATION: Mapping[str, Coding] = {
    "fasciculation": (ICD10CM, "R25.3", "Fasciculation"),
    "cramp": (SNOMED, "55300003", "Cramp (finding)"),
    "spasm": (ICD10CM, "M62.838", "Other muscle spasm"),
}
RED_FLAG_SIGNS: Mapping[str, Coding] = {
    "weakness": (ICD10CM, "M62.81", "Muscle weakness (generalized)"),  # LMN
    "atrophy": (ICD10CM, "M62.50",
                "Muscle wasting and atrophy, not elsewhere classified, unspecified site"),  # LMN
    "dysphagia": (ICD10CM, "R13.10", "Dysphagia, unspecified"),  # bulbar
    "reflex": (ICD10CM, "R29.2", "Abnormal reflex"),  # UMN
}
ALS: Coding = (ICD10CM, "G12.21", "Amyotrophic lateral sclerosis")
# Other explanations for the movements (RULES.md v2 "What blocks mnd.benign-pattern").
ALTERNATIVES: Mapping[str, Coding] = {
    "multiple-sclerosis": (ICD10CM, "G35", "Multiple sclerosis"),
    "lupus": (ICD10CM, "M32.9", "Systemic lupus erythematosus, unspecified"),
    "tic-disorder": (ICD10CM, "F95.9", "Tic disorder, unspecified"),
    "hypothyroidism": (SNOMED, "40930008", "Hypothyroidism"),
    "alcohol-withdrawal": (SNOMED, "191480000", "Alcohol withdrawal syndrome (disorder)"),
    "abnormal-emg": (ICD10CM, "R94.131", "Abnormal electromyogram [EMG]"),
}
CONDITION_CODINGS: tuple[Coding, ...] = (
    *PRESENTATION.values(), *RED_FLAG_SIGNS.values(), ALS, *ALTERNATIVES.values())

MEDICATIONS: Mapping[str, Coding] = {
    "omeprazole": (RXNORM, "7646", "omeprazole"),  # PPI: Mg-lowering
    "pantoprazole": (RXNORM, "40790", "pantoprazole"),
    "furosemide": (RXNORM, "4603", "furosemide"),  # loop: Mg/K/Ca-lowering
    "hydrochlorothiazide": (RXNORM, "5487", "hydrochlorothiazide"),  # thiazide: Mg/K-lowering
    "albuterol": (RXNORM, "435", "albuterol"),  # beta-2 agonist: trigger, K-lowering
    "prednisone": (RXNORM, "8640", "prednisone"),  # K-lowering
    "haloperidol": (RXNORM, "5093", "Haloperidol"),  # dopamine antagonist
    "metoclopramide": (RXNORM, "6915", "metoclopramide"),
    "amitriptyline": (RXNORM, "704", "amitriptyline"),  # trigger
    "diphenhydramine": (RXNORM, "1248354",
                        "diphenhydramine hydrochloride 1.67 MG/ML Oral Solution"),  # trigger (SCD)
    "gabapentin": (RXNORM, "25480", "gabapentin"),
    "atorvastatin": (RXNORM, "617312", "atorvastatin 10 MG Oral Tablet"),  # statin
    "carbamazepine": (RXNORM, "2002", "carbamazepine"),  # Na-lowering
}


@dataclass(frozen=True)
class Lab:
    """One way a lab is sent: LOINC code, display and unit, and its value ranges in that unit."""

    analyte: str
    loinc: str
    display: str
    unit: str
    low: str  # plausible range
    high: str
    places: int  # decimals the value is written with
    normal_low: str
    normal_high: str
    edges: tuple[str, ...] = ()  # thresholds in this unit (exactly representable ones)


LABS: Mapping[str, Lab] = {
    "magnesium-mmol": Lab("magnesium", "2601-3", "Magnesium [Moles/volume] in Serum or Plasma",
                          "mmol/L", "0.25", "2.40", 2, "0.72", "1.05",
                          ("0.50", "0.70", "1.10", "2.00")),
    "magnesium-mass": Lab("magnesium", "19123-9", "Magnesium [Mass/volume] in Serum or Plasma",
                          "mg/dL", "0.60", "5.50", 2, "1.80", "2.60",
                          ("1.20", "1.70", "4.86", "4.87")),
    "potassium": Lab("potassium", "2823-3", "Potassium [Moles/volume] in Serum or Plasma",
                     "mmol/L", "2.0", "7.5", 1, "3.5", "5.0", ("2.5", "3.5", "5.5", "6.5")),
    "sodium": Lab("sodium", "2951-2", "Sodium [Moles/volume] in Serum or Plasma",
                  "mmol/L", "115", "168", 0, "135", "145", ("125", "135", "145", "155", "160")),
    "calcium-total": Lab("calcium-total", "17861-6", "Calcium [Mass/volume] in Serum or Plasma",
                         "mg/dL", "6.0", "15.0", 1, "9.0", "10.4", ("7.5", "8.5", "10.5", "14.0")),
    "albumin": Lab("albumin", "1751-7", "Albumin [Mass/volume] in Serum or Plasma",
                   "g/dL", "2.0", "5.5", 1, "3.5", "4.5", ("4.0",)),
    "calcium-ionized": Lab("calcium-ionized", "1994-3", "Calcium.ionized [Moles/volume] in Blood",
                           "mmol/L", "0.70", "1.80", 2, "1.12", "1.32",
                           ("0.90", "1.12", "1.32", "1.60")),
    "phosphate": Lab("phosphate", "2777-1", "Phosphate [Mass/volume] in Serum or Plasma",
                     "mg/dL", "0.5", "5.5", 1, "2.5", "4.5", ("1.0", "2.5")),
    "vitamin-d": Lab("vitamin-d-25oh", "62292-8",
                     "25-Hydroxyvitamin D2+25-Hydroxyvitamin D3 [Mass/volume] in Serum or Plasma",
                     "ng/mL", "4", "90", 1, "20", "60", ("12", "20")),
    "vitamin-b12": Lab("vitamin-b12", "2132-9",
                       "Cobalamin (Vitamin B12) [Mass/volume] in Serum or Plasma",
                       "pg/mL", "100", "1200", 0, "300", "900", ("200",)),
    "tsh": Lab("tsh", "3016-3", "Thyrotropin [Units/volume] in Serum or Plasma",
               "m[IU]/L", "0.01", "25.00", 2, "0.40", "4.00", ("0.10", "10.00")),
    "glucose": Lab("glucose", "2345-7", "Glucose [Mass/volume] in Serum or Plasma",
                   "mg/dL", "40", "250", 0, "75", "110", ("54", "70")),
    "creatine-kinase": Lab("creatine-kinase", "2157-6",
                           "Creatine kinase [Enzymatic activity/volume] in Serum or Plasma",
                           "U/L", "30", "2500", 0, "40", "180", ("200", "2000")),
    "egfr": Lab("egfr", "33914-3", "Glomerular filtration rate/1.73 sq M.predicted "
                "[Volume Rate/Area] in Serum or Plasma by Creatinine-based formula (MDRD)",
                "mL/min/{1.73_m2}", "5", "120", 0, "60", "110", ("30",)),
}
# Analytes as the generator draws them: magnesium comes in either unit.
ANALYTES: Mapping[str, tuple[str, ...]] = {
    "magnesium": ("magnesium-mmol", "magnesium-mass"),
    "potassium": ("potassium",),
    "sodium": ("sodium",),
    "calcium-total": ("calcium-total",),
    "albumin": ("albumin",),
    "calcium-ionized": ("calcium-ionized",),
    "phosphate": ("phosphate",),
    "vitamin-d": ("vitamin-d",),
    "vitamin-b12": ("vitamin-b12",),
    "tsh": ("tsh",),
    "glucose": ("glucose",),
    "creatine-kinase": ("creatine-kinase",),
    "egfr": ("egfr",),
}

# Every LOINC code a test sends for an analyte (to drop the background's results of it).
ANALYTE_LOINCS: Mapping[str, frozenset[str]] = {
    "magnesium": frozenset({"19123-9", "2601-3"}),
    "potassium": frozenset({"2823-3", "22760-3"}),
    "sodium": frozenset({"2951-2"}),
    "calcium-total": frozenset({"17861-6", "2000-8"}),
    "albumin": frozenset({"1751-7"}),
    "calcium-ionized": frozenset({"1994-3", "17863-2"}),
    "phosphate": frozenset({"2777-1", "14879-1"}),
    "vitamin-d": frozenset({"62292-8", "14635-7"}),
    "vitamin-b12": frozenset({"2132-9", "14685-2"}),
    "tsh": frozenset({"3016-3"}),
    "glucose": frozenset({"2345-7", "14749-6"}),
    "creatine-kinase": frozenset({"2157-6"}),
    "egfr": frozenset({"33914-3"}),
}

# --- resource builders -------------------------------------------------------------------------


def fhir_instant(moment: datetime, utc_offset_minutes: int = 0) -> str:
    """An instant as FHIR dateTime, written in UTC ("Z") or with the given offset."""
    zone = timezone(timedelta(minutes=utc_offset_minutes))
    return moment.astimezone(zone).isoformat(timespec="seconds").replace("+00:00", "Z")


def codeable(coding: Coding) -> dict[str, Any]:
    system, code, display = coding
    return {"coding": [{"system": system, "code": code, "display": display}]}


def json_number(value: Decimal) -> float:
    """The JSON number for a decimal (repr of the float gives back the same decimal)."""
    return float(str(value))


def condition(rid: str, patient: str, coding: Coding, *, clinical: str = "active",
              verification: str = "confirmed", onset: datetime | None = None) -> Resource:
    resource: Resource = {"resourceType": "Condition", "id": rid}
    if verification != "entered-in-error":  # FHIR con-5: no clinicalStatus when entered-in-error
        resource["clinicalStatus"] = {"coding": [{"system": CLINICAL, "code": clinical}]}
    resource["verificationStatus"] = {"coding": [{"system": VERIFICATION, "code": verification}]}
    resource["code"] = codeable(coding)
    resource["subject"] = {"reference": f"Patient/{patient}"}
    if onset is not None:
        resource["onsetDateTime"] = fhir_instant(onset)
    return resource


def observation(rid: str, patient: str, lab: Lab, value: Decimal, *, status: str = "final",
                effective: datetime, unit: str | None = None, loinc: str | None = None,
                display: str | None = None, utc_offset_minutes: int = 0) -> Resource:
    unit = unit or lab.unit
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": status,
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "laboratory", "display": "Laboratory"}]}],
        "code": {"coding": [{"system": LOINC, "code": loinc or lab.loinc,
                             "display": display or lab.display}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": fhir_instant(effective, utc_offset_minutes),
        "valueQuantity": {"value": json_number(value), "unit": unit, "system": UCUM,
                          "code": unit},
    }


def medication_request(rid: str, patient: str, coding: Coding, *, status: str,
                       authored: datetime) -> Resource:
    return {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": codeable(coding),
        "subject": {"reference": f"Patient/{patient}"},
        "authoredOn": fhir_instant(authored),
    }


def bundle(resources: Sequence[Resource]) -> Resource:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": AS_OF,
        "entry": [{"fullUrl": f"{BASE}/{r['resourceType']}/{r['id']}", "resource": r}
                  for r in resources],
    }


# --- strategies --------------------------------------------------------------------------------


def decimals(low: str, high: str, places: int) -> st.SearchStrategy[Decimal]:
    """Decimals in [low, high] written with exactly `places` decimals."""
    scale = 10**places
    return st.integers(int(Decimal(low) * scale), int(Decimal(high) * scale)).map(
        lambda n: Decimal(n).scaleb(-places))


def lab_values(lab: Lab, *, mostly_normal: bool = False) -> st.SearchStrategy[Decimal]:
    """Anywhere in the plausible range, often normal, sometimes exactly at a threshold."""
    normal = decimals(lab.normal_low, lab.normal_high, lab.places)
    options = [normal, decimals(lab.low, lab.high, lab.places)]
    if lab.edges:
        options.append(st.sampled_from([Decimal(e) for e in lab.edges]))
    if mostly_normal:
        options += [normal] * 4
    return st.one_of(options)


MINUTES_PER_DAY = 24 * 60
# 0-400 days before as_of, more often inside the 90-day look-back.
ages_in_minutes = st.one_of(st.integers(0, 89 * MINUTES_PER_DAY),
                            st.integers(0, 400 * MINUTES_PER_DAY))
recent_ages_in_minutes = st.integers(0, 89 * MINUTES_PER_DAY)
lab_statuses = st.sampled_from(["final", "final", "final", "amended", "preliminary",
                                "entered-in-error"])
# Labs write local time with an offset as often as UTC (the same instant either way).
utc_offsets = st.sampled_from([0, 0, 60, 120, -300, 330, 600, -600])


def before_as_of(minutes: int) -> datetime:
    return AS_OF_TIME - timedelta(minutes=minutes)


class Ids:
    """Unique resource ids for one patient, in an order unrelated to the order of creation."""

    def __init__(self, patient: str, numbers: list[int]) -> None:
        self._patient = patient
        self._numbers = iter(numbers)

    def __call__(self, kind: str) -> str:
        return f"{self._patient}-{kind}-{next(self._numbers)}"


@st.composite
def patients(draw: st.DrawFn, patient: str = "pat-1", *,
             lean_benign: bool = False) -> list[Resource]:
    """One random patient: a Patient, then Conditions, Observations and MedicationRequests.

    With `lean_benign`, the patient always has an active fasciculation and at least one recent
    final calcium, magnesium and potassium, values are mostly normal and signs rarer (all still
    random), so that the benign pattern and its near misses come up often.
    """
    ids = Ids(patient, draw(st.permutations(range(100))))
    birth = draw(st.dates(date(1935, 1, 1), date(2008, 12, 31)))
    resources: list[Resource] = [{
        "resourceType": "Patient", "id": patient,
        "gender": draw(st.sampled_from(["female", "male", "other", "unknown"])),
        "birthDate": birth.isoformat(),
    }]
    onsets = st.integers(0, 800 * MINUTES_PER_DAY).map(before_as_of)

    # presentation
    for name, coding in PRESENTATION.items():
        forced = lean_benign and name == "fasciculation"
        if forced or draw(st.booleans()):
            clinical = "active" if forced else draw(
                st.sampled_from(["active", "active", "recurrence", "resolved", "inactive"]))
            verification = "confirmed" if forced else draw(
                st.sampled_from(["confirmed", "confirmed", "provisional", "refuted"]))
            resources.append(condition(ids("cond"), patient, coding, clinical=clinical,
                                       verification=verification, onset=draw(onsets)))
    rarely = st.integers(0, 4 if lean_benign else 1).map(lambda n: n == 1)
    # MND signs (LMN, bulbar, UMN)
    for coding in RED_FLAG_SIGNS.values():
        if draw(rarely):
            resources.append(condition(
                ids("cond"), patient, coding,
                clinical=draw(st.sampled_from(["active", "resolved"])),
                verification=draw(st.sampled_from(["confirmed", "refuted"])),
                onset=draw(onsets)))
    # ALS / MND, established or suspected
    if draw(rarely) and draw(st.booleans()):
        resources.append(condition(
            ids("cond"), patient, ALS,
            clinical=draw(st.sampled_from(["active", "resolved"])),
            verification=draw(st.sampled_from(["confirmed", "refuted", "provisional",
                                               "differential", "unconfirmed"])),
            onset=draw(onsets)))
    # other explanations (metabolic, differential, withdrawal, abnormal EMG)
    for coding in ALTERNATIVES.values():
        if draw(rarely) and draw(st.booleans()):
            resources.append(condition(
                ids("cond"), patient, coding,
                clinical=draw(st.sampled_from(["active", "resolved"])),
                verification=draw(st.sampled_from(["confirmed", "refuted"])),
                onset=before_as_of(draw(st.integers(0, 60 * MINUTES_PER_DAY)))))
    # labs
    anchored = {"magnesium", "potassium", "calcium-total"} if lean_benign else set()
    for analyte, variants in ANALYTES.items():
        count = draw(st.integers(0, 1 if lean_benign else 2))
        for index in range(count + (1 if analyte in anchored else 0)):
            lab = LABS[draw(st.sampled_from(variants))]
            anchor = analyte in anchored and index == 0
            resources.append(observation(
                ids("obs"), patient, lab, draw(lab_values(lab, mostly_normal=lean_benign)),
                status="final" if anchor else draw(lab_statuses),
                effective=before_as_of(draw(recent_ages_in_minutes if anchor
                                            else ages_in_minutes)),
                utc_offset_minutes=draw(utc_offsets)))
    # medications
    for name in draw(st.lists(st.sampled_from(sorted(MEDICATIONS)), max_size=3, unique=True)):
        resources.append(medication_request(
            ids("med"), patient, MEDICATIONS[name],
            status=draw(st.sampled_from(["active", "active", "stopped"])),
            authored=before_as_of(draw(st.integers(1, 400 * MINUTES_PER_DAY)))))
    return resources


# --- helpers -----------------------------------------------------------------------------------


class Rules:
    """The session rule set with a short repr: hypothesis prints every argument of a failing
    example, and the RuleSet's repr is so long that it warns (an error under -W error)."""

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset

    def __repr__(self) -> str:
        return f"Rules({self.ruleset.version[:23]}...)"


@pytest.fixture(scope="session")
def rules(ruleset: RuleSet) -> Rules:
    return Rules(ruleset)


def run(source: Any, rules: Rules, **options: Any) -> list[Assessment]:
    return evaluate(source, as_of=AS_OF, rules=rules.ruleset, **options)


def run_one(resources: Sequence[Resource], rules: Rules, **options: Any) -> Assessment:
    assessments = run(bundle(resources), rules, **options)
    assert len(assessments) == 1
    return assessments[0]


def severity_of(assessment: Assessment, rule_id: str) -> str | None:
    return next((f.severity for f in assessment.findings if f.rule_id == rule_id), None)


def rule_severities(assessment: Assessment) -> list[tuple[str, str]]:
    return [(f.rule_id, f.severity) for f in assessment.findings]


def without_labs(resources: Sequence[Resource], analytes: Sequence[str]) -> list[Resource]:
    """The record without any Observation of these analytes (in any of their LOINC codes)."""
    codes = set().union(*(ANALYTE_LOINCS[a] for a in analytes))
    return [r for r in resources
            if r["resourceType"] != "Observation"
            or not codes & {c["code"] for c in r["code"]["coding"]}]


def presenting(resources: Sequence[Resource], coding: Coding,
               rid: str = "pat-1-presents") -> list[Resource]:
    """The record plus an active, confirmed presentation Condition."""
    return [*resources, condition(rid, "pat-1", coding, onset=AS_OF_TIME - timedelta(days=20))]


any_patient = st.one_of(patients(), patients(lean_benign=True))


# --- 0. the builders reach the rules (so that no property below can pass vacuously) -------------


def test_builders_reach_the_rules(rules: Rules) -> None:
    recent = AS_OF_TIME - timedelta(days=3)
    benign = presenting([{"resourceType": "Patient", "id": "pat-1"}],
                        PRESENTATION["fasciculation"])
    benign += [observation(f"pat-1-obs-{key}", "pat-1", LABS[key], Decimal(value),
                           effective=recent)
               for key, value in (("calcium-total", "9.4"), ("albumin", "4.3"),
                                  ("magnesium-mass", "2.0"), ("potassium", "4.2"))]
    assert ("mnd.benign-pattern", "info") in rule_severities(run_one(benign, rules))
    low = [*benign,
           observation("pat-1-obs-mg", "pat-1", LABS["magnesium-mmol"], Decimal("0.45"),
                       effective=AS_OF_TIME - timedelta(days=1)),
           condition("pat-1-sign", "pat-1", RED_FLAG_SIGNS["weakness"], onset=recent),
           medication_request("pat-1-med", "pat-1", MEDICATIONS["omeprazole"],
                              status="active", authored=recent)]
    assert set(rule_severities(run_one(low, rules))) >= {
        ("electrolyte.hypomagnesemia", "critical"),
        ("medication.electrolyte-depleting", "warning"),
        ("mnd.red-flags", "warning"),
    }
    ruled = {rule.id for rule in rules.ruleset.active_rules()}
    assert {rule_id for rule_id, _, _ in (*MONOTONE_CASES, *MONOTONE_UP_CASES)} <= ruled
    high = [*benign, observation("pat-1-obs-k-high", "pat-1", LABS["potassium"], Decimal("6.5"),
                                 effective=AS_OF_TIME - timedelta(days=1))]
    found = set(rule_severities(run_one(high, rules)))
    assert ("electrolyte.hyperkalemia", "critical") in found
    assert "mnd.benign-pattern" not in {rule_id for rule_id, _ in found}


# --- 1. benign pattern never with anything that blocks it (RULES.md v2, v3) ---------------------

# v3 adds context.withdrawal (any severity) and every other mnd.* card (mnd.not-benign-pattern
# is given exactly when something without a card of its own blocks the benign card)
BLOCKING_PREFIXES = ("electrolyte.hypo", "electrolyte.hyper", "metabolic.", "differential.",
                     "context.withdrawal", "mnd.red-flags", "mnd.established-diagnosis",
                     "mnd.not-benign-pattern")


def _records_mnd(resources: Sequence[Resource]) -> bool:
    """Any ALS / MND Condition not refuted or entered in error, whatever its status."""
    return any(
        r["resourceType"] == "Condition" and r["code"]["coding"][0]["code"] == ALS[1]
        and r["verificationStatus"]["coding"][0]["code"] not in ("refuted", "entered-in-error")
        for r in resources)


@settings(PROPERTY, max_examples=100)
@given(data=st.data(), assume_presentation=st.booleans())
def test_benign_pattern_never_with_anything_that_blocks_it(
    data: st.DataObject, assume_presentation: bool, rules: Rules
) -> None:
    resources = data.draw(st.one_of(patients(lean_benign=True), patients()), label="resources")
    assessment = run_one(resources, rules, assume_presentation=assume_presentation)
    found = rule_severities(assessment)
    rule_ids = {rule_id for rule_id, _ in found}
    blockers = sorted(r for r in rule_ids if r.startswith(BLOCKING_PREFIXES))
    event(f"blocking findings: {'some' if blockers else 'none'}")
    if "mnd.benign-pattern" not in rule_ids:
        event("benign pattern: absent")
        return
    event("benign pattern: present")
    assert "mnd.red-flags" not in rule_ids, found
    assert not [f for f in found if f[1] in ("warning", "critical")], found
    assert not blockers, found
    assert not _records_mnd(resources), found


# --- 2. adding a red-flag sign never lowers the highest severity --------------------------------


@PROPERTY
@given(data=st.data(), sign=st.sampled_from(sorted(RED_FLAG_SIGNS)),
       onset_days=st.integers(0, 800), assume_presentation=st.booleans())
def test_adding_a_red_flag_sign_never_lowers_the_highest_severity(
    data: st.DataObject, sign: str, onset_days: int, assume_presentation: bool, rules: Rules
) -> None:
    resources = data.draw(st.one_of(patients(lean_benign=True), patients()), label="resources")
    sign_condition = condition("pat-1-added-sign", "pat-1", RED_FLAG_SIGNS[sign],
                               onset=AS_OF_TIME - timedelta(days=onset_days))
    before = run_one(resources, rules, assume_presentation=assume_presentation)
    after = run_one([*resources, sign_condition], rules,
                    assume_presentation=assume_presentation)
    event(f"highest severity: {before.highest_severity} -> {after.highest_severity}")
    assert RANK[after.highest_severity] >= RANK[before.highest_severity], (
        rule_severities(before), rule_severities(after))


# --- 3. monotone severity: hypo rules downward, hyper rules (and dehydration) upward -------------

# (rule id, LABS keys the probe result may be sent as, analytes dropped from the background)
MONOTONE_CASES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("electrolyte.hypomagnesemia", ("magnesium-mmol", "magnesium-mass"), ("magnesium",)),
    ("electrolyte.hypokalemia", ("potassium",), ("potassium",)),
    ("electrolyte.hyponatremia", ("sodium",), ("sodium",)),
    ("electrolyte.hypophosphatemia", ("phosphate",), ("phosphate",)),
    ("electrolyte.hypocalcemia", ("calcium-ionized",), ("calcium-ionized",)),
    ("electrolyte.hypocalcemia", ("calcium-total",), ("calcium-total", "calcium-ionized")),
    ("electrolyte.vitamin-d-deficiency", ("vitamin-d",), ("vitamin-d",)),
    ("metabolic.hypoglycemia", ("glucose",), ("glucose",)),
)
# The same, for rules where a higher value must never give a lower severity.
MONOTONE_UP_CASES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("electrolyte.hyperkalemia", ("potassium",), ("potassium",)),
    ("electrolyte.hypermagnesemia", ("magnesium-mmol", "magnesium-mass"), ("magnesium",)),
    ("electrolyte.hypercalcemia", ("calcium-ionized",), ("calcium-ionized",)),
    ("electrolyte.hypercalcemia", ("calcium-total",), ("calcium-total", "calcium-ionized")),
    ("electrolyte.dehydration", ("sodium",), ("sodium",)),
)


def _severities_at_two_values(
    rule_id: str, lab_keys: tuple[str, ...], dropped: tuple[str, ...], data: st.DataObject,
    rules: Rules,
) -> tuple[Decimal, Decimal, str | None, str | None, str]:
    """Two drawn values of one lab on a presenting background: (lower, higher, the rule's
    severity at each, the unit)."""
    background = without_labs(data.draw(patients(), label="background"), dropped)
    background = presenting(background, data.draw(st.sampled_from(list(PRESENTATION.values()))))
    lab = LABS[data.draw(st.sampled_from(lab_keys), label="lab")]
    values = st.one_of(decimals(lab.low, lab.high, lab.places),
                       st.sampled_from([Decimal(e) for e in lab.edges]))
    first = data.draw(values, label="first value")
    second = data.draw(values, label="second value")
    effective = before_as_of(data.draw(ages_in_minutes, label="age in minutes"))

    def severity(value: Decimal) -> str | None:
        probe = observation("pat-1-probe", "pat-1", lab, value, effective=effective)
        return severity_of(run_one([*background, probe], rules), rule_id)

    low, high = sorted((first, second))
    at_low, at_high = severity(low), severity(high)
    event(f"severity {at_low} at the lower, {at_high} at the higher value")
    return low, high, at_low, at_high, lab.unit


@pytest.mark.parametrize(("rule_id", "lab_keys", "dropped"), MONOTONE_CASES,
                         ids=[f"{c[0]}:{c[1][0]}" for c in MONOTONE_CASES])
@settings(PROPERTY, max_examples=20)
@given(data=st.data())
def test_lower_value_never_gives_lower_severity(
    rule_id: str, lab_keys: tuple[str, ...], dropped: tuple[str, ...], data: st.DataObject,
    rules: Rules,
) -> None:
    low, high, at_low, at_high, unit = _severities_at_two_values(
        rule_id, lab_keys, dropped, data, rules)
    assert RANK[at_low] >= RANK[at_high], (
        f"{rule_id}: {low} {unit} gives {at_low}, but {high} {unit} gives {at_high}")


@pytest.mark.parametrize(("rule_id", "lab_keys", "dropped"), MONOTONE_UP_CASES,
                         ids=[f"{c[0]}:{c[1][0]}" for c in MONOTONE_UP_CASES])
@settings(PROPERTY, max_examples=20)
@given(data=st.data())
def test_higher_value_never_gives_lower_severity(
    rule_id: str, lab_keys: tuple[str, ...], dropped: tuple[str, ...], data: st.DataObject,
    rules: Rules,
) -> None:
    low, high, at_low, at_high, unit = _severities_at_two_values(
        rule_id, lab_keys, dropped, data, rules)
    assert RANK[at_high] >= RANK[at_low], (
        f"{rule_id}: {high} {unit} gives {at_high}, but {low} {unit} gives {at_low}")


# --- 4. unit invariance ------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitCase:
    """A result drawn as a decimal in `unit`, sent in every form (LOINC, display, unit, factor)."""

    analyte: str
    rule_id: str  # the rule that reads this analyte (for the statistics only)
    low: str
    high: str
    places: int
    edges: tuple[str, ...]
    forms: tuple[tuple[str, str, str, str], ...]
    dropped: tuple[str, ...]
    companion: str | None = None  # a LABS key sent at the same time (total Ca for albumin)


_MG = "Magnesium [Moles/volume] in Serum or Plasma"
_CA = "Calcium [Moles/volume] in Serum or Plasma"
_ICA = "Calcium.ionized [Moles/volume] in Blood"
_PO4 = "Phosphate [Mass/volume] in Serum or Plasma"
_K = "Potassium [Moles/volume] in Serum or Plasma"
UNIT_CASES: tuple[UnitCase, ...] = (
    UnitCase(
        "magnesium", "electrolyte.hypomagnesemia", low="0.20", high="1.50", places=2,
        edges=("0.50", "0.70"),
        forms=(("2601-3", _MG, "mmol/L", "1"),
               ("19123-9", "Magnesium [Mass/volume] in Serum or Plasma", "mg/dL", "2.431"),
               ("2601-3", _MG, "mEq/L", "2"),
               ("2601-3", _MG, "mmol/l", "1")),  # a spelling variant is the same unit
        dropped=("magnesium",)),
    UnitCase(
        "calcium-total", "electrolyte.hypocalcemia", low="1.500", high="2.900", places=3,
        edges=("1.870", "2.120"),
        forms=(("2000-8", _CA, "mmol/L", "1"),
               ("17861-6", "Calcium [Mass/volume] in Serum or Plasma", "mg/dL", "4.008"),
               ("2000-8", _CA, "mEq/L", "2")),
        dropped=("calcium-total", "calcium-ionized")),
    UnitCase(
        "calcium-ionized", "electrolyte.hypocalcemia", low="0.700", high="1.450", places=3,
        edges=("0.900", "1.120"),
        forms=(("1994-3", _ICA, "mmol/L", "1"),
               ("17863-2", "Calcium.ionized [Mass/volume] in Serum or Plasma", "mg/dL",
                "4.008"),
               ("1994-3", _ICA, "mEq/L", "2")),
        dropped=("calcium-ionized",)),
    UnitCase(
        "phosphate", "electrolyte.hypophosphatemia", low="0.150", high="1.800", places=3,
        edges=("0.320", "0.807", "0.810"),
        forms=(("14879-1", "Phosphate [Moles/volume] in Serum or Plasma", "mmol/L", "1"),
               ("2777-1", _PO4, "mg/dL", "3.097"),
               ("2777-1", _PO4, "mg/dl", "3.097")),
        dropped=("phosphate",)),
    UnitCase(
        "potassium", "electrolyte.hypokalemia", low="2.0", high="6.0", places=1,
        edges=("2.5", "3.5"),
        forms=(("2823-3", _K, "mmol/L", "1"),
               ("2823-3", _K, "mEq/L", "1"),
               ("22760-3", "Potassium [Mass/volume] in Serum or Plasma", "mg/dL", "3.910")),
        dropped=("potassium",)),
    UnitCase(
        "vitamin-d", "electrolyte.vitamin-d-deficiency", low="4.0", high="90.0", places=1,
        edges=("12.0", "20.0"),
        forms=(("62292-8", LABS["vitamin-d"].display, "ng/mL", "1"),
               ("14635-7", "25-hydroxyvitamin D3 [Moles/volume] in Serum or Plasma", "nmol/L",
                "2.496")),
        dropped=("vitamin-d",)),
    UnitCase(
        "vitamin-b12", "neuropathy.b12-deficiency", low="100", high="1200", places=0,
        edges=("200",),
        forms=(("2132-9", LABS["vitamin-b12"].display, "pg/mL", "1"),
               ("14685-2", "Cobalamin (Vitamin B12) [Moles/volume] in Serum or Plasma",
                "pmol/L", "0.7378")),
        dropped=("vitamin-b12",)),
    UnitCase(
        # thresholds.md v3: glucose is defined in mg/dL; 2.998 mmol/L = 54.01 mg/dL is not < 54
        "glucose", "metabolic.hypoglycemia", low="1.500", high="8.000", places=3,
        edges=("2.997", "2.998", "3.885", "3.886"),
        forms=(("14749-6", "Glucose [Moles/volume] in Serum or Plasma", "mmol/L", "1"),
               ("2345-7", LABS["glucose"].display, "mg/dL", "18.016")),
        dropped=("glucose",)),
    UnitCase(
        "albumin", "electrolyte.hypocalcemia", low="2.0", high="5.5", places=1,
        edges=("4.0",),
        forms=(("1751-7", LABS["albumin"].display, "g/dL", "1"),
               ("1751-7", LABS["albumin"].display, "g/L", "10")),
        dropped=("albumin", "calcium-total", "calcium-ionized"), companion="calcium-total"),
)


@pytest.mark.parametrize("case", UNIT_CASES, ids=[c.analyte for c in UNIT_CASES])
@settings(PROPERTY, max_examples=20)
@given(data=st.data())
def test_same_quantity_in_another_unit_gives_the_same_findings(
    case: UnitCase, data: st.DataObject, rules: Rules
) -> None:
    background = without_labs(data.draw(patients(), label="background"), case.dropped)
    background = presenting(background, PRESENTATION["fasciculation"])
    value = data.draw(st.one_of(decimals(case.low, case.high, case.places),
                                st.sampled_from([Decimal(e) for e in case.edges])),
                      label=f"value in {case.forms[0][2]}")
    effective = before_as_of(data.draw(ages_in_minutes, label="age in minutes"))
    lab = LABS[ANALYTES[case.analyte][0]]
    if case.companion:
        companion = LABS[case.companion]
        background.append(observation(
            "pat-1-companion", "pat-1", companion,
            data.draw(lab_values(companion), label=f"{case.companion} value"),
            effective=effective))
    results = {}
    for loinc, display, unit, factor in case.forms:
        sent = value * Decimal(factor)  # exact: both are short decimals
        probe = observation("pat-1-probe", "pat-1", lab, sent, effective=effective, unit=unit,
                            loinc=loinc, display=display)
        assessment = run_one([*background, probe], rules)
        assert not [n for n in assessment.notices
                    if n.reference == "Observation/pat-1-probe"], assessment.notices
        results[f"{sent} {unit}"] = rule_severities(assessment)
    first = next(iter(results.values()))
    event(f"{case.rule_id}: {dict(first).get(case.rule_id)}")
    assert all(found == first for found in results.values()), results


# --- 5. shuffling Bundle entries, or splitting the Bundle into NDJSON, changes nothing ----------


@st.composite
def several_patients(draw: st.DrawFn) -> list[Resource]:
    first = draw(any_patient)
    if not draw(st.booleans()):
        return first
    return [*first, *draw(patients("pat-2", lean_benign=draw(st.booleans())))]


@PROPERTY
@given(data=st.data(), assume_presentation=st.booleans())
def test_entry_order_and_ndjson_split_change_nothing(
    data: st.DataObject, assume_presentation: bool, rules: Rules
) -> None:
    resources = data.draw(several_patients(), label="resources")
    shuffled = data.draw(st.permutations(resources), label="shuffled")
    as_bundle = dumps_assessments(run(bundle(resources), rules,
                                      assume_presentation=assume_presentation))
    as_shuffled_bundle = dumps_assessments(run(bundle(shuffled), rules,
                                               assume_presentation=assume_presentation))
    as_ndjson = dumps_assessments(run(copy.deepcopy(shuffled), rules,
                                      assume_presentation=assume_presentation))
    assert as_shuffled_bundle == as_bundle
    assert as_ndjson == as_bundle


# --- 6. an entered-in-error resource never changes any finding ----------------------------------


def _lab_for(resource: Resource) -> Lab:
    code = resource["code"]["coding"][0]["code"]
    return next(lab for lab in LABS.values() if lab.loinc == code)


@PROPERTY
@given(data=st.data(), assume_presentation=st.booleans())
def test_entered_in_error_copy_never_changes_a_finding(
    data: st.DataObject, assume_presentation: bool, rules: Rules
) -> None:
    resources = data.draw(any_patient, label="resources")
    candidates = [r for r in resources if r["resourceType"] in ("Observation", "Condition")]
    if not candidates:
        resources = presenting(resources, PRESENTATION["fasciculation"])
        candidates = resources[-1:]
    original = data.draw(st.sampled_from(candidates), label="copied resource")
    error = copy.deepcopy(original)
    error["id"] = "pat-1-entered-in-error"
    if error["resourceType"] == "Observation":
        lab = _lab_for(original)
        old = Decimal(str(original["valueQuantity"]["value"]))
        new = data.draw(lab_values(lab), label="erroneous value")
        if new == old:
            new += Decimal(1).scaleb(-lab.places)
        error["status"] = "entered-in-error"
        error["valueQuantity"]["value"] = json_number(new)
        if data.draw(st.booleans(), label="new effective time"):
            error["effectiveDateTime"] = fhir_instant(before_as_of(
                data.draw(ages_in_minutes, label="erroneous age")))
    else:
        coding = data.draw(st.sampled_from(CONDITION_CODINGS), label="erroneous code")
        error.pop("clinicalStatus", None)  # FHIR con-5
        error["verificationStatus"] = {"coding": [{"system": VERIFICATION,
                                                   "code": "entered-in-error"}]}
        error["code"] = codeable(coding)
    position = data.draw(st.integers(0, len(resources)), label="position")
    with_error = [*resources[:position], error, *resources[position:]]

    before = run_one(resources, rules, assume_presentation=assume_presentation)
    after = run_one(with_error, rules, assume_presentation=assume_presentation)
    event(f"copied a {error['resourceType']}")

    def key(assessment: Assessment) -> list[tuple[str, str, str]]:
        return [(f.rule_id, f.severity, f.summary) for f in assessment.findings]

    assert key(after) == key(before)
    assert [f.model_dump(mode="json") for f in after.findings] == \
        [f.model_dump(mode="json") for f in before.findings]


# --- 7. determinism ----------------------------------------------------------------------------


@PROPERTY
@given(data=st.data(), assume_presentation=st.booleans())
def test_same_input_gives_byte_identical_output(
    data: st.DataObject, assume_presentation: bool, rules: Rules
) -> None:
    first = data.draw(any_patient, label="patient")
    other = data.draw(patients("pat-2"), label="another patient")
    source = bundle(first)
    pristine = copy.deepcopy(source)
    once = dumps_assessments(run(source, rules, assume_presentation=assume_presentation))
    twice = dumps_assessments(run(source, rules, assume_presentation=assume_presentation))
    run(bundle(other), rules, assume_presentation=not assume_presentation)  # another patient
    thrice = dumps_assessments(run(source, rules, assume_presentation=assume_presentation))
    assert twice == once
    assert thrice == once
    assert source == pristine, "evaluate must not change its input"


# --- 8. the order in which facts reach the engine changes nothing --------------------------------


@PROPERTY
@given(data=st.data(), assume_presentation=st.booleans(), order=st.randoms(use_true_random=False))
def test_fact_assertion_order_changes_nothing(
    data: st.DataObject, assume_presentation: bool, order: Any, rules: Rules
) -> None:
    resources = data.draw(any_patient, label="patient")
    source = bundle(resources)
    evaluator = evaluator_for(rules.ruleset)
    expected = dumps_assessments(run(source, rules, assume_presentation=assume_presentation))

    def shuffled(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        reordered = list(messages)
        order.shuffle(reordered)
        return reordered

    evaluator.fact_order = shuffled
    try:
        reordered = dumps_assessments(run(source, rules, assume_presentation=assume_presentation))
        evaluator.fact_order = lambda messages: list(reversed(messages))
        reversed_order = dumps_assessments(
            run(source, rules, assume_presentation=assume_presentation))
    finally:
        evaluator.fact_order = None
    event(f"findings: {'some' if b'rule_id' in expected else 'none'}")
    assert reordered == expected
    assert reversed_order == expected
