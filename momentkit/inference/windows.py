"""Sliding windows: running a model trained on short videos over a long one.

A model trained on at most ``W`` clips (QVHighlights: 75 two-second clips, 150 s) sees a longer
video through overlapping windows of ``W`` clips. Each window is predicted as a video of its
own; the results are then put back on the video's timeline:

- window ``[a, b)`` starts ``a * clip_len`` seconds into the video, so its moments are shifted
  by that much (:func:`shift_moments`);
- each clip's saliency is the mean over the windows that contain it (:func:`merge_saliency`);
- the moments of all windows are pooled and de-duplicated with temporal NMS, a moment seen by
  two overlapping windows being kept once, with its better score (:func:`merge_moments`).

The last window is aligned with the end of the video, so every window is full length (when the
video has at least ``W`` clips) and every clip is covered.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from momentkit.inference.similarity import temporal_nms


def plan_windows(num_clips: int, window: int | None, overlap: float = 0.5) -> list[tuple[int, int]]:
    """Clip ranges ``[(first, last), ...]`` (``last`` excluded) covering ``num_clips`` clips.

    Args:
        num_clips: ``T``, clips of the video.
        window: ``W``, most clips per window; ``None`` gives one window over the whole video.
        overlap: fraction of a window shared with the next one, in ``[0, 1)``; windows start
            every ``max(1, round(W * (1 - overlap)))`` clips, and the last one ends at ``T``.

    Returns:
        One range when ``T <= W``; otherwise ranges of exactly ``W`` clips, in order.
    """
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 clip, got {window}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if window is None or num_clips <= window:
        return [(0, num_clips)]
    stride = max(1, round(window * (1.0 - overlap)))
    starts = list(range(0, num_clips - window, stride)) + [num_clips - window]
    return [(s, s + window) for s in starts]


def shift_moments(moments: np.ndarray, offset: float, duration: float) -> np.ndarray:
    """Window moments ``(N, 3)`` ``[start, end, score]`` moved ``offset`` seconds later and cut
    at the video's ``duration``; moments left empty by the cut are dropped."""
    out = np.asarray(moments, dtype=np.float64).reshape(-1, 3).copy()
    out[:, :2] = np.clip(out[:, :2] + offset, 0.0, duration)
    return out[out[:, 1] > out[:, 0]]


def merge_saliency(
    num_clips: int, ranges: Sequence[tuple[int, int]], scores: Sequence[np.ndarray]
) -> np.ndarray:
    """Per-clip saliency of the whole video from the windows' saliency.

    Args:
        num_clips: ``T``.
        ranges: each window's ``(first, last)`` clips.
        scores: each window's ``(last - first,)`` saliency.

    Returns:
        ``(T,)`` float32: the mean of the windows' scores of each clip.

    Raises:
        ValueError: a window's scores do not match its range, or a clip is in no window.
    """
    total = np.zeros(num_clips, np.float64)
    count = np.zeros(num_clips, np.int64)
    for (first, last), s in zip(ranges, scores, strict=True):
        s = np.asarray(s, dtype=np.float64).reshape(-1)
        if len(s) != last - first:
            raise ValueError(f"window [{first}, {last}) has {len(s)} saliency scores")
        total[first:last] += s
        count[first:last] += 1
    if (count == 0).any():
        raise ValueError(f"clip {int(np.argmin(count))} is in no window")
    return (total / count).astype(np.float32)


def merge_moments(
    moments: Sequence[np.ndarray], nms_iou: float | None = 0.7, top_k: int | None = None
) -> np.ndarray:
    """Pool moments of several windows (already on the video's timeline), best first.

    Args:
        moments: ``(N_i, 3)`` ``[start, end, score]`` per window.
        nms_iou: a moment overlapping a better one by this IoU or more is dropped; ``None``
            keeps every moment.
        top_k: moments returned (``None``: all).

    Returns:
        ``(N, 3)`` float64, sorted by decreasing score (ties: earlier first).
    """
    pooled = np.concatenate([np.asarray(m, np.float64).reshape(-1, 3) for m in moments] or [[]])
    pooled = pooled.reshape(-1, 3)
    order = np.lexsort((pooled[:, 1], pooled[:, 0], -pooled[:, 2]))
    pooled = pooled[order]
    if nms_iou is not None:
        pooled = pooled[temporal_nms(pooled, nms_iou)]
    return pooled[:top_k] if top_k is not None else pooled
