"""DINO's mixed query selection for temporal spans (Zhang et al., "DINO: DETR with Improved
DeNoising Anchor Boxes for End-to-End Object Detection", ICLR 2023, section 3.4).

Every encoder position proposes a span: a default *proposal* centred on the position with its
level's default width (DINO: ``0.05 * 2**level``), refined by a span head in logit space, and a
foreground score from a class head, both on ``LayerNorm(Linear(memory))``. The ``K`` positions
of highest foreground probability give the decoder's initial anchors (detached, as DINO); the
query *content* stays a learned embedding ("mixed" selection). When a video has fewer than ``K``
valid positions the ranking wraps around, so its best proposals appear more than once.

The selected proposals are supervised like decoder outputs (DINO's "interm" loss):
:func:`loss_query_selection` (registered ``"query_selection"``) matches them one-to-one with the
targets (Hungarian, the Moment-DETR costs) and applies the ``spans`` and ``labels`` losses.
Shapes: ``B`` videos, ``P`` positions, ``K`` queries, ``d`` width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from momentkit.modeling.anchor_decoder import inverse_sigmoid
from momentkit.modeling.linear import Linear
from momentkit.modeling.losses import loss_labels, loss_spans, register_loss, span_targets
from momentkit.modeling.matcher import HungarianMatcher, Indices
from momentkit.modeling.mlp import MLP

if TYPE_CHECKING:
    from momentkit.modeling.criterion import LossConfig


@dataclass
class SelectedQueries:
    """The decoder's matching queries chosen from the encoder positions.

    Attributes:
        anchors: ``(B, K, 2)`` ``(center, width)`` anchors before the sigmoid, detached.
        content: ``(B, K, d)`` learned content queries.
        index: ``(B, K)`` long, the selected positions.
        hidden: ``(B, K, d)`` ``LayerNorm(Linear(memory))`` of the selected positions.
        enc_logits: ``(B, K, 2)`` class logits of the selected proposals (class 0 foreground).
        enc_spans: ``(B, K, 2)`` their spans after the sigmoid (with gradient).
    """

    anchors: Tensor
    content: Tensor
    index: Tensor
    hidden: Tensor
    enc_logits: Tensor
    enc_spans: Tensor


def top_k_wrapped(scores: Tensor, valid: Tensor, k: int) -> Tensor:
    """``(B, k)`` indices of the ``k`` best valid positions of each row, best first.

    A row with ``n < k`` valid positions repeats its ranking (``r -> r mod n``). Every row needs
    a valid position.
    """
    masked = scores.masked_fill(~valid, float("-inf"))
    order = masked.argsort(dim=1, descending=True, stable=True)
    n = valid.sum(1, keepdim=True).clamp(min=1)  # (B, 1)
    ranks = torch.arange(k, device=scores.device)[None] % n  # (B, k)
    return order.gather(1, ranks)


class QuerySelection(nn.Module):
    """Scores every encoder position and selects the top ``num_queries`` as anchors.

    Args:
        d_model: feature width.
        num_queries: ``K``.
        default_widths: normalised default proposal width of each pyramid level.
    """

    def __init__(self, d_model: int, num_queries: int, default_widths: list[float]) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.default_widths = list(default_widths)
        self.enc_output = Linear(d_model, d_model)
        self.enc_norm = nn.LayerNorm(d_model)
        self.class_embed = Linear(d_model, 2)
        self.span_embed = MLP(d_model, d_model, 2, 3)
        nn.init.zeros_(self.span_embed.layers[-1].weight)
        nn.init.zeros_(self.span_embed.layers[-1].bias)
        self.content = nn.Embedding(num_queries, d_model)

    def proposals(self, centers: Tensor, level_sizes: list[int]) -> Tensor:
        """``(B, P, 2)`` default ``(center, width)`` proposals of the positions."""
        if len(self.default_widths) < len(level_sizes):
            raise ValueError(
                f"{len(level_sizes)} pyramid levels but {len(self.default_widths)} default "
                "proposal widths; give one per level"
            )
        widths = torch.cat(
            [centers.new_full((size,), w) for size, w in zip(level_sizes, self.default_widths)]
        )
        return torch.stack([centers, widths.expand_as(centers)], dim=-1)

    def transform(self, memory: Tensor) -> Tensor:
        """DINO's ``LayerNorm(Linear(memory))``: ``(..., d)`` -> ``(..., d)``."""
        return self.enc_norm(self.enc_output(memory))

    def forward(
        self,
        memory: Tensor,
        valid: Tensor,
        centers: Tensor,
        level_sizes: list[int],
        scores: Tensor | None = None,
    ) -> SelectedQueries:
        """Select the anchors of the matching queries.

        Args:
            memory: ``(B, P, d)`` encoder features of every position.
            valid: ``(B, P)`` bool.
            centers: ``(B, P)`` normalised centre of each position.
            level_sizes: positions per pyramid level (for the default widths).
            scores: ``(B, P)`` ranking of the positions to use instead of the class head's
                foreground probability (MS-DETR ranks clips by their saliency); detached.
        """
        hidden = self.transform(memory)
        logits = self.class_embed(hidden)  # (B, P, 2)
        proposals = inverse_sigmoid(self.proposals(centers, level_sizes))
        rank = logits.softmax(-1)[..., 0] if scores is None else scores
        index = top_k_wrapped(rank.detach(), valid, self.num_queries)
        take = index[..., None]
        sel_hidden = hidden.gather(1, take.expand(-1, -1, hidden.shape[-1]))
        spans = (
            self.span_embed(sel_hidden) + proposals.gather(1, take.expand(-1, -1, 2))
        ).sigmoid()
        content = self.content.weight.unsqueeze(0).expand(len(memory), -1, -1)
        return SelectedQueries(
            anchors=inverse_sigmoid(spans.detach()),
            content=content,
            index=index,
            hidden=sel_hidden,
            enc_logits=logits.gather(1, take.expand(-1, -1, 2)),
            enc_spans=spans,
        )


_ENC_MATCHER = HungarianMatcher()


@register_loss("query_selection", ("loss_enc_span", "loss_enc_giou", "loss_enc_label"))
def loss_query_selection(
    outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
) -> dict[str, Tensor]:
    """DINO's loss on the selected proposals (``outputs["enc_outputs"]``).

    One-to-one Hungarian matching (Moment-DETR costs), then :func:`loss_spans` and
    :func:`loss_labels`. Skipped without ``enc_outputs`` or span targets.
    """
    enc = outputs.get("enc_outputs")
    if enc is None or "span_targets" not in batch:
        return {}
    matched = _ENC_MATCHER(
        enc["pred_logits"].detach(), enc["pred_spans"].detach(), span_targets(batch)
    )
    spans = loss_spans(enc, batch, matched, config)
    label = loss_labels(enc, batch, matched, config)
    return {
        "loss_enc_span": spans["loss_span"],
        "loss_enc_giou": spans["loss_giou"],
        "loss_enc_label": label["loss_label"],
    }
