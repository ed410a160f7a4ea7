"""Loading rules/: rule files, value sets, units and derived-fact constants, checked together.

A RuleSet is immutable and loaded once per folder per process; its `version` is a hash of every
content file, reported in each assessment so an output can be traced to the rules that made it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .brand_names import BrandNames, with_brand_names
from .content_schema import (
    DerivedFile,
    PresentationFile,
    Systems,
    TextMatches,
    UnitsFile,
    ValueSets,
)
from .errors import RuleFileError
from .rule_schema import RULE_CATEGORIES, RULE_ID, ContextPattern, FactPattern, Rule
from .terminology import Terminology
from .thresholds import ThresholdLadder, ValueTest, rule_ladders
from .units import UnitTable, parse_number

CONTENT_FILES = ("valuesets/codes.yaml", "valuesets/systems.yaml", "units.yaml", "derived.yaml",
                 "text-matches.yaml", "presentation.yaml", "valuesets/brand-names.yaml",
                 "valuesets/routes.yaml", "plausible-ranges.yaml")


def default_rules_dir() -> Path:
    """The rules shipped in the wheel, or the source tree's rules/ in a development checkout."""
    packaged = Path(__file__).parent / "_rules"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "rules"


@dataclass(frozen=True, eq=False)  # identity hash: one compiled engine per loaded set
class RuleSet:
    directory: Path
    rules: tuple[Rule, ...]
    rule_files: Mapping[str, Path]
    terminology: Terminology
    units: UnitTable
    derived: DerivedFile
    version: str
    lab_families: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    presentation: PresentationFile = field(default_factory=PresentationFile)

    def rule(self, rule_id: str) -> Rule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)

    @functools.cached_property
    def max_lookback_days(self) -> float:
        """No rule can see an Observation older than this (for cheap filtering before validation).

        The largest rule look-back, plus the albumin pairing window (a calcium inside the look-back
        may be corrected with an albumin up to that many days older).
        """
        days = [float(self.derived.sign_lookback_days),
                float(self.derived.diabetes_by_hba1c.lookback_days)]
        for rule in self.rules:
            for match in rule.match:
                patterns = [*match.facts.values(), *(p for e in match.escalate
                                                     for p in e.facts.values())]
                days += [float(p.max_age_days) for p in patterns if p.max_age_days is not None]
                for context in (match.context, *(e.context for e in match.escalate)):
                    for spec in (context.measured_within, context.not_measured_within) if context \
                            else ():
                        if spec:
                            days.append(float(spec.days))
        return max(days) + float(self.derived.albumin_corrected_calcium.max_days_apart)

    def lab_thresholds(self, concept: str) -> tuple[ThresholdLadder, ...]:
        """The value tests the active rules (and derived.yaml) apply to a lab concept."""
        return self._ladders.get(concept, ())

    @functools.cached_property
    def _ladders(self) -> Mapping[str, tuple[ThresholdLadder, ...]]:
        by_concept: dict[str, list[ThresholdLadder]] = {}
        for rule in self.active_rules():
            for ladder in rule_ladders(rule, self.units, self.lab_families):
                by_concept.setdefault(ladder.concept, []).append(ladder)
        diabetes = self.derived.diabetes_by_hba1c
        at_least = self.units.to_canonical(diabetes.concept, diabetes.at_least.exact,
                                           diabetes.at_least.unit)
        if at_least is not None:
            by_concept.setdefault(diabetes.concept, []).append(ThresholdLadder(
                "derived.yaml diabetes_by_hba1c", diabetes.concept,
                ValueTest("value", (("gte", at_least),)), "info"))
        return {concept: tuple(ladders) for concept, ladders in by_concept.items()}

    def active_rules(self) -> tuple[Rule, ...]:
        """Rules that run: every status but deprecated."""
        return self._active

    @functools.cached_property
    def _active(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.status != "deprecated")


# libyaml's safe loader when PyYAML was built with it: the same documents, several times faster
# (every worker process and every `serve` start reads the rule files)
_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(path: Path) -> Any:
    try:
        with path.open("rb") as handle:
            return yaml.load(handle, Loader=_SAFE_LOADER)
    except FileNotFoundError:
        raise RuleFileError("file is missing", file=str(path)) from None
    except yaml.YAMLError as exc:
        raise RuleFileError(f"not valid YAML: {exc}", file=str(path)) from None


Model = TypeVar("Model", bound=BaseModel)


def read_content(path: Path, model: type[Model]) -> Model:
    """A content file checked against its schema; errors name the file and the key."""
    data = _read_yaml(path)
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise RuleFileError(f"{first['msg']}{more}", file=str(path), field=where) from None


def iter_rule_files(directory: Path) -> Iterator[Path]:
    for category in RULE_CATEGORIES:
        folder = directory / category
        if folder.is_dir():
            yield from sorted(folder.glob("*.yaml"))
    deprecated = directory / "deprecated"
    if deprecated.is_dir():
        yield from sorted(deprecated.glob("*.yaml"))


def _hash_content(directory: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.relative_to(directory).as_posix()):
        digest.update(path.relative_to(directory).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


def load_rules(directory: str | Path | None = None) -> RuleSet:
    """Load and check every rule file and content file under `directory` (default: packaged)."""
    path = Path(directory) if directory is not None else default_rules_dir()
    return _load_rules_cached(path.resolve())


@functools.lru_cache(maxsize=8)
def _load_rules_cached(directory: Path) -> RuleSet:
    if not directory.is_dir():
        raise RuleFileError("rules folder does not exist", file=str(directory))
    codes = read_content(directory / "valuesets/codes.yaml", ValueSets)
    systems = read_content(directory / "valuesets/systems.yaml", Systems)
    text_matches = with_brand_names(
        read_content(directory / "text-matches.yaml", TextMatches),
        read_content(directory / "valuesets/brand-names.yaml", BrandNames))
    derived = read_content(directory / "derived.yaml", DerivedFile)
    try:
        terminology = Terminology.build(codes, systems.root, text_matches,
                                        derived.derived_concepts)
    except ValueError as exc:
        raise RuleFileError(str(exc), file=str(directory / "valuesets")) from None
    units_file = read_content(directory / "units.yaml", UnitsFile)
    units = UnitTable(units_file.model_dump())
    check_derived(derived, terminology, units, directory / "derived.yaml")
    families = {k: tuple(v) for k, v in derived.lab_families.items()}

    rules: list[Rule] = []
    rule_files: dict[str, Path] = {}
    files = list(iter_rule_files(directory))
    for file in files:
        rule = parse_rule_file(file)
        if file.parent.name != "deprecated":
            expected = f"{file.parent.name}.{file.stem}"
            if rule.id != expected:
                raise RuleFileError(
                    f"rule id {rule.id!r} does not match its path (expected {expected!r})",
                    file=str(file), field="id")
        if rule.id in rule_files:
            raise RuleFileError(f"duplicate rule id {rule.id!r} (also in {rule_files[rule.id]})",
                                file=str(file), field="id")
        rule_files[rule.id] = file
        rules.append(rule)
    rules.sort(key=lambda r: r.id)
    ruleset = RuleSet(
        directory=directory,
        rules=tuple(rules),
        rule_files=rule_files,
        terminology=terminology,
        units=units,
        derived=derived,
        version=_hash_content(directory, [directory / f for f in CONTENT_FILES] + files),
        lab_families=families,
        presentation=read_content(directory / "presentation.yaml", PresentationFile),
    )
    for rule in rules:
        check_references(rule, ruleset, rule_files[rule.id])
    check_presentation(ruleset, directory / "presentation.yaml")
    return ruleset


def check_presentation(ruleset: RuleSet, file: Path) -> None:
    """presentation.yaml places every active rule and names only concepts and groups that exist."""
    content = ruleset.presentation
    term = ruleset.terminology

    def fail(message: str, where: str) -> None:
        raise RuleFileError(message, file=str(file), field=where)

    for index, rule_id in enumerate(content.headline_order):
        if not RULE_ID.match(rule_id):
            fail(f"{rule_id!r} is not a rule id", f"headline_order.{index}")
    unplaced = [r.id for r in ruleset.active_rules() if r.id not in content.headline_order]
    if unplaced:
        fail(f"rules without a place in the headline order: {', '.join(unplaced)}",
             "headline_order")
    for concept in [*content.lab_labels, *content.checked.analytes]:
        known = term.concepts.get(concept)
        if concept not in ruleset.lab_families and (known is None or known.kind != "lab"):
            fail(f"{concept!r} is not a lab concept or lab family", "lab_labels/checked")
    sets = ruleset.derived.counted_group_sets
    for name, words in content.checked.sign_sets.items():
        if name not in sets:
            fail(f"unknown group set {name!r} (derived.yaml counted_group_sets)",
                 f"checked.sign_sets.{name}")
        for group in words.groups:
            if group not in sets[name].groups:
                fail(f"group {group!r} is not in the set {name!r}",
                     f"checked.sign_sets.{name}.groups")


def check_derived(derived: DerivedFile, term: Terminology, units: UnitTable, file: Path) -> None:
    """Every concept, group and quantity derived.yaml names must exist and convert."""

    def fail(message: str, where: str) -> None:
        raise RuleFileError(message, file=str(file), field=where)

    def concept(cid: str, where: str, kind: str | None = None) -> None:
        found = term.concepts.get(cid)
        if found is None:
            fail(f"unknown concept {cid!r}", where)
        elif kind and found.kind != kind:
            fail(f"concept {cid!r} is a {found.kind}, not a {kind}", where)

    def quantity(cid: str, value: Any, unit: str, where: str) -> None:
        if units.to_canonical(cid, parse_number(value), unit) is None:
            fail(f"{value} {unit} does not convert for {cid!r} (units.yaml)", where)

    correction = derived.albumin_corrected_calcium
    base = "albumin_corrected_calcium"
    quantity("albumin", correction.reference_albumin.value, correction.reference_albumin.unit,
             f"{base}.reference_albumin")
    quantity("albumin", 1, correction.slope.per, f"{base}.slope.per")
    quantity("calcium-total", correction.slope.value, correction.slope.unit, f"{base}.slope")
    for name in ("plausible_albumin_at_least", "plausible_albumin_at_most"):
        bound = getattr(correction, name)
        if bound is not None:
            quantity("albumin", bound.value, bound.unit, f"{base}.{name}")
    diabetes = derived.diabetes_by_hba1c
    concept(diabetes.concept, "diabetes_by_hba1c.concept", "lab")
    concept(diabetes.yields, "diabetes_by_hba1c.yields")
    quantity(diabetes.concept, diabetes.at_least.value, diabetes.at_least.unit,
             "diabetes_by_hba1c.at_least")
    ck = derived.creatine_kinase_upper_limit
    concept(ck.concept, "creatine_kinase_upper_limit.concept", "lab")
    quantity(ck.concept, ck.default.value, ck.default.unit, "creatine_kinase_upper_limit.default")
    if derived.presentation_group not in term.groups:
        fail(f"unknown concept group {derived.presentation_group!r}", "presentation_group")
    for name, group_set in derived.counted_group_sets.items():
        for group in group_set.groups:
            if group not in term.groups:
                fail(f"unknown concept group {group!r}", f"counted_group_sets.{name}.groups")
        for index, rule in enumerate(group_set.not_counted):
            where = f"counted_group_sets.{name}.not_counted.{index}"
            if rule.group not in group_set.groups:
                fail(f"group {rule.group!r} is not in the set", where)
            concept(rule.when_present, where)
    if derived.sign_groups is not None:
        check_sign_groups(derived, term, fail, concept)
    for cid, unconfirmed in derived.unconfirmed_diagnoses.items():
        concept(cid, f"unconfirmed_diagnoses.{cid}", "condition")
        if unconfirmed.yields not in derived.derived_concepts:
            fail(f"{unconfirmed.yields!r} is not in derived_concepts",
                 f"unconfirmed_diagnoses.{cid}.yields")
    for cid, recorded in derived.recorded_conditions.items():
        concept(cid, f"recorded_conditions.{cid}", "condition")
        if recorded not in derived.derived_concepts:
            fail(f"{recorded!r} is not in derived_concepts", f"recorded_conditions.{cid}")
    for cid in derived.recent_only_conditions.concepts:
        concept(cid, "recent_only_conditions.concepts", "condition")
    for name, members in derived.lab_families.items():
        for member in members:
            concept(member, f"lab_families.{name}", "lab")
    for index, window in enumerate(derived.recent_only_windows):
        for cid in window.concepts:
            concept(cid, f"recent_only_windows.{index}.concepts", "condition")
    for cid, tiers in derived.same_time_tiers.items():
        concept(cid, f"same_time_tiers.{cid}", "lab")
        for member in [*tiers.first, *tiers.last]:
            concept(member, f"same_time_tiers.{cid}", "lab")
    kidney = derived.kidney_by_egfr
    if kidney is not None:
        for name in ("concept", "earlier_low_yields", "before_fall_yields"):
            concept(getattr(kidney, name), f"kidney_by_egfr.{name}", "lab")
        quantity(kidney.concept, kidney.below.value, kidney.below.unit, "kidney_by_egfr.below")
    for yields, members in derived.established_conditions.items():
        concept(yields, f"established_conditions.{yields}", "condition")
        for member in members:
            concept(member, f"established_conditions.{yields}", "condition")
    for cid, question in derived.question_codes.items():
        where = f"question_codes.{cid}"
        concept(cid, where, "question")
        concept(question.yields, f"{where}.yields")
        if question.answers is not None:
            concept(question.answers, f"{where}.answers", "answer")
        if question.at_least and "otherwise" not in question.at_least:
            fail("at_least needs an `otherwise` cut-off (unknown or other sex)", where)
    for index, together in enumerate(derived.named_together):
        for cid in together.concepts:
            concept(cid, f"named_together.{index}.concepts")
        for group in together.not_in_groups:
            if group not in term.groups:
                fail(f"unknown concept group {group!r}", f"named_together.{index}.not_in_groups")


def check_sign_groups(derived: DerivedFile, term: Terminology,
                      fail: Callable[[str, str], None],
                      concept: Callable[..., None]) -> None:
    """Every group and concept `sign_groups` names exists; what it yields is a derived concept."""
    spec = derived.sign_groups
    assert spec is not None
    where = "sign_groups"
    groups = [*spec.sign_groups, spec.explaining.conditions_group]
    groups += [m.group for m in spec.conditional.values()]
    groups += [g for g in (spec.unclear.group, spec.explaining.group) if g]
    for group in groups:
        if group not in term.groups:
            fail(f"unknown concept group {group!r}", where)
    named = [*spec.conditional, *(c for m in spec.conditional.values()
                                  for c in m.when_any_present),
             *spec.explaining.removes, *spec.explaining.not_removed_by,
             *(c for cs in spec.explaining.not_removed_by.values() for c in cs),
             *spec.cap.concepts, spec.established.concept,
             *spec.fasciculation_presentation.concepts]
    for cid in named:
        concept(cid, where)
    yielded = [spec.unclear.yields, spec.explaining.yields, spec.cap.yields,
               spec.established.otherwise, spec.fasciculation_presentation.yields,
               spec.fasciculation_presentation.uncertain_only]
    for cid in yielded:
        if cid not in derived.derived_concepts:
            fail(f"{cid!r} is not in derived_concepts", where)


def parse_rule_file(file: Path) -> Rule:
    data = _read_yaml(file)
    if not isinstance(data, dict):
        raise RuleFileError("a rule file must be a YAML mapping", file=str(file))
    try:
        return Rule.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise RuleFileError(f"{first['msg']}{more}", file=str(file), field=where) from None


def check_references(rule: Rule, ruleset: RuleSet, file: Path) -> None:
    """Every concept, class, group, unit and rule a rule names must exist and fit."""
    term = ruleset.terminology
    known_rules = {r.id for r in ruleset.rules}

    def fail(message: str, where: str) -> None:
        raise RuleFileError(message, file=str(file), field=where)

    def check_concept(concept: str, where: str, kinds: tuple[str, ...] | None = None) -> None:
        if concept in ruleset.lab_families:
            return
        found = term.concepts.get(concept)
        if found is None:
            fail(f"unknown concept {concept!r}", where)
        elif kinds and found.kind not in kinds:
            fail(f"concept {concept!r} is a {found.kind}, not a {'/'.join(kinds)}", where)

    kind_of_fact = {"lab": ("lab",), "medication": ("medication",), "draft": ("medication",),
                    "problem": ("condition",),
                    "finding": ("finding",), "procedure": ("procedure",)}

    def check_pattern(pattern: FactPattern, where: str) -> None:
        facts = pattern.kinds
        kinds: tuple[str, ...] = tuple(k for f in facts for k in kind_of_fact.get(f, ()))
        for concept in [*pattern.named_concepts, *pattern.exclude_concepts]:
            check_concept(concept, where, kinds or None)
        if pattern.in_class and pattern.in_class not in term.classes:
            fail(f"unknown medication class {pattern.in_class!r}", where)
        for group in pattern.in_groups or []:
            if group not in term.groups:
                fail(f"unknown concept group {group!r}", where)
        if pattern.value is not None:
            concepts = pattern.named_concepts
            if not concepts:
                fail("a value test needs the lab concept it applies to", where)
            for concept in concepts:
                if ruleset.units.canonical_unit(concept) is None:
                    fail(f"no canonical unit for {concept!r} in units.yaml", where)
                unit = pattern.value.unit
                if unit and ruleset.units.from_canonical(concept, Fraction(1), unit) is None:
                    fail(f"unit {unit!r} does not convert for {concept!r}", where)
        if pattern.rule and pattern.rule not in known_rules:
            fail(f"unknown rule {pattern.rule!r}", where)
        if pattern.same_threshold_as:
            check_same_threshold(pattern, where)

    def check_same_threshold(pattern: FactPattern, where: str) -> None:
        target = next((r for r in ruleset.rules if r.id == pattern.same_threshold_as), None)
        if target is None:
            fail(f"unknown rule {pattern.same_threshold_as!r}", where)
            return
        stated = [p for m in target.match for p in m.facts.values()
                  if p.latest and p.value is not None
                  and p.named_concepts == pattern.named_concepts]
        if not stated:
            fail(f"{target.id} states no latest-result test of {pattern.named_concepts}", where)
        for other in stated:
            if (other.value, other.max_age_days) != (pattern.value, pattern.max_age_days):
                fail(f"threshold {pattern.value} within {pattern.max_age_days} d differs from "
                     f"{target.id}'s {other.value} within {other.max_age_days} d", where)
        if pattern.times_upper_limit is not None:
            ck = ruleset.derived.creatine_kinase_upper_limit.concept
            concepts = pattern.named_concepts
            if concepts != [ck]:
                fail(f"times_upper_limit applies only to {ck!r}", where)

    def check_context(context: ContextPattern | None, where: str) -> None:
        if context is None:
            return
        for concept in [*context.presents, *context.presents_any, *context.absent]:
            check_concept(concept, where)
        for spec in (context.measured_within, context.not_measured_within):
            for concept in (spec.all_of or []) + (spec.any_of or []) if spec else []:
                check_concept(concept, where, ("lab",))
        for concept in [*context.conflicting, *context.not_conflicting]:
            check_concept(concept, where, ("lab",))
        if context.newer is not None:
            for concept in [context.newer.concept, *context.newer.than]:
                check_concept(concept, where, ("lab",))
        for index, pattern in enumerate(context.without_facts):
            kinds = pattern.kinds
            if "result" in kinds or pattern.rule:
                fail("without_facts tests record facts; use without_findings for findings",
                     f"{where}.without_facts.{index}")
            check_pattern(pattern, f"{where}.without_facts.{index}")
        for name in context.group_sets:
            if name not in ruleset.derived.counted_group_sets:
                fail(f"unknown group set {name!r} (derived.yaml counted_group_sets)", where)

    for i, match in enumerate(rule.match):
        check_context(match.context, f"match.{i}.context")
        for name, pattern in match.facts.items():
            check_pattern(pattern, f"match.{i}.facts.{name}")
        for j, escalation in enumerate(match.escalate):
            check_context(escalation.context, f"match.{i}.escalate.{j}.context")
            for name, pattern in escalation.facts.items():
                if name not in match.facts:
                    fail(f"escalation names binding {name!r} the match does not have",
                         f"match.{i}.escalate.{j}.facts")
                check_pattern(pattern, f"match.{i}.escalate.{j}.facts.{name}")
    for i, suggestion in enumerate(rule.suggestions):
        for concept in suggestion.concepts:
            check_concept(concept, f"suggestions.{i}")
        for concept in suggestion.unless_measured.concepts if suggestion.unless_measured else []:
            check_concept(concept, f"suggestions.{i}.unless_measured", ("lab",))
        for concept in suggestion.when_present_any:
            check_concept(concept, f"suggestions.{i}.when_present_any")
    for i, collect in enumerate(rule.evidence_also):
        for concept in collect.concepts:
            check_concept(concept, f"evidence_also.{i}")



def clear_rules_cache() -> None:
    """Forget every rule set loaded so far: the next `load_rules` reads the files again.

    `load_rules` reads a folder once per process, so a program that runs for long sees the rules
    as they were when it first loaded them. One that lets its rules be edited calls this, then
    `load_rules` again (a new `version`, a newly compiled engine). `serve` loads its rules when
    it starts: restart it after editing rules.
    """
    _load_rules_cached.cache_clear()
