"""Clinician summaries: golden notes, structure of the HTML pages, FHIR output, escaping."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fhir.resources.R4B.bundle import Bundle
from rich.console import Console

from fasciculation_cds import Assessment, evaluate, evaluate_each, load_rules
from fasciculation_cds.facts import LabResult
from fasciculation_cds.quantity_text import evidence_label
from fasciculation_cds.render_text import render_assessment
from fasciculation_cds.report import render_fhir, render_html, render_markdown, write_reports
from fasciculation_cds.report.view import build_view, charted_concepts
from fasciculation_cds.rule_schema import CATEGORY_TITLES, RULE_CATEGORIES
from fasciculation_cds.ruleset import RuleSet

from .conftest import REPO, shared_data

AS_OF = "2026-11-26"
GOLDEN = Path(__file__).parent / "golden"
# UPDATE_GOLDEN=1 writes the golden files (new and changed) instead of comparing; review the diff.
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
EXAMPLES = sorted((REPO / "fhir_examples").glob("*.json"))


def _one(path: Path, ruleset: RuleSet) -> Assessment:
    [assessment] = evaluate(path, as_of=AS_OF, rules=ruleset, full_history=True)
    return assessment


def _golden(name: str, text: str, folder: Path = GOLDEN) -> None:
    """Compare with the golden file; a missing one fails (a test that writes its own expected
    output proves nothing). UPDATE_GOLDEN=1 writes them."""
    path = folder / name
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} is missing: run with UPDATE_GOLDEN=1, then review it"
    assert text == path.read_text(encoding="utf-8"), f"{name} changed (UPDATE_GOLDEN=1 to accept)"


def test_a_missing_golden_file_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(__name__ + ".UPDATE", False)
    with pytest.raises(AssertionError, match="is missing"):
        _golden("absent.md", "text", folder=tmp_path)
    assert not (tmp_path / "absent.md").exists()
    monkeypatch.setattr(__name__ + ".UPDATE", True)
    _golden("absent.md", "text", folder=tmp_path)
    assert (tmp_path / "absent.md").read_text() == "text"


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_markdown_and_text_golden(example: Path, ruleset: RuleSet) -> None:
    assessment = _one(example, ruleset)
    note = render_markdown(assessment)
    assert len(note.splitlines()) <= 40
    # the rules version changes with every rule edit; the note's wording is what is pinned here
    _golden(f"{example.stem}.md", note.replace(assessment.rules_version[:19], "sha256:<rules>"))
    console = Console(width=100, record=True, color_system=None, file=io.StringIO())
    console.print(render_assessment(assessment))
    _golden(f"{example.stem}.txt", console.export_text())


class _Outline(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.ids: set[str] = set()
        self.charts: dict[str, int] = {}
        self.thresholds: dict[str, list[str]] = {}
        self.ticks: dict[str, list[str]] = {}
        self.scripts = 0
        self.external: list[str] = []
        self._caption: str | None = None
        self._in_caption = False
        self._text_class: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.append(tag)
        if found.get("id"):
            self.ids.add(str(found["id"]))
        if tag == "script":
            self.scripts += 1
        if tag in ("link", "img") or (tag == "script" and found.get("src")):
            self.external.append(tag)
        if tag == "figcaption":
            self._in_caption = True
        if tag == "svg" and self._caption is not None:
            self.charts[self._caption] = int(str(found["data-points"]))
        if tag == "text":
            self._text_class = found.get("class")

    def handle_endtag(self, tag: str) -> None:
        if tag == "figcaption":
            self._in_caption = False
        if tag == "text":
            self._text_class = None

    def handle_data(self, data: str) -> None:
        if self._in_caption:
            self._caption = data.strip()
        elif self._text_class == "threshold" and self._caption:
            self.thresholds.setdefault(self._caption, []).append(data.strip())
        elif self._text_class == "tick" and self._caption:
            self.ticks.setdefault(self._caption, []).append(data.strip())


def _significant_digits(number: str) -> int:
    return len(number.lstrip("-").replace(".", "").lstrip("0"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_html_page_structure(example: Path, ruleset: RuleSet) -> None:
    assessment = _one(example, ruleset)
    outline = _Outline()
    outline.feed(render_html(assessment, ruleset))
    assert outline.tags.count("h1") == 1
    assert "main" in outline.tags
    assert "th" in outline.tags
    assert outline.scripts == 0
    assert not outline.external  # self-contained
    for finding in assessment.findings:
        assert finding.rule_id in outline.ids
    charted = charted_concepts(ruleset)
    labs = [f for f in assessment.facts if isinstance(f, LabResult) and f.concept in charted]
    # v3: a chart's title says what it plots ("Calcium (total), as measured")
    by_concept: dict[str, list[LabResult]] = {}
    for fact in sorted(labs, key=lambda f: f.effective):
        by_concept.setdefault(fact.concept, []).append(fact)
    by_label = {" / ".join(dict.fromkeys(
        evidence_label(f, ruleset.presentation.lab_labels) for f in facts)): facts
        for facts in by_concept.values()}
    charts = {caption.rsplit(" (", 1)[0]: (caption.rsplit(" (", 1)[1].rstrip(")"), points)
              for caption, points in outline.charts.items()}
    assert {label: points for label, (_, points) in charts.items()} == {
        label: len(facts) for label, facts in by_label.items()}
    for label, (unit, _) in charts.items():
        # one unit per chart: the canonical one, or the one every result was sent in
        sent = {ruleset.units.fold(f.original_unit or "") for f in by_label[label]}
        assert unit == by_label[label][0].unit or sent == {unit}
        caption = f"{label} ({unit})"
        for line in outline.thresholds.get(caption, []):
            assert line.endswith(f" {unit}"), (caption, line)
        for tick in outline.ticks[caption]:
            assert _significant_digits(tick) >= 3, (caption, tick)


def test_values_are_shown_in_the_lab_unit_and_corrections_said_plainly(
        ruleset: RuleSet) -> None:
    assessment = _one(REPO / "fhir_examples" / "hypocalcemia-albumin-corrected.json", ruleset)
    page = render_html(assessment, ruleset)
    # the evidence: as the lab sent it, the canonical value beside, and who corrected it
    assert ("<td>7.2 mg/dL (1.80 mmol/L); corrected for albumin 2.8 g/dL by this package: "
            "8.16 mg/dL</td>") in page
    outline = _Outline()
    outline.feed(page)
    # v3: the title says what is plotted: this package corrected the calcium
    [calcium] = [c for c in outline.charts
                 if c.startswith("Calcium (total), corrected for albumin by this package")]
    assert calcium.endswith("(mg/dL)")  # the lab sent mg/dL
    # the rule writes calcium thresholds in mg/dL: labelled as written; the lines drawn are the
    # nearest on each side of the result (8.16), not the far hypercalcaemia ones
    assert outline.thresholds[calcium] == ["critical < 7.5 mg/dL", "warning < 8.5 mg/dL"]
    [magnesium] = [c for c in outline.charts if c.startswith("Magnesium")]
    # the rule says 0.70 mmol/L; on this lab's mg/dL axis that is 1.70 mg/dL, digits kept
    assert "warning < 1.70 mg/dL" in outline.thresholds[magnesium]
    console = Console(width=100, record=True, color_system=None, file=io.StringIO())
    console.print(render_assessment(assessment))
    for text in (page, render_markdown(assessment), console.export_text()):
        assert "reported by lab" not in text
        assert "reported by the lab" not in text


def test_charts_are_the_labs_the_rules_compare(ruleset: RuleSet) -> None:
    # v3: a lab compared with a multiple of its upper limit (CK) is charted too
    compared = {p.concept for r in ruleset.active_rules() for m in r.match
                for p in [*m.facts.values(), *(q for e in m.escalate for q in e.facts.values())]
                if (p.value is not None or p.times_upper_limit is not None) and p.concept}
    assert "creatine-kinase" in compared
    assert set(charted_concepts(ruleset)) == compared
    assert "calcium-corrected" in compared  # the value the calcium rule decides on


def test_headline_rules_come_from_the_rule_files(tmp_path: Path, ruleset: RuleSet) -> None:
    example = REPO / "fhir_examples" / "als-red-flags-critical.json"
    assessment = _one(example, ruleset)
    view = build_view(assessment, ruleset)
    assert [f.rule_id for f in view.alerts] == [r.id for r in ruleset.rules if r.headline
                                                and any(f.rule_id == r.id
                                                        for f in assessment.findings)]
    assert view.alerts
    assert "headline sev-critical emphasised" in render_html(assessment, ruleset)
    # the same rules without `headline: true`: no emphasis
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules, ignore=shutil.ignore_patterns("*.fires", "*.quiet"))
    for path in rules.glob("*/*.yaml"):
        path.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                                if not line.startswith("headline:")))
    plain = load_rules(rules)
    [again] = evaluate(example, as_of=AS_OF, rules=plain, full_history=True)
    assert not build_view(again, plain).alerts
    assert "headline sev-critical\"" in render_html(again, plain)


def test_a_headline_rule_is_named_even_below_a_more_severe_finding(ruleset: RuleSet) -> None:
    red = _one(REPO / "fhir_examples" / "als-red-flags-critical.json", ruleset)
    [flag] = [f for f in red.findings if f.rule_id == "mnd.red-flags"]
    other = _one(REPO / "fhir_examples" / "hypomagnesemia-omeprazole.json", ruleset)
    critical = other.findings[0].model_copy(update={"severity": "critical"})
    mixed = red.model_copy(update={"findings": [critical, flag.model_copy(
        update={"severity": "warning"})]})
    view = build_view(mixed, ruleset)
    assert view.headline == critical
    assert view.alerts == [mixed.findings[1]]
    page = render_html(mixed, ruleset)
    assert "headline sev-critical emphasised" in page
    assert f"<p><strong>{flag.title}:</strong> {flag.summary}</p>" in page


def test_findings_are_grouped_by_every_category(ruleset: RuleSet) -> None:
    assessments = evaluate(REPO / "fhir_examples", as_of=AS_OF, rules=ruleset)
    for assessment in assessments:
        view = build_view(assessment, ruleset)
        titles = [title for title, _ in view.groups]
        assert titles == [CATEGORY_TITLES[c] for c in RULE_CATEGORIES
                          if any(f.category == c for f in assessment.findings)]
        assert sum(len(members) for _, members in view.groups) == len(assessment.findings)


def test_untrusted_text_is_escaped(tmp_path: Path, ruleset: RuleSet) -> None:
    source = REPO / "fhir_examples" / "eyelid-myokymia-albuterol-diphenhydramine.json"
    text = source.read_text().replace('"display": "albuterol"',
                                      '"display": "<script>alert(1)</script> albuterol"')
    assert "<script>" in text
    injected = tmp_path / "patient.json"
    injected.write_text(text)
    page = render_html(_one(injected, ruleset), ruleset)
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_fhir_output_validates_and_references_only_the_input(ruleset: RuleSet) -> None:
    for example in EXAMPLES:
        assessment = _one(example, ruleset)
        bundle = render_fhir(assessment)
        Bundle.model_validate(bundle)
        issues = [e["resource"] for e in bundle["entry"]
                  if e["resource"]["resourceType"] == "DetectedIssue"]
        assert len(issues) == len(assessment.findings)
        known = {f"{e['resource']['resourceType']}/{e['resource']['id']}"
                 for e in json.loads(example.read_text())["entry"]}
        for issue in issues:
            assert issue["patient"]["reference"] in known
            for implicated in issue.get("implicated", []):
                assert implicated["reference"] in known


def test_index_and_pages_for_many_patients(tmp_path: Path, ruleset: RuleSet) -> None:
    assessments = list(evaluate(REPO / "fhir_examples", as_of=AS_OF, rules=ruleset))
    written = write_reports(assessments, ruleset, "html", tmp_path / "site")
    assert written[0].name == "index.html"
    assert len(written) == len(assessments) + 1
    index = written[0].read_text()
    for path in written[1:]:
        assert f'href="{path.name}"' in index


@pytest.mark.realdata
@pytest.mark.parametrize("folder", ["synthea", "ndjson/pathling-9-patients",
                                    "ndjson/sample-bulk-10-patients", "ndjson/cumulus-etl-simple",
                                    "hl7-examples"])
def test_reports_render_for_all_real_data(folder: str, ruleset: RuleSet) -> None:
    for outcome in evaluate_each(shared_data(folder), as_of="auto", assume_presentation=True,
                                 rules=ruleset, full_history=True):
        if isinstance(outcome, Assessment):
            assert render_html(outcome, ruleset).startswith("<!DOCTYPE html>")
            assert render_markdown(outcome)
            Bundle.model_validate(render_fhir(outcome))


SCREENSHOTS = {"als-red-flags-critical": "report-red-flags.png",
               "benign-fasciculation": "report-benign.png",
               "hypomagnesemia-omeprazole": "report-electrolytes.png"}


@pytest.mark.browser
@pytest.mark.parametrize("example", sorted(SCREENSHOTS))
def test_pages_render_in_headless_chromium(example: str, tmp_path: Path,
                                           ruleset: RuleSet) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (make test / .ci/run install it)")
    from PIL import Image, ImageStat

    page = tmp_path / "page.html"
    page.write_text(render_html(_one(REPO / "fhir_examples" / f"{example}.json", ruleset),
                                ruleset))
    shot = tmp_path / "page.png"
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
         "--v=0", "--hide-scrollbars", "--window-size=1100,1800", f"--screenshot={shot}",
         page.as_uri()], capture_output=True, text=True, timeout=120, check=False)
    assert shot.exists(), done.stderr[-2000:]
    console_errors = [line for line in done.stderr.splitlines()
                      if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)]
    assert not console_errors
    with Image.open(shot) as image:
        stats = ImageStat.Stat(image.convert("L"))
        assert stats.stddev[0] > 10  # not a blank page
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        target = REPO / "docs" / "img" / SCREENSHOTS[example]
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, target)


def test_markdown_note_lists_data_notices_as_remarks(ruleset: RuleSet) -> None:
    # v3 "Presentation of findings": notices are data-quality remarks, each listed
    bundle = json.loads((REPO / "fhir_examples" / "hypomagnesemia-omeprazole.json").read_text())
    for entry in bundle["entry"]:
        quantity = entry["resource"].get("valueQuantity")
        if quantity and quantity.get("unit") == "mmol/L" and "agnesium" in json.dumps(
                entry["resource"]["code"]):
            quantity.update(unit="mg", code="mg")
    [assessment] = evaluate(bundle, as_of=AS_OF, rules=ruleset)
    assert [n.code for n in assessment.notices] == ["unit-not-convertible"]
    note = render_markdown(assessment)
    assert "Data-quality remarks (1):" in note
    [remark] = [line for line in note.splitlines() if "cannot be converted" in line]
    assert remark.startswith("- Magnesium")
    assert "\\'mg\\'" not in remark
    assert "checked: " not in note
    assert "Checked: K " in note
