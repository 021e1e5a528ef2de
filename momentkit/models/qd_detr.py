"""QD-DETR (Moon et al., CVPR 2023): query-dependent video representations for moments.

Differences from Moment-DETR, following the paper and wjun0830/QD-DETR:

- text-to-video (T2V) cross-attention layers first inject the query into every clip; only clip
  tokens then go through the self-attention encoder, preceded by a learned global ("dummy")
  token with its own learned position;
- saliency is the scaled dot product of the projected global token with each projected clip;
- during training the encoder also runs with each video paired with another video's query
  (queries rolled by one in the batch) to produce ``saliency_scores_neg``; both pairings run as
  one batch of ``2B`` (the T2V projections of each query's words and the first T2V layer's
  queries of each video's clips once, not twice) and the decoder is skipped for the negative
  half, whose spans are unused;
- the decoder is an anchor (DAB-DETR style) decoder whose queries are learned
  ``(center, width)`` anchors refined layer by layer;
- losses add the rank-aware contrastive and negative-pair saliency losses.

The ``official`` variant (:data:`OFFICIAL`, the real-data presets, checkpoints converted from
line/lighthouse) computes what Lighthouse's released code computes: PReLU feed-forward
activations, negative pairs in evaluation too, the released T2V attention-mask layout; every
switch and where the released code differs from the paper are listed in ``docs/qd_detr.md``.

LD-DETR's plug-and-play modules apply by config: ``decoder_loops`` (Loop Decoder) and
``distill_align`` (Distill Align on the input projections' outputs, before the negative pairs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from momentkit.modeling.anchor_decoder import AnchorDecoder
from momentkit.modeling.criterion import LossConfig
from momentkit.modeling.heads import SpanHead
from momentkit.modeling.linear import Linear
from momentkit.modeling.precision import in_float32
from momentkit.modeling.transformer import CrossAttentionEncoder, TransformerEncoder
from momentkit.models.base import MODELS, DETRConfig, MomentModel, build_distill_align, build_inputs
from momentkit.models.moment_detr import LIGHTHOUSE_POSTPROCESS, check_postprocess

#: the switch values of the ``official`` variant (Lighthouse's released code); ``t2v_layers``
#: follows ``enc_layers`` there
OFFICIAL: dict[str, Any] = {
    "activation": "prelu",
    "neg_pairs": "always",
    "t2v_mask": "tiled",
    "postprocess": LIGHTHOUSE_POSTPROCESS,
}
NEG_PAIRS = ("train", "always")
T2V_MASKS = ("per_video", "tiled")


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
        neg_pairs: when the mismatched-query pass producing ``saliency_scores_neg`` runs:
            ``train`` (only in training mode: it feeds only training losses) or ``always``
            (evaluation too, as the released code, whose validation losses include it; not
            under ``torch.inference_mode``, where only predictions are made).
        t2v_mask: the T2V attention mask. ``per_video``: each clip attends to its own query's
            valid words. ``tiled``: the released code's layout, which builds one
            ``(clips x words)`` "both padded" mask per video and stacks it with
            ``repeat(nhead, 1, 1)`` where attention expects video-major order, so head ``h`` of
            video ``b`` also cannot attend from clip ``l`` to word ``s`` when both are padding in
            video ``(b * nhead + h) mod B``. Outputs then depend on the other videos of a padded
            batch; identical to ``per_video`` for a single video or unpadded batches.
        project_padding: run the input projections on padded rows too (see
            :class:`~momentkit.models.moment_detr.MomentDETRConfig`).
        postprocess: :class:`~momentkit.modeling.postprocess.PostProcessor` settings used at
            evaluation and prediction (``{}``: momentkit's defaults).
    """

    name: str = "qd_detr"
    t2v_layers: int = 2
    neg_pairs: str = "train"
    t2v_mask: str = "per_video"
    project_padding: bool = False
    postprocess: dict[str, Any] = field(default_factory=dict)
    loss: LossConfig = field(default_factory=_qd_detr_loss)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range field."""
        super().validate()
        if self.t2v_layers < 0:
            raise ValueError(f"model.t2v_layers must be >= 0, got {self.t2v_layers}")
        for name, allowed in (("neg_pairs", NEG_PAIRS), ("t2v_mask", T2V_MASKS)):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"model.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        check_postprocess(self.postprocess)


def tiled_t2v_allowed(video_mask: Tensor, text_mask: Tensor, nhead: int) -> Tensor:
    """The T2V attention mask of the released code (``t2v_mask="tiled"``), as "may attend".

    Args:
        video_mask: ``(B, T)`` bool, True = valid clip.
        text_mask: ``(B, N)`` bool, True = valid word.
        nhead: attention heads.

    Returns:
        ``(B, nhead, T, N)`` bool: False where clip ``l`` and word ``s`` are both padding in
        video ``(b * nhead + h) mod B`` (the released mask, per video, stacked head-major and
        read video-major). Key padding is applied separately.
    """
    blocked = (~video_mask)[:, :, None] & (~text_mask)[:, None, :]  # (B, T, N)
    batch = len(video_mask)
    rows = torch.arange(batch, device=video_mask.device)[:, None] * nhead
    source = (rows + torch.arange(nhead, device=video_mask.device)[None, :]) % batch  # (B, H)
    return ~blocked[source]


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
        self.saliency_proj1 = Linear(d, d)
        self.saliency_proj2 = Linear(d, d)
        self.distill_align = build_distill_align(c, self.video_proj, self.text_proj)

    def saliency(self, clip_mem: Tensor, global_mem: Tensor) -> Tensor:
        """``(B', T, d)`` clips, ``(B', d)`` global tokens -> ``(B', T)`` scaled dot products of
        their projections (run in float32: :func:`~momentkit.modeling.precision.in_float32`)."""
        return torch.einsum(
            "btd,bd->bt", self.saliency_proj1(clip_mem), self.saliency_proj2(global_mem)
        ) / math.sqrt(clip_mem.shape[-1])

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Batch dict -> output dict; adds ``saliency_scores_neg`` ``(B, T)`` in training mode
        (and in evaluation with ``neg_pairs="always"``)."""
        c = self.config
        video_mask, text_mask = batch["video_mask"].bool(), batch["text_mask"].bool()
        every_row = c.project_padding
        video = self.video_proj(batch["video_feats"], None if every_row else video_mask)
        text = self.text_proj(batch["text_feats"], None if every_row else text_mask)  # (B, N, d)
        video_pos = self.video_pos(video_mask)
        batch_size, d = len(video), c.hidden_dim
        loss_align = None
        if self.distill_align is not None and self.training:
            encoders = (self.video_proj, self.text_proj)
            loss_align = self.distill_align(video, text, batch, encoders)
        # under ``torch.inference_mode`` (prediction: ``inference_loop``, the scorers) nothing
        # reads ``saliency_scores_neg``: the negative half, which doubles the T2V and encoder
        # work, is skipped there even with ``neg_pairs="always"``
        negatives = self.training or (
            c.neg_pairs == "always" and not torch.is_inference_mode_enabled()
        )
        pair_masks = [(video_mask, text_mask)]
        text_pos = self.text_pos(text_mask) if self.text_pos is not None else None
        video_index = text_index = None
        pair_pos = video_pos  # (B', T, d): every pair's clip positions
        if negatives:  # pair every video with its own and with the next video's query
            pair_masks.append((video_mask, text_mask.roll(-1, dims=0)))
            # the T2V layers project each video's clips and each query's words once: pair b
            # is video video_index[b] with query text_index[b] (b + 1 mod B for the negatives)
            own = torch.arange(batch_size, device=text.device)
            video_index, text_index = torch.cat([own, own]), torch.cat([own, own.roll(-1)])
            video_mask, pair_pos = (torch.cat([x, x]) for x in (video_mask, video_pos))
            text_mask = text_mask.index_select(0, text_index)
        allowed = None
        if c.t2v_mask == "tiled":  # each pairing is its own batch in the released code
            allowed = torch.cat([tiled_t2v_allowed(v, t, c.nheads) for v, t in pair_masks])
        clips = self.t2v(  # (B', T, d)
            video,
            text,
            video_pos,
            text_pos,
            text_mask,
            allowed=allowed,
            context_index=text_index,
            query_index=video_index,
        )

        pairs = len(clips)
        src = torch.cat([self.global_token.expand(pairs, 1, d), clips], dim=1)
        pos = torch.cat([self.global_pos.expand(pairs, 1, d), pair_pos], dim=1)
        mask = torch.cat([video_mask.new_ones(pairs, 1), video_mask], dim=1)
        memory = self.encoder(src, pos, mask)  # (B', 1 + T, d)
        global_mem, clip_mem = memory[:, 0], memory[:, 1:]
        saliency = in_float32(self.saliency, clip_mem, global_mem)  # (B', T)

        own_mask = video_mask[:batch_size]  # the decoder only sees the matched pairs
        hs, references = self.decoder(
            clip_mem[:batch_size], self.anchors.weight, video_pos, own_mask
        )
        out = self.head(hs, references, aux=self.config.loss.aux_loss)
        out["saliency_scores"] = saliency[:batch_size]
        if negatives:
            out["saliency_scores_neg"] = saliency[batch_size:]
        out["video_mask"] = own_mask
        if loss_align is not None:
            out["loss_align"] = loss_align
        return out
