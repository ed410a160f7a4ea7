"""What the SMART app reads and the scopes it asks for, both taken from the hooks' prefetch
templates, so the app reads exactly what the service reads and asks for nothing more."""

from __future__ import annotations

import re

from ..ruleset import RuleSet
from .needs import HOOKS
from .prefetch import templates

_RESOURCE_TYPE = re.compile(r"^([A-Z][A-Za-z]+)(?:/|\?|$)")
_INCLUDE = re.compile(r"(?:^|&)_include=[A-Za-z]+:([a-z][A-Za-z]*)")
# What an `_include` search parameter points at (FHIR R4 search parameters)
INCLUDED_TYPE = {"medication": "Medication", "result": "Observation"}


def record_templates(ruleset: RuleSet) -> dict[str, str]:
    """Every template any hook asks for (the full summary shows what any card could show);
    a key two hooks share keeps the first hook's search, which asks for the most."""
    merged: dict[str, str] = {}
    for hook in HOOKS:
        for key, template in templates(ruleset, hook).items():
            merged.setdefault(key, template)
    return merged


def resource_types(wanted: dict[str, str]) -> list[str]:
    """Resource types the templates read, those they `_include` (a medication order's
    Medication, which the service also reads on its own when it was not included)."""
    types: set[str] = set()
    for template in wanted.values():
        found = _RESOURCE_TYPE.match(template)
        if found:
            types.add(found[1])
        query = template.partition("?")[2]
        for target in _INCLUDE.findall(query):
            types.add(INCLUDED_TYPE.get(target, target[0].upper() + target[1:]))
    return sorted(types)


def smart_scopes(ruleset: RuleSet, *, openid: bool = False) -> str:
    """`launch` (EHR launch context) and read access to each type the rules read, in the
    patient's compartment; `openid fhirUser` only when configured."""
    scopes = ["launch"]
    if openid:
        scopes += ["openid", "fhirUser"]
    scopes += [f"patient/{kind}.read" for kind in resource_types(record_templates(ruleset))]
    return " ".join(scopes)
