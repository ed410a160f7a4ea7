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


@pytest.fixture
def refusing_s3(request: pytest.FixtureRequest) -> Iterator[str]:
    """An S3 emulator on loopback that refuses every credential (it knows none)."""
    if "{s3}" not in request.node.callspec.params["case"].command:
        yield ""
        return
    pytest.importorskip("s3fs")
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
        patch.setattr(ActionAuthenticatorMixin, "request_count", 0)
        try:
            yield str(server.get_host_and_port()[1])
        finally:
            server.stop()


@pytest.mark.parametrize("case", CASES, ids=[c.mistake for c in CASES])
def test_user_error_gives_its_message_and_exit_code(case: Case, tmp_path: Path,
                                                    busy_port: int, refusing_s3: str) -> None:
    for name, content in FILES.items():
        (tmp_path / name).write_text(content)
    (tmp_path / "in").mkdir()
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "README.md").write_text("mine\n")
    command, _, stdin = case.command.partition("\0")
    words = command.replace("{busy}", str(busy_port)).replace("{s3}", refusing_s3).split()
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data")}
    while words and re.match(r"^[A-Z_]+=", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    for prefix, module in (("postgres", "psycopg"), ("gs://", "gcsfs")):
        if any(w.startswith(prefix) for w in words):  # the driver must be absent for this row
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(_without(tmp_path, module)), env.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-m", "fasciculation_cds", *words], cwd=tmp_path,
                            env=env, input=stdin, capture_output=True, text=True, timeout=120,
                            check=False)
    message = case.message.replace("{busy}", str(busy_port))
    assert result.returncode == case.exit_code, result.stderr[-800:]
    assert "Traceback" not in result.stderr
    assert message in result.stderr.replace("\n", " "), result.stderr[-800:]
    for secret in ("wrong/secret", "AKIAWRONGKEYID000000"):  # credentials are never printed
        assert secret not in result.stderr + result.stdout


def _without(tmp_path: Path, module: str) -> Path:
    """A folder, first on the path, whose `module` cannot be imported (as when not installed)."""
    shadow = tmp_path / "shadow" / module
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(f"raise ImportError('{module} is not installed')\n")
    return shadow.parent
