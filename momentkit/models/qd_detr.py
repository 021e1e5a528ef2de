"""QD-DETR (Moon et al., CVPR 2023): query-dependent video representations for moments.

Differences from Moment-DETR, following the paper and wjun0830/QD-DETR:

- text-to-video (T2V) cross-attention layers first inject the query into every clip; only clip
  tokens then go through the self-attention encoder, preceded by a learned global ("dummy")
  token with its own learned position;
- saliency is the scaled dot product of the projected global token with each projected clip;
- during training the encoder also runs with each video paired with another video's query
  (queries rolled by one in the batch) to produce ``saliency_scores_neg``; both pairings run as
  one batch of ``2B`` and the decoder is skipped for the negative half, whose spans are unused;
- the decoder is an anchor (DAB-DETR style) decoder whose queries are learned
  ``(center, width)`` anchors refined layer by layer;
- losses add the rank-aware contrastive and negative-pair saliency losses.

LD-DETR's plug-and-play modules apply by config: ``decoder_loops`` (Loop Decoder) and
``distill_align`` (Distill Align on the input projections' outputs, before the negative pairs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from momentkit.modeling.anchor_decoder import AnchorDecoder
from momentkit.modeling.criterion import LossConfig
from momentkit.modeling.heads import SpanHead
from momentkit.modeling.transformer import CrossAttentionEncoder, TransformerEncoder
from momentkit.models.base import MODELS, DETRConfig, MomentModel, build_distill_align, build_inputs


def _qd_detr_loss() -> LossConfig:
    return LossConfig(
        losses=[
            "spans",
            "labels",
            "saliency_margin",
            "saliency_rank_contrastive",
            "saliency_neg_pair",
        ]
    )


@dataclass
class QDDETRConfig(DETRConfig):
    """QD-DETR hyper-parameters.

    Attributes:
        t2v_layers: text-to-video cross-attention layers (the official code uses ``enc_layers``).
    """

    name: str = "qd_detr"
    t2v_layers: int = 2
    loss: LossConfig = field(default_factory=_qd_detr_loss)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range field."""
        super().validate()
        if self.t2v_layers < 0:
            raise ValueError(f"model.t2v_layers must be >= 0, got {self.t2v_layers}")


@MODELS.register("qd_detr")
class QDDETR(MomentModel):
    """QD-DETR: T2V cross-attention, global-token saliency, negative pairs, anchor decoder."""

    config_class = QDDETRConfig

    def __init__(self, config: QDDETRConfig) -> None:
        super().__init__(config)
        c, d = config, config.hidden_dim
        self.video_proj, self.text_proj, self.video_pos, self.text_pos = build_inputs(c)
        layer_args = (c.dim_feedforward, c.dropout, c.activation, c.pre_norm)
        self.t2v = CrossAttentionEncoder(
            d, c.nheads, c.t2v_layers, *layer_args, ffn_skip_norm=not c.pre_norm
        )
        self.encoder = TransformerEncoder(d, c.nheads, c.enc_layers, *layer_args)
        self.decoder = AnchorDecoder(d, c.nheads, c.dec_layers, *layer_args, loops=c.decoder_loops)
        self.anchors = nn.Embedding(c.num_queries, 2)
        self.global_token = nn.Parameter(torch.randn(d))
        self.global_pos = nn.Parameter(torch.randn(d))
        self.head = SpanHead(d)
        self.saliency_proj1 = nn.Linear(d, d)
        self.saliency_proj2 = nn.Linear(d, d)
        self.distill_align = build_distill_align(c, self.video_proj, self.text_proj)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Batch dict -> output dict; adds ``saliency_scores_neg`` in training mode."""
        video_mask, text_mask = batch["video_mask"].bool(), batch["text_mask"].bool()
        video = self.video_proj(batch["video_feats"], video_mask)  # (B, T, d)
        text = self.text_proj(batch["text_feats"], text_mask)  # (B, N, d)
        video_pos = self.video_pos(video_mask)
        batch_size, d = len(video), self.config.hidden_dim
        loss_align = None
        if self.distill_align is not None and self.training:
            encoders = (self.video_proj, self.text_proj)
            loss_align = self.distill_align(video, text, batch, encoders)
        if self.training:  # pair every video with its own and with the next video's query
            video, video_mask, video_pos = (
                torch.cat([x, x]) for x in (video, video_mask, video_pos)
            )
            text = torch.cat([text, text.roll(-1, dims=0)])
            text_mask = torch.cat([text_mask, text_mask.roll(-1, dims=0)])
        text_pos = self.text_pos(text_mask) if self.text_pos is not None else None
        clips = self.t2v(video, text, video_pos, text_pos, text_mask)  # (B', T, d)

        pairs = len(clips)
        src = torch.cat([self.global_token.expand(pairs, 1, d), clips], dim=1)
        pos = torch.cat([self.global_pos.expand(pairs, 1, d), video_pos], dim=1)
        mask = torch.cat([video_mask.new_ones(pairs, 1), video_mask], dim=1)
        memory = self.encoder(src, pos, mask)  # (B', 1 + T, d)
        global_mem, clip_mem = memory[:, 0], memory[:, 1:]
        saliency = torch.einsum(  # (B', T)
            "btd,bd->bt", self.saliency_proj1(clip_mem), self.saliency_proj2(global_mem)
        ) / math.sqrt(d)

        own_mask = video_mask[:batch_size]  # the decoder only sees the matched pairs
        hs, references = self.decoder(
            clip_mem[:batch_size], self.anchors.weight, video_pos[:batch_size], own_mask
        )
        out = self.head(hs, references, aux=self.config.loss.aux_loss)
        out["saliency_scores"] = saliency[:batch_size]
        if self.training:
            out["saliency_scores_neg"] = saliency[batch_size:]
        out["video_mask"] = own_mask
        if loss_align is not None:
            out["loss_align"] = loss_align
        return out
