"""Where the rules draw their lines: every numeric lab threshold, converted exactly into the
concept's canonical unit.

The compiler (engine tests) and the report charts (threshold lines) use this one conversion, so a
chart can never draw a line where the engine does not test.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

from .rule_schema import Comparison, FactPattern, Rule
from .units import UnitTable

BOUND_OPERATORS = ("lt", "lte", "gt", "gte", "eq")


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


def _bounds(comparison: Comparison) -> Iterator[tuple[str, float]]:
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
            named = [*([pattern.concept] if pattern.concept else []), *(pattern.concepts or [])]
            if concept not in named or pattern.value is None:
                continue
            for operator, bound in _bounds(pattern.value):
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
                named.update([*([pattern.concept] if pattern.concept else []),
                              *(pattern.concepts or [])])
    in_table = [c for analyte in units.analytes.values() for c in analyte.concepts]
    return tuple(c for c in in_table if c in named)
