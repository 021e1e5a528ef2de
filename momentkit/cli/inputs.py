"""What ``momentkit search`` and ``momentkit query`` read: video paths and globs, queries from
the command line and from queries files.

A queries file is either plain text, one query per line (blank lines and lines starting with
``#`` are skipped), or, when its name ends in ``.jsonl``, QVHighlights JSON Lines: one object
per line with ``query`` (required), ``qid`` and ``vid`` (optional; a ``vid`` pairs the query
with the video of that id). Errors name the file and line.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from momentkit.utils.errors import FormatError, MomentkitError

Qid = int | str
GLOB_CHARS = "*?["


@dataclass(frozen=True)
class Query:
    """One query to answer.

    Attributes:
        text: the query.
        qid: its id: the ``qid`` of its JSONL row, else its number among all queries (1, 2, ...).
        vid: the video it belongs to (JSONL ``vid``), or ``None``: every video.
        where: where it was given (``"query argument 2"``, ``"queries.txt:7"``), for messages.
        in_file: it came from a queries file.
    """

    text: str
    qid: Qid
    vid: str | None = None
    where: str = "the command line"
    in_file: bool = False


def _decoded_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of every line of ``path``, decoded as UTF-8 (BOM allowed)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MomentkitError(f"{path}: no such queries file") from None
    except OSError as e:
        raise MomentkitError(f"{path}: cannot read the queries file ({e.strerror})") from None
    out = []
    for lineno, raw in enumerate(data.splitlines(), start=1):
        try:
            text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError:
            problem, hint = "not UTF-8 text", "Save the file as UTF-8"
            raise FormatError(path, lineno, None, problem, hint) from None
        out.append((lineno, text))
    return out


def _text_queries(path: Path) -> list[tuple[str, Qid | None, str | None, str]]:
    rows = []
    for lineno, line in _decoded_lines(path):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("{") and text.endswith("}"):
            raise FormatError(
                path,
                lineno,
                None,
                "this line looks like a JSON object",
                "Name the file .jsonl to read it as QVHighlights JSON Lines",
            )
        rows.append((text, None, None, f"{path}:{lineno}"))
    return rows


def _jsonl_queries(path: Path) -> list[tuple[str, Qid | None, str | None, str]]:
    from momentkit.utils.io import iter_jsonl

    rows = []
    for lineno, obj in iter_jsonl(path):
        text = obj.get("query")
        if not isinstance(text, str) or not text.strip():
            problem = "missing" if text is None else f"expected non-empty text, got {text!r}"
            raise FormatError(path, lineno, "query", problem, "Each row needs the query text")
        qid = obj.get("qid")
        if qid is not None and (isinstance(qid, bool) or not isinstance(qid, int | str)):
            raise FormatError(path, lineno, "qid", f"expected an integer or string, got {qid!r}")
        vid = obj.get("vid")
        if vid is not None and not isinstance(vid, str):
            raise FormatError(path, lineno, "vid", f"expected a string, got {vid!r}")
        rows.append((text.strip(), qid, vid or None, f"{path}:{lineno}"))
    return rows


def collect_queries(texts: Sequence[str], files: Sequence[str]) -> list[Query]:
    """The queries of the command line, then of each queries file, with their ids.

    Raises:
        MomentkitError: an empty query, a bad or empty file, a repeated qid, or no query at all.
    """
    rows: list[tuple[str, Qid | None, str | None, str]] = []
    for i, text in enumerate(texts, start=1):
        if not text.strip():
            raise MomentkitError(f"query argument {i} is empty; give some text")
        rows.append((text.strip(), None, None, f"query argument {i}"))
    for name in files:
        path = Path(name)
        found = _jsonl_queries(path) if path.suffix.lower() == ".jsonl" else _text_queries(path)
        if not found:
            raise MomentkitError(f"{path}: the queries file holds no query")
        rows += found
    if not rows:
        raise MomentkitError("no query given: add QUERY arguments or --queries-file FILE")
    queries, seen = [], {}
    for number, (text, qid, vid, where) in enumerate(rows, start=1):
        qid = number if qid is None else qid
        if qid in seen:
            raise MomentkitError(
                f"{where}: qid {qid!r} is already used by {seen[qid]}; query ids must be unique"
            )
        seen[qid] = where
        queries.append(Query(text, qid, vid, where, in_file=number > len(texts)))
    return queries


def expand_videos(patterns: Sequence[str]) -> list[Path]:
    """The video files named by ``patterns``: paths, or globs (``videos/*.mp4``, ``**`` for
    sub-folders) matching video files (sorted). Each file is listed once, in order.

    Raises:
        MomentkitError: a path that is not a file, or a glob that matches no video file.
    """
    from momentkit.library.files import is_video_name

    out: dict[Path, Path] = {}
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if any(c in expanded for c in GLOB_CHARS) and not Path(expanded).exists():
            matches = [
                Path(m)
                for m in sorted(glob.glob(expanded, recursive=True))
                if Path(m).is_file() and is_video_name(m)
            ]
            if not matches:
                raise MomentkitError(f"{pattern}: no video file matches this pattern")
        else:
            path = Path(expanded)
            if not path.is_file():
                what = "is not a file" if path.exists() else "no such file"
                raise MomentkitError(f"{pattern}: {what}")
            matches = [path]
        for m in matches:
            out.setdefault(m.resolve(), m)
    return list(out.values())


def reject_video_paths(queries: Sequence[Query]) -> None:
    """Refuse command-line queries that are video files: an unquoted glob the shell expanded
    (``search videos/*.mp4 "q"`` makes every video but the first a "query").

    Raises:
        MomentkitError: naming the query and the fix.
    """
    from momentkit.library.files import is_video_name

    for q in queries:
        if not q.in_file and is_video_name(q.text) and Path(q.text).is_file():
            raise MomentkitError(
                f"{q.where} {q.text!r} is a video file, not a query: quote a glob so the shell "
                'leaves it to momentkit ("videos/*.mp4"), or add videos with --video'
            )


def pair(
    videos: Sequence[Path], vids: Sequence[str], queries: Sequence[Query]
) -> tuple[list[tuple[Path, str, list[Query]]], list[Query]]:
    """Which queries each video answers: every query without a ``vid``, and those whose
    ``vid`` is the video's.

    Returns:
        ``[(video, vid, queries)]`` for the videos with at least one query, and the queries
        whose ``vid`` matches none of the videos.
    """
    known = set(vids)
    plan = []
    for video, vid in zip(videos, vids, strict=True):
        mine = [q for q in queries if q.vid is None or q.vid == vid]
        if mine:
            plan.append((video, vid, mine))
    unmatched = [q for q in queries if q.vid is not None and q.vid not in known]
    return plan, unmatched
