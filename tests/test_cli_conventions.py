"""The command behaves as command-line users expect: --version, `python -m`, `-` for standard
input, help on every option, the example patients on demand, completion."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from fasciculation_cds import __version__
from fasciculation_cds.cli import app

from .conftest import REPO

pytestmark = pytest.mark.cli
EXAMPLES = REPO / "fhir_examples"
AS_OF = "2026-11-26"


def _module(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fasciculation_cds", *args], input=stdin,
                          capture_output=True, text=True, timeout=300, check=False)


def test_version_and_python_dash_m() -> None:
    result = _module("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"fasciculation-cds {__version__}"


def test_standard_input_gives_the_same_assessment_as_the_file() -> None:
    path = EXAMPLES / "hypomagnesemia-omeprazole.json"
    from_file = _module("evaluate", str(path), "--as-of", AS_OF)
    from_stdin = _module("evaluate", "-", "--as-of", AS_OF, stdin=path.read_text())
    assert from_stdin.returncode == from_file.returncode == 0, from_stdin.stderr
    assert from_stdin.stdout == from_file.stdout


def test_standard_input_as_ndjson_names_the_bad_line() -> None:
    bundle = (EXAMPLES / "benign-fasciculation.json").read_text()
    import json

    lines = [json.dumps(e["resource"]) for e in json.loads(bundle)["entry"]]
    result = _module("evaluate", "-", "--as-of", AS_OF, stdin="\n".join([*lines, "{oops"]))
    assert result.returncode == 2
    assert f"<stdin>: line {len(lines) + 1}" in result.stderr
    assert json.loads(result.stdout)[0]["patient"]["reference"].startswith("Patient/")


def test_every_option_of_every_command_has_help() -> None:
    root = typer.main.get_command(app)
    missing: list[str] = []
    seen: list[Any] = []

    def walk(command: Any, path: str) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}")
        options = [p for p in command.params if p.param_type_name == "option"]
        seen.extend(options)
        for param in options:
            if not getattr(param, "hidden", False) and not param.help:
                missing.append(f"{path} {param.opts[0]}")
        if not command.help:
            missing.append(f"{path} (command help)")

    walk(root, "fasciculation-cds")
    assert len(seen) > 30  # the walk reached every command's options
    assert not missing, missing


def test_examples_are_copied_and_evaluate(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["examples", "--out", str(tmp_path / "ex")])
    assert result.exit_code == 0, result.output
    copied = sorted(p.name for p in (tmp_path / "ex").iterdir())
    assert copied == sorted(p.name for p in EXAMPLES.iterdir() if p.suffix in (".json", ".md"))
    again = CliRunner().invoke(app, ["examples", "--out", str(tmp_path / "ex")])
    assert again.exit_code == 2
    assert CliRunner().invoke(app, ["examples", "--out", str(tmp_path / "ex"),
                                    "--force"]).exit_code == 0


def test_shell_completion_is_offered() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert "--install-completion" in result.output
