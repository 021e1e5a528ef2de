"""Decoding videos into per-clip RGB frames with PyAV.

Frames are chosen by presentation time (``pts * time_base``), never by index, so variable
frame rate videos are sampled correctly: the frame for instant ``t`` is the one on screen at
``t`` (the last frame whose timestamp is ``<= t``). Rotation metadata (the display matrix) is
applied, so a phone video shot upright decodes upright. A video is decoded once, in a single
pass, for every consumer (encoder) at the same time; each states how many frames per clip it
wants and at which size (:class:`FrameRequest`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from momentkit.utils.errors import MomentkitError
from momentkit.video.sampling import num_clips, sample_times

REENCODE_HINT = "Re-encode it, e.g. `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`"


class VideoError(MomentkitError):
    """A file that cannot be decoded as a video; the message names the file and the cause."""

    def __init__(self, path: str | Path, problem: str, hint: str = "") -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" + (f". {hint}" if hint else ""))


@dataclass(frozen=True)
class FrameRequest:
    """How one consumer wants its frames.

    Attributes:
        frames_per_clip: ``K``, frames sampled evenly inside each clip (1 = the clip centre).
        short_side: resize so that the shorter side has this many pixels (aspect ratio kept);
            ``None`` keeps the decoded size.
    """

    frames_per_clip: int = 1
    short_side: int | None = None

    def __post_init__(self) -> None:
        if self.frames_per_clip < 1:
            raise ValueError(f"frames_per_clip must be >= 1, got {self.frames_per_clip}")
        if self.short_side is not None and self.short_side < 1:
            raise ValueError(f"short_side must be >= 1, got {self.short_side}")


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` learns about a video.

    Attributes:
        path: the file.
        duration: seconds covered by the video stream.
        width, height: displayed size in pixels (after rotation).
        rotation: counter-clockwise degrees applied for display (0, 90, 180 or 270).
        fps: average frame rate, ``None`` when the container does not tell.
        codec: decoder name, e.g. ``h264``.
    """

    path: Path
    duration: float
    width: int
    height: int
    rotation: int
    fps: float | None
    codec: str


def open_video(path: Path) -> tuple[Any, Any]:
    """Open ``path`` with PyAV: ``(container, its first video stream)``; close the container.

    Raises:
        VideoError: missing file, unreadable container, no video stream or no decoder.
    """
    import av

    if not path.is_file():
        raise VideoError(path, "no such file")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as e:
        raise VideoError(
            path,
            f"cannot read the file as a video ({ffmpeg_message(e)})",
            "The file is damaged, truncated or not a video",
        ) from None
    streams = container.streams
    if not streams.video:
        held = [f"{len(getattr(streams, k))} {k}" for k in ("audio", "subtitles", "data")]
        held = [h for h in held if not h.startswith("0 ")]
        container.close()
        raise VideoError(
            path,
            f"no video stream (it holds: {', '.join(held) or 'nothing'})",
            "Give a file with a video track",
        )
    stream = streams.video[0]
    if stream.codec_context is None:
        container.close()
        raise VideoError(
            path, "unsupported video codec (FFmpeg has no decoder for it)", REENCODE_HINT
        )
    return container, stream


def ffmpeg_message(e: Exception) -> str:
    """The readable part of a PyAV error."""
    return getattr(e, "strerror", None) or str(e)


def stream_start(stream: Any) -> float | None:
    """Seconds of the stream's first timestamp (``None`` when the container does not say)."""
    if stream.start_time is None:
        return None
    return float(stream.start_time * stream.time_base)


REMUX_HINT = (
    "Remux or re-encode it to rewrite its header, e.g. `ffmpeg -i IN -c copy OUT.mp4` "
    "(or `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`)"
)


class DamagedVideoError(VideoError):
    """A video whose header declares an impossible duration (infinite, NaN or negative)."""


def declared_duration(stream: Any, path: str | Path | None = None) -> float | None:
    """The video stream's duration as the file states it (MP4 header, Matroska tag), if any.

    The one place a declared duration is read (``probe``, cutting, filtered decoding), so a
    damaged header is refused the same way everywhere.

    Raises:
        DamagedVideoError: the file declares a duration that is infinite, NaN or negative.
    """
    where = path if path is not None else getattr(getattr(stream, "container", None), "name", "")
    if stream.duration:
        seconds = float(stream.duration * stream.time_base)
        _check_declared(where, seconds, f"stream duration {stream.duration}")
        return seconds
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if tag:  # Matroska: "HH:MM:SS.nnnnnnnnn"
        try:
            h, m, sec = tag.split(":")
            seconds = int(h) * 3600 + int(m) * 60 + float(sec)
        except (ValueError, OverflowError):
            return None
        _check_declared(where, seconds, f"Matroska DURATION tag {tag.strip()!r}")
        return seconds
    return None


def _check_declared(path: str | Path, seconds: float, source: str) -> None:
    """Refuse a declared duration that is not a finite number >= 0 (a damaged header)."""
    if not (math.isfinite(seconds) and seconds >= 0):
        raise DamagedVideoError(
            path,
            f"the file declares a duration of {seconds:g} s ({source}), which is not a finite "
            "number of seconds >= 0: its header is damaged",
            REMUX_HINT,
        )


def _scan_duration(container: Any, stream: Any) -> float | None:
    """Seconds from the first to the end of the last video packet (demuxing only, no decoding)."""
    first = end = None
    for packet in container.demux(stream):
        if packet.pts is None:
            continue
        first = packet.pts if first is None else min(first, packet.pts)
        end = max(end or packet.pts, packet.pts + (packet.duration or 0))
    if first is None or end is None:
        return None
    return float((end - first) * stream.time_base)


def _rotation(frame: Any) -> int:
    """The display rotation of ``frame`` rounded to a multiple of 90 degrees, in [0, 360)."""
    degrees = getattr(frame, "rotation", 0) or 0
    return int(round(degrees / 90.0)) % 4 * 90


def probe(path: str | Path) -> VideoInfo:
    """Read a video's duration, displayed size, rotation, frame rate and codec.

    The duration is the video stream's own as the file declares it (not the container's, which
    counts audio too); when the file does not state it, it is measured by reading the packets.

    Raises:
        VideoError: missing file, unreadable container, no video stream, unsupported codec,
            or no decodable frame.
    """
    path = Path(path)
    container, stream = open_video(path)
    try:
        duration = declared_duration(stream, path)
        if duration is None:
            duration = _scan_duration(container, stream)
            container.seek(0)
        frame = next(_decode(container, stream, path), None)
        if frame is None:
            raise VideoError(path, "the video stream holds no decodable frame", REENCODE_HINT)
        if duration is None:  # a single frame without timing
            duration = 0.0
        rotation = _rotation(frame)
        w, h = frame.width, frame.height
        if rotation in (90, 270):
            w, h = h, w
        rate = stream.average_rate or stream.guessed_rate
        return VideoInfo(
            path=path,
            duration=duration,
            width=w,
            height=h,
            rotation=rotation,
            fps=float(rate) if rate else None,
            codec=stream.codec_context.name,
        )
    finally:
        container.close()


def _decode(container: Any, stream: Any, path: Path) -> Iterator[Any]:
    """Decoded frames of ``stream``; FFmpeg errors become VideoError naming ``path``."""
    import av

    it = container.decode(stream)
    while True:
        try:
            frame = next(it)
        except StopIteration:
            return
        except av.FFmpegError as e:
            raise VideoError(
                path, f"decoding failed ({ffmpeg_message(e)})", "The file is damaged"
            ) from None
        yield frame


def _resized_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    if short_side is None:
        return width, height
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def frame_to_rgb(frame: Any, short_side: int | None = None, rotation: int = 0) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB array of a PyAV frame, resized and turned upright.

    Args:
        frame: an ``av.VideoFrame``.
        short_side: resize so that the shorter side has this many pixels (``None``: keep).
        rotation: counter-clockwise degrees (a multiple of 90) to rotate by for display.
    """
    w, h = _resized_size(frame.width, frame.height, short_side)
    interpolation = "AREA" if w * h < frame.width * frame.height else "BICUBIC"
    rgb = frame.to_ndarray(width=w, height=h, format="rgb24", interpolation=interpolation)
    if rotation:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))
    return rgb


class ClipReader:
    """Decodes one video in a single pass and yields every clip's frames for several consumers.

    Args:
        path: the video file.
        clip_len: seconds per clip.
        requests: consumer name -> :class:`FrameRequest`; empty or ``None`` means
            ``{"rgb": FrameRequest()}``.
        threads: decoder threads (0 lets FFmpeg choose; 1 decodes on the calling thread only).

    Attributes:
        info: the :class:`VideoInfo` read when the reader is made.
        num_clips: ``T = ceil(duration / clip_len)``.
        times: consumer name -> ``(T, K)`` sampling instants in seconds.

    Iterating yields, for each clip in order, ``{name: (K, H, W, 3) uint8}``.

    Raises:
        VideoError: when the file cannot be opened (at construction) or decoding fails or the
            data ends more than a clip before the duration the file declares (while iterating).
    """

    def __init__(
        self,
        path: str | Path,
        clip_len: float = 2.0,
        requests: Mapping[str, FrameRequest] | None = None,
        threads: int = 1,
    ) -> None:
        from momentkit.utils.memory import bounded_large_allocations

        bounded_large_allocations()  # frame buffers off the heap: memory flat on long videos
        self.path = Path(path)
        self.clip_len = float(clip_len)
        self.requests = dict(requests or {"rgb": FrameRequest()})
        self.threads = threads
        self.info = probe(self.path)
        self.num_clips = num_clips(self.info.duration, self.clip_len)
        self.times = {
            name: sample_times(self.info.duration, self.clip_len, req.frames_per_clip)
            for name, req in self.requests.items()
        }

    def __len__(self) -> int:
        return self.num_clips

    def _targets(self) -> list[tuple[float, int, str, int]]:
        """Every sampling instant as ``(time, clip, name, k)``, in time order."""
        targets = [
            (float(t), clip, name, k)
            for name, times in self.times.items()
            for clip, row in enumerate(times)
            for k, t in enumerate(row)
        ]
        targets.sort()
        return targets

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        buffers = {n: [None] * r.frames_per_clip for n, r in self.requests.items()}
        for _, group in itertools.groupby(self._sampled(), key=lambda s: s[0]):
            for _, name, k, rgb in group:
                buffers[name][k] = rgb
            yield {name: np.stack(frames) for name, frames in buffers.items()}

    def _sampled(self) -> Iterator[tuple[int, str, int, np.ndarray]]:
        """``(clip, name, k, frame (H, W, 3))`` for every sampling instant, in time order."""
        container, stream = open_video(self.path)
        try:
            if self.threads != 1:
                stream.thread_type = "AUTO"
                stream.codec_context.thread_count = self.threads
            yield from self._sample(container, stream)
        finally:
            container.close()

    def _convert(self, frame: Any, name: str, cache: dict[int | None, np.ndarray]) -> np.ndarray:
        """``frame`` as ``name`` wants it, converted once per size (cached in ``cache``)."""
        size = self.requests[name].short_side
        if size not in cache:
            cache[size] = frame_to_rgb(frame, size, self.info.rotation)
        return cache[size]

    def _sample(self, container: Any, stream: Any) -> Iterator[tuple[int, str, int, np.ndarray]]:
        targets = self._targets()
        start = stream_start(stream)
        fallback_dt = 1.0 / self.info.fps if self.info.fps else 0.0
        shown, shown_end = None, 0.0  # the frame on screen at the current time, and its end
        cache: dict[int | None, np.ndarray] = {}
        i = 0
        for frame in _decode(container, stream, self.path):
            if frame.pts is None:  # no timestamp: assume it follows the previous frame
                t = shown_end
            else:
                if start is None:
                    start = float(frame.time)
                t = float(frame.time) - start
            while i < len(targets) and targets[i][0] < t:
                _, clip, name, k = targets[i]
                # instants before the first frame get the first frame
                source, src_cache = (shown, cache) if shown is not None else (frame, {})
                yield clip, name, k, self._convert(source, name, src_cache)
                i += 1
            if i == len(targets):
                return
            shown, cache = frame, {}
            shown_end = t + (
                float(frame.duration * frame.time_base) if frame.duration else fallback_dt
            )
        if shown is None:
            raise VideoError(self.path, "the video stream holds no decodable frame", REENCODE_HINT)
        if self.info.duration - shown_end > self.clip_len:
            raise VideoError(
                self.path,
                f"video data ends at {shown_end:.2f} s but the file declares "
                f"{self.info.duration:.2f} s",
                "The file is truncated or damaged; re-download or re-encode it",
            )
        for _, clip, name, k in targets[i:]:  # the tail: the last frame stays on screen
            yield clip, name, k, self._convert(shown, name, cache)


def decode_clips(
    path: str | Path,
    clip_len: float = 2.0,
    frames_per_clip: int = 1,
    short_side: int | None = None,
) -> np.ndarray:
    """All clips' frames of a video at once: ``(T, K, H, W, 3)`` uint8.

    Convenience for short videos and tests; use :class:`ClipReader` to stream long ones.
    """
    reader = ClipReader(path, clip_len, {"rgb": FrameRequest(frames_per_clip, short_side)})
    return np.stack([clip["rgb"] for clip in reader])
