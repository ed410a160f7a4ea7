"""The value thresholds the loaded rules compare each lab concept against, read from the rule
models (never a hand-kept list), as ladders: the test that makes a finding and the tests that
raise its severity. Normalization uses them to decide values sent with a comparator (`<12`)
and which of two same-time results is the more abnormal (docs/clinical-basis.md, Definitions).

Every threshold is converted to the canonical unit by `threshold_to_canonical`, the one
conversion the compiler (engine tests), normalization (ladders) and the report charts (threshold
lines) share, so none can draw a line where another does not test."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from .rule_schema import SEVERITY_RANK, Comparison, FactPattern, Rule
from .units import UnitTable

Field = Literal["value", "times_upper_limit"]
BOUND_OPERATORS = ("lt", "lte", "gt", "gte", "eq")


@dataclass(frozen=True)
class Interval:
    """Where a value lies: a point, or a half-line from a comparator (`<12` is (-inf, 12))."""

    low: Fraction | None
    low_open: bool
    high: Fraction | None
    high_open: bool

    @classmethod
    def of(cls, comparator: str | None, value: Fraction) -> Interval | None:
        """None for a comparator that bounds nothing (FHIR `ad`: sensitive to the assay)."""
        if comparator is None:
            return cls(value, False, value, False)
        shapes = {"<": (None, False, value, True), "<=": (None, False, value, False),
                  ">": (value, True, None, False), ">=": (value, False, None, False)}
        shape = shapes.get(comparator)
        return cls(*shape) if shape else None

    def scaled(self, factor: Fraction) -> Interval:
        """The interval divided by a positive factor (a value as a multiple of a limit)."""
        return Interval(None if self.low is None else self.low / factor, self.low_open,
                        None if self.high is None else self.high / factor, self.high_open)


def _bound_over(op: str, threshold: Fraction, where: Interval) -> bool | None:
    """Whether `value op threshold` holds for every value in the interval (True), for none
    (False), or for some only (None)."""
    low, high = where.low, where.high
    if op == "lt":
        if high is not None and (high < threshold or (high == threshold and where.high_open)):
            return True
        if low is not None and low >= threshold:
            return False
    elif op == "lte":
        if high is not None and high <= threshold:
            return True
        if low is not None and (low > threshold or (low == threshold and where.low_open)):
            return False
    elif op == "gt":
        if low is not None and (low > threshold or (low == threshold and where.low_open)):
            return True
        if high is not None and high <= threshold:
            return False
    elif op == "gte":
        if low is not None and low >= threshold:
            return True
        if high is not None and (high < threshold or (high == threshold and where.high_open)):
            return False
    else:  # eq
        if low == high == threshold and low is not None:
            return True
        if (high is not None and high < threshold) or (low is not None and low > threshold):
            return False
    return None


@dataclass(frozen=True)
class ValueTest:
    """An AND of bounds on one field of a lab fact, thresholds in the concept's canonical unit."""

    field: Field
    bounds: tuple[tuple[str, Fraction], ...]

    def over(self, where: Interval) -> bool | None:
        results = [_bound_over(op, threshold, where) for op, threshold in self.bounds]
        if any(r is False for r in results):
            return False
        return True if all(r is True for r in results) else None

    def holds(self, value: Fraction) -> bool:
        return self.over(Interval(value, False, value, False)) is True

    @property
    def upward(self) -> bool:
        """An "above" test (hyper-, CK): the more abnormal value is the higher one."""
        return any(op in ("gt", "gte") for op, _ in self.bounds)


@dataclass(frozen=True)
class ThresholdLadder:
    """One rule alternative's tests on one lab concept: the finding, then its escalations."""

    source: str
    concept: str
    test: ValueTest
    severity: str
    steps: tuple[tuple[str, ValueTest], ...] = ()

    def rank_at(self, value: Fraction, ratio: Fraction | None = None) -> int:
        """Severity rank this ladder gives a value (0: no finding)."""
        def holds(test: ValueTest) -> bool:
            if test.field == "times_upper_limit":
                return ratio is not None and test.holds(ratio)
            return test.holds(value)

        if not holds(self.test):
            return 0
        return max([SEVERITY_RANK[self.severity],
                    *(SEVERITY_RANK[s] for s, step in self.steps if holds(step))])


def rule_ladders(
    rule: Rule, units: UnitTable, families: Mapping[str, tuple[str, ...]]
) -> Iterator[ThresholdLadder]:
    """The ladders of a rule: per match alternative and binding, per lab concept tested."""
    for match in rule.match:
        for binding, pattern in match.facts.items():
            base = _tests(pattern, units, families)
            steps: dict[str, list[tuple[str, ValueTest]]] = {}
            for escalation in match.escalate:
                extra = escalation.facts.get(binding)
                if extra is None:
                    continue
                for concept, test in _tests(extra, units, families):
                    steps.setdefault(concept, []).append((escalation.severity, test))
            tested = {concept for concept, _ in base} | set(steps)
            for concept in sorted(tested):
                own = [test for c, test in base if c == concept]
                for test in own or [ValueTest("value", ())]:
                    yield ThresholdLadder(rule.id, concept, test, match.severity,
                                          tuple(steps.get(concept, ())))
        contexts = [match.context, *(e.context for e in match.escalate)]
        for context in contexts:
            for pattern in context.without_facts if context else []:
                for concept, test in _tests(pattern, units, families):
                    yield ThresholdLadder(rule.id, concept, test, match.severity)


def _tests(
    pattern: FactPattern, units: UnitTable, families: Mapping[str, tuple[str, ...]]
) -> list[tuple[str, ValueTest]]:
    kinds = pattern.kinds
    if "lab" not in kinds:
        return []
    named = pattern.named_concepts
    concepts = [member for c in named for member in families.get(c, (c,))]
    out: list[tuple[str, ValueTest]] = []
    for concept in concepts:
        if pattern.value is not None:
            out.append((concept, ValueTest("value", _bounds(pattern.value, concept, units))))
        if pattern.times_upper_limit is not None:
            out.append((concept, ValueTest("times_upper_limit",
                                           _bounds(pattern.times_upper_limit, None, units))))
    return out


def _bounds(
    comparison: Comparison, concept: str | None, units: UnitTable
) -> tuple[tuple[str, Fraction], ...]:
    """The comparison's bounds, converted exactly as the compiler converts them."""
    bounds = []
    for op in BOUND_OPERATORS:
        bound = getattr(comparison, op)
        if bound is None:
            continue
        threshold = Fraction(repr(bound))
        if concept is not None:
            converted = threshold_to_canonical(units, concept, bound, comparison.unit)
            if converted is None:
                continue  # check_references refuses such a rule
            threshold = converted
        bounds.append((op, threshold))
    return tuple(bounds)


# --- thresholds as the rules write them: the compiler's engine tests and the report's chart lines


def threshold_to_canonical(units: UnitTable, concept: str, bound: float,
                           unit: str | None) -> Fraction | None:
    """A rule's bound in the concept's canonical unit, or None when it cannot be converted.

    The bound is read as the decimal the rule file wrote (``Fraction(repr(bound))``), not as its
    binary float, so 8.5 mg/dL converts to exactly the value a lab's 8.5 mg/dL does. A bound
    without a unit is in the canonical unit.
    """
    return units.to_canonical(concept, Fraction(repr(bound)),
                              unit or units.canonical_unit(concept))


@dataclass(frozen=True)
class RuleThreshold:
    """One bound of one rule's comparison on one lab concept."""

    rule_id: str
    severity: str
    concept: str
    operator: str
    bound: float
    unit: str | None
    canonical: Fraction


def _patterns(rule: Rule) -> Iterator[tuple[str, FactPattern]]:
    for match in rule.match:
        yield from ((match.severity, p) for p in match.facts.values())
        for escalation in match.escalate:
            yield from ((escalation.severity, p) for p in escalation.facts.values())


def _written_bounds(comparison: Comparison) -> Iterator[tuple[str, float]]:
    for operator in BOUND_OPERATORS:
        bound = getattr(comparison, operator)
        if bound is not None:
            yield operator, bound


def lab_thresholds(rules: tuple[Rule, ...], units: UnitTable,
                   concept: str) -> list[RuleThreshold]:
    """Every bound the rules compare `concept` against (named directly, not through a family),
    in rule file order; bounds that cannot be converted are left out."""
    found: list[RuleThreshold] = []
    for rule in rules:
        for severity, pattern in _patterns(rule):
            named = pattern.named_concepts
            if concept not in named or pattern.value is None:
                continue
            for operator, bound in _written_bounds(pattern.value):
                canonical = threshold_to_canonical(units, concept, bound, pattern.value.unit)
                if canonical is not None:
                    found.append(RuleThreshold(rule.id, severity, concept, operator, bound,
                                               pattern.value.unit, canonical))
    return found


def compared_lab_concepts(rules: tuple[Rule, ...], units: UnitTable) -> tuple[str, ...]:
    """The lab concepts some rule compares with a number, in the order rules/units.yaml lists
    them (the order a clinician scans labs in): the labs a summary charts."""
    named: set[str] = set()
    for rule in rules:
        for _, pattern in _patterns(rule):
            if pattern.value is not None:
                named.update(pattern.named_concepts)
    in_table = [c for analyte in units.analytes.values() for c in analyte.concepts]
    return tuple(c for c in in_table if c in named)
