"""User-facing errors.

Anything the user can fix (a bad name, a bad value, missing data) raises a
`ClbenchError`. The CLI prints its message on one line and exits with code 2;
tracebacks are reserved for bugs.
"""

from __future__ import annotations

from collections.abc import Iterable


class ClbenchError(Exception):
    """An error caused by input the user can correct."""

    exit_code = 2


class UnknownNameError(ClbenchError):
    def __init__(self, kind: str, name: str, valid: Iterable[str]):
        valid = sorted(valid)
        super().__init__(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(valid) or '(none)'}")
        self.kind, self.name, self.valid = kind, name, valid


class ConfigError(ClbenchError):
    """A bad config key or value, a bad suite file, an incompatible combination."""


class DataNotFoundError(ClbenchError):
    """Data is missing and downloading is off (or failed)."""


class CorruptDataError(ClbenchError):
    """A data file exists but is truncated, malformed or fails its checksum."""


class RunDirConflictError(ClbenchError):
    """The output directory holds results that would be mixed with incompatible ones."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the cell is recorded as failed."""


class CellStopped(RuntimeError):
    """The caller asked a running cell to stop (`clbench tune` pruned its trial); stored as failed."""
