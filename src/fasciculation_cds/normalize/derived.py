"""Facts derived from other facts: diabetes from HbA1c, tongue fasciculation from a body site."""

from __future__ import annotations

from ..facts import Finding, LabResult, Problem
from .common import Content
from .conditions import Coded


def diabetes_from_hba1c(content: Content, labs: list[LabResult]) -> list[Problem]:
    """Diabetes when the latest HbA1c inside its look-back is at or above the threshold."""
    constants = content.constants
    concept = content.term.concepts[constants.diabetes_concept]
    return [Problem(reference=lab.reference, concept=concept.id, label=concept.label,
                    groups=concept.groups, matched_by=f"derived from {lab.label}",
                    onset=lab.effective)
            for lab in labs
            if lab.concept == constants.hba1c_concept and lab.is_latest
            and lab.age_days <= constants.hba1c_lookback_days
            and lab.value >= float(constants.hba1c_threshold)]


def body_site_findings(content: Content, coded: list[Coded]) -> list[Finding]:
    """A finding whose body site names a place that makes it another concept (tongue)."""
    out: list[Finding] = []
    for base_concept, words, derived in content.term.body_site_rules:
        concept = content.term.concepts[derived]
        for fact in coded:
            if (isinstance(fact, Finding) and fact.concept == base_concept and fact.body_site
                    and any(w in fact.body_site.lower() for w in words)):
                out.append(Finding(reference=fact.reference, concept=concept.id,
                                   label=concept.label, groups=concept.groups,
                                   body_site=fact.body_site, effective=fact.effective,
                                   matched_by=f"{base_concept} with body site",
                                   certainty=fact.certainty, quote=fact.quote))
    return out
