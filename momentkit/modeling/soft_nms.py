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

:func:`soft_nms_groups` runs many independent groups (UniMD: one per class or sentence of a
video) together, one vectorised step per pick over all of them, instead of a Python loop per
group; each group's result is exactly what it gets alone (:func:`soft_nms` is the one-group
case).

Where only the ``total_max`` best picks over all groups are wanted (UniMD keeps a task's
``max_seg_num`` best detections over its queries), a group stops as soon as its next pick scores
below the ``total_max``-th best pick made so far: its picks never rise, so none of its later ones
can be among the best ``total_max``, and those are exactly the ones the full run ranks there
(ties too: the picks a group does make are its first ones, in the same order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
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
    return soft_nms_groups(
        [(segments, scores)],
        method=method,
        sigma=sigma,
        iou_threshold=iou_threshold,
        min_score=min_score,
        max_num=max_num,
        arithmetic=arithmetic,
    )[0]


def soft_nms_groups(
    groups: Sequence[tuple[Tensor, Tensor]],
    *,
    method: Method = "gaussian",
    sigma: float = 0.5,
    iou_threshold: float = 0.1,
    min_score: float = 0.001,
    max_num: int | None = None,
    arithmetic: Arithmetic = "float64",
    total_max: int | None = None,
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """:func:`soft_nms` of each ``(segments (N_g, 2), scores (N_g,))`` group, independently.

    Gaussian and linear decay run all groups at once: the groups are padded to the longest
    (``(G, N)`` arrays), and each step picks one segment in every group that has one left;
    :data:`BUCKET_MIN_GROUPS` or more groups of very unequal lengths run in :data:`BUCKETS`
    buckets of similar length instead (the same results).
    Returns one ``(segments, scores, indices)`` per group, as :func:`soft_nms` returns it.

    ``total_max``: only the ``total_max`` best picks over all groups are wanted (``None``: every
    pick). Gaussian and linear decay then stop a group once its next pick scores below the
    ``total_max``-th best pick so far; each group returns its first picks, and the best
    ``total_max`` of all groups' picks (a stable sort of the groups' picks in group order) are
    those of the run without the option (module docstring).
    """
    for segments, scores in groups:
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
    if total_max is not None and (
        isinstance(total_max, bool) or not isinstance(total_max, int | np.integer)
    ):
        raise ValueError(f"total_max must be an integer or None, got {total_max!r}")
    if method == "hard":
        return [
            _hard(
                segments, scores, iou_threshold, min_score, _limit(len(scores), max_num), arithmetic
            )
            for segments, scores in groups
        ]
    if not groups:
        return []
    decay = _Decay(method, sigma, iou_threshold)
    best = _BestPicks(total_max)  # shared by the buckets
    lengths = [len(scores) for _, scores in groups]
    if len(groups) < BUCKET_MIN_GROUPS or max(lengths) * len(groups) <= 2 * sum(lengths):
        return _padded(groups, decay, min_score, max_num, arithmetic, best)
    # groups of very different lengths (a video's 157 classes: 18-348 candidates) in buckets
    # of similar length: each step's arrays hold a bucket's longest group, not the video's
    out: list[tuple[Tensor, Tensor, Tensor]] = [None] * len(groups)  # type: ignore[list-item]
    by_length = np.argsort(np.array(lengths), kind="stable")
    for bucket in np.array_split(by_length, BUCKETS):
        kept = _padded([groups[g] for g in bucket], decay, min_score, max_num, arithmetic, best)
        for g, result in zip(bucket.tolist(), kept):
            out[g] = result
    return out


#: fewest groups (and buckets) of :func:`soft_nms_groups`' length buckets: each step is one
#: NumPy pass per array of a bucket, ~0.1 ms whatever its size, against ~8 ns an element
#: (a video's 157 classes: 17.3 -> 13.9 ms in 3 buckets, 14.2 in 2, 14.8 in 4)
BUCKET_MIN_GROUPS = 16
BUCKETS = 3


def _padded(
    groups: Sequence[tuple[Tensor, Tensor]],
    decay: _Decay,
    min_score: float,
    max_num: int | None,
    arithmetic: Arithmetic,
    best: _BestPicks,
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """The soft-NMS of ``groups`` padded to the longest, all at once (see the caller)."""
    size = max(len(scores) for _, scores in groups)
    limit = _limit(size, max_num)
    dtype = np.float32 if arithmetic == "official" else np.float64
    seg = np.zeros((len(groups), size, 2), dtype)
    sc = np.zeros((len(groups), size), dtype)
    lengths = np.array([len(scores) for _, scores in groups], dtype=np.int64)
    for g, (segments, scores) in enumerate(groups):
        seg[g, : len(scores)] = segments.detach().cpu().numpy()
        sc[g, : len(scores)] = scores.detach().cpu().numpy()
    padded = _Groups(seg, sc, lengths, decay, min_score, limit, best)
    order, picked, kept = (_official if arithmetic == "official" else _float64)(padded)
    out = []
    for g, (segments, scores) in enumerate(groups):
        index = torch.as_tensor(order[g, : kept[g]], dtype=torch.long, device=segments.device)
        new = torch.as_tensor(picked[g, : kept[g]], device=scores.device).to(scores.dtype)
        out.append((segments[index], new, index))
    return out


def _limit(size: int, max_num: int | None) -> int:
    return size if max_num is None else max(0, int(max_num))


class _BestPicks:
    """The scores of the picks made so far, for ``total_max`` (:func:`soft_nms_groups`)."""

    def __init__(self, total_max: int | None) -> None:
        self.total_max = total_max
        self.parts: list[np.ndarray] = []
        self.count = 0

    def add(self, scores: np.ndarray) -> None:
        """Record the scores of a step's picks."""
        if self.total_max is not None:
            self.parts.append(scores.astype(np.float64))
            self.count += len(scores)

    def bound(self) -> float:
        """A group whose next pick scores below this has no pick among the best ``total_max``
        (``-inf`` until ``total_max`` picks are made, or without ``total_max``)."""
        k = self.total_max
        if k is None:
            return -math.inf
        if k <= 0:
            return math.inf  # no pick is wanted
        if self.count < k:
            return -math.inf
        if len(self.parts) > 1:
            self.parts = [np.concatenate(self.parts)]
        scores = self.parts[0]
        return float(np.partition(scores, len(scores) - k)[len(scores) - k])


def _stopped(next_scores: np.ndarray, best: _BestPicks) -> np.ndarray | None:
    """Which groups stop (``total_max``: their next picks, ``next_scores``, and so all their
    later ones score below the bound), or ``None`` when none does."""
    bound = best.bound()
    if bound == -math.inf:
        return None
    stop = next_scores < bound
    return stop if stop.any() else None


class _Decay:
    """The factor a segment's score is multiplied by, from its IoU with the pick (``(G, M)``
    arrays; float32 stays float32)."""

    def __init__(self, method: Method, sigma: float, iou_threshold: float) -> None:
        self.method, self.sigma, self.threshold = method, sigma, iou_threshold

    def __call__(self, iou: np.ndarray) -> np.ndarray:
        kind = iou.dtype.type
        if self.method == "gaussian":
            return np.exp(-(iou * iou) / kind(self.sigma)).astype(kind)
        return np.where(iou >= kind(self.threshold), kind(1) - iou, kind(1)).astype(kind)


@dataclass
class _Groups:
    """The padded groups: ``seg`` ``(G, N, 2)``, ``sc`` ``(G, N)`` (both in the arithmetic's
    float type), ``lengths`` ``(G,)``, and the settings."""

    seg: np.ndarray
    sc: np.ndarray
    lengths: np.ndarray
    decay: _Decay
    min_score: float
    limit: int
    best: _BestPicks


def _float64(groups: _Groups) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """momentkit's arithmetic on ``(G, N)`` groups: float64, IoU of the plain lengths, the first
    of equal maxima in input order. Returns the picks ``(G, limit)``, their scores and the
    number of picks of each group."""
    seg, sc, lengths = groups.seg, groups.sc, groups.lengths
    decay, min_score, limit = groups.decay, groups.min_score, groups.limit
    count_groups, size = sc.shape
    x1, x2 = seg[..., 0], seg[..., 1]
    length = x2 - x1
    alive = (np.arange(size) < lengths[:, None]) & (sc >= min_score)
    order = np.zeros((count_groups, limit), np.int64)
    picked = np.zeros((count_groups, limit), np.float64)
    count = np.zeros(count_groups, np.int64)
    for step in range(min(limit, size)):
        rows = np.flatnonzero(alive.any(1))
        if not len(rows):
            break
        live = alive[rows]
        best = np.where(live, sc[rows], -np.inf).argmax(1)
        stop = _stopped(sc[rows, best], groups.best)
        if stop is not None:
            alive[rows[stop]] = False
            rows, live, best = rows[~stop], live[~stop], best[~stop]
            if not len(rows):
                break
        order[rows, step], picked[rows, step] = best, sc[rows, best]
        groups.best.add(picked[rows, step])
        count[rows] += 1
        live[np.arange(len(rows)), best] = False
        b1, b2 = x1[rows, best][:, None], x2[rows, best][:, None]
        inter = np.clip(np.minimum(x2[rows], b2) - np.maximum(x1[rows], b1), 0.0, None)
        union = length[rows] + (b2 - b1) - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        scores = np.where(live, sc[rows] * decay(iou), sc[rows])
        sc[rows] = scores
        alive[rows] = live & (scores >= min_score)
    return order, picked, count


def _official(groups: _Groups) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``official`` arithmetic (module docstring) on ``(G, N)`` groups: float32, lengths +
    1e-6, the best remaining segment swapped to position ``i`` at step ``i``, and then every
    dropped segment of positions ``i+1 .. n-1`` replaced by the last remaining one (what the
    C++ scan does, as one rearrangement: the dropped slots among the first ``kept`` positions,
    left to right, take the kept segments beyond them, right to left)."""
    f32 = np.float32
    seg, sc, lengths = groups.seg, groups.sc, groups.lengths
    decay, min_score, limit = groups.decay, groups.min_score, groups.limit
    size = sc.shape[1]
    x1, x2 = seg[..., 0].copy(), seg[..., 1].copy()
    areas = (x2 - x1) + f32(1e-6)
    inds = np.broadcast_to(np.arange(size), sc.shape).copy()
    arrays = (x1, x2, sc, areas, inds)
    n = lengths.copy()
    picked = np.zeros(sc.shape, f32)
    columns = np.arange(size)
    for i in range(min(limit, size)):
        rows = np.flatnonzero(n > i)
        if not len(rows):
            break
        window = (columns >= i) & (columns < n[rows, None])
        best = np.where(window, sc[rows], -np.inf).argmax(1)  # first of equal maxima
        stop = _stopped(sc[rows, best], groups.best)
        if stop is not None:
            n[rows[stop]] = i
            rows, window, best = rows[~stop], window[~stop], best[~stop]
            if not len(rows):
                break
        for arr in arrays:
            arr[rows, i], arr[rows, best] = arr[rows, best], arr[rows, i]
        picked[rows, i] = sc[rows, i]
        groups.best.add(picked[rows, i])
        rest = slice(i + 1, size)
        inter = np.maximum(
            f32(0),
            np.minimum(x2[rows, i, None], x2[rows, rest])
            - np.maximum(x1[rows, i, None], x1[rows, rest]),
        )
        with np.errstate(divide="ignore", invalid="ignore"):  # padded columns
            iou = inter / (areas[rows, i, None] + areas[rows, rest] - inter)
        block = window[:, i + 1 :]
        scores = np.where(block, sc[rows, rest] * decay(iou), sc[rows, rest])
        sc[rows, rest] = scores
        good = block & (scores >= f32(min_score))
        kept = good.sum(1)
        first = columns[None, i + 1 :] < (i + 1 + kept)[:, None]
        holes = np.nonzero(block & first & ~good)  # (row, column) left to right
        fills = np.nonzero((good & ~first)[:, ::-1])  # right to left
        if len(holes[0]):
            r = rows[holes[0]]
            to, src = i + 1 + holes[1], size - 1 - fills[1]
            for arr in arrays:
                arr[r, to] = arr[r, src]
        n[rows] = i + 1 + kept
    count = np.minimum(n, limit)
    return inds, picked, count


def _hard(
    segments: Tensor,
    scores: Tensor,
    iou_threshold: float,
    min_score: float,
    limit: int,
    arithmetic: Arithmetic,
) -> tuple[Tensor, Tensor, Tensor]:
    """Greedy NMS of one group (``hard``)."""
    if arithmetic == "official":
        return _official_hard(segments, scores, iou_threshold, min_score, limit)
    keep = scores >= min_score
    idx = torch.nonzero(keep).flatten()
    order = idx[temporal_nms(segments[idx].cpu(), scores[idx].cpu(), iou_threshold)]
    order = order[:limit].to(segments.device)
    return segments[order], scores[order], order


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


__all__ = ["Arithmetic", "Method", "soft_nms", "soft_nms_groups"]
