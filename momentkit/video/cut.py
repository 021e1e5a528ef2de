"""Cutting a moment out of a video as its own file, with PyAV.

By default the cut is a remux (stream copy): packets are copied without re-encoding, which is
fast and lossless but can only start on a keyframe, so the clip starts at the last keyframe at
or before ``start`` (:class:`Cut` reports the span actually written). ``reencode=True``
decodes and re-encodes the video for a frame-accurate start; audio is still copied.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from momentkit.utils.io import default_file_mode
from momentkit.video.decode import (
    VideoError,
    declared_duration,
    ffmpeg_message,
    open_video,
    stream_start,
)


@dataclass(frozen=True)
class Cut:
    """A clip written by :func:`cut_clip`.

    Attributes:
        path: the new file.
        start, end: the span of the source video (seconds) the clip covers.
    """

    path: Path
    start: float
    end: float


def cut_clip(
    src: str | Path,
    start: float,
    end: float,
    dst: str | Path,
    *,
    reencode: bool = False,
    codec: str = "libx264",
) -> Cut:
    """Write seconds ``[start, end)`` of ``src`` to ``dst`` (format from ``dst``'s extension).

    Args:
        src: the source video.
        start, end: seconds from the start of the video; an ``end`` past the video's end
            stops there.
        dst: the output file, written atomically (a crash leaves no partial file).
        reencode: re-encode the video so the clip starts exactly at ``start`` (slower);
            otherwise copy packets, starting at the keyframe at or before ``start``.
        codec: the video encoder used when ``reencode`` is set.

    Returns:
        The written :class:`Cut` with the span it really covers: a stream copy starts on a
        keyframe and may end a few frames after ``end`` (frames reordered for B-frames).

    Raises:
        ValueError: ``start``/``end`` do not give a non-empty span inside the video.
        VideoError: the source cannot be read, or the output cannot be written.
    """
    import av

    src, dst = Path(src), Path(dst)
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
        raise ValueError(f"need 0 <= start < end, got start={start}, end={end}")
    inp, video = open_video(src)
    duration = declared_duration(video)
    if duration is not None and start >= duration:
        inp.close()
        raise ValueError(f"{src}: start {start} s is past the end of the video ({duration:.2f} s)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.stem}.", suffix=dst.suffix, dir=dst.parent)
    os.close(fd)
    os.chmod(tmp, default_file_mode())
    try:
        origin = stream_start(video) or 0.0
        out = av.open(tmp, "w", format=_format_for(dst))
        try:
            if reencode:
                span = _reencode(inp, video, out, origin + start, origin + end, codec, src)
            else:
                span = _remux(inp, video, out, origin + start, origin + end, src)
        finally:
            out.close()
        os.replace(tmp, dst)
    except av.FFmpegError as e:
        raise VideoError(dst, f"cannot write the clip ({ffmpeg_message(e)})") from None
    finally:
        inp.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return Cut(dst, span[0] - origin, span[1] - origin)


def _format_for(dst: Path) -> str | None:
    """The muxer for ``dst``'s extension (None lets FFmpeg guess)."""
    return {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}.get(dst.suffix.lower())


def _seconds(ts: int, time_base: Fraction) -> float:
    return float(ts * time_base)


def _audio_streams(inp: Any, out: Any) -> dict[int, Any]:
    """Input audio stream index -> output stream copying it."""
    return {s.index: out.add_stream_from_template(s) for s in inp.streams.audio}


def _copy_packet(packet: Any, stream: Any, shift: float, out: Any) -> None:
    """Mux ``packet`` into ``stream`` with its timestamps moved ``shift`` seconds earlier."""
    offset = round(shift / packet.time_base)
    packet.pts -= offset
    if packet.dts is not None:
        packet.dts -= offset
    packet.stream = stream
    out.mux(packet)


def _remux(
    inp: Any, video: Any, out: Any, start: float, end: float, src: Path
) -> tuple[float, float]:
    """Stream-copy packets from the keyframe at or before ``start`` until ``end``."""
    v_out = out.add_stream_from_template(video)
    a_out = _audio_streams(inp, out)
    inp.seek(round(start / video.time_base), stream=video, backward=True, any_frame=False)
    first = last = None  # seconds of the first keyframe copied, end of the last video packet
    for packet in inp.demux(video, *inp.streams.audio):
        if packet.dts is None or packet.pts is None:  # flush packets
            continue
        t = _seconds(packet.pts, packet.time_base)
        if packet.stream.index == video.index:
            if first is None:
                if not packet.is_keyframe:
                    continue
                first = t
            if _seconds(packet.dts, packet.time_base) >= end:
                break
            last = max(last or t, t + _seconds(packet.duration or 0, packet.time_base))
            _copy_packet(packet, v_out, first, out)
        elif first is not None and first <= t < end:
            _copy_packet(packet, a_out[packet.stream.index], first, out)
    if first is None or last is None:
        raise VideoError(src, f"no video keyframe between {start:.2f} s and {end:.2f} s")
    return first, last


def _reencode(
    inp: Any, video: Any, out: Any, start: float, end: float, codec: str, src: Path
) -> tuple[float, float]:
    """Decode from the keyframe before ``start`` and encode the frames shown in ``[start, end)``."""
    import av

    rate = video.average_rate or video.guessed_rate or Fraction(30)
    v_out = out.add_stream(codec, rate=rate)
    ctx = video.codec_context
    # 4:2:0 needs even sizes: an odd width or height is scaled to the even size below it.
    v_out.width, v_out.height = ctx.width - ctx.width % 2, ctx.height - ctx.height % 2
    v_out.pix_fmt = "yuv420p"
    v_out.time_base = video.time_base
    v_out.codec_context.time_base = video.time_base
    a_out = _audio_streams(inp, out)
    inp.seek(round(start / video.time_base), stream=video, backward=True, any_frame=False)
    first = last = None  # seconds: first frame encoded, end of the last one
    shift = 0  # pts of the first frame encoded
    rotation = None
    done = False
    for packet in inp.demux(video, *inp.streams.audio):
        if packet.stream.index != video.index:
            t = _seconds(packet.pts, packet.time_base) if packet.pts is not None else -1.0
            if start <= t < end:
                _copy_packet(packet, a_out[packet.stream.index], start, out)
            continue
        try:
            frames = packet.decode()
        except av.FFmpegError as e:
            raise VideoError(src, f"decoding failed ({ffmpeg_message(e)})") from None
        for frame in frames:
            if frame.pts is None:
                continue
            if rotation is None:
                rotation = getattr(frame, "rotation", 0) or 0
                if rotation:
                    v_out.set_display_rotation(rotation)
            t = float(frame.time)
            dur = _seconds(frame.duration, frame.time_base) if frame.duration else 1 / float(rate)
            if t >= end:
                done = True
                break
            if t < start - 1e-6:
                continue
            if first is None:
                first, shift = t, frame.pts
            last = t + dur
            image = frame.reformat(width=v_out.width, height=v_out.height, format="yuv420p")
            image.pts = frame.pts - shift
            image.time_base = video.time_base
            for out_packet in v_out.encode(image):
                out.mux(out_packet)
        if done:
            break
    if first is None or last is None:
        raise VideoError(src, f"no video frame between {start:.2f} s and {end:.2f} s")
    for out_packet in v_out.encode(None):
        out.mux(out_packet)
    return first, last
