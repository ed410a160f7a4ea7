"""The installed console script, run as a user would (subprocess), with its exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, shared_data

pytestmark = pytest.mark.cli
SCRIPT = shutil.which("fasciculation-cds") or str(Path(sys.executable).parent / "fasciculation-cds")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=300,
                          check=False)


def test_evaluate_examples_json_is_deterministic() -> None:
    first = run("evaluate", str(REPO / "fhir_examples"), "--as-of", "2026-11-26")
    second = run("evaluate", str(REPO / "fhir_examples"), "--as-of", "2026-11-26")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    records = json.loads(first.stdout)
    assert {"patient", "as_of", "presentation", "findings", "notices", "rules_version"} <= set(
        records[0])


def test_text_summary_lists_most_severe_first() -> None:
    result = run("evaluate", str(REPO / "fhir_examples"), "--as-of", "2026-11-26",
                 "--format", "text")
    assert result.returncode == 0, result.stderr
    assert result.stdout.index("CRITICAL") < result.stdout.index("INFO")


def test_ndjson_output_one_line_per_patient(tmp_path: Path) -> None:
    out = tmp_path / "out.ndjson"
    result = run("evaluate", str(REPO / "fhir_examples"), "--as-of", "2026-11-26",
                 "--format", "ndjson", "--output", str(out))
    assert result.returncode == 0, result.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == len(list((REPO / "fhir_examples").glob("*.json")))


INVALID = sorted(p.name for p in (REPO.parent / "shared/data/invalid").glob("*.json"))


@pytest.mark.parametrize("name", INVALID)
def test_invalid_inputs_exit_2_naming_the_file(name: str) -> None:
    path = shared_data("invalid", name)
    result = run("evaluate", str(path), "--as-of", "2026-11-26", "--strict")
    assert result.returncode == 2, (result.stdout[-500:], result.stderr[-500:])
    assert name in result.stderr
    assert "Traceback" not in result.stderr


def test_one_bad_file_does_not_stop_the_others(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    good = REPO / "fhir_examples" / "benign-fasciculation.json"
    result = run("evaluate", str(bad), str(good), "--as-of", "2026-11-26")
    assert result.returncode == 2
    assert "bad.json" in result.stderr
    records = json.loads(result.stdout)
    assert any("findings" in r for r in records)


def test_bad_ndjson_line_names_the_line(tmp_path: Path) -> None:
    source = shared_data("ndjson", "pathling-9-patients", "Patient.ndjson").read_text()
    broken = tmp_path / "Patient.ndjson"
    broken.write_text(source + '{"resourceType": "Patient", "id": \n')
    result = run("evaluate", str(broken), "--as-of", "2026-11-26")
    assert result.returncode == 2
    assert "line 10" in result.stderr
    assert len(json.loads(result.stdout)) == 10  # 9 patients + 1 error record


def test_not_fhir_and_empty_inputs(tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text("")
    array = tmp_path / "array.json"
    array.write_text("[1, 2]")
    for path in (empty, array):
        result = run("evaluate", str(path))
        assert result.returncode == 2
        assert path.name in result.stderr
        assert "Traceback" not in result.stderr


def test_rules_commands(tmp_path: Path) -> None:
    listed = run("rules", "list")
    assert listed.returncode == 0
    assert "mnd.red-flags" in listed.stdout
    checked = run("rules", "check")
    assert checked.returncode == 0, checked.stderr
    schema = json.loads(run("rules", "schema").stdout)
    assert schema["title"] == "Rule"
    docs = run("rules", "docs", "--out", str(tmp_path / "rules"))
    assert docs.returncode == 0
    assert (tmp_path / "rules" / "mnd.red-flags.md").read_text().startswith("# `mnd.red-flags`")


def test_rules_check_reports_file_and_field(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules, ignore=shutil.ignore_patterns("*.fires", "*.quiet"))
    target = rules / "electrolyte" / "hypokalemia.yaml"
    target.write_text(target.read_text().replace("severity: warning", "severity: severe", 1))
    result = run("rules", "check", str(rules))
    assert result.returncode == 2
    assert "hypokalemia.yaml" in result.stderr
    assert "severity" in result.stderr
