"""Rule files to durable-rules rulesets (the engine's JSON form), and facts to engine messages.

Each rule becomes one durable-rules rule per (match alternative, severity level): the escalation
tests are ANDed onto the base match, so the engine itself decides the severity and the highest
level that fired wins. Every rule runs the same host action, which only records the match.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from .facts import ClinicalFact, DraftOrder, LabResult, Medication, PatientContext, PatientFact
from .rule_schema import SEVERITY_RANK, Comparison, ContextPattern, FactPattern, Match, Rule
from .ruleset import RuleSet

_UNSAFE = re.compile(r"[^a-z0-9]+")
_OPS = ("lt", "lte", "gt", "gte", "eq")

JsonDict = dict[str, Any]


@functools.lru_cache(maxsize=4096)  # called for every concept of every patient's context
def field_name(prefix: str, name: str) -> str:
    """Engine field for a concept/class/group/rule name: `has_muscle_cramp`, `in_loop_diuretic`."""
    return f"{prefix}_{_UNSAFE.sub('_', name.lower()).strip('_')}"


@dataclass(frozen=True)
class CompiledRule:
    """What one engine rule stands for: which rule file, which alternative, which severity."""

    rule_id: str
    match_index: int
    severity: str
    bindings: tuple[str, ...]


@dataclass(frozen=True)
class CompiledStage:
    name: str
    definition: JsonDict
    rules: Mapping[str, CompiledRule]
    context_fields: frozenset[str]
    """The context fields the stage's rules test: the only ones worth sending to the engine."""


def compile_stage(ruleset: RuleSet, stage: int, name: str) -> CompiledStage:
    definition: JsonDict = {}
    compiled: dict[str, CompiledRule] = {}
    stage_one_ids = [r.id for r in ruleset.active_rules() if r.stage == 1]
    for rule in ruleset.active_rules():
        if rule.stage != stage:
            continue
        for m_index, match in enumerate(rule.match):
            levels: list[tuple[str, ContextPattern | None, Mapping[str, FactPattern]]] = [
                (match.severity, None, {})
            ]
            levels += [(e.severity, e.context, e.facts) for e in match.escalate]
            for severity, extra_context, extra_facts in levels:
                engine_name = f"r{len(compiled)}"
                conditions = _compile_match(
                    ruleset, rule, match, extra_context, extra_facts, stage_one_ids
                )
                definition[engine_name] = {"all": conditions, "run": f"emit:{engine_name}"}
                compiled[engine_name] = CompiledRule(
                    rule.id, m_index, severity, tuple(match.facts)
                )
    context_fields = frozenset(
        key for rule in definition.values() for condition in rule["all"]
        for key in _field_names(condition.get("context", {})))
    return CompiledStage(name, definition, compiled, context_fields)


def _field_names(node: Any) -> set[str]:
    """Fact field names a compiled condition reads (keys that are not `$` operators)."""
    if isinstance(node, list):
        return set().union(*(_field_names(item) for item in node))
    if not isinstance(node, dict):
        return set()
    names: set[str] = set()
    for key, value in node.items():
        names |= _field_names(value) if key.startswith("$") else {key}
    return names


def _compile_match(
    ruleset: RuleSet,
    rule: Rule,
    match: Match,
    extra_context: ContextPattern | None,
    extra_facts: Mapping[str, FactPattern],
    stage_one_ids: list[str],
) -> list[JsonDict]:
    ctx: list[JsonDict] = [{"t": "context"}]
    if rule.requires_presentation:
        ctx.append({"presenting": True})
    for context in (match.context, extra_context):
        if context is not None:
            ctx += _context_conditions(ruleset, context, stage_one_ids)
    conditions: list[JsonDict] = [{"context": _and(ctx)}]
    for binding, pattern in match.facts.items():
        tests = _pattern_conditions(ruleset, pattern)
        if binding in extra_facts:
            tests += _pattern_conditions(ruleset, extra_facts[binding])
        conditions.append({binding: _and(tests)})
    return conditions


def _and(tests: list[JsonDict]) -> JsonDict:
    return tests[0] if len(tests) == 1 else {"$and": tests}


def _or(tests: list[JsonDict]) -> JsonDict:
    return tests[0] if len(tests) == 1 else {"$or": tests}


def _comparison(field: str, comparison: Comparison, convert: Any = None) -> list[JsonDict]:
    tests = []
    for op in _OPS:
        bound = getattr(comparison, op)
        if bound is None:
            continue
        threshold = convert(bound) if convert else float(bound)
        tests.append({field: threshold} if op == "eq" else {f"${op}": {field: threshold}})
    return tests


def _expand(ruleset: RuleSet, concepts: Iterable[str]) -> list[str]:
    out: list[str] = []
    for concept in concepts:
        out += list(ruleset.lab_families.get(concept, (concept,)))
    return out


def _pattern_conditions(ruleset: RuleSet, pattern: FactPattern) -> list[JsonDict]:
    kinds = pattern.fact if isinstance(pattern.fact, list) else [pattern.fact]
    tests: list[JsonDict] = [_or([{"t": k} for k in kinds])]
    concepts = _expand(ruleset, [*([pattern.concept] if pattern.concept else []),
                                 *(pattern.concepts or [])])
    if pattern.value is not None:
        value = pattern.value
        per_concept = []
        for concept in concepts:

            def convert(bound: float, concept: str = concept) -> float:
                canonical = ruleset.units.to_canonical(
                    concept, Fraction(repr(bound)),
                    value.unit or ruleset.units.canonical_unit(concept),
                )
                if canonical is None:
                    raise ValueError(f"cannot convert threshold for {concept}")
                return float(canonical)

            per_concept.append(_and([{"concept": concept}, *_comparison("value", value, convert)]))
        tests.append(_or(per_concept))
    elif concepts:
        tests.append(_or([{"concept": c} for c in concepts]))
    for concept in pattern.exclude_concepts:
        tests.append({"$neq": {"concept": concept}})
    if pattern.in_class:
        tests.append({field_name("in", pattern.in_class): True})
    if pattern.in_groups:
        tests.append(_or([{field_name("in", g): True} for g in pattern.in_groups]))
    if pattern.latest is not None:
        tests.append({"is_latest": pattern.latest})
    if pattern.max_age_days is not None:
        tests.append({"$lte": {"age_days": float(pattern.max_age_days)}})
    if pattern.active is not None:
        tests.append({"active": pattern.active})
    if pattern.rule:
        tests.append({"rule_id": pattern.rule})
    return tests


def _context_conditions(
    ruleset: RuleSet, context: ContextPattern, stage_one_ids: list[str]
) -> list[JsonDict]:
    tests: list[JsonDict] = [{field_name("has", c): True} for c in context.presents]
    if context.presents_any:
        tests.append(_or([{field_name("has", c): True} for c in context.presents_any]))
    tests += [{field_name("has", c): False} for c in context.absent]
    if context.measured_within:
        spec = context.measured_within
        days = float(spec.days)
        tests += [{"$lte": {field_name("days", c): days}} for c in spec.all_of or []]
        if spec.any_of:
            tests.append(_or([{"$lte": {field_name("days", c): days}} for c in spec.any_of]))
    if context.not_measured_within:
        spec = context.not_measured_within
        days = float(spec.days)
        tests += [{"$gt": {field_name("days", c): days}} for c in spec.all_of or []]
        if spec.any_of:
            tests.append(_or([{"$gt": {field_name("days", c): days}} for c in spec.any_of]))
    for name, comparison in context.group_sets.items():
        tests += _comparison(field_name("n", name), comparison)
    if context.below_severity:
        tests.append({"$lt": {"max_rank": float(SEVERITY_RANK[context.below_severity])}})
    for pattern in context.without_findings:
        regex = re.compile("^" + re.escape(pattern).replace(r"\*", ".*") + "$")
        tests += [{field_name("found", r): False} for r in stage_one_ids if regex.match(r)]
    return tests


# --- facts to engine messages -------------------------------------------------------------


def encode_fact(fact: ClinicalFact, key: str, ruleset: RuleSet) -> JsonDict:
    """The engine's view of a fact: flat fields only, plus `id` (its key back to the fact)."""
    message: JsonDict = {"id": key, "t": fact.kind}
    if isinstance(fact, PatientFact):
        return message
    message["concept"] = fact.concept
    if isinstance(fact, LabResult):
        message.update(value=fact.value, is_latest=fact.is_latest, age_days=fact.age_days)
    elif isinstance(fact, (Medication, DraftOrder)):
        if isinstance(fact, Medication):
            message["active"] = fact.active
        for cls in fact.classes:
            message[field_name("in", cls)] = True
    else:
        for group in fact.groups:
            message[field_name("in", group)] = True
    return message


def encode_context(
    context: PatientContext,
    ruleset: RuleSet,
    fields: frozenset[str],
    stage_one: Mapping[str, str] | None = None,
) -> JsonDict:
    """The closed-world context fact, limited to `fields`; `stage_one` (rule id -> severity)
    adds what second-stage rules test."""
    values: JsonDict = {"presenting": context.presenting}
    present = set(context.concepts_present)
    values.update({field_name("has", c): c in present for c in ruleset.terminology.concepts})
    values.update({field_name("days", c): days for c, days in context.days_since.items()})
    values.update({field_name("n", n): float(k) for n, k in context.group_set_counts.items()})
    if stage_one is not None:
        values["max_rank"] = float(max((SEVERITY_RANK[s] for s in stage_one.values()), default=0))
        values.update({field_name("found", r.id): r.id in stage_one
                       for r in ruleset.active_rules() if r.stage == 1})
    message: JsonDict = {"id": "context", "t": "context"}
    message.update({key: value for key, value in values.items() if key in fields})
    return message


def encode_result(rule_id: str, severity: str, key: str) -> JsonDict:
    return {"id": key, "t": "result", "rule_id": rule_id, "rank": float(SEVERITY_RANK[severity])}
