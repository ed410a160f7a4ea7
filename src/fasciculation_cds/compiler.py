"""Rule files to durable-rules rulesets (the engine's JSON form), and facts to engine messages.

Each rule becomes one durable-rules rule per (match alternative, severity level): the escalation
tests are ANDed onto the base match, so the engine itself decides the severity and the highest
level that fired wins. Every rule runs the same host action, which only records the match.
"""

from __future__ import annotations

import functools
import hashlib
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .facts import ClinicalFact, DraftOrder, LabResult, Medication, PatientContext, PatientFact
from .rule_schema import (
    SEVERITY_RANK,
    Comparison,
    ContextPattern,
    FactPattern,
    Match,
    NewerThan,
    Rule,
)
from .ruleset import RuleSet
from .thresholds import BOUND_OPERATORS, threshold_to_canonical

_UNSAFE = re.compile(r"[^a-z0-9]+")

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


DerivedTest = NewerThan | FactPattern
"""A closed-world test computed in Python before the engine runs (a context field)."""


@dataclass(frozen=True)
class CompiledStage:
    name: str
    definition: JsonDict
    rules: Mapping[str, CompiledRule]
    context_fields: frozenset[str]
    """The context fields the stage's rules test: the only ones worth sending to the engine."""
    derived: Mapping[str, DerivedTest]
    """Context fields computed from the facts: `newer` and `without_facts` tests, by field."""


def compile_stage(ruleset: RuleSet, stage: int, name: str) -> CompiledStage:
    definition: JsonDict = {}
    compiled: dict[str, CompiledRule] = {}
    derived: dict[str, DerivedTest] = {}
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
                    ruleset, rule, match, extra_context, extra_facts, stage_one_ids, derived
                )
                definition[engine_name] = {"all": conditions, "run": f"emit:{engine_name}"}
                compiled[engine_name] = CompiledRule(rule.id, m_index, severity)
    context_fields = frozenset(
        key for rule in definition.values() for condition in rule["all"]
        for key in _field_names(condition.get("context", {})))
    return CompiledStage(name, definition, compiled, context_fields, derived)


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
    derived: dict[str, DerivedTest],
) -> list[JsonDict]:
    ctx: list[JsonDict] = [{"t": "context"}]
    if rule.presentation_required(match):
        ctx.append({"presenting": True})
    for context in (match.context, extra_context):
        if context is not None:
            ctx += _context_conditions(ruleset, context, stage_one_ids, derived)
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
    for op in BOUND_OPERATORS:
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
    kinds = pattern.kinds
    tests: list[JsonDict] = [_or([{"t": k} for k in kinds])]
    concepts = _expand(ruleset, pattern.named_concepts)
    if pattern.value is not None:
        value = pattern.value
        per_concept = []
        for concept in concepts:

            def convert(bound: float, concept: str = concept) -> float:
                canonical = threshold_to_canonical(ruleset.units, concept, bound, value.unit)
                if canonical is None:
                    raise ValueError(f"cannot convert threshold for {concept}")
                return float(canonical)

            per_concept.append(_and([{"concept": concept}, *_comparison("value", value, convert)]))
        tests.append(_or(per_concept))
    elif concepts:
        tests.append(_or([{"concept": c} for c in concepts]))
    if pattern.times_upper_limit is not None:
        tests += _comparison("uln_times", pattern.times_upper_limit)
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
    if pattern.outside_reference_range is not None:
        tests.append({"outside_range": pattern.outside_reference_range})
    if pattern.rule:
        tests.append({"rule_id": pattern.rule})
    return tests


def _context_conditions(
    ruleset: RuleSet,
    context: ContextPattern,
    stage_one_ids: list[str],
    derived: dict[str, DerivedTest],
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
    if context.partial is not None:
        tests.append({"partial": context.partial})
    if context.conflicting:
        tests.append(_or([{field_name("conflicting", c): True}
                          for c in _expand(ruleset, context.conflicting)]))
    tests += [{field_name("conflicting", c): False}
              for c in _expand(ruleset, context.not_conflicting)]
    if context.newer is not None:
        name = _derived_field("newer", context.newer)
        derived[name] = context.newer.model_copy(update={"is_": True})
        tests.append({name: context.newer.is_})
    for fact_pattern in context.without_facts:
        name = _derived_field("anyfact", fact_pattern)
        derived[name] = fact_pattern
        tests.append({name: False})
    return tests


def _derived_field(prefix: str, test: DerivedTest) -> str:
    """A stable engine field name for a derived test: the same test gives the same field."""
    shape = test.model_dump_json(exclude={"is_"}) if isinstance(test, NewerThan) else \
        test.model_dump_json()
    return f"{prefix}_{hashlib.sha256(shape.encode()).hexdigest()[:12]}"


# --- closed-world tests in Python -------------------------------------------------------------

_COMPARE: Mapping[str, Callable[[float, float], bool]] = {
    "lt": operator.lt, "lte": operator.le, "gt": operator.gt, "gte": operator.ge,
    "eq": operator.eq}


def _holds(value: float | None, comparison: Comparison,
           convert: Callable[[float], float] | None = None) -> bool:
    if value is None:
        return False
    for op in BOUND_OPERATORS:
        bound = getattr(comparison, op)
        if bound is not None and not _COMPARE[op](value, convert(bound) if convert else bound):
            return False
    return True


def upper_limit_multiple(fact: LabResult) -> float | None:
    """The value as a multiple of the upper limit normalization found for it (CK)."""
    return fact.value / fact.upper_limit if fact.upper_limit else None


def fact_matches(pattern: FactPattern, fact: ClinicalFact, ruleset: RuleSet) -> bool:
    """The Python twin of `_pattern_conditions`, for closed-world `without_facts` tests."""
    kinds = pattern.kinds
    if fact.kind not in kinds or isinstance(fact, PatientFact):
        return False
    concept = str(getattr(fact, "concept", ""))
    concepts = _expand(ruleset, pattern.named_concepts)
    if (concepts and concept not in concepts) or concept in pattern.exclude_concepts:
        return False
    if pattern.in_class and pattern.in_class not in getattr(fact, "classes", ()):
        return False
    if pattern.in_groups and not set(pattern.in_groups) & set(getattr(fact, "groups", ())):
        return False
    if pattern.latest is not None and getattr(fact, "is_latest", None) != pattern.latest:
        return False
    age = getattr(fact, "age_days", None)
    if pattern.max_age_days is not None and (age is None or age > pattern.max_age_days):
        return False
    if pattern.value is not None:
        value = pattern.value

        def convert(bound: float) -> float:
            canonical = threshold_to_canonical(ruleset.units, concept, bound, value.unit)
            if canonical is None:
                raise ValueError(f"cannot convert threshold for {concept}")
            return float(canonical)

        if not isinstance(fact, LabResult) or not _holds(fact.value, value, convert):
            return False
    if pattern.times_upper_limit is not None:
        multiple = upper_limit_multiple(fact) if isinstance(fact, LabResult) else None
        if not _holds(multiple, pattern.times_upper_limit):
            return False
    if pattern.outside_reference_range is not None and (
            not isinstance(fact, LabResult)
            or outside_reference_range(fact) != pattern.outside_reference_range):
        return False
    return pattern.rule is None


def outside_reference_range(fact: LabResult) -> bool:
    """Strictly below the result's own referenceRange.low or above its high (canonical)."""
    return ((fact.reference_low is not None and fact.value < fact.reference_low)
            or (fact.reference_high is not None and fact.value > fact.reference_high))


def derived_values(
    derived: Mapping[str, DerivedTest],
    context: PatientContext,
    facts: Sequence[ClinicalFact],
    ruleset: RuleSet,
) -> JsonDict:
    """Values of the derived context fields for one patient."""
    values: JsonDict = {}
    for name, test in derived.items():
        if isinstance(test, NewerThan):
            days = context.days_since.get(test.concept)
            others = [context.days_since.get(c) for c in _expand(ruleset, test.than)]
            newest_other = min((d for d in others if d is not None), default=float("inf"))
            values[name] = days is not None and days <= newest_other
        else:
            values[name] = any(fact_matches(test, fact, ruleset) for fact in facts)
    return values


# --- facts to engine messages -------------------------------------------------------------


def encode_fact(fact: ClinicalFact, key: str, ruleset: RuleSet) -> JsonDict:
    """The engine's view of a fact: flat fields only, plus `id` (its key back to the fact)."""
    message: JsonDict = {"id": key, "t": fact.kind}
    if isinstance(fact, PatientFact):
        return message
    message["concept"] = fact.concept
    if isinstance(fact, LabResult):
        message.update(value=fact.value, is_latest=fact.is_latest, age_days=fact.age_days,
                       outside_range=outside_reference_range(fact))
        multiple = upper_limit_multiple(fact)
        if multiple is not None:
            message["uln_times"] = multiple
    elif isinstance(fact, (Medication, DraftOrder)):
        for cls in fact.classes:
            message[field_name("in", cls)] = True
    else:
        for group in fact.groups:
            message[field_name("in", group)] = True
        age = getattr(fact, "age_days", None)  # procedures: days since performed
        if isinstance(age, (int, float)):
            message["age_days"] = float(age)
    return message


def encode_context(
    context: PatientContext,
    ruleset: RuleSet,
    fields: frozenset[str],
    stage_one: Mapping[str, str] | None = None,
    derived: JsonDict | None = None,
) -> JsonDict:
    """The closed-world context fact, limited to `fields`; `stage_one` (rule id -> severity)
    adds what second-stage rules test, `derived` the values of `derived_values`."""
    names = _context_names(ruleset, fields)
    values: JsonDict = {"presenting": context.presenting, "partial": context.partial,
                        **(derived or {})}
    present = set(context.concepts_present)
    values.update({name: concept in present for concept, name in names.has})
    conflicting = set(context.conflicting)
    values.update({name: concept in conflicting for concept, name in names.conflicting})
    values.update({field_name("days", c): days for c, days in context.days_since.items()})
    values.update({field_name("n", n): float(k) for n, k in context.group_set_counts.items()})
    if stage_one is not None:
        values["max_rank"] = float(max((SEVERITY_RANK[s] for s in stage_one.values()), default=0))
        values.update({name: rule_id in stage_one for rule_id, name in names.found})
    message: JsonDict = {"id": "context", "t": "context"}
    message.update({key: value for key, value in values.items() if key in fields})
    return message


@dataclass(frozen=True)
class _ContextNames:
    has: tuple[tuple[str, str], ...]
    found: tuple[tuple[str, str], ...]
    conflicting: tuple[tuple[str, str], ...]


@functools.lru_cache(maxsize=16)
def _context_names(ruleset: RuleSet, fields: frozenset[str]) -> _ContextNames:
    """(concept, field), (stage-one rule id, field) and (lab concept, conflicting field) pairs a
    stage reads: worked out once per rule set and stage, not once per patient."""
    has = [(c, field_name("has", c)) for c in ruleset.terminology.concepts]
    found = [(r.id, field_name("found", r.id)) for r in ruleset.active_rules() if r.stage == 1]
    conflicting = [(c.id, field_name("conflicting", c.id))
                   for c in ruleset.terminology.concepts.values() if c.kind == "lab"]
    return _ContextNames(tuple(p for p in has if p[1] in fields),
                         tuple(p for p in found if p[1] in fields),
                         tuple(p for p in conflicting if p[1] in fields))


def encode_result(rule_id: str, severity: str, key: str) -> JsonDict:
    return {"id": key, "t": "result", "rule_id": rule_id, "rank": float(SEVERITY_RANK[severity])}
