"""Atomic file writes and JSON Lines reading/writing with precise error locations."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from momentkit.utils.errors import FormatError, OutputError, describe_os_error


def _file_kind(mode: int) -> str:
    """``a folder``, ``a character device``, ... for ``stat`` mode bits."""
    for test, kind in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def output_target(path: str | Path) -> Path:
    """The file that writing ``path`` must replace: ``path`` itself, or, for a symbolic link,
    the file it points to (links are written through, never replaced by a file).

    Raises:
        OutputError: ``path`` (or its link target) exists and is not a regular file (a folder,
            a device such as ``/dev/full``, a FIFO, a socket), or cannot be inspected.
    """
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    via = f" (the link points to {target})" if target != path else ""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return target
    except OSError as e:
        raise _output_error(path, target, e, "write here") from None
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(
            f"{path}: is {_file_kind(st.st_mode)}, not a regular file{via}. Give the path of a "
            "file to write"
        )
    return target


def output_error(path: str | Path, e: OSError, doing: str = "write") -> OutputError:
    """An :class:`OutputError` naming ``path`` for a file-system error met writing it."""
    return _output_error(Path(path), Path(path), e, doing)


def _output_error(path: Path, target: Path, e: OSError, doing: str) -> OutputError:
    via = f" (through the link to {target})" if target != path else ""
    problem = e.strerror or str(e)
    hint = describe_os_error(e).partition(". ")[2]
    return OutputError(f"{path}: cannot {doing}{via}: {problem}" + (f". {hint}" if hint else ""))


#: write errors of the file system, raised while the caller writes (not of the caller's inputs)
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS})


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[Any]:
    """Open a temporary file beside ``path`` and rename it over ``path`` on success.

    A crash part-way leaves the old file (or no file) in place, never a truncated one. A
    symbolic link is written through: its target is replaced (atomically, the temporary file
    beside the target) and the link stays. The file keeps the permissions of the file it
    replaces (new files get those of a plain ``open``).

    Raises:
        OutputError: ``path`` is a folder, a device, a FIFO or another non-regular file, or it
            cannot be written (permissions, read-only or full file system), naming ``path``.
    """
    path = Path(path)
    target = output_target(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _output_error(path, target, e, f"create its folder {target.parent}") from None
    try:
        old_mode = stat.S_IMODE(os.stat(target).st_mode) if target.exists() else None
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise _output_error(path, target, e, "write") from None
    try:
        os.chmod(tmp, default_file_mode() if old_mode is None else old_mode)
        try:
            with os.fdopen(fd, mode, **kwargs) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # also the close's flush, which would replace a flush's error
            if e.errno in _WRITE_ERRNOS and not isinstance(e, OutputError):
                raise _output_error(path, target, e, "write") from None
            raise
        try:
            os.replace(tmp, target)
        except OSError as e:
            raise _output_error(path, target, e, "replace the file") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@functools.cache
def default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give: 0o666 less the process umask.

    ``mkstemp`` creates files readable by their owner only; files renamed into place get this
    mode instead. Read once (reading the umask means setting it, which is not thread-safe).
    """
    umask = os.umask(0)
    os.umask(umask)
    return (
        stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH
    ) & ~umask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str | Path, obj: Any, indent: int | None = 4) -> None:
    """Write ``obj`` as JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def _decode_error(
    path: Path, data: bytes, e: UnicodeDecodeError, first_line: int = 1
) -> FormatError:
    """A FormatError naming the line and column of the first byte that is not UTF-8."""
    line = first_line + data.count(b"\n", 0, e.start)
    column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    return FormatError(
        path,
        line,
        None,
        f"not UTF-8 text (byte 0x{data[e.start]:02x} at column {column}: {e.reason})",
        "Save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
    )


def _check_input_file(path: Path, what: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise FormatError(path, None, None, f"is a folder, not {what}", "Give the file's path")


def read_text(path: str | Path, what: str = "a text file") -> str:
    """The UTF-8 text of ``path``.

    Raises:
        FileNotFoundError: no such file.
        FormatError: ``path`` is a folder, or not UTF-8 (naming the line and column).
    """
    path = Path(path)
    _check_input_file(path, what)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _decode_error(path, data, e) from None


def read_json(path: str | Path, what: str = "a JSON file") -> Any:
    """The JSON value stored in ``path``.

    Raises:
        FileNotFoundError: no such file.
        FormatError: a folder, not UTF-8, or invalid JSON (naming the line and column).
    """
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise FormatError(
            path, e.lineno, None, f"invalid JSON at column {e.colno}: {e.msg}"
        ) from None
    except RecursionError:
        raise FormatError(path, None, None, "JSON nested too deeply") from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON Lines file.

    Raises:
        FileNotFoundError: no such file.
        FormatError: naming the file and line of invalid JSON, of a non-object row or of bytes
            that are not UTF-8; ``path`` is a folder.
    """
    path = Path(path)
    _check_input_file(path, "a JSON Lines file")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _decode_error(path, raw, e, lineno) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise FormatError(
                    path,
                    lineno,
                    None,
                    f"invalid JSON at column {e.colno}: {e.msg}",
                    "Each line must hold one complete JSON object",
                ) from None
            except RecursionError:
                raise FormatError(path, lineno, None, "JSON nested too deeply") from None
            if not isinstance(obj, dict):
                raise FormatError(
                    path, lineno, None, f"expected a JSON object, got {type(obj).__name__}"
                )
            yield lineno, obj


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read every object of a JSON Lines file (see :func:`iter_jsonl`)."""
    return [obj for _, obj in iter_jsonl(path)]


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write ``rows`` as JSON Lines atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
