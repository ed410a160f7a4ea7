"""The `fasciculation-cds` command: evaluate FHIR data, and inspect or document the rules.

Exit codes: 0 evaluated (findings or not), 2 bad input (each message names file, entry and what
is wrong), 1 internal error. Bad input never shows a traceback.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .assessment import Assessment, JsonRow, dumps_assessments
from .errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK, InputError, RuleFileError
from .evaluate import Evaluator, InputProblem, PatientError, evaluate_each
from .fhir_time import parse_as_of
from .presentation import severity_rank
from .render_text import write_summary
from .rule_docs import write_rule_docs
from .rule_schema import Rule
from .ruleset import RuleSet, load_rules

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Clinical decision support for muscle twitching, cramps and spasms.")
rules_app = typer.Typer(no_args_is_help=True, help="List, check, document the rule files.")
app.add_typer(rules_app, name="rules")
err = Console(stderr=True)


class OutputFormat(str, Enum):
    json = "json"
    ndjson = "ndjson"
    text = "text"


def _check_as_of(as_of: str | None) -> None:
    """A bad --as-of is bad input: say so before reading anything."""
    if as_of in (None, "auto"):
        return
    try:
        parse_as_of(as_of)
    except ValueError as exc:
        err.print(f"error: --as-of: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def _load(rules_dir: Path | None) -> RuleSet:
    try:
        return load_rules(rules_dir)
    except RuleFileError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None


@app.command()
def evaluate(
    paths: Annotated[list[Path], typer.Argument(
        help="Bundles, resources, NDJSON(.gz) or folders.")],
    as_of: Annotated[str | None, typer.Option(
        "--as-of", help="Evaluation instant: YYYY-MM-DD, ISO date-time, or 'auto' "
        "(each patient's newest recorded time). Default: now (UTC).")] = None,
    assume_presentation: Annotated[bool, typer.Option(
        "--assume-presentation", help="Screening: treat every patient as presenting.")] = False,
    output_format: Annotated[OutputFormat, typer.Option("--format")] = OutputFormat.json,
    rules_dir: Annotated[Path | None, typer.Option("--rules", help="Rules folder.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o")] = None,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Validate every resource, not only those the rules use.")] = False,
    unrecognized: Annotated[bool, typer.Option(
        "--unrecognized/--no-unrecognized",
        help="List per patient the codings the rules did not understand (JSON formats; "
        "docs/coverage.md).")] = True,
) -> None:
    """Evaluate the patients in PATHS and print one assessment per patient."""
    ruleset = _load(rules_dir)
    _check_as_of(as_of)
    assessments: list[Assessment] = []
    errors: list[PatientError | InputProblem] = []
    try:
        for outcome in evaluate_each(paths, as_of=as_of, assume_presentation=assume_presentation,
                                     rules=ruleset, strict=strict,
                                     unrecognized=unrecognized and output_format.value != "text"):
            if not isinstance(outcome, Assessment):
                errors.append(outcome)
                who = f"{outcome.patient}: " if isinstance(outcome, PatientError) else ""
                err.print(f"error: {who}{outcome.message}", highlight=False, soft_wrap=True)
            else:
                assessments.append(outcome)
    except InputError as exc:
        err.print(f"error: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    if not assessments and not errors:
        names = ", ".join(str(p) for p in paths)
        err.print(f"error: {names}: no FHIR Patient (or resource referring to one) found",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    _write(assessments, errors, output_format, output)
    if any(e.kind == "internal" for e in errors):
        raise typer.Exit(EXIT_INTERNAL)
    raise typer.Exit(EXIT_BAD_INPUT if errors else EXIT_OK)


def _write(assessments: list[Assessment], errors: list[PatientError | InputProblem],
           fmt: OutputFormat, output: Path | None) -> None:
    if fmt is OutputFormat.text:
        write_summary(assessments, output)
        return
    rows: list[JsonRow] = [*assessments, *errors]
    if fmt is OutputFormat.json:
        data = dumps_assessments(rows) + b"\n"
    else:
        data = dumps_assessments(rows, lines=True)
    _emit(data, output)


def _emit(data: bytes, output: Path | None) -> None:
    """Bytes to a file, or to standard output."""
    if output:
        output.write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


class CoverageFormat(str, Enum):
    text = "text"
    csv = "csv"
    json = "json"


@app.command()
def coverage(
    paths: Annotated[list[Path], typer.Argument(
        help="Bundles, resources, NDJSON(.gz), folders or Bulk Data exports.")],
    output_format: Annotated[CoverageFormat, typer.Option(
        "--format", help="text: counts and a table; csv: the table; json: both.")] = (
        CoverageFormat.text),
    as_of: Annotated[str | None, typer.Option(
        "--as-of", help="Evaluation instant, as for `evaluate` (decides what is too old to "
        "count).")] = None,
    assume_presentation: Annotated[bool, typer.Option(
        "--assume-presentation", help="Evaluate every patient as presenting.")] = False,
    limit: Annotated[int | None, typer.Option(
        "--limit", min=1, help="Only the first N codings.")] = None,
    rules_dir: Annotated[Path | None, typer.Option("--rules", help="Rules folder.")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write to a file instead of standard output.")] = None,
) -> None:
    """What the rules did not understand in PATHS: every resource of a type the rules read
    accounted for (used, skipped, unrecognized, not relevant, unreadable), and the codings no
    value set matched, most patients first."""
    from .coverage_report import render
    from .evaluate import coverage_of

    ruleset = _load(rules_dir)
    _check_as_of(as_of)
    try:
        report = coverage_of(paths, as_of=as_of, assume_presentation=assume_presentation,
                             rules=ruleset)
    except InputError as exc:
        err.print(f"error: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    if report.totals()["read"] == 0:
        names = ", ".join(str(p) for p in paths)
        err.print(f"error: {names}: no resource of a type the rules read was found",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    _emit(render(report, output_format.value, limit).encode(), output)


class ReportFormat(str, Enum):
    html = "html"
    markdown = "markdown"
    text = "text"
    fhir = "fhir"


@app.command()
def report(
    paths: Annotated[list[Path], typer.Argument(help="Bundles, resources, NDJSON or folders.")],
    output_format: Annotated[ReportFormat, typer.Option("--format")] = ReportFormat.html,
    out: Annotated[Path | None, typer.Option(
        "--out", help="File, or folder (html for several patients: one page each + index).")]
    = None,
    as_of: Annotated[str | None, typer.Option("--as-of")] = None,
    assume_presentation: Annotated[bool, typer.Option("--assume-presentation")] = False,
    rules_dir: Annotated[Path | None, typer.Option("--rules")] = None,
) -> None:
    """Clinician-facing summaries: HTML pages with lab trends, a Markdown note, the terminal
    view, or FHIR DetectedIssue resources."""
    from .report import render_document, write_reports

    ruleset = _load(rules_dir)
    _check_as_of(as_of)
    assessments: list[Assessment] = []
    errors = 0
    for outcome in evaluate_each(paths, as_of=as_of, assume_presentation=assume_presentation,
                                 rules=ruleset, full_history=True):
        if not isinstance(outcome, Assessment):
            errors += 1
            who = f"{outcome.patient}: " if isinstance(outcome, PatientError) else ""
            err.print(f"error: {who}{outcome.message}", highlight=False, soft_wrap=True)
        else:
            assessments.append(outcome)
    if not assessments:
        if not errors:
            err.print("error: no FHIR patients found in the input", highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT)
    fmt = output_format.value
    if fmt == "text":
        write_summary(assessments, out)
    elif out is not None:
        for path in write_reports(assessments, ruleset, fmt, out):
            err.print(f"wrote {path}", highlight=False, soft_wrap=True)
    elif fmt == "html" and len(assessments) > 1:
        err.print("error: --format html for several patients needs --out FOLDER",
                  highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT)
    else:
        _emit(render_document(assessments, ruleset, fmt), None)
    raise typer.Exit(EXIT_BAD_INPUT if errors else EXIT_OK)


feedback_app = typer.Typer(no_args_is_help=True, help="CDS Hooks card feedback.")
app.add_typer(feedback_app, name="feedback")


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8080,
    config: Annotated[Path | None, typer.Option(
        "--config", help="YAML/JSON settings (environment FASCICULATION_CDS_* overrides).")]
    = None,
    dev_insecure: Annotated[bool, typer.Option(
        "--dev-insecure", help="No JWT check, and only for callers on loopback.")] = False,
) -> None:
    """Run the CDS Hooks 2.0 service (patient-view, order-select, order-sign)."""
    import uvicorn

    from .service import create_app
    from .service.settings import load_settings

    settings = load_settings(config, **({"dev_insecure": True} if dev_insecure else {}))
    if settings.dev_insecure:
        err.print("WARNING: --dev-insecure: requests from loopback are NOT authenticated. "
                  "Never use this outside a developer's machine.", style="bold red")
    uvicorn.run(create_app(settings), host=host, port=port,
                log_level=settings.log_level, proxy_headers=False)


@feedback_app.command("report")
def feedback_report(
    config: Annotated[Path | None, typer.Option("--config")] = None,
    database: Annotated[str | None, typer.Option(
        "--database", help="SQLAlchemy URL (default: the service's setting).")] = None,
) -> None:
    """Per rule: cards shown, accepted, overridden, and the top override reasons."""
    from .service.feedback import FeedbackStore
    from .service.settings import load_settings

    url = database or load_settings(config).feedback_database_url
    table = Table("rule", "shown", "accepted", "overridden", "acceptance", "top override reasons",
                  title="card feedback")
    for row in FeedbackStore(url).report():
        answered = row["accepted"] + row["overridden"]
        rate = f"{row['accepted'] / answered:.0%}" if answered else "—"
        reasons = "; ".join(f"{r} ({n})" for r, n in row["top_override_reasons"]) or "—"
        table.add_row(row["rule_id"], str(row["shown"]), str(row["accepted"]),
                      str(row["overridden"]), rate, reasons)
    Console().print(table)


class BatchFormat(str, Enum):
    parquet = "parquet"
    ndjson = "ndjson"


class BatchEngine(str, Enum):
    local = "local"
    spark = "spark"


@app.command()
def batch(
    inputs: Annotated[list[Path], typer.Argument(
        help="Bulk Data export folders, folders of Bundles, or a manifest.json.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    output_format: Annotated[BatchFormat, typer.Option("--format")] = BatchFormat.parquet,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, help="Worker processes (default: all cores).")] = None,
    engine: Annotated[BatchEngine, typer.Option("--engine")] = BatchEngine.local,
    as_of: Annotated[str | None, typer.Option("--as-of")] = None,
    assume_presentation: Annotated[bool, typer.Option("--assume-presentation")] = False,
    rules_dir: Annotated[Path | None, typer.Option("--rules")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an interrupted run in --out.")] = False,
    strict: Annotated[bool, typer.Option("--strict")] = False,
) -> None:
    """Evaluate whole extracts: one assessment row per input patient, plus findings rows."""
    from .batch import BatchOptions
    from .batch.cli_run import run_batch_command  # pyarrow is only needed here

    _load(rules_dir)
    _check_as_of(as_of)
    options = BatchOptions(inputs=inputs, out=out, output_format=output_format.value,
                           workers=workers, engine=engine.value, as_of=as_of,
                           assume_presentation=assume_presentation, rules_dir=rules_dir,
                           resume=resume, strict=strict)
    raise typer.Exit(run_batch_command(options, err))


@rules_app.command("list")
def rules_list(rules_dir: Annotated[Path | None, typer.Option("--rules")] = None) -> None:
    """The rules: id, category, severity, status, title."""
    ruleset = _load(rules_dir)
    table = Table("id", "category", "severity", "status", "title")
    for rule in ruleset.rules:
        severities = sorted({m.severity for m in rule.match}
                            | {e.severity for m in rule.match for e in m.escalate},
                            key=severity_rank)
        table.add_row(rule.id, rule.category, "/".join(severities), rule.status, rule.title)
    Console().print(table)
    Console().print(f"rules_version {ruleset.version}", style="dim", soft_wrap=True)


@rules_app.command("check")
def rules_check(directory: Annotated[Path | None, typer.Argument()] = None) -> None:
    """Validate every rule file (schema, names, units) and compile the rule set."""
    ruleset = _load(directory)
    try:
        Evaluator(ruleset)
    except Exception as exc:
        err.print(f"error: the rules do not compile: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    from .rule_fixtures import fixture_problems  # runs every fixture: only `rules check` needs it

    problems = list(fixture_problems(ruleset))
    for problem in problems:
        err.print(f"error: {problem}", highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(EXIT_BAD_INPUT)
    Console().print(f"{len(ruleset.rules)} rules OK ({ruleset.version})", soft_wrap=True)


@rules_app.command("docs")
def rules_docs(
    out: Annotated[Path, typer.Option("--out")] = Path("docs/rules"),
    rules_dir: Annotated[Path | None, typer.Option("--rules")] = None,
) -> None:
    """Write one Markdown page per rule, generated from the rule files."""
    written = write_rule_docs(_load(rules_dir), out)
    Console().print(f"wrote {len(written)} files to {out}", soft_wrap=True)


@rules_app.command("schema")
def rules_schema() -> None:
    """Print the JSON Schema of a rule file (for editors)."""
    sys.stdout.write(json.dumps(Rule.model_json_schema(), indent=2) + "\n")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
