"""Moment-DETR (Lei et al., NeurIPS 2021): a DETR for moments and highlights.

Video clips and query tokens are projected to a common width, concatenated and encoded
together (sine positions on clips, none on words); ``num_queries`` learned queries decode the
joint memory into spans; a linear layer on the encoded clips gives per-clip saliency.
Defaults follow the paper and jayleicn/moment_detr: width 256, 10 queries, 8 heads, 2 encoder
and 2 decoder layers, FFN 1024, dropout 0.1, input dropout 0.5, post-norm.

LD-DETR's plug-and-play modules apply by config: ``decoder_loops`` (Loop Decoder) and
``distill_align`` (Distill Align on the input projections' outputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from momentkit.modeling.heads import SpanHead
from momentkit.modeling.transformer import TransformerDecoder, TransformerEncoder
from momentkit.models.base import MODELS, DETRConfig, MomentModel, build_distill_align, build_inputs


@dataclass
class MomentDETRConfig(DETRConfig):
    """Moment-DETR hyper-parameters (all in :class:`DETRConfig`)."""

    name: str = "moment_detr"


@MODELS.register("moment_detr")
class MomentDETR(MomentModel):
    """Moment-DETR: joint video-text encoder, DETR decoder, span and saliency heads."""

    config_class = MomentDETRConfig

    def __init__(self, config: MomentDETRConfig) -> None:
        super().__init__(config)
        c, d = config, config.hidden_dim
        self.video_proj, self.text_proj, self.video_pos, self.text_pos = build_inputs(c)
        layer_args = (c.dim_feedforward, c.dropout, c.activation, c.pre_norm)
        self.encoder = TransformerEncoder(d, c.nheads, c.enc_layers, *layer_args)
        self.decoder = TransformerDecoder(
            d, c.nheads, c.dec_layers, *layer_args, loops=c.decoder_loops
        )
        self.query_embed = torch.nn.Embedding(c.num_queries, d)
        self.head = SpanHead(d)
        self.saliency_proj = torch.nn.Linear(d, 1)
        self.distill_align = build_distill_align(c, self.video_proj, self.text_proj)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Batch dict -> output dict (``pred_logits``, ``pred_spans``, ``saliency_scores``, ...)."""
        video_mask, text_mask = batch["video_mask"].bool(), batch["text_mask"].bool()
        video = self.video_proj(batch["video_feats"], video_mask)  # (B, T, d)
        text = self.text_proj(batch["text_feats"], text_mask)  # (B, N, d)
        text_pos = self.text_pos(text_mask) if self.text_pos is not None else torch.zeros_like(text)
        src = torch.cat([video, text], dim=1)
        mask = torch.cat([video_mask, text_mask], dim=1)
        pos = torch.cat([self.video_pos(video_mask), text_pos], dim=1)
        memory = self.encoder(src, pos, mask)  # (B, T + N, d)
        tgt = memory.new_zeros(len(memory), self.config.num_queries, self.config.hidden_dim)
        hs = self.decoder(tgt, memory, self.query_embed.weight.unsqueeze(0), pos, mask)
        out = self.head(hs, aux=self.config.loss.aux_loss)
        out["saliency_scores"] = self.saliency_proj(memory[:, : video.shape[1]]).squeeze(-1)
        out["video_mask"] = video_mask
        if self.distill_align is not None and self.training:
            encoders = (self.video_proj, self.text_proj)
            out["loss_align"] = self.distill_align(video, text, batch, encoders)
        return out
