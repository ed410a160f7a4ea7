"""Records as other systems write them (docs/clinical-basis.md): what is read,
and what cannot be read is named (the assessment is partial), never dropped as "not relevant".

Every malformed shape goes through the Python API, `evaluate` (CLI) and `batch`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fasciculation_cds import Assessment, RuleSet, evaluate, evaluate_each
from fasciculation_cds.batch import BatchOptions, run_batch
from fasciculation_cds.cli import app
from fasciculation_cds.errors import InputError
from fasciculation_cds.evaluate import InputProblem, PatientError, ingest
from fasciculation_cds.normalize import Normalizer

from .conftest import REPO, SHARED_DATA

EXAMPLE = REPO / "fhir_examples" / "hypomagnesemia-omeprazole.json"
AS_OF = "2026-11-26T00:00:00Z"
MG = "0b3ca37d-657a-551f-a900-e50f0cf2108b"
REAL = SHARED_DATA / "real-world"
Resource = dict[str, Any]


def _bundle() -> Resource:
    return json.loads(EXAMPLE.read_text())  # type: ignore[no-any-return]


def _resource(bundle: Resource, rid: str) -> Resource:
    return next(e["resource"] for e in bundle["entry"]
                if e["resource"].get("id") == rid)


def _patient_ref(bundle: Resource) -> str:
    return str(bundle["entry"][0]["fullUrl"])


# --- the three entry points -----------------------------------------------------------------------

def _api(path: Path, as_of: str = AS_OF, strict: bool = False) -> list[Any]:
    return list(evaluate_each(path, as_of=as_of, strict=strict))


def _cli(path: Path, as_of: str = AS_OF, strict: bool = False) -> tuple[int, list[Any]]:
    args = ["evaluate", str(path), "--as-of", as_of, "--format", "json"]
    result = CliRunner().invoke(app, [*args, "--strict"] if strict else args)
    start = result.stdout.find("[")
    return result.exit_code, json.loads(result.stdout[start:]) if start >= 0 else []


def _batch(path: Path, out: Path, as_of: str = AS_OF,
           strict: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    run_batch(BatchOptions(inputs=[path], out=out, as_of=as_of, strict=strict, workers=1,
                           shards=1))
    rows = pq.read_table(out / "assessments.parquet").to_pylist()
    problems_file = out / "problems.ndjson"
    problems = [orjson.loads(line)["problem"] for line in problems_file.read_bytes().splitlines()
                ] if problems_file.exists() else []
    return rows, problems


def _write(tmp_path: Path, bundle: Resource, name: str = "bundle.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(bundle))
    return path


# --- malformed is never "not relevant" ------------------------------------------------------------

def _coding_object(mg: Resource) -> None:
    mg["code"]["coding"] = mg["code"]["coding"][0]


def _status_upper(mg: Resource) -> None:
    mg["status"] = "FINAL"


def _numeric_date(mg: Resource) -> None:
    mg["effectiveDateTime"] = 20261120


def _reversed_period(mg: Resource) -> None:
    mg["effectivePeriod"] = {"start": "2026-11-21T00:00:00Z", "end": "2026-11-20T00:00:00Z"}
    del mg["effectiveDateTime"]


def _value_string(mg: Resource) -> None:
    mg["valueQuantity"]["value"] = "0.55"


def _subject_string(mg: Resource) -> None:
    mg["subject"] = mg["subject"]["reference"]


def _unknown_element(mg: Resource) -> None:
    mg["valueQuantityy"] = mg.pop("valueQuantity")


MALFORMED: dict[str, Callable[[Resource], None]] = {
    "code.coding an object": _coding_object, "status FINAL": _status_upper,
    "numeric date": _numeric_date, "reversed period": _reversed_period,
    "decimal as a string": _value_string, "subject a string": _subject_string,
    "unknown element": _unknown_element,
}


def test_the_untouched_example_gives_the_low_magnesium_warning(ruleset: RuleSet) -> None:
    (outcome,) = list(evaluate_each(_bundle(), as_of=AS_OF, rules=ruleset))
    assert isinstance(outcome, Assessment)
    assert outcome.partial is None
    assert {f.rule_id: f.severity for f in outcome.findings}[
        "electrolyte.hypomagnesemia"] == "warning"


@pytest.mark.parametrize("shape", sorted(MALFORMED))
def test_a_malformed_result_is_unreadable_on_every_path(shape: str, tmp_path: Path) -> None:
    bundle = _bundle()
    MALFORMED[shape](_resource(bundle, MG))
    path = _write(tmp_path, bundle)

    (outcome,) = _api(path)
    assert isinstance(outcome, Assessment), outcome
    assert outcome.partial is True
    [notice] = [n for n in outcome.notices if n.code == "resource-unreadable"]
    assert notice.reference == f"Observation/{MG}"
    assert "electrolyte.hypomagnesemia" not in {f.rule_id for f in outcome.findings}

    code, printed = _cli(path)
    assert code == 0
    assert printed[0]["partial"] is True
    assert [n["reference"] for n in printed[0]["notices"] if n["code"] == "resource-unreadable"
            ] == [f"Observation/{MG}"]

    rows, problems = _batch(path, tmp_path / "out")
    assert [r["status"] for r in rows] == ["ok"]
    assert not problems
    assert json.loads(rows[0]["assessment"])["partial"] is True

    # with --strict the patient is an error row, on every path
    (strict,) = _api(path, strict=True)
    assert isinstance(strict, PatientError)
    assert _cli(path, strict=True)[0] == 2
    rows, _ = _batch(path, tmp_path / "strict", strict=True)
    assert [r["status"] for r in rows] == ["error"]


def test_a_code_that_can_be_read_and_is_irrelevant_stays_irrelevant(ruleset: RuleSet) -> None:
    bundle = _bundle()
    _resource(bundle, MG)["code"] = {"coding": {"system": "http://loinc.org", "code": "8867-4"}}
    (outcome,) = list(evaluate_each(bundle, as_of=AS_OF, rules=ruleset))
    assert isinstance(outcome, Assessment)
    assert outcome.partial is None


def test_a_code_that_cannot_be_read_at_all_is_unreadable(ruleset: RuleSet) -> None:
    bundle = _bundle()
    _resource(bundle, MG)["code"] = 12
    (outcome,) = list(evaluate_each(bundle, as_of=AS_OF, rules=ruleset))
    assert isinstance(outcome, Assessment)
    assert outcome.partial is True


def test_an_unreadable_resource_makes_the_context_partial(ruleset: RuleSet) -> None:
    """PatientContext.partial is what blocks the benign pattern (docs/clinical-basis.md)."""
    bundle = _bundle()
    _status_upper(_resource(bundle, MG))
    (record,) = ingest(bundle, ruleset).patients
    as_of = datetime(2026, 11, 26, tzinfo=timezone.utc)
    assert Normalizer(ruleset).run(record, as_of, assume_presentation=True).context.partial
    (plain,) = ingest(_bundle(), ruleset).patients
    assert not Normalizer(ruleset).run(plain, as_of, assume_presentation=True).context.partial


def test_a_patient_that_cannot_be_identified_stays_an_error(ruleset: RuleSet) -> None:
    bundle = _bundle()
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            del entry["resource"]["id"], entry["fullUrl"]
    outcomes = list(evaluate_each(bundle, as_of=AS_OF, rules=ruleset))
    assert not any(isinstance(o, Assessment) for o in outcomes)
    assert any("Patient has neither id nor fullUrl" in o.message for o in outcomes
               if isinstance(o, InputProblem))


def test_a_patient_resource_that_fails_validation_is_partial(ruleset: RuleSet) -> None:
    bundle = _bundle()
    bundle["entry"][0]["resource"]["gender"] = "F"
    (outcome,) = list(evaluate_each(bundle, as_of=AS_OF, rules=ruleset))
    assert isinstance(outcome, Assessment)
    assert outcome.partial is True
    assert "electrolyte.hypomagnesemia" in {f.rule_id for f in outcome.findings}


# --- C-CDA converter: MedicationStatement without status ------------------------------------------

CCDA = REAL / "msconv-ccda" / "CCD" / "C-CDA_R2-1_CCD.xml-expected.json"


def test_a_statement_without_status_is_named_never_an_error_row(tmp_path: Path) -> None:
    (outcome,) = _api(CCDA)
    assert isinstance(outcome, Assessment)
    assert outcome.partial is True
    unreadable = [n for n in outcome.notices if n.code == "resource-unreadable"]
    assert sum("MedicationStatement.status" in n.message for n in unreadable) == 2
    code, printed = _cli(CCDA)
    assert code == 0
    assert printed[0]["partial"] is True
    rows, problems = _batch(CCDA, tmp_path / "out")
    assert [r["status"] for r in rows] == ["ok"]
    assert not problems
    strict = _api(CCDA, strict=True)
    assert any(isinstance(o, PatientError) for o in strict)
    assert not any(isinstance(o, Assessment) for o in strict)


# --- results inside reports -----------------------------------------------------------------------

VA = REAL / "va-mhv" / "get_a_list_of_chemhem_labs.body.json"


def _va_with_patient() -> Resource:
    bundle = json.loads(VA.read_text())
    bundle["entry"].append({"resourceType": "Patient", "id": "ex-MHV-patient-942104",
                            "gender": "male", "birthDate": "1960-01-01"})
    return bundle  # type: ignore[no-any-return]


def _labs(outcome: Any, concept: str) -> list[Any]:
    assert isinstance(outcome, Assessment), outcome
    return [f for f in outcome.facts if f.kind == "lab" and f.concept == concept]


def test_contained_results_of_a_report_count(ruleset: RuleSet) -> None:
    """The VA shape: entries that are resources themselves, a report whose contained results
    have no time of their own (they take the report's)."""
    (outcome,) = list(evaluate_each(_va_with_patient(), as_of="2021-02-01", rules=ruleset))
    [potassium] = _labs(outcome, "potassium")
    assert potassium.reference == "DiagnosticReport/ex-MHV-chReport-1#ex-MHV-chTest-1a"
    assert potassium.value == 3.5
    assert potassium.effective.isoformat().startswith("2021-01-21T11:32:47")
    [sodium] = _labs(outcome, "sodium")
    assert sodium.value == 138


def test_the_va_response_alone_names_its_missing_patient(tmp_path: Path) -> None:
    (outcome,) = _api(VA, as_of="2021-02-01")
    assert isinstance(outcome, PatientError)
    assert "Patient/ex-MHV-patient-942104" in outcome.message


def _report(**fields: Any) -> Resource:
    return {"resourceType": "DiagnosticReport", "id": "r1", "status": "final",
            "code": {"text": "Chemistry"}, **fields}


def _k(rid: str, **fields: Any) -> Resource:
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
            "valueQuantity": {"value": 3.0, "unit": "mmol/L",
                              "system": "http://unitsofmeasure.org", "code": "mmol/L"},
            **fields}


def _patient_bundle(*resources: Resource) -> Resource:
    subject = {"reference": "Patient/p"}
    entries = [{"resource": {"resourceType": "Patient", "id": "p", "gender": "female",
                             "birthDate": "1970-01-01"}}]
    for resource in resources:
        if resource["resourceType"] != "Medication" and "subject" not in resource:
            resource = {**resource, "subject": subject}
        entries.append({"resource": resource})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


@pytest.mark.parametrize(("report", "observation", "expected"), [
    ({"effectiveDateTime": "2026-11-20T08:00:00Z", "issued": "2026-11-21T08:00:00Z"},
     {"issued": "2026-11-22T08:00:00Z"}, "2026-11-20T08:00:00"),  # the report's effective
    ({"issued": "2026-11-21T08:00:00Z"}, {"issued": "2026-11-22T08:00:00Z"},
     "2026-11-22T08:00:00"),  # then its own issued
    ({"issued": "2026-11-21T08:00:00Z"}, {}, "2026-11-21T08:00:00"),  # then the report's
    ({"effectiveDateTime": "2026-11-20T08:00:00Z"},
     {"effectiveDateTime": "2026-11-19T08:00:00Z"}, "2026-11-19T08:00:00"),  # its own first
])
def test_a_referenced_result_takes_its_time_in_order(report: Resource, observation: Resource,
                                                     expected: str, ruleset: RuleSet) -> None:
    bundle = _patient_bundle(_report(result=[{"reference": "Observation/k"}], **report),
                             _k("k", **observation))
    (outcome,) = list(evaluate_each(bundle, as_of=AS_OF, rules=ruleset))
    [potassium] = _labs(outcome, "potassium")
    assert potassium.reference == "Observation/k"
    assert potassium.effective.isoformat().startswith(expected)


def test_a_contained_result_takes_the_reports_subject_and_its_own_status(
        ruleset: RuleSet) -> None:
    report = _report(effectiveDateTime="2026-11-20T08:00:00Z",
                     contained=[_k("a"), _k("b", status="preliminary")],
                     result=[{"reference": "#a"}, {"reference": "#b"}])
    (outcome,) = list(evaluate_each(_patient_bundle(report), as_of=AS_OF, rules=ruleset,
                                    assume_presentation=True))
    assert [f.reference for f in _labs(outcome, "potassium")] == ["DiagnosticReport/r1#a"]
    assert isinstance(outcome, Assessment)
    [finding] = [f for f in outcome.findings if f.rule_id == "electrolyte.hypokalemia"]
    assert [e.reference for e in finding.evidence] == ["DiagnosticReport/r1#a"]


def test_a_malformed_contained_result_makes_the_assessment_partial(ruleset: RuleSet) -> None:
    report = _report(effectiveDateTime="2026-11-20T08:00:00Z",
                     contained=[_k("a", status="FINAL")], result=[{"reference": "#a"}])
    (outcome,) = list(evaluate_each(_patient_bundle(report), as_of=AS_OF, rules=ruleset))
    assert isinstance(outcome, Assessment)
    assert outcome.partial is True
    assert [n.reference for n in outcome.notices if n.code == "resource-unreadable"] == [
        "DiagnosticReport/r1#a"]


# --- dispensed and administered drugs -------------------------------------------------------------

FUROSEMIDE = {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                          "code": "313988", "display": "Furosemide 40 MG Oral Tablet"}]}


def _medications(bundle: Resource, as_of: str, ruleset: RuleSet) -> list[Any]:
    (outcome,) = list(evaluate_each(bundle, as_of=as_of, rules=ruleset))
    assert isinstance(outcome, Assessment), outcome
    return [f for f in outcome.facts if f.kind == "medication"]


def _dispense(**fields: Any) -> Resource:
    return {"resourceType": "MedicationDispense", "id": "d1", "status": "completed",
            "medicationCodeableConcept": FUROSEMIDE,
            "whenHandedOver": "2026-01-01T10:00:00Z", **fields}


@pytest.mark.parametrize(("fields", "as_of", "active"), [
    ({"daysSupply": {"value": 30, "unit": "days", "system": "http://unitsofmeasure.org",
                     "code": "d"}}, "2026-03-02T10:00:00Z", True),  # 30 + 30 days, at the end
    ({"daysSupply": {"value": 30, "unit": "days", "system": "http://unitsofmeasure.org",
                     "code": "d"}}, "2026-03-02T10:00:01Z", False),
    ({}, "2026-04-01T10:00:00Z", True),  # 90 days without a daysSupply
    ({}, "2026-04-01T10:00:01Z", False),
    ({}, "2025-12-31T23:59:59Z", False),  # not yet handed over
    ({"status": "in-progress"}, "2026-01-02", True),
    ({"status": "declined"}, "2026-01-02", False),
    ({"whenHandedOver": None}, "2026-01-02", False),  # v3: no whenHandedOver, not active
])
def test_a_dispense_is_active_for_its_supply(fields: Resource, as_of: str, active: bool,
                                             ruleset: RuleSet) -> None:
    dispense = {k: v for k, v in _dispense(**fields).items() if v is not None}
    facts = _medications(_patient_bundle(dispense), as_of, ruleset)
    assert [(f.concept, f.reference) for f in facts] == (
        [("furosemide", "MedicationDispense/d1")] if active else [])


@pytest.mark.parametrize(("given", "as_of", "active"), [
    ({"effectiveDateTime": "2026-01-01T23:00:00Z"}, "2026-01-08T23:59:59Z", True),  # D0 + 7
    ({"effectiveDateTime": "2026-01-01T23:00:00Z"}, "2026-01-09T00:00:00Z", False),
    ({"effectivePeriod": {"start": "2026-01-01T08:00:00Z", "end": "2026-01-01T09:00:00Z"}},
     "2026-01-08T12:00:00Z", True),
    ({"effectiveDateTime": "2026-01-01T23:00:00Z", "status": "not-done"},
     "2026-01-02T00:00:00Z", False),
])
def test_an_administration_is_active_for_seven_days(given: Resource, as_of: str, active: bool,
                                                   ruleset: RuleSet) -> None:
    administration = {"resourceType": "MedicationAdministration", "id": "a1",
                      "status": "completed", "medicationCodeableConcept": FUROSEMIDE, **given}
    facts = _medications(_patient_bundle(administration), as_of, ruleset)
    assert [f.reference for f in facts] == (["MedicationAdministration/a1"] if active else [])


def test_a_dispense_names_its_drug_by_reference(ruleset: RuleSet) -> None:
    medication = {"resourceType": "Medication", "id": "m1", "code": FUROSEMIDE}
    dispense = _dispense(medicationReference={"reference": "Medication/m1"})
    del dispense["medicationCodeableConcept"]
    facts = _medications(_patient_bundle(medication, dispense), "2026-01-02", ruleset)
    assert [f.concept for f in facts] == ["furosemide"]


def test_a_medication_that_is_not_there_is_named(ruleset: RuleSet) -> None:
    shown = _dispense(medicationReference={"reference": "Medication/gone",
                                           "display": "Furosemide 10 MG/ML Injection"})
    unnamed = _dispense(id="d2", medicationReference={"reference": "Medication/gone"})
    for dispense in (shown, unnamed):
        del dispense["medicationCodeableConcept"]
    (outcome,) = list(evaluate_each(_patient_bundle(shown, unnamed), as_of="2026-01-02",
                                    rules=ruleset))
    assert isinstance(outcome, Assessment)
    assert outcome.partial is True
    codes = {(n.code, n.reference) for n in outcome.notices}
    assert ("medication-not-found", "MedicationDispense/d1") in codes
    assert ("resource-unreadable", "MedicationDispense/d2") in codes
    assert [f.reference for f in outcome.facts if f.kind == "medication"] == [
        "MedicationDispense/d1"]
    strict = list(evaluate_each(_patient_bundle(shown, unnamed), as_of="2026-01-02",
                                rules=ruleset, strict=True))
    assert [type(o) for o in strict] == [PatientError]


def test_the_inferno_export_reads_its_dispenses(ruleset: RuleSet) -> None:
    outcomes = {o.patient.reference: o for o in evaluate_each(
        REAL / "inferno-bulk", as_of="1975-05-01", rules=ruleset) if isinstance(o, Assessment)}
    patient = outcomes["Patient/85"]
    assert {(f.concept, f.reference) for f in patient.facts if f.kind == "medication"} >= {
        ("furosemide", "MedicationDispense/69eb827f-03d5-4d56-b71c-3b7e306dc61c")}
    assert patient.partial is True  # a MedicationRequest naming an unexported Medication


def test_the_ecqm_administration_is_read(ruleset: RuleSet) -> None:
    folder = REAL / "ecqm" / "CMS816HHHypoFHIR"
    (outcome,) = list(evaluate_each(folder, as_of="2026-12-17", rules=ruleset))
    assert isinstance(outcome, Assessment)
    assert [(f.concept, f.reference.split("/")[0]) for f in outcome.facts
            if f.kind == "medication"] == [("glimepiride", "MedicationAdministration")]


# --- route ----------------------------------------------------------------------------------------

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def _request(medication: Resource, **fields: Any) -> Resource:
    return {"resourceType": "MedicationRequest", "id": "q1", "status": "active",
            "intent": "order", "authoredOn": "2026-11-01", "medicationCodeableConcept": medication,
            **fields}


@pytest.mark.parametrize(("medication", "fields", "systemic"), [
    ({"coding": [{"system": RXNORM, "code": "106258",
                  "display": "Hydrocortisone 10 MG/ML Topical Cream"}]}, {}, False),
    ({"coding": [{"system": RXNORM, "code": "5492", "display": "hydrocortisone"}]},
     {"dosageInstruction": [{"route": {"text": "Topical"}}]}, False),
    ({"text": "Prednisolone eye drops"}, {}, False),
    ({"coding": [{"system": RXNORM, "code": "5492", "display": "hydrocortisone"}]},
     {"dosageInstruction": [{"route": {"text": "Oral"}}]}, True),
    ({"text": "Prednisone 5 mg tablet"}, {}, True),
    ({"text": "Hydrocortisone rectal foam"}, {}, True),
])
def test_only_systemic_forms_are_systemic_corticosteroids(
        medication: Resource, fields: Resource, systemic: bool, ruleset: RuleSet) -> None:
    facts = _medications(_patient_bundle(_request(medication, **fields)), AS_OF, ruleset)
    assert any("systemic-corticosteroid" in f.classes for f in facts) is systemic


def test_a_medication_form_can_make_it_local(ruleset: RuleSet) -> None:
    medication = {"resourceType": "Medication", "id": "m1", "form": {"text": "Ointment"},
                  "code": {"coding": [{"system": RXNORM, "code": "5492",
                                       "display": "hydrocortisone"}]}}
    request = _request({}, medicationReference={"reference": "Medication/m1"})
    del request["medicationCodeableConcept"]
    assert _medications(_patient_bundle(medication, request), AS_OF, ruleset) == []


# --- NDJSON lines holding a Bundle, other FHIR versions -------------------------------------------

def test_an_ndjson_line_holding_a_bundle_is_read_as_that_bundle(tmp_path: Path) -> None:
    path = tmp_path / "bundles.ndjson"
    path.write_bytes(orjson.dumps(_bundle()) + b"\n")
    (outcome,) = _api(path)
    assert isinstance(outcome, Assessment)
    assert "electrolyte.hypomagnesemia" in {f.rule_id for f in outcome.findings}
    code, printed = _cli(path)
    assert code == 0
    assert "electrolyte.hypomagnesemia" in {f["rule_id"] for f in printed[0]["findings"]}
    rows, problems = _batch(path, tmp_path / "out")
    assert not problems
    assert "electrolyte.hypomagnesemia" in rows[0]["rule_ids"]


def test_a_bad_bundle_on_an_ndjson_line_is_a_problem_row(tmp_path: Path) -> None:
    bundle = _bundle()
    bundle["entry"] = {"not": "a list"}
    path = tmp_path / "bundles.ndjson"
    path.write_bytes(orjson.dumps(bundle) + b"\n")
    assert [type(o) for o in _api(path)] == [InputProblem]
    assert _cli(path)[0] == 2
    _, problems = _batch(path, tmp_path / "out")
    assert problems
    assert "line 1" in problems[0]


OTHER_VERSIONS = [
    (SHARED_DATA / "invalid" / "synthea-dstu2-Wm_Bergstrom.json", "DSTU2"),
    (SHARED_DATA / "invalid" / "synthea-dstu2-Fannie_Waelchi.json", "DSTU2"),
    (SHARED_DATA / "invalid" / "synthea-stu3-Fannie_Waelchi.json", "STU3"),
]


@pytest.mark.parametrize(("path", "version"), OTHER_VERSIONS)
def test_a_document_of_another_fhir_version_is_refused(path: Path, version: str,
                                                       tmp_path: Path) -> None:
    outcomes = _api(path)
    assert outcomes
    assert all(isinstance(o, InputProblem) for o in outcomes)
    assert f"FHIR {version}" in outcomes[0].message
    result = CliRunner().invoke(app, ["evaluate", str(path), "--as-of", AS_OF])
    assert result.exit_code == 2
    assert f"FHIR {version}" in result.output
    rows, problems = _batch(path, tmp_path / "out")
    assert rows == []
    assert any(f"FHIR {version}" in p for p in problems)
    with pytest.raises(InputError, match=f"FHIR {version}"):
        evaluate(path, as_of=AS_OF)


@pytest.mark.parametrize("resource", [
    {"resourceType": "MedicationOrder", "id": "x", "patient": {"reference": "Patient/p"}},
    {"resourceType": "MedicationRequest", "id": "x", "status": "active", "intent": "order",
     "context": {"reference": "Encounter/e"}, "subject": {"reference": "Patient/p"},
     "medicationCodeableConcept": FUROSEMIDE},
    {"resourceType": "MedicationStatement", "id": "x", "status": "recorded",
     "medication": {"concept": FUROSEMIDE}, "subject": {"reference": "Patient/p"}},
])
def test_a_resource_of_another_version_is_refused_naming_it(resource: Resource,
                                                            tmp_path: Path) -> None:
    path = tmp_path / "lines.ndjson"
    path.write_bytes(orjson.dumps(resource) + b"\n")
    (problem,) = _api(path)
    assert isinstance(problem, InputProblem)
    assert "FHIR" in problem.message
    assert "R4 only" in problem.message


# --- as_of=auto -----------------------------------------------------------------------------------

def _with_encounter(end: Any) -> Resource:
    bundle = _bundle()
    bundle["entry"].append({"resource": {
        "resourceType": "Encounter", "id": "e1", "status": "finished",
        "class": {"code": "AMB"}, "subject": {"reference": _patient_ref(bundle)},
        "period": {"start": "2026-11-20T08:00:00Z", "end": end}}})
    return bundle


@pytest.mark.parametrize("end", ["99991231", "2026-11-32", 20261231])
def test_as_of_auto_takes_no_invalid_time(end: Any, ruleset: RuleSet) -> None:
    (outcome,) = list(evaluate_each(_with_encounter(end), as_of="auto", rules=ruleset))
    assert isinstance(outcome, Assessment)
    assert outcome.as_of.startswith("2026-11-2")


def test_as_of_auto_refuses_a_time_after_the_clock_with_a_notice(tmp_path: Path) -> None:
    path = _write(tmp_path, _with_encounter("9999-12-31T00:00:00Z"))
    (outcome,) = _api(path, as_of="auto")
    assert isinstance(outcome, Assessment)
    assert outcome.as_of.startswith("2026-11-2")
    assert "time-implausible" in {n.code for n in outcome.notices}
    code, printed = _cli(path, as_of="auto")
    assert code == 0
    assert printed[0]["as_of"].startswith("2026-11-2")
    rows, _ = _batch(path, tmp_path / "out", as_of="auto")
    assert str(rows[0]["as_of"]).startswith("2026-11-2")
    assert "time-implausible" in str(rows[0]["assessment"])


# --- numbers and units ----------------------------------------------------------------------------

@pytest.mark.parametrize("literal", ["1e999", "1.5e308", "-0.4", "0", "1E+300"])
def test_an_absurd_number_is_named_never_a_card_nor_a_crash(literal: str,
                                                            tmp_path: Path) -> None:
    bundle = _bundle()
    _resource(bundle, MG)["valueQuantity"]["value"] = 123456.25
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle).replace("123456.25", literal))
    (outcome,) = _api(path)
    assert isinstance(outcome, Assessment), outcome
    assert "value-implausible" in {n.code for n in outcome.notices}
    assert outcome.partial is True
    assert not {"electrolyte.hypomagnesemia", "electrolyte.hypermagnesemia"} & {
        f.rule_id for f in outcome.findings}
    rows, problems = _batch(path, tmp_path / "out")
    assert [r["status"] for r in rows] == ["ok"]
    assert not problems
    assert "value-implausible" in rows[0]["assessment"]


def test_a_string_holding_a_huge_number_is_unreadable(tmp_path: Path) -> None:
    bundle = _bundle()
    _resource(bundle, MG)["valueQuantity"]["value"] = "1e999"
    (outcome,) = _api(_write(tmp_path, bundle))
    assert isinstance(outcome, Assessment)
    assert outcome.partial is True


def test_an_unknown_unit_code_read_by_its_text_is_named(ruleset: RuleSet) -> None:
    bundle = _bundle()
    quantity = _resource(bundle, MG)["valueQuantity"]
    quantity["code"], quantity["unit"] = "mmol/Lx", "mmol/L"
    (outcome,) = list(evaluate_each(bundle, as_of=AS_OF, rules=ruleset))
    assert isinstance(outcome, Assessment)
    assert [n.reference for n in outcome.notices if n.code == "unit-from-text"] == [
        f"Observation/{MG}"]
    assert "electrolyte.hypomagnesemia" in {f.rule_id for f in outcome.findings}


# --- brand names ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("prefix", "concept", "matched_by", "display"), [
    ("Barry_Wolf_", "furosemide", "ingredient-name-fallback", "Lasix 40mg"),
    ("Adan_Pulido_", "simvastatin", "code", "Simvistatin 10 MG"),
])
def test_the_sample_patients_show_their_drugs(prefix: str, concept: str, matched_by: str,
                                              display: str, ruleset: RuleSet) -> None:
    (path,) = sorted((REAL / "gsd-r4-synthea").glob(f"{prefix}*.json.gz"))
    (outcome,) = list(evaluate_each(path, as_of="auto", rules=ruleset))
    assert isinstance(outcome, Assessment)
    assert (concept, matched_by, display) in {
        (f.concept, f.matched_by, f.display) for f in outcome.facts if f.kind == "medication"}


def test_a_brand_only_text_is_a_name_fallback(ruleset: RuleSet) -> None:
    facts = _medications(_patient_bundle(_request({"text": "Lasix 20 mg"})), AS_OF, ruleset)
    assert [(f.concept, f.matched_by) for f in facts] == [("furosemide", "text")]


def test_every_brand_relation_has_a_source(ruleset: RuleSet) -> None:
    import yaml

    data = yaml.safe_load((ruleset.directory / "valuesets" / "brand-names.yaml").read_text())
    for concept, brands in data["brand_names"].items():
        assert ruleset.terminology.concepts[concept].kind == "medication"
        for brand in brands:
            assert f"[{brand['name']}]" in brand["source"], brand


# --- the service's evaluation --------------------------------------------------------------------

def test_the_service_evaluation_names_an_unreadable_result(ruleset: RuleSet) -> None:
    """The service evaluates a prefetch through the same ingest: a malformed result makes the
    assessment partial there too, where it used to be an error answer or a silent gap."""
    from fasciculation_cds.evaluate import evaluator_for
    from fasciculation_cds.service.evaluation import assess_one

    from .service_helpers import prefetch_from_bundle

    bundle = _bundle()
    _status_upper(_resource(bundle, MG))
    patient_id, prefetch = prefetch_from_bundle(bundle)
    resources = [prefetch["patient"]] + [e["resource"] for key, search in prefetch.items()
                                         if key != "patient" for e in search["entry"]]
    outcome = assess_one(evaluator_for(ruleset), resources, [], patient_id,
                         datetime(2026, 11, 26, tzinfo=timezone.utc))
    assert outcome.partial is True
    assert [n.reference for n in outcome.notices if n.code == "resource-unreadable"] == [
        f"Observation/{MG}"]


def test_no_other_version_marker_is_r4() -> None:
    """A marker that R4 (or R4B, which the models follow) also has would refuse R4 records."""
    from fhir.resources.R4B import get_fhir_model_class

    from fasciculation_cds.fhir_validation import element_fields
    from fasciculation_cds.fhir_version import _ELEMENTS, _STRING_ELEMENTS, _TYPES

    for resource_type in _TYPES:
        with pytest.raises((ValueError, KeyError)):
            get_fhir_model_class(resource_type)
    for resource_type, element in _ELEMENTS:
        assert element not in element_fields(resource_type), (resource_type, element)
    for resource_type, element in _STRING_ELEMENTS:
        assert element in element_fields(resource_type), (resource_type, element)


def test_a_result_naming_no_patient_counts_for_the_report_that_lists_it(
        ruleset: RuleSet) -> None:
    report = _report(effectiveDateTime="2026-11-20T08:00:00Z",
                     result=[{"reference": "Observation/k"}])
    orphan = _k("k")  # no subject: _patient_bundle adds one only to what it is given
    bundle = _patient_bundle(report)
    bundle["entry"].append({"resource": orphan})
    (outcome,) = list(evaluate_each(bundle, as_of=AS_OF, rules=ruleset))
    [potassium] = _labs(outcome, "potassium")
    assert potassium.effective.isoformat().startswith("2026-11-20T08:00:00")
    unlisted = _patient_bundle()
    unlisted["entry"].append({"resource": orphan})
    outcomes = list(evaluate_each(unlisted, as_of=AS_OF, rules=ruleset))
    assert any(isinstance(o, InputProblem) and "names no patient" in o.message
               for o in outcomes)


def test_an_absurd_reference_range_is_named_and_not_used(ruleset: RuleSet) -> None:
    """1.5e308 g/dL does not convert to a double: the range is left out, never a crash."""
    bundle = _bundle()
    albumin = next(e["resource"] for e in bundle["entry"]
                   if e["resource"]["resourceType"] == "Observation"
                   and e["resource"]["code"]["coding"][0]["code"] == "1751-7")
    albumin["referenceRange"] = [{"high": {"value": 1.5e308, "unit": "g/dL", "code": "g/dL",
                                           "system": "http://unitsofmeasure.org"}}]
    (outcome,) = list(evaluate_each(bundle, as_of=AS_OF, rules=ruleset))
    assert isinstance(outcome, Assessment), outcome
    assert outcome.partial is True
    assert "electrolyte.hypomagnesemia" in {f.rule_id for f in outcome.findings}
    assert any(n.code == "value-implausible" and "reference range" in n.message
               for n in outcome.notices)


@pytest.mark.parametrize("fields", [
    {"daysSupply": {"value": 1e300, "unit": "days", "system": "http://unitsofmeasure.org",
                    "code": "d"}},
    {"whenHandedOver": "9999-12-31T23:00:00Z"},
])
def test_a_dispense_at_the_end_of_time_is_no_crash(fields: Resource, ruleset: RuleSet) -> None:
    administration = {"resourceType": "MedicationAdministration", "id": "a1",
                      "status": "completed", "medicationCodeableConcept": FUROSEMIDE,
                      "effectiveDateTime": "9999-12-31T23:00:00Z"}
    bundle = _patient_bundle(_dispense(**fields), administration)
    assert [type(o) for o in evaluate_each(bundle, as_of="2026-01-02", rules=ruleset)] == [
        Assessment]
