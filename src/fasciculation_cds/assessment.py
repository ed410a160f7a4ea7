"""The public output contract: one Assessment per patient (DESIGN.md), as pydantic models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import orjson
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from .facts import ClinicalFact
from .rule_schema import SEVERITY_RANK, Severity


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PatientSummary(_Out):
    reference: str
    age: int | None = None
    sex: str | None = None


class Evidence(_Out):
    reference: str
    concept: str
    label: str | None = None
    value: float | None = None
    unit: str | None = None
    reported: str | None = Field(default=None, description="Value and unit as the record sent it.")
    shown: str | None = Field(
        default=None,
        description="For a lab: the value in the unit the lab sent, the canonical value beside "
        "it when the units differ, and how a corrected value was obtained "
        "(`7.2 mg/dL (1.80 mmol/L); corrected for albumin 2.8 g/dL by this package: 8.16 mg/dL`).",
    )
    effective: str | None = None
    status: str | None = None
    display: str | None = None
    matched_by: str | None = None
    note: str | None = None
    reference_range: str | None = None


class Citation(_Out):
    citation: str
    url: str | None = None


class Suggestion(_Out):
    kind: str
    label: str
    concepts: list[str] = Field(default_factory=list)


class RuleFinding(_Out):
    rule_id: str
    category: str
    severity: Severity
    title: str
    summary: str = Field(max_length=140)
    detail: str
    evidence: list[Evidence]
    recommendations: list[str]
    suggestions: list[Suggestion] = Field(default_factory=list)
    references: list[Citation]


class Notice(_Out):
    code: str
    reference: str
    message: str


class UnrecognizedCoding(_Out):
    """A coding of this patient's record the rules did not understand (docs/coverage.md)."""

    reason: str = Field(description="`no-value-set` (the coding matched no value set), "
                        "`unit-not-convertible` or `status-not-counted` (a recognized resource "
                        "kept out by its unit or status).")
    resource_type: str
    element: str
    system: str | None = None
    code: str | None = None
    display: str | None = None
    looks_like: str | None = Field(default=None, description="Concept ids (space-separated) "
                                   "the display or text names: a hint, never a match.")
    resources: int


class Assessment(_Out):
    patient: PatientSummary
    as_of: str
    presentation: list[str]
    findings: list[RuleFinding]
    notices: list[Notice]
    rules_version: str
    partial: bool | None = Field(
        default=None, description="True when a resource that could hold this patient's data was "
        "unreadable (named in `notices`, code `resource-unreadable`); absent otherwise.")
    unrecognized: list[UnrecognizedCoding] | None = Field(
        default=None, description="What the rules did not understand in this patient's record "
        "(docs/coverage.md); present when asked for (`evaluate`, `unrecognized=True`).")
    # The normalized facts the assessment was made from (not part of the JSON contract): the
    # clinician summaries draw lab trends and medication lists from them, never from FHIR again.
    _facts: tuple[ClinicalFact, ...] = PrivateAttr(default=())

    @property
    def facts(self) -> tuple[ClinicalFact, ...]:
        return self._facts

    @property
    def highest_severity(self) -> Severity | None:
        return max((f.severity for f in self.findings), key=SEVERITY_RANK.__getitem__,
                   default=None)

    def to_json_dict(self) -> dict[str, object]:
        return self.model_dump(mode="json", exclude_none=True)


class JsonRow(Protocol):
    """An output row: an Assessment, or the error row of a patient that was not evaluated."""

    def to_json_dict(self) -> dict[str, object]: ...


def dumps_assessments(assessments: Sequence[JsonRow], *, indent: bool = True,
                      lines: bool = False) -> bytes:
    """Byte-stable JSON: fixed key order from the models, sorted findings, no timestamps.

    A JSON array (indented unless `indent` is false), or with `lines` NDJSON: one object per
    line, each line ending in a newline.
    """
    if lines:
        return b"".join(orjson.dumps(a.to_json_dict()) + b"\n" for a in assessments)
    option = orjson.OPT_INDENT_2 if indent else 0
    return orjson.dumps([a.to_json_dict() for a in assessments], option=option)
