"""Paths built from data stay inside their directory.

Every file whose name comes from a record (a query id, a video id, an uploaded file name, a key
of an annotation or corpus file) is placed with :func:`safe_child`, which refuses names that
could resolve anywhere else::

    out = safe_child(feature_dir, f"qid{qid}.npz", "qid", source="queries.jsonl", line=3)

Refused: empty names, ``.`` and ``..``, absolute paths, path separators (``/`` and ``\\``), NUL
and other control characters, names longer than the file system allows, and any name whose
resolved path (symbolic links followed) leaves the directory. The error names the record (its
file, line and field) so the user can fix the input.
"""

from __future__ import annotations

import os
from pathlib import Path

from momentkit.utils.errors import FormatError

#: bytes in one file name on the common file systems (ext4, XFS, APFS, NTFS in UTF-16 units)
NAME_MAX = 255

_HINT = (
    "Ids used as file names must be plain names: no '/', '\\', '..', NUL or control "
    "characters, at most 255 bytes"
)


class UnsafePathError(FormatError):
    """A name taken from data that would place a file outside its directory."""


def unsafe_name_reason(name: object) -> str | None:
    """Why ``name`` is not a plain file name (``None`` when it is one).

    Checks the name alone; :func:`safe_child` also checks where it resolves.
    """
    if not isinstance(name, str):
        return f"expected a string, got {type(name).__name__}"
    if not name:
        return "is empty"
    if name in (".", ".."):
        return f"{name!r} names a directory, not a file"
    if "\x00" in name:
        return f"{name!r} contains a NUL character"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return f"{name!r} contains a control character"
    separators = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if any(s in name for s in separators):
        return f"{name!r} contains a path separator"
    if os.path.isabs(name):
        return f"{name!r} is an absolute path"
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        return f"{name[:40]!r}... is longer than {NAME_MAX} bytes"
    return None


def safe_child(
    directory: str | Path,
    name: str,
    what: str | None = None,
    *,
    source: str | Path | None = None,
    line: int | None = None,
) -> Path:
    """``directory / name``, refusing any ``name`` that would resolve outside ``directory``.

    Args:
        directory: the folder the file belongs in (need not exist yet).
        name: the file name built from data (e.g. ``f"qid{qid}.npz"``).
        what: the field the name comes from (``qid``, ``vid``, ...), for the error.
        source: the file of the record, for the error.
        line: the line of the record in ``source``, for the error.

    Returns:
        ``Path(directory) / name`` (not resolved: symbolic links inside are kept as given).

    Raises:
        UnsafePathError: ``name`` is not a plain file name, or ``directory / name`` resolves
            (following links) outside ``directory``.
    """
    directory = Path(directory)
    reason = unsafe_name_reason(name)
    if reason is None:
        child = directory / name
        root = directory.resolve()
        resolved = child.resolve()
        if resolved == root or not resolved.is_relative_to(root):
            reason = f"{name!r} resolves to {resolved}, outside {directory}"
    if reason is not None:
        raise UnsafePathError(
            source,
            line,
            what,
            f"refused as a file name in {directory}: {reason}",
            _HINT,
        )
    return child


__all__ = ["NAME_MAX", "UnsafePathError", "safe_child", "unsafe_name_reason"]
