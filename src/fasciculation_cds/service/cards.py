"""Findings to CDS Hooks 2.0 cards (summary, indicator, detail with evidence, source, links,
suggestions, override reasons)."""

from __future__ import annotations

import uuid
from typing import Any

from ..assessment import Assessment, RuleFinding
from ..presentation import RULES_SYSTEM
from ..ruleset import RuleSet

SOURCE_LABEL = "fasciculation-cds"
OVERRIDE_SYSTEM = "https://fasciculation-cds.dev/override-reason"
OVERRIDE_REASONS = [
    {"code": "already-addressed", "system": OVERRIDE_SYSTEM, "display": "Already addressed"},
    {"code": "not-relevant", "system": OVERRIDE_SYSTEM, "display": "Not relevant for this patient"},
    {"code": "clinical-judgement", "system": OVERRIDE_SYSTEM,
     "display": "Clinical judgement: benefit outweighs risk"},
]
ORDER_HOOK_RULES = ("medication.order-caution",)


def card_uuid(hook_instance: str, rule_id: str) -> str:
    """Stable per request and rule, so feedback can be traced to the rule it is about."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{hook_instance}|{rule_id}"))


def worth_showing(finding: RuleFinding, hook: str) -> bool:
    """patient-view shows every finding; order hooks, which fire on every change of the order
    form, only the order cautions and critical findings (alert fatigue)."""
    if hook == "patient-view":
        return True
    return finding.rule_id in ORDER_HOOK_RULES or finding.severity == "critical"


def _detail(finding: RuleFinding) -> str:
    lines = [finding.detail]
    if finding.evidence:
        lines += ["", "**Evidence**", ""]
    for item in finding.evidence:
        value = f" {item.reported}" if item.reported else (f" {item.display}" if item.display
                                                          else "")
        when = f" ({item.effective})" if item.effective else ""
        lines.append(f"- {item.label or item.concept}:{value}{when}")
    lines += ["", "**Recommended**", ""] + [f"- {r}" for r in finding.recommendations]
    return "\n".join(lines)


def _suggestions(finding: RuleFinding, assessment: Assessment, ruleset: RuleSet,
                 hook_instance: str) -> list[dict[str, Any]]:
    suggestions: list[dict[str, Any]] = []
    patient = assessment.patient.reference
    for suggestion in finding.suggestions:
        if suggestion.kind == "order-lab":
            missing = {e.concept for e in finding.evidence}
            for concept in suggestion.concepts:
                if concept in missing:
                    continue
                codes = ruleset.terminology.codes_of([concept])
                loinc = [(s, c) for s, c in codes
                         if s == ruleset.terminology.system_uri("loinc")]
                if not loinc:
                    continue
                label = ruleset.terminology.concepts[concept].label
                system, code = loinc[0]
                suggestions.append({
                    "label": f"Order {label}",
                    "uuid": card_uuid(hook_instance, f"{finding.rule_id}|{concept}"),
                    "actions": [{"type": "create", "description": f"Order {label}",
                                 "resource": {"resourceType": "ServiceRequest", "status": "draft",
                                              "intent": "proposal",
                                              "code": {"coding": [{"system": system,
                                                                   "code": code,
                                                                   "display": label}]},
                                              "subject": {"reference": patient}}}]})
        elif suggestion.kind == "remove-draft-order":
            drafts = sorted({e.reference for e in finding.evidence if e.status == "draft"})
            for draft in drafts:
                suggestions.append({
                    "label": suggestion.label,
                    "uuid": card_uuid(hook_instance, f"{finding.rule_id}|{draft}"),
                    "actions": [{"type": "delete", "description": f"Remove {draft}",
                                 "resourceId": [draft]}]})
    return suggestions


def to_cards(assessment: Assessment, ruleset: RuleSet, hook: str,
             hook_instance: str) -> list[dict[str, Any]]:
    cards = []
    for finding in assessment.findings:
        if not worth_showing(finding, hook):
            continue
        card: dict[str, Any] = {
            "uuid": card_uuid(hook_instance, finding.rule_id),
            "summary": finding.summary[:140],
            "indicator": finding.severity,
            "detail": _detail(finding),
            "source": {"label": SOURCE_LABEL,
                       "topic": {"system": RULES_SYSTEM, "code": finding.rule_id,
                                 "display": finding.title}},
        }
        links = [{"label": r.citation[:120], "url": r.url, "type": "absolute"}
                 for r in finding.references if r.url]
        if links:
            card["links"] = links
        suggestions = _suggestions(finding, assessment, ruleset, hook_instance)
        if suggestions:
            card["suggestions"] = suggestions
            card["selectionBehavior"] = "any" if len(suggestions) > 1 else "at-most-one"
        if finding.severity != "info":
            card["overrideReasons"] = OVERRIDE_REASONS
        cards.append(card)
    return cards
