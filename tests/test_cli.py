"""The `fasciculation-cds` command.

Most tests call the typer app in-process (`CliRunner`): same parsing, output and exit codes,
without a Python start-up each. A few run the installed console script in a subprocess, where
only a real process proves something: the script exists, exit codes reach the shell, and bad
input never ends in a traceback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from fasciculation_cds import evaluate
from fasciculation_cds.assessment import dumps_assessments
from fasciculation_cds.cli import app
from fasciculation_cds.ruleset import RuleSet

from .conftest import REPO, SHARED_DATA, shared_data

pytestmark = pytest.mark.cli
SCRIPT = shutil.which("fasciculation-cds") or str(Path(sys.executable).parent / "fasciculation-cds")
EXAMPLES = REPO / "fhir_examples"
AS_OF = "2026-11-26"


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=300,
                          check=False)


# --- the console script, in a real process --------------------------------------------------


def test_console_script_evaluates_and_exits_0() -> None:
    result = run("evaluate", str(EXAMPLES / "benign-fasciculation.json"), "--as-of", AS_OF)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["as_of"] == AS_OF


def test_console_script_bad_input_exits_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = run("evaluate", str(bad), str(EXAMPLES / "benign-fasciculation.json"),
                 "--as-of", AS_OF)
    assert result.returncode == 2
    assert "bad.json" in result.stderr
    assert "Traceback" not in result.stderr
    assert any("findings" in r for r in json.loads(result.stdout))


def test_console_script_bad_rules_exit_2(tmp_path: Path) -> None:
    result = run("rules", "check", str(tmp_path / "no-such-rules"))
    assert result.returncode == 2
    assert "no-such-rules" in result.stderr
    assert "Traceback" not in result.stderr


# --- evaluate ---------------------------------------------------------------------------------


def test_json_output_is_dumps_assessments(ruleset: RuleSet) -> None:
    """The CLI writes exactly the bytes of `dumps_assessments`, which the determinism
    properties hold; the same run twice gives the same bytes."""
    first = cli("evaluate", str(EXAMPLES), "--as-of", AS_OF)
    second = cli("evaluate", str(EXAMPLES), "--as-of", AS_OF)
    assert first.exit_code == 0, first.stderr
    assert first.stdout_bytes == second.stdout_bytes
    expected = dumps_assessments(evaluate(EXAMPLES, as_of=AS_OF, rules=ruleset,
                                          unrecognized=True)) + b"\n"
    assert first.stdout_bytes == expected
    records = json.loads(first.stdout)
    assert {"patient", "as_of", "presentation", "findings", "notices", "rules_version"} <= set(
        records[0])


def test_ndjson_output_one_line_per_patient(tmp_path: Path, ruleset: RuleSet) -> None:
    out = tmp_path / "out.ndjson"
    result = cli("evaluate", str(EXAMPLES), "--as-of", AS_OF, "--format", "ndjson",
                 "--output", str(out))
    assert result.exit_code == 0, result.stderr
    assert len(out.read_text().splitlines()) == len(list(EXAMPLES.glob("*.json")))
    assert out.read_bytes() == dumps_assessments(evaluate(EXAMPLES, as_of=AS_OF, rules=ruleset,
                                                          unrecognized=True), lines=True)


def test_text_summary_lists_most_severe_first(tmp_path: Path) -> None:
    result = cli("evaluate", str(EXAMPLES), "--as-of", AS_OF, "--format", "text")
    assert result.exit_code == 0, result.stderr
    panels = result.stdout.split("╭─")[1:]
    assert len(panels) == len(list(EXAMPLES.glob("*.json")))
    badges = (" CRITICAL ", " WARNING ", " INFO ", "No findings.")
    tops = [min(i for i, badge in enumerate(badges) if badge in panel) for panel in panels]
    assert tops == sorted(tops)  # the patient with the most severe finding first
    assert tops[0] == 0
    out = tmp_path / "summary.txt"
    assert cli("evaluate", str(EXAMPLES), "--as-of", AS_OF, "--format", "text",
               "-o", str(out)).exit_code == 0
    assert max(len(line) for line in out.read_text().splitlines()) == 110  # a file: 110 columns


INVALID = sorted(p.name for p in (SHARED_DATA / "invalid").glob("*.json"))


@pytest.mark.parametrize("name", INVALID)
def test_invalid_inputs_exit_2_naming_the_file(name: str) -> None:
    path = shared_data("invalid", name)
    result = cli("evaluate", str(path), "--as-of", AS_OF, "--strict")
    assert result.exit_code == 2, (result.stdout[-500:], result.stderr[-500:])
    assert name in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_error_rows_follow_the_assessments(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = cli("evaluate", str(bad), str(EXAMPLES / "benign-fasciculation.json"),
                 "--as-of", AS_OF, "--format", "ndjson")
    assert result.exit_code == 2
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert "findings" in rows[0]
    assert rows[-1]["error"] == "input"
    assert "bad.json" in rows[-1]["message"]


def test_bad_ndjson_line_names_the_line(tmp_path: Path) -> None:
    source = shared_data("ndjson", "pathling-9-patients", "Patient.ndjson").read_text()
    broken = tmp_path / "Patient.ndjson"
    broken.write_text(source + '{"resourceType": "Patient", "id": \n')
    result = cli("evaluate", str(broken), "--as-of", AS_OF)
    assert result.exit_code == 2
    assert "line 10" in result.stderr
    assert len(json.loads(result.stdout)) == 10  # 9 patients + 1 error record


def test_not_fhir_and_empty_inputs(tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text("")
    array = tmp_path / "array.json"
    array.write_text("[1, 2]")
    for path in (empty, array):
        result = cli("evaluate", str(path))
        assert result.exit_code == 2
        assert path.name in result.stderr


def test_bad_as_of_is_bad_input() -> None:
    result = cli("evaluate", str(EXAMPLES), "--as-of", "yesterday")
    assert result.exit_code == 2
    assert "--as-of" in result.stderr


# --- report -----------------------------------------------------------------------------------


def test_report_formats_on_standard_output(ruleset: RuleSet) -> None:
    markdown = cli("report", str(EXAMPLES), "--as-of", AS_OF, "--format", "markdown")
    assert markdown.exit_code == 0, markdown.stderr
    notes = markdown.stdout.split("\n---\n\n")
    assert len(notes) == len(list(EXAMPLES.glob("*.json")))
    fhir = cli("report", str(EXAMPLES / "benign-fasciculation.json"), "--as-of", AS_OF,
               "--format", "fhir")
    assert json.loads(fhir.stdout)["resourceType"] == "Bundle"
    page = cli("report", str(EXAMPLES / "benign-fasciculation.json"), "--as-of", AS_OF)
    assert page.stdout.startswith("<!DOCTYPE html>")
    several = cli("report", str(EXAMPLES), "--as-of", AS_OF)
    assert several.exit_code == 2
    assert "--out" in several.stderr


def test_report_to_a_folder_and_to_files(tmp_path: Path) -> None:
    site = cli("report", str(EXAMPLES), "--as-of", AS_OF, "--out", str(tmp_path / "site"))
    assert site.exit_code == 0, site.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    assert len(list((tmp_path / "site").glob("*.html"))) == len(list(EXAMPLES.glob("*.json"))) + 1
    note = tmp_path / "note.md"
    assert cli("report", str(EXAMPLES), "--as-of", AS_OF, "--format", "markdown",
               "--out", str(note)).exit_code == 0
    on_stdout = cli("report", str(EXAMPLES), "--as-of", AS_OF, "--format", "markdown")
    assert note.read_text() == on_stdout.stdout


# --- rules ------------------------------------------------------------------------------------


def test_rules_commands(tmp_path: Path) -> None:
    listed = cli("rules", "list")
    assert listed.exit_code == 0
    assert "mnd.red-flags" in listed.stdout
    checked = cli("rules", "check")
    assert checked.exit_code == 0, checked.stderr
    schema = json.loads(cli("rules", "schema").stdout)
    assert schema["title"] == "Rule"
    docs = cli("rules", "docs", "--out", str(tmp_path / "rules"))
    assert docs.exit_code == 0
    assert (tmp_path / "rules" / "mnd.red-flags.md").read_text().startswith("# `mnd.red-flags`")


def test_rules_check_reports_file_and_field(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules, ignore=shutil.ignore_patterns("*.fires", "*.quiet"))
    target = rules / "electrolyte" / "hypokalemia.yaml"
    target.write_text(target.read_text().replace("severity: warning", "severity: severe", 1))
    result = cli("rules", "check", str(rules))
    assert result.exit_code == 2
    assert "hypokalemia.yaml" in result.stderr
    assert "severity" in result.stderr
