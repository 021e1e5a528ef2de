"""An ATSS-style dense head for temporal spans (Zhang et al., "Bridging the Gap Between
Anchor-based and Anchor-free Detection via Adaptive Training Sample Selection", CVPR 2020).

SG-DETR (3.5) uses it as the auxiliary head of its hybrid detector. In 1-D:

- :func:`temporal_pyramid`: the clip features and their ``L`` max-pooled copies (strides
  ``1, 2, 4, ...`` clips), an FPN without lateral convolutions;
- :class:`TemporalPoints`: one anchor-free *point* per pyramid position (the centre of the clips
  it covers) with an anchor span of ``anchor_sizes[level]`` clips around it, used only to select
  training samples, as ATSS's anchor-free variant does;
- :class:`ATSSHead`: convolutional classification and regression towers shared by all levels
  (``Conv1d(k=3) -> GroupNorm -> ReLU``), predicting a foreground logit, the distances from the
  point to the span's start and end (``exp(scale_level * x)`` strides) and a centerness logit;
- :func:`atss_assign`: adaptive positive selection. For each ground-truth span, the ``topk``
  points of every level nearest to its centre are candidates; a candidate whose anchor has
  ``IoU >= mean + std`` of the candidates' IoUs (unbiased std) and whose centre lies strictly
  inside the span is positive; a point positive for several spans takes the one of highest IoU.
  In 1-D every anchor lying inside a span has the same IoU with it, and on such a plateau
  ``mean + std`` can exceed every candidate's IoU, leaving the span without a positive: the
  threshold is therefore capped at the best candidate's IoU (our addition);
- :func:`loss_atss` (registered ``"atss"``): sigmoid focal loss on all valid points, and on the
  positives ``1 - gIoU`` weighted by the centerness target, smooth L1 on the two distances (in
  strides, ``beta = 1/9``) and centerness BCE; sums divided by the number of positives (the
  gIoU by the sum of centerness targets), as ATSS;
- :func:`atss_predictions`: score ``sqrt(sigmoid(cls) * sigmoid(centerness))``, threshold, NMS,
  top-N;
- :func:`positive_anchor_queries`: Co-DETR's customised positive queries, the positive points'
  anchors with their assigned spans, to be decoded by the DETR head during training.

Spans are normalised by each video's number of valid clips (the model convention), so a video's
points depend only on its own length. Centerness in 1-D: ``sqrt(min(l, r) / max(l, r))``.
Shapes: ``B`` videos, ``T`` clips, ``P`` points of all levels, ``d`` width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from momentkit.modeling.denoising import sigmoid_focal_loss
from momentkit.modeling.losses import register_loss
from momentkit.modeling.matcher import Indices, pad_targets
from momentkit.modeling.postprocess import temporal_nms
from momentkit.structures.spans import (
    paired_generalized_temporal_iou,
    span_cxw_to_xx,
    span_xx_to_cxw,
)

if TYPE_CHECKING:
    from momentkit.modeling.criterion import LossConfig

FOCAL_ALPHA = 0.25  # RetinaNet / ATSS
SMOOTH_L1_BETA = 1.0 / 9.0  # RetinaNet / ATSS box deltas
MAX_LOG_DISTANCE = math.log(1e4)  # keeps exp() finite early in training


def temporal_pyramid(
    features: Tensor, mask: Tensor, num_levels: int
) -> tuple[list[Tensor], list[Tensor]]:
    """Features and masks of ``num_levels`` levels, level ``l`` max-pooled by ``2**l`` clips.

    Args:
        features: ``(B, T, d)``.
        mask: ``(B, T)`` bool, True for real clips; padded clips never enter a pooled value.

    Returns:
        ``features`` ``[(B, T_l, d)]`` and ``masks`` ``[(B, T_l)]`` with ``T_l = ceil(T / 2**l)``;
        padded positions hold zeros.
    """
    feats, masks = [features * mask.unsqueeze(-1)], [mask]
    x, m = features, mask
    for _ in range(1, num_levels):
        x = x.masked_fill(~m.unsqueeze(-1), float("-inf")).transpose(1, 2)
        x = F.max_pool1d(x, 2, 2, ceil_mode=True).transpose(1, 2)
        m = F.max_pool1d(m[:, None].float(), 2, 2, ceil_mode=True)[:, 0] > 0
        x = x.masked_fill(~m.unsqueeze(-1), 0.0)
        feats.append(x)
        masks.append(m)
    return feats, masks


@dataclass
class TemporalPoints:
    """The anchor-free points of every pyramid level, normalised per video.

    Attributes:
        centers: ``(B, P)`` centre of the clips each point covers, in ``[0, 1]``.
        strides: ``(B, P)`` the level's stride (``2**level`` clips) in normalised units.
        widths: ``(B, P)`` anchor width (``anchor_sizes[level]`` clips), normalised.
        valid: ``(B, P)`` bool, the point covers at least one real clip.
        level_sizes: positions per level (``P = sum(level_sizes)``), levels in order.
    """

    centers: Tensor
    strides: Tensor
    widths: Tensor
    valid: Tensor
    level_sizes: list[int]

    @property
    def anchors(self) -> Tensor:
        """``(B, P, 2)`` start/end of each point's anchor span."""
        half = self.widths / 2
        return torch.stack([self.centers - half, self.centers + half], dim=-1)

    def decode(self, distances: Tensor) -> Tensor:
        """``(B, P, 2)`` distances to start and end -> ``(B, P, 2)`` start/end spans."""
        return torch.stack(
            [self.centers - distances[..., 0], self.centers + distances[..., 1]], dim=-1
        )


def make_points(
    masks: list[Tensor], num_clips: Tensor, anchor_sizes: list[float]
) -> TemporalPoints:
    """The points of a pyramid built by :func:`temporal_pyramid`.

    Args:
        masks: per level ``(B, T_l)`` bool.
        num_clips: ``(B,)`` valid clips of each video.
        anchor_sizes: anchor width of each level, in clips.
    """
    if len(anchor_sizes) < len(masks):
        raise ValueError(
            f"{len(masks)} pyramid levels but {len(anchor_sizes)} anchor sizes; give one per level"
        )
    n = num_clips.to(torch.float32).clamp(min=1)[:, None]  # (B, 1)
    centers, strides, widths, valid = [], [], [], []
    for level, m in enumerate(masks):
        stride = float(2**level)
        start = torch.arange(m.shape[1], device=m.device, dtype=torch.float32) * stride
        end = torch.minimum(start + stride, n)  # (B, T_l)
        centers.append(((start + end) / 2 / n).clamp(0.0, 1.0))
        strides.append((stride / n).expand_as(end))
        widths.append((anchor_sizes[level] / n).expand_as(end))
        valid.append(m)
    return TemporalPoints(
        torch.cat(centers, 1),
        torch.cat(strides, 1),
        torch.cat(widths, 1),
        torch.cat(valid, 1),
        [m.shape[1] for m in masks],
    )


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class ATSSHead(nn.Module):
    """Classification / regression / centerness towers shared by every pyramid level.

    Args:
        d_model: feature width.
        num_convs: ``Conv1d(3) -> GroupNorm -> ReLU`` blocks in each tower.
        num_levels: pyramid levels (one learnable regression scale each).
        prior_prob: initial foreground probability of the classifier (RetinaNet's bias init).
    """

    def __init__(
        self, d_model: int, num_convs: int = 2, num_levels: int = 4, prior_prob: float = 0.01
    ) -> None:
        super().__init__()

        def tower() -> nn.ModuleList:
            return nn.ModuleList(
                nn.ModuleList([nn.Conv1d(d_model, d_model, 3, padding=1), _group_norm(d_model)])
                for _ in range(num_convs)
            )

        self.cls_tower, self.reg_tower = tower(), tower()
        self.cls_logits = nn.Conv1d(d_model, 1, 3, padding=1)
        self.regression = nn.Conv1d(d_model, 2, 3, padding=1)
        self.centerness = nn.Conv1d(d_model, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(num_levels))
        for module in self.modules():
            if isinstance(module, nn.Conv1d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    @staticmethod
    def _tower(blocks: nn.ModuleList, x: Tensor, mask: Tensor) -> Tensor:
        keep = mask[:, None].to(x.dtype)  # (B, 1, T): padded positions enter every conv as 0
        for conv, norm in blocks:  # type: ignore[misc]
            x = F.relu(norm(conv(x * keep)))
        return x * keep

    def forward(
        self, features: list[Tensor], masks: list[Tensor], points: TemporalPoints
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Predict for every point.

        Args:
            features: per level ``(B, T_l, d)``; ``masks``: per level ``(B, T_l)``.
            points: the levels' points (for the strides).

        Returns:
            ``cls_logits`` ``(B, P)``, ``distances`` ``(B, P, 2)`` (normalised, ``>= 0``) and
            ``centerness_logits`` ``(B, P)``.
        """
        logits, raw, ctr = [], [], []
        for level, (x, m) in enumerate(zip(features, masks)):
            x = x.transpose(1, 2)  # (B, d, T_l)
            c = self._tower(self.cls_tower, x, m)
            r = self._tower(self.reg_tower, x, m)
            logits.append(self.cls_logits(c)[:, 0])
            raw.append(self.regression(r).transpose(1, 2) * self.scales[level])
            ctr.append(self.centerness(r)[:, 0])
        log_dist = torch.cat(raw, 1).clamp(max=MAX_LOG_DISTANCE)
        distances = log_dist.exp() * points.strides.unsqueeze(-1)
        return torch.cat(logits, 1), distances, torch.cat(ctr, 1)


@dataclass
class ATSSAssignment:
    """Training targets of every point (see :func:`atss_assign`).

    Attributes:
        positive: ``(B, P)`` bool.
        target_spans: ``(B, P, 2)`` start/end of the assigned span (zeros for negatives).
        target_index: ``(B, P)`` long, index of the assigned span (``-1`` for negatives).
        centerness: ``(B, P)`` centerness target of positives (zeros for negatives).
        anchor_iou: ``(B, P)`` IoU of the point's anchor with its assigned span.
    """

    positive: Tensor
    target_spans: Tensor
    target_index: Tensor
    centerness: Tensor
    anchor_iou: Tensor


def centerness_target(centers: Tensor, spans: Tensor) -> Tensor:
    """``sqrt(min(l, r) / max(l, r))`` of points ``(...)`` inside start/end spans ``(..., 2)``."""
    left = (centers - spans[..., 0]).clamp(min=0)
    right = (spans[..., 1] - centers).clamp(min=0)
    ratio = torch.minimum(left, right) / torch.maximum(left, right).clamp(min=1e-12)
    return ratio.sqrt()


def atss_assign(
    points: TemporalPoints, span_targets: list[Tensor], topk: int = 9
) -> ATSSAssignment:
    """Adaptive training sample selection (see the module docstring).

    Args:
        points: the pyramid's points.
        span_targets: per video ``(n_i, 2)`` ``(center, width)`` targets.
        topk: candidates per level and target.
    """
    device = points.centers.device
    tgt, counts = pad_targets(span_targets, device)  # (B, N, 2) cxw, (B,)
    has_tgt = torch.arange(tgt.shape[1], device=device)[None] < counts.to(device)[:, None]
    gt = span_cxw_to_xx(tgt)  # (B, N, 2)
    anchors, centers, valid = points.anchors, points.centers, points.valid
    a, g = anchors[:, :, None], gt[:, None]  # (B, P, 1, 2), (B, 1, N, 2)
    inter = (torch.minimum(a[..., 1], g[..., 1]) - torch.maximum(a[..., 0], g[..., 0])).clamp(min=0)
    union = (a[..., 1] - a[..., 0]) + (g[..., 1] - g[..., 0]) - inter
    ious = torch.where(union > 0, inter / union.clamp(min=1e-12), 0.0)  # (B, P, N)
    dist = (centers[:, :, None] - tgt[:, None, :, 0]).abs()
    dist = dist.masked_fill(~valid[:, :, None], math.inf)
    candidate = torch.zeros_like(ious, dtype=torch.bool)
    start = 0
    for size in points.level_sizes:  # the topk nearest points of each level
        idx = dist[:, start : start + size].topk(min(topk, size), dim=1, largest=False).indices
        candidate.scatter_(1, idx + start, True)
        start += size
    candidate &= valid[:, :, None]  # a level with fewer valid points than topk
    count = candidate.sum(1).clamp(min=1).float()  # (B, N)
    mean = (ious * candidate).sum(1) / count
    var = (((ious - mean[:, None]) ** 2) * candidate).sum(1) / (count - 1).clamp(min=1)
    best_candidate = torch.where(candidate, ious, -1.0).max(1).values
    threshold = torch.minimum(mean + var.sqrt(), best_candidate)[:, None]  # (B, 1, N)
    c = centers[:, :, None]
    inside = (c > gt[:, None, :, 0]) & (c < gt[:, None, :, 1])
    reached = ious >= threshold - 1e-6  # float ties on a plateau count as reached
    is_pos = candidate & reached & inside & has_tgt[:, None]  # (B, P, N)
    best_iou, best = torch.where(is_pos, ious, -1.0).max(2)  # (B, P)
    positive = is_pos.any(2)
    target_index = torch.where(positive, best, -1)
    chosen = gt.gather(1, best[..., None].expand(-1, -1, 2))
    target_spans = torch.where(positive[..., None], chosen, 0.0)
    anchor_iou = torch.where(positive, best_iou, 0.0)
    centerness = torch.where(positive, centerness_target(points.centers, target_spans), 0.0)
    return ATSSAssignment(positive, target_spans, target_index, centerness, anchor_iou)


@dataclass
class ATSSOutputs:
    """What the dense head contributes to the model's output dict (under ``"atss"``).

    Attributes:
        cls_logits: ``(B, P)``; ``distances``: ``(B, P, 2)``; ``centerness_logits``: ``(B, P)``.
        points: the points they belong to.
        assignment: training targets (``None`` without span targets, e.g. at inference).
    """

    cls_logits: Tensor
    distances: Tensor
    centerness_logits: Tensor
    points: TemporalPoints
    assignment: ATSSAssignment | None = None


@register_loss(
    "atss", ("loss_atss_label", "loss_atss_giou", "loss_atss_span", "loss_atss_centerness")
)
def loss_atss(
    outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
) -> dict[str, Tensor]:
    """The ATSS head's losses (see the module docstring); skipped without an assignment."""
    out: ATSSOutputs | None = outputs.get("atss")
    if out is None or out.assignment is None:
        return {}
    a, pts = out.assignment, out.points
    cls_logits, distances = out.cls_logits.float(), out.distances.float()
    ctr_logits = out.centerness_logits.float()
    pos = a.positive
    num_pos = pos.sum().clamp(min=1).float()
    focal = sigmoid_focal_loss(cls_logits, pos.float(), FOCAL_ALPHA, 2.0)
    label = (focal * pts.valid).sum() / num_pos
    if not bool(pos.any()):
        zero = distances.sum() * 0.0 + ctr_logits.sum() * 0.0
        return {
            "loss_atss_label": label,
            "loss_atss_giou": zero,
            "loss_atss_span": zero,
            "loss_atss_centerness": zero,
        }
    pred = pts.decode(distances)[pos]  # (M, 2)
    tgt = a.target_spans[pos]
    weight = a.centerness[pos]
    giou = 1.0 - paired_generalized_temporal_iou(pred, tgt)
    giou = (giou * weight).sum() / weight.sum().clamp(min=1e-6)
    centers, stride = pts.centers[pos], pts.strides[pos].unsqueeze(-1)
    tgt_dist = torch.stack([centers - tgt[:, 0], tgt[:, 1] - centers], dim=-1)
    span = F.smooth_l1_loss(
        distances[pos] / stride, tgt_dist / stride, beta=SMOOTH_L1_BETA, reduction="sum"
    )
    ctr = F.binary_cross_entropy_with_logits(ctr_logits[pos], weight, reduction="sum")
    return {
        "loss_atss_label": label,
        "loss_atss_giou": giou,
        "loss_atss_span": span / num_pos,
        "loss_atss_centerness": ctr / num_pos,
    }


def atss_scores(out: ATSSOutputs) -> Tensor:
    """``(B, P)`` detection scores ``sqrt(sigmoid(cls) * sigmoid(centerness))``, 0 if invalid."""
    score = (out.cls_logits.sigmoid() * out.centerness_logits.sigmoid()).sqrt()
    return score * out.points.valid


def atss_predictions(
    out: ATSSOutputs, score_threshold: float = 0.05, nms_threshold: float = 0.5, top_n: int = 10
) -> list[tuple[Tensor, Tensor]]:
    """Per video ``(spans (n, 2) start/end in [0, 1], scores (n,))``, best first.

    Points scoring above ``score_threshold`` are kept, de-duplicated by temporal NMS (IoU above
    ``nms_threshold`` suppressed) and cut to ``top_n``.
    """
    scores = atss_scores(out).detach().float().cpu()
    spans = out.points.decode(out.distances).detach().float().cpu().clamp(0.0, 1.0)
    results = []
    for s, w in zip(scores, spans):
        keep = (s > score_threshold).nonzero().squeeze(1)
        s, w = s[keep], w[keep]
        order = temporal_nms(w, s, nms_threshold) if len(s) else keep[:0]
        order = order[:top_n]
        results.append((w[order], s[order]))
    return results


@dataclass
class PositiveQueries:
    """Co-DETR's auxiliary positive queries, padded to the batch's largest count ``M``.

    Attributes:
        anchors: ``(B, M, 2)`` ``(center, width)`` anchors of positive points.
        targets: ``(B, M, 2)`` ``(center, width)`` of the span each one must predict.
        point_index: ``(B, M)`` long, the point each query comes from (``0`` if invalid).
        valid: ``(B, M)`` bool.
    """

    anchors: Tensor
    targets: Tensor
    point_index: Tensor
    valid: Tensor

    @property
    def num_queries(self) -> int:
        """``M``."""
        return self.anchors.shape[1]


def positive_anchor_queries(
    points: TemporalPoints, assignment: ATSSAssignment, max_per_video: int
) -> PositiveQueries:
    """The positive points' anchors and targets, at most ``max_per_video`` a video.

    When a video has more positives, those whose anchors overlap their span most are kept.
    """
    pos = assignment.positive
    order = torch.where(pos, assignment.anchor_iou, -1.0).argsort(dim=1, descending=True)
    m = max(0, min(max_per_video, int(pos.sum(1).max()) if len(pos) else 0))
    index = order[:, :m]  # (B, M)
    valid = pos.gather(1, index)
    anchors = points.anchors.gather(1, index[..., None].expand(-1, -1, 2)).clamp(0.0, 1.0)
    targets = assignment.target_spans.gather(1, index[..., None].expand(-1, -1, 2))
    return PositiveQueries(
        anchors=torch.where(valid[..., None], span_xx_to_cxw(anchors), 0.5),
        targets=torch.where(valid[..., None], span_xx_to_cxw(targets), 0.5),
        point_index=torch.where(valid, index, 0),
        valid=valid,
    )
