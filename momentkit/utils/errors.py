"""Errors that tell the user which file, line and field are at fault and how to fix it."""

from __future__ import annotations

from pathlib import Path


class MomentkitError(Exception):
    """Base class of momentkit's user-facing errors."""


class FormatError(MomentkitError, ValueError):
    """A malformed input record.

    The message reads ``FILE:LINE: field 'FIELD': PROBLEM. HINT`` so editors and terminals can
    jump to the place.
    """

    def __init__(
        self,
        path: str | Path | None,
        line: int | None,
        field: str | None,
        problem: str,
        hint: str = "",
    ) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        self.problem = problem
        self.hint = hint
        where = self.path or "<input>"
        if line is not None:
            where += f":{line}"
        msg = f"{where}: "
        if field:
            msg += f"field '{field}': "
        msg += problem
        if hint:
            msg += f". {hint}"
        super().__init__(msg)


class FeatureError(MomentkitError, ValueError):
    """A missing, misshapen or non-finite feature file."""
