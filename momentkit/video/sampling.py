"""Where clips start and end, and at which instants their frames are sampled.

A video of ``duration`` seconds is cut into ``T = ceil(duration / clip_len)`` clips (at least
one): clip ``i`` spans ``[i * clip_len, min((i + 1) * clip_len, duration)]``, so the last clip
may be shorter. This is the convention of QVHighlights (150 s -> 75 clips of 2 s) and of the
window <-> clip-id helpers in :mod:`momentkit.structures.spans`.

Each clip is represented by ``K`` frames at the centres of ``K`` equal parts of the clip;
``K = 1`` samples the clip centre.
"""

from __future__ import annotations

import math

import numpy as np

# Durations are floats read from containers: 150.0000001 s of 2 s clips is 75 clips, not 76.
_EPS = 1e-6


def num_clips(duration: float, clip_len: float) -> int:
    """``ceil(duration / clip_len)``, at least 1 (a video shorter than a clip is one clip).

    Raises:
        ValueError: ``clip_len`` is not positive or ``duration`` is negative / not finite.
    """
    if not clip_len > 0:
        raise ValueError(f"clip_len must be positive, got {clip_len}")
    if not (math.isfinite(duration) and duration >= 0):
        raise ValueError(f"duration must be a finite number >= 0, got {duration}")
    return max(1, math.ceil(duration / clip_len - _EPS))


def clip_bounds(duration: float, clip_len: float) -> np.ndarray:
    """``(T, 2)`` float64 ``[start, end]`` seconds of every clip; the last one ends at ``duration``.

    A video of zero duration (a single still frame) gives one clip ``[0, 0]``.
    """
    t = num_clips(duration, clip_len)
    starts = np.arange(t, dtype=np.float64) * clip_len
    ends = np.minimum(starts + clip_len, duration)
    return np.stack([starts, ends], axis=1)


def sample_times(duration: float, clip_len: float, frames_per_clip: int = 1) -> np.ndarray:
    """``(T, K)`` float64 instants (seconds) at which each clip's ``K`` frames are sampled.

    Frame ``k`` of a clip ``[s, e]`` is taken at ``s + (k + 0.5) / K * (e - s)``: the centres of
    ``K`` equal parts, so ``K = 1`` gives the clip centre and times never leave the clip.
    """
    if frames_per_clip < 1:
        raise ValueError(f"frames_per_clip must be >= 1, got {frames_per_clip}")
    bounds = clip_bounds(duration, clip_len)
    frac = (np.arange(frames_per_clip, dtype=np.float64) + 0.5) / frames_per_clip
    return bounds[:, :1] + frac[None, :] * (bounds[:, 1:] - bounds[:, :1])
