"""Boundary cases generated from the loaded rules: for every value threshold of every rule, a value
just below, at and just above it, in every unit rules/units.yaml accepts for the concept, and the
look-back day inside and outside, each through the whole path (FHIR -> normalization -> engine).

The thresholds, comparisons and look-backs are read from the RuleSet, never restated here. What
the test knows independently is the unit arithmetic: the conversion factors documented in
docs/clinical-references.md (from molar masses), so a wrong factor in units.yaml puts the values
in the other units on the wrong side of the threshold. The severity each match fired at is read
from the engine's hits, so the expected severity is that match's ladder: the base test, then
each escalation whose tests are all on the value.
"""

from __future__ import annotations

import importlib
import operator
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from fasciculation_cds import evaluate
from fasciculation_cds.assessment import Assessment
from fasciculation_cds.errors import RuleFileError
from fasciculation_cds.evaluate import evaluate_each
from fasciculation_cds.findings import build_finding
from fasciculation_cds.rule_schema import SEVERITY_RANK, Comparison, FactPattern, Match, Rule
from fasciculation_cds.ruleset import RuleSet, load_rules
from fasciculation_cds.thresholds import BOUND_OPERATORS

from .conftest import RULES_DIR

# the module (the package exports a function of the same name)
evaluate_module = importlib.import_module("fasciculation_cds.evaluate")
AS_OF = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"

# docs/clinical-references.md, conversion factors: factor to the canonical unit of units.yaml,
# per analyte and unit
# (Ca 40.08, Mg 24.305, K 39.098, P 30.97, 25-OH-D3 400.6, cobalamin 1355.4, glucose 180.16,
# T4 776.87 g/mol; 1 ukat = 60 U). Independent of units.yaml on purpose.
SPEC_FACTORS: Mapping[str, Mapping[str, Fraction]] = {
    "calcium": {"mmol/L": Fraction(1), "mg/dL": Fraction("0.2495"), "mEq/L": Fraction("0.5")},
    "albumin": {"g/L": Fraction(1), "g/dL": Fraction(10), "umol/L": Fraction("0.0665")},
    "magnesium": {"mmol/L": Fraction(1), "mg/dL": Fraction("0.4114"), "mEq/L": Fraction("0.5")},
    "potassium": {"mmol/L": Fraction(1), "mEq/L": Fraction(1), "mg/dL": Fraction("0.2558")},
    "sodium": {"mmol/L": Fraction(1), "mEq/L": Fraction(1)},
    "phosphate": {"mmol/L": Fraction(1), "mg/dL": Fraction("0.3229")},
    "vitamin-d-25oh": {"nmol/L": Fraction(1), "ng/mL": Fraction("2.496"),
                       "ug/L": Fraction("2.496")},
    "vitamin-b12": {"pmol/L": Fraction(1), "pg/mL": Fraction("0.7378"),
                    "ng/L": Fraction("0.7378")},
    "creatine-kinase": {"U/L": Fraction(1), "IU/L": Fraction(1), "ukat/L": Fraction(60)},
    "tsh": {"m[IU]/L": Fraction(1), "uIU/mL": Fraction(1), "mIU/L": Fraction(1)},
    "free-t4": {"ng/dL": Fraction(1), "pmol/L": 1 / Fraction("12.87"), "ng/L": Fraction(1, 10)},
    "creatinine": {"umol/L": Fraction(1), "mmol/L": Fraction(1000), "mg/dL": Fraction("88.4")},
    "egfr": {"mL/min/{1.73_m2}": Fraction(1), "mL/min": Fraction(1)},
    "hba1c": {"%": Fraction(1)},
    "glucose": {"mg/dL": Fraction(1), "mmol/L": Fraction("18.016")},
    "audit-c": {"{score}": Fraction(1), "1": Fraction(1)},
}
# Outside the threshold's own unit, "just below/above" is this far away: wider than the rounding
# of the factors above (< 2e-4), far narrower than any real factor error.
OTHER_UNIT_MARGIN = Fraction(2, 1000)
OWN_UNIT_STEP = Fraction(1, 10000)

_COMPARE: Mapping[str, Callable[[Any, Any], bool]] = {
    "lt": operator.lt, "lte": operator.le, "gt": operator.gt, "gte": operator.ge,
    "eq": operator.eq}


@dataclass(frozen=True)
class Target:
    """One lab binding of one match that carries a threshold."""

    rule: Rule
    index: int
    binding: str
    pattern: FactPattern

    @property
    def match(self) -> Match:
        return self.rule.match[self.index]

    @property
    def concept(self) -> str:
        return self.pattern.named_concepts[0]

    @property
    def name(self) -> str:
        return f"{self.rule.id}:{self.index}:{self.binding}"


def _derived_companion(ruleset: RuleSet, match: Match, binding: str) -> bool:
    """Another fact of the match is a lab concept normalization derives (an earlier eGFR of a
    chronic pair): no single Observation makes it, so the rule's own fixtures pin those edges."""
    return any(other != binding and "lab" in p.kinds and not ruleset.terminology.codes_of(
        p.named_concepts) for other, p in match.facts.items())


def _targets(ruleset: RuleSet) -> list[Target]:
    found = []
    for rule in ruleset.active_rules():
        for index, match in enumerate(rule.match):
            for binding, pattern in match.facts.items():
                if "lab" in pattern.kinds and (
                        pattern.value is not None or pattern.times_upper_limit is not None) \
                        and not _derived_companion(ruleset, match, binding):
                    found.append(Target(rule, index, binding, pattern))
    return found


RULESET = load_rules(RULES_DIR)
TARGETS = _targets(RULESET)


def _levels(target: Target) -> list[tuple[str, Comparison | None, Comparison | None, bool]]:
    """The match's ladder: (severity, value test, multiple-of-limit test, pure), base first.
    A level is pure when all its tests are on the target's value."""
    match, binding = target.match, target.binding
    out: list[tuple[str, Comparison | None, Comparison | None, bool]] = [
        (match.severity, target.pattern.value, target.pattern.times_upper_limit, True)]
    for level in match.escalate:
        extra = level.facts.get(binding)
        pure = level.context is None and set(level.facts) <= {binding}
        out.append((level.severity, extra.value if extra else None,
                    extra.times_upper_limit if extra else None, pure))
    return out


# --- the record: everything the match needs besides the target value -------------------------


def _code_for(ruleset: RuleSet, concept: str, system: str | None = None) -> tuple[str, str]:
    pairs = ruleset.terminology.codes_of([concept])
    preferred = [p for p in pairs if system is None or p[0] == system]
    assert preferred, f"no {system or ''} code for {concept} in the value sets"
    return preferred[0]


def _condition(ruleset: RuleSet, concept: str, n: int) -> dict[str, Any]:
    system, code = _code_for(ruleset, concept)
    return {"resourceType": "Condition", "id": f"c{n}",
            "clinicalStatus": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                "code": "active"}]},
            "code": {"coding": [{"system": system, "code": code}]},
            "subject": {"reference": "Patient/p"},
            "onsetDateTime": (AS_OF - timedelta(days=5)).isoformat()}


def _drug(ruleset: RuleSet, pattern: FactPattern, n: int, draft: bool) -> dict[str, Any]:
    if pattern.in_class:
        ingredients = ruleset.terminology.classes[pattern.in_class]
        concept = next(c for c in ingredients if ruleset.terminology.codes_of([c]))
    else:
        concept = pattern.named_concepts[0]
    system, code = _code_for(ruleset, concept, RXNORM)
    return {"resourceType": "MedicationRequest", "id": f"m{n}",
            "status": "draft" if draft else "active", "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": system, "code": code}]},
            "subject": {"reference": "Patient/p"},
            "authoredOn": (AS_OF - timedelta(days=40)).isoformat()}


@dataclass(frozen=True)
class Setting:
    resources: tuple[dict[str, Any], ...]
    drafts: tuple[dict[str, Any], ...]


def _setting(ruleset: RuleSet, target: Target) -> Setting:
    """Resources that satisfy every test of the match except the target value; the patient
    presents with fasciculation (R25.3) whether or not the rule asks for it."""
    resources: list[dict[str, Any]] = [
        {"resourceType": "Patient", "id": "p", "gender": "female", "birthDate": "1970-01-01"},
        _condition(ruleset, "fasciculation", 0)]
    drafts: list[dict[str, Any]] = []
    context = target.match.context
    if context is not None:
        unhandled = context.group_sets or context.measured_within or context.not_measured_within
        assert not unhandled, f"{target.name}: extend the generator for this context test"
        for n, concept in enumerate([*context.presents, *context.presents_any[:1]], start=1):
            if not ruleset.terminology.codes_of([concept]):  # derived (from fasciculation)
                continue
            resources.append(_condition(ruleset, concept, n))
    if target.pattern.latest is False:  # "not the latest": a newer result the test does not hold
        resources.append(_newer_result(RULESET, target))
    for n, (binding, pattern) in enumerate(target.match.facts.items(), start=10):
        if binding == target.binding:
            continue
        if pattern.kinds == ["draft"]:
            drafts.append(_drug(ruleset, pattern, n, draft=True))
        elif pattern.kinds == ["medication"]:
            resources.append(_drug(ruleset, pattern, n, draft=False))
        elif set(pattern.kinds) <= {"problem", "finding"}:
            candidates = pattern.named_concepts or list(
                ruleset.terminology.groups[(pattern.in_groups or [""])[0]])
            concept = next(c for c in candidates if ruleset.terminology.codes_of([c]))
            resources.append(_condition(ruleset, concept, n))
        else:
            pytest.fail(f"{target.name}: extend the generator for {pattern.kinds} facts")
    return Setting(tuple(resources), tuple(drafts))


def _newer_result(ruleset: RuleSet, target: Target) -> dict[str, Any]:
    """Half a day before as_of, newer than every case: twice a lower bound, half an upper one."""
    comparison = target.pattern.value
    assert comparison is not None, target.name
    low = comparison.lt if comparison.lt is not None else comparison.lte
    high = comparison.gt if comparison.gt is not None else comparison.gte
    value = Decimal(str(low)) * 2 if low is not None else Decimal(str(high)) / 2
    unit = comparison.unit or ruleset.units.canonical_unit(target.concept) or ""
    newer = _observation(ruleset, target.concept, value, unit, AS_OF - timedelta(hours=12))
    return {**newer, "id": "lab-newer"}


def _observation(ruleset: RuleSet, concept: str, value: Decimal, unit: str,
                 when: datetime) -> dict[str, Any]:
    system, code = _code_for(ruleset, concept, LOINC)
    return {"resourceType": "Observation", "id": "lab", "status": "final",
            "code": {"coding": [{"system": system, "code": code}]},
            "subject": {"reference": "Patient/p"},
            "effectiveDateTime": when.isoformat(),
            "valueQuantity": {"value": float(value), "unit": unit,
                              "system": "http://unitsofmeasure.org", "code": unit}}


# --- values and what the rule's own comparison says about them ---------------------------------


def _analyte(ruleset: RuleSet, concept: str) -> str:
    return next(name for name, a in ruleset.units.analytes.items() if concept in a.concepts)


def _units(ruleset: RuleSet, concept: str) -> list[str]:
    return list(ruleset.units.analytes[_analyte(ruleset, concept)].conversions)


def _spec_factor(ruleset: RuleSet, concept: str, unit: str) -> Fraction:
    analyte = _analyte(ruleset, concept)
    factors = SPEC_FACTORS.get(analyte, SPEC_FACTORS.get(concept, {}))
    assert unit in factors, f"no documented factor for {analyte} in {unit}: add it here"
    return factors[unit]


@dataclass(frozen=True)
class Case:
    label: str
    value: Decimal
    unit: str
    when: datetime
    in_own_unit: Fraction
    """The value in the unit the threshold is written in (by the documented factors)."""


def _decimal(value: Fraction) -> Decimal:
    return Decimal(value.numerator) / Decimal(value.denominator)


def _round(value: Fraction, digits: int = 9) -> Fraction:
    return Fraction(str(round(_decimal(value), digits)))


def _cases(ruleset: RuleSet, target: Target) -> Iterator[Case]:
    """For each bound of each level: below, at (own unit only) and above, in every unit; then
    the look-back day inside and outside at a value the base test accepts."""
    values = list(_value_cases(ruleset, target))
    yield from values
    days = target.pattern.max_age_days
    accepted = [c for c in values if _holds(ruleset, c, target.pattern.value,
                                            target.pattern.times_upper_limit)]
    if days is not None and accepted:
        base = accepted[0]
        for label, age in (("inside", days), ("outside", days + 1)):
            yield Case(f"look-back {label}: {age} days before as_of", base.value, base.unit,
                       AS_OF - timedelta(days=age), base.in_own_unit)


def _value_cases(ruleset: RuleSet, target: Target) -> Iterator[Case]:
    concept = target.concept
    when = AS_OF - timedelta(days=1)
    uln = _uln(ruleset)
    for _, value, multiple, _ in _levels(target):
        for comparison, scale in ((value, None), (multiple, uln)):
            if comparison is None:
                continue
            own = comparison.unit or ruleset.units.canonical_unit(concept) or ""
            if scale is not None:
                own = ruleset.derived.creatine_kinase_upper_limit.default.unit
            for op in BOUND_OPERATORS:
                bound = getattr(comparison, op)
                if bound is None:
                    continue
                at = Fraction(str(bound)) * (scale or 1)
                for unit in _units(ruleset, concept):
                    to_unit = _spec_factor(ruleset, concept, own) / _spec_factor(
                        ruleset, concept, unit)
                    margin = OWN_UNIT_STEP if unit == own else OTHER_UNIT_MARGIN
                    for label, factor in (("below", 1 - margin), ("at", Fraction(1)),
                                          ("above", 1 + margin)):
                        if label == "at" and unit != own:
                            continue  # only the threshold's own unit has an exact "at"
                        sent = _round(at * factor * to_unit)
                        in_own = sent / to_unit
                        yield Case(f"{op} {bound}: {label} ({_decimal(sent)} {unit})",
                                   _decimal(sent), unit, when, in_own)


def _uln(ruleset: RuleSet) -> Fraction:
    return Fraction(str(ruleset.derived.creatine_kinase_upper_limit.default.value))


def _holds(ruleset: RuleSet, case: Case, value: Comparison | None,
           multiple: Comparison | None) -> bool:
    """The rule's stated comparison, evaluated on the value in the threshold's own unit."""
    for comparison, scale in ((value, Fraction(1)), (multiple, _uln(ruleset))):
        if comparison is None:
            continue
        own_value = case.in_own_unit / scale
        for op in BOUND_OPERATORS:
            bound = getattr(comparison, op)
            if bound is not None and not _COMPARE[op](own_value, Fraction(str(bound))):
                return False
    return True


def _expected(ruleset: RuleSet, target: Target, case: Case) -> tuple[str | None, bool]:
    """(severity the match's ladder gives, exact): None when the base test fails or the value is
    outside the look-back; not exact when a level also tests something else."""
    days = target.pattern.max_age_days
    if days is not None and (AS_OF - case.when) > timedelta(days=days):
        return None, True
    best: str | None = None
    exact = True
    for index, (severity, value, multiple, pure) in enumerate(_levels(target)):
        holds = _holds(ruleset, case, value, multiple)
        if index == 0 and not holds:
            return None, True
        if holds and pure:
            best = severity if best is None or SEVERITY_RANK[severity] > SEVERITY_RANK[best] \
                else best
        elif not pure:
            exact = False
    return best, exact


def _run(setting: Setting, observation: dict[str, Any],
         monkeypatch: pytest.MonkeyPatch) -> dict[tuple[str, int], str]:
    """(rule id, match index) -> the highest severity that match fired at, read from the engine's
    hits as they reach the findings (other matches of the rule may fire on the same record)."""
    fired: dict[tuple[str, int], str] = {}

    def recording(rule: Rule, hits: Any, *args: Any, **kwargs: Any) -> Any:
        for hit in hits:
            key = (rule.id, hit.compiled.match_index)
            if key not in fired or SEVERITY_RANK[hit.compiled.severity] > SEVERITY_RANK[
                    fired[key]]:
                fired[key] = hit.compiled.severity
        return build_finding(rule, hits, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "build_finding", recording)
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": r} for r in (*setting.resources, observation)]}
    outcomes = list(evaluate_each(bundle, as_of=AS_OF, rules=RULESET,
                                  draft_orders=list(setting.drafts)))
    assert len(outcomes) == 1, outcomes
    assert isinstance(outcomes[0], Assessment), outcomes
    return fired


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_every_threshold_at_its_edges_in_every_unit_and_look_back(
        target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    setting = _setting(RULESET, target)
    cases = list(_cases(RULESET, target))
    assert any(": at (" in c.label for c in cases), "every threshold is tested at its value"
    assert any("look-back outside" in c.label for c in cases) or (
        target.pattern.max_age_days is None), "the look-back is tested on both sides"
    failures = []
    for case in cases:
        fired = _run(setting, _observation(RULESET, target.concept, case.value, case.unit,
                                           case.when), monkeypatch)
        got = fired.get((target.rule.id, target.index))
        expected, exact = _expected(RULESET, target, case)
        ok = got == expected if exact or expected is None else (
            got is not None and SEVERITY_RANK[got] >= SEVERITY_RANK[expected])
        if not ok:
            failures.append(f"{case.label}: expected {expected}, got {got}")
    assert not failures, f"{target.name}:\n  " + "\n  ".join(failures)


def test_every_lab_threshold_of_every_rule_is_generated() -> None:
    """Each rule file's value tests are all reached (none hides in a form the generator skips)."""
    stated = {(r.id, i, b) for r in RULESET.active_rules() for i, m in enumerate(r.match)
              for b, p in m.facts.items() if p.value is not None or p.times_upper_limit
              is not None}
    derived = {(r.id, i, b) for r in RULESET.active_rules() for i, m in enumerate(r.match)
               for b in m.facts if _derived_companion(RULESET, m, b)}
    assert stated - derived == {(t.rule.id, t.index, t.binding) for t in TARGETS}
    assert derived <= {("metabolic.kidney-failure", 2, "egfr")}  # pinned by its fixtures
    assert {t.rule.id for t in TARGETS} >= {
        "electrolyte.hypokalemia", "electrolyte.hypocalcemia", "electrolyte.vitamin-d-deficiency",
        "medication.order-caution", "electrolyte.dehydration"}


def test_units_yaml_agrees_with_the_documented_factors() -> None:
    """A factor in units.yaml that strays from the documented one fails here too."""
    for analyte in RULESET.units.analytes.values():
        concept = analyte.concepts[0]
        for unit, conversion in analyte.conversions.items():
            if conversion.offset:
                continue  # affine (HbA1c): checked by its own fixtures
            spec = _spec_factor(RULESET, concept, unit)
            assert abs(conversion.factor / spec - 1) < Fraction(3, 10000), (analyte.name, unit)


def test_workup_look_back_counts_the_90th_day_and_not_the_91st() -> None:
    rule = RULESET.rule("workup.electrolytes-missing")
    days = rule.match[0].context.not_measured_within.days  # type: ignore[union-attr]
    for age, fires in ((days, False), (days + 1, True)):
        when = (AS_OF - timedelta(days=age)).isoformat()
        labs = [("potassium", "4.1", "mmol/L"), ("magnesium", "0.85", "mmol/L"),
                ("calcium-ionized", "1.2", "mmol/L")]
        entries = [{"resource": {"resourceType": "Patient", "id": "p"}},
                   {"resource": _condition(RULESET, "fasciculation", 0)}]
        for n, (concept, value, unit) in enumerate(labs):
            system, code = _code_for(RULESET, concept, LOINC)
            entries.append({"resource": {
                "resourceType": "Observation", "id": f"o{n}", "status": "final",
                "code": {"coding": [{"system": system, "code": code}]},
                "subject": {"reference": "Patient/p"}, "effectiveDateTime": when,
                "valueQuantity": {"value": float(value), "unit": unit,
                                  "system": "http://unitsofmeasure.org", "code": unit}}})
        [found] = evaluate({"resourceType": "Bundle", "type": "collection", "entry": entries},
                           as_of=AS_OF)
        assert ("workup.electrolytes-missing" in {f.rule_id for f in found.findings}) is fires, age


def test_a_shared_threshold_that_drifts_stops_the_rules_loading(tmp_path: Path) -> None:
    """order-caution states the electrolyte.hypo* thresholds with `same_threshold_as`: an `lte`
    where the hypo rule says `lt` (or another number, unit or look-back) is a rule-file error."""
    rules = tmp_path / "rules"
    shutil.copytree(RULES_DIR, rules)
    order_caution = rules / "medication" / "order-caution.yaml"
    text = order_caution.read_text(encoding="utf-8")
    k_clause = "max_age_days: 90, value: {lt: 3.5"
    for stated, drifted in (("{lt: 3.5, unit: mmol/L}", "{lte: 3.5, unit: mmol/L}"),
                            ("{lt: 3.5, unit: mmol/L}", "{lt: 3.4, unit: mmol/L}"),
                            (k_clause, k_clause.replace("90", "91"))):
        assert stated in text
        order_caution.write_text(text.replace(stated, drifted, 1), encoding="utf-8")
        with pytest.raises(RuleFileError, match=r"differs from electrolyte\.hypokalemia"):
            load_rules(rules)
    order_caution.write_text(text, encoding="utf-8")
    load_rules(rules)
