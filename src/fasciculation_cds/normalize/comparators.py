"""Lab values sent with a comparator (`<12 ng/mL`), decided against the rules' own thresholds.

docs/clinical-basis.md, "Lab results", comparators: the result is used when its bound decides
every rule comparison on its concept without doubt; when a bound leaves a finding undecided
(`<25 ng/mL` against 20) it counts as missing; when it proves a finding but not its severity
(`<20 ng/mL`, `<=0.5 mmol/L` Mg) it is used at the severity the bound proves. Both cases give a
notice `comparator-indeterminate`. A used result takes the value at its bound (just inside it for a
strict comparator), which is where it is least severe.
"""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

from ..thresholds import Interval, ValueTest
from .common import Content, Notice
from .labs import LabReading, upper_limit

# How far inside a strict bound the used value lies, relative to the bound: far below any
# threshold spacing, far above float rounding.
_INSIDE = Fraction(1, 10**9)


def resolve_comparators(
    content: Content, readings: list[LabReading]
) -> tuple[list[LabReading], list[Notice]]:
    """Readings with comparators decided (kept at a value, or dropped), with their notices."""
    kept, notices = [], []
    for lab in readings:
        if lab.comparator is None:
            kept.append(lab)
            continue
        decided = _decide(content, lab)
        label = content.term.concepts[lab.concept].label
        if decided is None:
            notices.append(Notice(
                "comparator-indeterminate", lab.reference,
                f"{label} result {lab.reference} is reported as {lab.reported}: that bound does "
                "not decide the rules' thresholds, so it counts as missing"))
            continue
        value, maybe_worse = decided
        if maybe_worse:
            notices.append(Notice(
                "comparator-indeterminate", lab.reference,
                f"{label} result {lab.reference} is reported as {lab.reported}: used at the "
                "severity that bound proves; the true value may be more severe"))
        kept.append(replace(lab, value=value))
    return kept, notices


def _decide(content: Content, lab: LabReading) -> tuple[Fraction, bool] | None:
    """(value to use, whether a severity stays undecided), or None when a finding is undecided."""
    where = Interval.of(lab.comparator, lab.value)
    if where is None:
        return None
    limit = upper_limit(content, lab)

    def over(test: ValueTest) -> bool | None:
        if test.field == "times_upper_limit":
            return test.over(where.scaled(limit)) if limit else None
        return test.over(where)

    maybe_worse = False
    proven: set[str] = set()
    undecided = []
    for ladder in content.ruleset.lab_thresholds(lab.concept):
        found = over(ladder.test)
        if found is None:
            undecided.append(ladder.source)
        elif found:
            proven.add(ladder.source)
            if any(over(step) is None for _, step in ladder.steps):
                maybe_worse = True
    # An undecided test of a rule the bound already proves only leaves its severity open (a
    # statin's CK "> 1000 U/L": above the limit, perhaps above 10 x); any other counts as missing.
    if any(source not in proven for source in undecided):
        return None
    return _at_bound(lab.comparator, lab.value), maybe_worse or bool(undecided)


def _at_bound(comparator: str | None, bound: Fraction) -> Fraction:
    step = max(abs(bound), Fraction(1)) * _INSIDE
    if comparator == "<":
        return bound - step
    if comparator == ">":
        return bound + step
    return bound
