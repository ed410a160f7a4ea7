"""Presentation of findings (v3): headline order by clinical priority, recommendations at every
severity in every view, evidence that says what it is, "recorded on", a lab's trend on its
card, negated items and notices never shown as findings."""

from __future__ import annotations

import io
import re
from typing import Any

from rich.console import Console

from fasciculation_cds import evaluate
from fasciculation_cds.assessment import Assessment, Evidence, RuleFinding
from fasciculation_cds.presentation import evidence_line, order_findings, priority_of
from fasciculation_cds.render_text import render_assessment
from fasciculation_cds.report import render_html, render_markdown
from fasciculation_cds.rule_schema import Severity
from fasciculation_cds.ruleset import RuleSet
from fasciculation_cds.service.cards import to_cards

from .output_helpers import ACTIVE, AS_OF, bundle, condition, fasciculation, lab, patient

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def _assess(*resources: dict[str, Any], ruleset: RuleSet) -> Assessment:
    [assessment] = evaluate(bundle(patient(), *resources), as_of=AS_OF, rules=ruleset,
                            full_history=True)
    return assessment


def _terminal(assessment: Assessment) -> str:
    console = Console(width=400, file=io.StringIO(), color_system=None)
    console.print(render_assessment(assessment))
    return console.file.getvalue()  # type: ignore[attr-defined,no-any-return]


def _views(assessment: Assessment, ruleset: RuleSet) -> dict[str, str]:
    cards = to_cards(assessment, ruleset, "patient-view", "k", "https://rules.example")
    return {"terminal": _terminal(assessment), "markdown": render_markdown(assessment),
            "html": render_html(assessment, ruleset),
            "cards": "\n".join(f"{c.summary}\n{c.detail}" for c in cards)}


def _statin(day: str = "2026-06-01") -> dict[str, Any]:
    return {"resourceType": "MedicationRequest", "id": "statin", "status": "active",
            "intent": "order", "subject": {"reference": "Patient/p1"}, "authoredOn": day,
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "83367",
                                                      "display": "atorvastatin"}]}}


def test_within_a_severity_findings_follow_clinical_priority(ruleset: RuleSet) -> None:
    assessment = _assess(fasciculation(), lab("k", "2823-3", 3.2, "mmol/L"),
                         lab("na", "2951-2", 131, "mmol/L"),
                         lab("mg", "19123-9", 0.62, "mmol/L"), ruleset=ruleset)
    warnings = [f.rule_id for f in assessment.findings if f.severity == "warning"]
    # by rule id hypokalemia would come first; magnesium is corrected first (RULES v3 order)
    assert warnings[:3] == ["electrolyte.hypomagnesemia", "electrolyte.hypokalemia",
                            "electrolyte.hyponatremia"]
    order = ruleset.presentation.headline_order
    assert order.index("electrolyte.hyperkalemia") == 0
    assert order[-1] == "context.lifestyle"


def test_severity_still_comes_before_priority(ruleset: RuleSet) -> None:
    def finding(rule_id: str, severity: Severity) -> RuleFinding:
        rule = ruleset.rule(rule_id)
        return RuleFinding(rule_id=rule_id, category=rule.category, severity=severity,
                           title=rule.title, summary="s", detail="d", evidence=[],
                           recommendations=["r"], references=[])

    priority = priority_of(ruleset.presentation.headline_order)
    ordered = order_findings([finding("context.lifestyle", "warning"),
                              finding("electrolyte.hyperkalemia", "info"),
                              finding("metabolic.hypoglycemia", "warning"),
                              finding("electrolyte.hypocalcemia", "warning")], priority)
    assert [f.rule_id for f in ordered] == [
        "metabolic.hypoglycemia", "electrolyte.hypocalcemia", "context.lifestyle",
        "electrolyte.hyperkalemia"]


def test_every_view_shows_the_benign_cards_safety_net(ruleset: RuleSet) -> None:
    assessment = _assess(fasciculation(), lab("k", "2823-3", 4.1, "mmol/L"),
                         lab("mg", "19123-9", 0.85, "mmol/L"),
                         lab("ca", "17861-6", 9.4, "mg/dL"), ruleset=ruleset)
    [benign] = [f for f in assessment.findings if f.rule_id == "mnd.benign-pattern"]
    assert benign.severity == "info"
    safety_net = ruleset.rule("mnd.benign-pattern").recommendations[-1]
    assert "weakness" in safety_net
    for name, text in _views(assessment, ruleset).items():
        for recommendation in benign.recommendations:
            assert recommendation in text.replace("\n", " "), (name, recommendation)


def test_evidence_without_a_value_says_what_it_is(ruleset: RuleSet) -> None:
    assessment = _assess(fasciculation(), condition("hr", "86854008"), ruleset=ruleset)
    items = [e for f in assessment.findings for e in f.evidence if e.concept == "hyperreflexia"]
    assert items
    for item in items:
        line = evidence_line(item)
        assert not re.fullmatch(r"[^:]+: \(\d{4}-\d\d-\d\d\)", line), line
        assert line == "Hyperreflexia (UMN sign): coded (onset 2026-10-01)"
    bare = re.compile(r"^\s*-?\s*[A-Z][^:\n]*: \(\d{4}-\d\d-\d\d\)\s*$", re.M)
    for name, text in _views(assessment, ruleset).items():
        assert not bare.search(text), name


def test_evidence_from_text_quotes_the_record_and_its_doubt() -> None:
    item = Evidence(reference="Condition/x", concept="hyperreflexia", label="Hyperreflexia",
                    matched_by="text", quote="? brisk reflexes", certainty="uncertain",
                    effective="2026-10-01")
    assert evidence_line(item) == ("Hyperreflexia: “? brisk reflexes”; read from the record's "
                                   "text; uncertain in the record (2026-10-01)")


def test_a_condition_dated_by_its_recorded_date_says_so(ruleset: RuleSet) -> None:
    stress = condition("st", "73595000")
    del stress["onsetDateTime"]
    stress["recordedDate"] = "2026-11-25"
    assessment = _assess(fasciculation(), stress, ruleset=ruleset)
    items = [e for f in assessment.findings for e in f.evidence if e.reference == "Condition/st"]
    assert items
    assert {e.dated_by for e in items} == {"recorded"}
    assert "(recorded 2026-11-25 (no onset given))" in evidence_line(items[0])
    dated = _assess(fasciculation(), condition("st", "73595000", onset="2026-11-20"),
                    ruleset=ruleset)
    onset = [e for f in dated.findings for e in f.evidence if e.reference == "Condition/st"]
    assert {e.dated_by for e in onset} == {"onset"}
    assert evidence_line(onset[0]).endswith("(onset 2026-11-20)")


def test_a_card_comparing_a_lab_shows_its_trend_ck_included(ruleset: RuleSet) -> None:
    assessment = _assess(fasciculation(), _statin(),
                         lab("ck1", "2157-6", 2600, "U/L", "2026-11-20"),
                         lab("ck0", "2157-6", 310, "U/L", "2026-10-01"),
                         lab("k1", "2823-3", 3.1, "mmol/L", "2026-11-20"),
                         lab("k0", "2823-3", 3.6, "mmol/L", "2026-10-01"), ruleset=ruleset)
    cards = {c.source.topic.code: c for c in to_cards(  # type: ignore[union-attr]
        assessment, ruleset, "patient-view", "k", "https://rules.example")}
    statin = cards["medication.statin-muscle-symptoms"].detail or ""
    # the statin card lists every CK of its look-back itself (value, limit and trend), so the
    # earlier result is shown there rather than in a separate trend section
    assert "310 U/L" in statin
    assert "2026-10-01" in statin
    potassium = cards["electrolyte.hypokalemia"].detail or ""
    assert "3.6 mmol/L (2026-10-01)" in potassium.split("**Trend**")[1]


def test_notices_are_remarks_never_cards(ruleset: RuleSet) -> None:
    assessment = _assess(fasciculation(), lab("na", "2951-2", 140, "furlongs"),
                         ruleset=ruleset)
    assert [n.code for n in assessment.notices] == ["unit-not-convertible"]
    cards = to_cards(assessment, ruleset, "patient-view", "k", "https://rules.example")
    assert {c.source.topic.code for c in cards} <= {  # type: ignore[union-attr]
        f.rule_id for f in assessment.findings}
    message = assessment.notices[0].message
    for card in cards:
        assert "furlongs" not in card.summary
        assert "**Data-quality remarks**" in (card.detail or "")
    views = _views(assessment, ruleset)
    assert "data quality: " + message in views["terminal"]
    assert "Data-quality remarks" in views["html"]


def test_negated_items_are_shown_nowhere(ruleset: RuleSet) -> None:
    negated = {"resourceType": "Condition", "id": "neg", "subject": {"reference": "Patient/p1"},
               "clinicalStatus": ACTIVE, "code": {"text": "No dysphagia"},
               "onsetDateTime": "2026-10-01"}
    assessment = _assess(fasciculation(), negated, ruleset=ruleset)
    for name, text in _views(assessment, ruleset).items():
        assert "Dysphagia (bulbar sign)" not in text, name
        assert "No dysphagia" not in text, name
    assert assessment.checked is not None
    assert assessment.checked.signs[0].found == []


def test_an_onset_given_as_an_age_says_so() -> None:
    from fasciculation_cds.evidence_dates import mark_condition_dates
    from fasciculation_cds.ingest import SourcedResource

    withdrawal = {"resourceType": "Condition", "id": "w", "onsetAge": {"value": 40, "unit": "a"}}
    item = Evidence(reference="Condition/w", concept="alcohol-withdrawal", label="Withdrawal",
                    matched_by="code", effective="2010-03-01")
    finding = RuleFinding(rule_id="context.withdrawal", category="context", severity="info",
                          title="t", summary="s", detail="d", evidence=[item],
                          recommendations=["r"], references=[])
    [marked] = mark_condition_dates([finding], [SourcedResource(withdrawal, "in", "0")])
    assert evidence_line(marked.evidence[0]) == "Withdrawal: coded (onset at age 40 (2010))"


def test_the_ck_chart_draws_the_upper_limits_the_rules_compare(ruleset: RuleSet) -> None:
    from fasciculation_cds.report.view import build_view

    high = lab("ck1", "2157-6", 2600, "U/L", "2026-11-20")
    high["referenceRange"] = [{"high": {"value": 170, "unit": "U/L", "code": "U/L"}}]
    assessment = _assess(fasciculation(), _statin(), high,
                         lab("ck0", "2157-6", 310, "U/L", "2026-10-01"), ruleset=ruleset)
    [ck] = [s for s in build_view(assessment, ruleset).series if s.concept == "creatine-kinase"]
    assert [t.label for t in ck.thresholds] == ["> upper limit, 170 U/L",
                                                "> 10 \u00d7 upper limit, 1700 U/L"]
