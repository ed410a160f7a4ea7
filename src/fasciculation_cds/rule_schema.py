"""The schema of a rule file (rules/<category>/<slug>.yaml), as pydantic models.

`fasciculation-cds rules schema` exports it as JSON Schema so editors can validate rule files.
Rules speak of concepts, classes and groups from the value sets, never of FHIR paths or codes.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Severity = Literal["info", "warning", "critical"]
Status = Literal["experimental", "test", "stable", "deprecated"]
FactKind = Literal[
    "lab", "medication", "draft", "problem", "finding", "procedure", "patient", "result"]
Hook = Literal["patient-view", "order-select", "order-sign"]

DEFAULT_HOOKS: dict[Hook, Severity] = {"patient-view": "info", "order-select": "critical",
                                       "order-sign": "critical"}
SEVERITY_RANK: dict[str, int] = {"info": 1, "warning": 2, "critical": 3}
# The one list of rule categories, in the order clinician summaries list them, with the heading
# shown there. Rule files live in rules/<category>/ and a rule id starts with its category.
CATEGORY_TITLES: dict[str, str] = {
    "mnd": "Motor neuron disease",
    "electrolyte": "Electrolytes and vitamins",
    "metabolic": "Metabolic causes",
    "medication": "Medications",
    "neuropathy": "Nerve causes",
    "differential": "Other conditions to consider",
    "workup": "Work-up",
    "context": "Possible contributors",
}
RULE_CATEGORIES: tuple[str, ...] = tuple(CATEGORY_TITLES)
RULE_ID = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9][a-z0-9-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Reference(_Strict):
    citation: str
    url: str | None = None


class Comparison(_Strict):
    """A numeric test. ``unit`` is the unit the threshold is written in (converted exactly)."""

    lt: float | None = None
    lte: float | None = None
    gt: float | None = None
    gte: float | None = None
    eq: float | None = None
    unit: str | None = None

    @model_validator(mode="after")
    def _one_bound_at_least(self) -> Comparison:
        if all(v is None for v in (self.lt, self.lte, self.gt, self.gte, self.eq)):
            raise ValueError("a comparison needs at least one of lt, lte, gt, gte, eq")
        return self


class FactPattern(_Strict):
    """One fact the rule joins on. All given fields must hold (AND)."""

    fact: FactKind | list[FactKind] = Field(
        description="Kind of fact: lab, medication, problem (disorder), finding (symptom/sign), "
        "patient, or result (a finding of an earlier-stage rule)."
    )
    concept: str | None = None
    concepts: list[str] | None = Field(default=None, description="Any one of these concepts.")
    in_class: str | None = Field(default=None, description="Medication class from the value sets.")
    in_groups: list[str] | None = Field(
        default=None, description="Member of any of these concept groups."
    )
    exclude_concepts: list[str] = Field(default_factory=list)
    latest: bool | None = Field(
        default=None, description="Only the newest counting result of its concept."
    )
    max_age_days: int | None = Field(
        default=None, ge=0, description="Look-back: effective at most this many days before as_of."
    )
    value: Comparison | None = None
    times_upper_limit: Comparison | None = Field(
        default=None,
        description="For a lab with an upper limit (CK): the value as a multiple of the lab's "
        "referenceRange.high, else the default limit in derived.yaml (`{gt: 1}`: above it).",
    )
    outside_reference_range: bool | None = Field(
        default=None, description="For a lab: the value is (true) or is not (false) strictly "
        "outside the result's own referenceRange, converted like the value (free T4).")
    rule: str | None = Field(default=None, description="For fact: result — the rule id.")
    same_threshold_as: str | None = Field(
        default=None,
        description="A rule id whose latest-result test of the same concept must state exactly "
        "this value test and look-back (checked when the rules load), so a threshold two rules "
        "share cannot drift apart.")

    @property
    def kinds(self) -> list[FactKind]:
        """The fact kinds this pattern accepts (`fact` as one kind or a list)."""
        return self.fact if isinstance(self.fact, list) else [self.fact]

    @property
    def named_concepts(self) -> list[str]:
        """`concept` and `concepts` together, as written (lab families not expanded)."""
        return [*([self.concept] if self.concept else []), *(self.concepts or [])]


class MeasuredWithin(_Strict):
    days: int = Field(ge=0)
    all_of: list[str] | None = None
    any_of: list[str] | None = None


class NewerThan(_Strict):
    concept: str
    than: list[str] = Field(min_length=1)
    is_: bool = Field(default=True, alias="is")


class ContextPattern(_Strict):
    """Closed-world tests over the whole record (computed before the engine)."""

    presents: list[str] = Field(default_factory=list, description="All of these concepts present.")
    presents_any: list[str] = Field(
        default_factory=list, description="At least one of these concepts present."
    )
    absent: list[str] = Field(default_factory=list, description="None of these concepts present.")
    measured_within: MeasuredWithin | None = Field(
        default=None, description="Lab concepts (or families) with a counting result in N days."
    )
    not_measured_within: MeasuredWithin | None = None
    group_sets: dict[str, Comparison] = Field(
        default_factory=dict, description="Counts of sign groups present, e.g. mnd_sign_groups."
    )
    below_severity: Severity | None = Field(
        default=None, description="Stage 2: every earlier finding is below this severity."
    )
    without_findings: list[str] = Field(
        default_factory=list,
        description="Stage 2: none of these earlier findings (glob patterns on rule ids).",
    )
    without_facts: list[FactPattern] = Field(
        default_factory=list,
        description="Closed world: no fact of the record matches any of these patterns "
        "(e.g. no latest CK above the upper limit, no active dopamine antagonist).",
    )
    partial: bool | None = Field(
        default=None,
        description="The assessment is (true) or is not (false) partial: a resource that could "
        "hold the patient's data was unreadable (v3).",
    )
    conflicting: list[str] = Field(
        default_factory=list,
        description="At least one of these lab concepts (or families) has conflicting newest "
        "results (same time, opposite sides of the range).",
    )
    not_conflicting: list[str] = Field(
        default_factory=list,
        description="None of these lab concepts (or families) has conflicting newest results.",
    )
    newer: NewerThan | None = Field(
        default=None,
        description="The newest counting result of `concept` is (or, with `is: false`, is not) "
        "at least as new as the newest of `than`.",
    )



class Escalation(_Strict):
    severity: Severity
    context: ContextPattern | None = None
    facts: dict[str, FactPattern] = Field(
        default_factory=dict,
        description="Extra tests on the match's facts, by binding name (same fields as a pattern; "
        "`fact` must repeat the binding's kind).",
    )


class Match(_Strict):
    """One way the rule fires: a join of facts plus closed-world context tests."""

    label: str | None = None
    requires_presentation: bool | None = Field(
        default=None, description="Overrides the rule's requires_presentation for this match.")
    context: ContextPattern | None = None
    facts: dict[str, FactPattern] = Field(default_factory=dict)
    severity: Severity
    escalate: list[Escalation] = Field(default_factory=list)
    references: list[Reference] = Field(
        default_factory=list,
        description="Sources shown only when this match fired (so a card's links fit its drugs).",
    )

    @field_validator("facts")
    @classmethod
    def _binding_names(cls, facts: dict[str, FactPattern]) -> dict[str, FactPattern]:
        for name in facts:
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name in ("context", "all"):
                raise ValueError(f"binding name {name!r} must be lower_snake and not reserved")
        return facts


class Unmeasured(_Strict):
    """None of these lab concepts (or families) has a counting result in the last `days`."""

    concepts: list[str] = Field(min_length=1)
    days: int = Field(ge=0)


class Suggestion(_Strict):
    """A card suggestion; `order-lab` offers the lab concepts as ServiceRequests."""

    kind: Literal["order-lab", "remove-draft-order"]
    label: str
    concepts: list[str] = Field(default_factory=list)
    unless_measured: Unmeasured | None = Field(
        default=None, description="Offered only when this test has no counting result in its "
        "look-back (a measured test is never offered).")
    when_present_any: list[str] = Field(
        default_factory=list, description="Offered only when one of these concepts is present.")


class EvidenceCollect(_Strict):
    """Facts cited beside the match that never decide it (e.g. a raised CK)."""

    fact: FactKind
    concepts: list[str] = Field(default_factory=list)
    above_upper_limit: bool | None = None
    in_class: str | None = Field(default=None, description="Medications of this class.")
    latest: bool | None = Field(default=None, description="Labs: only the newest result.")
    max_age_days: int | None = Field(default=None, ge=0, description="Look-back in days.")


class Rule(_Strict):
    id: str = Field(description="Stable public id `category.slug`; never reused.")
    title: str
    category: str = Field(description="The rule's category; also its folder under rules/.",
                          json_schema_extra={"enum": list(RULE_CATEGORIES)})
    status: Status
    requires_presentation: bool = Field(
        default=True,
        description="Fires only for presenting patients (or with --assume-presentation).",
    )
    description: str = Field(description="What it does and why (rule docs).")
    match: list[Match] = Field(min_length=1)
    summary: str = Field(description="Jinja2 template; at most 140 characters once filled.")
    detail: str = Field(description="Jinja2 template, Markdown.")
    recommendations: list[str] = Field(min_length=1)
    suggestions: list[Suggestion] = Field(default_factory=list)
    evidence_also: list[EvidenceCollect] = Field(default_factory=list)
    references: list[Reference] = Field(
        default_factory=list,
        description="Sources for the rule as a whole (at least one, here or on every match).")
    notes: str | None = Field(default=None, description="Where sources differ; known limits.")
    hooks: dict[Hook, Severity] = Field(
        default_factory=lambda: dict(DEFAULT_HOOKS),
        description="CDS Hooks that show this rule's cards, each with the lowest severity shown "
        "there. By default patient-view shows every finding and the order hooks, which fire on "
        "every change of an order form, only critical ones (alert fatigue).")

    headline: bool = Field(
        default=False,
        description="When it fires, a clinician summary names it in its headline box, with an "
        "emphasised border, whatever the most severe finding is.",
    )

    @field_validator("category")
    @classmethod
    def _known_category(cls, value: str) -> str:
        if value not in CATEGORY_TITLES:
            raise ValueError(f"category must be one of {', '.join(RULE_CATEGORIES)}")
        return value

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not RULE_ID.match(value):
            raise ValueError("rule id must look like `category.slug` (lower case, dashes)")
        return value

    @model_validator(mode="after")
    def _id_matches_category(self) -> Rule:
        if self.id.split(".", 1)[0] != self.category:
            raise ValueError(f"rule id {self.id!r} must start with its category {self.category!r}")
        if not self.references and not all(m.references for m in self.match):
            raise ValueError("a rule needs references, its own or on every match")
        return self

    def presentation_required(self, match: Match) -> bool:
        """Whether `match` fires only for presenting patients (the match overrides the rule)."""
        if match.requires_presentation is not None:
            return match.requires_presentation
        return self.requires_presentation

    @property
    def stage(self) -> int:
        """Rules that read other findings run in a second stage, after the first has finished."""
        for match in self.match:
            contexts = [match.context, *(e.context for e in match.escalate)]
            if any(c and (c.below_severity or c.without_findings) for c in contexts):
                return 2
            if any(p.fact == "result" for p in match.facts.values()):
                return 2
        return 1
