"""The moments of one video as timed, human-readable cues (shared by subtitles and chapters).

Each moment of each query becomes a cue, sorted by start time: its title says the query, the
rank and the calibrated relevance (or the raw score when there is none). Numbers in titles are
rounded for people to read; the data formats (``json``, ``qvh``, ``csv``) keep full precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from momentkit.export.model import Answer


@dataclass(frozen=True)
class Cue:
    """One moment on a video's timeline.

    Attributes:
        start, end: seconds.
        query: the query text (one line).
        rank: the moment's rank.
        label: ``"relevance 0.62"`` or, without calibration, ``"score 0.00191"``.
    """

    start: float
    end: float
    query: str
    rank: int
    label: str

    @property
    def title(self) -> str:
        """``#1 a person sits down (relevance 0.62)``."""
        return f"#{self.rank} {self.query} ({self.label})"


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) made one space."""
    return " ".join(text.split())


def cues(answers: Sequence[Answer]) -> list[Cue]:
    """The cues of one video's answers, by start time (then end, query order, rank)."""
    out = []
    for order, a in enumerate(answers):
        for m in a.moments:
            label = (
                f"relevance {m.relevance:.2f}"
                if m.relevance is not None
                else f"score {m.score:.3g}"
            )
            out.append(
                (
                    m.start,
                    m.end,
                    order,
                    m.rank,
                    Cue(m.start, m.end, one_line(a.query), m.rank, label),
                )
            )
    out.sort(key=lambda item: item[:4])
    return [item[4] for item in out]
