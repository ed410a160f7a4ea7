"""Codes to concepts, through the value sets in rules/valuesets.

The rule layer speaks of concepts ("magnesium", "loop-diuretic"); this module is the only place
that knows about code systems, ICD dots, prefixes, text matches and the RxNorm ingredient fallback.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .content_schema import DerivedConcept, SystemSpec, TextMatches, ValueSets
from .text_context import Certainty, Experiencer, Reading, SignValues, TextReader, merge

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


@dataclass(frozen=True)
class ReadMatch:
    """A concept a Condition's or Observation's code names, read with its text: whose it is,
    how sure, and the words it came from (docs/clinical-basis.md, "Negation and text context")."""

    match: ConceptMatch
    certainty: Certainty = "asserted"
    experiencer: Experiencer = "patient"
    quote: str | None = None
    """The record's own text the match or its context came from."""


@dataclass(frozen=True)
class CodeableReading:
    matches: tuple[ReadMatch, ...]
    capped: bool = False
    """A text was longer than the cap: the rest of it was not read."""
    negated: tuple[ReadMatch, ...] = ()
    """Concepts the text only negates (the patient's): an Observation whose value then says
    present contradicts its text, and counts as uncertain."""


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
    _ingredients: Phrases = field(default_factory=lambda: Phrases(()))
    reader: TextReader | None = None
    _values: SignValues | None = None
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
        term.reader = TextReader.of(text_matches)
        term._values = SignValues.of(text_matches)
        unknown_drugs = [c for c in text_matches.medication_names
                         if c not in concepts or concepts[c].kind != "medication"]
        if unknown_drugs:
            raise ValueError("text-matches.yaml medication_names names unknown medication "
                             f"concepts: {sorted(unknown_drugs)}")
        for cid, rule in text_matches.body_site.items():
            words = tuple(w.lower() for w in rule.site_words)
            term.body_site_rules.append((rule.when_concept, words, cid))
        unknown = [c for c in term.reader.term_concepts if c not in concepts]
        context = text_matches.text_context
        if context is not None:
            unknown += [c for c in (context.mnd_concept, context.suspected_concept,
                                    context.family_history_concept, context.concern_concept)
                        if c not in concepts]
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
        by_text = self.reader.term_concepts if self.reader else set()
        return frozenset([*by_text, *by_prefix])

    def codes_of(self, concepts: Iterable[str]) -> list[tuple[str, str]]:
        """(system uri, code) pairs that map to any of the concepts (for prefetch queries)."""
        wanted = set(concepts)
        pairs = []
        for (sys_key, code), cids in self._codes.items():
            if wanted.intersection(cids):
                pairs.append((self.system_uri(sys_key), code))
        return sorted(pairs)

    def match_codeable(self, codeable: Mapping[str, Any] | None) -> list[ConceptMatch]:
        """Concepts a CodeableConcept codes for the patient: by code, then ICD prefix, then its
        own words (not negated, not a relative's or a worry; `read_codeable` says more).

        The RxNorm ingredient-name fallback is separate (``match_ingredient_name``): it is a last
        resort the caller applies to medications only.
        """
        return [r.match for r in self.read_codeable(codeable).matches
                if r.experiencer == "patient"]

    def read_codeable(self, codeable: Mapping[str, Any] | None) -> CodeableReading:
        """Concepts by code or prefix, with the context their own `text` gives; else the
        concepts the text and displays name, each read in context (docs/clinical-basis.md,
        "Negation and text context")."""
        if not codeable:
            return CodeableReading(())
        found: dict[str, ConceptMatch] = {}
        for system, _, code, norm in self._known_codings(codeable):
            for cid in self._codes.get((system.key, norm), ()):
                found.setdefault(cid, ConceptMatch(cid, MATCHED_BY_CODE, code, system.uri))
            for prefix, cid in self._prefixes.get(system.key, ()):
                if norm.startswith(prefix):
                    found.setdefault(cid, ConceptMatch(cid, MATCHED_BY_PREFIX, code, system.uri))
        reader = self.reader
        if found:
            coded = sorted(found.values(), key=lambda m: m.concept)
            text = codeable.get("text")
            if reader is None or not isinstance(text, str) or not text.strip():
                return CodeableReading(tuple(ReadMatch(m) for m in coded))
            reading = reader.read(text)
            return CodeableReading(tuple(_own_text(m, reading, text) for m in coded),
                                   reading.capped)
        if reader is None:
            return CodeableReading(())
        read: dict[tuple[str, Experiencer], ReadMatch] = {}
        negated: dict[str, ReadMatch] = {}
        capped = False
        for piece in _text_pieces(codeable):
            reading = reader.read(piece)
            capped |= reading.capped
            for mention in reading.mentions:
                if mention.negated and mention.experiencer == "patient":
                    negated.setdefault(mention.concept, ReadMatch(
                        ConceptMatch(mention.concept, MATCHED_BY_TEXT), "uncertain", quote=piece))
            for (cid, who), certainty in merge(reading.mentions).items():
                known = read.get((cid, who))
                if known is None or _RANK[certainty] > _RANK[known.certainty]:
                    read[(cid, who)] = ReadMatch(ConceptMatch(cid, MATCHED_BY_TEXT), certainty,
                                                 who, piece)
        only_negated = [r for cid, r in sorted(negated.items()) if (cid, "patient") not in read]
        return CodeableReading(tuple(sorted(read.values(), key=lambda r: (
            r.match.concept, r.experiencer))), capped, tuple(only_negated))

    def sign_value(self, pieces: Iterable[str]) -> str:
        """What the words of a sign Observation's value say: "present", "absent", "uncertain"
        (both kinds of word) or "unclear" (neither)."""
        if self._values is None:
            return "unclear"
        cap = self.reader.cap if self.reader else 20_000
        return self._values.meaning(pieces, cap)

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
        pieces = _text_pieces(codeable)
        if self.reader is not None and any(self.reader.mentions_any(p) for p in pieces):
            # anything the text gives: a concept, a relative's ALS, a worry, an unclear sign, or
            # a negated sign (which a value saying present would contradict)
            reading = self.read_codeable(codeable)
            return bool(reading.matches or reading.negated)
        # a text-only medication (names are matched without negation)
        return self._ingredients.mentioned_in(_tokens(" | ".join(pieces).lower()))


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


def _label_names(label: str) -> list[str]:
    """The names in a medication label: "Albuterol (salbutamol)" -> albuterol, salbutamol."""
    return [part.strip() for part in re.split(r"[()/,;]", label) if part.strip()]


def _text_pieces(codeable: Mapping[str, Any]) -> list[str]:
    pieces = [str(codeable.get("text") or "")]
    for coding in codings_of(codeable):
        if isinstance(coding, Mapping):
            pieces.append(str(coding.get("display") or ""))
    return [p for p in pieces if p]


_RANK = {"unclear": 0, "asserted": 1, "uncertain": 2}


def _own_text(match: ConceptMatch, reading: Reading, text: str) -> ReadMatch:
    """A coded concept in the light of its own text: a relative's when the text says so; the
    patient's worry likewise; uncertain when the text hedges or negates it (it still counts)."""
    own = [m for m in reading.mentions if m.concept == match.concept]
    if any(m.experiencer == "relative" for m in own) or (not own and reading.relative_cue):
        return ReadMatch(match, "asserted", "relative", text)
    if own and all(m.experiencer == "concern" for m in own):
        return ReadMatch(match, "asserted", "concern", text)
    doubted = any(m.negated or m.certainty == "uncertain" for m in own) or (
        not own and reading.doubt_cue)
    if doubted:
        return ReadMatch(match, "uncertain", "patient", text)
    return ReadMatch(match)
