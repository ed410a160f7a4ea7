"""Question codes (docs/clinical-basis.md, v3 "Records as other systems write them"): an
Observation whose code is a question, history or instrument counts by its value only, never by
its code or display.

An AUDIT-C total at or above the cut-off for the patient's sex is alcohol use; a coded value in
the question's answer concept (current smoker, current drinker) is that item; any other value, a
panel without a value, or a total in a unit that is not a score, is nothing. The cut-offs and
answer concepts are in rules/derived.yaml `question_codes`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..terminology import MATCHED_BY_CODE, ConceptMatch
from .common import Content, days_between, number
from .conditions import Coded, coded_fact

MATCHED_BY_QUESTION = "question value"
OTHERWISE = "otherwise"


def question_facts(
    content: Content,
    resource: Mapping[str, Any],
    matches: list[ConceptMatch],
    reference: str,
    effective: datetime,
    as_of: datetime,
    sex: str | None,
) -> list[Coded]:
    """The lifestyle items a question Observation's value says (none for any other value)."""
    questions = content.ruleset.derived.question_codes
    if days_between(effective, as_of) > content.constants.sign_lookback_days:
        return []
    out: list[Coded] = []
    for match in matches:
        spec = questions.get(match.concept)
        if spec is None or content.term.concepts[match.concept].kind != "question":
            continue
        if _total_reaches(spec.at_least, spec.units, resource, sex) or (
                spec.answers is not None and _answer_in(content, resource, spec.answers)):
            item = ConceptMatch(spec.yields, MATCHED_BY_QUESTION, match.code, match.system)
            out.append(coded_fact(content, item, reference, effective, resource))
    return out


def _total_reaches(at_least: Mapping[str, float], units: list[str],
                   resource: Mapping[str, Any], sex: str | None) -> bool:
    if not at_least:
        return False
    cut_off = at_least.get(sex or "", at_least[OTHERWISE])
    if "valueInteger" in resource:
        total = number(resource["valueInteger"])
    else:
        quantity = resource.get("valueQuantity")
        if not isinstance(quantity, Mapping) or quantity.get("comparator") is not None:
            return False
        sent = {str(quantity.get(k) or "") for k in ("code", "unit")}
        if not sent & set(units) and sent != {""}:
            return False  # a total in a unit that is not a score is no total
        total = number(quantity.get("value"))
    return total is not None and total >= number(cut_off)  # type: ignore[operator]


def _answer_in(content: Content, resource: Mapping[str, Any], answers: str) -> bool:
    value = resource.get("valueCodeableConcept")
    if not isinstance(value, Mapping):
        return False
    return any(m.concept == answers and m.matched_by == MATCHED_BY_CODE
               for m in content.term.match_codeable(value))
