"""Temporal span arithmetic.

Spans are tensors whose last dimension is 2. Two parameterisations are used:

- ``xx``: ``(start, end)``, in seconds or normalised to ``[0, 1]`` by the video duration;
- ``cxw``: ``(center, width)``, the DETR-style parameterisation the models regress.

All IoU functions work on either absolute or normalised ``xx`` spans. "Cross" functions compare
every span of one set with every span of another (``(N, 2) x (M, 2) -> (N, M)``); "paired"
functions compare row ``i`` with row ``i`` (``(N, 2) x (N, 2) -> (N,)``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den > 0``, else 0 (no epsilon: exact for tiny spans)."""
    positive = den > 0
    return torch.where(positive, num / torch.where(positive, den, torch.ones_like(den)), 0.0)


def span_xx_to_cxw(spans: Tensor) -> Tensor:
    """``(..., 2)`` start/end -> ``(..., 2)`` centre/width."""
    start, end = spans.unbind(-1)
    return torch.stack([(start + end) * 0.5, end - start], dim=-1)


def span_cxw_to_xx(spans: Tensor) -> Tensor:
    """``(..., 2)`` centre/width -> ``(..., 2)`` start/end."""
    center, width = spans.unbind(-1)
    return torch.stack([center - 0.5 * width, center + 0.5 * width], dim=-1)


def temporal_iou(spans1: Tensor, spans2: Tensor) -> tuple[Tensor, Tensor]:
    """Cross temporal IoU.

    Args:
        spans1: ``(N, 2)`` start/end spans.
        spans2: ``(M, 2)`` start/end spans.

    Returns:
        ``(iou, union)``, each ``(N, M)``. Degenerate pairs (union 0) have IoU 0.
    """
    len1 = (spans1[:, 1] - spans1[:, 0]).clamp(min=0)
    len2 = (spans2[:, 1] - spans2[:, 0]).clamp(min=0)
    left = torch.max(spans1[:, None, 0], spans2[None, :, 0])
    right = torch.min(spans1[:, None, 1], spans2[None, :, 1])
    inter = (right - left).clamp(min=0)
    union = len1[:, None] + len2[None, :] - inter
    iou = _safe_div(inter, union)
    return iou, union


def generalized_temporal_iou(spans1: Tensor, spans2: Tensor) -> Tensor:
    """Cross generalised IoU (Rezatofighi et al., 2019) in 1-D.

    ``giou = iou - (hull - union) / hull``, in ``[-1, 1]``.

    Args:
        spans1: ``(N, 2)`` start/end spans with ``end >= start``.
        spans2: ``(M, 2)`` start/end spans with ``end >= start``.

    Returns:
        ``(N, M)`` generalised IoU.
    """
    iou, union = temporal_iou(spans1, spans2)
    left = torch.min(spans1[:, None, 0], spans2[None, :, 0])
    right = torch.max(spans1[:, None, 1], spans2[None, :, 1])
    hull = (right - left).clamp(min=0)
    return iou - _safe_div(hull - union, hull)


def paired_temporal_iou(spans1: Tensor, spans2: Tensor) -> tuple[Tensor, Tensor]:
    """Row-wise temporal IoU of ``(N, 2)`` and ``(N, 2)``; returns ``(iou, union)`` of ``(N,)``."""
    len1 = (spans1[..., 1] - spans1[..., 0]).clamp(min=0)
    len2 = (spans2[..., 1] - spans2[..., 0]).clamp(min=0)
    left = torch.max(spans1[..., 0], spans2[..., 0])
    right = torch.min(spans1[..., 1], spans2[..., 1])
    inter = (right - left).clamp(min=0)
    union = len1 + len2 - inter
    iou = _safe_div(inter, union)
    return iou, union


def paired_generalized_temporal_iou(spans1: Tensor, spans2: Tensor) -> Tensor:
    """Row-wise generalised IoU of ``(N, 2)`` and ``(N, 2)`` start/end spans -> ``(N,)``."""
    iou, union = paired_temporal_iou(spans1, spans2)
    left = torch.min(spans1[..., 0], spans2[..., 0])
    right = torch.max(spans1[..., 1], spans2[..., 1])
    hull = (right - left).clamp(min=0)
    return iou - _safe_div(hull - union, hull)


def window_to_clip_ids(window: Sequence[float], clip_len: float) -> list[int]:
    """Clip indices overlapped by a ``[start, end]`` window in seconds.

    Clip ``i`` covers ``[i * clip_len, (i + 1) * clip_len)``; this is how QVHighlights derives
    ``relevant_clip_ids`` from ``relevant_windows`` (``[72, 82]`` with 2 s clips -> 36..40).
    """
    start, end = float(window[0]), float(window[1])
    if end < start:
        raise ValueError(f"window end {end} is before its start {start}")
    first = math.floor(start / clip_len + 1e-6)
    last = math.ceil(end / clip_len - 1e-6)
    return list(range(first, max(last, first + 1)))


def windows_to_clip_ids(windows: Iterable[Sequence[float]], clip_len: float) -> list[int]:
    """Sorted union of :func:`window_to_clip_ids` over several windows."""
    ids: set[int] = set()
    for w in windows:
        ids.update(window_to_clip_ids(w, clip_len))
    return sorted(ids)


def clip_ids_to_windows(clip_ids: Iterable[int], clip_len: float) -> list[list[float]]:
    """Group clip indices into maximal runs of consecutive clips, as ``[start, end]`` seconds.

    The inverse of :func:`windows_to_clip_ids` on clip-aligned windows.
    """
    ids = sorted(set(int(i) for i in clip_ids))
    windows: list[list[float]] = []
    for i in ids:
        if windows and math.isclose(windows[-1][1], i * clip_len):
            windows[-1][1] = (i + 1) * clip_len
        else:
            windows.append([i * clip_len, (i + 1) * clip_len])
    return windows
