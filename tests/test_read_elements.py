"""Only the elements listed in read_elements.py are validated before the rules see a resource, so
normalization must read nothing else: recorded here on every rule fixture, every example patient
and the Synthea records, with findings unchanged by the recording."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fasciculation_cds import evaluate_each
from fasciculation_cds.assessment import Assessment
from fasciculation_cds.evaluate import evaluator_for, new_grouper
from fasciculation_cds.ingest import PatientRecord
from fasciculation_cds.read_elements import READ_ELEMENTS, is_read, read_part
from fasciculation_cds.rule_fixtures import DRAFT_TAG, fixture_cases
from fasciculation_cds.ruleset import RuleSet
from fasciculation_cds.sources import RawResource

from .conftest import EXAMPLES, RULES_DIR, bundle_files, read_json, shared_data


class Recording(Mapping[str, Any]):
    """A resource that notes each top-level element looked up (get, [], in all come here)."""

    def __init__(self, data: Mapping[str, Any], seen: set[tuple[str, str]]) -> None:
        self._data, self._seen = data, seen
        self._type = str(data.get("resourceType"))

    def __getitem__(self, key: str) -> Any:
        self._seen.add((self._type, key))
        return self._data[key]

    def __iter__(self) -> Iterator[str]:  # key scans (value*, abatement*) then look values up
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def _folder_bundle(folder: Path) -> dict[str, Any]:
    """The resources of a folder of single resources and NDJSON files, as one Bundle."""
    resources = []
    for path in sorted(folder.rglob("*")):
        if path.suffix == ".json":
            resources.append(json.loads(path.read_text(encoding="utf-8")))
        elif path.suffix == ".ndjson":
            resources += [json.loads(line) for line in path.read_text().splitlines() if line]
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": r} for r in resources if r["resourceType"] != "Bundle"]}


def _bundles() -> Iterator[tuple[str, dict[str, Any], str]]:
    """(name, bundle, as_of) for every fixture, example and Synthea record, and the real-world
    records of other systems (dispensed and administered drugs)."""
    for case in fixture_cases(RULES_DIR):
        bundle = json.loads(case.path.read_text(encoding="utf-8"))
        yield case.path.name, bundle, bundle["timestamp"]
    for path in sorted(EXAMPLES.glob("*.json")):
        yield path.name, json.loads(path.read_text(encoding="utf-8")), "auto"
    for path in bundle_files("synthea"):
        yield path.name, read_json(path), "auto"
    for folder, as_of in (("inferno-bulk", "1975-05-01"),
                          ("ecqm/CMS816HHHypoFHIR", "2026-12-17T00:00:00Z")):
        yield folder, _folder_bundle(shared_data("real-world", folder)), as_of


def _records(bundle: dict[str, Any], as_of: str, ruleset: RuleSet) -> list[PatientRecord]:
    grouper = new_grouper(ruleset, as_of, strict=False)
    for index, entry in enumerate(bundle.get("entry", [])):
        resource = entry["resource"]
        draft = DRAFT_TAG in resource.get("meta", {}).get("tag", [])
        grouper.add(RawResource(resource, "bundle", f"entry[{index}]", entry.get("fullUrl"),
                                draft_order=draft))
    return grouper.finish().patients


def _summary(outcome: Any) -> object:
    if not isinstance(outcome, Assessment):
        return outcome
    return [(f.rule_id, f.severity, f.summary) for f in outcome.findings]


def test_normalization_reads_only_the_validated_elements(ruleset: RuleSet) -> None:
    evaluator = evaluator_for(ruleset)
    seen: set[tuple[str, str]] = set()
    bundles = errors = partial = 0
    for name, bundle, as_of in _bundles():
        bundles += 1
        for record in _records(bundle, as_of, ruleset):
            plain = evaluator.assess(record, as_of, assume_presentation=True)
            if record.patient is not None:
                record.patient = replace(record.patient,
                                         resource=Recording(record.patient.resource, seen))
            record.resources = [replace(r, resource=Recording(r.resource, seen))
                                for r in record.resources]
            recorded = evaluator.assess(record, as_of, assume_presentation=True)
            assert _summary(recorded) == _summary(plain), name
            errors += not isinstance(plain, Assessment)
            partial += isinstance(plain, Assessment) and bool(plain.partial)
    assert bundles > 500
    assert errors == 0
    assert partial == 1  # inferno-bulk: a MedicationRequest naming a Medication not exported
    unlisted = sorted(f"{kind}.{element}" for kind, element in seen
                      if kind in READ_ELEMENTS and not is_read(kind, element))
    assert not unlisted, f"read but not validated (add to read_elements.py): {unlisted}"
    # the list is no wider than it needs to be, either: every type it names is read (a
    # report's elements are read by ingest, which gives its results their time and subject;
    # no real bundle holds a FamilyMemberHistory of ALS/MND: tests/test_text_context.py reads one)
    assert {kind for kind, _ in seen} >= set(READ_ELEMENTS) - {
        "Medication", "DiagnosticReport", "FamilyMemberHistory"}


def test_read_part_keeps_choice_elements_and_drops_the_rest() -> None:
    observation = {"resourceType": "Observation", "id": "a", "status": "final",
                   "code": {"text": "K"}, "valueQuantity": {"value": 3.1},
                   "effectiveDateTime": "2024-01-01", "text": {"div": "<div/>"},
                   "encounter": {"reference": "Encounter/1"}, "_status": {"id": "s"},
                   "_issued": {"id": "i"}, "_effectiveDateTime": {"id": "e"}, "codeExtra": 1}
    # codeExtra is no element of Observation: kept, so that validation refuses it
    assert set(read_part(observation)) == {"resourceType", "id", "status", "code",
                                           "valueQuantity", "effectiveDateTime", "_status",
                                           "_issued", "_effectiveDateTime", "codeExtra"}
    unknown = {"resourceType": "Claim", "id": "c", "status": "active"}
    assert read_part(unknown) == unknown


@pytest.mark.parametrize("strict", [False, True])
def test_a_bad_element_no_rule_reads_fails_only_under_strict(strict: bool,
                                                             ruleset: RuleSet) -> None:
    bundle = json.loads((EXAMPLES / "hypokalemia-hydrochlorothiazide.json").read_text())
    observation = next(e["resource"] for e in bundle["entry"]
                       if e["resource"]["resourceType"] == "Observation")
    observation["encounter"] = "Encounter/1"  # a Reference must be an object
    outcomes = list(evaluate_each(bundle, as_of="auto", rules=ruleset, strict=strict))
    assert any(not isinstance(o, Assessment) for o in outcomes) is strict


def test_a_bad_element_a_rule_reads_is_unreadable_or_with_strict_an_error_row(
        ruleset: RuleSet) -> None:
    bundle = json.loads((EXAMPLES / "hypokalemia-hydrochlorothiazide.json").read_text())
    observation = next(e["resource"] for e in bundle["entry"]
                       if e["resource"]["resourceType"] == "Observation"
                       and "valueQuantity" in e["resource"])
    observation["valueQuantity"]["value"] = "low"
    (outcome,) = list(evaluate_each(bundle, as_of="auto", rules=ruleset))
    assert isinstance(outcome, Assessment)
    assert outcome.partial is True
    (notice,) = [n for n in outcome.notices if n.code == "resource-unreadable"]
    assert notice.reference == f"Observation/{observation['id']}"
    assert "valueQuantity" in notice.message
    errors = [o for o in evaluate_each(bundle, as_of="auto", rules=ruleset, strict=True)
              if not isinstance(o, Assessment)]
    assert errors
    assert "valueQuantity" in errors[0].message

