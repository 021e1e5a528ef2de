"""What the web server does, without HTTP: list, resolve and search videos, within bounds.

Videos are named by opaque ids, never by paths: ``u-<hex>`` for uploads
(:class:`~momentkit.serving.uploads.UploadStore`) and ``l-<n>`` for videos of the library. A
library video is only served when its file is a video file inside one of the library's indexed
folders.

**Bounded work.** No request may hold the server: model work runs in two *lanes*, one job at a
time each, on their own worker threads (the models use every core anyway):

- the *encode* lane decodes and encodes uploads that are not in the cache yet (the slow part);
- the *query* lane answers queries on encoded videos and searches the library (fast), so a long
  encoding never stops searches of videos already encoded.

A search waits for its lane at most ``queue_timeout`` seconds (then :class:`ServiceUnavailable`:
HTTP 503 with ``Retry-After``), and its model work may take at most ``search_timeout`` seconds:
encoding checks a :class:`CancelToken` between batches of clips and stops (HTTP 504), as it
does when the server shuts down. A video of more than ``max_clips`` clips is refused before it
is decoded (HTTP 413): a file of three frames may declare a duration of a thousand hours.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from momentkit.inference.predictor import TooManyClipsError, check_clip_count
from momentkit.inference.results import VideoEncoding
from momentkit.library.engine import SearchEngine
from momentkit.library.files import is_video_name
from momentkit.library.library import Library
from momentkit.library.protocols import EncodingPredictor
from momentkit.library.store import VideoRecord
from momentkit.serving.uploads import UploadRejected, UploadStore
from momentkit.utils.errors import MomentkitError

T = TypeVar("T")
LIBRARY_ID = re.compile(r"l-([1-9][0-9]{0,17})")
#: seconds past its budget that a search's answer waits for its worker to notice the deadline
GRACE_SECONDS = 2.0


class NotFound(Exception):
    """No video with that id (or one that may not be served)."""


class ThresholdUnsupported(MomentkitError):
    """A relevance threshold was asked of a predictor without calibrated relevance."""


class ServiceUnavailable(Exception):
    """The server cannot take this search now (busy, or shutting down): HTTP 503.

    Attributes:
        message: for the user.
        retry_after: seconds after which a retry may succeed (``None``: do not retry).
    """

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class SearchTimeout(Exception):
    """A search's model work ran past its budget and was stopped: HTTP 504."""

    def __init__(self, budget: float) -> None:
        self.message = (
            f"the search took longer than this server's budget of {budget:g} s per search "
            "(--search-timeout) and was stopped; for long videos, index them with `momentkit "
            "index` and search the library"
        )
        super().__init__(self.message)


class SearchCancelled(Exception):
    """A search stopped because its client went away."""


@dataclass(frozen=True)
class ServiceLimits:
    """Bounds on the work one request can cause.

    Attributes:
        max_clips: uploads of more clips are refused (at upload and before encoding; ``None``:
            no limit). Library videos are encoded already and not limited here.
        search_timeout: seconds of model work one search may take before it is stopped.
        queue_timeout: seconds a search may wait while others use the model.
        max_waiting: searches that may wait for one lane at once; more are refused at once.
    """

    max_clips: int | None = 5400
    search_timeout: float = 240.0
    queue_timeout: float = 15.0
    max_waiting: int = 64

    def __post_init__(self) -> None:
        for name in ("search_timeout", "queue_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")
        if self.max_clips is not None and self.max_clips < 1:
            raise ValueError(f"max_clips must be >= 1 or None, got {self.max_clips}")
        if self.max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {self.max_waiting}")


class CancelToken:
    """Stops one search's work: at its deadline, when cancelled, or when the server stops.

    :meth:`check` raises instead of returning when the work must stop; it takes and ignores
    any arguments, so it can be handed to ``Predictor.encode_video`` as the progress callback
    (called between batches of clips).
    """

    def __init__(self, budget: float, stopping: threading.Event) -> None:
        self.budget = budget
        self.deadline: float | None = None
        self._stopping = stopping
        self._cancelled = threading.Event()

    def start(self) -> None:
        """Start the clock (at the first model work, not while waiting for a lane)."""
        if self.deadline is None:
            self.deadline = time.monotonic() + self.budget

    def cancel(self) -> None:
        """Ask the work to stop at its next check."""
        self._cancelled.set()

    def remaining(self) -> float:
        """Seconds left of the budget."""
        if self.deadline is None:
            return self.budget
        return max(self.deadline - time.monotonic(), 0.0)

    def check(self, *_: object) -> None:
        """Raise if the work must stop.

        Raises:
            ServiceUnavailable: the server is shutting down.
            SearchCancelled: cancelled (the client went away).
            SearchTimeout: past the deadline.
        """
        if self._stopping.is_set():
            raise ServiceUnavailable("the server is shutting down")
        if self._cancelled.is_set():
            raise SearchCancelled()
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise SearchTimeout(self.budget)


class _Waiter:
    __slots__ = ("closed", "wake")

    def __init__(self, wake: Callable[[], None]) -> None:
        self.wake = wake
        self.closed = False  # woken by Lane.close, not handed the lane


class Lane:
    """A slot for one model job at a time, handed to waiters in arrival order.

    Threads wait with :meth:`acquire`; coroutines with :meth:`acquire_async`, which holds no
    thread while it waits. Both give up after a timeout.

    Attributes:
        name: ``encode`` or ``query``.
        deadline: ``time.monotonic()`` deadline of the job running now (``None``: unknown).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.deadline: float | None = None
        self._mutex = threading.Lock()
        self._busy = False
        self._closed = False
        self._waiters: collections.deque[_Waiter] = collections.deque()

    @property
    def busy(self) -> bool:
        """Whether a job holds the lane."""
        return self._busy

    @property
    def waiting(self) -> int:
        """Jobs waiting for the lane."""
        return len(self._waiters)

    def close(self) -> None:
        """Refuse every later request and wake every waiter empty-handed (shutdown)."""
        with self._mutex:
            self._closed = True
            waiters = list(self._waiters)
            self._waiters.clear()
            for waiter in waiters:
                waiter.closed = True  # before it can find itself gone from the queue
        for waiter in waiters:
            waiter.wake()

    def _enqueue(self, waiter: _Waiter) -> bool:
        """Take the lane if it is free (``True``), else join the queue (or, once the lane is
        closed, mark ``waiter`` closed)."""
        with self._mutex:
            if self._closed:
                waiter.closed = True
                return False
            if not self._busy:
                self._busy = True
                return True
            self._waiters.append(waiter)
            return False

    def _withdraw(self, waiter: _Waiter) -> bool:
        """Leave the queue (``True``), or ``False`` when the lane was handed over meanwhile."""
        with self._mutex:
            try:
                self._waiters.remove(waiter)
                return True
            except ValueError:
                return False

    def release(self) -> None:
        """Free the lane, or hand it to the first waiter."""
        with self._mutex:
            if not self._waiters:
                self._busy = False
                return
            waiter = self._waiters.popleft()  # stays busy: it is the waiter's now
        waiter.wake()

    def acquire(self, timeout: float) -> bool:
        """Take the lane within ``timeout`` seconds (from a thread); ``False`` if not."""
        event = threading.Event()
        waiter = _Waiter(event.set)
        if self._enqueue(waiter):
            return True
        if waiter.closed or event.wait(timeout):
            return not waiter.closed
        if self._withdraw(waiter):
            return False
        return not waiter.closed  # handed over (or closed) just as the wait ended

    async def acquire_async(self, timeout: float) -> bool:
        """Take the lane within ``timeout`` seconds (from the event loop); ``False`` if not."""
        loop = asyncio.get_running_loop()
        handed: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            _call_soon(loop, _resolve, handed, None, None)

        waiter = _Waiter(wake)
        if self._enqueue(waiter):
            return True
        if waiter.closed:
            return False
        try:
            await asyncio.wait_for(asyncio.shield(handed), timeout)
            return not waiter.closed
        except TimeoutError:
            if self._withdraw(waiter):
                return False
            return not waiter.closed  # handed over (or closed) just as the wait ended
        except asyncio.CancelledError:
            if not self._withdraw(waiter) and not waiter.closed:
                self.release()  # it was ours: pass it on
            raise


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _call_soon(loop: asyncio.AbstractEventLoop, func: Callable[..., None], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(func, *args)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


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
        limits: bounds on the work of one request (default :class:`ServiceLimits`).
    """

    def __init__(
        self,
        uploads: UploadStore,
        library: Library | None = None,
        *,
        load_predictor: Callable[[], EncodingPredictor] | None = None,
        load_engine: Callable[[Library], SearchEngine] | None = None,
        cache_size: int = 8,
        limits: ServiceLimits | None = None,
    ) -> None:
        if library is not None and load_engine is None:
            raise ValueError("a library needs load_engine")
        if library is None and load_predictor is None:
            raise ValueError("upload-only mode needs load_predictor")
        self.uploads = uploads
        self.library = library
        self.limits = limits or ServiceLimits()
        self._load_predictor = load_predictor
        self._load_engine = load_engine
        self._engine: SearchEngine | None = None
        self._predictor: EncodingPredictor | None = None
        self._load_lock = threading.Lock()  # one model load at a time
        self._cache_lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, int, int], VideoEncoding] = OrderedDict()
        self.cache_size = cache_size
        #: set when the server shuts down: running work stops at its next check
        self.stopping = threading.Event()
        self.encode_lane = Lane("encode")
        self.query_lane = Lane("query")
        if library is not None:
            library.vector_index()  # built now, so the first query does not wait for it

    # -- models ------------------------------------------------------------------------------

    def engine(self) -> SearchEngine | None:
        """The library's search engine (``None`` without a library); loaded on first use."""
        if self.library is None:
            return None
        if self._engine is None:
            with self._load_lock:
                if self._engine is None:
                    assert self._load_engine is not None
                    self._engine = self._load_engine(self.library)
        return self._engine

    def predictor(self) -> EncodingPredictor:
        """The predictor of single-video searches; loaded on first use."""
        if self._predictor is None:
            engine = self.engine()
            with self._load_lock:
                if self._predictor is None:
                    if engine is not None:
                        self._predictor = engine.predictor
                    else:
                        assert self._load_predictor is not None
                        self._predictor = self._load_predictor()
        return self._predictor

    def load_models(self, warm_up: bool = True) -> None:
        """Load the models now (the server does, before it listens), and with ``warm_up``
        answer one query on a made-up video and embed one for the library's vector search, so
        that a checkpoint or encoder that cannot answer fails here, with one clear line, not
        at every search.

        Raises:
            MomentkitError: the models cannot be loaded or cannot answer.
        """
        predictor = self.predictor()
        if not warm_up:
            return
        try:
            streams = getattr(predictor, "video_streams", None)
            clip_len = getattr(predictor, "clip_len", None)
            if isinstance(streams, Mapping) and streams and clip_len:
                n = 4
                fake = VideoEncoding(
                    "warm-up",
                    n * float(clip_len),
                    float(clip_len),
                    {s: np.full((n, int(d)), 1.0 / int(d), np.float32) for s, d in streams.items()},
                )
                predictor.predict(fake, ["a person walks"], top_k=1)
            engine = self.engine()
            if engine is not None and self.library is not None:  # the coarse stage (nothing
                # is decoded: a checkpoint reading other streams would re-encode candidates)
                space = self.library.space
                vector = space.query_vectors(engine.encoder, ["a person walks"])[0]
                self.library.search_clips(vector, 10)
        except MomentkitError:
            raise
        except Exception as e:
            raise MomentkitError(
                f"the model was loaded but cannot answer a test query ({type(e).__name__}: {e})"
            ) from e

    def clip_len(self) -> float:
        """Seconds per clip of the videos this server encodes."""
        if self.library is not None:
            return self.library.clip_len
        return float(getattr(self.predictor(), "clip_len", 2.0))

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

    def check_length(self, name: str, duration: float) -> None:
        """Refuse a video to encode of more than ``limits.max_clips`` clips.

        Raises:
            TooManyClipsError: naming the video by ``name`` and the server's setting.
        """
        if self.limits.max_clips is not None:
            check_clip_count(name, duration, self.clip_len(), self.limits.max_clips, "--max-clips")

    def check_upload(self, info: Any, name: str) -> None:
        """The upload check of :meth:`UploadStore.save`: 413 for too many clips."""
        try:
            self.check_length(name, float(info.duration))
        except TooManyClipsError as e:
            raise UploadRejected(413, str(e)) from None

    def delete_upload(self, video_id: str) -> None:
        """Delete an upload (and its cached encoding).

        Raises:
            NotFound: no such upload (library videos are not deleted by the server).
            UploadRejected: the server is read-only (403).
        """
        upload = self.uploads.get(video_id)
        if upload is None:
            raise NotFound(video_id)
        self.uploads.delete(video_id)
        with self._cache_lock:
            for key in [k for k in self._cache if k[0] == str(upload.path)]:
                del self._cache[key]

    # -- model work --------------------------------------------------------------------------

    def token(self) -> CancelToken:
        """A fresh token with this server's budget."""
        return CancelToken(self.limits.search_timeout, self.stopping)

    def _busy(self, lane: Lane) -> ServiceUnavailable:
        wait = self.limits.queue_timeout
        deadline = lane.deadline
        left = deadline - time.monotonic() if deadline is not None else wait
        retry = int(min(max(math.ceil(left), 1), math.ceil(self.limits.search_timeout)))
        what = "encoding another video" if lane.name == "encode" else "answering other searches"
        return ServiceUnavailable(
            f"the model is busy {what}; try again in {retry} s (a search waits at most "
            f"{wait:g} s for it: --queue-timeout)",
            retry,
        )

    def _admit(self, lane: Lane) -> None:
        if self.stopping.is_set():
            raise ServiceUnavailable("the server is shutting down")
        if lane.waiting >= self.limits.max_waiting:
            raise self._busy(lane)

    def _refused(self, lane: Lane) -> ServiceUnavailable:
        if self.stopping.is_set():
            return ServiceUnavailable("the server is shutting down")
        return self._busy(lane)

    def run_sync(self, lane: Lane, token: CancelToken, work: Callable[[], T]) -> T:
        """Run ``work`` on ``lane`` in this thread, waiting for the lane at most
        ``queue_timeout`` seconds.

        Raises:
            ServiceUnavailable: the lane stayed busy, or the server is shutting down.
        """
        self._admit(lane)
        if not lane.acquire(self.limits.queue_timeout):
            raise self._refused(lane)
        try:
            token.start()
            lane.deadline = token.deadline
            token.check()
            return work()
        finally:
            lane.deadline = None
            lane.release()

    async def run_async(self, lane: Lane, token: CancelToken, work: Callable[[], T]) -> T:
        """Run ``work`` on ``lane`` in a worker thread of its own, without holding the event
        loop or a thread while waiting for the lane (at most ``queue_timeout`` seconds).

        The answer is awaited at most ``search_timeout`` (plus a grace) seconds: past that the
        token is cancelled and :class:`SearchTimeout` raised; the lane stays taken until the
        worker notices (work checks the token between batches).

        Raises:
            ServiceUnavailable: the lane stayed busy, or the server is shutting down.
            SearchTimeout: the work ran past its budget.
        """
        self._admit(lane)
        if not await lane.acquire_async(self.limits.queue_timeout):
            raise self._refused(lane)
        token.start()
        lane.deadline = token.deadline
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[T] = loop.create_future()

        def worker() -> None:
            try:
                token.check()
                result = work()
            except BaseException as e:  # handed to the request
                _call_soon(loop, _resolve, answer, None, e)
            else:
                _call_soon(loop, _resolve, answer, result, None)
            finally:
                lane.deadline = None
                lane.release()

        try:
            threading.Thread(target=worker, name=f"momentkit-{lane.name}", daemon=True).start()
        except BaseException:
            lane.deadline = None
            lane.release()
            raise
        give_up = time.monotonic() + token.remaining() + GRACE_SECONDS
        try:
            while True:  # wake up now and then: a shutdown answers at once
                step = min(0.25, max(give_up - time.monotonic(), 0.0))
                try:
                    return await asyncio.wait_for(asyncio.shield(answer), step)
                except TimeoutError:
                    if self.stopping.is_set():
                        token.cancel()
                        raise ServiceUnavailable("the server is shutting down") from None
                    if time.monotonic() >= give_up:
                        token.cancel()
                        raise SearchTimeout(self.limits.search_timeout) from None
        except asyncio.CancelledError:  # the client went away, or the server stops
            token.cancel()
            raise

    def _cached(self, ref: VideoRef) -> tuple[tuple[str, int, int], VideoEncoding | None]:
        st = ref.path.stat()
        key = (str(ref.path), st.st_size, st.st_mtime_ns)
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return key, self._cache[key]
        return key, None

    def _encode(self, ref: VideoRef, token: CancelToken | None = None) -> VideoEncoding:
        """Decode and encode an upload (cached), stopping when ``token`` says so."""
        key, cached = self._cached(ref)
        if cached is not None:
            return cached
        self.check_length(ref.name, ref.duration)
        predictor = self.predictor()
        params = inspect.signature(predictor.encode_video).parameters
        kwargs: dict[str, Any] = {}
        if token is not None and "progress" in params:
            kwargs["progress"] = token.check  # called between batches: raises to stop
        if "max_clips" in params:  # the server's own limit (None: none)
            kwargs["max_clips"] = self.limits.max_clips
        encoding = predictor.encode_video(ref.path, **kwargs)
        with self._cache_lock:
            self._cache[key] = encoding
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return encoding

    def _encoding(self, ref: VideoRef, token: CancelToken | None = None) -> VideoEncoding:
        engine = self.engine()
        if ref.record is not None and engine is not None:
            return engine.encoding(ref.record)
        return self._encode(ref, token)

    def _predict(
        self,
        ref: VideoRef,
        encoding: VideoEncoding | None,
        queries: list[str],
        top_k: int,
        min_relevance: float | None,
        token: CancelToken,
    ) -> list[Any]:
        if encoding is None:
            encoding = self._encoding(ref, token)
        predictor = self.predictor()
        kwargs = _threshold(predictor.predict, min_relevance)
        token.check()
        return predictor.predict(encoding, queries, top_k=top_k, **kwargs)

    def _video_answer(self, ref: VideoRef, results: list[Any], start: float) -> dict[str, Any]:
        return {
            "video": ref.to_dict(),
            "results": [r.to_dict() for r in results],
            "seconds": round(time.perf_counter() - start, 3),
        }

    # -- search ------------------------------------------------------------------------------

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
            TooManyClipsError: an upload over ``max_clips``.
            ServiceUnavailable, SearchTimeout: see :meth:`run_sync`, :class:`CancelToken`.
        """
        ref = self.resolve(video_id)
        start = time.perf_counter()
        token = self.token()
        encoding = None
        if ref.record is None:
            encoding = self.run_sync(self.encode_lane, token, lambda: self._encode(ref, token))
        results = self.run_sync(
            self.query_lane,
            token,
            lambda: self._predict(ref, encoding, queries, top_k, min_relevance, token),
        )
        return self._video_answer(ref, results, start)

    async def search_video_async(
        self,
        video_id: str,
        queries: list[str],
        top_k: int,
        min_relevance: float | None = None,
    ) -> dict[str, Any]:
        """:meth:`search_video` for the event loop: waits hold no thread, and an upload in the
        cache skips the encode lane."""
        from starlette.concurrency import run_in_threadpool

        ref = await run_in_threadpool(self.resolve, video_id)
        start = time.perf_counter()
        token = self.token()
        encoding = None
        if ref.record is None:
            _, encoding = await run_in_threadpool(self._cached, ref)
            if encoding is None:
                await run_in_threadpool(self.check_length, ref.name, ref.duration)
                encoding = await self.run_async(
                    self.encode_lane, token, lambda: self._encode(ref, token)
                )
        results = await self.run_async(
            self.query_lane,
            token,
            lambda: self._predict(ref, encoding, queries, top_k, min_relevance, token),
        )
        return self._video_answer(ref, results, start)

    def _library_work(
        self, query: str, top_k: int, n_videos: int, min_relevance: float | None
    ) -> Callable[[], dict[str, Any]]:
        def work() -> dict[str, Any]:
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

        return work

    def search_library(
        self, query: str, top_k: int, n_videos: int, min_relevance: float | None = None
    ) -> dict[str, Any]:
        """The best moments across the library (JSON-ready; ids instead of paths).

        Raises:
            NotFound: the server has no library.
            ThresholdUnsupported: ``min_relevance`` with a predictor that has no calibration.
            ServiceUnavailable: see :meth:`run_sync`.
        """
        if self.library is None:
            raise NotFound("library")
        work = self._library_work(query, top_k, n_videos, min_relevance)
        return self.run_sync(self.query_lane, self.token(), work)

    async def search_library_async(
        self, query: str, top_k: int, n_videos: int, min_relevance: float | None = None
    ) -> dict[str, Any]:
        """:meth:`search_library` for the event loop."""
        if self.library is None:
            raise NotFound("library")
        work = self._library_work(query, top_k, n_videos, min_relevance)
        return await self.run_async(self.query_lane, self.token(), work)

    def stop(self) -> None:
        """Shut down: running work stops at its next check, waiting and new searches get 503."""
        self.stopping.set()
        self.encode_lane.close()
        self.query_lane.close()

    def wait_idle(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for running work to stop; whether it did."""
        end = time.monotonic() + timeout
        while self.encode_lane.busy or self.query_lane.busy:
            if time.monotonic() >= end:
                return False
            time.sleep(0.02)
        return True

    def close(self) -> None:
        """:meth:`stop`, and close the library."""
        self.stop()
        if self.library is not None:
            self.library.close()
