"""The shape-cached validator passes exactly what full fhir.resources validation passes: on the
real records, and on generated changes to the elements its short path validates one by one."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fasciculation_cds.fhir_validation import VARYING_ELEMENTS, ShapeValidator
from fasciculation_cds.ingest import is_relevant
from fasciculation_cds.read_elements import read_part
from fasciculation_cds.rule_fixtures import fixture_cases
from fasciculation_cds.ruleset import RuleSet

from .conftest import EXAMPLES, RULES_DIR, bundle_files, read_json

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _passes_in_full(part: dict[str, Any]) -> bool:
    try:
        get_fhir_model_class(part["resourceType"]).model_validate(part)
    except (ValidationError, ValueError, TypeError):
        return False
    return True


def _passes(validator: ShapeValidator, part: dict[str, Any]) -> bool:
    try:
        validator.validate(part)
    except (ValidationError, ValueError, TypeError):
        return False
    return True


def _read_parts(ruleset: RuleSet) -> Iterator[dict[str, Any]]:
    paths = [c.path for c in fixture_cases(RULES_DIR)]
    paths += sorted(EXAMPLES.glob("*.json")) + bundle_files("synthea")
    for path in paths:
        for entry in read_json(path).get("entry", []):
            resource = entry["resource"]
            if is_relevant(resource, ruleset.terminology):
                yield read_part(resource)


def test_real_records_pass_and_fail_as_in_full(ruleset: RuleSet) -> None:
    validator = ShapeValidator()
    parts = list(_read_parts(ruleset))
    assert len(parts) > 1000
    for _ in range(2):  # the second round takes the short path for every known shape
        for part in parts:
            assert _passes(validator, part) == _passes_in_full(part), part.get("id")


SEEDS: list[dict[str, Any]] = [
    {"resourceType": "Observation", "id": "k1", "status": "final",
     "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
     "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-03-01T10:00:00Z",
     "issued": "2024-03-01T11:00:00.000Z",
     "valueQuantity": {"value": 3.1, "unit": "mmol/L", "system": "http://unitsofmeasure.org",
                       "code": "mmol/L"},
     "referenceRange": [{"low": {"value": 3.5, "unit": "mmol/L"}}]},
    {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
     "code": {"coding": [{"system": "http://snomed.info/sct", "code": "55300003"}]},
     "clinicalStatus": {"coding": [{"code": "active"}]}, "onsetDateTime": "2023-05",
     "recordedDate": "2023-05-02", "abatementPeriod": {"start": "2024-01-01"}},
    {"resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order",
     "subject": {"reference": "Patient/p1"}, "authoredOn": "2024-01-01",
     "medicationReference": {"reference": "Medication/x"},
     "dispenseRequest": {"validityPeriod": {"end": "2025-01-01"}}},
    {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1960-02-29"},
    {"resourceType": "Procedure", "id": "d1", "status": "completed",
     "subject": {"reference": "Patient/p1"}, "code": {"text": "dialysis"},
     "performedPeriod": {"start": "2024-01-01T08:00:00+01:00"}},
]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False),
    st.sampled_from(["", "x", "2024", "2024-02-30", "2024-13-01", "2024-01-01T25:00:00Z",
                     "2024-01-01T10:00:00", "2024-01-01T10:00:00Z", "1960-02-29",
                     "Patient/p1", "final", " padded ", "12:30:00", "3.1", "true"]),
    st.text(max_size=8))
keys = st.sampled_from(["reference", "display", "value", "unit", "system", "code", "start",
                        "end", "low", "high", "id", "extension", "comparator", "validityPeriod",
                        "numerator", "denominator", "type", "identifier", "bogus"])
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=4)), max_leaves=8)
varying_names = st.sampled_from(sorted(VARYING_ELEMENTS))


@PROPERTY
@given(seed=st.sampled_from(SEEDS), data=st.data())
def test_generated_changes_to_varying_elements_pass_only_if_they_pass_in_full(
        seed: dict[str, Any], data: st.DataObject) -> None:
    validator = ShapeValidator()
    assert _passes(validator, seed)  # the shape is known now
    own = sorted(k for k in seed if k in VARYING_ELEMENTS)
    # mostly new values for the seed's own varying elements (the short path), sometimes an
    # element added (a new shape: the full path)
    names = st.one_of(st.sampled_from(own), st.sampled_from(own), varying_names)
    changed = copy.deepcopy(seed)
    for name, value in data.draw(st.lists(st.tuples(names, json_values), min_size=1,
                                          max_size=3)):
        changed[name] = value
    assert _passes(validator, changed) == _passes_in_full(changed)


@pytest.mark.parametrize("seed", SEEDS, ids=[s["resourceType"] for s in SEEDS])
def test_a_bad_varying_value_is_reported_as_full_validation_words_it(
        seed: dict[str, Any]) -> None:
    validator = ShapeValidator()
    validator.validate(seed)
    broken = {**seed, "id": "not an id!"}
    with pytest.raises(ValidationError) as short:
        validator.validate(broken)
    with pytest.raises(ValidationError) as full:
        get_fhir_model_class(seed["resourceType"]).model_validate(broken)
    assert short.value.errors() == full.value.errors()


@pytest.mark.parametrize("odd", [float("nan"), float("inf"), float("-inf")])
def test_a_value_that_is_not_plain_json_never_borrows_a_known_shape(odd: float) -> None:
    """A null high passed; NaN or an infinity in its place is refused, as in full."""
    validator = ShapeValidator()
    passed = copy.deepcopy(SEEDS[0])
    passed["referenceRange"] = [{"high": {"value": None, "unit": "mmol/L"}}]
    validator.validate(passed)
    odd_one = copy.deepcopy(passed)
    odd_one["referenceRange"][0]["high"]["value"] = odd
    assert not _passes_in_full(odd_one)
    assert not _passes(validator, odd_one)


def test_a_python_object_where_json_has_a_string_takes_the_full_path() -> None:
    from datetime import datetime, timezone

    validator = ShapeValidator()
    passed = copy.deepcopy(SEEDS[0])
    passed["referenceRange"] = [{"text": "2024-01-01T00:00:00+00:00"}]
    validator.validate(passed)
    odd_one = copy.deepcopy(passed)
    odd_one["referenceRange"][0]["text"] = datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert _passes(validator, odd_one) == _passes_in_full(odd_one)
