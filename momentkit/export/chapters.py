"""Chapters: FFmpeg's FFMETADATA file and YouTube-style timestamp lines, one file per video.

``ffmetadata``: one ``[CHAPTER]`` per moment (``TIMEBASE=1/1000``, exact ``START``/``END``
in milliseconds, ``title=#rank query (relevance r)``), by start time; add them to a video
without re-encoding with ``ffmpeg -i video.mp4 -i chapters.txt -map_metadata 1 -codec copy
out.mp4``. Moments of several queries may overlap; chapters then overlap too.

``youtube``: one ``M:SS title`` line per moment start (``H:MM:SS`` from an hour on), by start
time, floored to the second, for a video description. YouTube makes chapters of such lines only
when the first is ``0:00``, so a ``0:00 Start`` line is added when no moment starts in the first
second; its other rules (at least three lines, chapters of 10 s or more) are not enforced.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from momentkit.export.cues import cues
from momentkit.export.model import Answer
from momentkit.utils.io import atomic_open


def _ffmeta_escape(text: str) -> str:
    """FFMETADATA escaping: ``=``, ``;``, ``#``, ``\\`` and newlines get a backslash."""
    return re.sub(r"([=;#\\\n])", r"\\\1", text)


def ffmetadata_text(answers: Sequence[Answer]) -> str:
    """The FFMETADATA chapters of one video's answers."""
    parts = [";FFMETADATA1\n"]
    for cue in cues(answers):
        parts.append(
            "\n[CHAPTER]\nTIMEBASE=1/1000\n"
            f"START={max(0, round(cue.start * 1000))}\nEND={round(cue.end * 1000)}\n"
            f"title={_ffmeta_escape(cue.title)}\n"
        )
    return "".join(parts)


def youtube_time(seconds: float) -> str:
    """``M:SS`` (``H:MM:SS`` from an hour on), floored to the second."""
    s = max(0, math.floor(seconds + 1e-9))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def youtube_text(answers: Sequence[Answer]) -> str:
    """YouTube-style chapter lines of one video's answers."""
    items = cues(answers)
    lines = [f"{youtube_time(c.start)} {c.title}" for c in items]
    if not items or items[0].start >= 1.0:
        lines.insert(0, "0:00 Start")
    return "\n".join(lines) + "\n"


def write_ffmetadata(path: Path, answers: Sequence[Answer], document: dict[str, Any]) -> None:
    """Write one video's moments as FFMETADATA chapters."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(ffmetadata_text(answers))


def write_youtube(path: Path, answers: Sequence[Answer], document: dict[str, Any]) -> None:
    """Write one video's moments as YouTube-style chapter lines."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(youtube_text(answers))
