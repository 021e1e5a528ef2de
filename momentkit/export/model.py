"""What the writers read: each query's moments in each video, ready to write.

An :class:`Answer` is one query in one video: the moments found there (best first, ranked),
the per-clip saliency and the relevance threshold outcome. Both ``momentkit search`` (several
queries in several videos) and ``momentkit query`` (a query over a library: its best moments
spread over candidate videos) reduce to a list of answers, so every format is written by one
writer for both commands.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from momentkit.inference.results import QueryResult
    from momentkit.library.search import LibraryResult
    from momentkit.video.cut import Cut

Qid = int | str


@dataclass
class ExportMoment:
    """One moment as written.

    Attributes:
        rank: 1 = best (within the video for ``search``; across the library for ``query``).
        start, end: seconds of the video.
        score: the predictor's raw score (``query``: the cross-video ranking score).
        relevance: calibrated relevance in [0, 1], or ``None`` without calibration.
        clip: the exported clip, when one was cut (its real span may exceed the moment).
        extra: further numbers of the moment (``query``: ``moment_score``, ``video_score``).
    """

    rank: int
    start: float
    end: float
    score: float
    relevance: float | None = None
    clip: Cut | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, full precision; ``clip`` as ``{"path", "start", "end"}`` when cut."""
        row: dict[str, Any] = {
            "rank": self.rank,
            "start": float(self.start),
            "end": float(self.end),
            "score": float(self.score),
            "relevance": None if self.relevance is None else float(self.relevance),
            **{k: float(v) for k, v in self.extra.items()},
        }
        if self.clip is not None:
            row["clip"] = {
                "path": str(self.clip.path),
                "start": float(self.clip.start),
                "end": float(self.clip.end),
            }
            if getattr(self.clip, "instead_of", None) is not None:
                row["clip"]["instead_of"] = str(self.clip.instead_of)  # an existing file kept
        return row


@dataclass
class Answer:
    """One query's moments in one video.

    Attributes:
        qid: the query's id (from the queries file, else its number).
        query: the text.
        video: the video file as given.
        vid: the video's id (its file stem, see :func:`~momentkit.export.paths.video_ids`).
        duration: seconds of video.
        clip_len: seconds per saliency clip.
        saliency: ``(T,)`` per-clip saliency.
        moments: best first.
        min_relevance: the relevance threshold applied (``None``: none).
        best_relevance: the best relevance before the threshold (``None``: not calibrated).
    """

    qid: Qid
    query: str
    video: str
    vid: str
    duration: float
    clip_len: float
    saliency: list[float]
    moments: list[ExportMoment]
    min_relevance: float | None = None
    best_relevance: float | None = None

    @property
    def no_confident_match(self) -> bool:
        """A threshold was applied and no moment of this video reached it."""
        return self.min_relevance is not None and not self.moments


def from_results(
    video: str, vid: str, qids: Sequence[Qid], results: Sequence[QueryResult]
) -> list[Answer]:
    """The answers of ``Predictor.predict`` on one video (one per query, in order)."""
    return [
        Answer(
            qid=qid,
            query=r.query,
            video=video,
            vid=vid,
            duration=float(r.duration),
            clip_len=float(r.clip_len),
            saliency=[float(x) for x in r.saliency],
            moments=[
                ExportMoment(i, m.start, m.end, m.score, getattr(m, "relevance", None))
                for i, m in enumerate(r.moments, start=1)
            ],
            min_relevance=getattr(r, "min_relevance", None),
            best_relevance=getattr(r, "best_relevance", None),
        )
        for qid, r in zip(qids, results, strict=True)
    ]


def from_library(result: LibraryResult, qid: Qid, vids: dict[str, str]) -> list[Answer]:
    """The answers of one library query: one per candidate video, holding the library's best
    moments that lie in it (ranked across the library) and the video's saliency.

    Args:
        result: the library's answer.
        qid: the query's id.
        vids: video path -> vid (see :func:`~momentkit.export.paths.video_ids`).
    """
    answers: dict[int, Answer] = {}
    for cand, r in result.videos:
        answers[cand.video.id] = Answer(
            qid=qid,
            query=result.query,
            video=str(cand.video.path),
            vid=vids[str(cand.video.path)],
            duration=float(r.duration),
            clip_len=float(r.clip_len),
            saliency=[float(x) for x in r.saliency],
            moments=[],
            min_relevance=getattr(r, "min_relevance", None),
            best_relevance=getattr(r, "best_relevance", None),
        )
    for rank, m in enumerate(result.moments, start=1):
        answer = answers.get(m.video.id)
        if answer is None:  # a moment of a video that is not a candidate: not expected
            continue
        answer.moments.append(
            ExportMoment(
                rank,
                m.start,
                m.end,
                m.score,
                getattr(m, "relevance", None),
                extra={"moment_score": m.moment_score, "video_score": m.video_score},
            )
        )
    return list(answers.values())


def by_video(answers: Sequence[Answer]) -> dict[str, list[Answer]]:
    """``vid -> answers`` in order of first appearance."""
    out: dict[str, list[Answer]] = {}
    for a in answers:
        out.setdefault(a.vid, []).append(a)
    return out
