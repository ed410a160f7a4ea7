"""Running a rule's fixtures (rules/<category>/<slug>.fires|quiet/*.json), for tests and
`fasciculation-cds rules check`: a fixture that does not give what its name says, or a summary
that does not fit a card, is an error in the rule files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .assessment import Assessment
from .evaluate import evaluate_each
from .findings import strict_summaries
from .ruleset import RuleSet, iter_rule_files

FIXTURE_SYSTEM = "https://fasciculation-cds.dev/fixture"
ASSUME_TAG = (FIXTURE_SYSTEM, "assume-presentation")
DRAFT_TAG = {"system": FIXTURE_SYSTEM, "code": "draft-order"}
SEVERITIES = ("info", "warning", "critical")


@dataclass(frozen=True)
class FixtureCase:
    rule_id: str
    path: Path
    severity: str | None
    """The severity a `fires/` fixture expects (from its file name); None for `quiet/`."""


def fixture_cases(directory: Path) -> list[FixtureCase]:
    cases = []
    for rule_file in iter_rule_files(directory):
        rule_id = f"{rule_file.parent.name}.{rule_file.stem}"
        for fixture in sorted(rule_file.parent.glob(f"{rule_file.stem}.fires/*.json")):
            cases.append(FixtureCase(rule_id, fixture, fixture.name.split("-", 1)[0]))
        for fixture in sorted(rule_file.parent.glob(f"{rule_file.stem}.quiet/*.json")):
            cases.append(FixtureCase(rule_id, fixture, None))
    return cases


def run_fixture(path: Path, ruleset: RuleSet) -> dict[str, str]:
    """Rule id -> severity for the one patient of a fixture Bundle, at its timestamp."""
    return {f.rule_id: f.severity for f in assess_fixture(path, ruleset).findings}


def fixture_description(path: Path) -> str:
    """What a fixture shows, in its own words (`Bundle.identifier.value`), else its name."""
    identifier = json.loads(path.read_text(encoding="utf-8")).get("identifier")
    value = identifier.get("value") if isinstance(identifier, dict) else None
    return value if isinstance(value, str) and value else path.stem


def assess_fixture(path: Path, ruleset: RuleSet) -> Assessment:
    """The assessment of the one patient of a fixture Bundle, at its timestamp."""
    bundle = json.loads(path.read_text(encoding="utf-8"))
    tags = {(t.get("system"), t.get("code")) for t in bundle.get("meta", {}).get("tag", [])}
    # entries tagged draft-order play the CDS Hooks draftOrders: orders being written
    drafts = [e["resource"] for e in bundle["entry"]
              if DRAFT_TAG in e["resource"].get("meta", {}).get("tag", [])]
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"] not in drafts]
    with strict_summaries():  # a summary over 140 characters is an error in the rule files
        outcomes = list(evaluate_each(bundle, as_of=bundle["timestamp"], draft_orders=drafts,
                                      assume_presentation=ASSUME_TAG in tags, rules=ruleset))
    errors = [o for o in outcomes if not isinstance(o, Assessment)]
    if errors:
        raise ValueError(errors[0].message)
    if len(outcomes) != 1:
        raise ValueError(f"a fixture holds exactly one patient, this one {len(outcomes)}")
    assessment = outcomes[0]
    assert isinstance(assessment, Assessment)
    return assessment


def fixture_problems(ruleset: RuleSet) -> Iterator[str]:
    """Every way the fixtures beside the rule files disagree with the rules."""
    for case in fixture_cases(ruleset.directory):
        where = case.path.relative_to(ruleset.directory).as_posix()
        try:
            found = run_fixture(case.path, ruleset)
        except ValueError as exc:
            yield f"{where}: {exc}"
            continue
        if case.severity is None and case.rule_id in found:
            yield f"{where}: {case.rule_id} fired ({found[case.rule_id]}) on a quiet fixture"
        elif case.severity is not None and found.get(case.rule_id) != case.severity:
            yield (f"{where}: expected {case.rule_id} at {case.severity}, "
                   f"got {found.get(case.rule_id)}")
