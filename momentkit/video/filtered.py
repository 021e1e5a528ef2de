"""Frames sampled by libav's own ``fps``, ``scale`` and ``crop`` filters (PyAV filter graphs).

The released feature extractors of QVHighlights, Charades-STA and TACoS (HERO's, Moment-DETR's
``run_on_video``, Lighthouse's ``frame_loaders``) take frames with the FFmpeg command line::

    ffmpeg -i VIDEO -vf fps=F,scale=W:H,crop=S:S:X:Y -f rawvideo -pix_fmt rgb24 pipe:

This module runs the same filters through PyAV's :class:`av.filter.Graph` in one decoding pass
for several frame rates at once (CLIP's 0.5 fps and SlowFast's 30 fps), so the frames are
pixel-identical to the command line's (tested against its output):

- timestamps are shifted by the container's start time, as the command line does;
- ``fps`` picks, for output frame ``k`` (at ``k / F`` s), the last input frame before
  ``(k + 1/2) / F`` s (rounding to the nearest output slot); at the end of the stream it stops
  at the rounded end time, so a 30.7 s video gives ``round(30.7 x 0.5) = 15`` frames at 0.5 fps;
- ``scale`` resizes the shorter side to ``S`` (the longer to ``int(long x S / short)``) with
  libswscale's bicubic filter, converting to RGB in the same call (the ``format=rgb24`` sink
  makes the scaler output RGB directly, as the command line's ``-pix_fmt rgb24`` does);
- ``crop`` keeps the centre ``S x S`` square at ``(int((W - S) / 2), int((H - S) / 2))``.

Each distinct decoded frame is scaled once, however many branches (or duplicates, when
``fps`` raises the rate) use it: ``fps`` only selects and repeats frames, so scaling after it
gives the same pixels as scaling inside the chain.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from momentkit.video.decode import (
    REENCODE_HINT,
    VideoError,
    _decode,
    declared_duration,
    open_video,
)


@dataclass(frozen=True)
class FpsBranch:
    """One ``fps -> scale -> crop`` chain.

    Attributes:
        fps: output frame rate (``Fraction`` or float; e.g. ``0.5`` or ``30``).
        size: shorter side after scaling and side of the centre crop (224).
        crop: take the centre ``size x size`` square (``False``: keep the scaled frame).
    """

    fps: float | Fraction
    size: int = 224
    crop: bool = True


@dataclass(frozen=True)
class SourceInfo:
    """What the filters need to know about the source, as ``ffprobe`` reports it.

    Attributes:
        path: the file.
        width, height: coded frame size (before rotation).
        duration: the video stream's declared duration in seconds (``ffprobe``'s stream
            ``duration``, rounded to microseconds), or ``None``.
        avg_fps: the stream's average frame rate (``avg_frame_rate``), ``None`` if unknown.
        frames: the stream's declared frame count (``nb_frames``), ``None`` if unknown.
        start: the container's start time in seconds (subtracted from every timestamp).
    """

    path: Path
    width: int
    height: int
    duration: float | None
    avg_fps: Fraction | None
    frames: int | None
    start: float


def scaled_size(width: int, height: int, size: int) -> tuple[int, int]:
    """``(W, H)`` with the shorter side ``size`` and the longer ``int(long x size / short)``
    (truncated, as the reference extractors compute it)."""
    if height >= width:
        return size, int(height * size / width)
    return int(width * size / height), size


def crop_origin(width: int, height: int, size: int) -> tuple[int, int]:
    """Top-left corner ``(x, y)`` of the centre ``size`` square of a ``width x height`` frame."""
    return int((width - size) / 2.0), int((height - size) / 2.0)


def source_info(path: str | Path) -> SourceInfo:
    """Read the stream facts the filters depend on.

    Raises:
        VideoError: missing file, unreadable container, no video stream, unsupported codec.
    """
    path = Path(path)
    container, stream = open_video(path)
    try:
        duration = declared_duration(stream, path)
        rate = stream.average_rate
        start = container.start_time
        return SourceInfo(
            path=path,
            width=int(stream.codec_context.width),
            height=int(stream.codec_context.height),
            duration=round(duration, 6) if duration is not None else None,
            avg_fps=Fraction(rate) if rate else None,
            frames=int(stream.frames) or None,
            start=float(start) / 1e6 if start is not None else 0.0,
        )
    finally:
        container.close()


@dataclass(frozen=True)
class Sampled:
    """One output frame of a branch.

    Attributes:
        branch: the branch's name.
        index: its position in the branch's output (0, 1, ...).
        time: its output timestamp in seconds (``index / fps`` from the first).
        source_time: timestamp (seconds, after the start-time shift) of the decoded frame.
        rgb: ``(S, S, 3)`` uint8 (or the scaled size without crop).
    """

    branch: str
    index: int
    time: float
    source_time: float
    rgb: np.ndarray


def _drain(graph: Any) -> Iterator[Any]:
    import av

    while True:
        try:
            yield graph.pull()
        except (av.error.BlockingIOError, BlockingIOError, av.error.EOFError, EOFError):
            return


class _Scaler:
    """``scale -> crop -> format=rgb24`` for frames of one source size (one graph per call
    shape), caching the last few results by decoded buffer so duplicates are scaled once."""

    def __init__(self, stream: Any, width: int, height: int, size: int, crop: bool) -> None:
        self.stream, self.width, self.height = stream, width, height
        self.size, self.crop = size, crop
        self.cache: OrderedDict[tuple[int, ...], tuple[Any, np.ndarray]] = OrderedDict()
        self._graph: Any = None
        self._graph_key: tuple[Any, ...] | None = None

    def _build(self, frame: Any) -> Any:
        import av

        w, h = scaled_size(self.width, self.height, self.size)
        graph = av.filter.Graph()
        src = graph.add_buffer(
            width=frame.width,
            height=frame.height,
            format=frame.format.name,
            time_base=self.stream.time_base,
        )
        chain = [src, graph.add("scale", f"{w}:{h}:flags=bicubic")]
        if self.crop:
            x, y = crop_origin(w, h, self.size)
            chain.append(graph.add("crop", f"{self.size}:{self.size}:{x}:{y}"))
        chain += [graph.add("format", "rgb24"), graph.add("buffersink")]
        for a, b in zip(chain, chain[1:], strict=False):
            a.link_to(b)
        graph.configure()
        return graph

    def __call__(self, frame: Any) -> np.ndarray:
        key = tuple(p.buffer_ptr for p in frame.planes) + (frame.width, frame.height)
        hit = self.cache.get(key)
        if hit is not None:
            self.cache.move_to_end(key)
            return hit[1]
        shape = (frame.width, frame.height, frame.format.name)
        if self._graph is None or self._graph_key != shape:
            self._graph, self._graph_key = self._build(frame), shape
        self._graph.push(frame)
        (out,) = list(_drain(self._graph))
        rgb = out.to_ndarray()
        # holding the frame keeps its buffer alive, so its address cannot be reused meanwhile
        self.cache[key] = (frame, rgb)
        if len(self.cache) > 4:
            self.cache.popitem(last=False)
        return rgb


class FilteredFrames:
    """Decode a video once and yield the frames of several ``fps -> scale -> crop`` branches.

    Args:
        path: the video.
        branches: name -> :class:`FpsBranch`.
        threads: decoder threads (0: FFmpeg chooses, 1: the calling thread only).

    Attributes:
        info: the :class:`SourceInfo`.
        last: after iterating, branch name -> the video's last decoded frame as that branch
            scales and crops it.

    Iterating yields :class:`Sampled` frames in decoding order (each branch's frames in order).

    Raises:
        VideoError: the file cannot be opened or decoded, or holds no decodable frame.
    """

    def __init__(
        self, path: str | Path, branches: Mapping[str, FpsBranch], threads: int = 1
    ) -> None:
        if not branches:
            raise ValueError("FilteredFrames needs at least one branch")
        self.path = Path(path)
        self.branches = dict(branches)
        self.threads = threads
        self.info = source_info(self.path)
        self.last: dict[str, np.ndarray] = {}
        #: decoded buffer -> its timestamp, for the source time of each output frame
        self._source_times: dict[tuple[int, ...], float] = {}

    def _fps_graph(self, stream: Any, fps: float | Fraction) -> Any:
        import av

        graph = av.filter.Graph()
        src = graph.add_buffer(template=stream)
        rate = Fraction(fps).limit_denominator(1_000_000)
        node = graph.add("fps", f"fps={rate.numerator}/{rate.denominator}")
        sink = graph.add("buffersink")
        src.link_to(node)
        node.link_to(sink)
        graph.configure()
        return graph

    def __iter__(self) -> Iterator[Sampled]:
        container, stream = open_video(self.path)
        try:
            if self.threads != 1:
                stream.thread_type = "AUTO"
                stream.codec_context.thread_count = self.threads
            yield from self._run(container, stream)
        finally:
            container.close()

    def _run(self, container: Any, stream: Any) -> Iterator[Sampled]:
        tb = stream.time_base
        offset = 0
        if container.start_time is not None:  # the command line starts the clock at 0
            offset = int(math.floor(Fraction(container.start_time, 1_000_000) / tb + 0.5))
        graphs = {name: self._fps_graph(stream, b.fps) for name, b in self.branches.items()}
        scalers: dict[tuple[int, bool], _Scaler] = {}
        for b in self.branches.values():
            key = (b.size, b.crop)
            if key not in scalers:
                scalers[key] = _Scaler(stream, self.info.width, self.info.height, b.size, b.crop)
        counts = dict.fromkeys(self.branches, 0)
        last_pts = None
        last_frame = None
        decoded = 0

        def emit(name: str, frames: Iterator[Any]) -> Iterator[Sampled]:
            branch = self.branches[name]
            for out in frames:
                rgb = scalers[(branch.size, branch.crop)](out)
                index = counts[name]
                counts[name] += 1
                yield Sampled(
                    name,
                    index,
                    float(out.pts * out.time_base) if out.pts is not None else math.nan,
                    self._source_times.get(_buffer_key(out), math.nan),
                    rgb,
                )

        self._source_times.clear()
        for frame in _decode(container, stream, self.path):
            if frame.pts is None:  # no timestamp: one tick after the previous frame
                frame.pts = last_pts + 1 if last_pts is not None else 0
            else:
                frame.pts -= offset
            last_pts = frame.pts
            last_frame = frame
            decoded += 1
            self._remember(frame)
            for name, graph in graphs.items():
                graph.push(frame)
                yield from emit(name, _drain(graph))
        if decoded == 0:
            raise VideoError(self.path, "the video stream holds no decodable frame", REENCODE_HINT)
        for name, graph in graphs.items():
            graph.push(None)
            yield from emit(name, _drain(graph))
        self.last = {  # the last decoded frame as each branch scales it
            name: scalers[(b.size, b.crop)](last_frame) for name, b in self.branches.items()
        }

    def _remember(self, frame: Any) -> None:
        self._source_times[_buffer_key(frame)] = float(frame.pts * frame.time_base)
        if len(self._source_times) > 256:
            self._source_times.pop(next(iter(self._source_times)))


def _buffer_key(frame: Any) -> tuple[int, ...]:
    return tuple(p.buffer_ptr for p in frame.planes)
