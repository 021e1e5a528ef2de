"""Moment-DETR (Lei et al., NeurIPS 2021): a DETR for moments and highlights.

Video clips and query tokens are projected to a common width, concatenated and encoded
together (sine positions on clips, none on words); ``num_queries`` learned queries decode the
joint memory into spans; a linear layer on the encoded clips gives per-clip saliency.
Defaults follow the paper and jayleicn/moment_detr: width 256, 10 queries, 8 heads, 2 encoder
and 2 decoder layers, FFN 1024, dropout 0.1, input dropout 0.5, post-norm.

The ``official`` variant (:data:`OFFICIAL`, the real-data presets, checkpoints converted from
line/lighthouse) computes what Lighthouse's released code computes; the switches and where the
released code differs from the paper are listed in ``docs/moment_detr.md``.

LD-DETR's plug-and-play modules apply by config: ``decoder_loops`` (Loop Decoder) and
``distill_align`` (Distill Align on the input projections' outputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from momentkit.modeling.heads import SpanHead
from momentkit.modeling.linear import Linear
from momentkit.modeling.postprocess import PostProcessor
from momentkit.modeling.precision import in_float32
from momentkit.modeling.transformer import TransformerDecoder, TransformerEncoder
from momentkit.models.base import (
    MODELS,
    DETRConfig,
    MomentModel,
    build_distill_align,
    build_inputs,
    trim_padding,
)

#: Lighthouse's post-processing (``training/evaluate.py`` + ``PostProcessorDETR``) on
#: QVHighlights and Charades-STA; TACoS uses ``clamp: none``. All ten queries are kept.
LIGHTHOUSE_POSTPROCESS: dict[str, Any] = {
    "top_k": None,
    "span_scale": "duration",
    "rounding": "multiple",
    "clamp": "fixed",
    "max_time": 150.0,
    "saliency_dtype": "float16",
}

#: the switch values of the ``official`` variant (Lighthouse's released code)
OFFICIAL: dict[str, Any] = {"postprocess": LIGHTHOUSE_POSTPROCESS}


def check_postprocess(settings: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming ``model.postprocess.<key>`` for a setting
    :class:`~momentkit.modeling.postprocess.PostProcessor` does not take or refuses."""
    known = set(PostProcessor.__dataclass_fields__)
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(
            f"model.postprocess: unknown setting(s) {unknown}; known: {', '.join(sorted(known))}"
        )
    try:
        PostProcessor(**settings)
    except (TypeError, ValueError) as e:
        raise ValueError(f"model.{e}" if str(e).startswith("postprocess.") else str(e)) from None


@dataclass
class MomentDETRConfig(DETRConfig):
    """Moment-DETR hyper-parameters (the shared ones in :class:`DETRConfig`).

    Attributes:
        project_padding: run the input projections on padded clips and words too, as the
            released code does. Valid outputs are identical either way (padding is masked as a
            key everywhere); only the values at padded positions (e.g. ``saliency_scores`` past a
            video's end) change. ``False`` skips the padded rows (faster).
        postprocess: settings of the
            :class:`~momentkit.modeling.postprocess.PostProcessor` used to turn outputs into
            predictions at evaluation and ``momentkit predict`` (``{}``: momentkit's
            defaults; :data:`LIGHTHOUSE_POSTPROCESS`: Lighthouse's).
    """

    name: str = "moment_detr"
    project_padding: bool = False
    postprocess: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range field."""
        super().validate()
        check_postprocess(self.postprocess)


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
        self.saliency_proj = Linear(d, 1)
        self.distill_align = build_distill_align(c, self.video_proj, self.text_proj)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Batch dict -> output dict (``pred_logits``, ``pred_spans``, ``saliency_scores``, ...)."""
        video_mask, text_mask = batch["video_mask"].bool(), batch["text_mask"].bool()
        every_row = self.config.project_padding
        video_feats, text_feats = batch["video_feats"], batch["text_feats"]
        length = video_mask.shape[1]
        if not self.training and not every_row:
            # columns that are padding in every item change no valid output: drop them (a
            # batch of one query has no padding left, so no masks or packing either)
            video_feats, video_mask = trim_padding(video_feats, video_mask)
            text_feats, text_mask = trim_padding(text_feats, text_mask)
        video = self.video_proj(video_feats, None if every_row else video_mask)
        text = self.text_proj(text_feats, None if every_row else text_mask)  # (B, N, d)
        text_pos = self.text_pos(text_mask) if self.text_pos is not None else torch.zeros_like(text)
        src = torch.cat([video, text], dim=1)
        mask = torch.cat([video_mask, text_mask], dim=1)
        pos = torch.cat([self.video_pos(video_mask), text_pos], dim=1)
        memory = self.encoder(src, pos, mask, skip_padding=not every_row)  # (B, T + N, d)
        tgt = memory.new_zeros(len(memory), self.config.num_queries, self.config.hidden_dim)
        memory_mask = None if not every_row and bool(mask.all()) else mask
        hs = self.decoder(tgt, memory, self.query_embed.weight.unsqueeze(0), pos, memory_mask)
        out = self.head(hs, aux=self.config.loss.aux_loss)
        saliency = in_float32(self.saliency_proj, memory[:, : video.shape[1]]).squeeze(-1)
        if saliency.shape[1] < length:  # trimmed clips: what a padded (zero) memory row gives
            fill = self.saliency_proj.bias.expand(len(saliency), length - saliency.shape[1])
            saliency = torch.cat([saliency, fill], dim=1)
            video_mask = batch["video_mask"].bool()
        out["saliency_scores"] = saliency
        out["video_mask"] = video_mask
        if self.distill_align is not None and self.training:
            encoders = (self.video_proj, self.text_proj)
            out["loss_align"] = self.distill_align(video, text, batch, encoders)
        return out
