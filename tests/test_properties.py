"""Property tests (hypothesis) for the safety invariants of RULES.md.

The strategies generate FHIR R4 resources (Patient, Condition, Observation, MedicationRequest),
never facts, so that parsing, terminology, unit conversion, status and look-back handling run
inside every property. Codes and displays are exactly those of rules/valuesets/codes.yaml.

Settings: derandomize=True (the same examples on every run, for CI) and no example database.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fasciculation_cds import evaluate
from fasciculation_cds.assessment import Assessment, dumps_assessments
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
CONDITION_CODINGS: tuple[Coding, ...] = (
    *PRESENTATION.values(), *RED_FLAG_SIGNS.values(), ALS)

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
                          "mmol/L", "0.25", "1.30", 2, "0.72", "1.05", ("0.50", "0.70")),
    "magnesium-mass": Lab("magnesium", "19123-9", "Magnesium [Mass/volume] in Serum or Plasma",
                          "mg/dL", "0.60", "3.20", 2, "1.80", "2.60", ("1.20", "1.70")),
    "potassium": Lab("potassium", "2823-3", "Potassium [Moles/volume] in Serum or Plasma",
                     "mmol/L", "2.0", "6.0", 1, "3.5", "5.0", ("2.5", "3.5")),
    "sodium": Lab("sodium", "2951-2", "Sodium [Moles/volume] in Serum or Plasma",
                  "mmol/L", "115", "162", 0, "135", "145", ("125", "135", "145", "155")),
    "calcium-total": Lab("calcium-total", "17861-6", "Calcium [Mass/volume] in Serum or Plasma",
                         "mg/dL", "6.0", "11.5", 1, "9.0", "10.4", ("7.5", "8.5")),
    "albumin": Lab("albumin", "1751-7", "Albumin [Mass/volume] in Serum or Plasma",
                   "g/dL", "2.0", "5.5", 1, "3.5", "4.5", ("4.0",)),
    "calcium-ionized": Lab("calcium-ionized", "1994-3", "Calcium.ionized [Moles/volume] in Blood",
                           "mmol/L", "0.70", "1.45", 2, "1.12", "1.32", ("0.90", "1.12")),
    "phosphate": Lab("phosphate", "2777-1", "Phosphate [Mass/volume] in Serum or Plasma",
                     "mg/dL", "0.5", "5.5", 1, "2.5", "4.5", ("1.0", "2.5")),
    "vitamin-d": Lab("vitamin-d-25oh", "62292-8",
                     "25-Hydroxyvitamin D2+25-Hydroxyvitamin D3 [Mass/volume] in Serum or Plasma",
                     "ng/mL", "4", "90", 1, "20", "60", ("12", "20")),
    "vitamin-b12": Lab("vitamin-b12", "2132-9",
                       "Cobalamin (Vitamin B12) [Mass/volume] in Serum or Plasma",
                       "pg/mL", "100", "1200", 0, "300", "900", ("200",)),
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
}

# --- resource builders -------------------------------------------------------------------------


def fhir_instant(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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
                display: str | None = None) -> Resource:
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
        "effectiveDateTime": fhir_instant(effective),
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


def lab_values(lab: Lab) -> st.SearchStrategy[Decimal]:
    """Anywhere in the plausible range, often normal, sometimes exactly at a threshold."""
    options = [decimals(lab.low, lab.high, lab.places),
               decimals(lab.normal_low, lab.normal_high, lab.places)]
    if lab.edges:
        options.append(st.sampled_from([Decimal(e) for e in lab.edges]))
    return st.one_of(options)


MINUTES_PER_DAY = 24 * 60
# 0-400 days before as_of, more often inside the 90-day look-back.
ages_in_minutes = st.one_of(st.integers(0, 89 * MINUTES_PER_DAY),
                            st.integers(0, 400 * MINUTES_PER_DAY))
recent_ages_in_minutes = st.integers(0, 89 * MINUTES_PER_DAY)
lab_statuses = st.sampled_from(["final", "final", "final", "amended", "preliminary",
                                "entered-in-error"])


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
def lab_results(draw: st.DrawFn, ids: Ids, patient: str, analyte: str, *,
                at_least_one_recent_final: bool = False) -> list[Resource]:
    out = []
    count = draw(st.integers(0, 2))
    for index in range(count + (1 if at_least_one_recent_final else 0))
        if False else []:
        pass
    return out


@st.composite
def patients(draw: st.DrawFn, patient: str = "pat-1", *,
             lean_benign: bool = False) -> list[Resource]:
    """One random patient: a Patient, then Conditions, Observations and MedicationRequests.

    With `lean_benign`, the patient always has an active fasciculation and at least one recent
    final calcium, magnesium and potassium (values still random), so that the benign pattern and
    its near misses come up often.
    """
    ids = Ids(patient, draw(st.lists(st.integers(0, 99_999), min_size=60, max_size=60,
                                     unique=True)))
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
    # MND signs (LMN, bulbar, UMN)
    for coding in RED_FLAG_SIGNS.values():
        if draw(st.booleans()):
            resources.append(condition(
                ids("cond"), patient, coding,
                clinical=draw(st.sampled_from(["active", "resolved"])),
                verification=draw(st.sampled_from(["confirmed", "refuted"])),
                onset=draw(onsets)))
    # established ALS
    if draw(st.integers(0, 3)) == 0:
        resources.append(condition(
            ids("cond"), patient, ALS,
            clinical=draw(st.sampled_from(["active", "resolved"])),
            verification=draw(st.sampled_from(["confirmed", "refuted"])),
            onset=draw(onsets)))
    # labs
    anchored = {"magnesium", "potassium", "calcium-total"} if lean_benign else set()
    for analyte, variants in ANALYTES.items():
        count = draw(st.integers(0, 2))
        for index in range(count + (1 if analyte in anchored else 0)):
            lab = LABS[draw(st.sampled_from(variants))]
            anchor = analyte in anchored and index == 0
            resources.append(observation(
                ids("obs"), patient, lab, draw(lab_values(lab)),
                status="final" if anchor else draw(lab_statuses),
                effective=before_as_of(draw(recent_ages_in_minutes if anchor
                                            else ages_in_minutes))))
    # medications
    for name in draw(st.lists(st.sampled_from(sorted(MEDICATIONS)), max_size=3, unique=True)):
        resources.append(medication_request(
            ids("med"), patient, MEDICATIONS[name],
            status=draw(st.sampled_from(["active", "active", "stopped"])),
            authored=before_as_of(draw(st.integers(1, 400 * MINUTES_PER_DAY)))))
    return resources


# --- helpers -----------------------------------------------------------------------------------


def run(source: Any, ruleset: RuleSet, **options: Any) -> list[Assessment]:
    return evaluate(source, as_of=AS_OF, rules=ruleset, **options)


def run_one(resources: Sequence[Resource], ruleset: RuleSet, **options: Any) -> Assessment:
    assessments = run(bundle(resources), ruleset, **options)
    assert len(assessments) == 1
    return assessments[0]


def severity_of(assessment: Assessment, rule_id: str) -> str | None:
    return next((f.severity for f in assessment.findings if f.rule_id == rule_id), None)


def rule_severities(assessment: Assessment) -> list[tuple[str, str]]:
    return [(f.rule_id, f.severity) for f in assessment.findings]


def without(resources: Sequence[Resource], drop: Callable[[Resource], bool]) -> list[Resource]:
    return [r for r in resources if not drop(r)]


def is_lab(resource: Resource, labs: Sequence[Lab]) -> bool:
    if resource["resourceType"] != "Observation":
        return False
    codes = {c["code"] for c in resource["code"]["coding"]}
    return bool(codes & {lab.loinc for lab in labs} | codes & set(_EXTRA_LOINC(labs)))


def _EXTRA_LOINC(labs: Sequence[Lab]) -> list[str]:  # noqa: N802
    return []
