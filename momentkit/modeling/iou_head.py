"""Localisation confidence (SG-DETR, section 3.6): an IoU-prediction head.

Each decoder query also predicts the IoU of its span with the moment it found
(:class:`IoUHead`, a logit ``(B, Q)``). Its target (:func:`matched_iou_targets`) is the actual
IoU of a matched query's span with its ground-truth span, with no gradient through the span;
:func:`loss_iou_head` (registered ``"iou_head"``, per decoder layer) is the binary cross-entropy
of the predicted IoU against it, averaged over the matched queries (unmatched queries have no
IoU to learn, as in IoU-Net and GFL's quality branch).

The predicted IoU ``u`` enters twice, through one score: the localisation-aware confidence
``q = p**(1 - alpha) * u**alpha`` of a query with foreground probability ``p``
(:func:`localization_score`; ``alpha = 0.5`` gives the geometric mean ``sqrt(p u)`` that ranks
predictions). Matching uses ``q`` in place of ``p`` in the class cost
(:func:`iou_aware_logits` turns ``q`` into logits the Hungarian matcher reads), and the final
score of a prediction is ``q``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from momentkit.modeling.losses import matched_index, register_loss, span_targets
from momentkit.modeling.matcher import Indices
from momentkit.modeling.mlp import MLP
from momentkit.structures.spans import paired_temporal_iou, span_cxw_to_xx

if TYPE_CHECKING:
    from momentkit.modeling.criterion import LossConfig

_MAX_LOG_SCORE = math.log1p(-1e-6)


class IoUHead(nn.Module):
    """``(..., d)`` decoder outputs -> ``(...)`` IoU logits (a 2-layer MLP)."""

    def __init__(self, d_model: int, num_layers: int = 2) -> None:
        super().__init__()
        self.mlp = MLP(d_model, d_model, 1, num_layers)

    def forward(self, hs: Tensor) -> Tensor:
        """``(..., d)`` -> ``(...)``."""
        return self.mlp(hs).squeeze(-1)


def log_localization_score(pred_logits: Tensor, pred_iou: Tensor | None, alpha: float) -> Tensor:
    """``log q = (1 - alpha) log p + alpha log u`` (``log p`` alone without an IoU head).

    Args:
        pred_logits: ``(..., 2)`` class logits, class 0 foreground.
        pred_iou: ``(...)`` IoU logits or ``None``.
        alpha: weight of the predicted IoU, in ``[0, 1]``.
    """
    log_p = pred_logits.log_softmax(-1)[..., 0]
    if pred_iou is None:
        return log_p
    return (1.0 - alpha) * log_p + alpha * F.logsigmoid(pred_iou)


def localization_score(pred_logits: Tensor, pred_iou: Tensor | None, alpha: float) -> Tensor:
    """``q = p**(1 - alpha) * u**alpha`` in ``[0, 1]``, shape ``(...)``."""
    return log_localization_score(pred_logits, pred_iou, alpha).exp()


def score_to_logits(log_score: Tensor) -> Tensor:
    """``(...)`` log-probabilities -> ``(..., 2)`` logits whose softmax is ``(q, 1 - q)``."""
    log_q = log_score.clamp(max=_MAX_LOG_SCORE)
    return torch.stack([log_q, torch.log1p(-log_q.exp())], dim=-1)


def iou_aware_logits(pred_logits: Tensor, pred_iou: Tensor | None, alpha: float) -> Tensor:
    """``(..., 2)`` logits whose foreground probability is the localisation score ``q``."""
    return score_to_logits(log_localization_score(pred_logits, pred_iou, alpha))


def matched_iou_targets(
    pred_spans: Tensor, indices: Indices, targets: list[Tensor]
) -> tuple[tuple[Tensor, Tensor], Tensor]:
    """IoU of each matched prediction with its target span (no gradient).

    Args:
        pred_spans: ``(B, Q, 2)`` predicted ``(center, width)``.
        indices: the matching, per video ``(pred_idx, tgt_idx)``.
        targets: per video ``(n_i, 2)`` target ``(center, width)``.

    Returns:
        ``((batch_idx, query_idx), iou)``: the index of the ``M`` matched queries and their
        ``(M,)`` IoU targets.
    """
    idx = matched_index(indices, pred_spans.device)
    src = pred_spans[idx].detach()
    tgt = torch.cat([t[j] for t, (_, j) in zip(targets, indices)]).to(src)
    if len(src) == 0:
        return idx, src.new_zeros(0)
    iou, _ = paired_temporal_iou(span_cxw_to_xx(src), span_cxw_to_xx(tgt))
    return idx, iou


@register_loss("iou_head", ("loss_iou",), per_layer=True, needs_matching=True)
def loss_iou_head(
    outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
) -> dict[str, Tensor]:
    """BCE of the predicted IoU of matched queries against their actual IoU.

    Needs ``outputs["pred_iou"]`` ``(B, Q)``; skipped without it (IoU head off).
    """
    if "pred_iou" not in outputs:
        return {}
    pred_iou = outputs["pred_iou"]
    idx, target = matched_iou_targets(outputs["pred_spans"], indices, span_targets(batch))
    if len(target) == 0:
        return {"loss_iou": pred_iou.sum() * 0.0}
    return {"loss_iou": F.binary_cross_entropy_with_logits(pred_iou[idx], target)}
