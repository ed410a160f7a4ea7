"""Free text read in context (docs/clinical-basis.md, "Negation and text context"): which
concepts a text names, whose they are (the patient's, a relative's, the patient's own worry), and
how sure the text is (asserted, uncertain, unclear, or negated).

One left-to-right pass over the words, after one pass that finds phrases: the work is linear in
the text's length (each word is compared with the few phrases that start with it, of bounded
length), and a text longer than the cap in rules/text-matches.yaml is read only up to the cap.
Every cue word is content (rules/text-matches.yaml); this module holds the mechanics only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from .content_schema import TextMatches

Certainty = Literal["asserted", "uncertain", "unclear"]
Experiencer = Literal["patient", "relative", "concern"]

# Words (numbers keep their decimal point: "3.5" ends no clause), and the punctuation the cues
# and clause ends need; a dash counts only with spaces around it ("Clonus - negative").
_TOKEN = re.compile(r"\d+(?:\.\d+)+|[^\W_]+|[:,;.()?/+\n\r]|(?<=\s)[-\u2013](?=\s)")
_HARD_BREAKS = frozenset({".", ";", "\n", "\r"})
_MEMO_SIZE, _MEMO_TEXT_CHARS = 4096, 512


def tokens_of(text: str) -> list[str]:
    """The lower-cased tokens of a text (the phrase lists are tokenized the same way)."""
    return [t.lower() for t in _TOKEN.findall(text)]


class Role:
    """What a cue phrase does, as bits (a phrase may do several: "ruled out" is a pre- and a
    post-cue). Plain ints: enum.Flag arithmetic costs more than the rest of the reading."""

    NEG_PRE = 1
    NEG_POST = 2
    NEG_PRE_FALLBACK = 4  # ": no" with no term before it: the "no" negates what follows
    HEDGE_PRE = 8
    HEDGE_POST = 16
    PSEUDO = 32
    CONTRAST = 64
    ASSERT = 128
    RELATIVE = 256
    CONCERN = 512
    CONCERN_IF_SUBJECT = 1024


@dataclass(frozen=True)
class Mention:
    """One concept a text names, read in its context."""

    concept: str
    phrase: str
    certainty: Certainty
    experiencer: Experiencer
    negated: bool = False


@dataclass(frozen=True)
class Reading:
    mentions: tuple[Mention, ...]
    capped: bool
    """The text was longer than the cap; the rest was not read."""
    work: int
    """Units of work done (phrase comparisons and steps): the linearity tests count these."""
    cues: int
    """Every role of the cues the text holds (for a coded record's own text)."""

    @property
    def relative_cue(self) -> bool:
        return bool(self.cues & Role.RELATIVE)

    @property
    def doubt_cue(self) -> bool:
        doubt = Role.NEG_PRE | Role.NEG_POST | Role.HEDGE_PRE | Role.HEDGE_POST
        return bool(self.cues & doubt)


class _PhraseIndex:
    """Phrases as token sequences, indexed by their first token; each phrase has a value."""

    def __init__(self, capitals: frozenset[str]) -> None:
        self._by_first: dict[str, list[tuple[tuple[str, ...], str]]] = {}
        self._capitals = capitals

    def add(self, phrase: str, value: str) -> tuple[str, ...]:
        words = tuple(tokens_of(phrase))
        if words:
            entries = self._by_first.setdefault(words[0], [])
            if (words, value) not in entries:
                entries.append((words, value))
                entries.sort(key=lambda e: -len(e[0]))  # longest first
        return words

    def values(self) -> list[str]:
        return [value for entries in self._by_first.values() for _, value in entries]

    def at(self, low: list[str], raw: list[str], start: int,
           counter: list[int]) -> Iterator[tuple[int, str]]:
        """(end, value) of every phrase starting at `start`, longest first."""
        for words, value in self._by_first.get(low[start], ()):
            end = start + len(words)
            counter[0] += len(words)
            if tuple(low[start:end]) == words and all(
                    raw[i].isupper() for i in range(start, end) if low[i] in self._capitals):
                yield end, value


@dataclass
class _Term:
    start: int
    end: int
    concept: str
    bare: bool
    negated: bool = False
    hedged: bool = False
    relative: bool = False
    concern: bool = False
    clause: int = 0


@dataclass
class TextReader:
    """The v3 reader, built once from rules/text-matches.yaml."""

    terms: _PhraseIndex
    bare: dict[str, str]
    """phrase value key -> concept, for the bare weakness/wasting words (an unclear sign)."""
    cues: _PhraseIndex
    roles: dict[str, int]
    body_words: frozenset[str]
    bridge: frozenset[str]
    joiners: frozenset[str]
    list_joiners: frozenset[str]
    subjects: frozenset[str]
    window: int
    cap: int
    mnd_concept: str | None
    suspected_concept: str | None
    family_history_concept: str | None
    concern_concept: str | None
    term_concepts: set[str] = field(default_factory=set)
    _memo: dict[str, Reading] = field(default_factory=dict, init=False, repr=False, compare=False)
    """Readings of short texts: a population repeats the same few hundred code texts."""

    @classmethod
    def of(cls, matches: TextMatches) -> TextReader:
        capitals = frozenset(w.lower() for w in matches.capitals_only)
        terms = _PhraseIndex(capitals)
        bare: dict[str, str] = {}
        for cid, phrases in matches.text.items():
            for phrase in phrases:
                terms.add(phrase, cid)
        for cid, phrases in matches.unclear_signs.items():
            for phrase in phrases:
                key = f"bare:{cid}"
                terms.add(phrase, key)
                bare[key] = cid
        cues = _PhraseIndex(capitals)
        roles: dict[str, int] = {}
        negation, context = matches.negation, matches.text_context

        def add(phrases: Iterable[str], role: int) -> None:
            for phrase in phrases:
                key = " ".join(tokens_of(phrase))
                cues.add(phrase, key)
                roles[key] = roles.get(key, 0) | role

        window, bridge, list_joiners = 6, frozenset[str](), frozenset[str]()
        if negation is not None:
            add(negation.before, Role.NEG_PRE)
            add(negation.after, Role.NEG_POST)
            add(negation.clause_breaks, Role.CONTRAST)
            add(negation.assertion_words, Role.ASSERT)
            add(negation.pseudo, Role.PSEUDO)
            add(negation.double_negatives, Role.HEDGE_PRE | Role.HEDGE_POST)
            before = {" ".join(tokens_of(p)) for p in negation.before}
            for phrase in negation.after:
                words = tokens_of(phrase)
                if words[:1] == [":"] and " ".join(words[1:]) in before:
                    roles[" ".join(words)] |= Role.NEG_PRE_FALLBACK
            window = negation.window_words
            bridge = frozenset(w.strip().lower() for w in negation.post_cue_bridge)
            list_joiners = frozenset(w.lower() for w in negation.list_joiners)
        joiners: frozenset[str] = frozenset()
        subjects: frozenset[str] = frozenset()
        if context is not None:
            add(context.hedges_before, Role.HEDGE_PRE)
            add(context.hedges_after, Role.HEDGE_POST)
            add(context.relatives, Role.RELATIVE)
            add(context.concern_cues, Role.CONCERN)
            add(context.concern_cues_with_subject, Role.CONCERN_IF_SUBJECT)
            joiners = frozenset(w.strip().lower() for w in context.relative_joiners)
            subjects = frozenset(w.lower() for w in context.concern_subjects)
        reader = cls(
            terms=terms, bare=bare, cues=cues, roles=roles,
            body_words=frozenset(w.lower() for w in matches.body_part_words),
            bridge=bridge, joiners=joiners, list_joiners=list_joiners, subjects=subjects,
            window=window, cap=matches.max_text_chars,
            mnd_concept=context.mnd_concept if context else None,
            suspected_concept=context.suspected_concept if context else None,
            family_history_concept=context.family_history_concept if context else None,
            concern_concept=context.concern_concept if context else None)
        reader.term_concepts = {bare.get(v, v) for v in terms.values()}
        return reader

    def yields(self, concept: str, experiencer: Experiencer, *, by_text: bool,
               certainty: Certainty) -> str | None:
        """The concept a match makes, by whom it is about: a relative's ALS/MND is a family
        history, the patient's worry its own concept, any other ALS/MND from text or doubted by
        its own text a suspected MND (text never establishes a diagnosis); a relative's other
        concepts are not the patient's (None)."""
        if concept != self.mnd_concept:
            return concept if experiencer == "patient" else None
        if experiencer == "relative":
            return self.family_history_concept
        if experiencer == "concern":
            return self.concern_concept
        if by_text or certainty != "asserted":
            return self.suspected_concept
        return concept

    # --- the reading ---------------------------------------------------------------------

    def read(self, text: str) -> Reading:
        known = self._memo.get(text)
        if known is not None:
            return known
        reading = self._read(text)
        if len(text) <= _MEMO_TEXT_CHARS:
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[text] = reading
        return reading

    def _read(self, text: str) -> Reading:
        capped = len(text) > self.cap
        raw = _TOKEN.findall(text[:self.cap] if capped else text)
        low = [t.lower() for t in raw]
        counter = [len(low)]
        found = self._terms(low, raw, counter)
        cue_at = self._cues(low, raw, found, counter)
        mentions = self._walk(low, found, cue_at, counter)
        seen = 0
        for _, role in cue_at.values():
            seen |= role
        return Reading(tuple(mentions), capped, counter[0], seen)

    def mentions_any(self, text: str) -> bool:
        """Does the text name any concept at all (negated or not)? A cheap pre-check."""
        raw = _TOKEN.findall(text[:self.cap])
        low = [t.lower() for t in raw]
        counter = [0]
        return any(next(self.terms.at(low, raw, i, counter), None) is not None
                   for i in range(len(low)))

    def _terms(self, low: list[str], raw: list[str], counter: list[int]) -> list[_Term]:
        """Every term occurrence; a bare weakness/wasting word inside a longer term (a guard
        such as "nutritional wasting", or "muscle weakness") is not one of its own."""
        found: list[_Term] = []
        covered_to = 0  # the furthest end of a term seen so far
        for start in range(len(low)):
            for end, value in self.terms.at(low, raw, start, counter):
                key = self.bare.get(value)
                if key is not None and end <= covered_to:
                    continue  # inside a term found earlier (at this word or before)
                found.append(_Term(start, end, key or value, bare=key is not None))
                covered_to = max(covered_to, end)
        return found

    def _cues(self, low: list[str], raw: list[str], terms: list[_Term],
              counter: list[int]) -> dict[int, tuple[int, int]]:
        """Cues, longest first, left to right without overlap; a cue yields to a longer term
        starting at the same word ("positive babinski")."""
        longest_term: dict[int, int] = {}
        for term in terms:
            longest_term[term.start] = max(longest_term.get(term.start, 0), term.end)
        cue_at: dict[int, tuple[int, int]] = {}
        start = 0
        while start < len(low):
            hit = next(self.cues.at(low, raw, start, counter), None)
            if hit is not None and hit[0] > longest_term.get(start, 0):
                cue_at[start] = (hit[0], self.roles[hit[1]])
                start = hit[0]
            else:
                start += 1
        return cue_at

    def _walk(self, low: list[str], terms: list[_Term], cue_at: dict[int, tuple[int, int]],
              counter: list[int]) -> list[Mention]:
        n = len(low)
        word_index = [0] * (n + 1)
        words = 0
        for i, token in enumerate(low):
            words += token[0].isalnum()
            word_index[i + 1] = words
        by_end: dict[int, list[_Term]] = {}
        by_start: dict[int, list[_Term]] = {}
        for term in terms:
            by_end.setdefault(term.end, []).append(term)
            by_start.setdefault(term.start, []).append(term)
        comma_breaks = self._comma_breaks(low, terms, cue_at)
        # only these positions can change a scope or meet a term; all others are skipped
        stops = comma_breaks | cue_at.keys() | by_start.keys()
        plain = self.body_words | self.subjects | _HARD_BREAKS
        body_clauses: set[int] = set()
        clause = 0
        neg_end = hedge_end = concern_end = -1_000_000
        relative = subject = False
        bridge_start = 0  # the first token of the run of bridge words ending at this token
        for i, token in enumerate([*low, "\n"]):
            counter[0] += 1
            if i and low[i - 1] not in self.bridge:
                bridge_start = i
            if i not in stops and token not in plain:
                continue
            cue = cue_at.get(i)
            role = cue[1] if cue else 0
            if token in _HARD_BREAKS or i in comma_breaks or role & Role.CONTRAST:
                clause += 1
                neg_end = hedge_end = concern_end = -1_000_000
                relative = subject = False
            elif role & Role.ASSERT:
                neg_end = hedge_end = -1_000_000
            if token in self.body_words:
                body_clauses.add(clause)
            if token in self.subjects:
                subject = True
            if role & (Role.NEG_POST | Role.HEDGE_POST):
                # the terms directly before (only bridge words between): runs do not overlap
                before = [t for e in range(bridge_start, i + 1) for t in by_end.get(e, ())]
                counter[0] += i - bridge_start
                if role & Role.NEG_POST and before:
                    for term in before:
                        term.negated = True
                    role &= ~(Role.NEG_PRE | Role.NEG_PRE_FALLBACK)
                if role & Role.HEDGE_POST:
                    for term in before:
                        term.hedged = True
            if role & Role.RELATIVE and i > 0 and low[i - 1] in self.joiners:
                for term in by_end.get(i - 1, ()):
                    term.relative = True
            for term in by_start.get(i, ()):
                here = word_index[i]
                term.clause = clause
                term.negated |= 0 <= here - neg_end < self.window
                term.hedged |= 0 <= here - hedge_end < self.window
                term.concern = 0 <= here - concern_end < self.window
                term.relative |= relative
            if cue is None:
                continue
            end = word_index[cue[0]]
            if role & (Role.NEG_PRE | Role.NEG_PRE_FALLBACK):
                neg_end = end
            if role & Role.HEDGE_PRE:
                hedge_end = end
            if role & Role.RELATIVE:
                relative = True
            if role & Role.CONCERN or (role & Role.CONCERN_IF_SUBJECT and subject):
                concern_end = end
            elif role & Role.CONCERN_IF_SUBJECT:
                hedge_end = end
        return [self._mention(t, low, body_clauses) for t in terms]

    def _comma_breaks(self, low: list[str], terms: list[_Term],
                      cue_at: dict[int, tuple[int, int]]) -> set[int]:
        """Commas that end a clause: all but those followed, up to the next comma, clause end or
        contrast word, only by terms (joined by "or", "and", "nor")."""
        in_term = [False] * len(low)
        marked_to = 0  # terms come in start order: each word is marked once
        for term in terms:
            for i in range(max(term.start, marked_to), term.end):
                in_term[i] = True
            marked_to = max(marked_to, term.end)
        breaks: set[int] = set()
        comma = -1
        only_terms = saw_term = False
        for i in range(len(low) + 1):
            token = low[i] if i < len(low) else "\n"
            cue = cue_at.get(i)
            ends = (token == "," or token in _HARD_BREAKS
                    or (cue is not None and bool(cue[1] & Role.CONTRAST)))
            if ends:
                if comma >= 0 and not (only_terms and saw_term):
                    breaks.add(comma)
                comma = i if token == "," else -1
                only_terms, saw_term = True, False
                continue
            if in_term[i]:
                saw_term = True
            elif token not in self.list_joiners:
                only_terms = False
        return breaks

    def _mention(self, term: _Term, low: list[str], body_clauses: set[int]) -> Mention:
        phrase = " ".join(low[term.start:term.end])
        experiencer: Experiencer = "patient"
        if term.relative:
            experiencer = "relative"
        elif term.concern and term.concept == self.mnd_concept:
            experiencer = "concern"
        uncertain = term.hedged or (term.concern and experiencer != "concern")
        certainty: Certainty = "uncertain" if uncertain else "asserted"
        if term.bare and term.clause not in body_clauses:
            certainty = "unclear"
        # hedged or double-negated negation leaves the term asserted-but-uncertain
        negated = term.negated and not uncertain
        return Mention(term.concept, phrase, certainty, experiencer, negated)


def merge(mentions: Iterable[Mention]) -> dict[tuple[str, Experiencer], Certainty]:
    """One certainty per (concept, experiencer): a concept both negated and asserted in the same
    text is uncertain; an uncertain mention beats an asserted one (it counts, and says more);
    either beats an unclear one (which does not count as the sign). Negated-only: absent."""
    negated: set[tuple[str, Experiencer]] = set()
    kept: dict[tuple[str, Experiencer], Certainty] = {}
    rank = {"unclear": 0, "asserted": 1, "uncertain": 2}
    for mention in mentions:
        key = (mention.concept, mention.experiencer)
        if mention.negated:
            negated.add(key)
        elif key not in kept or rank[mention.certainty] > rank[kept[key]]:
            kept[key] = mention.certainty
    for key in negated & kept.keys():
        if kept[key] == "asserted":
            kept[key] = "uncertain"
    return kept


@dataclass(frozen=True)
class SignValues:
    """What the words of a sign Observation's value say (docs/clinical-basis.md, "Negation
    and text context", sign values)."""

    words: _PhraseIndex

    @classmethod
    def of(cls, matches: TextMatches) -> SignValues | None:
        values = matches.observation_values
        if values is None:
            return None
        words = _PhraseIndex(frozenset())
        for word in values.negative:
            words.add(word, "absent")
        for word in values.positive:
            words.add(word, "present")
        return cls(words)

    def meaning(self, pieces: Iterable[str], cap: int) -> str:
        """"present", "absent", "uncertain" (both kinds of word) or "unclear" (neither); the
        words match longest first ("not present" is one negative word)."""
        text = " | ".join(pieces)[:cap]
        raw = _TOKEN.findall(text)
        low = [t.lower() for t in raw]
        counter = [0]
        said: set[str] = set()
        start = 0
        while start < len(low):
            hit = next(self.words.at(low, raw, start, counter), None)
            if hit is None:
                start += 1
                continue
            said.add(hit[1])
            start = hit[0]
        if said == {"absent", "present"}:
            return "uncertain"
        return said.pop() if said else "unclear"
