"""The FHIR searches a hook asks for (its prefetch templates, and the service's own reads when a
template was not sent), derived from what the rules read: the resource types ingest accepts
(`ingest.READ_TYPES`) and the elements it reads of each (`read_elements.READ_ELEMENTS`). There is
no list of types here: a type the rules come to read is asked for on every hook, whole, without a
change in the service. The tables below only narrow a search where that provably loses nothing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .. import ingest, read_elements
from ..ruleset import RuleSet
from .needs import DataNeeds, needs_of

PAGE_SIZE = 100
PATIENT_TOKEN = "{{context.patientId}}"
# Read, but never searched by patient: the Patient by id, a Medication through the orders that
# name it (`_include`, else a search by `_id`).
NOT_SEARCHED = frozenset({"Patient", "Medication"})
# A read element that references another resource the rules read: the `_include` that brings it
# with the search, and the type it names (what a server left out is then searched by `_id`).
REFERENCES: dict[str, tuple[str, str, str]] = {
    # read element: (_include name, element holding the reference, referenced type)
    "medication[x]": ("medication", "medicationReference", "Medication"),
    "result": ("result", "result", "Observation"),
}
# Searches narrowed to the look-back by a date parameter. The R4 `date` parameter of Observation
# covers effective[x] only, while an Observation without it is dated by `issued` (or by its
# report): so the window search is paired with one for those without effective[x]
# (`date:missing=true`), and the service applies the look-back itself to both.
WINDOWED = {"Observation": "date"}
# Concept kinds (codes.yaml) by the coded types that hold them: a hook whose rules read none of a
# type's kinds does not ask for it, and the search may ask by code when codes are the only way
# the rules recognise its records. A type not listed here is asked for on every hook.
CONCEPT_KINDS = {"Observation": {"lab", "finding"}, "Condition": {"condition", "finding"},
                 "Procedure": {"procedure"}}
FACT_KINDS = {"Observation": {"lab", "finding"}, "Condition": {"problem", "finding"},
              "Procedure": {"procedure"}}


@dataclass(frozen=True)
class Reference:
    element: str
    target: str


def prefetch_key(resource_type: str) -> str:
    """`MedicationRequest` -> `medicationRequests`, `FamilyMemberHistory` ->
    `familyMemberHistories`: the key its search has in the prefetch."""
    key = resource_type[0].lower() + resource_type[1:]
    return f"{key[:-1]}ies" if re.search(r"[^aeiou]y$", key) else f"{key}s"


def lookback_days(ruleset: RuleSet) -> int:
    """Days of Observations to ask for: the rule set's longest look-back, and one more day
    because the search compares dates while the rules compare instants."""
    return math.ceil(ruleset.max_lookback_days) + 1


def searched_types() -> list[str]:
    """Every type ingest reads (looked up on each call: ingest's tables are the source)."""
    return sorted(ingest.READ_TYPES - NOT_SEARCHED)


def _read(resource_type: str) -> tuple[str, ...]:
    return tuple(read_elements.READ_ELEMENTS.get(resource_type, ()))


def references(resource_type: str) -> list[Reference]:
    """The references of a type that name other resources the rules read."""
    return [Reference(element, target) for name, (_, element, target) in REFERENCES.items()
            if name in _read(resource_type) and target in ingest.READ_TYPES]


def _needed(ruleset: RuleSet, needs: DataNeeds, resource_type: str) -> bool:
    if resource_type in ingest.MEDICATION_USE_TYPES:
        return needs.medications
    if resource_type == "Procedure" and not any(
            c.kind == "procedure" for c in ruleset.terminology.concepts.values()):
        return False
    kinds = FACT_KINDS.get(resource_type)
    return kinds is None or bool(needs.fact_kinds & kinds)


def _by_code(ruleset: RuleSet, resource_type: str) -> str | None:
    """`code=` naming every code of the type's concepts, when codes are the only way the rules
    recognise its records (no text or code-prefix matching): else None (ask for all)."""
    kinds = CONCEPT_KINDS.get(resource_type)
    if not kinds:
        return None
    term = ruleset.terminology
    if any(term.concepts[c].kind in kinds for c in term.matched_beyond_codes()
           if c in term.concepts):
        return None
    pairs = term.codes_of(c.id for c in term.concepts.values() if c.kind in kinds)
    return "code=" + ",".join(f"{system}|{code}" for system, code in pairs)


def _search(resource_type: str, *query: str | None) -> str:
    return f"{resource_type}?{'&'.join(q for q in query if q)}&_count={PAGE_SIZE}"


def templates(ruleset: RuleSet, hook: str) -> dict[str, str]:
    """Prefetch templates for one hook, with CDS Hooks tokens (`{{context.patientId}}`,
    `{{today() - N days}}`). Each asks only for what the hook's rules read."""
    needs = needs_of(ruleset, hook)
    found: dict[str, str] = {"patient": f"Patient/{PATIENT_TOKEN}"}
    for resource_type in searched_types():
        if not _needed(ruleset, needs, resource_type):
            continue
        key = prefetch_key(resource_type)
        patient = f"patient={PATIENT_TOKEN}"
        code = _by_code(ruleset, resource_type)
        includes = [f"_include={resource_type}:{REFERENCES[name][0]}"
                    for name in REFERENCES if name in _read(resource_type)]
        window = WINDOWED.get(resource_type)
        if window is None:
            found[key] = _search(resource_type, patient, code, *includes)
            continue
        since = f"{window}=ge{{{{today() - {lookback_days(ruleset)} days}}}}"
        found[key] = _search(resource_type, patient, since, code, *includes)
        found[f"{key}Undated"] = _search(resource_type, patient, f"{window}:missing=true",
                                         code, *includes)
    return found
