"""Codes to concepts, through the value sets in rules/valuesets.

The rule layer speaks of concepts ("magnesium", "loop-diuretic"); this module is the only place
that knows about code systems, ICD dots, prefixes, text matches and the RxNorm ingredient fallback.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

_WORD = re.compile(r"[a-z0-9]+")

# How a coded element reached its concept, strongest first; reported with the evidence.
MATCHED_BY_CODE = "code"
MATCHED_BY_PREFIX = "code-prefix"
MATCHED_BY_TEXT = "text"
MATCHED_BY_INGREDIENT_NAME = "ingredient-name-fallback"


@dataclass(frozen=True)
class Concept:
    id: str
    kind: str
    label: str
    classes: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConceptMatch:
    concept: str
    matched_by: str
    code: str | None = None
    system: str | None = None


@dataclass
class _System:
    key: str
    uri: str
    dotless: bool = False
    ingredient_fallback: bool = False


@dataclass
class Terminology:
    concepts: dict[str, Concept]
    classes: dict[str, tuple[str, ...]]
    groups: dict[str, tuple[str, ...]]
    _systems_by_uri: dict[str, _System] = field(default_factory=dict)
    _codes: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    _prefixes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    _text: list[tuple[tuple[str, ...], str]] = field(default_factory=list)
    _ingredients: list[tuple[tuple[str, ...], str]] = field(default_factory=list)
    body_site_rules: list[tuple[str, tuple[str, ...], str]] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        codes: Mapping[str, Any],
        systems: Mapping[str, Any],
        text_matches: Mapping[str, Any],
    ) -> Terminology:
        class_members: dict[str, tuple[str, ...]] = {
            name: tuple(members) for name, members in (codes.get("classes") or {}).items()
        }
        group_members: dict[str, tuple[str, ...]] = {
            name: tuple(members) for name, members in (codes.get("groups") or {}).items()
        }
        concepts: dict[str, Concept] = {}
        for cid, spec in codes["concepts"].items():
            concepts[cid] = Concept(
                id=cid,
                kind=str(spec["kind"]),
                label=str(spec["label"]),
                classes=tuple(sorted(n for n, m in class_members.items() if cid in m)),
                groups=tuple(sorted(n for n, m in group_members.items() if cid in m)),
            )
        term = cls(concepts=concepts, classes=class_members, groups=group_members)
        for sys_name, spec in systems.items():
            system = _System(
                key=sys_name,
                uri=spec["uri"],
                dotless=bool(spec.get("dotless")),
                ingredient_fallback=bool(spec.get("ingredient_fallback")),
            )
            for uri in [spec["uri"], *spec.get("aliases", [])]:
                term._systems_by_uri[uri.rstrip("/")] = system
        codes_index: dict[tuple[str, str], list[str]] = {}
        for cid, spec in codes["concepts"].items():
            for coding in spec.get("codings") or []:
                found = term._systems_by_uri.get(str(coding["system"]).rstrip("/"))
                if found is None:
                    continue
                members = codes_index.setdefault(
                    (found.key, term._norm(found, str(coding["code"]))), [])
                if cid not in members:
                    members.append(cid)
            for sys_key, prefixes in (spec.get("match_prefixes") or {}).items():
                by_key = next((s for s in term._systems_by_uri.values() if s.key == sys_key), None)
                if by_key is None:
                    continue
                for prefix in prefixes:
                    term._prefixes.setdefault(sys_key, []).append(
                        (term._norm(by_key, str(prefix)), cid))
            if spec["kind"] == "medication":
                term._ingredients.append((tuple(_WORD.findall(cid.replace("-", " "))), cid))
        term._codes = {k: tuple(v) for k, v in codes_index.items()}
        for cid, phrases in (text_matches.get("text") or {}).items():
            for phrase in phrases:
                term._text.append((tuple(_WORD.findall(phrase.lower())), cid))
        for cid, spec in (text_matches.get("body_site") or {}).items():
            words = tuple(w.lower() for w in spec["site_words"])
            term.body_site_rules.append((str(spec["when_concept"]), words, cid))
        unknown = [c for _, c in term._text if c not in concepts]
        unknown += [c for _, _, c in term.body_site_rules if c not in concepts]
        if unknown:
            raise ValueError(f"text-matches.yaml names unknown concepts: {sorted(set(unknown))}")
        return term

    @staticmethod
    def _norm(system: _System, code: str) -> str:
        code = code.strip()
        return code.replace(".", "").upper() if system.dotless else code

    def system_uri(self, key: str) -> str:
        for system in self._systems_by_uri.values():
            if system.key == key:
                return system.uri
        raise KeyError(key)

    def codes_of(self, concepts: Iterable[str]) -> list[tuple[str, str]]:
        """(system uri, code) pairs that map to any of the concepts (for prefetch queries)."""
        wanted = set(concepts)
        pairs = []
        for (sys_key, code), cids in self._codes.items():
            if wanted.intersection(cids):
                pairs.append((self.system_uri(sys_key), code))
        return sorted(pairs)

    def match_codeable(self, codeable: Mapping[str, Any] | None) -> list[ConceptMatch]:
        """Concepts a CodeableConcept codes: by code, then ICD prefix, then its own words.

        The RxNorm ingredient-name fallback is separate (``match_ingredient_name``): it is a last
        resort the caller applies to medications only.
        """
        if not codeable:
            return []
        found: dict[str, ConceptMatch] = {}
        for system, _, code, norm in self._known_codings(codeable):
            for cid in self._codes.get((system.key, norm), ()):
                found.setdefault(cid, ConceptMatch(cid, MATCHED_BY_CODE, code, system.uri))
            for prefix, cid in self._prefixes.get(system.key, ()):
                if norm.startswith(prefix):
                    found.setdefault(cid, ConceptMatch(cid, MATCHED_BY_PREFIX, code, system.uri))
        if not found:
            words = set(_WORD.findall(_texts_of(codeable)))
            if words:
                text = " ".join(_WORD.findall(_texts_of(codeable)))
                for phrase, cid in self._text:
                    if _contains_phrase(text, phrase):
                        found.setdefault(cid, ConceptMatch(cid, MATCHED_BY_TEXT))
        return sorted(found.values(), key=lambda m: m.concept)

    def _known_codings(
        self, codeable: Mapping[str, Any]
    ) -> Iterator[tuple[_System, Mapping[str, Any], str, str]]:
        """(system, coding, code, normalized code) for each coding in a known code system."""
        for coding in codeable.get("coding") or []:
            if not isinstance(coding, Mapping):
                continue
            system = self._systems_by_uri.get(str(coding.get("system") or "").rstrip("/"))
            code = coding.get("code")
            if system is not None and isinstance(code, str):
                yield system, coding, code, self._norm(system, code)

    def match_ingredient_name(self, codeable: Mapping[str, Any] | None) -> list[ConceptMatch]:
        """Ingredients named in the display of RxNorm codings that no value set lists."""
        if not codeable:
            return []
        found: dict[str, ConceptMatch] = {}
        for coding in codeable.get("coding") or []:
            if not isinstance(coding, Mapping):
                continue
            system = self._systems_by_uri.get(str(coding.get("system") or "").rstrip("/"))
            if system is None or not system.ingredient_fallback:
                continue
            text = " ".join(_WORD.findall(str(coding.get("display") or "").lower()))
            for words, cid in self._ingredients:
                if _contains_phrase(text, words):
                    found.setdefault(
                        cid,
                        ConceptMatch(
                            cid, MATCHED_BY_INGREDIENT_NAME, coding.get("code"), system.uri
                        ),
                    )
        return sorted(found.values(), key=lambda m: m.concept)

    def has_relevant_code(self, codeable: Mapping[str, Any] | None) -> bool:
        """Cheap test on raw JSON: could this CodeableConcept map to any concept?

        Runs on every resource of the input, so it only does dictionary look-ups and, for the
        text and ingredient fallbacks, a substring pre-check before any word matching.
        """
        if not codeable:
            return False
        for system, coding, _, norm in self._known_codings(codeable):
            if (system.key, norm) in self._codes:
                return True
            if any(norm.startswith(p) for p, _ in self._prefixes.get(system.key, ())):
                return True
            if system.ingredient_fallback and self._mentions(
                    str(coding.get("display") or ""), self._ingredient_words):
                return bool(self.match_ingredient_name(codeable))
        if self._mentions(_texts_of(codeable), self._text_words):
            return bool(self.match_codeable(codeable))
        return False

    @staticmethod
    def _mentions(text: str, words: frozenset[str]) -> bool:
        lowered = text.lower()
        return any(word in lowered for word in words)

    @functools.cached_property
    def _text_words(self) -> frozenset[str]:
        return frozenset(phrase[0] for phrase, _ in self._text if phrase)

    @functools.cached_property
    def _ingredient_words(self) -> frozenset[str]:
        return frozenset(words[0] for words, _ in self._ingredients if words)


def _texts_of(codeable: Mapping[str, Any]) -> str:
    parts = [str(codeable.get("text") or "")]
    for coding in codeable.get("coding") or []:
        if isinstance(coding, Mapping):
            parts.append(str(coding.get("display") or ""))
    return " | ".join(parts).lower()


def _contains_phrase(text: str, phrase: tuple[str, ...]) -> bool:
    needle = " ".join(phrase)
    return bool(needle) and f" {needle} " in f" {text} "
