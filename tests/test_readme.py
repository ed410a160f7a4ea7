"""The README's Python example runs, from the repository root, and prints what the README says."""

from __future__ import annotations

import contextlib
import io
import re

import pytest

from .conftest import REPO

README = REPO / "README.md"


def _example() -> tuple[str, str]:
    """The README's ```python block and the ```text block that follows it (its output)."""
    found = re.search(r"```python\n(.*?)```\s*\n(?:[^`]*?)```text\n(.*?)```", README.read_text(),
                      re.S)
    assert found, "README.md has no ```python example followed by its ```text output"
    return found.group(1), found.group(2)


def test_readme_python_example_prints_what_the_readme_shows(
        monkeypatch: pytest.MonkeyPatch) -> None:
    code, expected = _example()
    monkeypatch.chdir(REPO)  # the example names fhir_examples/ relative to the checkout
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
    assert printed.getvalue() == expected
