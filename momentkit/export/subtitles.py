"""Subtitles: SubRip (``.srt``) and WebVTT (``.vtt``), one file per video.

Every moment is a cue over its span: the query on the first line, ``#rank · relevance`` on the
second, so a player shows which query matches while the moment plays (cues of several queries
may overlap; players stack them). Times are written to the millisecond, as both formats allow.

The text is made safe for each format: whitespace runs become single spaces (a blank line
would end the cue); WebVTT escapes ``&``, ``<`` and ``>`` as character references (so ``-->``
cannot appear); SubRip has no escapes, so ``-->`` in a query is written ``->``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from momentkit.export.cues import Cue, cues
from momentkit.export.model import Answer
from momentkit.utils.io import atomic_open


def timestamp(seconds: float, separator: str) -> str:
    """``HH:MM:SS<separator>mmm`` of ``seconds`` rounded to the millisecond."""
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{separator}{ms:03d}"


def _lines(cue: Cue) -> tuple[str, str]:
    return cue.query, f"#{cue.rank} · {cue.label}"


def srt_text(answers: Sequence[Answer]) -> str:
    """The SubRip file of one video's answers."""
    blocks = []
    for i, cue in enumerate(cues(answers), start=1):
        query, info = (line.replace("-->", "->") for line in _lines(cue))
        span = f"{timestamp(cue.start, ',')} --> {timestamp(cue.end, ',')}"
        blocks.append(f"{i}\n{span}\n{query}\n{info}\n")
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def vtt_text(answers: Sequence[Answer]) -> str:
    """The WebVTT file of one video's answers."""
    blocks = ["WEBVTT\n"]
    for i, cue in enumerate(cues(answers), start=1):
        query, info = (_vtt_escape(line) for line in _lines(cue))
        span = f"{timestamp(cue.start, '.')} --> {timestamp(cue.end, '.')}"
        blocks.append(f"{i}\n{span}\n{query}\n{info}\n")
    return "\n".join(blocks)


def write_srt(path: Path, answers: Sequence[Answer], document: dict[str, Any]) -> None:
    """Write one video's moments as SubRip cues."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(srt_text(answers))


def write_vtt(path: Path, answers: Sequence[Answer], document: dict[str, Any]) -> None:
    """Write one video's moments as WebVTT cues."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(vtt_text(answers))
