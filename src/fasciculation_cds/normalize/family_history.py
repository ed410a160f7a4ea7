"""FamilyMemberHistory to a family history of MND (docs/clinical-basis.md, "Negation and text
context"): a relative's ALS/MND, coded or named, that is not entered-in-error. It forms no group;
it blocks reassurance and is named on the card."""

from __future__ import annotations

from collections.abc import Mapping

from ..facts import Finding
from ..ingest import SourcedResource
from .common import Content, reference_of


def family_history_facts(content: Content, sourced: SourcedResource) -> list[Finding]:
    resource = sourced.resource
    reader = content.term.reader
    if (reader is None or reader.family_history_concept is None
            or resource.get("status") == "entered-in-error"):
        return []
    conditions = resource.get("condition")
    for item in conditions if isinstance(conditions, list) else []:
        code = item.get("code") if isinstance(item, Mapping) else None
        reading = content.term.read_codeable(code if isinstance(code, Mapping) else None)
        for read in reading.matches:
            if read.match.concept != reader.mnd_concept:
                continue
            concept = content.term.concepts[reader.family_history_concept]
            text = code.get("text") if isinstance(code, Mapping) else None
            return [Finding(reference=reference_of(sourced), concept=concept.id,
                            label=concept.label, groups=concept.groups,
                            matched_by=read.match.matched_by,
                            quote=text if isinstance(text, str) else read.quote)]
    return []
