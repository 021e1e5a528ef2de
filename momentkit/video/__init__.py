"""Video decoding (PyAV), clip sampling and cutting moments out as clips."""

from momentkit.video.cut import Cut, cut_clip, cut_clip_into
from momentkit.video.decode import (
    ClipReader,
    DamagedVideoError,
    FrameRequest,
    VideoError,
    VideoInfo,
    decode_clips,
    frame_to_rgb,
    probe,
)
from momentkit.video.sampling import clip_bounds, num_clips, sample_times

__all__ = [
    "ClipReader",
    "Cut",
    "DamagedVideoError",
    "FrameRequest",
    "VideoError",
    "VideoInfo",
    "clip_bounds",
    "cut_clip",
    "cut_clip_into",
    "decode_clips",
    "frame_to_rgb",
    "num_clips",
    "probe",
    "sample_times",
]
