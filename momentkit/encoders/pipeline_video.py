"""Encoding a video for search with a :class:`~momentkit.encoders.base.PipelineEncoder`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from momentkit.encoders.base import EncoderError, PipelineEncoder, Progress

if TYPE_CHECKING:
    from momentkit.inference.results import VideoEncoding


def encode_video_file(
    encoder: PipelineEncoder,
    path: str | Path,
    clip_len: float,
    *,
    threads: int = 1,
    progress: Progress | None = None,
) -> VideoEncoding:
    """:meth:`PipelineEncoder.encode_video` as a :class:`VideoEncoding` of ``clip_len`` clips.

    Raises:
        EncoderError: the encoder's clips are not ``clip_len`` long.
        VideoError: the file cannot be decoded.
    """
    from momentkit.inference.results import VideoEncoding

    own = getattr(encoder, "clip_len", clip_len)
    if not math.isclose(own, clip_len):
        raise EncoderError(
            f"encoder '{encoder.name}' makes {own} s clips but the model reads {clip_len} s clips"
        )
    encoded = encoder.encode_video(path, threads=threads, progress=progress)
    return VideoEncoding(str(path), encoded.duration, clip_len, dict(encoded.streams))
