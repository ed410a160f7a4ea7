"""What the value sets did not understand: codings keyed for counting, and whether they look
like a concept the rules know.

A coding that matched no value set is keyed by (reason, resource type, element, system, code,
display). It `looks like` a concept when its display, or the element's text, names the concept
as whole words: the concept's label, its id, its text-matches.yaml phrases, and for a drug its
name variants. That is a hint for whoever extends the value sets, never a match: nothing here
makes a fact.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from .content_schema import TextMatches
from .ruleset import RuleSet, read_content
from .terminology import Phrases, Terminology, codings_of

NO_VALUE_SET = "no-value-set"
UNIT_NOT_CONVERTIBLE = "unit-not-convertible"
STATUS_NOT_COUNTED = "status-not-counted"
REASONS = (NO_VALUE_SET, UNIT_NOT_CONVERTIBLE, STATUS_NOT_COUNTED)

# Concept kinds whose label names a clinical thing (answer concepts name values, not things).
_NAMED_KINDS = frozenset({"lab", "condition", "finding", "medication", "procedure", "question"})
_SPACED_SEPARATOR = re.compile(r"\s+/\s+")
_NAME_SEPARATOR = re.compile(r"[()/,;]")
_MEMO_LIMIT = 1 << 16


class CodingKey(NamedTuple):
    """One row of the table: what was not understood, where, and what it looks like (a tuple:
    counted per resource, so hashed in C)."""

    reason: str
    resource_type: str
    element: str
    system: str | None
    code: str | None
    display: str | None
    looks_like: str | None
    """Space-separated concept ids the display or text names, or None."""

    def to_json_dict(self) -> dict[str, object]:
        out = {"reason": self.reason, "resource_type": self.resource_type,
               "element": self.element, "system": self.system, "code": self.code,
               "display": self.display, "looks_like": self.looks_like}
        return {k: v for k, v in out.items() if v is not None}


def _label_phrases(concept_id: str, kind: str, label: str) -> list[str]:
    """The names a label gives: its head ("Potassium" of "Potassium, serum/plasma/blood"), each
    part of "Insomnia / sleep deprivation", and for a drug the names in brackets too."""
    if kind == "medication":
        return [p.strip() for p in _NAME_SEPARATOR.split(label) if p.strip()]
    head = label.split("(")[0].split(",")[0].split(":")[0]
    return [p.strip() for p in _SPACED_SEPARATOR.split(head) if p.strip()]


class LooksLike:
    """Concept names as whole-word phrases, for the `looks_like` hint."""

    def __init__(self, terminology: Terminology, text_matches: TextMatches) -> None:
        phrases: list[tuple[str, str]] = []
        for cid, concept in terminology.concepts.items():
            if concept.kind not in _NAMED_KINDS:
                continue
            phrases.append((cid.replace("-", " "), cid))
            phrases += [(p, cid) for p in _label_phrases(cid, concept.kind, concept.label)]
        phrases += [(p, cid) for cid, listed in text_matches.text.items() for p in listed]
        phrases += [(p, cid) for cid, listed in text_matches.medication_names.items()
                    for p in listed]
        self._phrases = Phrases(phrases)

    @functools.lru_cache(maxsize=_MEMO_LIMIT)  # noqa: B019 - one instance per rule set
    def of(self, text: str) -> tuple[str, ...]:
        tokens = re.findall(r"[a-z0-9]+|:", text.lower())
        return tuple(sorted({cid for _, _, cid in self._phrases.find(tokens)}))


def _kinds(resource_type: str, element: str) -> frozenset[str] | None:
    """The concept kinds an element can be (None: any): a drug is never a lab ("Naproxen
    sodium" does not look like the sodium result), a Condition never a drug."""
    if element.startswith("medication") or resource_type == "Medication":
        return frozenset({"medication"})
    return _KINDS_BY_TYPE.get(resource_type)


_KINDS_BY_TYPE = {
    "Observation": frozenset({"lab", "finding", "condition", "question"}),
    "Condition": frozenset({"condition", "finding"}),
    "Procedure": frozenset({"procedure"}),
}


@functools.lru_cache(maxsize=8)
def looks_like_for(ruleset: RuleSet) -> LooksLike:
    text_matches = read_content(ruleset.directory / "text-matches.yaml", TextMatches)
    return LooksLike(ruleset.terminology, text_matches)


@dataclass(frozen=True)
class Unmatched:
    """The codings of one element that matched no value set, keyed; `looks_relevant` when
    any of them looks like a concept."""

    keys: tuple[CodingKey, ...]
    looks_relevant: bool
    recognized: bool = False
    """Ingest's relevance test says the value sets know the element: batch, which sees only
    what it did not keep, leaves such a resource (an Observation older than every look-back)
    out of the table."""


class CodingClassifier:
    """Keys the codings of an element no value set knows (memoized: a population repeats the
    same few hundred CodeableConcepts)."""

    def __init__(self, ruleset: RuleSet) -> None:
        self._looks = looks_like_for(ruleset)
        self._terminology = ruleset.terminology
        self._memo: dict[bytes, Unmatched] = {}

    def unmatched(self, resource_type: str, element: str, codeable: Any) -> Unmatched:
        try:
            key = orjson.dumps([resource_type, element, codeable])
        except TypeError:  # not JSON (a caller's own objects): no memo
            return self._unmatched(resource_type, element, codeable)
        found = self._memo.get(key)
        if found is None:
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            found = self._memo[key] = self._unmatched(resource_type, element, codeable)
        return found

    def _unmatched(self, resource_type: str, element: str, codeable: Any) -> Unmatched:
        if not isinstance(codeable, Mapping):
            key = CodingKey(NO_VALUE_SET, resource_type, element, None, None,
                            None if codeable is None else _short(codeable), None)
            return Unmatched((key,), False)
        kinds = _kinds(resource_type, element)
        text = codeable.get("text")
        text = text if isinstance(text, str) and text.strip() else None
        text_looks = self._looks_like(text, kinds)
        keys = []
        for coding in codings_of(codeable):
            display = coding.get("display")
            display = display if isinstance(display, str) else None
            looks = self._looks_like(display, kinds) or text_looks
            keys.append(CodingKey(NO_VALUE_SET, resource_type, element,
                                  _string(coding.get("system")), _string(coding.get("code")),
                                  display or text, looks))
        if not keys:  # text only (or nothing): the text is what was not understood
            keys.append(CodingKey(NO_VALUE_SET, resource_type, element, None, None, text,
                                  text_looks))
        keys = list(dict.fromkeys(keys))  # each coding once per resource
        return Unmatched(tuple(keys), any(k.looks_like for k in keys),
                         recognized=self._terminology.has_relevant_code(codeable))

    def looks_like(self, text: str | None, kinds: frozenset[str] | None = None) -> str | None:
        """The concept ids (space-separated) `text` names, of the given kinds (None: any)."""
        return self._looks_like(text, kinds)

    def _looks_like(self, text: str | None, kinds: frozenset[str] | None) -> str | None:
        if not text:
            return None
        concepts = self._terminology.concepts
        found = [cid for cid in self._looks.of(text)
                 if kinds is None or concepts[cid].kind in kinds]
        return " ".join(found) if found else None


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None if value is None else _short(value)


def _short(value: Any) -> str:
    """A value of the wrong JSON type, shown as JSON (bounded)."""
    try:
        shown = orjson.dumps(value).decode()
    except TypeError:
        shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."
