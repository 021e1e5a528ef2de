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


class OutputError(MomentkitError, OSError):
    """An output path that cannot be written (a device, a folder, read-only, disk full, ...).

    Also an ``OSError``, so code that handles file-system errors keeps handling it.
    """

    def __init__(self, message: str) -> None:
        MomentkitError.__init__(self, message)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


#: errno -> what to do about it, for one-line messages (``describe_os_error``)
_OS_HINTS: dict[int, str] = {}


def _os_hints() -> dict[int, str]:
    import errno

    if not _OS_HINTS:
        _OS_HINTS.update(
            {
                errno.EACCES: "check its permissions, or choose another path",
                errno.EPERM: "check its permissions, or choose another path",
                errno.EROFS: "the file system is read-only; write somewhere else",
                errno.ENOSPC: "the disk is full; free some space or write somewhere else",
                errno.EDQUOT: "the disk quota is exhausted; free some space",
                errno.EFBIG: "the file is too large for this file system",
                errno.EISDIR: "it is a folder; give a file path",
                errno.ENOTDIR: "a part of the path is a file, not a folder",
                errno.EEXIST: "something is in the way; choose another path",
                errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
                errno.ELOOP: "too many symbolic links (a link loop?)",
                errno.ENOENT: "check the path",
                errno.EIO: "the device reported an I/O error",
            }
        )
    return _OS_HINTS


def describe_os_error(error: BaseException) -> str:
    """One line for an ``OSError`` or ``UnicodeError`` that reached the command line.

    ``FILE: problem. What to do`` where the error names a file; no traceback, no errno number.
    """
    if isinstance(error, UnicodeDecodeError):
        return (
            f"cannot decode the input as {error.encoding} at byte {error.start} "
            f"({error.reason}). Save the file as UTF-8 text"
        )
    if isinstance(error, UnicodeError):
        return f"{error}. Use UTF-8 text"
    if isinstance(error, OSError):
        if isinstance(error, MomentkitError) or error.errno is None:
            return str(error)
        problem = error.strerror or str(error) or type(error).__name__
        where = error.filename if error.filename is not None else None
        if error.filename2 is not None:
            where = f"{error.filename} -> {error.filename2}"
        hint = _os_hints().get(error.errno or -1, "")
        text = f"{where}: {problem}" if where is not None else problem
        return f"{text}. {hint[:1].upper()}{hint[1:]}" if hint else text
    return str(error)
