"""Engine matches to findings: one finding per rule, highest severity, all evidence, filled text.

A rule fires once per matching combination of facts (one per trigger drug, say); those matches
are gathered here into a single finding whose evidence lists every fact involved.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from .assessment import Citation, Evidence, RuleFinding, Suggestion
from .compiler import CompiledRule
from .facts import (
    ClinicalFact,
    DraftOrder,
    Finding,
    LabResult,
    Medication,
    PatientContext,
    Problem,
)
from .fhir_time import iso_day
from .presentation import order_findings
from .rule_schema import SEVERITY_RANK, Rule

SUMMARY_LIMIT = 140
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class RuleHit:
    """One engine match: which compiled rule, and the facts it bound by name."""

    compiled: CompiledRule
    facts: Mapping[str, ClinicalFact | RuleFinding]


def format_number(value: float) -> str:
    """Readable, stable numbers: 0.699, 2.12, 13.5, 135."""
    magnitude = abs(value)
    digits = 0 if magnitude >= 100 else 1 if magnitude >= 10 else 2 if magnitude >= 1 else 3
    text = f"{value:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _environment() -> SandboxedEnvironment:
    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False,
                               trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)
    env.filters["num"] = format_number
    return env


_ENV = _environment()


def _reported(fact: LabResult) -> str:
    prefix = f"{fact.comparator} " if fact.comparator else ""
    unit = f" {fact.original_unit}" if fact.original_unit else ""
    return f"{prefix}{fact.original_value}{unit}"


def _view(fact: ClinicalFact | RuleFinding) -> dict[str, Any]:
    """What a template may say about a fact."""
    if isinstance(fact, RuleFinding):
        return {"rule_id": fact.rule_id, "title": fact.title, "severity": fact.severity,
                "summary": fact.summary}
    view: dict[str, Any] = {"reference": fact.reference}
    if isinstance(fact, LabResult):
        view.update(label=fact.label, value=format_number(fact.value), unit=fact.unit,
                    reported=_reported(fact), date=iso_day(fact.effective),
                    note=fact.note or "", concept=fact.concept)
    elif isinstance(fact, Medication):
        view.update(label=fact.label, display=fact.display or fact.label, concept=fact.concept,
                    date=iso_day(fact.authored) if fact.authored else "")
    elif isinstance(fact, DraftOrder):
        view.update(label=fact.label, display=fact.display or fact.label, concept=fact.concept)
    elif isinstance(fact, (Problem, Finding)):
        when = fact.onset if isinstance(fact, Problem) else fact.effective
        view.update(label=fact.label, concept=fact.concept, date=iso_day(when) if when else "")
    return view


def evidence_of(fact: ClinicalFact) -> Evidence | None:
    if isinstance(fact, LabResult):
        rng = None
        if fact.reference_low is not None or fact.reference_high is not None:
            low, high = fact.reference_low, fact.reference_high
            if low is not None and high is not None:
                rng = f"{format_number(low)}-{format_number(high)} {fact.unit}"
            elif high is not None:
                rng = f"≤ {format_number(high)} {fact.unit}"
            else:
                rng = f"≥ {format_number(low or 0.0)} {fact.unit}"
        return Evidence(reference=fact.reference, concept=fact.concept, label=fact.label,
                        value=round(fact.value, 4), unit=fact.unit, reported=_reported(fact),
                        effective=iso_day(fact.effective), note=fact.note, reference_range=rng)
    if isinstance(fact, DraftOrder):
        return Evidence(reference=fact.reference, concept=fact.concept, label=fact.label,
                        display=fact.display, status="draft", matched_by=fact.matched_by)
    if isinstance(fact, Medication):
        return Evidence(reference=fact.reference, concept=fact.concept, label=fact.label,
                        display=fact.display, status=fact.status, matched_by=fact.matched_by)
    if isinstance(fact, (Problem, Finding)):
        when: datetime | None = fact.onset if isinstance(fact, Problem) else fact.effective
        return Evidence(reference=fact.reference, concept=fact.concept, label=fact.label,
                        effective=iso_day(when) if when else None,
                        status=fact.clinical_status if isinstance(fact, Problem) else None,
                        matched_by=fact.matched_by)
    return None


def build_finding(
    rule: Rule,
    hits: Sequence[RuleHit],
    facts: Sequence[ClinicalFact],
    context: PatientContext,
) -> RuleFinding:
    """Gather every match of one rule into a finding at the highest severity that fired."""
    ordered = sorted(hits, key=lambda h: (-SEVERITY_RANK[h.compiled.severity],
                                          h.compiled.match_index, _hit_key(h)))
    primary = ordered[0]
    evidence: dict[tuple[str, str], Evidence] = {}
    every: dict[str, dict[str, dict[str, Any]]] = {}
    for hit in ordered:
        for name, fact in hit.facts.items():
            view = _view(fact)
            every.setdefault(name, {}).setdefault(_fact_key(fact), view)
            items = fact.evidence if isinstance(fact, RuleFinding) else [evidence_of(fact)]
            for item in items:
                if item is not None:
                    evidence.setdefault((item.reference, item.concept), item)
    for collect in rule.evidence_also:
        for fact in facts:
            if fact.kind != collect.fact or getattr(fact, "concept", None) not in collect.concepts:
                continue
            if collect.above_upper_limit is not None and (
                    not isinstance(fact, LabResult)
                    or fact.above_upper_limit != collect.above_upper_limit
                    or not fact.is_latest):
                continue
            item = evidence_of(fact)
            if item is not None:
                evidence.setdefault((item.reference, item.concept), item)
    variables: dict[str, Any] = {name: _view(fact) for name, fact in primary.facts.items()}
    variables["all"] = {name: [] for match in rule.match for name in match.facts}
    variables["all"].update({name: list(views.values()) for name, views in sorted(every.items())})
    variables["severity"] = primary.compiled.severity
    variables["presentation"] = list(context.presentation)
    variables["alternative"] = rule.match[primary.compiled.match_index].label or ""
    variables["not_measured_within"] = functools.partial(_not_measured_within, context)
    summary = _SPACES.sub(" ", render(rule.summary, variables, rule.id, "summary")).strip()
    if len(summary) > SUMMARY_LIMIT:
        summary = summary[: SUMMARY_LIMIT - 1].rstrip() + "…"
    return RuleFinding(
        rule_id=rule.id,
        category=rule.category,
        severity=primary.compiled.severity,
        title=rule.title,
        summary=summary,
        detail=render(rule.detail, variables, rule.id, "detail").strip(),
        evidence=sorted(evidence.values(), key=lambda e: (e.concept, e.effective or "",
                                                          e.reference)),
        recommendations=list(rule.recommendations),
        suggestions=[Suggestion(kind=s.kind, label=s.label, concepts=list(s.concepts))
                     for s in rule.suggestions],
        references=[Citation(citation=r.citation, url=r.url) for r in rule.references],
    )


def _not_measured_within(context: PatientContext, days: float, concepts: list[str]) -> list[str]:
    """Names of the lab concepts (or families) without a counting result in `days`."""
    return [c.removesuffix("-any").replace("-", " ") for c in concepts
            if context.days_since.get(c, float("inf")) > days]


@functools.lru_cache(maxsize=512)
def _template(source: str) -> Any:
    return _ENV.from_string(source)


def render(template: str, variables: Mapping[str, Any], rule_id: str, field: str) -> str:
    try:
        return str(_template(template).render(**variables))
    except TemplateError as exc:
        raise ValueError(f"rule {rule_id}: {field} template failed: {exc}") from exc


def _fact_key(fact: ClinicalFact | RuleFinding) -> str:
    if isinstance(fact, RuleFinding):
        return fact.rule_id
    return f"{fact.reference}|{getattr(fact, 'concept', '')}"


def _hit_key(hit: RuleHit) -> tuple[str, ...]:
    return tuple(_fact_key(hit.facts[name]) for name in sorted(hit.facts))


def sort_findings(findings: Sequence[RuleFinding]) -> list[RuleFinding]:
    return order_findings(findings)
