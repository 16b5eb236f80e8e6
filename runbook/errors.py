"""Errors that reach the user as one clean line (never a traceback)."""

from __future__ import annotations

from dataclasses import dataclass


class RunbookError(Exception):
    """An error whose message is fit to show the user as is (one line).

    ``exit_code`` is what the CLI exits with when this error ends a command.
    """

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(RunbookError):
    exit_code = 2


class LockLost(RunbookError):
    """A run's lock was lost (its PostgreSQL session ended): another process may hold it and go
    on with the run, so this one stops before its next step and writes no end for it."""

    exit_code = 3


@dataclass(frozen=True)
class Problem:
    """One finding of the loader or the validator, tied to a place in a file."""

    path: str
    line: int
    col: int
    message: str
    severity: str = "error"  # "error" | "warning"
    rule: str = "schema"

    def format(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.severity}: {self.message}" + (
            f" [{self.rule}]" if self.rule not in ("schema", "yaml") else ""
        )
