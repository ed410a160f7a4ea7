"""Facts: the smallest clinical statements a rule can test (frozen pydantic models).

Each fact keeps the FHIR reference it came from, so every finding can cite its evidence.
Values are in the concept's canonical unit; the original value and unit are kept for display.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

Certainty = Literal["asserted", "uncertain", "unclear"]
"""How sure the record is of a problem or finding (docs/clinical-basis.md, v3 "Text context",
"Sign values"): `asserted`; `uncertain` (hedged, double-negated or self-contradicting text, or a
coded record its own text doubts: it counts, with notice `text-uncertain`, and is quoted on the
card); `unclear` (a sign value saying neither present nor absent, or a bare weakness/wasting
text: it forms no `mnd.*` group but blocks `mnd.benign-pattern`, with notice
`sign-value-unclear`). `quote` holds the record's own text the match came from, for evidence."""


class FactBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    reference: str


class PatientFact(FactBase):
    kind: Literal["patient"] = "patient"
    age: int | None = None
    sex: str | None = None


class LabResult(FactBase):
    kind: Literal["lab"] = "lab"
    concept: str
    label: str
    value: float
    unit: str
    original_value: str
    original_unit: str | None
    comparator: str | None = None
    effective: datetime
    age_days: float
    is_latest: bool
    reference_low: float | None = None
    reference_high: float | None = None
    interpretation: str | None = None
    upper_limit: float | None = None  # CK: the lab's referenceRange.high, else the default
    above_upper_limit: bool | None = None
    derived_from: tuple[str, ...] = ()
    note: str | None = None
    provenance: Literal["measured", "corrected", "lab-corrected"] = "measured"
    """`corrected`: albumin-corrected by this package; `lab-corrected`: a corrected calcium the
    lab reported (LOINC 29265-6); otherwise the value as measured."""
    measured_value: float | None = None
    """For `corrected`: the measured total in the canonical unit (`value` is corrected)."""
    albumin_reported: str | None = None
    """For `corrected`: the albumin used, as the lab sent it ("2.8 g/dL")."""


class _Drug(FactBase):
    """What medications and draft orders share: the ingredient, its classes, how it matched."""

    concept: str
    label: str
    classes: tuple[str, ...]
    display: str | None = None
    matched_by: str


class Medication(_Drug):
    kind: Literal["medication"] = "medication"
    status: str
    authored: datetime | None = None


class Problem(FactBase):
    """A coded condition (disorder) from a Condition or an Observation."""

    kind: Literal["problem"] = "problem"
    concept: str
    label: str
    groups: tuple[str, ...] = ()
    clinical_status: str | None = None
    verification_status: str | None = None
    onset: datetime | None = None
    matched_by: str
    certainty: Certainty = "asserted"
    quote: str | None = None
    age_days: float | None = None
    """Whole UTC calendar days from its date (onset, else recordedDate) to as_of; None undated."""
    onset_text: str | None = None
    """The date used and its source, for cards (v3 clinical basis, "Presentation of
    findings"): "onset 2026-11-20", "onset at age 12 (1982)", "recorded 2026-11-25 (no onset
    given)"."""


class Finding(FactBase):
    """A symptom or sign (fasciculation, weakness...) from a Condition or an Observation."""

    kind: Literal["finding"] = "finding"
    concept: str
    label: str
    groups: tuple[str, ...] = ()
    body_site: str | None = None
    effective: datetime | None = None
    matched_by: str
    certainty: Certainty = "asserted"
    quote: str | None = None
    age_days: float | None = None
    """Whole UTC calendar days from its date to as_of; None when undated."""


class Procedure(FactBase):
    """A completed or in-progress Procedure (renal dialysis...), performed by as_of."""

    kind: Literal["procedure"] = "procedure"
    concept: str
    label: str
    groups: tuple[str, ...] = ()
    status: str
    performed: datetime
    age_days: float
    matched_by: str


class DraftOrder(_Drug):
    """A medication order being written (CDS Hooks order-select / order-sign `draftOrders`)."""

    kind: Literal["draft"] = "draft"


ClinicalFact = PatientFact | LabResult | Medication | Problem | Finding | Procedure | DraftOrder


class PatientContext(BaseModel):
    """Closed-world statements over the whole record, computed before the engine runs.

    durable-rules cannot test absence reliably (negation is checked once, in assertion order), so
    "no red-flag sign", "magnesium measured in 90 days" and the like are computed here.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["context"] = "context"
    reference: str
    presenting: bool
    presentation: tuple[str, ...]
    concepts_present: tuple[str, ...]
    days_since: dict[str, float]
    group_counts: dict[str, int]
    group_set_counts: dict[str, int]
    partial: bool = False
    """A resource that could hold this patient's data was unreadable (docs/clinical-basis.md)."""
    as_of: datetime | None = None
    """The evaluation instant: cards date a result against its UTC day (docs/clinical-basis.md,
    v3 "Time")."""
    conflicting: tuple[str, ...] = ()
    """Lab concept ids (not families) whose newest counting results conflict: same time,
    opposite sides of the range (same-time results, v3; notice `conflicting-results`). Rules
    test it with `conflicting:` / `not_conflicting:` (families are expanded there)."""
