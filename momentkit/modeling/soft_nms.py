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

``arithmetic`` chooses between two computations of the same algorithm:

- ``float64`` (momentkit): IoU of the segments' lengths, scores in double precision, ties
  broken by input order;
- ``official``: as the C++ ``softnms_1d_cpu`` of ActionFormer/UniMD: float32 throughout, every
  length enlarged by 1e-6 in the IoU, the best remaining segment swapped to the front and a
  dropped one replaced by the last remaining one (which decides among equal scores); ``hard``
  (the C++ ``nms_1d_cpu``) drops the segments scoring ``<= min_score`` first, ranks the rest
  with ``torch.sort`` (which decides among equal scores) and suppresses IoU
  ``>= iou_threshold``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from momentkit.modeling.postprocess import temporal_nms

Method = Literal["gaussian", "linear", "hard"]
Arithmetic = Literal["float64", "official"]


def soft_nms(
    segments: Tensor,
    scores: Tensor,
    *,
    method: Method = "gaussian",
    sigma: float = 0.5,
    iou_threshold: float = 0.1,
    min_score: float = 0.001,
    max_num: int | None = None,
    arithmetic: Arithmetic = "float64",
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
        arithmetic: ``float64`` or ``official`` (see the module docstring).

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
    if arithmetic not in ("float64", "official"):
        raise ValueError(f"arithmetic must be 'float64' or 'official', got {arithmetic!r}")
    limit = len(scores) if max_num is None else max(0, int(max_num))
    if arithmetic == "official":
        return _official(segments, scores, method, sigma, iou_threshold, min_score, limit)
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


def _official(
    segments: Tensor,
    scores: Tensor,
    method: Method,
    sigma: float,
    iou_threshold: float,
    min_score: float,
    limit: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``official`` arithmetic (module docstring): float32, lengths + 1e-6, swap order."""
    f32 = np.float32
    if method == "hard":
        return _official_hard(segments, scores, iou_threshold, min_score, limit)
    seg = segments.detach().cpu().float().numpy()
    sc = scores.detach().cpu().float().numpy().copy()
    inds = np.arange(len(sc))
    x1, x2 = seg[:, 0].copy(), seg[:, 1].copy()
    areas = (x2 - x1) + f32(1e-6)
    n = len(sc)
    picked_scores: list[float] = []
    i = 0
    while i < n:
        best = i + int(np.argmax(sc[i:n]))  # first of equal maxima, as the C++ scan
        for arr in (x1, x2, sc, areas, inds):
            arr[i], arr[best] = arr[best], arr[i]
        picked_scores.append(float(sc[i]))
        rest = slice(i + 1, n)
        inter = np.maximum(f32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        ovr = inter / (areas[i] + areas[rest] - inter)
        if method == "gaussian":
            weight = np.exp(-(ovr * ovr) / f32(sigma)).astype(f32)
        else:
            weight = np.where(ovr >= f32(iou_threshold), f32(1) - ovr, f32(1)).astype(f32)
        sc[rest] *= weight
        pos = i + 1
        while pos < n:  # a dropped segment is replaced by the last remaining one
            below = np.flatnonzero(sc[pos:n] < f32(min_score))
            if not len(below):
                break
            pos += int(below[0])
            last = n - 1
            for arr in (x1, x2, sc, areas, inds):
                arr[pos] = arr[last]
            n -= 1
        i += 1
    keep = min(n, limit)
    index = torch.as_tensor(inds[:keep], dtype=torch.long, device=segments.device)
    out_segs = torch.as_tensor(np.stack([x1[:keep], x2[:keep]], axis=1), device=segments.device)
    out_scores = torch.tensor(picked_scores[:keep], dtype=torch.float32, device=scores.device)
    return out_segs.to(segments.dtype), out_scores.to(scores.dtype), index


def _official_hard(
    segments: Tensor, scores: Tensor, iou_threshold: float, min_score: float, limit: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Greedy NMS as the C++ ``nms_1d_cpu``: segments scoring ``<= min_score`` dropped first,
    candidates in the order of ``torch.sort(descending=True)`` (the same call decides among
    equal scores), IoU of lengths + 1e-6 in float32, suppressed from ``iou_threshold`` on."""
    f32 = np.float32
    sc = scores.detach().cpu().float()
    kept = torch.nonzero(sc > min_score).flatten() if min_score > 0 else torch.arange(len(sc))
    order = torch.sort(sc[kept], descending=True)[1]
    seg = segments.detach().cpu().float()[kept].numpy()
    x1, x2 = seg[:, 0], seg[:, 1]
    areas = (x2 - x1) + f32(1e-6)
    idx = order.numpy()
    select = np.ones(len(idx), dtype=bool)
    for a in range(len(idx)):
        if not select[a]:
            continue
        i, rest = idx[a], idx[a + 1 :]
        inter = np.maximum(f32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        ovr = inter / (areas[i] + areas[rest] - inter)
        select[a + 1 :] &= ~(ovr >= f32(iou_threshold))
    picks = kept[torch.as_tensor(idx[select][:limit], dtype=torch.long)].to(segments.device)
    return segments[picks], scores[picks], picks


__all__ = ["Arithmetic", "Method", "soft_nms"]
