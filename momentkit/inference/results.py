"""What a :class:`~momentkit.inference.predictor.Predictor` reads and returns.

- :class:`VideoEncoding`: a video's per-clip features, computed once and searched with any
  number of queries;
- :class:`Moment`: one retrieved span, in seconds of the video;
- :class:`QueryResult`: the moments (best first) and per-clip saliency of one query.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Moment:
    """A span of the video that matches a query.

    Attributes:
        start, end: seconds from the start of the video, ``0 <= start < end <= duration``.
        score: the predictor's raw confidence (higher is better; its scale depends on the
            predictor: a foreground probability for trained models, a saliency contrast for
            the zero-shot predictor). Use ``relevance`` to compare or threshold.
        relevance: calibrated relevance in [0, 1], comparable across videos, queries and
            predictors (:mod:`momentkit.inference.calibration`); ``None`` when the predictor
            has no calibration.
    """

    start: float
    end: float
    score: float
    relevance: float | None = None

    @property
    def length(self) -> float:
        """``end - start`` in seconds."""
        return self.end - self.start

    def to_dict(self) -> dict[str, float | None]:
        """``{"start", "end", "score", "relevance"}``, JSON-ready, full precision."""
        return {
            "start": float(self.start),
            "end": float(self.end),
            "score": float(self.score),
            "relevance": None if self.relevance is None else float(self.relevance),
        }

    def to_window(self) -> list[float]:
        """``[start, end, score]``, the row format of ``pred_relevant_windows``."""
        return [float(self.start), float(self.end), float(self.score)]


@dataclass
class QueryResult:
    """The answer to one query.

    Attributes:
        query: the query text.
        moments: the retrieved moments, best first.
        saliency: ``(T,)`` float32 highlight score of each clip (clip ``i`` covers
            ``[i * clip_len, min((i + 1) * clip_len, duration))``).
        clip_len: seconds per clip.
        duration: seconds of video.
        min_relevance: the threshold applied to ``moments`` (``None``: none); moments below it
            were dropped.
        best_relevance: the highest relevance any proposed moment had before the threshold
            (``None`` without calibration).
    """

    query: str
    moments: list[Moment]
    saliency: np.ndarray
    clip_len: float
    duration: float
    min_relevance: float | None = None
    best_relevance: float | None = None

    @property
    def no_confident_match(self) -> bool:
        """True when a threshold was applied and no moment reached it: the video holds no
        confident match for the query."""
        return self.min_relevance is not None and not self.moments

    @property
    def num_clips(self) -> int:
        """``T``, the number of clips scored."""
        return int(len(self.saliency))

    def clip_times(self) -> np.ndarray:
        """``(T,)`` centre of each clip in seconds (the last clip ends at ``duration``)."""
        starts = np.arange(self.num_clips) * self.clip_len
        ends = np.minimum(starts + self.clip_len, self.duration)
        return (starts + ends) / 2

    def to_dict(self, decimals: int | None = None) -> dict[str, Any]:
        """A JSON-ready dict: ``query``, ``moments`` (list of dicts), ``saliency`` (list),
        ``clip_len``, ``duration``, ``min_relevance``, ``best_relevance`` and
        ``no_confident_match``. Numbers keep full (float64) precision unless ``decimals`` is
        given: zero-shot scores can be 1e-4 apart."""

        def r(x: float | None) -> float | None:
            if x is None:
                return None
            return float(x) if decimals is None else round(float(x), decimals)

        return {
            "query": self.query,
            "moments": [{k: r(v) for k, v in m.to_dict().items()} for m in self.moments],
            "saliency": [r(x) for x in np.asarray(self.saliency, dtype=np.float64).tolist()],
            "clip_len": float(self.clip_len),
            "duration": r(self.duration),
            "min_relevance": self.min_relevance,
            "best_relevance": r(self.best_relevance),
            "no_confident_match": self.no_confident_match,
        }


@dataclass
class VideoEncoding:
    """A video's features, one row per clip, for every stream a predictor needs.

    Attributes:
        path: the video file (or another label of where the features came from).
        duration: seconds of video.
        clip_len: seconds per clip.
        streams: stream name -> ``(T, D)`` float32 features; streams may differ by a clip or two
            in ``T`` (extractors disagree at the end); predictors cut them to the shortest.
    """

    path: str
    duration: float
    clip_len: float
    streams: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Raises :class:`~momentkit.utils.errors.FormatError` (a ``ValueError``) naming the
        field: a clip length that is not a finite number > 0, a duration that is not a finite
        number >= 0, streams that are not a dict of ``(clips, channels)`` arrays."""
        from momentkit.utils.errors import FormatError

        where = self.path if isinstance(self.path, str) else None
        for name, low in (("clip_len", "> 0"), ("duration", ">= 0")):
            value = getattr(self, name)
            ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(
                value, bool
            )
            if ok and math.isfinite(value) and (value > 0 if name == "clip_len" else value >= 0):
                continue
            raise FormatError(
                where,
                None,
                name,
                f"must be a finite number of seconds {low}, got {value!r}",
                "A damaged or foreign encoding: encode the video again with Predictor.encode_video",
            )
        if not isinstance(self.streams, dict):
            raise FormatError(
                where,
                None,
                "streams",
                f"must be a dict of stream name -> (clips, channels) array, got "
                f"{type(self.streams).__name__}",
            )
        for name, array in self.streams.items():
            if np.ndim(array) != 2:
                raise FormatError(
                    where,
                    None,
                    "streams",
                    f"stream '{name}' has shape {np.shape(array)}; expected (clips, channels)",
                )

    @property
    def num_clips(self) -> int:
        """``T``: clips present in every stream (0 without streams)."""
        return min((len(a) for a in self.streams.values()), default=0)

    def slice(self, first: int, last: int) -> VideoEncoding:
        """Clips ``first .. last - 1`` as a video of their own (times restart at 0).

        Its duration is that of the clips, the last one cut at this video's end.
        """
        if not 0 <= first < last <= self.num_clips:
            raise ValueError(f"bad clip range [{first}, {last}) of {self.num_clips} clips")
        end = min(last * self.clip_len, self.duration)
        return VideoEncoding(
            path=f"{self.path}[{first}:{last}]",
            duration=max(end - first * self.clip_len, 0.0),
            clip_len=self.clip_len,
            streams={k: v[first:last] for k, v in self.streams.items()},
        )
