"""Property: corrupting any element of a relevant resource (wrong JSON type, wrong
case, wrong date form, reversed period, absurd number) never yields a quieter assessment that is
not marked partial or refused. Malformed is never "not relevant" (docs/clinical-basis.md)."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fasciculation_cds import Assessment, RuleSet, evaluate_each
from fasciculation_cds.presentation import severity_rank
from fasciculation_cds.ruleset import load_rules

from .conftest import REPO, RULES_DIR

# Examples whose assessments hold warnings or criticals to lose, and the instant they are seen at.
EXAMPLES = {
    "hypomagnesemia-omeprazole.json": "2026-11-26T00:00:00Z",
    "hypokalemia-hydrochlorothiazide.json": "auto",
}
READ_TYPES = ("Patient", "Observation", "Condition", "MedicationRequest", "MedicationStatement",
              "Procedure", "Medication")
Path_ = tuple[str | int, ...]
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def _bundle(name: str) -> dict[str, Any]:
    """The example, its results with a (wide) reference range and, in the potassium example,
    timed by a Period (start = end), so that those are corrupted too."""
    bundle: dict[str, Any] = json.loads((REPO / "fhir_examples" / name).read_text())
    for entry in bundle["entry"]:  # and reference ranges, whose bounds are numbers too
        quantity = entry["resource"].get("valueQuantity")
        if quantity and "referenceRange" not in entry["resource"]:
            entry["resource"]["referenceRange"] = [{
                "low": {**quantity, "value": 0.001}, "high": {**quantity, "value": 1000}}]
    if name.startswith("hypokalemia"):
        for entry in bundle["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] == "Observation" and "effectiveDateTime" in resource:
                when = resource.pop("effectiveDateTime")
                resource["effectivePeriod"] = {"start": when, "end": when}
    return bundle


def _leaves(node: Any, path: Path_ = ()) -> Iterator[Path_]:
    """Every element path of a resource (objects and lists too: a whole element can be
    replaced), except its resourceType."""
    if path:
        yield path
    if isinstance(node, dict):
        for key, value in node.items():
            if path or key != "resourceType":
                yield from _leaves(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _leaves(value, (*path, index))


def _corruptions(value: Any) -> list[tuple[str, Any]]:
    """(kind, corrupted value) for one element."""
    others: tuple[Any, ...] = (17, True, "x", [], {"x": 1}, None)  # None: a JSON null
    found: list[tuple[str, Any]] = [("type", v) for v in others if type(v) is not type(value)]
    if isinstance(value, str):
        if value.upper() != value:
            found.append(("case", value.upper()))
        if DATE.match(value):
            digits = value.replace("-", "").replace(":", "")
            found += [("date", digits[:8]), ("date", int(digits[:8])),
                      ("date", value.replace("-", "/")), ("date", value.lower())]
    if isinstance(value, dict) and "start" in value and "end" in value:
        found.append(("period", {**value, "start": value["end"], "end": value["start"]}))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        found += [("number", -abs(value) - 1), ("number", 1.5e308), ("number", 1e300),
                  ("number", Decimal("1E+999")), ("number", Decimal("-0.000000000000000001"))]
    return found


def _set(resource: dict[str, Any], path: Path_, value: Any) -> None:
    node: Any = resource
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _get(resource: dict[str, Any], path: Path_) -> Any:
    node: Any = resource
    for key in path:
        node = node[key]
    return node


def _run(bundle: dict[str, Any], as_of: str, ruleset: RuleSet) -> list[Any]:
    return list(evaluate_each(bundle, as_of=as_of, rules=ruleset))


def _severities(outcome: Assessment) -> dict[str, int]:
    return {f.rule_id: severity_rank(f.severity) for f in outcome.findings}


def _quieter(corrupted: Assessment, plain: Assessment) -> bool:
    """A finding of the plain assessment is missing or less severe."""
    found = _severities(corrupted)
    return any(found.get(rule, -1) < rank for rule, rank in _severities(plain).items())


@st.composite
def corruption(draw: st.DrawFn) -> tuple[str, int, Path_, str, Any]:
    name = draw(st.sampled_from(sorted(EXAMPLES)))
    bundle = _bundle(name)
    relevant = [i for i, e in enumerate(bundle["entry"])
                if e["resource"]["resourceType"] in READ_TYPES]
    index = draw(st.sampled_from(relevant))
    resource = bundle["entry"][index]["resource"]
    by_kind: dict[str, list[tuple[Path_, Any]]] = {}
    for path in _leaves(resource):
        for kind, value in _corruptions(_get(resource, path)):
            by_kind.setdefault(kind, []).append((path, value))
    kind = draw(st.sampled_from(sorted(by_kind)))  # each kind as often, whatever its count
    path, value = draw(st.sampled_from(by_kind[kind]))
    return name, index, path, kind, value


_plain: dict[str, Assessment] = {}


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.data_too_large])
@given(case=corruption())
def test_a_corrupted_element_never_quietly_lowers_the_assessment(
        case: tuple[str, int, Path_, str, Any]) -> None:
    ruleset = load_rules(RULES_DIR)  # cached; not a fixture, whose repr hypothesis would print
    name, index, path, kind, value = case
    as_of = EXAMPLES[name]
    if name not in _plain:
        (plain,) = _run(_bundle(name), as_of, ruleset)
        assert isinstance(plain, Assessment)
        assert any(severity_rank(f.severity) >= severity_rank("warning") for f in plain.findings)
        _plain[name] = plain
    bundle = copy.deepcopy(_bundle(name))
    resource = bundle["entry"][index]["resource"]
    _set(resource, path, value)
    outcomes = _run(bundle, as_of, ruleset)
    event(f"corruption {kind}")
    assessments = [o for o in outcomes if isinstance(o, Assessment)]
    if len(assessments) != len(outcomes):
        event("refused")
        return  # a problem row or an error row: refused, never quiet
    (corrupted,) = assessments
    if corrupted.partial:
        event("partial")
        return
    assert not _quieter(corrupted, _plain[name]), (
        f"{resource['resourceType']}.{'.'.join(map(str, path))} = {value!r} ({kind}) made "
        f"{name} quieter without marking it: {_severities(corrupted)} vs "
        f"{_severities(_plain[name])}")


def test_the_corruptions_cover_every_kind() -> None:
    kinds = {kind for name in EXAMPLES for entry in _bundle(name)["entry"]
             for path in _leaves(entry["resource"])
             for kind, _ in _corruptions(_get(entry["resource"], path))}
    assert kinds == {"type", "case", "date", "period", "number"}
