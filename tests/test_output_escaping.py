"""Record text is escaped wherever it is shown (issue 18): a drug's display, a condition's text
and a result's unit carrying Markdown, HTML and control characters come out of every output -
card Markdown, the HTML page, the Markdown note, the terminal, the FHIR DetectedIssue narrative -
as literal text, never as a link, an image, HTML or an escape sequence."""

from __future__ import annotations

import copy
import io
import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from rich.console import Console

from fasciculation_cds import evaluate, load_rules
from fasciculation_cds.assessment import Assessment
from fasciculation_cds.record_text import markdown_text
from fasciculation_cds.render_text import render_assessment
from fasciculation_cds.report import render_fhir, render_html, render_markdown
from fasciculation_cds.ruleset import RuleSet
from fasciculation_cds.service.cards import to_cards

from .conftest import EXAMPLES, RULES_DIR
from .output_helpers import lab

ATTACKS = [
    "![t](https://tracker.example/p.png)", "[Click to renew](https://evil.example/login)",
    "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "\x1b[31m", "\x1b]8;;x\x07",
    "[bold]", "[/]", "<https://evil.example>", "https://evil.example/x", "www.evil.example",
    "a@evil.example", "**", "`", "\n# heading\n", "\n- item", "&lt;b&gt;", "|", "~~",
    "\r\n> quote", "\u202e", "javascript:alert(1)", "[x]: https://evil.example",
]
PAYLOAD = st.lists(st.one_of(st.sampled_from(ATTACKS),
                             st.text(alphabet="<>[]()!*_`#\\&|~:/@.\n\x1b\x07 ab", max_size=6)),
                   min_size=1, max_size=4).map("".join).filter(str.strip)
BASE = json.loads((EXAMPLES / "eyelid-myokymia-albuterol-diphenhydramine.json").read_text())
AS_OF = "2026-11-26"
# Markdown as an EHR renders a card: CommonMark with raw HTML allowed and links made
EHR_MARKDOWN = MarkdownIt("commonmark", {"html": True})
MARKDOWN_TAGS = {"p", "ul", "ol", "li", "strong", "em", "code", "hr", "br"}


def _record(display: str, text: str, unit: str) -> dict[str, Any]:
    record: dict[str, Any] = copy.deepcopy(BASE)
    patient = record["entry"][0]["resource"]["id"]
    for entry in record["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "MedicationRequest":
            for coding in resource["medicationCodeableConcept"]["coding"]:
                coding["display"] = display
            resource["medicationCodeableConcept"]["text"] = display
    sodium = lab("na", "2951-2", 140, "mmol/L", "2026-11-20", pid=patient)
    sodium["valueQuantity"] = {"value": 140, "unit": unit}  # a unit the record names
    anxiety = {"resourceType": "Condition", "id": "anx", "subject": {
        "reference": f"Patient/{patient}"}, "code": {"text": f"Anxiety {text}"},
        "clinicalStatus": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
            "code": "active"}]}, "onsetDateTime": "2026-11-01"}
    record["entry"] += [{"resource": sodium}, {"resource": anxiety}]
    return record


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(html)
    return parser.tags


def _markdown_is_inert(markdown: str) -> None:
    tags = _tags(EHR_MARKDOWN.render(markdown))
    assert {tag for tag, _ in tags} <= MARKDOWN_TAGS, markdown
    # GitHub Flavored Markdown also links bare URLs, `www.` and addresses
    assert not re.search(r"(?<!\\):(?=//)", markdown), markdown
    assert not re.search(r"(?i)www\.", markdown), markdown
    assert not re.search(r"(?<!\\)@", markdown), markdown
    assert "\x1b" not in markdown


def _outputs_are_inert(assessment: Assessment, ruleset: RuleSet) -> None:
    for card in to_cards(assessment, ruleset, "patient-view", "key", "https://rules.example"):
        _markdown_is_inert(card.detail or "")
        assert "\x1b" not in card.summary
    _markdown_is_inert(render_markdown(assessment))
    page = render_html(assessment, ruleset)
    for tag, attrs in _tags(page):
        assert tag not in {"script", "img", "iframe", "object"}
        assert "src" not in attrs
        assert not any(name.startswith("on") for name in attrs)
        if tag == "a":
            assert "example" not in (attrs.get("href") or "")
    assert "\x1b" not in page
    for entry in render_fhir(assessment)["entry"]:
        narrative = entry["resource"].get("text")
        if narrative:
            div = ET.fromstring(narrative["div"])  # well-formed XHTML
            assert {e.tag.split("}")[-1] for e in div.iter()} <= {"div", "p", "b", "ul", "li"}
    console = Console(width=120, file=io.StringIO(), color_system=None)
    console.print(render_assessment(assessment))
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "\x1b" not in shown
    assert "\x07" not in shown


RULES = load_rules(RULES_DIR)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(display=PAYLOAD, text=PAYLOAD, unit=PAYLOAD)
def test_record_text_is_never_live_in_any_output(display: str, text: str, unit: str) -> None:
    [assessment] = evaluate(_record(display, text, unit), as_of=AS_OF, rules=RULES)
    _outputs_are_inert(assessment, RULES)


def test_the_attack_of_the_issue_reaches_the_outputs_as_text(ruleset: RuleSet) -> None:
    attack = "![t](https://tracker.example/p.png) [Click](https://evil.example/login)"
    [assessment] = evaluate(_record(attack, "<script>x</script>", "[bold]\x1b[31m"),
                            as_of=AS_OF, rules=ruleset)
    # the display is shown (as text), not dropped
    trigger = next(f for f in assessment.findings
                   if f.rule_id == "medication.fasciculation-trigger")
    assert any(e.display == attack for e in trigger.evidence)
    [card] = [c for c in to_cards(assessment, ruleset, "patient-view", "k", "https://r.example")
              if c.source.topic and c.source.topic.code == trigger.rule_id]
    assert markdown_text(attack) in (card.detail or "")
    assert "Click" in EHR_MARKDOWN.render(card.detail or "")
    console = Console(width=200, file=io.StringIO(), color_system=None)
    console.print(render_assessment(assessment))
    assert "[bold]" in console.file.getvalue()  # type: ignore[attr-defined]
    page = render_html(assessment, ruleset)
    assert "![t](https://tracker.example/p.png)" in page.replace("&#34;", '"')
    issues = [e["resource"] for e in render_fhir(assessment)["entry"]
              if e["resource"]["resourceType"] == "DetectedIssue"]
    assert len(issues) == len(assessment.findings)
    narratives = [issue["text"]["div"] for issue in issues]
    assert any("![t](https://tracker.example/p.png)" in n for n in narratives)
    assert all("<script>" not in n for n in narratives)
    _outputs_are_inert(assessment, ruleset)


def test_markdown_text_keeps_what_it_says() -> None:
    # escaped text renders as the very characters it was
    for text in [*ATTACKS[:4], "7.2 mg/dL (1.80 mmol/L)", "co-trimoxazole 3+ reflexes"]:
        rendered = MarkdownIt("commonmark").render(markdown_text(text))
        parser = _Text()
        parser.feed(rendered)
        assert "".join(parser.text).strip() == text.strip()


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_cli_errors_show_record_text_as_text(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fasciculation_cds.cli import app

    orphan = lab("k", "2823-3", 4.1, "mmol/L", pid="[red]x\x1b[31m")
    source = tmp_path / "orphan.json"
    source.write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                                  "entry": [{"resource": orphan}]}))
    result = CliRunner().invoke(app, ["evaluate", str(source), "--as-of", AS_OF,
                                      "--format", "text"])
    assert "[red]x" in result.stderr
    assert "\x1b" not in result.stderr
