"""Batch evaluation at scale: every input patient yields exactly one row, on both engines."""

from __future__ import annotations

import gzip
import io
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import orjson
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from fasciculation_cds.batch import BatchOptions, run_batch
from fasciculation_cds.batch import outputs as batch_outputs
from fasciculation_cds.batch import partition as batch_partition
from fasciculation_cds.batch import run as batch_run
from fasciculation_cds.batch.rows import ASSESSMENTS_SCHEMA, FINDINGS_SCHEMA, sort_key

from .conftest import REPO, shared_data

AS_OF = "2026-11-26"
MAKE_POPULATION = REPO / "bench" / "population.py"


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, shard_call: int) -> Any:
    """Make the `shard_call`-th shard evaluation raise KeyboardInterrupt; returns the real
    `run_shard` (to put back)."""
    real = batch_run.run_shard
    calls = {"n": 0}

    def interrupted(*args: object) -> object:
        calls["n"] += 1
        if calls["n"] == shard_call:
            raise KeyboardInterrupt
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(batch_run, "run_shard", interrupted)
    return real


def _batch(inputs: list[Path], out: Path, **kwargs: object) -> list[dict[str, object]]:
    options = BatchOptions(inputs=inputs, out=out, as_of=AS_OF, assume_presentation=True,
                           **kwargs)  # type: ignore[arg-type]
    run_batch(options)
    return _rows(out / "assessments.parquet")


def _rows(path: Path) -> list[dict[str, object]]:
    return sorted(pq.read_table(path).to_pylist(), key=lambda r: str(r["patient"]))


def _distinct_patients(folder: Path) -> set[str]:
    found = set()
    for path in folder.glob("*.ndjson"):
        for line in path.read_bytes().splitlines():
            try:
                resource = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if resource.get("resourceType") == "Patient":
                found.add(f"Patient/{resource['id']}")
            for key in ("subject", "patient"):
                if isinstance(resource.get(key), dict):
                    found.add(resource[key]["reference"])
    return found


def test_synthea_bundles_one_row_per_patient_with_declared_schema(tmp_path: Path) -> None:
    rows = _batch([shared_data("synthea")], tmp_path / "out", workers=2)
    assert len(rows) == 43
    assert all(r["status"] == "ok" for r in rows)
    assessments = pq.read_table(tmp_path / "out" / "assessments.parquet")
    findings = pq.read_table(tmp_path / "out" / "findings.parquet")
    assert assessments.schema.equals(ASSESSMENTS_SCHEMA, check_metadata=False)
    assert findings.schema.equals(FINDINGS_SCHEMA, check_metadata=False)
    assert findings.num_rows == sum(len(r["rule_ids"]) for r in rows)  # type: ignore[arg-type,misc]
    run = orjson.loads((tmp_path / "out" / "run.json").read_bytes())
    assert run["counts"]["patients"] == 43
    assert run["rules_version"].startswith("sha256:")
    assert len(run["inputs"]) == 45  # 43 patients + 2 support Bundles (practitioners...)
    assert not (tmp_path / "out" / "_work").exists()


def test_bad_lines_and_orphans_become_error_rows_or_problems(tmp_path: Path) -> None:
    source = shared_data("ndjson", "pathling-9-patients")
    data = tmp_path / "in"
    shutil.copytree(source, data)
    with (data / "Observation.ndjson").open("ab") as handle:
        handle.write(b'{"resourceType": "Observation", "status": \n')  # malformed line
        handle.write(orjson.dumps({
            "resourceType": "Observation", "id": "orphan", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
            "subject": {"reference": "Patient/nobody"},
            "valueQuantity": {"value": 3.1, "unit": "mmol/L"}}) + b"\n")
    rows = _batch([data], tmp_path / "out", workers=2)
    assert {str(r["patient"]) for r in rows} == _distinct_patients(data)
    assert len(rows) == 10
    orphan = next(r for r in rows if r["patient"] == "Patient/nobody")
    assert orphan["status"] == "error"
    assert "no Patient resource" in str(orphan["error"])
    problems = (tmp_path / "out" / "problems.ndjson").read_text()
    assert "Observation.ndjson: line 1503" in problems
    # the broken line could have been anyone's: no other row may say `ok`
    others = [r for r in rows if r["patient"] != "Patient/nobody"]
    assert {r["status"] for r in others} == {"partial"}
    assert all("Observation.ndjson: line 1503" in str(r["error"]) for r in others)


@pytest.mark.parametrize("as_of", [AS_OF, "auto"])
def test_summaries_written_out_early_give_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_of: str
) -> None:
    """The router writes out its per-patient summaries of what no rule uses every
    SUMMARIES_HELD patients (memory flat in the patients of a file): the rows stay the same,
    down to where an orphan's first resource is named."""
    data = tmp_path / "in"
    shutil.copytree(shared_data("ndjson", "pathling-9-patients"), data)
    orphan: dict[str, object] = {"resourceType": "Observation", "status": "final",
                                 "subject": {"reference": "Patient/nobody"},
                                 "effectiveDateTime": "2026-11-01T10:00:00Z"}
    with (data / "Observation.ndjson").open("ab") as handle:
        handle.write(orjson.dumps({**orphan, "id": "pulse", "code": {"coding": [
            {"system": "http://loinc.org", "code": "8867-4"}]},
            "valueQuantity": {"value": 70, "unit": "/min"}}) + b"\n")
        # another patient's: with SUMMARIES_HELD = 1, the orphan's summary is written here
        handle.write(orjson.dumps({**orphan, "id": "pulse-2", "code": {"coding": [
            {"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/8ee183e2-b3c0-4151-be94-b945d6aa8c6d"},
            "valueQuantity": {"value": 72, "unit": "/min"}}) + b"\n")
        handle.write(orjson.dumps({**orphan, "id": "k", "code": {"coding": [
            {"system": "http://loinc.org", "code": "2823-3"}]},
            "valueQuantity": {"value": 3.1, "unit": "mmol/L"}}) + b"\n")

    def run(out: Path) -> dict[str, bytes]:
        run_batch(BatchOptions(inputs=[data], out=out, as_of=as_of, workers=1, shards=3,
                               output_format="ndjson"))
        return {name: (out / name).read_bytes()
                for name in ("assessments.ndjson", "findings.ndjson")}

    held = run(tmp_path / "held")
    monkeypatch.setattr(batch_partition, "SUMMARIES_HELD", 1)
    assert run(tmp_path / "written-out") == held
    nobody = [orjson.loads(line) for line in held["assessments.ndjson"].splitlines()
              if b"Patient/nobody" in line]
    assert nobody[0]["status"] == "error"
    # named by its first resource a rule can use, wherever the other was summed up
    assert "Observation.ndjson: line 1505: 2 resource(s) refer to Patient/nobody" in \
        nobody[0]["error"]


def test_gzip_input_gives_the_same_rows(tmp_path: Path) -> None:
    source = shared_data("ndjson", "pathling-9-patients")
    zipped = tmp_path / "gz"
    zipped.mkdir()
    for path in source.glob("*.ndjson"):
        (zipped / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))
    plain = _batch([source], tmp_path / "plain", workers=1)
    compressed = _batch([zipped], tmp_path / "zipped", workers=1)
    assert plain == compressed


def test_bundles_and_ndjson_of_the_same_patients_agree(tmp_path: Path) -> None:
    for fmt in ("bundles", "ndjson"):
        subprocess.run([sys.executable, str(MAKE_POPULATION), "--patients", "60", "--seed", "7",
                        "--format", fmt, "--out", str(tmp_path / fmt)], check=True,
                       capture_output=True)
    from_bundles = _batch([tmp_path / "bundles"], tmp_path / "a", workers=2)
    from_ndjson = _batch([tmp_path / "ndjson"], tmp_path / "b", workers=2)
    assert len(from_bundles) == 60
    assert from_bundles == from_ndjson


def test_resume_after_interruption_matches_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = [shared_data("synthea")]
    whole = _batch(source, tmp_path / "whole", workers=1, shards=8)
    real = _interrupt_at(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        _batch(source, tmp_path / "resumed", workers=1, shards=8)
    assert not (tmp_path / "resumed" / "assessments.parquet").exists()
    parts = list((tmp_path / "resumed" / "_work" / "parts").glob("assessments-*"))
    assert len(parts) == 3
    monkeypatch.setattr(batch_run, "run_shard", real)
    counted = {"n": 0}

    def counting(*args: object) -> object:
        counted["n"] += 1
        return real(*args)

    monkeypatch.setattr(batch_run, "run_shard", counting)
    resumed = _batch(source, tmp_path / "resumed", workers=1, shards=8, resume=True)
    assert counted["n"] == 5  # the 3 finished shards are not redone
    assert resumed == whole


def test_merge_reads_a_bounded_number_of_parts_and_the_bytes_do_not_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory stays flat in the number of shards: the merge never reads more than
    MERGE_FAN_IN parts at once (more are merged into runs first), with the same bytes."""
    source = [shared_data("synthea")]

    def run(out: Path, shards: int, fmt: Literal["parquet", "ndjson"]) -> None:
        run_batch(BatchOptions(inputs=source, out=out, as_of=AS_OF, workers=1, shards=shards,
                               output_format=fmt))

    formats: tuple[Literal["parquet", "ndjson"], ...] = ("parquet", "ndjson")
    for fmt in formats:
        run(tmp_path / f"one-{fmt}", 1, fmt)
    real = batch_outputs._lines
    reading = {"now": 0, "most": 0}

    def counted(path: Path) -> Iterator[dict[str, object]]:
        reading["now"] += 1
        reading["most"] = max(reading["most"], reading["now"])
        try:
            yield from real(path)
        finally:
            reading["now"] -= 1

    monkeypatch.setattr(batch_outputs, "_lines", counted)
    monkeypatch.setattr(batch_outputs, "MERGE_FAN_IN", 2)
    for fmt in formats:
        run(tmp_path / f"many-{fmt}", 9, fmt)
        for table in ("assessments", "findings"):
            name = f"{table}.{fmt}"
            assert (tmp_path / f"many-{fmt}" / name).read_bytes() == \
                (tmp_path / f"one-{fmt}" / name).read_bytes()
    assert reading["most"] == 2


def test_progress_counts_shards_and_patients_also_after_a_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = [shared_data("ndjson", "pathling-9-patients")]
    real = _interrupt_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        _batch(source, tmp_path / "out", workers=1, shards=4)
    parts = list((tmp_path / "out" / "_work" / "parts").glob("assessments-*"))
    done = sum(len(p.read_bytes().splitlines()) for p in parts)
    monkeypatch.setattr(batch_run, "run_shard", real)
    log = io.StringIO()
    run_batch(BatchOptions(inputs=source, out=tmp_path / "out", as_of=AS_OF, workers=1,
                           shards=4, assume_presentation=True, resume=True),
              Console(file=log, width=200))
    lines = [line for line in log.getvalue().splitlines() if "patients" in line]
    assert len(parts) == 2
    assert f"shards 2/4, patients {done} (0/s)" in lines[0]
    assert "shards 4/4, patients 9 (" in lines[-1]


def test_resume_refuses_different_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = [shared_data("ndjson", "pathling-9-patients")]

    def stop(*args: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(batch_run, "run_shard", stop)
    with pytest.raises(KeyboardInterrupt):
        _batch(source, tmp_path / "out", workers=1)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="--resume refused"):
        run_batch(BatchOptions(inputs=source, out=tmp_path / "out", as_of="2020-01-01",
                               resume=True, workers=1))


def test_ndjson_output_format(tmp_path: Path) -> None:
    run_batch(BatchOptions(inputs=[shared_data("ndjson", "pathling-9-patients")],
                           out=tmp_path / "out", as_of=AS_OF, output_format="ndjson",
                           workers=1))
    lines = (tmp_path / "out" / "assessments.ndjson").read_bytes().splitlines()
    assert len(lines) == 9
    assert set(orjson.loads(lines[0])) == set(ASSESSMENTS_SCHEMA.names)


@pytest.mark.spark
def test_spark_engine_gives_identical_rows(tmp_path: Path) -> None:
    pytest.importorskip("pyspark")
    for folder in ("ndjson/pathling-9-patients", "synthea"):
        local = _batch([shared_data(folder)], tmp_path / "local" / folder, workers=2)
        spark = _batch([shared_data(folder)], tmp_path / "spark" / folder, workers=2,
                       engine="spark")
        assert local == spark
        local_findings = _rows(tmp_path / "local" / folder / "findings.parquet")
        spark_findings = _rows(tmp_path / "spark" / folder / "findings.parquet")
        assert sorted(local_findings, key=sort_key) == sorted(spark_findings, key=sort_key)


def test_batch_cli_exit_codes(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "fasciculation-cds"
    ok = subprocess.run([str(script), "batch", str(shared_data("ndjson", "pathling-9-patients")),
                         "--out", str(tmp_path / "ok"), "--as-of", AS_OF, "--workers", "1"],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "batch summary" in ok.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "Patient.ndjson").write_text('{"resourceType": "Patient", "id": "a"}\n{oops\n')
    failed = subprocess.run([str(script), "batch", str(bad), "--out", str(tmp_path / "b"),
                             "--as-of", AS_OF, "--workers", "1"],
                            capture_output=True, text=True, check=False)
    assert failed.returncode == 2


def test_bulk_manifest_named_on_its_own(tmp_path: Path) -> None:
    source = shared_data("ndjson", "pathling-9-patients")
    export = tmp_path / "export"
    shutil.copytree(source, export)
    manifest = {"transactionTime": "2024-01-01T00:00:00Z", "request": "$export",
                "requiresAccessToken": False, "error": [],
                "output": [{"type": p.stem, "url": p.name}
                           for p in sorted(export.glob("*.ndjson"))]}
    (export / "manifest.json").write_bytes(orjson.dumps(manifest))
    from_manifest = _batch([export / "manifest.json"], tmp_path / "m", workers=2)
    from_folder = _batch([export], tmp_path / "f", workers=2)  # manifest.json skipped in folders
    assert len(from_manifest) == 9
    assert from_manifest == from_folder
    run = orjson.loads((tmp_path / "m" / "run.json").read_bytes())
    assert len(run["inputs"]) == 3
