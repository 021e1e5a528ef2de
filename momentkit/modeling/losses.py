"""Named loss functions, chosen by name from the config (DETR's ``get_loss``).

Every loss has the signature ``fn(outputs, batch, indices, config) -> {term_name: tensor}``:

- ``outputs``: the model output dict (or one entry of ``outputs["aux_outputs"]``);
- ``batch``: the batch dict of :mod:`momentkit.data.loader`;
- ``indices``: the Hungarian matching of these outputs (``[]`` when the loss needs none);
- ``config``: the :class:`~momentkit.modeling.criterion.LossConfig`.

Terms are unweighted; :class:`~momentkit.modeling.criterion.SetCriterion` weighs and sums them. A
loss returns ``{}`` when the batch lacks its targets (e.g. saliency losses on Charades-STA).

Register a new loss (e.g. a distillation term of a later paper) with :func:`register_loss`; the
criterion picks it up as soon as its name is listed in ``LossConfig.losses``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from momentkit.modeling.matcher import Indices
from momentkit.structures.spans import paired_generalized_temporal_iou, span_cxw_to_xx
from momentkit.utils.registry import Registry

if TYPE_CHECKING:
    from momentkit.modeling.criterion import LossConfig

LossFn = Callable[[dict[str, Any], dict[str, Any], Indices, "LossConfig"], dict[str, Tensor]]

FOREGROUND, BACKGROUND = 0, 1


@dataclass(frozen=True)
class LossSpec:
    """A registered loss.

    Attributes:
        fn: the loss function.
        terms: names of the terms it returns (the keys of ``LossConfig.weights``).
        per_layer: also applied to every auxiliary decoder layer's outputs.
        needs_matching: consumes the Hungarian matching (and span targets).
    """

    fn: LossFn
    terms: tuple[str, ...]
    per_layer: bool = False
    needs_matching: bool = False


LOSSES: Registry[LossSpec] = Registry("loss")


def register_loss(
    name: str, terms: tuple[str, ...], per_layer: bool = False, needs_matching: bool = False
) -> Callable[[LossFn], LossFn]:
    """Decorator registering a loss function under ``name`` (see the module docstring)."""

    def deco(fn: LossFn) -> LossFn:
        LOSSES.register(name)(LossSpec(fn, terms, per_layer, needs_matching))
        return fn

    return deco


def matched_index(indices: Indices, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(batch_idx, pred_idx)`` of all matched predictions (index ``(B, Q, ...)`` tensors)."""
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    pred_idx = torch.cat([src for src, _ in indices])
    return batch_idx.to(device), pred_idx.to(device)


def _video_mask(outputs: dict[str, Any], batch: dict[str, Any]) -> Tensor:
    """The ``(B, T)`` clip mask, from the outputs (as the model saw it) or else the batch."""
    return outputs["video_mask"] if "video_mask" in outputs else batch["video_mask"]


def span_targets(batch: dict[str, Any]) -> list[Tensor]:
    """The ``(n_i, 2)`` cxw target spans of each video in ``batch``."""
    return [t["spans"] for t in batch["span_targets"]]


@register_loss("spans", ("loss_span", "loss_giou"), per_layer=True, needs_matching=True)
def loss_spans(
    outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
) -> dict[str, Tensor]:
    """L1 on matched ``(center, width)`` pairs (mean over coordinates) and ``1 - gIoU`` (mean)."""
    pred_spans = outputs["pred_spans"]
    src = pred_spans[matched_index(indices, pred_spans.device)]  # (M, 2)
    targets = span_targets(batch)
    tgt = torch.cat([t[j] for t, (_, j) in zip(targets, indices)]).to(src)  # (M, 2)
    if len(src) == 0:
        zero = pred_spans.sum() * 0.0
        return {"loss_span": zero, "loss_giou": zero}
    loss_giou = 1.0 - paired_generalized_temporal_iou(span_cxw_to_xx(src), span_cxw_to_xx(tgt))
    return {"loss_span": F.l1_loss(src, tgt), "loss_giou": loss_giou.mean()}


def _target_classes(logits: Tensor, indices: Indices) -> Tensor:
    """``(B, Q)`` class targets: foreground for matched queries, background elsewhere."""
    target = torch.full(logits.shape[:2], BACKGROUND, dtype=torch.long, device=logits.device)
    target[matched_index(indices, logits.device)] = FOREGROUND
    return target


def _class_weight(config: LossConfig, like: Tensor) -> Tensor:
    weight = like.new_ones(2)
    weight[BACKGROUND] = config.eos_coef
    return weight


@register_loss("labels", ("loss_label",), per_layer=True, needs_matching=True)
def loss_labels(
    outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
) -> dict[str, Tensor]:
    """Foreground/background cross-entropy over all queries; background weighted ``eos_coef``.

    Averaged over queries (not over weights), as in Moment-DETR.
    """
    logits = outputs["pred_logits"]  # (B, Q, 2)
    target = _target_classes(logits, indices)
    ce = F.cross_entropy(
        logits.transpose(1, 2), target, _class_weight(config, logits), reduction="none"
    )
    return {"loss_label": ce.mean()}


@register_loss("labels_focal", ("loss_label",), per_layer=True, needs_matching=True)
def loss_labels_focal(
    outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
) -> dict[str, Tensor]:
    """Focal :func:`loss_labels`: ``-w_t (1 - p_t)**gamma log p_t``, mean over queries."""
    logits = outputs["pred_logits"]
    target = _target_classes(logits, indices)
    log_p = logits.log_softmax(-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (B, Q)
    weight = _class_weight(config, logits)[target]
    loss = -weight * (1.0 - log_p.exp()).pow(config.focal_gamma) * log_p
    return {"loss_label": loss.mean()}


@register_loss("saliency_margin", ("loss_saliency_margin",))
def loss_saliency_margin(
    outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
) -> dict[str, Tensor]:
    """Moment-DETR's hinge: sampled positive clips should outscore negative ones by ``margin``.

    ``2 * mean(max(0, margin + s_neg - s_pos))`` over the ``(B, P)`` sampled pairs.
    """
    if "saliency_pos_labels" not in batch:
        return {}
    scores = outputs["saliency_scores"]  # (B, T)
    pos = scores.gather(1, batch["saliency_pos_labels"].to(scores.device))
    neg = scores.gather(1, batch["saliency_neg_labels"].to(scores.device))
    loss = (config.saliency_margin + neg - pos).clamp(min=0).mean() * 2.0
    return {"loss_saliency_margin": loss}


@register_loss("saliency_rank_contrastive", ("loss_saliency_rank",))
def loss_saliency_rank_contrastive(
    outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
) -> dict[str, Tensor]:
    """QD-DETR's rank-aware contrastive loss.

    For each threshold ``k = 1 .. K`` the clips whose saliency (``saliency_all_labels`` times
    ``rank_label_scale``, QD-DETR's sum over annotators) is ``>= k`` are positives of an InfoNCE
    over all valid clips at temperature ``rank_tau``; clips scored with the mismatched query
    (``saliency_scores_neg``, when present) join as negatives. Videos without a positive at a
    threshold contribute 0; the sum over thresholds is divided by ``K + 1``. All thresholds share
    one log-softmax, so this is one vectorised computation.
    """
    if "saliency_all_labels" not in batch:
        return {}
    scores = outputs["saliency_scores"]  # (B, T)
    mask = _video_mask(outputs, batch).to(scores.dtype)
    labels = batch["saliency_all_labels"].to(scores) * config.rank_label_scale
    if "saliency_scores_neg" in outputs:
        scores = torch.cat([scores, outputs["saliency_scores_neg"]], dim=1)
        labels = torch.cat([labels, torch.zeros_like(labels)], dim=1)
        mask = torch.cat([mask, mask], dim=1)
    scores = mask * scores + (1.0 - mask) * -1e3
    logits = scores / config.rank_tau
    logits = logits - logits.max(dim=1, keepdim=True).values
    log_prob = logits - torch.log(logits.exp().sum(1, keepdim=True) + 1e-6)  # (B, 2T)
    thresholds = torch.arange(1, config.rank_num_thresholds + 1, device=scores.device)
    pos = (labels.unsqueeze(0) >= thresholds[:, None, None] - 1e-4).to(scores.dtype)  # (K,B,2T)
    num_pos = pos.sum(2)  # (K, B)
    mean_log_prob_pos = (pos * (log_prob * mask).unsqueeze(0)).sum(2) / (num_pos + 1e-6)
    per_threshold = (-mean_log_prob_pos * (num_pos > 0)).mean(1)  # (K,)
    return {"loss_saliency_rank": per_threshold.sum() / (config.rank_num_thresholds + 1)}


@register_loss("saliency_neg_pair", ("loss_saliency_neg",))
def loss_saliency_neg_pair(
    outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
) -> dict[str, Tensor]:
    """QD-DETR's negative-pair loss: clips scored against another video's query are irrelevant.

    ``mean_b sum_t -log(1 - sigmoid(s_neg[b, t]))`` over valid clips (computed as a softplus,
    or literally with ``neg_pair_form="log_sigmoid"``). Needs ``saliency_scores_neg`` (QD-DETR
    computes it in training mode).
    """
    if "saliency_scores_neg" not in outputs:
        return {}
    neg = outputs["saliency_scores_neg"]
    mask = _video_mask(outputs, batch).to(neg.dtype)
    if config.neg_pair_form == "log_sigmoid":  # the released formula, term by term
        per_clip = -torch.log(1.0 - torch.sigmoid(neg))
    else:
        per_clip = F.softplus(neg)
    return {"loss_saliency_neg": (per_clip * mask).sum(1).mean()}


@register_loss("saliency_ce", ("loss_saliency_ce",))
def loss_saliency_ce(
    outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
) -> dict[str, Tensor]:
    """Per-clip binary cross-entropy: clips with positive saliency are foreground.

    Mean over valid clips of ``BCE(sigmoid(s), saliency_all_labels > 0)``.
    """
    if "saliency_all_labels" not in batch:
        return {}
    scores = outputs["saliency_scores"]
    mask = _video_mask(outputs, batch).to(scores.dtype)
    target = (batch["saliency_all_labels"].to(scores.device) > 0).to(scores.dtype)
    bce = F.binary_cross_entropy_with_logits(scores, target, reduction="none")
    return {"loss_saliency_ce": (bce * mask).sum() / mask.sum().clamp(min=1.0)}
