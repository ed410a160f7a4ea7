"""Every user error in docs/cli.md ("User errors") gives its one-line message and exit code, in a
real process, never a traceback. The table in the docs is the list of cases: a row added there
is tested here."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.cli
DOC = REPO / "docs" / "cli.md"
FILES = {
    "bad.yaml": "a: [1\n",
    "unknown-key.yaml": "nonsense_key: 1\n",
    "postgres.yaml": "feedback_database_url: postgresql+psycopg://cds@localhost/feedback\n",
}


@dataclass(frozen=True)
class Case:
    mistake: str
    command: str
    message: str
    exit_code: int


def _cases() -> list[Case]:
    text = DOC.read_text()
    section = text[text.index("### User errors"):]
    rows = re.findall(r"^\| ([^|]+?) \| `([^`]+)`(?: \(input `([^`]*)`\))? \| `(.+?)` \| (\d+) \|$",
                      section, re.M)
    cases = [Case(mistake, command + (f"\0{stdin}" if stdin else ""), message, int(code))
             for mistake, command, stdin, message, code in rows]
    assert len(cases) >= 12, "docs/cli.md lost its table of user errors"
    return cases


CASES = _cases()


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize("case", CASES, ids=[c.mistake for c in CASES])
def test_user_error_gives_its_message_and_exit_code(case: Case, tmp_path: Path,
                                                    busy_port: int) -> None:
    for name, content in FILES.items():
        (tmp_path / name).write_text(content)
    (tmp_path / "in").mkdir()
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "README.md").write_text("mine\n")
    command, _, stdin = case.command.partition("\0")
    words = command.replace("{busy}", str(busy_port)).split()
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data")}
    while words and re.match(r"^[A-Z_]+=", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    if any(w.startswith("postgres") for w in words):  # the driver must be absent for this row
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(_without_psycopg(tmp_path)), env.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-m", "fasciculation_cds", *words], cwd=tmp_path,
                            env=env, input=stdin, capture_output=True, text=True, timeout=120,
                            check=False)
    message = case.message.replace("{busy}", str(busy_port))
    assert result.returncode == case.exit_code, result.stderr[-800:]
    assert "Traceback" not in result.stderr
    assert message in result.stderr.replace("\n", " "), result.stderr[-800:]


def _without_psycopg(tmp_path: Path) -> Path:
    """A folder, first on the path, whose `psycopg` cannot be imported (as when not installed)."""
    shadow = tmp_path / "shadow" / "psycopg"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('psycopg is not installed')\n")
    return shadow.parent
