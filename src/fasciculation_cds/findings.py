"""Engine matches to findings: one finding per rule, highest severity, all evidence, filled text.

A rule fires once per matching combination of facts (one per trigger drug, say); those matches
are gathered here into a single finding whose evidence lists every fact involved.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from .assessment import Citation, Evidence, RuleFinding, Suggestion
from .compiler import CompiledRule
from .content_schema import ChildWording
from .facts import (
    ClinicalFact,
    DraftOrder,
    Finding,
    LabResult,
    Medication,
    PatientContext,
    PatientFact,
    Problem,
    Procedure,
)
from .fhir_time import iso_day
from .presentation import Priority, order_findings
from .quantity_text import (
    as_sent,
    evidence_label,
    exactly_as_sent,
    format_significant,
    measured_text,
    provenance,
    range_text,
    shown_text,
    used_text,
)
from .record_text import markdown_text, plain
from .rule_schema import SEVERITY_RANK, EvidenceCollect, Rule
from .rule_schema import Suggestion as RuleSuggestion
from .units import UnitTable

SUMMARY_LIMIT = 140
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class RuleHit:
    """One engine match: which compiled rule, and the facts it bound by name."""

    compiled: CompiledRule
    facts: Mapping[str, ClinicalFact | RuleFinding]


def _environment() -> SandboxedEnvironment:
    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False,
                               trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)
    env.filters["num"] = format_significant
    env.filters["listing"] = listing
    return env


def listing(items: Sequence[Any], most: int = 3, word: str = "and") -> str:
    """`a, b and c`; beyond `most` items `a, b, c and 2 more` (summaries must fit 140)."""
    names = [str(i) for i in items]
    if len(names) > most:
        names = [*names[:most], f"{len(names) - most} more"]
    if len(names) <= 1:
        return "".join(names)
    return f"{', '.join(names[:-1])} {word} {names[-1]}"


_ENV = _environment()


class SummaryTooLongError(ValueError):
    """A filled summary is longer than a card allows: the rule's template must be rewritten."""


_STRICT_SUMMARIES: ContextVar[bool] = ContextVar("strict_summaries", default=False)


@contextlib.contextmanager
def strict_summaries() -> Iterator[None]:
    """Inside this block a summary over 140 characters raises SummaryTooLongError (rules check,
    fixtures and tests). Outside it, the finding falls back to a short whole-word summary, so a
    template that meets unforeseen data never costs a patient the assessment."""
    token = _STRICT_SUMMARIES.set(True)
    try:
        yield
    finally:
        _STRICT_SUMMARIES.reset(token)


def _fallback_summary(rule: Rule, severity: str) -> str:
    action = "Urgent review: " if severity == "critical" else ""
    return f"{action}{rule.title}; see the details"


Labels = Mapping[str, Mapping[Any, str]]
"""rules/presentation.yaml `lab_labels`: what a lab value is, by concept and provenance."""

# View keys whose text comes from the record (displays, units, values as sent, notes quoting
# them, references, quotes), or from a finding whose summary quotes one: escaped for Markdown in
# a detail, made plain in a summary.
RECORD_KEYS = frozenset({"reference", "reported", "measured", "used", "shown", "note",
                         "display", "summary", "quote"})


def _view(fact: ClinicalFact | RuleFinding, units: UnitTable,
          as_of: datetime | None = None, labels: Labels | None = None) -> dict[str, Any]:
    """What a template may say about a fact."""
    if isinstance(fact, RuleFinding):
        return {"rule_id": fact.rule_id, "title": fact.title, "severity": fact.severity,
                "summary": fact.summary}
    view: dict[str, Any] = {"reference": fact.reference, "kind": fact.kind}
    if isinstance(fact, LabResult):
        days_old = calendar_days_old(fact.effective, as_of)
        view.update(upper_limit=(format_significant(fact.upper_limit)
                                 if fact.upper_limit is not None else ""),
                    range=range_text(fact.reference_low, fact.reference_high, fact.unit) or "",
                    number=fact.value, low=fact.reference_low, high=fact.reference_high,
                    age_days=fact.age_days)
        view.update(label=evidence_label(fact, labels or {}),
                    value=format_significant(fact.value), unit=fact.unit,
                    reported=as_sent(fact), measured=measured_text(fact, units),
                    used=used_text(fact, units), shown=shown_text(fact, units),
                    provenance=provenance(fact), date=iso_day(fact.effective),
                    note=fact.note or "", concept=fact.concept, days_old=days_old,
                    stale=days_old is not None and days_old > STALE_AFTER_DAYS)
    elif isinstance(fact, Medication):
        view.update(label=fact.label, display=fact.display or fact.label, concept=fact.concept,
                    date=iso_day(fact.authored) if fact.authored else "",
                    classes=list(fact.classes))
    elif isinstance(fact, DraftOrder):
        view.update(label=fact.label, display=fact.display or fact.label, concept=fact.concept,
                    classes=list(fact.classes))
    elif isinstance(fact, (Problem, Finding)):
        when = fact.onset if isinstance(fact, Problem) else fact.effective
        view.update(label=fact.label, concept=fact.concept, date=iso_day(when) if when else "",
                    groups=list(fact.groups), certainty=fact.certainty,
                    matched_by=fact.matched_by, quote=fact.quote or "")
        if isinstance(fact, Problem):
            view.update(when=fact.onset_text or (f"onset {view['date']}" if when else ""))
    elif isinstance(fact, Procedure):
        view.update(label=fact.label, concept=fact.concept, date=iso_day(fact.performed),
                    status=fact.status, groups=list(fact.groups))
    return view


STALE_AFTER_DAYS = 1
"""docs/clinical-basis.md (v3) "Critical cards": a result dated before D - 1 is not today's news."""


def calendar_days_old(when: datetime, as_of: datetime | None) -> int | None:
    """Whole UTC calendar days from `when` to the day of `as_of` (docs/clinical-basis.md,
    v3 "Time")."""
    if as_of is None:
        return None
    return (as_of.astimezone(timezone.utc).date() - when.astimezone(timezone.utc).date()).days


def _record_text_as(value: Any, write: Callable[[str], str]) -> Any:
    """Every record string in template variables (RECORD_KEYS, at any depth) passed through
    `write`; everything else as it is."""
    if isinstance(value, dict):
        return {key: write(item) if key in RECORD_KEYS and isinstance(item, str)
                else _record_text_as(item, write) for key, item in value.items()}
    if isinstance(value, list):
        return [_record_text_as(item, write) for item in value]
    return value


def evidence_of(fact: ClinicalFact, units: UnitTable,
                labels: Labels | None = None) -> Evidence | None:
    if isinstance(fact, LabResult):
        rng = range_text(fact.reference_low, fact.reference_high, fact.unit)
        return Evidence(reference=fact.reference, concept=fact.concept,
                        label=evidence_label(fact, labels or {}),
                        value=round(fact.value, 4), unit=fact.unit,
                        reported=exactly_as_sent(fact),
                        shown=shown_text(fact, units), effective=iso_day(fact.effective),
                        note=fact.note, reference_range=rng)
    if isinstance(fact, DraftOrder):
        return Evidence(reference=fact.reference, concept=fact.concept, label=fact.label,
                        display=fact.display, status="draft", matched_by=fact.matched_by)
    if isinstance(fact, Medication):
        return Evidence(reference=fact.reference, concept=fact.concept, label=fact.label,
                        display=fact.display, status=fact.status, matched_by=fact.matched_by)
    if isinstance(fact, Procedure):
        return Evidence(reference=fact.reference, concept=fact.concept, label=fact.label,
                        effective=iso_day(fact.performed), status=fact.status,
                        matched_by=fact.matched_by)
    if isinstance(fact, (Problem, Finding)):
        when: datetime | None = fact.onset if isinstance(fact, Problem) else fact.effective
        return Evidence(reference=fact.reference, concept=fact.concept, label=fact.label,
                        effective=iso_day(when) if when else None,
                        status=fact.clinical_status if isinstance(fact, Problem) else None,
                        matched_by=fact.matched_by, quote=fact.quote,
                        certainty=fact.certainty if fact.certainty != "asserted" else None)
    return None


def build_finding(
    rule: Rule,
    hits: Sequence[RuleHit],
    facts: Sequence[ClinicalFact],
    context: PatientContext,
    units: UnitTable,
    *,
    fired: Mapping[str, Mapping[str, Any]] | None = None,
    child: ChildWording | None = None,
    labels: Labels | None = None,
) -> RuleFinding:
    """Gather every match of one rule into a finding at the highest severity that fired.

    `fired`: the findings of this assessment known so far (`fired_views`), so a card can say
    what another finding changes (low magnesium on the calcium card). `child`: the wording a
    child's card adds (rules/derived.yaml)."""
    as_of = context.as_of
    ordered = sorted(hits, key=lambda h: (-SEVERITY_RANK[h.compiled.severity],
                                          h.compiled.match_index, _hit_key(h)))
    primary = ordered[0]
    evidence: dict[tuple[str, str], Evidence] = {}
    every: dict[str, dict[str, dict[str, Any]]] = {}
    for hit in ordered:
        for name, fact in hit.facts.items():
            view = _view(fact, units, as_of, labels)
            every.setdefault(name, {}).setdefault(_fact_key(fact), view)
            items = (fact.evidence if isinstance(fact, RuleFinding)
                     else [evidence_of(fact, units, labels)])
            for item in items:
                if item is not None:
                    evidence.setdefault((item.reference, item.concept), item)
    also: dict[str, dict[str, Any]] = {}
    for collect in rule.evidence_also:
        for fact in facts:
            if fact.kind != collect.fact or not _collected(collect, fact):
                continue
            if collect.above_upper_limit is not None and (
                    not isinstance(fact, LabResult)
                    or fact.above_upper_limit != collect.above_upper_limit
                    or not fact.is_latest):
                continue
            item = evidence_of(fact, units, labels)
            if item is not None:
                evidence.setdefault((item.reference, item.concept), item)
                also.setdefault(_fact_key(fact), _view(fact, units, as_of, labels))
    variables: dict[str, Any] = {name: _view(fact, units, as_of, labels)
                                 for name, fact in primary.facts.items()}
    variables["all"] = {name: [] for match in rule.match for name in match.facts}
    variables["all"].update({name: list(views.values()) for name, views in sorted(every.items())})
    variables["severity"] = primary.compiled.severity
    variables["presentation"] = list(context.presentation)
    variables["alternative"] = rule.match[primary.compiled.match_index].label or ""
    variables["not_measured_within"] = functools.partial(_not_measured_within, context)
    variables["also"] = [also[key] for key in sorted(also)]
    variables["present"] = list(context.concepts_present)
    variables["matches"] = _matches(rule, ordered, units, as_of, labels)
    variables["fired"] = dict(fired or {})
    variables["latest"] = functools.partial(_latest, facts, units, as_of, labels)
    offered = [s for s in rule.suggestions if _offered(s, context)]
    variables["offered"] = [s.label for s in offered]
    is_child = _is_child(facts, child)
    variables["child"] = is_child
    as_plain = _record_text_as(variables, plain)  # summary and recommendations are plain text
    summary = _SPACES.sub(" ", render(rule.summary, as_plain, rule.id, "summary")).strip()
    if len(summary) > SUMMARY_LIMIT:
        if _STRICT_SUMMARIES.get():
            raise SummaryTooLongError(
                f"rule {rule.id}: summary is {len(summary)} characters, more than "
                f"{SUMMARY_LIMIT}: {summary!r}")
        summary = _fallback_summary(rule, primary.compiled.severity)
    matched = sorted({h.compiled.match_index for h in hits})
    citations: dict[tuple[str, str | None], Citation] = {}
    for ref in [*rule.references, *(r for i in matched for r in rule.match[i].references)]:
        citations.setdefault((ref.citation, ref.url), Citation(citation=ref.citation, url=ref.url))
    return RuleFinding(
        rule_id=rule.id,
        category=rule.category,
        severity=primary.compiled.severity,
        title=rule.title,
        summary=summary,
        # the detail is Markdown: record text in it is escaped, never a link, image or HTML
        detail=render(rule.detail, _record_text_as(variables, markdown_text), rule.id,
                      "detail").strip(),
        evidence=sorted(evidence.values(), key=lambda e: (e.concept, e.effective or "",
                                                          e.reference)),
        recommendations=_recommendations(rule, as_plain,
                                         evidence.values(), child, is_child),
        suggestions=[Suggestion(kind=s.kind, label=s.label, concepts=list(s.concepts))
                     for s in offered],
        references=list(citations.values()),
    )


def _collected(collect: EvidenceCollect, fact: ClinicalFact) -> bool:
    """Whether `evidence_also` cites this fact: its concepts or class, newest, look-back."""
    if collect.concepts and getattr(fact, "concept", None) not in collect.concepts:
        return False
    if collect.in_class and collect.in_class not in getattr(fact, "classes", ()):
        return False
    if not collect.concepts and not collect.in_class:
        return False
    if collect.latest is not None and getattr(fact, "is_latest", None) != collect.latest:
        return False
    age = getattr(fact, "age_days", None)
    return collect.max_age_days is None or (age is not None and age <= collect.max_age_days)


def _is_child(facts: Sequence[ClinicalFact], child: ChildWording | None) -> bool:
    """Under the child age at as_of; without a birthDate the adult wording is used."""
    ages = [f.age for f in facts if isinstance(f, PatientFact) and f.age is not None]
    return child is not None and bool(ages) and ages[0] < child.under_years


def _recommendations(rule: Rule, variables: Mapping[str, Any], evidence: Iterable[Evidence],
                     child: ChildWording | None, is_child: bool) -> list[str]:
    """Each recommendation is a template (a critical card acts first, a stale result is named);
    one that renders empty is left out. A child's card that used a lab result adds the child
    line (adult thresholds)."""
    out = []
    for index, template in enumerate(rule.recommendations):
        text = _SPACES.sub(" ", render(template, variables, rule.id,
                                       f"recommendations.{index}")).strip()
        if text:
            out.append(text)
    if child is not None and is_child and (
            rule.category in child.categories or any(e.value is not None for e in evidence)):
        out.append(child.line)
    return out


def fired_views(hits_by_rule: Mapping[str, Sequence[RuleHit]], units: UnitTable,
                as_of: datetime | None,
                labels: Labels | None = None) -> dict[str, dict[str, Any]]:
    """Rule id -> its severity and the facts its highest match bound (template `fired`)."""
    out: dict[str, dict[str, Any]] = {}
    for rule_id, hits in hits_by_rule.items():
        primary = min(hits, key=lambda h: (-SEVERITY_RANK[h.compiled.severity],
                                           h.compiled.match_index, _hit_key(h)))
        out[rule_id] = {"severity": primary.compiled.severity,
                        **{name: _view(fact, units, as_of, labels)
                           for name, fact in primary.facts.items()}}
    return out


def _matches(rule: Rule, hits: Sequence[RuleHit], units: UnitTable,
             as_of: datetime | None = None,
             labels: Labels | None = None) -> list[dict[str, Any]]:
    """Each distinct match, highest severity first: its alternative and the facts it bound,
    so a template can pair what belongs together (a drug with the electrolyte it lowers)."""
    out: dict[tuple[str, ...], dict[str, Any]] = {}
    for hit in hits:
        key = (str(hit.compiled.match_index), *_hit_key(hit))
        if key not in out:
            out[key] = {"alternative": rule.match[hit.compiled.match_index].label or "",
                        "severity": hit.compiled.severity,
                        **{name: _view(fact, units, as_of, labels)
                           for name, fact in hit.facts.items()}}
    return list(out.values())


def _offered(suggestion: RuleSuggestion, context: PatientContext) -> bool:
    """A suggestion is offered unless its test was measured in its look-back, and only when a
    concept it needs is present (docs/clinical-basis.md (v3): a measured test is never offered)."""
    unless = suggestion.unless_measured
    if unless is not None and any(context.days_since.get(c, float("inf")) <= unless.days
                                  for c in unless.concepts):
        return False
    present = set(context.concepts_present)
    return not suggestion.when_present_any or bool(present & set(suggestion.when_present_any))


def _latest(facts: Sequence[ClinicalFact], units: UnitTable, as_of: datetime | None,
            labels: Labels | None, concepts: Sequence[str],
            days: float) -> dict[str, Any] | None:
    """The newest counting result of any of `concepts` within `days` (the first concept
    listed wins a tie), for a card that lists what was found."""
    found = [f for f in facts if isinstance(f, LabResult) and f.concept in concepts
             and f.age_days <= days]
    if not found:
        return None
    newest = max(found, key=lambda f: (f.effective, -list(concepts).index(f.concept)))
    return _view(newest, units, as_of, labels)


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


def sort_findings(findings: Sequence[RuleFinding],
                  priority: Priority | None = None) -> list[RuleFinding]:
    return order_findings(findings, priority)
