"""Soft non-maximum suppression of temporal segments (Bodla et al., 2017), as UniMD and
ActionFormer post-process detections.

Instead of deleting every segment that overlaps a kept one, soft-NMS lowers its score by the
overlap and keeps going:

- ``gaussian``: ``score *= exp(-IoU^2 / sigma)`` for every remaining segment;
- ``linear``: ``score *= 1 - IoU`` where ``IoU >= iou_threshold``;
- ``hard``: greedy NMS (:func:`momentkit.modeling.postprocess.temporal_nms`).

Segments whose score falls below ``min_score`` are dropped. Picks come out best first and, since
scores only decrease, their scores never increase, so stopping after ``max_num`` picks gives the
same top ``max_num`` as running to the end.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from momentkit.modeling.postprocess import temporal_nms

Method = Literal["gaussian", "linear", "hard"]


def soft_nms(
    segments: Tensor,
    scores: Tensor,
    *,
    method: Method = "gaussian",
    sigma: float = 0.5,
    iou_threshold: float = 0.1,
    min_score: float = 0.001,
    max_num: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Soft-NMS of one class (or one query) of segments.

    Args:
        segments: ``(N, 2)`` start/end.
        scores: ``(N,)`` confidences.
        method: ``gaussian``, ``linear`` or ``hard`` (see the module docstring).
        sigma: Gaussian width (``gaussian`` only).
        iou_threshold: overlap from which ``linear`` decays and ``hard`` suppresses (``hard``
            drops IoU strictly above it, as ``temporal_nms``).
        min_score: segments scoring below this (after decay) are dropped.
        max_num: keep at most this many (``None``: all).

    Returns:
        ``(segments (K, 2), scores (K,), indices (K,))`` best first; ``scores`` are the decayed
        scores and ``indices`` point into the input.
    """
    if segments.ndim != 2 or segments.shape[-1] != 2 or len(segments) != len(scores):
        raise ValueError(
            f"expected (N, 2) segments and (N,) scores, got {tuple(segments.shape)} and "
            f"{tuple(scores.shape)}"
        )
    if method not in ("gaussian", "linear", "hard"):
        raise ValueError(f"unknown soft-NMS method '{method}'; use gaussian, linear or hard")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    limit = len(scores) if max_num is None else max(0, int(max_num))
    if method == "hard":
        keep = scores >= min_score
        idx = torch.nonzero(keep).flatten()
        order = idx[temporal_nms(segments[idx].cpu(), scores[idx].cpu(), iou_threshold)]
        order = order[:limit].to(segments.device)
        return segments[order], scores[order], order
    seg = segments.detach().cpu().double().numpy()
    sc = scores.detach().cpu().double().numpy().copy()
    alive = np.flatnonzero(sc >= min_score)
    picks: list[int] = []
    picked_scores: list[float] = []
    while len(alive) and len(picks) < limit:
        best = alive[int(np.argmax(sc[alive]))]
        picks.append(int(best))
        picked_scores.append(float(sc[best]))
        alive = alive[alive != best]
        if not len(alive):
            break
        inter = np.clip(
            np.minimum(seg[alive, 1], seg[best, 1]) - np.maximum(seg[alive, 0], seg[best, 0]),
            0.0,
            None,
        )
        union = (seg[alive, 1] - seg[alive, 0]) + (seg[best, 1] - seg[best, 0]) - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        if method == "gaussian":
            sc[alive] *= np.exp(-(iou * iou) / sigma)
        else:
            sc[alive] *= np.where(iou >= iou_threshold, 1.0 - iou, 1.0)
        alive = alive[sc[alive] >= min_score]
    index = torch.tensor(picks, dtype=torch.long, device=segments.device)
    out_scores = torch.tensor(picked_scores, dtype=scores.dtype, device=scores.device)
    return segments[index], out_scores, index


__all__ = ["Method", "soft_nms"]
