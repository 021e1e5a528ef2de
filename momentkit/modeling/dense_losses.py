"""Dense (anchor-free) detection losses over a temporal pyramid: points, centre sampling, focal
classification and DIoU regression, as in ActionFormer and UniMD (Zeng et al., ECCV 2024, Eq. 3).

Every pyramid level of stride ``s`` contributes one *point* per step ``i`` at time ``t = i s``
(feature-grid units: a clip index). A point is a positive of a query when it lies in the centre
region of one of the query's segments (``|t - centre| < radius * s``, inside the segment) and the
segment's farther boundary is within the level's regression range; among several such segments
the shortest wins (``target_choice="shortest"``, ActionFormer and the paper) or the last listed
(``"last"``, the official UniMD code's class-wise targets). The loss of a batch is

    L = sum_{t, q} L_cls(t, q) + delta * sum_{positive (t, q)} L_reg(t, q)

divided by the number of positives: sigmoid focal loss on every valid (point, query) pair and
1-D Distance-IoU loss on the positive pairs' predicted distances.

The registered loss ``unimd_dense`` (terms ``loss_cls``, ``loss_reg``) applies this to the
standard batch of :mod:`momentkit.data.loader` (one query per row), so a UniMD model also trains
with ``SetCriterion`` (``momentkit train``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from momentkit.modeling.losses import register_loss
from momentkit.modeling.matcher import Indices
from momentkit.structures.spans import span_cxw_to_xx

if TYPE_CHECKING:
    from momentkit.modeling.criterion import LossConfig


def default_regression_ranges(num_levels: int) -> list[tuple[float, float]]:
    """ActionFormer's ranges: ``(0, 4), (4, 8), (8, 16), ...``, the last one unbounded."""
    ranges = [(0.0 if i == 0 else 2.0 ** (i + 1), 2.0 ** (i + 2)) for i in range(num_levels)]
    ranges[-1] = (ranges[-1][0], math.inf)
    return ranges


def pyramid_points(
    lengths: Sequence[int],
    regression_ranges: Sequence[Sequence[float]],
    device: torch.device | None = None,
) -> Tensor:
    """The points of a pyramid whose level ``l`` has stride ``2^l`` and ``lengths[l]`` steps.

    Returns:
        ``(P, 4)`` float32 rows ``(t, range_min, range_max, stride)``, level after level,
        ``t = i * stride`` (the official ``PointGenerator`` without offset).
    """
    if len(regression_ranges) != len(lengths):
        raise ValueError(
            f"{len(regression_ranges)} regression ranges for {len(lengths)} pyramid levels"
        )
    rows = []
    for level, (length, (low, high)) in enumerate(zip(lengths, regression_ranges)):
        stride = float(2**level)
        t = torch.arange(length, dtype=torch.float32, device=device) * stride
        rest = torch.tensor([low, high, stride], dtype=torch.float32, device=device)
        rows.append(torch.cat([t[:, None], rest.expand(length, 3)], dim=1))
    return torch.cat(rows)


def assign_targets(
    points: Tensor,
    segments: Tensor,
    segment_mask: Tensor,
    center_radius: float | None = 1.5,
    target_choice: str = "shortest",
) -> tuple[Tensor, Tensor]:
    """Positive points and regression targets of each query (centre sampling).

    Args:
        points: ``(P, 4)`` from :func:`pyramid_points`.
        segments: ``(N, G, 2)`` start/end of each query's segments, feature-grid units.
        segment_mask: ``(N, G)`` bool, True for real segments.
        center_radius: a positive lies within ``radius * stride`` of the segment centre (and
            inside the segment); ``None`` makes every point inside the segment a candidate.
        target_choice: which of several segments a positive point regresses: ``shortest``
            (first of equal lengths) or ``last`` (the last listed one, the official code).

    Returns:
        ``(labels, targets)``: ``(N, P)`` bool positives and ``(N, P, 2)`` float distances
        (point to start, point to end) of the assigned segment divided by the point's stride;
        zero where not positive.
    """
    if target_choice not in ("shortest", "last"):
        raise ValueError(f"target_choice must be 'shortest' or 'last', got {target_choice!r}")
    t, low, high, stride = (points[:, i] for i in range(4))
    start = segments[..., 0][:, None, :]  # (N, 1, G)
    end = segments[..., 1][:, None, :]
    left = t[None, :, None] - start  # (N, P, G)
    right = end - t[None, :, None]
    if center_radius is not None:
        center = 0.5 * (start + end)
        reach = (stride * center_radius)[None, :, None]
        inner_left = t[None, :, None] - torch.maximum(center - reach, start)
        inner_right = torch.minimum(center + reach, end) - t[None, :, None]
        inside = torch.minimum(inner_left, inner_right) > 0
    else:
        inside = torch.minimum(left, right) > 0
    farthest = torch.maximum(left, right)
    in_range = (farthest >= low[None, :, None]) & (farthest <= high[None, :, None])
    ok = inside & in_range & segment_mask[:, None, :]
    if target_choice == "last":
        order = torch.arange(ok.shape[-1], device=ok.device).expand_as(ok)
        which = order.masked_fill(~ok, -1).argmax(dim=-1)  # (N, P)
        labels = ok.any(dim=-1)
    else:
        lengths = (end - start).expand_as(left).masked_fill(~ok, math.inf)
        shortest, which = lengths.min(dim=-1)  # (N, P)
        labels = torch.isfinite(shortest)
    pick = which[..., None, None].expand(*which.shape, 1, 2)
    dist = torch.stack([left, right], dim=-1).gather(2, pick).squeeze(2)  # (N, P, 2)
    targets = torch.where(labels[..., None], dist / stride[None, :, None], 0.0)
    return labels, targets


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Element-wise focal loss (Lin et al., 2017) of binary targets, unreduced.

    ``FL = -alpha_t (1 - p_t)^gamma log(p_t)``; ``alpha < 0`` disables the class weighting.
    """
    logits, targets = logits.float(), targets.float()
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def diou_loss_1d(pred: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """1-D Distance-IoU loss of segments around the same point (Zheng et al., 2020).

    Args:
        pred, target: ``(N, 2)`` non-negative distances ``(to start, to end)``.

    Returns:
        ``(N,)``: ``1 - IoU + (centre distance / hull length)^2``.
    """
    pred, target = pred.float(), target.float()
    lp, rp = pred.unbind(-1)
    lg, rg = target.unbind(-1)
    inter = torch.minimum(lp, lg) + torch.minimum(rp, rg)
    union = (lp + rp) + (lg + rg) - inter
    iou = inter / union.clamp(min=eps)
    hull = torch.maximum(lp, lg) + torch.maximum(rp, rg)
    rho = 0.5 * (rp - lp - rg + lg)
    return 1.0 - iou + (rho / hull.clamp(min=eps)) ** 2


def dense_loss_sums(
    cls_logits: Tensor,
    reg_offsets: Tensor,
    labels: Tensor,
    reg_targets: Tensor,
    valid: Tensor,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    label_smoothing: float = 0.0,
    smoothing_classes: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Summed classification and regression losses of a set of queries.

    Args:
        cls_logits: ``(N, P)`` logits.
        reg_offsets: ``(N, P, 2)`` predicted distances (stride units, >= 0).
        labels: ``(N, P)`` bool positives.
        reg_targets: ``(N, P, 2)`` target distances.
        valid: ``(N, P)`` bool, the (query, point) pairs that count.
        focal_alpha, focal_gamma: focal-loss settings.
        label_smoothing: ``eps``: classification targets become ``y (1 - eps) + eps / (K + 1)``
            with ``K = smoothing_classes`` (the official code's smoothing, ``K`` its
            ``num_classes``); 0 disables it.

    Returns:
        ``(cls_sum, reg_sum, num_positives)`` scalars.
    """
    positives = labels & valid
    target = positives.to(cls_logits.dtype)
    if label_smoothing > 0:
        target = target * (1 - label_smoothing) + label_smoothing / (smoothing_classes + 1)
    focal = sigmoid_focal_loss(cls_logits, target, focal_alpha, focal_gamma)
    cls_sum = (focal * valid).sum()
    reg_sum = diou_loss_1d(reg_offsets[positives], reg_targets[positives]).sum()
    return cls_sum, reg_sum, positives.sum()


def grid_segments(span_targets: Sequence[Tensor], num_clips: Tensor) -> tuple[Tensor, Tensor]:
    """Normalised ``(center, width)`` targets -> padded start/end in feature-grid units.

    A clip ``i`` is the grid point ``i`` (its centre), so ``grid = seconds / clip_len - 0.5``;
    the loader normalises by ``num_clips * clip_len``, hence ``grid = xx * num_clips - 0.5``.

    Returns:
        ``(B, G, 2)`` segments and ``(B, G)`` bool mask (``G >= 1``).
    """
    width = max([len(s) for s in span_targets] + [1])
    device = num_clips.device
    segments = torch.zeros(len(span_targets), width, 2, device=device)
    mask = torch.zeros(len(span_targets), width, dtype=torch.bool, device=device)
    for i, spans in enumerate(span_targets):
        if len(spans):
            xx = span_cxw_to_xx(spans.to(device).float()) * num_clips[i].float() - 0.5
            segments[i, : len(spans)] = xx
            mask[i, : len(spans)] = True
    return segments, mask


@register_loss("unimd_dense", ("loss_cls", "loss_reg"))
def loss_unimd_dense(
    outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
) -> dict[str, Tensor]:
    """Focal + DIoU dense losses of a one-query-per-row batch, normalised by the positives.

    Needs ``outputs["cls_logits"]`` ``(B, 1, P)``, ``outputs["reg_offsets"]`` ``(B, 1, P, 2)``,
    ``outputs["points"]``, ``outputs["point_mask"]``, ``outputs["center_radius"]`` and
    ``outputs["focal_alpha"]`` (a UniMD model provides them) and ``batch["span_targets"]``.
    """
    if "span_targets" not in batch:
        return {}
    num_clips = batch["video_mask"].sum(1)
    segments, mask = grid_segments([t["spans"] for t in batch["span_targets"]], num_clips)
    labels, targets = assign_targets(outputs["points"], segments, mask, outputs["center_radius"])
    cls_sum, reg_sum, num_pos = dense_loss_sums(
        outputs["cls_logits"][:, 0],
        outputs["reg_offsets"][:, 0],
        labels,
        targets,
        outputs["point_mask"],
        outputs["focal_alpha"],
        config.focal_gamma,
    )
    norm = num_pos.clamp(min=1).float()
    return {"loss_cls": cls_sum / norm, "loss_reg": reg_sum / norm}


__all__ = [
    "assign_targets",
    "default_regression_ranges",
    "dense_loss_sums",
    "diou_loss_1d",
    "grid_segments",
    "loss_unimd_dense",
    "pyramid_points",
    "sigmoid_focal_loss",
]
