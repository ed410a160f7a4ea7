"""Findings to CDS Hooks 2.0 cards (summary, indicator, detail with evidence, source, links,
suggestions, override reasons). Which findings a hook shows is the rules' `hooks:` field."""

from __future__ import annotations

import uuid
from typing import Any

from ..assessment import Assessment, Evidence, RuleFinding
from ..facts import LabResult
from ..fhir_time import iso_day
from ..presentation import RULES_SYSTEM, evidence_line
from ..quantity_text import as_sent
from ..record_text import markdown_text, plain
from ..report.view import series_label
from ..ruleset import RuleSet
from .models import Action, Card, CardSuggestion, CodingOut, Indicator, Link, Source
from .needs import shown_on

SOURCE_LABEL = "fasciculation-cds"
OVERRIDE_SYSTEM = "https://fasciculation-cds.dev/override-reason"
OVERRIDE_REASONS = [
    CodingOut(code="already-addressed", system=OVERRIDE_SYSTEM, display="Already addressed"),
    CodingOut(code="not-relevant", system=OVERRIDE_SYSTEM,
              display="Not relevant for this patient"),
    CodingOut(code="clinical-judgement", system=OVERRIDE_SYSTEM,
              display="Clinical judgement: benefit outweighs risk"),
]
LINK_LABEL_MAX = 120
TREND_POINTS = 4  # earlier results a card lists per lab (the full summary charts them all)


def card_uuid(card_key: str, rule_id: str) -> str:
    """Stable per card key and rule, so feedback can be traced to the rule it is about."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{card_key}|{rule_id}"))


def worth_showing(finding: RuleFinding, ruleset: RuleSet, hook: str) -> bool:
    return shown_on(ruleset.rule(finding.rule_id), hook, finding.severity)


def markdown_blocks(text: str) -> str:
    """A blank line before and after every list, so Markdown renders items as a list instead
    of running them into the paragraph before them."""
    out: list[str] = []
    for line in text.strip().splitlines():
        is_item = line.lstrip().startswith(("- ", "* "))
        was_item = bool(out) and out[-1].lstrip().startswith(("- ", "* "))
        if out and out[-1].strip() and is_item != was_item:
            out.append("")
        out.append(line.rstrip())
    return "\n".join(out)


def _evidence_line(item: Evidence) -> str:
    """One evidence item as Markdown: what it is, never only a label and a date; the record's
    text in it escaped (never a link, image or HTML in the EHR's card)."""
    return f"- {markdown_text(evidence_line(item))}"


def _trend(finding: RuleFinding, assessment: Assessment, ruleset: RuleSet) -> list[str]:
    """Each lab the finding compares with a threshold, with its earlier results (newest first):
    the card shows where the value is heading, CK included."""
    lines = []
    used = {e.reference for e in finding.evidence}
    for concept in dict.fromkeys(e.concept for e in finding.evidence if e.shown):
        labs = sorted((f for f in assessment.facts
                       if isinstance(f, LabResult) and f.concept == concept),
                      key=lambda f: (-f.effective.timestamp(), f.reference))
        earlier = [f for f in labs if f.reference not in used][:TREND_POINTS]
        if earlier:
            points = ", ".join(f"{as_sent(f)} ({iso_day(f.effective)})" for f in earlier)
            label = series_label(labs, ruleset)
            lines.append(f"- {markdown_text(f'{label}, earlier: {points}')}")
    return lines


def _detail(finding: RuleFinding, assessment: Assessment, ruleset: RuleSet) -> str:
    lines = [markdown_blocks(finding.detail)]
    if finding.evidence:
        lines += ["", "**Evidence**", ""] + [_evidence_line(e) for e in finding.evidence]
    trend = _trend(finding, assessment, ruleset)
    if trend:
        lines += ["", "**Trend**", "", *trend]
    # every severity: the benign card's safety net is one of its recommendations
    lines += ["", "**Recommended**", ""] + [f"- {markdown_text(r)}"
                                            for r in finding.recommendations]
    if assessment.checked is not None:
        lines += ["", "**What was checked**", "", markdown_text(assessment.checked.text)]
    if assessment.notices:
        lines += ["", "**Data-quality remarks**", ""] + [f"- {markdown_text(n.message)}"
                                                         for n in assessment.notices]
    return "\n".join(lines)


def _suggestions(finding: RuleFinding, assessment: Assessment, ruleset: RuleSet,
                 card_key: str, drafts: frozenset[str]) -> list[CardSuggestion]:
    suggestions: list[CardSuggestion] = []
    patient = assessment.patient.reference
    for suggestion in finding.suggestions:
        if suggestion.kind == "order-lab":
            measured = {e.concept for e in finding.evidence}
            for concept in suggestion.concepts:
                loinc = [(s, c) for s, c in ruleset.terminology.codes_of([concept])
                         if s == ruleset.terminology.system_uri("loinc")]
                if concept in measured or not loinc:
                    continue
                label = ruleset.terminology.concepts[concept].label
                system, code = loinc[0]
                resource: dict[str, Any] = {
                    "resourceType": "ServiceRequest", "status": "draft", "intent": "proposal",
                    "code": {"coding": [{"system": system, "code": code, "display": label}]},
                    "subject": {"reference": patient}}
                suggestions.append(CardSuggestion(
                    label=f"Order {label}",
                    uuid=card_uuid(card_key, f"{finding.rule_id}|{concept}"),
                    actions=[Action(type="create", description=f"Order {label}",
                                    resource=resource)]))
        elif suggestion.kind == "remove-draft-order":
            # the drafts of this call that the finding cites (known by reference, not by a
            # status string in the evidence)
            for draft in sorted({e.reference for e in finding.evidence} & drafts):
                suggestions.append(CardSuggestion(
                    label=suggestion.label, uuid=card_uuid(card_key, f"{finding.rule_id}|{draft}"),
                    actions=[Action(type="delete", description=f"Remove {draft}",
                                    resource_id=[draft])]))
    return suggestions


def to_card(finding: RuleFinding, assessment: Assessment, ruleset: RuleSet, card_key: str,
            rules_url: str, drafts: frozenset[str] = frozenset()) -> Card:
    """One card. The summary is the finding's own: rules write it to fit 140 characters, and a
    longer one is a rule error (the model refuses it) rather than cut mid-sentence."""
    suggestions = _suggestions(finding, assessment, ruleset, card_key, drafts)
    # the finding's own references: the rules pick those of the alternative that fired
    links = [Link(label=_short(r.citation), url=r.url) for r in finding.references if r.url]
    return Card(
        uuid=card_uuid(card_key, finding.rule_id),
        summary=plain(finding.summary),
        indicator=Indicator(finding.severity),
        detail=_detail(finding, assessment, ruleset),
        source=Source(label=SOURCE_LABEL, url=f"{rules_url}/{finding.rule_id}",
                      topic=CodingOut(system=RULES_SYSTEM, code=finding.rule_id,
                                      display=finding.title)),
        links=links or None,
        suggestions=suggestions or None,
        selection_behavior=("any" if len(suggestions) > 1 else "at-most-one")
        if suggestions else None,
        override_reasons=OVERRIDE_REASONS if finding.severity != "info" else None,
    )


def _short(citation: str) -> str:
    if len(citation) <= LINK_LABEL_MAX:
        return citation
    cut = citation[:LINK_LABEL_MAX - 1].rsplit(" ", 1)[0]
    return f"{cut}…"


def to_cards(assessment: Assessment, ruleset: RuleSet, hook: str, card_key: str,
             rules_url: str, drafts: frozenset[str] = frozenset()) -> list[Card]:
    """The hook's cards. `drafts`: references of the call's draft orders (`Type/id`)."""
    return [to_card(f, assessment, ruleset, card_key, rules_url, drafts)
            for f in assessment.findings if worth_showing(f, ruleset, hook)]
