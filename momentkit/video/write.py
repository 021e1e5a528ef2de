"""Writing frames to a video file with PyAV (synthetic videos for demos and tests)."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np


def write_video(
    path: str | Path,
    frames: np.ndarray | Sequence[np.ndarray],
    *,
    fps: float = 10.0,
    times: Sequence[float] | None = None,
    codec: str = "libx264",
    pix_fmt: str | None = None,
    rotation: int = 0,
    audio_seconds: float = 0.0,
) -> Path:
    """Encode RGB frames into ``path`` (container from the extension, e.g. ``.mp4``, ``.mkv``).

    Args:
        path: output file.
        frames: ``(N, H, W, 3)`` uint8 RGB frames.
        fps: frame rate when ``times`` is not given.
        times: presentation time (seconds) of each frame, increasing: a variable frame rate.
        codec: FFmpeg encoder, e.g. ``libx264``, ``mpeg4``, ``ffv1`` (lossless).
        pix_fmt: pixel format (default ``yuv420p``; ``yuv444p`` for ``libx264`` at odd sizes,
            which its 4:2:0 mode cannot encode).
        rotation: display rotation (counter-clockwise degrees) stored in the display matrix.
        audio_seconds: also write this many seconds of silent AAC audio.

    Returns:
        ``path``.
    """
    import av

    path = Path(path)
    frames = [np.ascontiguousarray(f, dtype=np.uint8) for f in frames]
    if not frames:
        raise ValueError("write_video needs at least one frame")
    h, w = frames[0].shape[:2]
    if times is not None and len(times) != len(frames):
        raise ValueError(f"{len(times)} times for {len(frames)} frames")
    time_base = Fraction(1, 1000) if times is not None else None
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = w, h
        odd = w % 2 or h % 2
        stream.pix_fmt = pix_fmt or ("yuv444p" if codec == "libx264" and odd else "yuv420p")
        if time_base is not None:
            stream.time_base = stream.codec_context.time_base = time_base
        if rotation:
            stream.set_display_rotation(rotation)
        audio = out.add_stream("aac", rate=_AUDIO_RATE) if audio_seconds > 0 else None
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if time_base is not None:
                frame.pts, frame.time_base = round(times[i] * 1000), time_base
            else:
                frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        if audio is not None:
            _encode_silence(out, audio, audio_seconds)
    return path


def write_audio(path: str | Path, seconds: float) -> Path:
    """Write ``seconds`` of silent AAC audio and no video to ``path`` (e.g. ``.m4a``)."""
    import av

    path = Path(path)
    with av.open(str(path), "w") as out:
        _encode_silence(out, out.add_stream("aac", rate=_AUDIO_RATE), seconds)
    return path


_AUDIO_RATE = 16000


def _encode_silence(out: Any, stream: Any, seconds: float) -> None:
    import av

    samples = np.zeros((1, max(1, int(seconds * _AUDIO_RATE))), np.float32)
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
    frame.sample_rate, frame.pts = _AUDIO_RATE, 0
    out.mux(stream.encode(frame))
    out.mux(stream.encode(None))
