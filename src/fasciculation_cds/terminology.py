"""Codes to concepts, through the value sets in rules/valuesets.

The rule layer speaks of concepts ("magnesium", "loop-diuretic"); this module is the only place
that knows about code systems, ICD dots, prefixes, text matches and the RxNorm ingredient fallback.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .content_schema import DerivedConcept, NegationCues, SystemSpec, TextMatches, ValueSets

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



def codings_of(codeable: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The codings of a CodeableConcept; anything else under `coding` (a number, a string, a
    list of non-objects: bad input) holds none."""
    found = codeable.get("coding")
    return [c for c in found if isinstance(c, Mapping)] if isinstance(found, list) else []

@dataclass
class Terminology:
    concepts: dict[str, Concept]
    classes: dict[str, tuple[str, ...]]
    groups: dict[str, tuple[str, ...]]
    _systems_by_uri: dict[str, _System] = field(default_factory=dict)
    _codes: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    _prefixes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    _text: Phrases = field(default_factory=lambda: Phrases(()))
    _ingredients: Phrases = field(default_factory=lambda: Phrases(()))
    _negation: Negation | None = None
    _value_words: tuple[Phrases, Phrases] | None = None
    body_site_rules: list[tuple[str, tuple[str, ...], str]] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        codes: ValueSets,
        systems: Mapping[str, SystemSpec],
        text_matches: TextMatches,
        derived: Mapping[str, DerivedConcept] | None = None,
    ) -> Terminology:
        """`derived`: concepts normalization makes (derived.yaml), added with their groups."""
        derived = derived or {}
        class_members: dict[str, tuple[str, ...]] = {
            name: tuple(members) for name, members in codes.classes.items()
        }
        group_members: dict[str, tuple[str, ...]] = {
            name: tuple(members) for name, members in codes.groups.items()
        }
        for cid, extra in derived.items():
            if cid in codes.concepts:
                raise ValueError(f"derived.yaml concept {cid!r} is also in codes.yaml")
            for group in extra.groups:
                group_members[group] = (*group_members.get(group, ()), cid)
        concepts: dict[str, Concept] = {}
        for cid, spec in codes.concepts.items():
            concepts[cid] = Concept(
                id=cid,
                kind=spec.kind,
                label=spec.label,
                classes=tuple(sorted(n for n, m in class_members.items() if cid in m)),
                groups=tuple(sorted(n for n, m in group_members.items() if cid in m)),
            )
        for cid, derived_spec in derived.items():
            concepts[cid] = Concept(id=cid, kind=derived_spec.kind, label=derived_spec.label,
                                    groups=tuple(sorted(derived_spec.groups)))
        for kind, named in (("class", class_members), ("group", group_members)):
            for name, listed in named.items():
                unknown = sorted(set(listed) - set(concepts))
                if unknown:
                    raise ValueError(
                        f"codes.yaml {kind} {name!r} names unknown concepts: {unknown}")
        term = cls(concepts=concepts, classes=class_members, groups=group_members)
        for sys_name, system_spec in systems.items():
            system = _System(
                key=sys_name,
                uri=system_spec.uri,
                dotless=system_spec.dotless,
                ingredient_fallback=system_spec.ingredient_fallback,
            )
            for uri in [system_spec.uri, *system_spec.aliases]:
                term._systems_by_uri[uri.rstrip("/")] = system
        codes_index: dict[tuple[str, str], list[str]] = {}
        drug_names: list[tuple[str, str]] = []
        for cid, spec in codes.concepts.items():
            for coding in spec.codings:
                found = term._systems_by_uri.get(coding.system.rstrip("/"))
                if found is None:
                    continue
                coded = codes_index.setdefault((found.key, term._norm(found, coding.code)), [])
                if cid not in coded:
                    coded.append(cid)
            for sys_key, prefixes in (spec.match_prefixes or {}).items():
                by_key = next((s for s in term._systems_by_uri.values() if s.key == sys_key), None)
                if by_key is None:
                    continue
                for prefix in prefixes:
                    term._prefixes.setdefault(sys_key, []).append((term._norm(by_key, prefix), cid))
            if spec.kind == "medication":
                names = [cid.replace("-", " "), *_label_names(spec.label),
                         *text_matches.medication_names.get(cid, [])]
                drug_names += [(name, cid) for name in names]
        term._ingredients = Phrases(drug_names)
        term._codes = {k: tuple(v) for k, v in codes_index.items()}
        term._text = Phrases((phrase, cid) for cid, phrases in text_matches.text.items()
                             for phrase in phrases)
        if text_matches.negation is not None:
            term._negation = Negation.of(text_matches.negation)
        if text_matches.observation_values is not None:
            values = text_matches.observation_values
            term._value_words = (Phrases((w, "absent") for w in values.negative),
                                 Phrases((w, "present") for w in values.positive))
        unknown_drugs = [c for c in text_matches.medication_names
                         if c not in concepts or concepts[c].kind != "medication"]
        if unknown_drugs:
            raise ValueError("text-matches.yaml medication_names names unknown medication "
                             f"concepts: {sorted(unknown_drugs)}")
        for cid, rule in text_matches.body_site.items():
            words = tuple(w.lower() for w in rule.site_words)
            term.body_site_rules.append((rule.when_concept, words, cid))
        unknown = [c for c in term._text.values() if c not in concepts]
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

    def matched_beyond_codes(self) -> frozenset[str]:
        """Concepts recognised otherwise than by an exact code: by the record's own words, or by
        a code prefix. A search by code alone would miss their records."""
        by_prefix = (c for found in self._prefixes.values() for _, c in found)
        return frozenset([*self._text.values(), *by_prefix])

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
            for cid in self.text_concepts(_text_pieces(codeable)):
                found.setdefault(cid, ConceptMatch(cid, MATCHED_BY_TEXT))
        return sorted(found.values(), key=lambda m: m.concept)

    def text_concepts(self, pieces: Iterable[str]) -> set[str]:
        """Concepts the texts name (text-matches.yaml), as whole words, and not negated."""
        found: set[str] = set()
        for piece in pieces:
            lowered = piece.lower()
            if not self._text.mentioned_in(_tokens(lowered)):
                continue
            for clause in self._clauses(lowered):
                tokens = _tokens(clause)
                for start, end, cid in self._text.find(tokens):
                    if cid not in found and not self._negated(tokens, start, end):
                        found.add(cid)
        return found

    def _clauses(self, text: str) -> list[str]:
        if self._negation is None:
            return [text]
        return self._negation.clause_break.split(text)

    def _negated(self, tokens: list[str], start: int, end: int) -> bool:
        negation = self._negation
        if negation is None:
            return False
        return (negation.before.mentioned_in(tokens[:start])
                or negation.after.mentioned_in(tokens[end:]))

    def value_meaning(self, pieces: Iterable[str]) -> str | None:
        """"absent" or "present" for the words of an Observation value; None when unclear.
        Negative words win ("not present")."""
        if self._value_words is None:
            return None
        negative, positive = self._value_words
        tokens = _tokens(" | ".join(pieces).lower())
        if negative.mentioned_in(tokens):
            return "absent"
        if positive.mentioned_in(tokens):
            return "present"
        return None

    def match_medication_text(self, codeable: Mapping[str, Any] | None) -> list[ConceptMatch]:
        """Text-only medications: ingredient names (and their variants) in the element's text
        and in the displays of codings outside RxNorm."""
        if not codeable:
            return []
        pieces = [str(codeable.get("text") or "")]
        for coding in codings_of(codeable):
            if not isinstance(coding, Mapping):
                continue
            system = self._systems_by_uri.get(str(coding.get("system") or "").rstrip("/"))
            if system is None or not system.ingredient_fallback:
                pieces.append(str(coding.get("display") or ""))
        tokens = _tokens(" | ".join(pieces).lower())
        found = {cid for _, _, cid in self._ingredients.find(tokens)}
        return [ConceptMatch(cid, MATCHED_BY_TEXT) for cid in sorted(found)]

    def _known_codings(
        self, codeable: Mapping[str, Any]
    ) -> Iterator[tuple[_System, Mapping[str, Any], str, str]]:
        """(system, coding, code, normalized code) for each coding in a known code system."""
        for coding in codings_of(codeable):
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
        for coding in codings_of(codeable):
            if not isinstance(coding, Mapping):
                continue
            system = self._systems_by_uri.get(str(coding.get("system") or "").rstrip("/"))
            if system is None or not system.ingredient_fallback:
                continue
            tokens = _tokens(str(coding.get("display") or "").lower())
            for _, _, cid in self._ingredients.find(tokens):
                found.setdefault(cid, ConceptMatch(cid, MATCHED_BY_INGREDIENT_NAME,
                                                   coding.get("code"), system.uri))
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
            if system.ingredient_fallback and self._ingredients.mentioned_in(
                    _tokens(str(coding.get("display") or "").lower())):
                return bool(self.match_ingredient_name(codeable))
        tokens = _tokens(" | ".join(_text_pieces(codeable)).lower())
        if self._text.mentioned_in(tokens):
            return bool(self.match_codeable(codeable))
        # a text-only medication (names are matched without negation)
        return self._ingredients.mentioned_in(tokens)


# Words, plus ':' (negation cues such as "clonus: no" need it).
_TOKEN = re.compile(r"[a-z0-9]+|:")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


class Phrases:
    """Phrases as whole-word token sequences, indexed by their first word (fast to test)."""

    def __init__(self, phrases: Iterable[tuple[str, str]]) -> None:
        self._by_first: dict[str, list[tuple[tuple[str, ...], str]]] = {}
        for phrase, value in phrases:
            words = tuple(_tokens(phrase.lower()))
            entries = self._by_first.setdefault(words[0], []) if words else []
            if words and (words, value) not in entries:
                entries.append((words, value))

    def values(self) -> list[str]:
        return [value for entries in self._by_first.values() for _, value in entries]

    def mentioned_in(self, tokens: list[str]) -> bool:
        """Does any phrase occur in the tokens (negation aside)?"""
        return next(self.find(tokens), None) is not None

    def find(self, tokens: list[str]) -> Iterator[tuple[int, int, str]]:
        """(start, end, value) of every phrase occurrence in the tokens."""
        for start, token in enumerate(tokens):
            for words, value in self._by_first.get(token, ()):
                end = start + len(words)
                if tuple(tokens[start:end]) == words:
                    yield start, end, value


@dataclass(frozen=True)
class Negation:
    """Negation cues (text-matches.yaml `negation`): phrases, and what ends a clause."""

    before: Phrases
    after: Phrases
    clause_break: re.Pattern[str]

    @classmethod
    def of(cls, cues: NegationCues) -> Negation:
        words = "|".join(re.escape(w.lower()) for w in cues.clause_breaks)
        return cls(
            before=Phrases((c, "cue") for c in cues.before),
            after=Phrases((c, "cue") for c in cues.after),
            clause_break=re.compile(rf"[.;\n\r]|(?<![a-z0-9])(?:{words})(?![a-z0-9])"),
        )


def _label_names(label: str) -> list[str]:
    """The names in a medication label: "Albuterol (salbutamol)" -> albuterol, salbutamol."""
    return [part.strip() for part in re.split(r"[()/,;]", label) if part.strip()]


def _text_pieces(codeable: Mapping[str, Any]) -> list[str]:
    pieces = [str(codeable.get("text") or "")]
    for coding in codings_of(codeable):
        if isinstance(coding, Mapping):
            pieces.append(str(coding.get("display") or ""))
    return [p for p in pieces if p]
