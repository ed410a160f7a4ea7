"""Results inside DiagnosticReports, resolved so that normalization sees ordinary Observations.

docs/clinical-basis.md "Results inside reports": an Observation referenced by a report's
`result` (in the same Bundle or export) or contained in the report counts like any Observation;
a contained one takes the report's subject; one without effective[x] takes the report's
effective[x], then its own `issued`, then the report's; its own status decides. A contained
result is named after the report that holds it (`DiagnosticReport/x#obs`), as it has no identity
of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .errors import InputError

if TYPE_CHECKING:
    from .ingest import SourcedResource

REPORT_TYPE = "DiagnosticReport"
CODE_UNREADABLE = ("its code cannot be read as FHIR R4 (a malformed CodeableConcept, or a code "
                   "system or code in the wrong case)")
_EFFECTIVE = ("effectiveDateTime", "effectivePeriod", "effectiveInstant", "effectiveTiming")


def has_own_time(observation: Mapping[str, Any]) -> bool:
    return any(key in observation for key in _EFFECTIVE)


def dated(observation: Mapping[str, Any], report: Mapping[str, Any]) -> dict[str, Any]:
    """The Observation with the time it takes from its report, when it has none of its own."""
    result = dict(observation)
    if has_own_time(observation):
        return result
    for key in _EFFECTIVE:
        if key in report:
            result[key] = report[key]
            return result
    if "issued" not in observation and "issued" in report:
        result["issued"] = report["issued"]
    return result


def report_name(report: Mapping[str, Any], fallback: str) -> str:
    return f"{REPORT_TYPE}/{report['id']}" if isinstance(report.get("id"), str) else fallback


class ReportResults:
    """The reports of an input, and the Observations they may date."""

    def __init__(self) -> None:
        self._reports: list[tuple[SourcedResource, str]] = []
        self._undated: dict[str, SourcedResource] = {}
        self._orphans: dict[str, SourcedResource] = {}
        self._orphan_order: list[SourcedResource] = []

    def add_report(self, sourced: SourcedResource, subject: str) -> None:
        self._reports.append((sourced, subject))

    def add_observation(self, sourced: SourcedResource, keys: list[str]) -> None:
        """An Observation of the input: kept by its keys when a report may have to date it."""
        if not has_own_time(sourced.resource):
            for key in keys:
                self._undated[key] = sourced

    def add_orphan(self, sourced: SourcedResource, keys: list[str]) -> None:
        """An Observation a rule would read that names no patient: it counts for the patient
        of a report that lists it (`claim_orphans`), else it is a problem of the input."""
        self._orphan_order.append(sourced)
        for key in keys:
            self._orphans[key] = sourced

    def claim_orphans(self) -> tuple[list[tuple[str, SourcedResource]], list[SourcedResource]]:
        """(report subject, dated Observation) for each orphan a report lists; and the
        orphans no report claims."""
        from .ingest import canonical_reference

        claimed: list[tuple[str, SourcedResource]] = []
        seen: set[int] = set()
        for sourced, subject in self._reports:
            for target in _result_targets(sourced.resource):
                found = self._orphans.get(target) or self._orphans.get(
                    canonical_reference(target))
                if found is not None and id(found) not in seen:
                    seen.add(id(found))
                    observation = dated(found.resource, sourced.resource)
                    observation["subject"] = sourced.resource.get("subject")
                    claimed.append((subject, replace(found, resource=observation)))
        return claimed, [o for o in self._orphan_order if id(o) not in seen]

    def dated_results(self) -> dict[int, SourcedResource]:
        """id(Observation as added) -> the Observation dated by the report that lists it."""
        from .ingest import canonical_reference

        dated_by_id: dict[int, SourcedResource] = {}
        if not self._undated:
            return dated_by_id
        for sourced, _ in self._reports:
            for target in _result_targets(sourced.resource):
                found = self._undated.get(target) or self._undated.get(
                    canonical_reference(target))
                if found is not None and id(found) not in dated_by_id:
                    dated_by_id[id(found)] = replace(
                        found, resource=dated(found.resource, sourced.resource))
        return dated_by_id

    def contained_results(
        self,
        relevance: Callable[[Mapping[str, Any]], str],
        validate: Callable[[SourcedResource], InputError | None],
    ) -> Iterator[tuple[str, SourcedResource | None, InputError | None]]:
        """(patient reference, Observation, or the problem that makes it unreadable) for each
        Observation contained in a report that a rule could use."""
        for sourced, subject in self._reports:
            report = sourced.resource
            name = report_name(report, f"{REPORT_TYPE} at {sourced.source} {sourced.entry}")
            for index, inner in enumerate(report.get("contained") or []):
                if not isinstance(inner, Mapping) or inner.get("resourceType") != "Observation":
                    continue
                found = relevance(inner)
                if found == "not-relevant":
                    continue
                observation = dated(inner, report)
                if "subject" not in observation and "subject" in report:
                    observation["subject"] = report["subject"]
                local = inner.get("id") if isinstance(inner.get("id"), str) else str(index)
                result = replace(sourced, resource=observation, reference=f"{name}#{local}",
                                 entry=f"{sourced.entry} contained[{index}]",
                                 medication_code=None)
                problem = validate(result)
                if problem is None and found == "unreadable":
                    problem = InputError(CODE_UNREADABLE,
                                         source=result.source, entry=result.entry,
                                         resource=result.reference)
                yield (subject, None, problem) if problem else (subject, result, None)


def _result_targets(report: Mapping[str, Any]) -> list[str]:
    results = report.get("result")
    targets = []
    for item in results if isinstance(results, list) else []:
        target = item.get("reference") if isinstance(item, Mapping) else None
        if isinstance(target, str) and target and not target.startswith("#"):
            targets.append(target)
    return targets
