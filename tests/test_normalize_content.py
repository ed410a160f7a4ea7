"""The content files of rules/ are checked against their schemas at load: a missing or misspelled
key names the file and the key. Also: ingest resolves `medicationReference` for normalize."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from fasciculation_cds import RuleFileError, evaluate
from fasciculation_cds.content_schema import ValueSets
from fasciculation_cds.evaluate import ingest
from fasciculation_cds.ruleset import RuleSet, load_rules

from .conftest import RULES_DIR


def _edited(tmp_path: Path, name: str, edit: Callable[[Any], None]) -> Path:
    rules = tmp_path / "rules"
    shutil.copytree(RULES_DIR, rules)
    path = rules / name
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return rules


def _load_error(rules: Path) -> RuleFileError:
    with pytest.raises(RuleFileError) as caught:
        load_rules(rules)
    return caught.value


def test_missing_derived_key_names_file_and_key(tmp_path: Path) -> None:
    error = _load_error(_edited(tmp_path, "derived.yaml",
                                lambda d: d.pop("sign_lookback_days")))
    assert error.file.endswith("derived.yaml")
    assert error.field == "sign_lookback_days"
    assert "Field required" in str(error)


def test_misspelled_derived_key_names_file_and_key(tmp_path: Path) -> None:
    def misspell(data: dict[str, Any]) -> None:
        data["albumin_corrected_calcium"]["max_day_apart"] = data[
            "albumin_corrected_calcium"].pop("max_days_apart")

    error = _load_error(_edited(tmp_path, "derived.yaml", misspell))
    assert error.file.endswith("derived.yaml")
    assert error.field is not None
    assert error.field.startswith("albumin_corrected_calcium.max_day")


def test_derived_unknown_concept_or_group_is_refused(tmp_path: Path) -> None:
    error = _load_error(_edited(
        tmp_path, "derived.yaml",
        lambda d: d["diabetes_by_hba1c"].update(concept="hba1cc")))
    assert error.field == "diabetes_by_hba1c.concept"
    assert "hba1cc" in error.message


def test_derived_unconvertible_quantity_is_refused(tmp_path: Path) -> None:
    error = _load_error(_edited(
        tmp_path, "derived.yaml",
        lambda d: d["creatine_kinase_upper_limit"]["default"].update(unit="mmol/L")))
    assert error.field == "creatine_kinase_upper_limit.default"


def test_units_missing_canonical_names_file_and_key(tmp_path: Path) -> None:
    error = _load_error(_edited(tmp_path, "units.yaml",
                                lambda d: d["analytes"]["magnesium"].pop("canonical")))
    assert error.file.endswith("units.yaml")
    assert error.field == "analytes.magnesium.canonical"


def test_units_bad_factor_names_the_unit(tmp_path: Path) -> None:
    error = _load_error(_edited(
        tmp_path, "units.yaml",
        lambda d: d["analytes"]["magnesium"]["to_canonical"].update({"mg/dL": "one/2.431"})))
    assert error.field is not None
    assert error.field.startswith("analytes.magnesium.to_canonical")


def test_text_matches_misspelled_section(tmp_path: Path) -> None:
    error = _load_error(_edited(tmp_path, "text-matches.yaml",
                                lambda d: d.update(texts=d.pop("text"))))
    assert error.file.endswith("text-matches.yaml")
    assert error.field == "texts"


def test_value_set_bad_kind_and_missing_label(tmp_path: Path) -> None:
    error = _load_error(_edited(tmp_path, "valuesets/codes.yaml",
                                lambda d: d["concepts"]["fasciculation"].update(kind="sign")))
    assert error.file.endswith("codes.yaml")
    assert error.field == "concepts.fasciculation.kind"
    error = _load_error(_edited(tmp_path / "again", "valuesets/codes.yaml",
                                lambda d: d["concepts"]["magnesium"].pop("label")))
    assert error.field == "concepts.magnesium.label"


def test_value_set_group_naming_an_unknown_concept(tmp_path: Path) -> None:
    error = _load_error(_edited(tmp_path, "valuesets/codes.yaml",
                                lambda d: d["groups"]["mnd-umn"].append("hyper-reflexia")))
    assert "hyper-reflexia" in error.message


def test_systems_missing_uri(tmp_path: Path) -> None:
    error = _load_error(_edited(tmp_path, "valuesets/systems.yaml",
                                lambda d: d["loinc"].pop("uri")))
    assert error.file.endswith("systems.yaml")
    assert error.field == "loinc.uri"


def test_value_set_schema_accepts_the_v3_shapes() -> None:
    """kinds answer, question and procedure, notes, uncoded_systems: codes.yaml v3 loads."""
    codes = ValueSets.model_validate(
        yaml.safe_load((RULES_DIR / "valuesets" / "codes.yaml").read_text()))
    assert codes.version == 3
    assert codes.concepts["negative-answer"].kind == "answer"
    assert codes.concepts["audit-c"].kind == "question"
    assert codes.concepts["renal-dialysis-procedure"].kind == "procedure"
    assert codes.notes


# --- medicationReference is resolved by ingest -------------------------------------------------

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def _request(rid: str, **drug: Any) -> dict[str, Any]:
    return {"resourceType": "MedicationRequest", "id": rid, "status": "active",
            "intent": "order", "subject": {"reference": "Patient/p1"},
            "authoredOn": "2026-05-01", **drug}


def test_ingest_resolves_medication_references(ruleset: RuleSet) -> None:
    omeprazole = {"coding": [{"system": RXNORM, "code": "7646", "display": "omeprazole"}]}
    resources = [
        {"resourceType": "Patient", "id": "p1"},
        {"resourceType": "Medication", "id": "m1", "code": omeprazole},
        _request("by-id", medicationReference={"reference": "Medication/m1"}),
        _request("contained", contained=[{"resourceType": "Medication", "id": "c",
                                          "code": omeprazole}],
                 medicationReference={"reference": "#c"}),
        _request("display-only", medicationReference={"reference": "Medication/unknown",
                                                      "display": "furosemide 40 mg"}),
    ]
    result = ingest(resources, ruleset)
    (record,) = result.patients
    codes = {r.resource["id"]: r.medication_code for r in record.resources}
    assert codes["by-id"] == omeprazole
    assert codes["contained"] == omeprazole
    assert codes["display-only"] == {"text": "furosemide 40 mg"}
    (assessment,) = evaluate(resources, as_of="2026-06-01", rules=ruleset)
    meds = {(f.reference, f.concept) for f in assessment.facts if f.kind == "medication"}
    assert {("MedicationRequest/by-id", "omeprazole"),
            ("MedicationRequest/contained", "omeprazole")} <= meds
