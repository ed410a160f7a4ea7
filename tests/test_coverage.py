"""Coverage: every resource of a type the rules read accounted for exactly once, the codings
no value set matched counted (with the concept they look like), and where they are shown
(`evaluate`'s `unrecognized` section, `fasciculation-cds coverage`)."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fasciculation_cds import evaluate
from fasciculation_cds.assessment import Assessment, dumps_assessments
from fasciculation_cds.batch import BatchOptions, run_batch
from fasciculation_cds.cli import app
from fasciculation_cds.coverage import (
    NOT_RELEVANT,
    SKIPPED,
    UNREADABLE,
    UNRECOGNIZED,
    USED,
    Accountant,
    PatientCoverage,
)
from fasciculation_cds.coverage_report import CoverageReport
from fasciculation_cds.evaluate import assess_all, coverage_of, new_grouper
from fasciculation_cds.ingest import (
    READ_TYPES,
    SourcedResource,
    relevance_of,
    validate,
)
from fasciculation_cds.normalize.common import Content
from fasciculation_cds.normalize.medications import ingredient_matches
from fasciculation_cds.ruleset import RuleSet
from fasciculation_cds.sources import resources_of
from fasciculation_cds.unrecognized import CodingClassifier

Resource = dict[str, Any]
AS_OF = "2026-06-01T12:00:00Z"
RECENT = "2026-05-20T08:00:00Z"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"

POTASSIUM = {"system": LOINC, "code": "2823-3",
             "display": "Potassium [Moles/volume] in Serum or Plasma"}
URINE_POTASSIUM = {"system": LOINC, "code": "2828-2",
                   "display": "Potassium [Moles/volume] in Urine"}
BODY_HEIGHT = {"system": LOINC, "code": "8302-2", "display": "Body Height"}
HYPOKALEMIA = {"system": SNOMED, "code": "43339004", "display": "Hypokalemia"}
SINUSITIS = {"system": SNOMED, "code": "444814009", "display": "Viral sinusitis (disorder)"}
SIMVASTATIN = {"system": RXNORM, "code": "316672", "display": "Simvistatin 10 MG"}
ACETAMINOPHEN = {"system": RXNORM, "code": "313782",
                 "display": "Acetaminophen 325 MG Oral Tablet"}
DIALYSIS = {"system": SNOMED, "code": "265764009", "display": "Renal dialysis (procedure)"}


def bundle(*resources: Resource) -> Resource:
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female",
               "birthDate": "1960-01-01"}
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": r} for r in (patient, *resources)]}


def observation(coding: dict[str, str] | None, *, rid: str = "o1", status: Any = "final",
                value: Any = 3.1, unit: str = "mmol/L", text: str | None = None) -> Resource:
    code: Resource = {"coding": [coding]} if coding else {}
    if text:
        code["text"] = text
    return {"resourceType": "Observation", "id": rid, "status": status, "code": code,
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": RECENT,
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}}


def condition(coding: dict[str, str], *, rid: str = "c1") -> Resource:
    return {"resourceType": "Condition", "id": rid, "code": {"coding": [coding]},
            "subject": {"reference": "Patient/p1"},
            "clinicalStatus": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                "code": "active"}]}}


def request(coding: dict[str, str], *, rid: str = "m1", status: str = "active") -> Resource:
    return {"resourceType": "MedicationRequest", "id": rid, "status": status,
            "intent": "order", "medicationCodeableConcept": {"coding": [coding]},
            "subject": {"reference": "Patient/p1"}, "authoredOn": "2026-01-01"}


def account(document: Resource, ruleset: RuleSet) -> tuple[
        dict[str | None, PatientCoverage], list[Any]]:
    accountant = Accountant(ruleset)
    grouper = new_grouper(ruleset, AS_OF, strict=False)
    grouper.add_all(accountant.watch(resources_of(document, "b.json")))
    result = grouper.finish()
    outcomes = list(assess_all(result, ruleset, AS_OF, assume_presentation=True))
    assessments: dict[str, Assessment | None] = {r.reference: None for r in result.patients}
    for outcome in outcomes:
        if isinstance(outcome, Assessment):
            assessments[outcome.patient.reference] = outcome
    return accountant.account(result, assessments), outcomes


def outcomes_of(document: Resource, ruleset: RuleSet) -> dict[str, tuple[str, str | None]]:
    by_patient, _ = account(document, ruleset)
    return {a.seen.reference: (a.outcome, a.reason)
            for coverage in by_patient.values() for a in coverage.accounted}


def section(document: Resource, ruleset: RuleSet) -> list[dict[str, Any]]:
    [assessment] = evaluate(document, as_of=AS_OF, rules=ruleset, unrecognized=True)
    return [c.model_dump(exclude_none=True) for c in assessment.unrecognized or []]


# --- each outcome, on records shaped like the real ones -------------------------------------

def test_a_lab_the_value_sets_know_is_used(ruleset: RuleSet) -> None:
    assert outcomes_of(bundle(observation(POTASSIUM)), ruleset) == {
        "Patient/p1": (USED, None), "Observation/o1": (USED, None)}


def test_a_lab_of_the_wrong_specimen_is_unrecognized_and_looks_like_its_analyte(
        ruleset: RuleSet) -> None:
    document = bundle(observation(URINE_POTASSIUM))
    assert outcomes_of(document, ruleset)["Observation/o1"] == (UNRECOGNIZED, None)
    assert section(document, ruleset) == [{
        "reason": "no-value-set", "resource_type": "Observation", "element": "code",
        "system": LOINC, "code": "2828-2", "display": "Potassium [Moles/volume] in Urine",
        "looks_like": "potassium", "resources": 1}]


def test_a_vital_sign_is_not_relevant_and_listed_without_a_concept(ruleset: RuleSet) -> None:
    document = bundle(observation(BODY_HEIGHT, unit="cm", value=170))
    assert outcomes_of(document, ruleset)["Observation/o1"] == (NOT_RELEVANT, None)
    [row] = section(document, ruleset)
    assert row["code"] == "8302-2"
    assert "looks_like" not in row


def test_an_unconvertible_unit_is_counted_with_the_unit(ruleset: RuleSet) -> None:
    document = bundle(observation(POTASSIUM, unit="furlong"))
    assert outcomes_of(document, ruleset)["Observation/o1"] == (
        SKIPPED, "unit-not-convertible")
    assert section(document, ruleset) == [{
        "reason": "unit-not-convertible", "resource_type": "Observation",
        "element": "valueQuantity", "system": UCUM, "code": "furlong", "display": "furlong",
        "looks_like": "potassium", "resources": 1}]


def test_a_status_that_does_not_count_is_counted_with_the_status(ruleset: RuleSet) -> None:
    document = bundle(observation(POTASSIUM, status="preliminary"),
                      request(SIMVASTATIN, status="stopped"))
    outcomes = outcomes_of(document, ruleset)
    assert outcomes["Observation/o1"] == (SKIPPED, "status-not-counted")
    assert outcomes["MedicationRequest/m1"] == (SKIPPED, "status-not-counted")
    rows = {(r["resource_type"], r["element"], r["code"], r["looks_like"])
            for r in section(document, ruleset)}
    assert rows == {("Observation", "status", "preliminary", "potassium"),
                    ("MedicationRequest", "status", "stopped", "simvastatin")}


def test_a_resource_that_is_not_fhir_r4_is_unreadable(ruleset: RuleSet) -> None:
    broken = observation(POTASSIUM)
    broken["effectiveDateTime"] = "yesterday"
    outcomes = outcomes_of(bundle(broken, condition(SINUSITIS)), ruleset)
    assert outcomes["Observation/o1"] == (UNREADABLE, None)
    assert outcomes["Condition/c1"] == (NOT_RELEVANT, None)


def test_a_drug_the_value_sets_know_but_no_longer_active_and_one_they_do_not(
        ruleset: RuleSet) -> None:
    document = bundle(request(SIMVASTATIN), request(ACETAMINOPHEN, rid="m2"),
                      condition(HYPOKALEMIA), {
                          "resourceType": "Procedure", "id": "d1", "status": "completed",
                          "code": {"coding": [DIALYSIS]}, "performedDateTime": RECENT,
                          "subject": {"reference": "Patient/p1"}})
    outcomes = outcomes_of(document, ruleset)
    assert outcomes["MedicationRequest/m1"] == (USED, None)
    assert outcomes["MedicationRequest/m2"] == (NOT_RELEVANT, None)
    assert outcomes["Condition/c1"] == (USED, None)
    assert outcomes["Procedure/d1"] == (USED, None)


def test_a_medication_is_used_through_the_use_that_names_it(ruleset: RuleSet) -> None:
    drug = {"resourceType": "Medication", "id": "d1", "code": {"coding": [SIMVASTATIN]}}
    unused = {"resourceType": "Medication", "id": "d2", "code": {"coding": [SIMVASTATIN]}}
    use = request(SIMVASTATIN)
    del use["medicationCodeableConcept"]
    use["medicationReference"] = {"reference": "Medication/d1"}
    outcomes = outcomes_of(bundle(drug, unused, use), ruleset)
    assert outcomes["Medication/d1"] == (USED, None)
    assert outcomes["Medication/d2"] == (SKIPPED, "not-counted")
    assert outcomes["MedicationRequest/m1"] == (USED, None)


def test_the_first_resource_of_a_record_without_a_patient_is_not_unreadable(
        ruleset: RuleSet) -> None:
    document = bundle(observation(BODY_HEIGHT, unit="cm"), observation(POTASSIUM, rid="o2"))
    del document["entry"][0]
    assert outcomes_of(document, ruleset) == {
        "Observation/o1": (NOT_RELEVANT, None),
        "Observation/o2": (SKIPPED, "patient-not-evaluated")}


def test_an_observation_older_than_every_look_back_is_skipped_for_that(
        ruleset: RuleSet) -> None:
    old = observation(POTASSIUM)
    old["effectiveDateTime"] = "2001-01-01"
    assert outcomes_of(bundle(old), ruleset)["Observation/o1"] == (
        SKIPPED, "older-than-look-back")


def test_looks_like_is_whole_words_and_text_counts_too(ruleset: RuleSet) -> None:
    classifier = CodingClassifier(ruleset)
    assert classifier.looks_like("Stressful life event") is None  # "stress" is a word
    assert classifier.looks_like("Psychological stress") == "stress"
    assert classifier.looks_like("Lasix 40mg") is None
    assert classifier.looks_like("Frusemide 40 mg tablet") == "furosemide"
    found = classifier.unmatched("Condition", "code", {
        "coding": [{"system": "urn:local", "code": "X1"}], "text": "Leg cramps at night"})
    assert found.looks_relevant
    assert found.keys[0].looks_like == "muscle-cramp"
    assert found.keys[0].display == "Leg cramps at night"


def test_looks_like_only_names_concepts_of_the_elements_kind(ruleset: RuleSet) -> None:
    classifier = CodingClassifier(ruleset)
    naproxen = {"coding": [{"system": RXNORM, "code": "849574",
                            "display": "Naproxen sodium 220 MG Oral Tablet"}]}
    drug = classifier.unmatched("MedicationRequest", "medicationCodeableConcept", naproxen)
    assert not drug.looks_relevant  # a drug is never the sodium result
    urine = {"coding": [{"system": LOINC, "code": "2955-3",
                         "display": "Sodium [Moles/volume] in Urine"}]}
    assert classifier.unmatched("Observation", "code", urine).keys[0].looks_like == "sodium"
    lasix = {"coding": [{"system": RXNORM, "code": "1", "display": "Frusemide 40 mg"}]}
    assert classifier.unmatched("Condition", "code", lasix).keys[0].looks_like is None
    assert classifier.unmatched("Medication", "code", lasix).keys[0].looks_like == "furosemide"


def test_the_api_adds_the_section_only_when_asked(ruleset: RuleSet) -> None:
    document = bundle(observation(URINE_POTASSIUM))
    [plain] = evaluate(document, as_of=AS_OF, rules=ruleset)
    assert plain.unrecognized is None
    assert "unrecognized" not in plain.to_json_dict()
    [asked] = evaluate(document, as_of=AS_OF, rules=ruleset, unrecognized=True)
    assert asked.findings == plain.findings
    assert asked.facts == plain.facts
    listed = json.loads(dumps_assessments([asked]))[0]["unrecognized"]
    assert [row["code"] for row in listed] == ["2828-2"]


# --- the report and the command ---------------------------------------------------------------

def _two_patients(tmp_path: Any) -> Any:
    second = bundle(observation(URINE_POTASSIUM, rid="o9"), observation(
        BODY_HEIGHT, rid="o8", unit="cm"), observation(BODY_HEIGHT, rid="o7", unit="cm"))
    second["entry"][0]["resource"]["id"] = "p2"
    for entry in second["entry"][1:]:
        entry["resource"]["subject"]["reference"] = "Patient/p2"
    (tmp_path / "a.json").write_text(json.dumps(bundle(observation(URINE_POTASSIUM))))
    (tmp_path / "b.json").write_text(json.dumps(second))
    return tmp_path


def test_the_report_counts_resources_and_patients_most_patients_first(
        tmp_path: Any, ruleset: RuleSet) -> None:
    report = coverage_of(_two_patients(tmp_path), as_of=AS_OF, rules=ruleset)
    assert report.patients == 2
    assert report.totals() == {"read": 6, "used": 2, "skipped": 0, "unrecognized": 2,
                               "not-relevant": 2, "unreadable": 0}
    rows = report.rows()
    assert [(r["code"], r["patients"], r["resources"]) for r in rows] == [
        ("2828-2", 2, 2), ("8302-2", 1, 2)]


def test_the_coverage_command_in_text_csv_and_json(tmp_path: Any) -> None:
    folder = _two_patients(tmp_path)
    runner = CliRunner()
    text = runner.invoke(app, ["coverage", str(folder), "--as-of", AS_OF])
    assert text.exit_code == 0, text.output
    assert "read 6, used 2" in text.stdout
    lines = text.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("patients"))
    assert "2828-2" in lines[first + 1]
    assert "potassium" in lines[first + 1]
    table = runner.invoke(app, ["coverage", str(folder), "--as-of", AS_OF, "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(table.stdout)))
    assert [(r["code"], r["patients"]) for r in rows] == [("2828-2", "2"), ("8302-2", "1")]
    data = json.loads(runner.invoke(
        app, ["coverage", str(folder), "--as-of", AS_OF, "--format", "json",
              "--limit", "1"]).stdout)
    assert data["resources"]["read"] == 6
    assert len(data["codings"]) == 1
    assert data["by_type"]["Observation"] == {"not-relevant": 2, "unrecognized": 2}


def test_the_coverage_command_refuses_an_input_without_resources(tmp_path: Any) -> None:
    (tmp_path / "e.json").write_text(json.dumps({"resourceType": "Encounter", "id": "e"}))
    result = CliRunner().invoke(app, ["coverage", str(tmp_path)])
    assert result.exit_code == 2
    assert "no resource of a type the rules read" in result.stderr


def test_evaluate_lists_the_section_and_text_output_does_not(tmp_path: Any) -> None:
    (tmp_path / "a.json").write_text(json.dumps(bundle(observation(URINE_POTASSIUM))))
    runner = CliRunner()
    listed = json.loads(runner.invoke(app, ["evaluate", str(tmp_path), "--as-of",
                                            AS_OF]).stdout)
    assert listed[0]["unrecognized"][0]["looks_like"] == "potassium"
    quiet = json.loads(runner.invoke(app, ["evaluate", str(tmp_path), "--as-of", AS_OF,
                                           "--no-unrecognized"]).stdout)
    assert "unrecognized" not in quiet[0]


# --- the accounting property ------------------------------------------------------------------

_CODINGS = [POTASSIUM, URINE_POTASSIUM, BODY_HEIGHT, HYPOKALEMIA, SINUSITIS, SIMVASTATIN,
            ACETAMINOPHEN, DIALYSIS, {"system": "urn:local", "code": "K", "display": "Leg cramp"}]
_TYPES = ["Observation", "Condition", "Procedure", "MedicationRequest", "MedicationStatement",
          "Medication", "Encounter", "AllergyIntolerance"]


_STATUS = {"Observation": ["final", "preliminary", "amended"], "Procedure": [
    "completed", "not-done"], "MedicationRequest": ["active", "stopped"],
    "MedicationStatement": ["active", "completed"], "Encounter": ["finished"],
    "AllergyIntolerance": [], "Condition": [], "Medication": ["active"]}


_TIME = {"Observation": "effectiveDateTime", "MedicationStatement": "effectiveDateTime",
         "MedicationRequest": "authoredOn", "Procedure": "performedDateTime",
         "Condition": "recordedDate"}


@st.composite
def _resource(draw: st.DrawFn, index: int, clean: bool) -> Resource:
    """A resource of any type; `clean`: well-formed (else any element may be malformed,
    which stops its patient's evaluation)."""
    kind = draw(st.sampled_from(_TYPES))
    resource: Resource = {"resourceType": kind}
    if draw(st.booleans()) or kind == "Medication":
        resource["id"] = f"r{index}"
    codings = draw(st.lists(st.sampled_from(_CODINGS), max_size=2))
    codeable: Any = {"coding": codings} if clean else draw(st.sampled_from([
        {"coding": codings}, {"text": "twitching of the eyelid"}, {}, "not an object"]))
    statuses: list[Any] = _STATUS[kind] if clean else [*_STATUS[kind], 7, None]
    if kind.startswith("Medication") and kind != "Medication":
        if draw(st.booleans()):
            resource["medicationCodeableConcept"] = codeable
        else:
            resource["medicationReference"] = {"reference": draw(st.sampled_from(
                [f"Medication/r{index - 1}", "Medication/none", "#c"]))}
        if kind == "MedicationRequest":
            resource["intent"] = "order"
    elif clean or draw(st.booleans()):
        resource["code"] = codeable
    if statuses:
        resource["status"] = draw(st.sampled_from(statuses))
        if resource["status"] is None:
            del resource["status"]
    if kind != "Medication":
        subjects = ["Patient/p1", "Patient/p2", "urn:uuid:p1"]
        subject = draw(st.sampled_from(subjects if clean else [*subjects, None]))
        if subject:
            resource["subject"] = {"reference": subject}
    times = [RECENT, "2001-01-01", "2030-01-01"]
    when = draw(st.sampled_from(times if clean else [*times, "yesterday", None]))
    if when is not None and kind in _TIME:
        resource[_TIME[kind]] = when
    if kind == "Observation" and draw(st.booleans()):
        values: list[Any] = [3.0, 2.5] if clean else [3.0, "x"]
        resource["valueQuantity"] = {"value": draw(st.sampled_from(values)),
                                     "unit": draw(st.sampled_from(["mmol/L", "furlong"]))}
    return resource


@st.composite
def _record(draw: st.DrawFn) -> Resource:
    count = draw(st.integers(min_value=0, max_value=12))
    clean = draw(st.booleans())
    resources = [draw(_resource(i, clean)) for i in range(count)]
    entries: list[Resource] = [{"fullUrl": "urn:uuid:p1", "resource": {
        "resourceType": "Patient", "id": "p1", "birthDate": "1960-01-01"}}]
    if draw(st.booleans()):
        entries.append({"resource": {"resourceType": "Patient", "id": "p2"}})
    entries += [{"resource": r} for r in resources]
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(document=_record())
def test_every_resource_of_a_read_type_is_accounted_for_exactly_once(
        document: Resource, ruleset: RuleSet) -> None:
    by_patient, outcomes = account(document, ruleset)
    accounted = [a for coverage in by_patient.values() for a in coverage.accounted]
    expected = Counter(f"entry[{i}]" for i, e in enumerate(document["entry"])
                       if e["resource"]["resourceType"] in READ_TYPES)
    assert Counter(a.seen.entry for a in accounted) == expected
    content = Content.of(ruleset)
    cited = {(o.patient.reference, f.reference) for o in outcomes
             if isinstance(o, Assessment) for f in o.facts}
    for coverage in by_patient.values():
        for item in coverage.accounted:
            seen = item.seen
            event(f"{item.outcome} {item.reason or ''}".strip())
            resource = document["entry"][int(seen.entry[6:-1])]["resource"]
            # unreadable exactly when it was validated and failed, or its code cannot be read
            # as FHIR R4 though it is of a type the rules read (a Patient never fails here)
            relevance = relevance_of(resource, ruleset.terminology)
            failed = relevance == "unreadable" or validate(
                SourcedResource(resource, "b.json", seen.entry)) is not None
            relevant = relevance != "not-relevant"
            assert (item.outcome == UNREADABLE) == (failed and relevant)
            if seen.resource_type in ("Patient", "Medication") or item.outcome == UNREADABLE:
                continue
            # used exactly when a fact of its patient cites it
            assert (item.outcome == USED) == ((coverage.reference, seen.reference) in cited)
            if item.outcome in (UNRECOGNIZED, NOT_RELEVANT) and isinstance(seen.codeable, dict):
                codeable = seen.codeable
                matched = (ingredient_matches(content, codeable)
                           if seen.element.startswith("medication")
                           else content.term.match_codeable(codeable))
                assert not matched
    report = CoverageReport()
    for coverage in by_patient.values():
        report.add(coverage)
    totals = report.totals()
    assert totals["read"] == sum(expected.values())
    assert totals["read"] == sum(v for k, v in totals.items() if k != "read")


# --- batch --------------------------------------------------------------------------------------

REAL = Path(__file__).parent / "data" / "real-world"


def test_batch_writes_the_same_table_as_the_coverage_command(tmp_path: Path,
                                                             ruleset: RuleSet) -> None:
    """Counted where batch partitions (what it does not keep) and where it evaluates (what it
    keeps): together exactly the report's rows, but for Medication resources' own codes."""
    export = REAL / "inferno-bulk"
    assert (export / "Observation.000.ndjson").is_file(), "tests/data/real-world is missing"
    summary = run_batch(BatchOptions(inputs=[export], out=tmp_path / "out", as_of=AS_OF,
                                     workers=1, shards=3))
    rows = pq.read_table(tmp_path / "out" / "unrecognized.parquet").to_pylist()
    # batch counts a DiagnosticReport's own code where it partitions the report away (one
    # without results); a report kept for its results is read through them (docs/coverage.md)
    expected = [r for r in coverage_of(export, as_of=AS_OF, rules=ruleset).rows()
                if r["resource_type"] not in ("Medication", "DiagnosticReport")]
    assert [r for r in rows if r["resource_type"] != "DiagnosticReport"] == expected
    reports = {r["code"]: r["resources"] for r in rows if r["resource_type"] == "DiagnosticReport"}
    assert reports.get("57133-1", 0) >= 1  # a referral note without results is counted
    assert {r["reason"] for r in rows} == {"no-value-set", "status-not-counted"}
    assert summary.unrecognized == rows[:10]
    assert summary.unrecognized_codings == len(rows)
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["counts"]["unrecognized_codings"] == len(rows)
    again = run_batch(BatchOptions(inputs=[export], out=tmp_path / "nd", as_of=AS_OF,
                                   workers=1, shards=1, output_format="ndjson"))
    lines = (tmp_path / "nd" / "unrecognized.ndjson").read_text().splitlines()
    assert [json.loads(line) for line in lines] == rows
    assert again.unrecognized_codings == len(rows)
