"""What the cards say (RULES.md v3 "Critical cards", "Presentation of findings" and the rows'
recommend column): critical cards act first, a stale critical result is named and repeated
today, low magnesium is corrected first, sodium is never "repleted", inhalers are never stopped,
a child's cards say so, and the work-up card offers only tests not measured."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from fasciculation_cds import evaluate
from fasciculation_cds.assessment import Assessment, RuleFinding
from fasciculation_cds.rule_fixtures import fixture_cases
from fasciculation_cds.ruleset import RuleSet

from .conftest import RULES_DIR

AS_OF = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
CHILD_LINE = "Adult thresholds: check paediatric reference ranges."
LAB = {"k": ("2823-3", "mmol/L"), "mg": ("2601-3", "mmol/L"), "ca": ("17861-6", "mg/dL"),
       "ica": ("1994-3", "mmol/L"), "na": ("2951-2", "mmol/L"), "tsh": ("3016-3", "m[IU]/L")}
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


class Record:
    def __init__(self, birth: str | None = "1970-01-01") -> None:
        patient: dict[str, Any] = {"resourceType": "Patient", "id": "p", "gender": "female"}
        if birth:
            patient["birthDate"] = birth
        self.resources: list[dict[str, Any]] = [patient]
        self.condition("http://hl7.org/fhir/sid/icd-10-cm", "R25.3")

    def _add(self, resource: dict[str, Any]) -> Record:
        resource.update(id=f"r{len(self.resources)}", subject={"reference": "Patient/p"})
        self.resources.append(resource)
        return self

    def condition(self, system: str, code: str) -> Record:
        return self._add({"resourceType": "Condition",
                          "clinicalStatus": {"coding": [{"code": "active", "system": "http://terminology.hl7.org/CodeSystem/condition-clinical"}]},
                          "code": {"coding": [{"system": system, "code": code}]},
                          "onsetDateTime": "2026-05-01"})

    def lab(self, key: str, value: float, days_ago: int = 0) -> Record:
        code, unit = LAB[key]
        when = AS_OF - timedelta(days=days_ago, hours=2)
        return self._add({"resourceType": "Observation", "status": "final",
                          "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                          "effectiveDateTime": when.isoformat(),
                          "valueQuantity": {"value": value, "unit": unit, "code": unit,
                                            "system": "http://unitsofmeasure.org"}})

    def drug(self, code: str) -> Record:
        return self._add({"resourceType": "MedicationRequest", "status": "active",
                          "intent": "order", "authoredOn": "2026-04-01",
                          "medicationCodeableConcept": {"coding": [{"system": RXNORM,
                                                                    "code": code}]}})

    def assess(self) -> Assessment:
        bundle = {"resourceType": "Bundle", "type": "collection",
                  "entry": [{"resource": r} for r in self.resources]}
        [assessment] = evaluate(bundle, as_of=AS_OF)
        return assessment


def card(assessment: Assessment, rule_id: str) -> RuleFinding:
    found = [f for f in assessment.findings if f.rule_id == rule_id]
    assert found, f"{rule_id} did not fire: {[f.rule_id for f in assessment.findings]}"
    return found[0]


# --- critical cards act first ---------------------------------------------------------------


def test_critical_potassium_acts_first_and_repeats_in_parallel() -> None:
    finding = card(Record().lab("k", 2.3).assess(), "electrolyte.hypokalemia")
    assert finding.severity == "critical"
    first = finding.recommendations[0]
    assert first.startswith("Urgent assessment: ECG and cardiac monitoring; IV potassium")
    assert "in parallel (do not wait for the repeat)" in first
    assert not any(r.startswith("Repeat") for r in finding.recommendations)


def test_a_critical_result_from_yesterday_is_not_stale_but_one_from_the_day_before_is() -> None:
    yesterday = card(Record().lab("k", 2.3, days_ago=1).assess(), "electrolyte.hypokalemia")
    assert yesterday.recommendations[0].startswith("Urgent assessment")
    older = card(Record().lab("k", 2.3, days_ago=2).assess(), "electrolyte.hypokalemia")
    assert older.severity == "critical"
    day = (AS_OF - timedelta(days=2)).date().isoformat()
    assert older.recommendations[0] == (
        f"Result of {day}, not repeated: assess the patient and repeat it today; if confirmed, "
        "urgent assessment: ECG and cardiac monitoring; IV potassium per local protocol.")


def _critical_fixtures() -> Iterator[Path]:
    for case in fixture_cases(RULES_DIR):
        if case.severity == "critical" and case.rule_id.startswith("electrolyte."):
            yield case.path


@pytest.mark.parametrize("path", list(_critical_fixtures()), ids=lambda p: p.name)
def test_every_critical_electrolyte_card_acts_first(path: Path, ruleset: RuleSet) -> None:
    bundle = json.loads(path.read_text(encoding="utf-8"))
    rule_id = "electrolyte." + path.parent.name.removesuffix(".fires")
    [assessment] = evaluate(bundle, as_of=bundle["timestamp"],
                            assume_presentation="assume-presentation" in path.read_text())
    finding = card(assessment, rule_id)
    first = finding.recommendations[0]
    labs = [e for e in finding.evidence if e.value is not None and e.effective]
    d = datetime.fromisoformat(bundle["timestamp"].replace("Z", "+00:00")).date()
    stale = [e for e in labs if date.fromisoformat(e.effective or "") < d - timedelta(days=1)]
    if stale:
        assert first.startswith(f"Result of {stale[0].effective}, not repeated: assess the "
                                "patient and repeat it today; if confirmed, "), first
    else:
        assert first.startswith(("Urgent", "Emergency")), first
        assert "do not wait for the repeat" in first or "confirm this uncorrected total" in first
    assert not first.lower().startswith(("repeat", "check"))


def test_an_uncorrected_critical_total_calcium_is_confirmed_first_unless_symptomatic() -> None:
    finding = card(Record().lab("ca", 7.0).assess(), "electrolyte.hypocalcemia")
    assert finding.severity == "critical"
    first = finding.recommendations[0]
    assert "if symptomatic" in first
    assert "confirm this uncorrected total first" in first
    ionized = card(Record().lab("ica", 0.85).assess(), "electrolyte.hypocalcemia")
    assert "IV calcium gluconate (adjusted calcium below 1.9 mmol/L, or symptoms)" in \
        ionized.recommendations[0]


# --- correct magnesium first ----------------------------------------------------------------


def test_low_magnesium_is_corrected_first_on_the_calcium_and_potassium_cards() -> None:
    both = Record().lab("ca", 7.9).lab("k", 3.1).lab("mg", 0.6).assess()
    day = (AS_OF - timedelta(hours=2)).date().isoformat()
    calcium = card(both, "electrolyte.hypocalcemia").recommendations
    assert (f"Magnesium is low (0.6 mmol/L on {day}): correct it first — calcium will not "
            "correct until magnesium is replete.") in calcium
    potassium = card(both, "electrolyte.hypokalemia").recommendations
    assert (f"Magnesium is low (0.6 mmol/L on {day}): replace it too — potassium will not "
            "correct until it is.") in potassium
    normal_mg = Record().lab("ca", 7.9).lab("k", 3.1).lab("mg", 0.8).assess()
    assert "Check magnesium." in card(normal_mg, "electrolyte.hypocalcemia").recommendations
    assert not any("Magnesium is low" in r for f in normal_mg.findings
                   for r in f.recommendations)


# --- drug wording ---------------------------------------------------------------------------


def test_sodium_pairs_never_say_replete() -> None:
    thiazide = card(Record().lab("na", 128).drug("5487").assess(),
                    "medication.electrolyte-depleting")
    assert thiazide.recommendations == [
        "Stop or review the thiazide (hydrochlorothiazide); restrict fluid; raise sodium slowly "
        "(no more than 10 mmol/L in 24 h)."]
    carbamazepine = card(Record().lab("na", 128).drug("2002").assess(),
                         "medication.electrolyte-depleting")
    assert carbamazepine.recommendations == [
        "Carbamazepine can cause SIADH: review it; restrict fluid; raise sodium slowly "
        "(no more than 10 mmol/L in 24 h)."]
    assert "replete" not in " ".join(thiazide.recommendations + carbamazepine.recommendations)


def test_a_beta2_agonist_is_never_to_be_stopped() -> None:
    record = Record().lab("k", 3.2).drug("435").assess()
    depleting = " ".join(card(record, "medication.electrolyte-depleting").recommendations)
    assert "never stop an inhaler" in depleting
    trigger = card(record, "medication.fasciculation-trigger").recommendations
    assert trigger == ["Albuterol (salbutamol) can cause tremor and twitching: review asthma or "
                       "COPD control and how often the reliever is used; do not stop or swap the "
                       "inhaler for this."]


def test_lithium_asks_for_a_level() -> None:
    trigger = card(Record().drug("6448").assess(), "medication.fasciculation-trigger")
    assert trigger.recommendations == [
        "Lithium: check a lithium level (tremor and twitching can mean toxicity)."]


# --- a child's cards ------------------------------------------------------------------------


def test_a_child_on_an_adhd_medicine_is_told_not_to_stop_it() -> None:
    child = card(Record(birth="2014-02-10").drug("6901").assess(),
                 "medication.fasciculation-trigger")
    assert child.recommendations == [
        "Do not stop a child's reliever inhaler or ADHD medicine because of twitching; discuss "
        "with the prescriber."]
    adult = card(Record().drug("6901").assess(), "medication.fasciculation-trigger")
    assert adult.recommendations == [
        "Methylphenidate: a possible contributor; consider a dose review or an alternative."]


@pytest.mark.parametrize(("birth", "child"), [("2008", True), ("2008-05-31", False),
                                              ("2008-06-02", True), (None, False)])
def test_lab_cards_and_the_workup_card_of_a_child_add_the_paediatric_line(
        birth: str | None, child: bool) -> None:
    assessment = Record(birth=birth).lab("k", 3.2).drug("6901").assess()
    assert (CHILD_LINE in card(assessment, "electrolyte.hypokalemia").recommendations) is child
    assert (CHILD_LINE in card(assessment, "workup.electrolytes-missing").recommendations) is child
    assert CHILD_LINE not in card(assessment, "medication.fasciculation-trigger").recommendations


# --- work-up: only what is missing ----------------------------------------------------------


def test_workup_lists_what_was_found_and_offers_only_what_is_missing() -> None:
    assessment = (Record().condition("http://hl7.org/fhir/sid/icd-10-cm", "M62.81")
                  .lab("k", 4.1).lab("ca", 9.4).lab("tsh", 2.0, days_ago=200).assess())
    finding = card(assessment, "workup.electrolytes-missing")
    day = (AS_OF - timedelta(hours=2)).date().isoformat()
    assert f"- Potassium: 4.1 mmol/L on {day}" in finding.detail
    assert "- Calcium: 9.4 mg/dL" in finding.detail
    assert "- Magnesium: missing (no counting result in 90 days)" in finding.detail
    offered = [s.label for s in finding.suggestions]
    assert offered == ["Magnesium", "Phosphate", "25-OH vitamin D", "CK"]
    assert finding.recommendations[0] == "Order: Magnesium; Phosphate; 25-OH vitamin D; CK."
    without_weakness = card(Record().lab("k", 4.1).assess(), "workup.electrolytes-missing")
    assert "TSH" not in [s.label for s in without_weakness.suggestions]
    assert "Basic metabolic panel (potassium)" not in [
        s.label for s in without_weakness.suggestions]


# --- hemifacial spasm -----------------------------------------------------------------------


def test_hemifacial_spasm_asks_for_an_mri_of_the_posterior_fossa() -> None:
    hfs = card(Record().condition("http://hl7.org/fhir/sid/icd-10-cm", "G51.3").assess(),
               "differential.movement-disorder")
    assert ("Hemifacial spasm: MRI of the brain with attention to the posterior fossa (vascular "
            "compression, rarely a tumour).") in hfs.recommendations
    assert any("Yaltho" in r.citation for r in hfs.references)
