"""The public output contract: one Assessment per patient (DESIGN.md), as pydantic models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

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
    dated_by: Literal["onset", "onset-age", "recorded"] | None = Field(
        default=None, description="For a Condition: `onset`, `effective` is its onset; "
        "`onset-age`, an onset given as an age (`onset_age`); `recorded`, the day it was "
        "recorded, having no onset. Absent for other evidence.")
    onset_age: str | None = Field(default=None, description="The age (or age range) an "
                                  "onset was given as, in the record's unit (years, as a rule).")
    quote: str | None = Field(default=None, description="For a problem or sign: the record's "
                              "own text it was read from (a text or display-fallback match).")
    certainty: str | None = Field(default=None, description="`uncertain` or `unclear` when "
                                  "the record doubts it; absent when asserted.")


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


class CheckedRemark(_Out):
    """A result of the analyte that did not count (or counted with a caveat), and why."""

    reference: str
    code: str = Field(description="A notice code (docs/output.md, Notices), or "
                      "`status` for a result whose status does not count.")
    message: str


class CheckedAnalyte(_Out):
    """One lab concept (or lab family) the rules read, and what was found for it."""

    concept: str = Field(description="The concept, or the lab family (`calcium-any`).")
    label: str
    short: str = Field(description="The short name the summary line uses (`K`, `Mg`).")
    rules: list[str] = Field(description="The active rules that read it.")
    lookback_days: int | None = Field(
        description="The longest look-back of those rules (None: no rule limits it).")
    state: Literal["value", "none", "not-counted"] = Field(
        description="`value`: a counting result in the look-back (the newest is given); "
        "`none`: no result at all; `not-counted`: results, none of which counted (`remarks`).")
    value: str | None = Field(default=None, description="The value the rules used, in the "
                              "unit the lab sent (a corrected calcium: the corrected value).")
    shown: str | None = Field(default=None, description="As evidence shows it (`shown`).")
    what: str | None = Field(default=None, description="What the value is, when the concept "
                             "alone does not say (`Calcium (total), as measured`).")
    date: str | None = None
    reference: str | None = None
    remarks: list[CheckedRemark] = Field(default_factory=list)
    text: str = Field(description="One line: `K 4.1 mmol/L (2026-11-02)`, `Mg: none in 90 days`.")


class CheckedSign(_Out):
    concept: str
    label: str
    group: str
    reference: str
    date: str | None = None
    certainty: str = "asserted"
    matched_by: str | None = None
    quote: str | None = Field(default=None, description="The record's own text it came from.")


class CheckedSignSet(_Out):
    """One counted group set (derived.yaml `counted_group_sets`, e.g. MND signs)."""

    name: str
    label: str
    rules: list[str]
    groups: list[str]
    found: list[CheckedSign]
    remarks: list[CheckedRemark] = Field(
        default_factory=list, description="Signs of the set the record leaves in doubt "
        "(notices `sign-value-unclear`, `text-uncertain`): then the set never reads as none.")
    text: str = Field(description="`no MND signs recorded`, or the signs found.")


class Checked(_Out):
    """What the rules looked at (issue 16 "What was checked"): a quiet result is trusted only
    when what was looked at is shown."""

    analytes: list[CheckedAnalyte]
    signs: list[CheckedSignSet]
    unreadable: list[str] = Field(
        default_factory=list, description="Resources that could not be read (notice "
        "`resource-unreadable`): what they held was not checked.")
    text: str = Field(description="The one-line summary: `checked: K 4.1 mmol/L (2026-11-02), "
                      "Mg 0.85 mmol/L (2026-11-02), …; no MND signs recorded`.")
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
    checked: Checked | None = Field(
        default=None, description="What was checked: every evaluated assessment has it.")
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
