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
from collections.abc import Iterable
from pathlib import Path

from momentkit.utils.errors import FormatError, OutputError

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


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name one file: the same inode where both exist (hard and
    symbolic links included), else the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return Path(a).resolve() == Path(b).resolve()


def refuse_overwriting_inputs(
    outputs: Iterable[tuple[str, str | Path | None]],
    inputs: Iterable[tuple[str, str | Path | None]],
) -> None:
    """Refuse before any work when an output file is one of the command's input files.

    Writing the output would replace the input (the ground truth, the annotations, the video):
    ``momentkit evaluate preds.jsonl gt.jsonl --out gt.jsonl`` must not destroy ``gt.jsonl``.

    Args:
        outputs: ``(option, path)`` of every file the command will write (``None``: not given).
        inputs: ``(option, path)`` of every file it reads (``None``: not given); folders are
            skipped (an output file cannot replace a folder).

    Raises:
        OutputError: naming both options and the file, and how to fix it.
    """
    given = [(name, Path(path)) for name, path in inputs if path is not None]
    for out_name, out in outputs:
        if out is None:
            continue
        out = Path(out)
        for in_name, source in given:
            if not source.is_dir() and same_file(out, source):
                raise OutputError(
                    f"{out_name} {out} is the input {in_name} {source}: writing it would "
                    "replace the input. Give the output another file name"
                )


__all__ = [
    "NAME_MAX",
    "UnsafePathError",
    "refuse_overwriting_inputs",
    "safe_child",
    "same_file",
    "unsafe_name_reason",
]
