"""`fasciculation-cds batch`: run, print the summary, and map every way a run ends to one
message and an exit code (never a traceback)."""

from __future__ import annotations

import signal

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..errors import EXIT_INTERNAL, EXIT_OK, InputError
from . import storage
from .options import (
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_MISSING_DEPENDENCY,
    EXIT_OUTPUT_FAILED,
    EXIT_TERMINATED,
    EXIT_UNREADABLE_INPUT,
    BatchOptions,
    BatchSummary,
    MissingDependencyError,
    OutputError,
    Stopped,
)
from .pool import WorkerDiedError
from .run import WORK, run_batch


def run_batch_command(options: BatchOptions, err: Console) -> int:
    def fail(message: str, code: int) -> int:
        err.print(f"error: {message}", highlight=False, soft_wrap=True, markup=False)
        return code

    try:
        work = storage.work_folder(storage.location(options.out), options.scratch, WORK)
    except InputError as exc:
        return fail(str(exc), EXIT_UNREADABLE_INPUT)
    resume = (f"; finished shards are kept in {work}: run the same command with "
              "--resume to continue")
    try:
        summary = run_batch(options, console=err)
    except InputError as exc:
        return fail(str(exc), EXIT_UNREADABLE_INPUT)
    except ValueError as exc:  # --resume refused
        return fail(str(exc), EXIT_INCOMPLETE)
    except MissingDependencyError as exc:
        return fail(str(exc), EXIT_MISSING_DEPENDENCY)
    except OutputError as exc:
        return fail(f"{exc}; no complete output was written (no run.json)", EXIT_OUTPUT_FAILED)
    except WorkerDiedError as exc:
        return fail(f"{exc}{resume}", EXIT_INTERNAL)
    except KeyboardInterrupt:
        return fail(f"interrupted{resume}", EXIT_INTERRUPTED)
    except Stopped as exc:
        name = signal.Signals(exc.signal_number).name
        return fail(f"stopped by {name}{resume}",
                    EXIT_TERMINATED if exc.signal_number == signal.SIGTERM else EXIT_INTERRUPTED)
    return _report(options, summary, err)


def _report(options: BatchOptions, summary: BatchSummary, err: Console) -> int:
    if summary.patients == 0:
        err.print(f"error: {', '.join(map(str, options.inputs))}: no FHIR patients found"
                  f"{f' ({len(summary.problems)} problems)' if summary.problems else ''}",
                  highlight=False, soft_wrap=True)
        return EXIT_INCOMPLETE
    table = Table("patients", "ok", "partial", "errors", "problems", *summary.severities,
                  title="batch summary")
    table.add_row(str(summary.patients), str(summary.evaluated - summary.partial),
                  str(summary.partial), str(summary.errors), str(len(summary.problems)),
                  *(str(v) for v in summary.severities.values()))
    err.print(table)
    if summary.partial:
        err.print(f"warning: {summary.partial} rows are partial: the input had "
                  f"{len(summary.problems)} problems (see problems.ndjson); any patient's data "
                  "could have been in what was not read", highlight=False, soft_wrap=True)
    if summary.top_rules:
        rules = Table("rule", "patients", title="top rules")
        for rule_id, count in summary.top_rules:
            rules.add_row(rule_id, str(count))
        err.print(rules)
    if summary.unrecognized:
        codings = Table("patients", "resources", "coding", "display", "looks like / reason",
                        title=f"not understood: top {len(summary.unrecognized)} of "
                        f"{summary.unrecognized_codings} codings (unrecognized.*, "
                        "docs/coverage.md)")
        for row in summary.unrecognized:
            reason = "" if row["reason"] == "no-value-set" else f" ({row['reason']})"
            cells = [str(row["patients"]), str(row["resources"]),
                     f"{row['resource_type']}.{row['element']} {row['code'] or '-'}",
                     _clip(row["display"] or "-"), f"{row['looks_like'] or ''}{reason}"]
            codings.add_row(*(Text(cell) for cell in cells))  # displays hold [brackets]
        err.print(codings)
    report = storage.join(storage.location(options.out), "run.json")
    err.print(f"wrote {', '.join(summary.outputs.values())} and {report}",
              highlight=False, soft_wrap=True)
    return EXIT_INCOMPLETE if summary.errors or summary.problems else EXIT_OK


def _clip(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"
