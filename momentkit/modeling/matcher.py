"""Hungarian matching of predicted spans to ground-truth spans (DETR's bipartite matching).

The cost of assigning prediction ``i`` to target ``j`` is::

    cost_span * |span_i - span_j|_1 - cost_giou * gIoU(span_i, span_j) - cost_class * p_i(fg)

and :func:`scipy.optimize.linear_sum_assignment` finds the assignment of least total cost
(``min(Q, n)`` pairs per video). The cost tensor of every decoder layer and video is built in one
batched computation over padded targets and copied to the CPU once; only the per-video
assignment runs in a Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from momentkit.structures.spans import span_cxw_to_xx

Indices = list[tuple[Tensor, Tensor]]  # per video: (prediction indices, target indices), int64


@dataclass
class MatcherConfig:
    """Weights of the matching cost terms (Moment-DETR / QD-DETR defaults)."""

    cost_span: float = 10.0
    cost_giou: float = 1.0
    cost_class: float = 4.0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field of a cost that is negative or all-zero costs."""
        for name in ("cost_span", "cost_giou", "cost_class"):
            if getattr(self, name) < 0:
                raise ValueError(f"matcher.{name} must be >= 0, got {getattr(self, name)}")
        if not (self.cost_span or self.cost_giou or self.cost_class):
            raise ValueError("matcher: all costs are 0; set cost_span, cost_giou or cost_class")


def pad_targets(span_targets: list[Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-video ``(n_i, 2)`` spans -> ``(B, N, 2)`` zero-padded spans and ``(B,)`` counts."""
    counts = torch.tensor([len(t) for t in span_targets], dtype=torch.long)
    width = max(1, int(counts.max()) if len(counts) else 1)
    padded = torch.zeros(len(span_targets), width, 2, device=device)
    for i, t in enumerate(span_targets):
        if len(t):
            padded[i, : len(t)] = t.to(device=device, dtype=padded.dtype)
    return padded, counts


def _paired_giou(a: Tensor, b: Tensor) -> Tensor:
    """Broadcast gIoU of start/end spans ``(..., 2)`` x ``(..., 2)`` -> ``(...)``."""
    inter = (torch.min(a[..., 1], b[..., 1]) - torch.max(a[..., 0], b[..., 0])).clamp(min=0)
    union = (a[..., 1] - a[..., 0]).clamp(min=0) + (b[..., 1] - b[..., 0]).clamp(min=0) - inter
    hull = (torch.max(a[..., 1], b[..., 1]) - torch.min(a[..., 0], b[..., 0])).clamp(min=0)
    iou = torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))
    return iou - (hull - union) / hull.clamp(min=1e-12)


def matching_cost(
    pred_logits: Tensor, pred_spans: Tensor, tgt_spans: Tensor, config: MatcherConfig
) -> Tensor:
    """Assignment cost of every prediction to every (padded) target.

    Args:
        pred_logits: ``(..., B, Q, 2)`` class logits (class 0 = foreground).
        pred_spans: ``(..., B, Q, 2)`` predicted spans, normalised ``(center, width)``.
        tgt_spans: ``(B, N, 2)`` target spans, normalised ``(center, width)``.

    Returns:
        ``(..., B, Q, N)`` cost (entries for padded targets are meaningless).
    """
    prob_fg = pred_logits.softmax(-1)[..., 0]  # (..., B, Q)
    pred = pred_spans.unsqueeze(-2)  # (..., B, Q, 1, 2)
    tgt = tgt_spans.unsqueeze(-3)  # (B, 1, N, 2)
    cost_l1 = (pred - tgt).abs().sum(-1)
    cost_giou = -_paired_giou(span_cxw_to_xx(pred), span_cxw_to_xx(tgt))
    return (
        config.cost_span * cost_l1
        + config.cost_giou * cost_giou
        - config.cost_class * prob_fg.unsqueeze(-1)
    )


class HungarianMatcher:
    """One-to-one assignment of predictions to targets of least total cost."""

    def __init__(self, config: MatcherConfig | None = None) -> None:
        self.config = config or MatcherConfig()
        self.config.validate()

    @torch.no_grad()
    def match_layers(
        self, pred_logits: Tensor, pred_spans: Tensor, span_targets: list[Tensor]
    ) -> list[Indices]:
        """Match the predictions of several decoder layers at once.

        Args:
            pred_logits: ``(K, B, Q, 2)`` logits of ``K`` layers.
            pred_spans: ``(K, B, Q, 2)`` spans (cxw, normalised).
            span_targets: ``B`` tensors ``(n_i, 2)`` (cxw, normalised).

        Returns:
            ``K`` lists of ``B`` pairs ``(pred_idx, tgt_idx)``, int64 CPU tensors of length
            ``min(Q, n_i)``, ``tgt_idx``-aligned with ``pred_idx``.
        """
        padded, counts = pad_targets(span_targets, pred_spans.device)
        cost = matching_cost(pred_logits.float(), pred_spans.float(), padded, self.config)
        cost_np = cost.cpu().numpy()
        empty = torch.empty(0, dtype=torch.int64)
        out: list[Indices] = []
        for layer_cost in cost_np:
            layer: Indices = []
            for c, n in zip(layer_cost, counts.tolist()):
                if n == 0:
                    layer.append((empty, empty))
                    continue
                rows, cols = linear_sum_assignment(c[:, :n])
                layer.append(
                    (
                        torch.from_numpy(rows.astype(np.int64)),
                        torch.from_numpy(cols.astype(np.int64)),
                    )
                )
            out.append(layer)
        return out

    def __call__(
        self, pred_logits: Tensor, pred_spans: Tensor, span_targets: list[Tensor]
    ) -> Indices:
        """Match one layer: ``(B, Q, 2)`` logits and spans -> ``B`` ``(pred_idx, tgt_idx)``."""
        return self.match_layers(pred_logits[None], pred_spans[None], span_targets)[0]
