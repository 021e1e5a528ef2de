"""A library together with the models that answer queries over it.

:class:`SearchEngine` owns the library's encoder (for query vectors) and the predictor that
localises moments: the zero-shot predictor of the library's own encoder by default, sharing the
encoder's loaded models, or a trained checkpoint's. Candidate videos are localised from the
features stored in the library when they cover what the predictor reads (same streams, same
clip length); otherwise, e.g. for a checkpoint trained on other streams, the video file is
encoded again by the predictor (the last few such encodings are kept in memory).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from momentkit.encoders.base import Encoder
from momentkit.inference.results import VideoEncoding
from momentkit.library.library import Library
from momentkit.library.search import LibraryResult, search_library
from momentkit.library.store import VideoRecord


def needed_streams(predictor: Any) -> tuple[str, ...]:
    """The video streams ``predictor`` reads (its ``video_streams``; empty if it does not say)."""
    return tuple(getattr(predictor, "video_streams", ()) or ())


class SearchEngine:
    """Answers queries over a library.

    Args:
        library: the library.
        encoder: the library's encoder (computes query vectors).
        predictor: localises queries in candidate videos (``encode_video`` + ``predict``).
        cache_size: encodings kept in memory for predictors that cannot use stored features.
    """

    def __init__(
        self, library: Library, encoder: Encoder, predictor: Any, cache_size: int = 8
    ) -> None:
        self.library = library
        self.encoder = encoder
        self.predictor = predictor
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, int, int], VideoEncoding] = OrderedDict()
        self._lock = threading.Lock()
        #: seconds :meth:`load` took to build the models (reported once, by the first query)
        self.load_seconds: float | None = None

    @classmethod
    def load(
        cls,
        library: Library,
        *,
        checkpoint: str | Path | None = None,
        checkpoint_encoders: Sequence[str] | None = None,
        device: str = "cpu",
    ) -> SearchEngine:
        """Build the models: the library's encoder, and the zero-shot predictor on it, or the
        checkpoint's predictor.

        Args:
            library: the library.
            checkpoint: a trained run (default: zero-shot).
            checkpoint_encoders: specs of the encoders that made the checkpoint's training
                features, when their stream names do not say (e.g. ``clip:<model>``). The
                checkpoint's encoder is shared for query vectors when it is the library's.
            device: torch device.

        Raises:
            LibraryError: nothing was ever indexed into the library.
        """
        import time

        from momentkit.encoders import build_encoder
        from momentkit.inference.predictor import Predictor

        start = time.perf_counter()
        spec = library.space.spec  # LibraryError when nothing was ever indexed
        clip_len = library.clip_len
        if checkpoint is None:
            encoder = build_encoder(spec, device=device)
            predictor = Predictor.zero_shot(encoder, clip_len=clip_len, device=device)
        else:
            given = list(checkpoint_encoders) if checkpoint_encoders else None
            predictor = Predictor.from_checkpoint(checkpoint, device=device, encoder=given)
            shared = [e for e in predictor.encoders if e.name == spec]
            encoder = shared[0] if shared else build_encoder(spec, device=device)
        text_model = getattr(type(encoder), "text_model", None)
        if isinstance(text_model, property):  # offline encoders load it lazily: load it now,
            _ = encoder.text_model  # so that ``load`` in the timings holds its cost
        engine = cls(library, encoder, predictor)
        engine.load_seconds = time.perf_counter() - start
        return engine

    def encoding(self, video: VideoRecord) -> VideoEncoding:
        """The features of ``video`` the predictor reads: stored ones when they fit, else a
        fresh (cached) encoding of the file."""
        streams = needed_streams(self.predictor)
        predictor_clip_len = getattr(self.predictor, "clip_len", video.clip_len)
        stored = self.library.store.streams(video.id)
        if (
            streams
            and set(streams) <= set(stored)
            and math.isclose(float(predictor_clip_len), video.clip_len)
        ):
            return VideoEncoding(str(video.path), video.duration, video.clip_len, stored)
        key = (str(video.path), video.size, video.mtime_ns)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        # an indexed video passed the index's clip limit when it was added
        encoding = self.predictor.encode_video(video.path, max_clips=None)
        with self._lock:
            self._cache[key] = encoding
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return encoding

    def query(
        self,
        text: str,
        *,
        top_k: int = 10,
        n_clips: int = 200,
        n_videos: int = 5,
        min_relevance: float | None = None,
    ) -> LibraryResult:
        """The best moments for ``text`` across the library (see :mod:`.search`); the first
        query's timings include ``load``, the seconds :meth:`load` took."""
        result = search_library(
            self.library,
            text,
            self.predictor,
            self.encoder,
            top_k=top_k,
            n_clips=n_clips,
            n_videos=n_videos,
            encode=self.encoding,
            min_relevance=min_relevance,
        )
        if self.load_seconds is not None:
            result.timings = {"load": self.load_seconds, **result.timings}
            result.timings["total"] += self.load_seconds
            self.load_seconds = None
        return result
