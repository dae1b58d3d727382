"""Errors that fedprop reports to its users.

Every error a user can cause (a bad file, a bad spec, a refused job) is a
:class:`FedpropError` whose message is one line that names what is wrong and
where. The CLI prints that line and exits non-zero; nodes send it back to the
coordinator.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "DataValidationError",
    "FedpropError",
    "JobFailedError",
    "SpecError",
]


class FedpropError(Exception):
    """Base class of every error fedprop reports to a user."""


class SpecError(FedpropError):
    """A job spec (TOML) is malformed or inconsistent."""


class DataValidationError(FedpropError):
    """A party's data file does not match the schema declared in the job spec."""

    def __init__(self, path: Path | str, problem: str, column: str | None = None) -> None:
        self.path = str(path)
        self.column = column
        self.problem = problem
        where = f"{self.path}: column '{column}'" if column is not None else self.path
        super().__init__(f"{where}: {problem}")


class JobFailedError(FedpropError):
    """A federated job stopped because one or more parties reported an error."""
