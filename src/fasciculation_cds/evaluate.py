"""The one evaluation path every entry point uses.

source -> ingest -> normalize -> engine -> findings -> Assessment
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

from .assessment import Assessment, Notice, PatientSummary, RuleFinding
from .checked import build_checked
from .compiler import (
    CompiledStage,
    compile_stage,
    derived_values,
    encode_context,
    encode_fact,
    encode_result,
)
from .coverage import Accountant
from .coverage_report import CoverageReport, accounted, with_section
from .engine import RuleEngine
from .errors import InputError
from .evidence_dates import mark_condition_dates
from .facts import ClinicalFact
from .fhir_time import iso_day, iso_instant, parse_as_of, valid_times
from .findings import RuleHit, build_finding, fired_views, sort_findings
from .ingest import AS_OF_CLOCK_MARGIN, Grouper, IngestResult, PatientRecord
from .normalize import Normalizer
from .normalize.common import reference_of
from .presentation import priority_of
from .ruleset import RuleSet, load_rules
from .sources import RawResource, expand_paths, fewer_collections, read_file, resources_of

AsOf = str | date | datetime | None
Source = str | Path | Mapping[str, Any] | Iterable[Any]


@dataclass(frozen=True)
class PatientError:
    """A patient that could not be evaluated, and why."""

    patient: str
    message: str
    kind: Literal["input", "internal"] = "input"

    def to_json_dict(self) -> dict[str, object]:
        return {"patient": self.patient, "error": self.kind, "message": self.message}


@dataclass(frozen=True)
class InputProblem:
    """Input that belongs to no patient it could be charged to (an unreadable file or line)."""

    message: str
    kind: Literal["input"] = "input"

    def to_json_dict(self) -> dict[str, object]:
        return {"patient": None, "error": self.kind, "message": self.message}


PatientOutcome = Assessment | PatientError
Outcome = Assessment | PatientError | InputProblem


class Evaluator:
    """A rule set compiled into the engine once; evaluates any number of patients."""

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        tag = ruleset.version.removeprefix("sha256:")[:16]
        self._stages: list[CompiledStage] = [
            compile_stage(ruleset, stage, f"stage{stage}_{tag}") for stage in (1, 2)
        ]
        self._engine = RuleEngine({s.name: s.definition for s in self._stages if s.rules})
        self._normalizer = Normalizer(ruleset)
        self._priority = priority_of(ruleset.presentation.headline_order)
        # Patients who do not present can only match rules (or matches) that do not require it;
        # when every such match needs a draft order, only order hooks can make them fire.
        ungated = [m for r in ruleset.active_rules() for m in r.match
                   if not r.presentation_required(m)]
        self._all_need_presentation = all(
            any(p.fact == "draft" for p in m.facts.values()) for m in ungated)
        self.fact_order: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None
        """Test hook: reorders the fact messages before they are asserted into the engine."""

    def assess(
        self,
        record: PatientRecord,
        as_of: AsOf | Literal["auto"],
        *,
        assume_presentation: bool = False,
    ) -> PatientOutcome:
        if record.errors:
            return PatientError(record.reference, "; ".join(e.describe() for e in record.errors))
        try:
            instant, label, time_notices = _instant_for(record, as_of)
        except ValueError as exc:
            return PatientError(record.reference, str(exc))
        normalized = self._normalizer.run(record, instant,
                                          assume_presentation=assume_presentation)
        findings: list[RuleFinding] = []
        if (normalized.context.presenting or not self._all_need_presentation
                or any(f.kind == "draft" for f in normalized.facts)):
            findings = self._run_stages(normalized.facts, normalized.context)
        patient = normalized.patient
        notices = [Notice(code=n.code, reference=n.reference, message=n.message)
                   for n in normalized.notices]
        notices += [*time_notices, *record_notices(record)]
        notices.sort(key=lambda n: (n.reference, n.code))
        assessment = Assessment(
            patient=PatientSummary(reference=record.reference, age=patient.age, sex=patient.sex),
            as_of=label,
            presentation=list(normalized.context.presentation),
            findings=sort_findings(mark_condition_dates(findings, record.resources),
                                   self._priority),
            notices=notices,
            rules_version=self.ruleset.version,
            checked=build_checked(self.ruleset, normalized.facts, notices, record.resources,
                                  instant),
            partial=True if record.unreadable or normalized.context.partial else None,
        )
        assessment._facts = tuple(normalized.facts)
        return assessment

    def _run_stages(self, facts: list[ClinicalFact], context: Any) -> list[RuleFinding]:
        by_key: dict[str, ClinicalFact] = {f"f{i}": fact for i, fact in enumerate(facts)}
        messages = [encode_fact(fact, key, self.ruleset) for key, fact in by_key.items()]
        stage_one, stage_two = self._stages
        first = encode_context(context, self.ruleset, stage_one.context_fields, derived=(
            derived_values(stage_one.derived, context, facts, self.ruleset)))
        fired: dict[str, dict[str, Any]] = {}
        found = self._findings(stage_one, self._ordered([first, *messages]), by_key, facts,
                               context, fired)
        if stage_two.rules:
            results: dict[str, RuleFinding | ClinicalFact] = dict(by_key)
            extra = []
            for index, finding in enumerate(found):
                key = f"r{index}"
                results[key] = finding
                extra.append(encode_result(finding.rule_id, finding.severity, key))
            severities = {f.rule_id: f.severity for f in found}
            second = encode_context(
                context, self.ruleset, stage_two.context_fields, severities,
                derived=derived_values(stage_two.derived, context, facts, self.ruleset))
            found += self._findings(stage_two, self._ordered([second, *messages, *extra]),
                                    results, facts, context, fired)
        return found

    def _ordered(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.fact_order(messages) if self.fact_order is not None else messages

    def _findings(
        self,
        stage: CompiledStage,
        messages: list[dict[str, Any]],
        by_key: Mapping[str, ClinicalFact | RuleFinding],
        facts: list[ClinicalFact],
        context: Any,
        fired: dict[str, dict[str, Any]],
    ) -> list[RuleFinding]:
        """The stage's findings; `fired` collects every finding so far (cards may name one)."""
        if not stage.rules:
            return []
        hits_by_rule: dict[str, list[RuleHit]] = {}
        for engine_rule, bound in self._engine.run(stage.name, messages):
            compiled = stage.rules[engine_rule]
            named = {name: by_key[str(message["id"])] for name, message in bound.items()
                     if name != "context"}
            hits_by_rule.setdefault(compiled.rule_id, []).append(RuleHit(compiled, named))
        units, labels = self.ruleset.units, self.ruleset.presentation.lab_labels
        fired.update(fired_views(hits_by_rule, units, context.as_of, labels))
        return [build_finding(self.ruleset.rule(rule_id), hits, facts, context, units,
                              fired=fired, child=self.ruleset.derived.child, labels=labels)
                for rule_id, hits in sorted(hits_by_rule.items())]


@functools.lru_cache(maxsize=4)
def evaluator_for(ruleset: RuleSet) -> Evaluator:
    """One compiled evaluator per rule set per process (durable-rules registers by name once)."""
    return Evaluator(ruleset)


def record_notices(record: PatientRecord) -> list[Notice]:
    """What ingest says of a record: its unreadable resources (docs/clinical-basis.md
    "Records as other systems write them") and its notes (a medication read from a
    reference's display...)."""
    notices = [Notice(code="resource-unreadable",
                      reference=error.resource or error.entry or record.reference,
                      message=f"{error.describe()}: not read; this assessment is partial")
               for error in record.unreadable]
    notices += [Notice(code=code, reference=reference, message=message)
                for code, reference, message in record.notes]
    return notices


def _instant_for(
    record: PatientRecord, as_of: AsOf | Literal["auto"]
) -> tuple[datetime, str, list[Notice]]:
    if as_of == "auto":
        # "now" is taken from valid FHIR times only, and never from one later than the run's
        # own clock (plus a margin): an Encounter ending in 9999 is refused, with a notice
        latest_plausible = datetime.now(timezone.utc) + AS_OF_CLOCK_MARGIN
        refused = list(record.refused_times)
        times = []
        for sourced in record.resources:
            for when in valid_times(sourced.resource):
                if when > latest_plausible:
                    refused.append(f"{when.isoformat()} ({reference_of(sourced)})")
                else:
                    times.append(when)
        if record.latest_time is not None:
            times.append(record.latest_time)
        notices = [Notice(
            code="time-implausible", reference=record.reference,
            message=f"as_of=auto did not take {', '.join(refused[:3])}"
                    f"{f' (and {len(refused) - 3} more)' if len(refused) > 3 else ''}: "
                    "later than this run's clock")] if refused else []
        if not times:
            raise ValueError("as_of=auto: the record has no validly dated resource to take a "
                             "time from" + (f" ({notices[0].message})" if notices else ""))
        instant = max(times)
        return instant, iso_instant(instant), notices
    instant = parse_as_of(as_of)
    is_day = (isinstance(as_of, date) and not isinstance(as_of, datetime)) or (
        isinstance(as_of, str) and len(as_of) == 10)
    return instant, iso_day(instant) if is_day else iso_instant(instant), []


def ingest(
    source: Source,
    ruleset: RuleSet,
    *,
    strict: bool = False,
    track_times: bool = False,
    observations_since: datetime | None = None,
) -> IngestResult:
    """Read and group a source: path(s), a Bundle or resource dict, or an iterable of resources."""
    grouper = Grouper(ruleset.terminology, strict=strict, track_times=track_times,
                      observations_since=observations_since)  # explicit settings (benchmarks)
    with fewer_collections():
        grouper.add_all(_raw_items(source, strict))
    return grouper.finish()


def _raw_items(source: Source, strict: bool = False) -> Iterator[RawResource | InputError]:
    if isinstance(source, (str, Path)):
        paths: list[Path] = expand_paths([source])
    elif isinstance(source, Mapping):
        yield from _guarded(lambda: resources_of(dict(source), "<input>", strict=strict))
        return
    else:
        items = list(source)
        if all(isinstance(i, (str, Path)) for i in items):
            paths = expand_paths(items)
        elif all(isinstance(i, (RawResource, InputError)) for i in items):
            yield from items  # already read, e.g. standard input
            return
        else:
            for index, item in enumerate(items):
                document = item.model_dump(mode="json", exclude_none=True) if hasattr(
                    item, "model_dump") else item
                kind = document.get("resourceType") if isinstance(document, Mapping) else None
                if kind == "Bundle":
                    label = f"<input {index}>"
                    yield from _guarded(
                        lambda d=document, s=label: resources_of(dict(d), s, strict=strict))
                elif isinstance(kind, str):
                    yield RawResource(dict(document), "<input>", f"item {index}")
                else:
                    yield InputError("not a FHIR resource (no resourceType)", source="<input>",
                                     entry=f"item {index}")
            return
    for path in paths:
        yield from _guarded(lambda p=path: read_file(p, strict=strict))


def _guarded(produce: Any) -> Iterator[RawResource | InputError]:
    """Turn a whole-file error into an error item, so one bad file never stops the others."""
    try:
        yield from produce()
    except InputError as exc:
        yield exc


def evaluate_each(
    source: Source,
    *,
    as_of: AsOf | Literal["auto"] = None,
    assume_presentation: bool = False,
    rules: RuleSet | str | Path | None = None,
    strict: bool = False,
    full_history: bool = False,
    draft_orders: Iterable[Mapping[str, Any]] = (),
    unrecognized: bool = False,
) -> Iterator[Outcome]:
    """Assess every patient in `source`; bad input yields PatientError items, never an exception.

    `full_history` keeps every lab result in `Assessment.facts` (for trend charts); findings
    are the same either way. `draft_orders` are orders being written (CDS Hooks order hooks):
    they become DraftOrder facts of their patient, never part of the record. `unrecognized`
    adds each Assessment's `unrecognized` section (docs/coverage.md).
    """
    ruleset = rules if isinstance(rules, RuleSet) else load_rules(rules)
    as_of = fix_as_of(as_of)
    grouper = new_grouper(ruleset, as_of, strict=strict, full_history=full_history)
    accountant = Accountant(ruleset) if unrecognized else None
    items = _raw_items(source, strict)
    with fewer_collections():
        grouper.add_all(accountant.watch(items) if accountant else items)
    for index, order in enumerate(draft_orders):
        grouper.add(RawResource(dict(order), "draftOrders", f"entry[{index}]", draft_order=True))
    result = grouper.finish()
    outcomes = assess_all(result, ruleset, as_of, assume_presentation=assume_presentation)
    if accountant is None:
        yield from outcomes
        return
    for outcome, coverage in accounted(accountant, result, outcomes):
        if outcome is not None:
            yield with_section(outcome, coverage)


def coverage_of(
    source: Source,
    *,
    as_of: AsOf | Literal["auto"] = None,
    assume_presentation: bool = False,
    rules: RuleSet | str | Path | None = None,
    strict: bool = False,
) -> CoverageReport:
    """The coverage report of `source`: every resource of a type the rules read, accounted
    for, and the codings the rules did not understand (docs/coverage.md)."""
    ruleset = rules if isinstance(rules, RuleSet) else load_rules(rules)
    as_of = fix_as_of(as_of)
    grouper = new_grouper(ruleset, as_of, strict=strict)
    accountant = Accountant(ruleset)
    with fewer_collections():
        grouper.add_all(accountant.watch(_raw_items(source, strict)))
    result = grouper.finish()
    report = CoverageReport()
    for _, coverage in accounted(accountant, result, assess_all(
            result, ruleset, as_of, assume_presentation=assume_presentation)):
        if coverage is not None:
            report.add(coverage)
    return report


def fix_as_of(as_of: AsOf | Literal["auto"]) -> AsOf | Literal["auto"]:
    """One "now" for a whole run, so every patient of it is seen at the same instant."""
    return parse_as_of(None) if as_of is None else as_of


def new_grouper(ruleset: RuleSet, as_of: AsOf | Literal["auto"], *, strict: bool,
                full_history: bool = False) -> Grouper:
    """A Grouper set up for a run at `as_of`: it skips Observations older than every look-back,
    unless `full_history` (reports draw trends over the whole record)."""
    since = None
    if as_of not in (None, "auto") and not full_history:
        since = parse_as_of(as_of) - timedelta(days=ruleset.max_lookback_days)
    return Grouper(ruleset.terminology, strict=strict, track_times=as_of == "auto",
                   observations_since=since)


def assess_all(
    result: IngestResult,
    ruleset: RuleSet,
    as_of: AsOf | Literal["auto"],
    *,
    assume_presentation: bool,
) -> Iterator[Outcome]:
    """One outcome per input patient (and one per unreadable part of the input)."""
    evaluator = evaluator_for(ruleset)
    for error in result.errors:
        yield InputProblem(error.describe())
    for record in result.patients:
        try:
            yield evaluator.assess(record, as_of,
                                   assume_presentation=assume_presentation)
        except Exception as exc:  # one failing patient never stops the batch
            yield PatientError(record.reference, f"internal error: {exc!r}", kind="internal")


def evaluate(
    source: Source,
    *,
    as_of: AsOf | Literal["auto"] = None,
    assume_presentation: bool = False,
    rules: RuleSet | str | Path | None = None,
    strict: bool = False,
    full_history: bool = False,
    draft_orders: Iterable[Mapping[str, Any]] = (),
    unrecognized: bool = False,
) -> list[Assessment]:
    """Assess every patient in `source`, most useful entry point for Python callers.

    Raises InputError if any part of the input is bad (use `evaluate_each` to keep the good
    patients and receive the errors as items).
    """
    assessments: list[Assessment] = []
    errors: list[PatientError | InputProblem] = []
    for outcome in evaluate_each(source, as_of=as_of, assume_presentation=assume_presentation,
                                 rules=rules, strict=strict, full_history=full_history,
                                 draft_orders=draft_orders, unrecognized=unrecognized):
        if isinstance(outcome, Assessment):
            assessments.append(outcome)
        else:
            errors.append(outcome)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InputError(errors[0].message + more)
    return assessments
