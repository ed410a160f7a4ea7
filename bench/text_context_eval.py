"""Reading free text: the package's own reader against medspaCy's ConText, on the phrase table
of tests/data/text-context-cases.yaml and on the record texts of the test data (tests/data, or
the fuller corpus FASCICULATION_CDS_SHARED_DATA names).

    # the package's reader (project venv)
    PYTHONPATH=src .venv/bin/python bench/text_context_eval.py own
    # medspaCy, in a scratch venv of its own (not a dependency of the package)
    python3.11 -m venv medspacy-venv && medspacy-venv/bin/pip install medspacy pyyaml
    medspacy-venv/bin/python bench/text_context_eval.py medspacy

medspaCy is scored twice: with its bundled ConText rules, and with the cue lists of
rules/text-matches.yaml turned into ConText rules. Its entity attributes (negated, uncertain,
family, hypothetical) become facts by the mapping the package uses (docs/clinical-basis.md: a
relative's ALS is a family history, a worry its own concept, any other ALS from text a suspected
MND, a bare weakness/wasting word without a body part in its sentence unclear). Both print one
JSON line.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CASES = yaml.safe_load((ROOT / "tests/data/text-context-cases.yaml").read_text())
MATCHES = yaml.safe_load((ROOT / "rules/text-matches.yaml").read_text())
DATA = Path(os.environ.get("FASCICULATION_CDS_SHARED_DATA") or ROOT / "tests" / "data")


def record_texts() -> list[str]:
    """Every Condition/Observation/FamilyMemberHistory code.text and coding display in the
    shared data, as often as it occurs (the load the reader meets)."""
    texts: list[str] = []
    for path in sorted(DATA.rglob("*")):
        if path.suffix not in (".json", ".ndjson", ".gz") or not path.is_file():
            continue
        for resource in _resources(path):
            if resource.get("resourceType") not in ("Condition", "Observation"):
                continue
            code = resource.get("code")
            if not isinstance(code, dict):
                continue
            if isinstance(code.get("text"), str):
                texts.append(code["text"])
            for coding in code.get("coding") or []:
                if isinstance(coding, dict) and isinstance(coding.get("display"), str):
                    texts.append(coding["display"])
    return texts


def _resources(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:  # type: ignore[operator]
            raw = handle.read()
    except (OSError, UnicodeDecodeError):
        return
    docs: list[Any] = []
    try:
        docs = [json.loads(raw)]
    except ValueError:
        for line in raw.splitlines():
            try:
                docs.append(json.loads(line))
            except ValueError:
                continue
    stack = docs
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "resourceType" in item:
                yield item
            for entry in item.get("entry") or []:
                if isinstance(entry, dict):
                    stack.append(entry.get("resource"))
        elif isinstance(item, list):
            stack.extend(item)


def score(predict: Any) -> dict[str, Any]:
    """Cases whose predicted facts equal the table's, and the texts that differ."""
    wrong = []
    for case in CASES["conditions"]:
        got = predict(case["text"])
        if got != case["facts"]:
            wrong.append({"text": case["text"], "expected": case["facts"], "got": got})
    total = len(CASES["conditions"])
    return {"cases": total, "correct": total - len(wrong), "wrong": wrong}


def timing(read: Any, texts: list[str]) -> dict[str, Any]:
    """Every tenth record text (the shared CPU is not for long runs), then one cue-dense note
    at 2, 8 and 32 thousand characters: linear work grows 4 times per step."""
    sample = texts[::10]
    start = time.perf_counter()
    for text in sample:
        read(text)
    seconds = time.perf_counter() - start
    unit = ("Denies dysphagia, slurred speech on examination; no weakness, wasting or tongue "
            "fasciculation. Mother has ALS. ")
    scaling = {}
    for size in (2_000, 8_000, 32_000):
        note = unit * (size // len(unit))
        begin = time.perf_counter()
        read(note)
        scaling[str(size)] = round(time.perf_counter() - begin, 4)
    return {"texts": len(sample), "chars": sum(len(t) for t in sample),
            "seconds": round(seconds, 3), "ms_per_text": round(1000 * seconds / len(sample), 3),
            "note_seconds_by_chars": scaling}


# --- the package's own reader -------------------------------------------------------------


def own() -> dict[str, Any]:
    import dataclasses
    from datetime import datetime, timezone

    from fasciculation_cds.evaluate import ingest
    from fasciculation_cds.normalize import Normalizer
    from fasciculation_cds.ruleset import load_rules

    rules = load_rules(ROOT / "rules")
    normalizer = Normalizer(rules)
    as_of = datetime(2026, 6, 1, tzinfo=timezone.utc)

    def predict(text: str) -> dict[str, str]:
        resources = [{"resourceType": "Patient", "id": "p"}, {
            "resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/p"},
            "clinicalStatus": {"coding": [{"code": "active"}]}, "code": {"text": text},
            "onsetDateTime": "2026-05-01"}]
        (record,) = ingest(resources, rules).patients
        facts = normalizer.run(record, as_of, assume_presentation=False).facts
        return {f.concept: f.certainty for f in facts  # type: ignore[union-attr]
                if f.kind in ("problem", "finding")}

    reader = rules.terminology.reader
    assert reader is not None
    uncapped = dataclasses.replace(reader, cap=10**9)
    # timed without the reader's memo of short texts, as medspaCy has none
    return {"engine": "own", **score(predict),
            "timing": timing(uncapped._read, record_texts())}


# --- medspaCy --------------------------------------------------------------------------------


def medspacy_engine(own_cues: bool) -> dict[str, Any]:
    import medspacy
    from loguru import logger
    from medspacy.context import ConTextRule
    from medspacy.target_matcher import TargetRule

    logger.remove()
    nlp = medspacy.load(enable=["medspacy_pyrush", "medspacy_target_matcher"])
    if "medspacy_context" in nlp.pipe_names:
        nlp.remove_pipe("medspacy_context")
    targets = [TargetRule(phrase, cid) for cid, phrases in MATCHES["text"].items()
               for phrase in phrases]
    targets += [TargetRule(phrase, f"bare:{cid}") for cid, phrases in
                MATCHES["unclear_signs"].items() for phrase in phrases]
    nlp.get_pipe("medspacy_target_matcher").add(targets)
    if own_cues:
        context = nlp.add_pipe("medspacy_context", config={"rules": None, "span_attrs": {
            "NEGATED_EXISTENCE": {"is_negated": True},
            "POSSIBLE_EXISTENCE": {"is_uncertain": True},
            "FAMILY": {"is_family": True},
            "HYPOTHETICAL": {"is_hypothetical": True}}})
        context.add(_own_rules(ConTextRule))
    else:
        nlp.add_pipe("medspacy_context")
    capitals = {w.lower() for w in MATCHES["capitals_only"]}
    body = {w.lower() for w in MATCHES["body_part_words"]}
    ctx = MATCHES["text_context"]

    def predict(text: str) -> dict[str, str]:
        doc = nlp(text)
        negated: set[str] = set()
        kept: dict[str, str] = {}
        for ent in doc.ents:
            if ent.text.lower() in capitals and not ent.text.isupper():
                continue
            label = ent.label_
            bare = label.startswith("bare:")
            concept = label.removeprefix("bare:")
            certainty = "uncertain" if ent._.is_uncertain else "asserted"
            if bare and not any(t.lower_ in body for t in ent.sent):
                certainty = "unclear"
            if ent._.is_family:
                if concept != ctx["mnd_concept"] or ent._.is_negated:
                    continue
                concept = ctx["family_history_concept"]
            elif concept == ctx["mnd_concept"]:
                concept = (ctx["concern_concept"] if ent._.is_hypothetical
                           else ctx["suspected_concept"])
            elif ent._.is_hypothetical:
                certainty = "uncertain"
            if ent._.is_negated and certainty != "uncertain":
                negated.add(concept)
                continue
            rank = {"unclear": 0, "asserted": 1, "uncertain": 2}
            if concept not in kept or rank[certainty] > rank[kept[concept]]:
                kept[concept] = certainty
        for concept in negated & kept.keys():
            if kept[concept] == "asserted":
                kept[concept] = "uncertain"
        return kept

    name = "medspacy+own-cues" if own_cues else "medspacy-default"
    return {"engine": name, **score(predict), "timing": timing(nlp, record_texts())}


def _own_rules(rule: Any) -> list[Any]:
    """rules/text-matches.yaml cues as ConText rules (as near as ConText can say them)."""
    neg, ctx = MATCHES["negation"], MATCHES["text_context"]
    window = neg["window_words"]
    rules = [rule(c, "NEGATED_EXISTENCE", direction="FORWARD", max_scope=window)
             for c in neg["before"]]
    rules += [rule(c, "NEGATED_EXISTENCE", direction="BACKWARD", max_scope=1)
              for c in neg["after"]]
    rules += [rule(c, "POSSIBLE_EXISTENCE", direction="BIDIRECTIONAL", max_scope=window)
              for c in neg["double_negatives"]]
    rules += [rule(c, "PSEUDO", direction="PSEUDO") for c in neg["pseudo"]]
    rules += [rule(c, "TERMINATE", direction="TERMINATE")
              for c in neg["clause_breaks"] + neg["assertion_words"]]
    rules += [rule(c, "POSSIBLE_EXISTENCE", direction="FORWARD", max_scope=window)
              for c in ctx["hedges_before"]]
    rules += [rule(c, "POSSIBLE_EXISTENCE", direction="BACKWARD", max_scope=1)
              for c in ctx["hedges_after"]]
    rules += [rule(c, "FAMILY", direction="BIDIRECTIONAL") for c in ctx["relatives"]]
    rules += [rule(c, "HYPOTHETICAL", direction="FORWARD", max_scope=window)
              for c in ctx["concern_cues"] + ctx["concern_cues_with_subject"]]
    return rules


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "own"
    results = [own()] if which == "own" else [medspacy_engine(False), medspacy_engine(True)]
    for result in results:
        print(json.dumps(result))
