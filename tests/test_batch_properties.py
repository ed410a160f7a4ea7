"""Properties of batch: its rows are `evaluate` of each patient's records, however an export
splits them across files; and what it leaves unread could never have been used."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fasciculation_cds import evaluate
from fasciculation_cds.batch import BatchOptions, run_batch
from fasciculation_cds.ingest import READ_TYPES, is_relevant
from fasciculation_cds.ruleset import RuleSet

from .test_properties import AS_OF, LABS, MEDICATIONS, before_as_of, patients

Resource = dict[str, Any]

BATCH = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.function_scoped_fixture])


def _encounter(rid: str, patient: str, minutes: int) -> Resource:
    """A resource no rule reads, with a time (it still counts for --as-of auto)."""
    moment = before_as_of(minutes).isoformat().replace("+00:00", "Z")
    return {"resourceType": "Encounter", "id": rid, "status": "finished",
            "class": {"code": "AMB"}, "subject": {"reference": f"Patient/{patient}"},
            "period": {"start": moment, "end": moment}}


@st.composite
def exports(draw: st.DrawFn) -> tuple[list[list[Resource]], list[tuple[str, list[Resource]]]]:
    """Patients, and files (name, resources in file order) holding all of their resources."""
    count = draw(st.integers(1, 3))
    people = [draw(patients(f"p{index}")) for index in range(count)]
    for index, person in enumerate(people):
        for number in range(draw(st.integers(0, 2))):
            person.append(_encounter(f"p{index}-enc-{number}", f"p{index}",
                                     draw(st.integers(1, 900 * 24 * 60))))
    everything = [r for person in people for r in person]
    everything = draw(st.permutations(everything))
    # Bulk Data style: one file per type (several for some), or mixed files without a type name
    by_type = draw(st.booleans())
    files: dict[str, list[Resource]] = {}
    for resource in everything:
        if by_type:
            name = f"{resource['resourceType']}.{draw(st.integers(0, 1)):03d}.ndjson"
        else:
            name = f"part-{draw(st.integers(0, 3))}.ndjson"
        files.setdefault(name, []).append(resource)
    gzipped = draw(st.sets(st.sampled_from(sorted(files))))
    return people, [(f"{name}.gz" if name in gzipped else name, resources)
                    for name, resources in sorted(files.items())]


@BATCH
@given(export=exports(), as_of=st.sampled_from([AS_OF, "auto"]),
       assume_presentation=st.booleans(), shards=st.integers(1, 3))
def test_batch_rows_equal_evaluate_of_each_patient(
    ruleset: RuleSet, export: tuple[list[list[Resource]], list[tuple[str, list[Resource]]]],
    as_of: str, assume_presentation: bool, shards: int,
) -> None:
    people, files = export
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "export"
        folder.mkdir()
        for name, resources in files:
            payload = b"".join(orjson.dumps(r) + b"\n" for r in resources)
            (folder / name).write_bytes(gzip.compress(payload) if name.endswith(".gz")
                                        else payload)
        out = Path(tmp) / "out"
        summary = run_batch(BatchOptions(inputs=[folder], out=out, as_of=as_of, workers=1,
                                         shards=shards, assume_presentation=assume_presentation))
        rows = pq.read_table(out / "assessments.parquet").to_pylist()
    assert summary.problems == []
    assert len(rows) == len(people)
    by_patient = {row["patient"]: row for row in rows}
    for person in people:
        expected = evaluate(person, as_of=as_of, assume_presentation=assume_presentation,
                            rules=ruleset)
        assert len(expected) == 1
        row = by_patient[expected[0].patient.reference]
        assert row["status"] == "ok"
        assert orjson.loads(row["assessment"]) == expected[0].to_json_dict()
        assert row["rule_ids"] == [f.rule_id for f in expected[0].findings]


_ALL_CODINGS = [
    *({"system": "http://loinc.org", "code": lab.loinc, "display": lab.display}
      for lab in LABS.values()),
    *({"system": system, "code": code, "display": display}
      for system, code, display in MEDICATIONS.values()),
    {"system": "http://snomed.info/sct", "code": "185349003", "display": "Encounter"},
]
_TYPES = sorted({*READ_TYPES, "Encounter", "Claim", "ExplanationOfBenefit", "Procedure",
                 "DiagnosticReport", "Immunization", "AllergyIntolerance", "CarePlan"})
_FIELDS = ["code", "medicationCodeableConcept", "type", "vaccineCode", "category"]


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(resource_type=st.sampled_from(_TYPES),
       fields=st.dictionaries(st.sampled_from(_FIELDS), st.fixed_dictionaries({
           "coding": st.lists(st.sampled_from(_ALL_CODINGS), max_size=2),
           "text": st.sampled_from(["", "muscle cramp", "fasciculation", "omeprazole"])})),
       reference=st.booleans())
def test_files_of_types_no_rule_reads_hold_nothing_a_rule_could_use(
    ruleset: RuleSet, resource_type: str, fields: dict[str, Any], reference: bool
) -> None:
    """A type outside READ_TYPES is never relevant, whatever codes or text it carries: so a
    Bulk Data file declared to hold only such types can be left unread."""
    resource: Resource = {"resourceType": resource_type, **fields}
    if reference:
        resource["medicationReference"] = {"reference": "Medication/m"}
    if is_relevant(resource, ruleset.terminology):
        assert resource_type in READ_TYPES
