"""Records that name several concepts at once (R25.2 "Cramp and spasm"): their facts keep the
concepts but leave the groups derived.yaml `named_together` names (docs/clinical-basis.md, v3
"Cramp and spasm": for the dopamine-antagonist presentations such a record counts as neither)."""

from __future__ import annotations

from collections import defaultdict

from .common import Content
from .conditions import Coded


def without_ambiguous_groups(content: Content, coded: list[Coded]) -> list[Coded]:
    """`coded` with the groups removed from facts of a resource that names every concept of a
    `named_together` entry (one code, or one text, for both)."""
    rules = content.ruleset.derived.named_together
    if not rules:
        return coded
    concepts_of: dict[str, set[str]] = defaultdict(set)
    for fact in coded:
        concepts_of[fact.reference].add(fact.concept)
    out: list[Coded] = []
    for fact in coded:
        drop = {group for rule in rules if fact.concept in rule.concepts
                and set(rule.concepts) <= concepts_of[fact.reference]
                for group in rule.not_in_groups}
        if drop & set(fact.groups):
            fact = fact.model_copy(update={"groups": tuple(g for g in fact.groups
                                                           if g not in drop)})
        out.append(fact)
    return out
