"""Progress of a batch, phase by phase: reading the input files into shards (the bar counts
files), then evaluating the shards (the bar counts shards: their number is known before any is
evaluated, the number of patients would need every patient key held at once, and says how many
patients are done and at what rate)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

LOG_EVERY_SECONDS = 5


class ShardProgress:
    """A rich progress bar on a terminal; plain periodic log lines otherwise."""

    def __init__(self, console: Console, shards: int, unit: str = "shards") -> None:
        self.console, self.total, self.unit = console, shards, unit
        self.done = self.patients = self.baseline = 0
        self.last_logged = -1
        self.started = time.perf_counter()
        self.last_log = 0.0
        self.bar: Progress | None = None
        self.task: Any = None

    def __enter__(self) -> ShardProgress:
        if self.console.is_terminal:
            self.bar = Progress(TextColumn(self.unit), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[patients]}"), TimeRemainingColumn(),
                                console=self.console)
            self.bar.__enter__()
            self.task = self.bar.add_task("evaluate", total=self.total, patients="")
        return self

    def already_done(self, shards: int, patients: int) -> None:
        """Shards finished before a resume: counted, but their patients not in the rate."""
        self.baseline += patients
        self.done += shards
        self.patients += patients
        self._show()

    def advance(self, patients: int) -> None:
        """One more shard finished, with `patients` rows."""
        self.done += 1
        self.patients += patients
        self._show()

    def _show(self) -> None:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        status = (f"patients {self.patients:,} "
                  f"({(self.patients - self.baseline) / elapsed:,.0f}/s)" if self.patients else "")
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, patients=status)
        elif (time.perf_counter() - self.last_log >= LOG_EVERY_SECONDS
              or self.done >= self.total) and self.done != self.last_logged:
            self.last_logged = self.done
            self.last_log = time.perf_counter()
            self.console.log(f"{self.unit} {self.done}/{self.total}"
                             f"{', ' + status if status else ''}")

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
