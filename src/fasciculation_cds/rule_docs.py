"""Rule documentation pages written from the rule files (What it does, Why, Fires when, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .assessment import RuleFinding
from .presentation import severity_rank
from .rule_schema import ContextPattern, FactPattern, Rule
from .ruleset import RuleSet

TEMPLATE_MARKS = ("{{", "{%")

SYMBOL = {"lt": "<", "lte": "≤", "gt": ">", "gte": "≥", "eq": "="}


def _pattern_text(name: str, pattern: FactPattern) -> str:
    kinds = pattern.kinds
    parts = [f"`{name}`: a {' or '.join(kinds)}"]
    concepts = pattern.named_concepts
    if concepts:
        parts.append("of " + ", ".join(f"`{c}`" for c in concepts))
    if pattern.in_class:
        parts.append(f"in class `{pattern.in_class}`")
    if pattern.in_groups:
        parts.append("in group " + " or ".join(f"`{g}`" for g in pattern.in_groups))
    if pattern.exclude_concepts:
        parts.append("except " + ", ".join(f"`{c}`" for c in pattern.exclude_concepts))
    if pattern.latest:
        parts.append("(the latest result)")
    if pattern.max_age_days is not None:
        parts.append(f"within {pattern.max_age_days} days")
    if pattern.value is not None:
        tests = [f"{SYMBOL[op]} {value:g}" for op in SYMBOL
                 if (value := getattr(pattern.value, op)) is not None]
        parts.append(f"with value {' and '.join(tests)} {pattern.value.unit or ''}".rstrip())
    if pattern.times_upper_limit is not None:
        tests = [f"{SYMBOL[op]} {value:g}" for op in SYMBOL
                 if (value := getattr(pattern.times_upper_limit, op)) is not None]
        parts.append(f"at {' and '.join(tests)} times the upper limit")
    if pattern.rule:
        parts.append(f"`{pattern.rule}`")
    return " ".join(parts)


def _context_text(context: ContextPattern) -> list[str]:
    lines = []
    if context.presents:
        lines.append("record shows " + " and ".join(f"`{c}`" for c in context.presents))
    if context.presents_any:
        lines.append("record shows " + " or ".join(f"`{c}`" for c in context.presents_any))
    if context.absent:
        lines.append("record has no " + ", ".join(f"`{c}`" for c in context.absent))
    for label, spec in (("measured", context.measured_within),
                        ("not measured", context.not_measured_within)):
        if spec:
            which = spec.all_of or spec.any_of or []
            joiner = " and " if spec.all_of else " or "
            lines.append(f"{joiner.join(f'`{c}`' for c in which)} {label} within {spec.days} days")
    for name, comparison in context.group_sets.items():
        bounds = {k: v for k, v in comparison.model_dump(exclude_none=True).items() if k != "unit"}
        lines.append(f"`{name}` {bounds}")
    if context.below_severity:
        lines.append(f"every other finding is below {context.below_severity}")
    if context.without_findings:
        lines.append("no finding " + ", ".join(f"`{p}`" for p in context.without_findings))
    if context.newer is not None:
        than = " or ".join(f"`{c}`" for c in context.newer.than)
        lines.append(f"the newest `{context.newer.concept}` is "
                     f"{'' if context.newer.is_ else 'not '}at least as new as the newest {than}")
    for pattern in context.without_facts:
        lines.append("record has no " + _pattern_text("fact", pattern).split(": a ", 1)[1])
    return lines


@dataclass(frozen=True)
class Example:
    """A rule's card as one of its own `.fires` fixtures produces it."""

    fixture: str
    shows: str
    finding: RuleFinding


def rule_examples(ruleset: RuleSet) -> dict[str, list[Example]]:
    """Rule id -> one example per severity it can give (most severe first): the first `.fires`
    fixture of that severity, evaluated (imported here: only documentation needs the engine)."""
    from .rule_fixtures import assess_fixture, fixture_cases, fixture_description

    first: dict[tuple[str, str], Path] = {}
    for case in fixture_cases(ruleset.directory):
        if case.severity is not None:
            first.setdefault((case.rule_id, case.severity), case.path)
    examples: dict[str, list[Example]] = {}
    for (rule_id, _), path in sorted(
            first.items(), key=lambda item: (item[0][0], -severity_rank(item[0][1]))):
        findings = [f for f in assess_fixture(path, ruleset).findings if f.rule_id == rule_id]
        if findings:
            examples.setdefault(rule_id, []).append(
                Example(path.name, fixture_description(path), findings[0]))
    return examples


def _recommendations(rule: Rule, examples: list[Example]) -> list[str]:
    """The rule's recommendations; those written as templates depend on the record, and the
    examples show them as cards give them."""
    fixed = [r for r in rule.recommendations if not any(m in r for m in TEMPLATE_MARKS)]
    if len(fixed) == len(rule.recommendations):
        return [f"- {r}" for r in rule.recommendations]
    where = ("the examples below show them as cards give them" if examples
             else "the rule's fixtures show them as cards give them")
    return ["They depend on the record (its values and dates, other findings on the same "
            f"assessment, the patient's age): {where}."]


def _example_lines(examples: list[Example]) -> list[str]:
    lines: list[str] = []
    for example in examples:
        finding = example.finding
        lines += [f"From the fixture `{example.fixture}` ({example.shows}):", "",
                  f"> **{finding.severity.upper()}** {finding.summary}", ">"]
        lines += [f"> - {r}" for r in finding.recommendations]
        lines.append("")
    return lines[:-1]


def rule_page(rule: Rule, examples: list[Example] | None = None) -> str:
    lines = [f"# `{rule.id}` — {rule.title}", "",
             f"Category: {rule.category} · Status: {rule.status} · "
             f"{'Presenting patients only' if rule.requires_presentation else 'Always'}"
             f"{' · Second stage' if rule.stage == 2 else ''}", "",
             "## What it does", "", rule.description.strip(), "", "## Fires when", ""]
    for match in rule.match:
        label = f"**{match.label}** — " if match.label else ""
        conditions = _context_text(match.context) if match.context else []
        conditions += [_pattern_text(n, p) for n, p in match.facts.items()]
        if match.requires_presentation is not None and \
                match.requires_presentation != rule.requires_presentation:
            conditions.insert(0, "the patient presents" if match.requires_presentation
                              else "with or without a presentation")
        lines.append(f"- {label}{'; '.join(conditions) or 'always'} → **{match.severity}**")
        for escalation in match.escalate:
            extra = _context_text(escalation.context) if escalation.context else []
            extra += [_pattern_text(n, p) for n, p in escalation.facts.items()]
            lines.append(f"  - **{escalation.severity}** when {'; '.join(extra)}")
    lines += ["", "## Recommendations", "", *_recommendations(rule, examples or [])]
    if examples:
        lines += ["", "## Example", "", *_example_lines(examples)]
    if rule.notes:
        lines += ["", "## Notes", "", rule.notes.strip()]
    lines += ["", "## References", ""]
    lines += [f"- {r.citation}" + (f" <{r.url}>" if r.url else "") for r in rule.references]
    cited = {(r.citation, r.url) for r in rule.references}
    for match in rule.match:  # a match's own sources are shown only when it fired
        for ref in match.references:
            if (ref.citation, ref.url) not in cited:
                cited.add((ref.citation, ref.url))
                which = f" (when **{match.label}** fired)" if match.label else ""
                lines.append(f"- {ref.citation}" + (f" <{ref.url}>" if ref.url else "") + which)
    return "\n".join(lines) + "\n"


def write_rule_docs(ruleset: RuleSet, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    index = ["# Rules", "", "| id | category | severity | status | title |",
             "| --- | --- | --- | --- | --- |"]
    examples = rule_examples(ruleset)
    for rule in ruleset.rules:
        path = out_dir / f"{rule.id}.md"
        path.write_text(rule_page(rule, examples.get(rule.id)), encoding="utf-8")
        written.append(path)
        severities = sorted({m.severity for m in rule.match} |
                            {e.severity for m in rule.match for e in m.escalate})
        index.append(f"| [`{rule.id}`]({rule.id}.md) | {rule.category} | "
                     f"{', '.join(severities)} | {rule.status} | {rule.title} |")
    (out_dir / "README.md").write_text("\n".join(index) + "\n", encoding="utf-8")
    written.append(out_dir / "README.md")
    return written
