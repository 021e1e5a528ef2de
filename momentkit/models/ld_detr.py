"""LD-DETR (Zhao et al., 2025): Loop Decoder DEtection TRansformer for moments and highlights.

"LD-DETR: Loop Decoder DEtection TRansformer for Video Moment Retrieval and Highlight
Detection", arXiv:2501.10787; official code qingchen239/ld-detr. The model, in the paper's
vocabulary:

- Unimodal Encoders (3.2): a 2-layer MLP per modality (LayerNorm, dropout 0.5, linear) maps
  clips ``(B, T, D_v)`` and words ``(B, N, D_t)`` to ``V'`` ``(B, T, d)`` and ``T'`` ``(B, N, d)``;
- Distill Align (3.2): momentum encoders, feature queues and the distilled contrastive loss
  ``L_align`` on the global features (:mod:`momentkit.modeling.distill_align`);
- Convolutional Fuser (3.3): V2T Extractor -> T2V Encoder -> Transformer Encoder 1 -> conv
  residual blocks -> Transformer Encoder 2 (:mod:`momentkit.modeling.conv_fuser`);
- Loop Decoder (3.4): QD-DETR's anchor decoder run ``decoder_loops`` times from a zero query
  matrix, each pass's output being the next pass's queries, with no new parameters
  (:class:`~momentkit.modeling.anchor_decoder.AnchorDecoder` ``loops``);
- Prediction Heads (3.5): spans and confidences from the decoded queries (anchor offsets, as
  QD-DETR) and saliency from the top moment's clips through a GRU
  (:mod:`momentkit.modeling.moment_gru_head`);
- Losses (3.6): ``L_mr`` (L1 + gIoU + foreground CE) + ``L_hd`` (margin + rank-aware
  contrastive) + ``lambda_align * L_align``.

Every component is switchable for ablation (``use_v2t``, ``t2v_layers``, ``enc_layers``,
``conv_blocks``, ``enc2_layers``, ``conv_position``, ``decoder_loops``, ``distill_align``,
``hd_similarity``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from momentkit.modeling.anchor_decoder import AnchorDecoder
from momentkit.modeling.conv_fuser import STAGES, ConvolutionalFuser
from momentkit.modeling.criterion import LossConfig
from momentkit.modeling.heads import SpanHead
from momentkit.modeling.moment_gru_head import SIMILARITIES, MomentGRUHead
from momentkit.models.base import MODELS, DETRConfig, MomentModel, build_distill_align, build_inputs


def _ld_detr_loss() -> LossConfig:
    return LossConfig(
        losses=["spans", "labels", "saliency_margin", "saliency_rank_contrastive", "distill_align"]
    )


@dataclass
class LDDETRConfig(DETRConfig):
    """LD-DETR hyper-parameters (official code defaults; see :class:`DETRConfig` for the rest).

    ``enc_layers`` is Transformer Encoder 1, ``dec_layers`` the layers of the looped decoder.

    Attributes:
        use_v2t: include the V2T Extractor.
        t2v_layers: T2V Encoder layers (0: off).
        enc2_layers: Transformer Encoder 2 layers (0: off).
        conv_blocks: convolutional residual blocks (5; 4 on Charades-STA; 0: off).
        conv_position: where the blocks sit among V2T, T2V, Encoder 1 and Encoder 2 (0-4; the
            paper's 3: between the two encoders).
        conv_kernel_size: temporal kernel of the convolutions.
        activation: the feed-forward activation of every transformer layer (the official
            code's PReLU).
        hd_similarity: how the HD head compares the top moment's GRU summary with the clips:
            ``dot`` (the paper) or ``cosine`` (bounded; the synth preset's, see
            :mod:`~momentkit.modeling.moment_gru_head`).
    """

    name: str = "ld_detr"
    use_v2t: bool = True
    t2v_layers: int = 2
    enc2_layers: int = 2
    conv_blocks: int = 5
    conv_position: int = 3
    conv_kernel_size: int = 3
    decoder_loops: int = 3
    distill_align: bool = True
    activation: str = "prelu"
    hd_similarity: str = "dot"
    loss: LossConfig = field(default_factory=_ld_detr_loss)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range field."""
        super().validate()
        for name in ("t2v_layers", "enc2_layers", "conv_blocks"):
            if getattr(self, name) < 0:
                raise ValueError(f"model.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.conv_position <= len(STAGES):
            raise ValueError(
                f"model.conv_position must be in [0, {len(STAGES)}] (before V2T, after V2T, "
                f"after T2V, after Encoder 1, after Encoder 2), got {self.conv_position}"
            )
        if self.hd_similarity not in SIMILARITIES:
            raise ValueError(
                f"model.hd_similarity must be one of {', '.join(SIMILARITIES)}, "
                f"got '{self.hd_similarity}'"
            )
        if self.conv_kernel_size < 1 or self.conv_kernel_size % 2 == 0:
            raise ValueError(
                f"model.conv_kernel_size must be odd and >= 1, got {self.conv_kernel_size}"
            )


@MODELS.register("ld_detr")
class LDDETR(MomentModel):
    """LD-DETR: unimodal encoders, Distill Align, Convolutional Fuser, Loop Decoder, heads."""

    config_class = LDDETRConfig

    def __init__(self, config: LDDETRConfig) -> None:
        super().__init__(config)
        c, d = config, config.hidden_dim
        self.video_encoder, self.text_encoder, self.video_pos, self.text_pos = build_inputs(c)
        self.convolutional_fuser = ConvolutionalFuser(
            d,
            c.nheads,
            c.dim_feedforward,
            c.dropout,
            c.activation,
            c.pre_norm,
            use_v2t=c.use_v2t,
            t2v_layers=c.t2v_layers,
            encoder1_layers=c.enc_layers,
            conv_blocks=c.conv_blocks,
            encoder2_layers=c.enc2_layers,
            conv_position=c.conv_position,
            conv_kernel_size=c.conv_kernel_size,
        )
        self.loop_decoder = AnchorDecoder(
            d,
            c.nheads,
            c.dec_layers,
            c.dim_feedforward,
            c.dropout,
            c.activation,
            c.pre_norm,
            loops=c.decoder_loops,
        )
        self.anchors = nn.Embedding(c.num_queries, 2)
        self.moment_head = SpanHead(d)
        self.highlight_head = MomentGRUHead(d, c.hd_similarity)
        self.distill_align = build_distill_align(c, self.video_encoder, self.text_encoder)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Batch dict -> output dict; adds ``loss_align`` in training mode with Distill Align."""
        video_mask, text_mask = batch["video_mask"].bool(), batch["text_mask"].bool()
        video = self.video_encoder(batch["video_feats"], video_mask)  # V' (B, T, d)
        text = self.text_encoder(batch["text_feats"], text_mask)  # T' (B, N, d)
        video_pos = self.video_pos(video_mask)
        text_pos = self.text_pos(text_mask) if self.text_pos is not None else None
        memory = self.convolutional_fuser(
            video, text, video_mask, text_mask, video_pos, text_pos
        )  # R' (B, T, d)
        hs, references = self.loop_decoder(memory, self.anchors.weight, video_pos, video_mask)
        out = self.moment_head(hs, references, aux=self.config.loss.aux_loss)
        out["saliency_scores"] = self.highlight_head(
            out["pred_logits"], out["pred_spans"], memory, video, video_mask
        )
        out["video_mask"] = video_mask
        if self.distill_align is not None and self.training:
            encoders = (self.video_encoder, self.text_encoder)
            out["loss_align"] = self.distill_align(video, text, batch, encoders)
        return out
