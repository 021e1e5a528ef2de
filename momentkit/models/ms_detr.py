"""MS-DETR (Ma et al., ACM MM 2025): joint motion-semantic learning for moments and highlights.

Composition (paper Sec. 3; defaults of the official release, snailma0229/MS-DETR)::

    video streams --MSDE--> F_v    (TMCT on the motion stream, SSCT on the semantic stream,
                                    each attending to the query words; phi fuses them)
    [sentence token; F_v] --TransformerEncoder--> x_s, clips
    S(x_i) = (w_s^T x_s . w_v^T x_i) / sqrt(d)                      (highlight saliency)
    MTCD: top-K salient clips -> content queries, Phi(R_k) -> positional queries,
          anchor decoder (+ contrastive denoising groups in training) -> moments,
          moments + foreground probability -> refined saliency

- :mod:`momentkit.modeling.msde`, :mod:`momentkit.modeling.mtcd`: the two components;
- :mod:`momentkit.modeling.denoising`: contrastive denoising (10 groups, span noise 0.5);
- :mod:`momentkit.modeling.corpus_losses`: the generated-corpus losses. In training, every
  generated query of the batch (``aug_text_feats``, see :mod:`momentkit.data.augmented`) is
  paired with its video through MSDE and the encoder, giving ``aug_saliency_scores``.

As QD-DETR, training also pairs every video with the next video's query
(``saliency_scores_neg``); all video-text pairs of a step run through MSDE and the encoder as
one batch, and only the matched pairs are decoded.

Ablation switches (``--set model.<field>=false``): ``use_msde`` (one shared cross-modal
transformer), ``use_mtcd`` (learned anchor queries, no saliency refinement), ``use_denoising``,
``use_corpus``; ``saliency_refinement`` chooses how MTCD's moments refine the saliency.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import momentkit.modeling.corpus_losses  # noqa: F401  (registers the corpus losses)
from momentkit.modeling.criterion import LossConfig
from momentkit.modeling.denoising import DenoisingConfig, build_denoising_queries
from momentkit.modeling.mlp import InputProjection
from momentkit.modeling.msde import MotionSemanticsDisentangledEncoder, stream_slices
from momentkit.modeling.mtcd import (
    CONTENT_MODES,
    REFINE_MODES,
    MutualTaskCollaborativeDecoder,
    SentenceSaliency,
)
from momentkit.modeling.position_encoding import PositionEmbeddingLearned, build_position_encoding
from momentkit.modeling.transformer import TransformerEncoder
from momentkit.models.base import MODELS, DETRConfig, MomentModel
from momentkit.text_augment.corpus import PAD


def _ms_detr_loss() -> LossConfig:
    loss = LossConfig(
        losses=[
            "spans",
            "labels",
            "saliency_margin",
            "saliency_rank_contrastive",
            "saliency_neg_pair",
            "denoising",
            "query_selection",
            "corpus_contrastive",
            "corpus_positive",
        ]
    )
    # denoising terms weighted as the matching terms (official tgt_loss_* = span/giou/label)
    loss.weights.update(
        loss_dn_span=10.0,
        loss_dn_giou=1.0,
        loss_dn_label=4.0,
        # the selected proposals R_k (official --use_interm, DINO's interm loss at weight 1)
        loss_enc_span=10.0,
        loss_enc_giou=1.0,
        loss_enc_label=4.0,
        loss_corpus_contrast=1.0,
        loss_corpus_positive=1.0,
    )
    return loss


@dataclass
class MSDETRConfig(DETRConfig):
    """MS-DETR hyper-parameters (official defaults; the rest are :class:`DETRConfig`'s).

    Attributes:
        cross_layers: layers of each cross-modal transformer (TMCT / SSCT; official
            ``cross_enc_layers`` 2).
        stream_dims: widths of the ``[motion, semantic]`` streams at the start of
            ``video_feats`` (SlowFast 2304, CLIP 512); trailing channels (TEF) are shared. One
            entry, or none, gives a single shared stream. Unused when ``use_msde`` is off.
        use_msde: disentangled TMCT + SSCT (``False``: one shared cross-modal transformer).
        fuse_dropout: dropout of phi's layers, which fuse the TMCT and SSCT outputs (the
            official ``concat_vid_proj`` reuses the input dropout, 0.5; the synth preset uses
            0.1, see docs/ms_detr.md).
        use_mtcd: saliency-driven query selection and saliency refinement (``False``: learned
            anchor queries).
        mtcd_content: the decoder's content queries under MTCD: ``"learned"`` (the official
            release) or ``"selected"`` (the selected clips themselves); see
            :mod:`momentkit.modeling.mtcd`.
        saliency_refinement: MTCD's MR -> HD direction: ``"detached"`` (default: the decoded
            moments refine the saliency without gradient), ``"joint"`` (the highlight losses
            also train the moment heads through the refinement, which inflates their foreground
            probabilities, docs/ms_detr.md) or ``"off"``; see :mod:`momentkit.modeling.mtcd`.
            Unused without ``use_mtcd``.
        use_denoising: contrastive denoising queries in training.
        denoising: their groups and noise.
        use_corpus: train on the generated queries the batch carries (``aug_text_feats``).
    """

    name: str = "ms_detr"
    num_queries: int = 20
    cross_layers: int = 2
    stream_dims: list[int] = field(default_factory=lambda: [2304, 512])
    use_msde: bool = True
    fuse_dropout: float = 0.5
    use_mtcd: bool = True
    mtcd_content: str = "learned"
    saliency_refinement: str = "detached"
    use_denoising: bool = True
    denoising: DenoisingConfig = field(default_factory=DenoisingConfig)
    use_corpus: bool = True
    loss: LossConfig = field(default_factory=_ms_detr_loss)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range field."""
        super().validate()
        if self.cross_layers < 0:
            raise ValueError(f"model.cross_layers must be >= 0, got {self.cross_layers}")
        if len(self.stream_dims) > 2:
            raise ValueError(
                f"model.stream_dims lists {len(self.stream_dims)} streams; MSDE takes "
                "[motion, semantic] (or one stream)"
            )
        if not 0.0 <= self.fuse_dropout < 1.0:
            raise ValueError(f"model.fuse_dropout must be in [0, 1), got {self.fuse_dropout}")
        if self.mtcd_content not in CONTENT_MODES:
            raise ValueError(
                f"model.mtcd_content must be one of {CONTENT_MODES}, got {self.mtcd_content!r}"
            )
        if self.saliency_refinement not in REFINE_MODES:
            raise ValueError(
                f"model.saliency_refinement must be one of {REFINE_MODES}, "
                f"got {self.saliency_refinement!r}"
            )
        if self.use_msde:
            stream_slices(self.video_dim, self.stream_dims)
        self.denoising.validate("model.denoising.")

    @property
    def uses_corpus(self) -> bool:
        """Whether the generated corpus trains the model (``use_corpus``)."""
        return self.use_corpus


@MODELS.register("ms_detr")
class MSDETR(MomentModel):
    """MS-DETR: MSDE encoder, sentence-token saliency, MTCD decoder, denoising, corpus pairs."""

    config_class = MSDETRConfig

    def __init__(self, config: MSDETRConfig) -> None:
        super().__init__(config)
        c, d = config, config.hidden_dim
        layer_args = (c.dim_feedforward, c.dropout, c.activation, c.pre_norm)
        self.text_proj = InputProjection(c.text_dim, d, c.n_input_proj, c.input_dropout)
        self.video_pos = build_position_encoding(c.position_embedding, d, c.max_video_len)
        self.text_pos = PositionEmbeddingLearned(c.max_text_len, d) if c.use_text_pos else None
        streams = c.stream_dims if c.use_msde else []
        self.msde = MotionSemanticsDisentangledEncoder(
            c.video_dim, streams, d, c.nheads, c.cross_layers, c.dim_feedforward, c.dropout,
            c.input_dropout, c.n_input_proj, c.activation, c.pre_norm, disentangle=c.use_msde,
            fuse_dropout=c.fuse_dropout,
        )  # fmt: skip
        self.encoder = TransformerEncoder(d, c.nheads, c.enc_layers, *layer_args)
        self.sentence_token = nn.Parameter(torch.randn(d))
        self.sentence_pos = nn.Parameter(torch.randn(d))
        self.saliency = SentenceSaliency(d)
        self.mtcd = MutualTaskCollaborativeDecoder(
            d, c.nheads, c.dec_layers, c.num_queries, *layer_args,
            query_selection=c.use_mtcd, content=c.mtcd_content,
            refine=c.saliency_refinement if c.use_mtcd else "off",
            aux=c.loss.aux_loss,
        )  # fmt: skip

    # ------------------------------------------------------------------------------ pairs
    def _pairs(self, batch: dict[str, Any], text: Tensor, text_mask: Tensor) -> dict[str, Any]:
        """The video-text pairs of this step: rows of ``video_index`` / ``text`` / ``text_mask``.

        Rows ``[0, B)`` are the matched pairs; in training ``[B, 2B)`` pair each video with the
        next video's query, then come the generated queries: one row per non-empty slot,
        ``aug_slots`` ``(R, 2)`` holding its video and slot.
        """
        b = text.shape[0]
        index = torch.arange(b, device=text.device)
        rows_video, rows_text, rows_mask = [index], [text], [text_mask]
        aug_slots = None
        if self.training:
            rows_video.append(index)
            rows_text.append(text.roll(-1, dims=0))
            rows_mask.append(text_mask.roll(-1, dims=0))
            if self.config.use_corpus and "aug_text_feats" in batch:
                kind = batch["aug_kind"]
                aug_slots = (kind != PAD).nonzero()  # (R, 2): video, slot
                if len(aug_slots):
                    feats = batch["aug_text_feats"][aug_slots[:, 0], aug_slots[:, 1]]
                    mask = batch["aug_text_mask"][aug_slots[:, 0], aug_slots[:, 1]].bool()
                    rows_video.append(aug_slots[:, 0])
                    rows_text.append(self.text_proj(feats, mask))
                    rows_mask.append(mask)
        width = max(t.shape[1] for t in rows_text)
        return {
            "video_index": torch.cat(rows_video),
            "text": torch.cat([F.pad(t, (0, 0, 0, width - t.shape[1])) for t in rows_text]),
            "text_mask": torch.cat([F.pad(m, (0, width - m.shape[1])) for m in rows_mask]),
            "aug_slots": aug_slots,
        }

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Batch dict -> output dict (see :mod:`momentkit.models.ms_detr`).

        In training adds ``saliency_scores_neg``, the denoising outputs (when the batch has
        ``span_targets``) and ``aug_saliency_scores`` ``(B, A, T)`` (when it has generated
        queries; 0 in empty slots).
        """
        c, d = self.config, self.config.hidden_dim
        video_mask, text_mask = batch["video_mask"].bool(), batch["text_mask"].bool()
        text = self.text_proj(batch["text_feats"], text_mask)
        pairs = self._pairs(batch, text, text_mask)
        vi = pairs["video_index"]
        b, rows = len(video_mask), len(vi)

        video_pos = self.video_pos(video_mask)  # (B, T, d)
        projected = self.msde.project(batch["video_feats"], video_mask)  # once per video
        if rows > b:
            projected = {k: v.index_select(0, vi) for k, v in projected.items()}
        pair_mask, pair_pos = video_mask.index_select(0, vi), video_pos.index_select(0, vi)
        pair_text_mask = pairs["text_mask"]
        text_pos = self.text_pos(pair_text_mask) if self.text_pos is not None else None
        branches = self.msde.interact(projected, pair_pos, pairs["text"], text_pos, pair_text_mask)
        fused = self.msde.fuse_branches(branches, pair_mask)  # F_v (rows, T, d)

        src = torch.cat([self.sentence_token.expand(rows, 1, d), fused], dim=1)
        pos = torch.cat([self.sentence_pos.expand(rows, 1, d), pair_pos], dim=1)
        mask = torch.cat([pair_mask.new_ones(rows, 1), pair_mask], dim=1)
        memory = self.encoder(src, pos, mask)  # (rows, 1 + T, d)
        saliency = self.saliency(memory[:, 1:], memory[:, 0])  # (rows, T)

        denoising = None
        if self.training and c.use_denoising and "span_targets" in batch:
            denoising = build_denoising_queries(batch["span_targets"], c.denoising, c.num_queries)
        out = self.mtcd(memory[:b, 1:], video_pos, video_mask, saliency[:b], denoising)
        if self.training:
            out["saliency_scores_neg"] = saliency[b : 2 * b]
            slots = pairs["aug_slots"]
            if slots is not None:
                kind = batch["aug_kind"]
                aug = saliency.new_zeros(*kind.shape, saliency.shape[1])
                aug[slots[:, 0], slots[:, 1]] = saliency[2 * b :]
                out["aug_saliency_scores"] = aug
        out["video_mask"] = video_mask
        return out
