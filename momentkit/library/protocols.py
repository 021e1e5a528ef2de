"""What the library needs from a predictor (:class:`momentkit.inference.predictor.Predictor`
fits; tests use small fakes)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from momentkit.inference.results import QueryResult, VideoEncoding


class EncodingPredictor(Protocol):
    """Encodes videos into per-clip features and localises queries in them."""

    def encode_video(self, path: str | Path, *, max_clips: int | None = ...) -> VideoEncoding:
        """The video's per-clip feature streams (``max_clips``: refuse a longer video before
        decoding it, ``None``: no limit; the library checks its own limit first and passes
        ``None``)."""
        ...

    def predict(
        self,
        video: VideoEncoding,
        queries: list[str],
        *,
        top_k: int = 10,
        min_relevance: float | None = None,
    ) -> list[QueryResult]:
        """Moments (best first) and per-clip saliency of each query in one encoded video; with
        ``min_relevance``, only moments whose calibrated relevance reaches it."""
        ...
