"""Errors a user can act on, and the exit codes the CLI maps them to."""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_MISSING_DEPENDENCY = 5  # an optional dependency (an extra) is not installed


class FasciculationCdsError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(FasciculationCdsError):
    """Bad input: names the file, the entry (Bundle entry or NDJSON line) and what is wrong."""

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        entry: str | None = None,
        path: str | None = None,
        resource: str | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.entry = entry
        self.path = path
        self.resource = resource
        """The resource it concerns (`Observation/x`), when known."""
        super().__init__(self.describe())

    def describe(self) -> str:
        where = [part for part in (self.source, self.entry, self.path) if part]
        return f"{': '.join(where)}: {self.message}" if where else self.message


class RuleFileError(FasciculationCdsError):
    """A rule or content file in rules/ is invalid: names the file and the field."""

    def __init__(self, message: str, *, file: str, field: str | None = None) -> None:
        self.message = message
        self.file = file
        self.field = field
        where = f"{file} [{field}]" if field else file
        super().__init__(f"{where}: {message}")
