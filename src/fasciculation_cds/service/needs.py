"""Which rules each hook shows (the rules' `hooks:` field), and what data those rules read.

A hook asks the EHR only for the data its rules need. "Need" is closed over everything a rule's
outcome depends on: the facts and context it tests, the presentation it requires, and the
findings of other rules it reads (stage 2), with their own needs in turn.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from ..rule_schema import SEVERITY_RANK, ContextPattern, FactPattern, Hook, Rule, Severity
from ..ruleset import RuleSet

HOOKS: tuple[Hook, ...] = ("patient-view", "order-select", "order-sign")
# Kinds of fact by the kind of concept they come from (codes.yaml `kind`).
FACT_OF_CONCEPT_KIND = {"lab": "lab", "finding": "finding", "condition": "problem",
                        "medication": "medication", "procedure": "procedure"}
# A concept no value set lists is derived during normalization (derived.yaml) from labs and
# coded conditions or signs: reading it means reading all of those.
DERIVED_SOURCES = frozenset({"lab", "problem", "finding"})


def highest_severity(rule: Rule) -> Severity:
    severities = [m.severity for m in rule.match] + [
        e.severity for m in rule.match for e in m.escalate]
    return max(severities, key=SEVERITY_RANK.__getitem__)


def shown_on(rule: Rule, hook: str, severity: Severity) -> bool:
    """Whether a finding of this rule at this severity becomes a card on this hook."""
    lowest = rule.hooks.get(hook)  # type: ignore[call-overload]
    return lowest is not None and SEVERITY_RANK[severity] >= SEVERITY_RANK[lowest]


def rules_for(ruleset: RuleSet, hook: str) -> list[Rule]:
    """Rules whose findings can be shown on the hook (at the highest severity they reach)."""
    return [r for r in ruleset.active_rules() if shown_on(r, hook, highest_severity(r))]


@dataclass(frozen=True)
class DataNeeds:
    fact_kinds: frozenset[str]

    @property
    def observations(self) -> bool:
        return bool(self.fact_kinds & {"lab", "finding"})

    @property
    def conditions(self) -> bool:
        return bool(self.fact_kinds & {"problem", "finding"})

    @property
    def medications(self) -> bool:
        return "medication" in self.fact_kinds

    @property
    def procedures(self) -> bool:
        return "procedure" in self.fact_kinds

    @property
    def draft_orders(self) -> bool:
        return "draft" in self.fact_kinds


def needs_of(ruleset: RuleSet, hook: str) -> DataNeeds:
    kinds: set[str] = {"patient"}
    for rule in _closure(ruleset, rules_for(ruleset, hook)):
        kinds |= _kinds_read(ruleset, rule)
    if kinds & {"problem", "finding"}:
        kinds |= {"lab"}  # derived problems (diabetes from HbA1c) come from labs
    return DataNeeds(frozenset(kinds))


def _closure(ruleset: RuleSet, shown: Iterable[Rule]) -> list[Rule]:
    """The shown rules and every rule whose findings they read, transitively."""
    active = ruleset.active_rules()
    stage_one = [r for r in active if r.stage == 1]
    todo = list(shown)
    seen: dict[str, Rule] = {}
    while todo:
        rule = todo.pop()
        if rule.id in seen:
            continue
        seen[rule.id] = rule
        for match in rule.match:
            contexts = [match.context, *(e.context for e in match.escalate)]
            for context in contexts:
                if context is None:
                    continue
                if context.below_severity:
                    todo += stage_one
                for pattern in context.without_findings:
                    todo += [r for r in active if fnmatch.fnmatchcase(r.id, pattern)]
            for fact in [*match.facts.values(), *(p for e in match.escalate
                                                  for p in e.facts.values())]:
                if fact.rule:
                    todo += [r for r in active if r.id == fact.rule]
    return [seen[k] for k in sorted(seen)]


def _kinds_read(ruleset: RuleSet, rule: Rule) -> set[str]:
    kinds: set[str] = set()
    if any(rule.presentation_required(m) for m in rule.match):
        group = ruleset.terminology.groups.get(ruleset.derived.presentation_group, ())
        kinds |= _concept_kinds(ruleset, group)
    for match in rule.match:
        for pattern in [*match.facts.values(), *(p for e in match.escalate
                                                 for p in e.facts.values())]:
            kinds |= _pattern_kinds(ruleset, pattern)
        for context in (match.context, *(e.context for e in match.escalate)):
            kinds |= _context_kinds(ruleset, context)
    for collect in rule.evidence_also:
        kinds.add(collect.fact)
    return kinds - {"result"}


def _pattern_kinds(ruleset: RuleSet, pattern: FactPattern) -> set[str]:
    facts = pattern.kinds
    return set(facts)


def _context_kinds(ruleset: RuleSet, context: ContextPattern | None) -> set[str]:
    if context is None:
        return set()
    kinds = _concept_kinds(ruleset, [*context.presents, *context.presents_any, *context.absent])
    if context.measured_within or context.not_measured_within:
        kinds.add("lab")
    sets = ruleset.derived.counted_group_sets
    for name in context.group_sets:
        if name not in sets:
            continue
        for group in sets[name].groups:
            kinds |= _concept_kinds(ruleset, ruleset.terminology.groups.get(group, ()))
        # a group left uncounted when a condition is present (derived.yaml not_counted)
        kinds |= _concept_kinds(ruleset, [n.when_present for n in sets[name].not_counted])
    return kinds


def _concept_kinds(ruleset: RuleSet, concepts: Iterable[str]) -> set[str]:
    kinds: set[str] = set()
    for concept in concepts:
        if concept in ruleset.lab_families:
            kinds.add("lab")
            continue
        found = ruleset.terminology.concepts.get(concept)
        if found is None:
            kinds |= DERIVED_SOURCES
        else:
            kinds.add(FACT_OF_CONCEPT_KIND.get(found.kind, "finding"))
    return kinds
