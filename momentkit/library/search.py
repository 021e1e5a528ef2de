"""Two-stage search of a library (``momentkit query``).

1. **Coarse retrieval**: the query's retrieval vector is compared with every clip vector of the
   library (:class:`~momentkit.library.vectors.VectorIndex`); the ``n_clips`` best clips vote
   for their videos, each video scored by its best clip, and the ``n_videos`` best videos are
   the candidates.
2. **Localisation**: the predictor (zero-shot by default, a trained checkpoint if given) finds
   the moments of the query in each candidate video, from the video's stored features (or from
   a fresh encoding when the predictor needs other features than the library holds).

Ranking across videos: a predictor's moment scores are relative to their video (the zero-shot
contrast is measured against the video's own median; a DETR confidence is a per-video softmax),
so they are not comparable between videos. Each moment is therefore ranked by its calibrated
relevance (:mod:`momentkit.inference.calibration`: the share of unrelated reference captions it
beats, the same scale for every video), then by its *span relevance*, the mean similarity
between the query and the clips inside the moment in the library's retrieval space; the
predictor's score is reported as ``moment_score``. The predictor decides where moments are, the
calibration and the shared space decide which are best across the library. With
``min_relevance``, moments below it are dropped; a query left with none has no confident match
in the library.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from momentkit.encoders.base import Encoder
from momentkit.inference.results import QueryResult, VideoEncoding
from momentkit.library.library import Library
from momentkit.library.protocols import EncodingPredictor
from momentkit.library.store import VideoRecord


@dataclass
class VideoCandidate:
    """A video chosen by coarse retrieval.

    Attributes:
        video: its record.
        score: the best similarity of one of its clips to the query.
        hits: how many of its clips were among the ``n_clips`` best of the library.
    """

    video: VideoRecord
    score: float
    hits: int


@dataclass
class LibraryMoment:
    """One moment of the library's answer.

    Attributes:
        video: the video it is in.
        start, end: seconds.
        score: span relevance in the retrieval space (comparable across videos).
        moment_score: the predictor's score of the moment (comparable within its video).
        video_score: the coarse score of its video.
        relevance: calibrated relevance in [0, 1] (the first ranking key), or ``None`` when the
            predictor has no calibration.
    """

    video: VideoRecord
    start: float
    end: float
    score: float
    moment_score: float
    video_score: float
    relevance: float | None = None

    def to_dict(self, decimals: int | None = None) -> dict[str, Any]:
        """JSON-ready: ``video_id``, ``path``, ``name``, ``start``, ``end`` (rounded to
        ``decimals`` when given), the scores and the relevance at full precision (zero-shot
        scores can be 1e-4 apart)."""
        return {
            "video_id": self.video.id,
            "path": str(self.video.path),
            "name": self.video.name,
            "start": self.start if decimals is None else round(self.start, decimals),
            "end": self.end if decimals is None else round(self.end, decimals),
            "score": float(self.score),
            "moment_score": float(self.moment_score),
            "video_score": float(self.video_score),
            "relevance": None if self.relevance is None else float(self.relevance),
        }


@dataclass
class LibraryResult:
    """The answer to one library query.

    Attributes:
        query: the text.
        moments: the best moments across videos, best first.
        videos: each candidate with the predictor's full result for it (moments + saliency).
        timings: seconds per stage, in order: ``load`` (building the engine's models, when the
            engine reports it), ``embed`` (the query's vector), ``coarse`` (vector search),
            ``localise`` (the predictor on every candidate, calibration included) and ``total``
            (their sum).
        min_relevance: the threshold applied (``None``: none).
    """

    query: str
    moments: list[LibraryMoment]
    videos: list[tuple[VideoCandidate, QueryResult]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    min_relevance: float | None = None

    @property
    def no_confident_match(self) -> bool:
        """True when a threshold was applied and no moment of any video reached it."""
        return self.min_relevance is not None and not self.moments

    @property
    def best_relevance(self) -> float | None:
        """The best relevance of any candidate's moments before the threshold."""
        values = [r.best_relevance for _, r in self.videos if r.best_relevance is not None]
        return max(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``query``, ``moments``, ``videos`` (with saliency) and ``timings``."""
        return {
            "query": self.query,
            "moments": [m.to_dict() for m in self.moments],
            "videos": [
                {
                    "video_id": c.video.id,
                    "name": c.video.name,
                    "path": str(c.video.path),
                    "score": float(c.score),
                    "hits": c.hits,
                    **{k: v for k, v in r.to_dict().items() if k != "query"},
                }
                for c, r in self.videos
            ],
            "timings": dict(self.timings),
            "min_relevance": self.min_relevance,
            "best_relevance": self.best_relevance,
            "no_confident_match": self.no_confident_match,
        }


def vote_videos(
    scores: np.ndarray, video_ids: np.ndarray, n_videos: int
) -> list[tuple[int, float, int]]:
    """Group clip hits by video: ``[(video_id, best score, hits), ...]``, best first.

    Args:
        scores: ``(N,)`` clip scores, best first.
        video_ids: ``(N,)`` the video of each clip.
        n_videos: videos kept.
    """
    best: dict[int, list[float]] = {}
    for score, vid in zip(scores.tolist(), video_ids.tolist()):
        entry = best.setdefault(int(vid), [float(score), 0])
        entry[0] = max(entry[0], float(score))
        entry[1] += 1
    ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
    return [(vid, s, int(h)) for vid, (s, h) in ranked[:n_videos]]


def span_relevance(relevance: np.ndarray, clip_len: float, start: float, end: float) -> float:
    """Mean of the per-clip ``(T,)`` relevance over the clips that ``[start, end]`` overlaps.

    Clip ``i`` covers ``[i * clip_len, (i + 1) * clip_len)``; at least one clip is used.
    """
    if not len(relevance):
        return 0.0
    first = min(max(int(math.floor(start / clip_len + 1e-6)), 0), len(relevance) - 1)
    last = min(max(int(math.ceil(end / clip_len - 1e-6)), first + 1), len(relevance))
    return float(np.mean(relevance[first:last]))


def coarse_candidates(
    library: Library, vector: np.ndarray, n_clips: int = 200, n_videos: int = 5
) -> list[VideoCandidate]:
    """Stage 1: the ``n_videos`` videos whose clips are most similar to the query vector.

    Args:
        library: the library.
        vector: ``(D,)`` the query's retrieval vector.
        n_clips: clips taken from the vector index.
        n_videos: candidates kept.
    """
    scores, video_ids, _ = library.search_clips(vector, n_clips)
    candidates = []
    for vid, score, hits in vote_videos(scores, video_ids, n_videos):
        record = library.store.video(vid)
        if record is not None:  # deleted since the index was built
            candidates.append(VideoCandidate(record, score, hits))
    return candidates


def search_library(
    library: Library,
    query: str,
    predictor: EncodingPredictor,
    encoder: Encoder,
    *,
    top_k: int = 10,
    n_clips: int = 200,
    n_videos: int = 5,
    encode: Callable[[VideoRecord], VideoEncoding] | None = None,
    min_relevance: float | None = None,
) -> LibraryResult:
    """Answer ``query`` over the whole library (see the module doc).

    Args:
        library: the library.
        query: the text.
        predictor: localises the query in each candidate video.
        encoder: the library's encoder, for the query's retrieval vector.
        top_k: moments returned (and asked of the predictor per video).
        n_clips: clips taken from the vector index.
        n_videos: candidate videos localised.
        encode: features of a candidate for ``predictor``; by default the library's stored
            features (right for the zero-shot predictor of the library's encoder).
        min_relevance: keep only moments whose calibrated relevance reaches this.
    """
    if top_k < 1 or n_clips < 1 or n_videos < 1:
        raise ValueError(f"top_k, n_clips, n_videos must be >= 1, got {top_k, n_clips, n_videos}")
    t0 = time.perf_counter()
    vector = library.space.query_vectors(encoder, [query])[0]
    t1 = time.perf_counter()
    candidates = coarse_candidates(library, vector, n_clips, n_videos)
    t2 = time.perf_counter()
    result = LibraryResult(query, [], min_relevance=min_relevance)
    for cand in candidates:
        encoding = encode(cand.video) if encode else library.encoding(cand.video.id)
        kwargs = {} if min_relevance is None else {"min_relevance": min_relevance}
        answer = predictor.predict(encoding, [query], top_k=top_k, **kwargs)[0]
        relevance = library.clip_relevance(cand.video.id, vector)
        result.videos.append((cand, answer))
        for m in answer.moments:
            result.moments.append(
                LibraryMoment(
                    video=cand.video,
                    start=float(m.start),
                    end=float(m.end),
                    score=span_relevance(relevance, cand.video.clip_len, m.start, m.end),
                    moment_score=float(m.score),
                    video_score=cand.score,
                    relevance=m.relevance,
                )
            )
    result.moments.sort(
        key=lambda m: (
            -(m.relevance if m.relevance is not None else -1.0),
            -m.score,
            -m.moment_score,
            m.video.id,
            m.start,
        )
    )
    del result.moments[top_k:]
    t3 = time.perf_counter()
    result.timings = {"embed": t1 - t0, "coarse": t2 - t1, "localise": t3 - t2, "total": t3 - t0}
    return result
