"""The `fasciculation-cds` command: evaluate FHIR data, and inspect or document the rules.

Exit codes: 0 evaluated (findings or not), 2 bad input (each message names file, entry and what
is wrong), 1 internal error. Bad input never shows a traceback.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from ._version import __version__
from .assessment import Assessment, JsonRow, dumps_assessments
from .errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_MISSING_DEPENDENCY,
    EXIT_OK,
    InputError,
    RuleFileError,
)

if TYPE_CHECKING:
    from .service.settings import ServiceSettings
from .evaluate import Evaluator, InputProblem, PatientError, evaluate_each
from .fhir_time import parse_as_of
from .presentation import severity_rank
from .record_text import terminal_text
from .render_text import write_summary
from .rule_docs import write_rule_docs
from .rule_schema import Rule
from .ruleset import RuleSet, load_rules
from .sources import RawResource, read_stdin_bytes

app = typer.Typer(no_args_is_help=True,
                  help="Clinical decision support for muscle twitching, cramps and spasms.")
rules_app = typer.Typer(no_args_is_help=True, help="List, check, document the rule files.")
app.add_typer(rules_app, name="rules")
# log_path=False: no "file.py:line" column in log lines (they also go to non-terminal logs)
err = Console(stderr=True, log_path=False)
EXIT_REFUSED = 4  # `hook`: the service answered with an error status


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"fasciculation-cds {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    """Clinical decision support for muscle twitching, cramps and spasms."""


AS_OF_HELP = ("Evaluation instant: YYYY-MM-DD, ISO date-time, or 'auto' (each patient's newest "
              "recorded time). Default: now (UTC).")
SCREENING_HELP = "Screening: treat every patient as presenting."
RULES_HELP = "Rules folder (default: the rules that ship with the package)."


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
        help="Bundles, resources, NDJSON(.gz) or folders; '-' reads standard input.")],
    as_of: Annotated[str | None, typer.Option("--as-of", help=AS_OF_HELP)] = None,
    assume_presentation: Annotated[bool, typer.Option(
        "--assume-presentation", help=SCREENING_HELP)] = False,
    output_format: Annotated[OutputFormat, typer.Option(
        "--format", help="json (an array), ndjson (a line per patient) or text (the terminal "
        "summary).")] = OutputFormat.json,
    rules_dir: Annotated[Path | None, typer.Option("--rules", help=RULES_HELP)] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write to this file instead of standard output.")] = None,
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
        source = _stdin_items(strict) if paths == [Path("-")] else paths
        for outcome in evaluate_each(source, as_of=as_of, assume_presentation=assume_presentation,
                                     rules=ruleset, strict=strict,
                                     unrecognized=unrecognized and output_format.value != "text"):
            if not isinstance(outcome, Assessment):
                errors.append(outcome)
                who = f"{outcome.patient}: " if isinstance(outcome, PatientError) else ""
                err.print(terminal_text(f"error: {who}{outcome.message}"), markup=False,
                          highlight=False, soft_wrap=True)
            else:
                assessments.append(outcome)
    except InputError as exc:
        err.print(terminal_text(f"error: {exc}"), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    if not assessments and not errors:
        names = ", ".join(str(p) for p in paths)
        err.print(terminal_text(f"error: {names}: no FHIR Patient (or resource referring to "
                                "one) found"), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    _write(assessments, errors, output_format, output)
    if any(e.kind == "internal" for e in errors):
        raise typer.Exit(EXIT_INTERNAL)
    raise typer.Exit(EXIT_BAD_INPUT if errors else EXIT_OK)


def _stdin_items(strict: bool) -> list[RawResource | InputError]:
    """Standard input read once (a Bundle, a resource or NDJSON); a bad document is bad input."""
    return list(read_stdin_bytes(sys.stdin.buffer.read(), strict=strict))


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
    output_format: Annotated[ReportFormat, typer.Option(
        "--format", help="html (pages with lab trends), markdown (a note), text (the terminal "
        "view) or fhir (DetectedIssue resources).")] = ReportFormat.html,
    out: Annotated[Path | None, typer.Option(
        "--out", help="File, or folder (html for several patients: one page each + index).")]
    = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help=AS_OF_HELP)] = None,
    assume_presentation: Annotated[bool, typer.Option(
        "--assume-presentation", help=SCREENING_HELP)] = False,
    rules_dir: Annotated[Path | None, typer.Option("--rules", help=RULES_HELP)] = None,
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
            err.print(terminal_text(f"error: {who}{outcome.message}"), markup=False,
                      highlight=False, soft_wrap=True)
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
    host: Annotated[str, typer.Option(
        "--host", help="Address to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port to listen on.")] = 8080,
    config: Annotated[Path | None, typer.Option(
        "--config", help="YAML/JSON settings (environment FASCICULATION_CDS_* overrides).")]
    = None,
    dev_insecure: Annotated[bool, typer.Option(
        "--dev-insecure", help="No JWT check, and only for callers on loopback.")] = False,
    log_format: Annotated[TextOrJson | None, typer.Option(
        "--log-format", help="text, or json (one object per line, for log collectors); "
        "default: the log_format setting.")] = None,
) -> None:
    """Run the CDS Hooks 2.0 service (patient-view, order-select, order-sign)."""
    import uvicorn

    from .service import create_app
    from .service.feedback import FeedbackStoreError
    from .service.observability import configure_logging, uvicorn_log_config
    from .service.server import uvicorn_config

    _check_port_free(host, port)
    overrides: dict[str, object] = {"dev_insecure": True} if dev_insecure else {}
    if log_format is not None:
        overrides["log_format"] = log_format.value
    settings = _service_settings(config, **overrides)
    _check_database_driver(settings.feedback_database_url)
    if settings.dev_insecure:
        err.print("WARNING: --dev-insecure: requests from loopback are NOT authenticated. "
                  "Never use this outside a developer's machine.", style="bold red")
    try:
        service = create_app(settings)
    except FeedbackStoreError as exc:
        _fail(f"feedback database: {exc}")
    logging = ({"log_config": uvicorn_log_config(settings.log_format)}
               if settings.log_format == "json" else {})
    server = uvicorn.Server(uvicorn_config(service, settings, host=host, port=port, **logging))
    configure_logging(settings.log_level, settings.log_format)  # after uvicorn's own set-up
    server.run()


def _batch_location(word: str) -> str:
    """A path or a URI of a supported object store, before any work (an unsupported scheme
    would otherwise become a local folder of that name)."""
    from .batch import storage

    try:
        return storage.location(word)
    except InputError as exc:
        _fail(str(exc))


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _service_settings(config: Path | None, **overrides: object) -> ServiceSettings:
    """The service settings, or one line naming the file, the key or the variable that is
    wrong (never a traceback)."""
    import yaml
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from .service.settings import load_settings

    where = f"--config {config}" if config is not None else "settings"
    try:
        return load_settings(config, **overrides)
    except OSError as exc:
        _fail(f"{where}: {exc.strerror or exc}")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        _fail(f"{where}: not valid YAML{at}: {getattr(exc, 'problem', None) or exc}")
    except SettingsError as exc:  # an environment variable that does not parse
        _fail(f"environment: {exc}")
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "(top level)"
        variable = "FASCICULATION_CDS_" + "__".join(str(p) for p in first["loc"]).upper()
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        _fail(f"{where} or environment: {key}: {first['msg']}{more} (file key `{key}`, "
              f"variable {variable})")
    except (TypeError, ValueError) as exc:  # e.g. a YAML list where a mapping belongs
        _fail(f"{where}: {exc}")


def _check_port_free(host: str, port: int) -> None:
    """Before the rules load: a port in use is a one-line error, not a traceback after it."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        _fail(f"--host {host}: {exc}")
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


def _check_database_driver(url: str) -> None:
    """A database URL whose driver is not installed names the extra that brings it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(url).get_dialect().import_dbapi()
    except ImportError as exc:
        extra = ("postgres" if make_url(url).get_backend_name() == "postgresql" else None)
        hint = (f"pip install 'fasciculation-cds[{extra}]'" if extra
                else f"install the module {exc.name or 'it needs'}")
        _fail(f"feedback database {make_url(url).render_as_string(hide_password=True)}: its "
              f"driver is not installed: {hint}", EXIT_MISSING_DEPENDENCY)
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        _fail(f"feedback database URL: {exc}")


def _check_database_exists(url: str) -> None:
    """A report reads an existing database; a mistyped path is an error, never a new file."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        _fail(f"feedback database URL: {exc}")
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            _fail(f"feedback database {url}: an in-memory database holds no feedback")
        path = Path(parsed.database).expanduser()
        if not path.is_file():
            _fail(f"feedback database {path} does not exist (has the service run with it?)")


@feedback_app.command("report")
def feedback_report(
    config: Annotated[Path | None, typer.Option(
        "--config", help="The service's settings file (its feedback database is read).")] = None,
    database: Annotated[str | None, typer.Option(
        "--database", help="SQLAlchemy URL (default: the service's setting).")] = None,
) -> None:
    """Per rule: cards shown, accepted, overridden, and the top override reasons."""
    from .service.feedback import FeedbackStore

    url = database or _service_settings(config).feedback_database_url
    _check_database_exists(url)
    _check_database_driver(url)
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
    inputs: Annotated[list[str], typer.Argument(
        help="Bulk Data export folders, folders of Bundles, or a manifest.json: paths or "
        "URIs (s3://, s3a://, gs://, abfs://, abfss://, hdfs://, file://).")],
    out: Annotated[str, typer.Option(
        "--out", help="Output folder: a path or a URI, as for the inputs.")],
    output_format: Annotated[BatchFormat, typer.Option(
        "--format", help="parquet (columnar files) or ndjson (a line per row).")]
    = BatchFormat.parquet,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, help="Worker processes (default: all cores).")] = None,
    engine: Annotated[BatchEngine, typer.Option(
        "--engine", help="local (a process pool on this machine) or spark (Apache Spark).")]
    = BatchEngine.local,
    as_of: Annotated[str | None, typer.Option("--as-of", help=AS_OF_HELP)] = None,
    assume_presentation: Annotated[bool, typer.Option(
        "--assume-presentation", help=SCREENING_HELP)] = False,
    rules_dir: Annotated[Path | None, typer.Option("--rules", help=RULES_HELP)] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an interrupted run in --out.")] = False,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Validate every resource; a patient with an unreadable resource "
        "becomes an error row.")] = False,
    scratch: Annotated[Path | None, typer.Option(
        "--scratch", help="Local folder for the working files when --out is object storage "
        "(default: in the user's cache).")] = None,
    storage_region: Annotated[str | None, typer.Option(
        "--storage-region", help="Object storage region (S3).")] = None,
    storage_endpoint: Annotated[str | None, typer.Option(
        "--storage-endpoint", help="Object storage endpoint URL (S3-compatible stores, GCS).")]
    = None,
    storage_sse: Annotated[str | None, typer.Option(
        "--storage-sse", help="Server-side encryption of written objects (S3: AES256 or "
        "aws:kms).")] = None,
    storage_kms_key: Annotated[str | None, typer.Option(
        "--storage-kms-key", help="KMS key id or ARN for aws:kms encryption (not key "
        "material).")] = None,
) -> None:
    """Evaluate whole extracts: one assessment row per input patient, plus findings rows.

    Credentials for object storage come only from each cloud's own chain (environment,
    profile, instance or workload identity); FASCICULATION_CDS_STORAGE may hold the storage
    options as JSON."""
    from .batch import BatchOptions
    from .batch.cli_run import run_batch_command  # pyarrow is only needed here
    from .batch.storage import storage_options

    places = [_batch_location(where) for where in (out, *inputs)]
    try:
        stored = storage_options(region=storage_region, endpoint_url=storage_endpoint,
                                 sse=storage_sse, kms_key_id=storage_kms_key)
    except ValueError as exc:
        _fail(str(exc))
    _load(rules_dir)
    _check_as_of(as_of)
    options = BatchOptions(inputs=places[1:], out=places[0], output_format=output_format.value,
                           workers=workers, engine=engine.value, as_of=as_of,
                           assume_presentation=assume_presentation, rules_dir=rules_dir,
                           resume=resume, strict=strict, scratch=scratch, storage=stored)
    raise typer.Exit(run_batch_command(options, err))


def _examples_dir() -> Path:
    """The example patients: packaged in the wheel, or fhir_examples/ in a source checkout."""
    packaged = Path(__file__).parent / "_examples"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "fhir_examples"


@app.command()
def examples(
    out: Annotated[Path, typer.Option(
        "--out", help="Folder to copy the example patients into (created if missing).")]
    = Path("fhir_examples"),
    force: Annotated[bool, typer.Option(
        "--force", help="Overwrite example files already in --out.")] = False,
) -> None:
    """Copy the example patients (FHIR R4 Bundles) that the README's commands use."""
    source = _examples_dir()
    files = sorted(p for p in source.iterdir() if p.suffix in (".json", ".md"))
    clashes = [out / p.name for p in files if (out / p.name).exists()]
    if clashes and not force:
        err.print(f"error: {clashes[0]} exists (and {len(clashes) - 1} more); use --force to "
                  "overwrite", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for path in files:
            (out / path.name).write_bytes(path.read_bytes())
    except OSError as exc:
        err.print(f"error: {out}: {exc.strerror or exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    err.print(f"wrote {len(files)} files to {out}", highlight=False, soft_wrap=True)


class TextOrJson(str, Enum):
    """`serve --log-format` and `hook --format`."""

    text = "text"
    json = "json"


class HookName(str, Enum):
    patient_view = "patient-view"
    order_select = "order-select"
    order_sign = "order-sign"


class PrefetchChoice(str, Enum):
    full = "full"
    none = "none"
    paged = "paged"


@app.command()
def hook(
    name: Annotated[HookName, typer.Argument(help="The hook to call.")],
    patient: Annotated[Path, typer.Option(
        "--patient", help="A FHIR file (Bundle, resource, NDJSON) holding one patient's record.")],
    url: Annotated[str, typer.Option(
        "--url", help="The service's base URL (discovery is at URL/cds-services).")],
    draft: Annotated[Path | None, typer.Option(
        "--draft", help="Orders being written (order hooks): a MedicationRequest or a Bundle.")]
    = None,
    prefetch: Annotated[PrefetchChoice, typer.Option(
        "--prefetch", help="full (every template answered), paged (one resource a search, with "
        "a next link) or none.")] = PrefetchChoice.full,
    key: Annotated[Path | None, typer.Option(
        "--key", help="PEM private key to sign the request's JWT with (RSA: RS384, EC: ES384).")]
    = None,
    issuer: Annotated[str | None, typer.Option(
        "--iss", help="The JWT's issuer (with --key).")] = None,
    kid: Annotated[str | None, typer.Option("--kid", help="The JWT's key id (with --key).")]
    = None,
    output_format: Annotated[TextOrJson, typer.Option(
        "--format", help="text (the cards as a summary) or json (the service's answer).")]
    = TextOrJson.text,
) -> None:
    """Call a CDS Hooks service with a record from a FHIR file and show its cards: how an
    integrator checks a deployment. Exit 0 on 200, 2 on bad input, 4 when the service refuses."""
    from .hook_client import HookClientError, Signer, call

    signer = None
    if key is not None:
        if not issuer:
            _fail("--key needs --iss (the issuer the service trusts)")
        try:
            signer = Signer(key.read_bytes(), issuer, kid)
        except OSError as exc:
            _fail(f"--key {key}: {exc.strerror or exc}")
    try:
        status, answer = call(url, name.value, patient, drafts=draft,
                              prefetch=prefetch.value, signer=signer)
    except HookClientError as exc:
        _fail(str(exc))
    if output_format is TextOrJson.json:
        sys.stdout.write(json.dumps(answer, indent=2) + "\n")
    else:
        from .render_cards import print_cards

        print_cards(Console(), name.value, status, answer)
    raise typer.Exit(EXIT_OK if status == 200 else EXIT_REFUSED)


@rules_app.command("list")
def rules_list(
    rules_dir: Annotated[Path | None, typer.Option("--rules", help=RULES_HELP)] = None,
) -> None:
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
    out: Annotated[Path, typer.Option("--out", help="Folder for the pages.")]
    = Path("docs/rules"),
    rules_dir: Annotated[Path | None, typer.Option("--rules", help=RULES_HELP)] = None,
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
