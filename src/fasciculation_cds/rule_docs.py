"""Rule documentation pages written from the rule files (What it does, Why, Fires when, ...)."""

from __future__ import annotations

from pathlib import Path

from .rule_schema import ContextPattern, FactPattern, Rule
from .ruleset import RuleSet

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


def rule_page(rule: Rule) -> str:
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
    lines += ["", "## Recommendations", ""] + [f"- {r}" for r in rule.recommendations]
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
    for rule in ruleset.rules:
        path = out_dir / f"{rule.id}.md"
        path.write_text(rule_page(rule), encoding="utf-8")
        written.append(path)
        severities = sorted({m.severity for m in rule.match} |
                            {e.severity for m in rule.match for e in m.escalate})
        index.append(f"| [`{rule.id}`]({rule.id}.md) | {rule.category} | "
                     f"{', '.join(severities)} | {rule.status} | {rule.title} |")
    (out_dir / "README.md").write_text("\n".join(index) + "\n", encoding="utf-8")
    written.append(out_dir / "README.md")
    return written
