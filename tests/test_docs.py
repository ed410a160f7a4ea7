"""The documentation holds together: links resolve, and nothing cites files that are not in the
repository (the clinical basis is described in docs/clinical-basis.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fasciculation_cds.rule_schema import Rule

from .conftest import REPO

OUTSIDE = re.compile(r"RULES\.md|thresholds\.md|clinical/codes\.yaml|codes\.yaml v2")
SUFFIXES = {".py", ".yaml", ".md", ".json", ".j2"}
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _files() -> list[Path]:
    roots = [REPO / "src", REPO / "rules", REPO / "docs", REPO / "fhir_examples"]
    return [p for root in roots for p in sorted(root.rglob("*"))
            if p.suffix in SUFFIXES and p.is_file() and "__pycache__" not in p.parts]


def test_nothing_cites_clinical_files_outside_the_repository() -> None:
    cited = [f"{p.relative_to(REPO)}: {m.group(0)}" for p in _files()
             for m in OUTSIDE.finditer(p.read_text(encoding="utf-8"))]
    assert not cited, cited
    assert not OUTSIDE.search(json.dumps(Rule.model_json_schema()))


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # a URL
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: {target}"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{page.name}: {target}"
