"""What the web server does, without HTTP: list, resolve and search videos.

Videos are named by opaque ids, never by paths: ``u-<hex>`` for uploads
(:class:`~momentkit.serving.uploads.UploadStore`) and ``l-<n>`` for videos of the library. A
library video is only served when its file is a video file inside one of the library's indexed
folders. Models are loaded on the first search, so the page is up at once; one search runs at
a time (the models use every core anyway).
"""

from __future__ import annotations

import inspect
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from momentkit.inference.results import VideoEncoding
from momentkit.library.engine import SearchEngine
from momentkit.library.files import is_video_name
from momentkit.library.library import Library
from momentkit.library.protocols import EncodingPredictor
from momentkit.library.store import VideoRecord
from momentkit.serving.uploads import UploadStore
from momentkit.utils.errors import MomentkitError

LIBRARY_ID = re.compile(r"l-([1-9][0-9]{0,17})")


class NotFound(Exception):
    """No video with that id (or one that may not be served)."""


class ThresholdUnsupported(MomentkitError):
    """A relevance threshold was asked of a predictor without calibrated relevance."""


def _threshold(func: Callable[..., Any], min_relevance: float | None) -> dict[str, Any]:
    """``{"min_relevance": ...}`` for ``func`` when a threshold is asked (``{}`` otherwise)."""
    if min_relevance is None:
        return {}
    if "min_relevance" not in inspect.signature(func).parameters:
        raise ThresholdUnsupported(
            "this server's predictor gives no calibrated relevance; search without a minimum"
        )
    return {"min_relevance": min_relevance}


@dataclass(frozen=True)
class VideoRef:
    """A video the server may show.

    Attributes:
        id: ``u-<hex>`` or ``l-<n>``.
        name: display name.
        source: ``"upload"`` or ``"library"``.
        path: the file (never sent to clients).
        duration: seconds.
        record: the library record (library videos only).
    """

    id: str
    name: str
    source: str
    path: Path
    duration: float
    record: VideoRecord | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON for clients: id, name, source, duration and the URL of the file."""
        return {
            "id": self.id,
            "name": self.name,
            "source": self.source,
            "duration": round(self.duration, 3),
            "url": f"/api/videos/{self.id}/file",
        }


class VideoService:
    """The server's state: uploads, the optional library and the (lazily loaded) models.

    Args:
        uploads: the upload folder.
        library: an indexed library, or ``None`` for upload-only mode.
        load_predictor: builds the predictor (upload-only mode).
        load_engine: builds the library's search engine (library mode; its predictor is then
            used for uploads too).
        cache_size: video encodings kept in memory.
    """

    def __init__(
        self,
        uploads: UploadStore,
        library: Library | None = None,
        *,
        load_predictor: Callable[[], EncodingPredictor] | None = None,
        load_engine: Callable[[Library], SearchEngine] | None = None,
        cache_size: int = 8,
    ) -> None:
        if library is not None and load_engine is None:
            raise ValueError("a library needs load_engine")
        if library is None and load_predictor is None:
            raise ValueError("upload-only mode needs load_predictor")
        self.uploads = uploads
        self.library = library
        self._load_predictor = load_predictor
        self._load_engine = load_engine
        self._engine: SearchEngine | None = None
        self._predictor: EncodingPredictor | None = None
        self._model_lock = threading.Lock()  # one model load / one search at a time
        self._cache: OrderedDict[tuple[str, int, int], VideoEncoding] = OrderedDict()
        self.cache_size = cache_size
        if library is not None:
            library.vector_index()  # built now, so the first query does not wait for it

    # -- models ------------------------------------------------------------------------------

    def engine(self) -> SearchEngine | None:
        """The library's search engine (``None`` without a library); loaded on first use."""
        if self.library is None:
            return None
        if self._engine is None:
            assert self._load_engine is not None
            self._engine = self._load_engine(self.library)
        return self._engine

    def predictor(self) -> EncodingPredictor:
        """The predictor of single-video searches; loaded on first use."""
        if self._predictor is None:
            engine = self.engine()
            if engine is not None:
                self._predictor = engine.predictor
            else:
                assert self._load_predictor is not None
                self._predictor = self._load_predictor()
        return self._predictor

    # -- videos ------------------------------------------------------------------------------

    def videos(self) -> list[VideoRef]:
        """Uploads (newest first), then the library's videos (by path)."""
        refs = [VideoRef(u.id, u.name, "upload", u.path, u.duration) for u in self.uploads.list()]
        if self.library is not None:
            refs += [self._library_ref(r) for r in self.library.store.videos()]
        return refs

    def _library_ref(self, record: VideoRecord) -> VideoRef:
        return VideoRef(
            f"l-{record.id}", record.name, "library", record.path, record.duration, record
        )

    def resolve(self, video_id: str) -> VideoRef:
        """The video with this id, if it may be served.

        Raises:
            NotFound: malformed or unknown id, a missing file, or a library file that is not a
                video inside an indexed folder.
        """
        upload = self.uploads.get(video_id)
        if upload is not None:
            return VideoRef(upload.id, upload.name, "upload", upload.path, upload.duration)
        match = LIBRARY_ID.fullmatch(video_id)
        if match is None or self.library is None:
            raise NotFound(video_id)
        record = self.library.store.video(int(match.group(1)))
        if record is None or not self._servable(record.path):
            raise NotFound(video_id)
        return self._library_ref(record)

    def _servable(self, path: Path) -> bool:
        """A video file inside one of the library's indexed folders."""
        assert self.library is not None
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return False
        roots = [r.resolve() for r in self.library.store.roots()]
        return (
            real.is_file()
            and is_video_name(real)
            and any(real.is_relative_to(root) for root in roots)
        )

    # -- search ------------------------------------------------------------------------------

    def _encoding(self, ref: VideoRef) -> VideoEncoding:
        engine = self.engine()
        if ref.record is not None and engine is not None:
            return engine.encoding(ref.record)
        st = ref.path.stat()
        key = (str(ref.path), st.st_size, st.st_mtime_ns)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        encoding = self.predictor().encode_video(ref.path)
        self._cache[key] = encoding
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return encoding

    def search_video(
        self,
        video_id: str,
        queries: list[str],
        top_k: int,
        min_relevance: float | None = None,
    ) -> dict[str, Any]:
        """Moments and saliency of each query in one video (JSON-ready, full precision); with
        ``min_relevance``, only moments whose calibrated relevance reaches it.

        Raises:
            NotFound: no such video.
            ThresholdUnsupported: ``min_relevance`` with a predictor that has no calibration.
        """
        ref = self.resolve(video_id)
        start = time.perf_counter()
        with self._model_lock:
            encoding = self._encoding(ref)
            predictor = self.predictor()
            kwargs = _threshold(predictor.predict, min_relevance)
            results = predictor.predict(encoding, queries, top_k=top_k, **kwargs)
        return {
            "video": ref.to_dict(),
            "results": [r.to_dict() for r in results],
            "seconds": round(time.perf_counter() - start, 3),
        }

    def search_library(
        self, query: str, top_k: int, n_videos: int, min_relevance: float | None = None
    ) -> dict[str, Any]:
        """The best moments across the library (JSON-ready; ids instead of paths).

        Raises:
            NotFound: the server has no library.
            ThresholdUnsupported: ``min_relevance`` with a predictor that has no calibration.
        """
        if self.library is None:
            raise NotFound("library")
        with self._model_lock:
            engine = self.engine()
            assert engine is not None
            kwargs = _threshold(engine.query, min_relevance)
            result = engine.query(query, top_k=top_k, n_videos=n_videos, **kwargs)
        data = result.to_dict()
        for item in data["moments"] + data["videos"]:
            item.pop("path", None)
            vid = item.pop("video_id")
            item["video"] = f"l-{vid}"
            item["url"] = f"/api/videos/l-{vid}/file"
        return data
