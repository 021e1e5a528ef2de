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

Where the released code computes something else than the paper or than momentkit's padding
handling, a switch chooses (:data:`OFFICIAL`; docs/ld_detr.md has the table): ``decoder_form``,
``hd_form``, ``encoder_padding``, ``align_mean``, ``conv_padding``, ``t2v_mask``,
``momentum_update``, ``align_enqueue``, ``align_sim_loss``, and the loss ``labels_sigmoid_focal``.
With every switch at its official value (the real-data presets) and an official checkpoint
converted by :mod:`momentkit.interop.ld_detr`, the model computes the release's outputs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from momentkit.modeling.anchor_decoder import AnchorDecoder
from momentkit.modeling.conv_fuser import PADDING_FORMS, STAGES, ConvolutionalFuser
from momentkit.modeling.criterion import LossConfig, SetCriterion
from momentkit.modeling.distill_align import DistillAlign
from momentkit.modeling.heads import SpanHead
from momentkit.modeling.losses import FOREGROUND, matched_index, register_loss
from momentkit.modeling.matcher import Indices
from momentkit.modeling.moment_gru_head import SIMILARITIES, MomentGRUHead
from momentkit.modeling.precision import in_float32
from momentkit.models.base import MODELS, DETRConfig, MomentModel, build_inputs
from momentkit.models.moment_detr import check_postprocess

#: ``alpha`` of :func:`loss_labels_sigmoid_focal` (torchvision's default, the release's value)
SIGMOID_FOCAL_ALPHA = 0.25


@register_loss("labels_sigmoid_focal", ("loss_label",), per_layer=True, needs_matching=True)
def loss_labels_sigmoid_focal(
    outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
) -> dict[str, Tensor]:
    """The release's label loss (``ld_detr/model.py``, ``SetCriterion.loss_labels``).

    Each of the two logits of every query ``(B, Q, 2)`` is an independent sigmoid against the
    one-hot target (class 0 for matched queries, class 1 elsewhere): ``a_t (1 - p_t)**gamma
    BCE(x, t)``, ``a_t`` = 0.25 where the target is 1 and 0.75 where it is 0 (torchvision's
    ``sigmoid_focal_loss``), ``gamma`` = ``loss.focal_gamma``; mean over the ``B * Q * 2``
    entries. ``eos_coef`` is not used.
    """
    logits = outputs["pred_logits"].float()  # (B, Q, 2)
    target = torch.zeros_like(logits)
    target[..., 1] = 1.0  # background
    batch_idx, query_idx = matched_index(indices, logits.device)
    target[batch_idx, query_idx] = F.one_hot(
        torch.full_like(query_idx, FOREGROUND), num_classes=2
    ).to(logits.dtype)
    prob = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1.0 - prob) * (1.0 - target)
    a_t = SIGMOID_FOCAL_ALPHA * target + (1.0 - SIGMOID_FOCAL_ALPHA) * (1.0 - target)
    return {"loss_label": (a_t * bce * (1.0 - p_t).pow(config.focal_gamma)).mean()}


def _ld_detr_loss() -> LossConfig:
    loss = LossConfig(
        losses=["spans", "labels", "saliency_margin", "saliency_rank_contrastive", "distill_align"]
    )
    loss.weights["loss_sim"] = 0.6  # used with align_sim_loss (the release's weight)
    return loss


#: each switch's values (the first is the default) and the value that reproduces the release
CHOICES: dict[str, tuple[str, ...]] = {
    "decoder_form": ("paper", "official"),
    "hd_form": ("paper", "official"),
    "encoder_padding": PADDING_FORMS,
    "align_mean": PADDING_FORMS,
    "conv_padding": PADDING_FORMS,
    "t2v_mask": PADDING_FORMS,
    "momentum_update": ("train", "official"),
    "align_enqueue": ("any", "official"),
}

#: the model switches at the official release's values (``model.<field>``)
OFFICIAL: dict[str, Any] = {
    **{name: "official" for name in CHOICES},
    "align_sim_loss": True,
}


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
        decoder_form: ``paper`` runs the Loop Decoder ``decoder_loops`` times; ``official``
            decodes once whatever ``decoder_loops`` is (the release returns inside its loop).
        hd_form: ``paper`` reads the GRU state after the top moment's last valid clip;
            ``official`` slices the moment with the padded length and runs the GRU over all
            padded steps (:func:`~momentkit.modeling.moment_gru_head.official_moment_slice`).
        encoder_padding: ``masked`` zeroes the unimodal (and momentum) encoders' outputs at
            padded clips/words; ``official`` projects the padding too.
        align_mean: Distill Align's global means over the valid positions (``masked``) or over
            every position (``official``).
        conv_padding: ``masked`` zeroes padded clips before the convolutions and leaves them out
            of the batch-norm statistics; ``official`` convolves and normalises over them.
        t2v_mask: ``masked`` hides padded words from the T2V Encoder; ``official`` adds the
            release's head-major clip-by-word mask (another video's mask in some heads).
        momentum_update: ``train`` updates the momentum encoders in training forwards only;
            ``official`` in evaluation forwards too.
        align_enqueue: ``any`` enqueues every batch; ``official`` only batches whose size
            divides ``align_queue_size``.
        align_sim_loss: the release's extra Distill Align term ``loss_sim`` (a linear predictor
            ``h`` and a negative cosine; weight ``loss.weights.loss_sim``, 0.6 in the release).
        postprocess: :class:`~momentkit.modeling.postprocess.PostProcessor` settings for
            evaluation and ``momentkit predict`` (``{}``: momentkit's defaults; the real-data
            presets and converted checkpoints: the release's ``compute_mr_results``).
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
    decoder_form: str = "paper"
    hd_form: str = "paper"
    encoder_padding: str = "masked"
    align_mean: str = "masked"
    conv_padding: str = "masked"
    t2v_mask: str = "masked"
    momentum_update: str = "train"
    align_enqueue: str = "any"
    align_sim_loss: bool = False
    postprocess: dict[str, Any] = field(default_factory=dict)
    loss: LossConfig = field(default_factory=_ld_detr_loss)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range field."""
        super().validate()
        check_postprocess(self.postprocess)
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
        for name, values in CHOICES.items():
            if getattr(self, name) not in values:
                raise ValueError(
                    f"model.{name} must be one of {', '.join(values)}, got "
                    f"'{getattr(self, name)}' (official value: {OFFICIAL[name]})"
                )
        if self.align_sim_loss and not self.distill_align:
            raise ValueError(
                "model.align_sim_loss needs model.distill_align=true (loss_sim is a Distill "
                "Align term)"
            )
        if self.align_sim_loss and "loss_sim" not in self.loss.weights:
            raise ValueError(
                "model.align_sim_loss is on but model.loss.weights has no 'loss_sim'; set "
                "model.loss.weights.loss_sim (the release: 0.6, 0.4 on Charades-STA)"
            )

    @property
    def official_switches(self) -> dict[str, bool]:
        """Which of the :data:`OFFICIAL` switches are at the release's value."""
        return {name: getattr(self, name) == value for name, value in OFFICIAL.items()}


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
            conv_padding=c.conv_padding,
            t2v_mask=c.t2v_mask,
        )
        self.loop_decoder = AnchorDecoder(
            d,
            c.nheads,
            c.dec_layers,
            c.dim_feedforward,
            c.dropout,
            c.activation,
            c.pre_norm,
            loops=1 if c.decoder_form == "official" else c.decoder_loops,
        )
        self.anchors = nn.Embedding(c.num_queries, 2)
        self.moment_head = SpanHead(d)
        self.highlight_head = MomentGRUHead(d, c.hd_similarity, c.hd_form)
        self.distill_align: DistillAlign | None = None
        if c.distill_align:
            self.distill_align = DistillAlign(
                self.video_encoder,
                self.text_encoder,
                d,
                queue_size=c.align_queue_size,
                momentum=c.align_momentum,
                alpha=c.align_alpha,
                temperature=c.align_temperature,
                alpha_warmup_steps=c.align_alpha_warmup_steps,
                similarity_predictor=c.align_sim_loss,
                global_mean=c.align_mean,
                encoder_padding=c.encoder_padding,
                enqueue=c.align_enqueue,
            )

    @staticmethod
    def build_criterion(config: LDDETRConfig) -> SetCriterion:
        """The criterion of ``config``: its losses plus ``distill_align`` (with Distill Align)
        and ``distill_sim`` (with ``align_sim_loss``) when the list lacks them."""
        losses = list(config.loss.losses)
        for name, on in (
            ("distill_align", config.distill_align),
            ("distill_sim", config.align_sim_loss),
        ):
            if on and name not in losses:
                losses.append(name)
        return SetCriterion(dataclasses.replace(config.loss, losses=losses), config.matcher)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Batch dict -> output dict; adds ``loss_align`` (and ``loss_sim``) in training mode
        with Distill Align."""
        c = self.config
        video_mask, text_mask = batch["video_mask"].bool(), batch["text_mask"].bool()
        official_rows = c.encoder_padding == "official"
        video = self.video_encoder(batch["video_feats"], None if official_rows else video_mask)
        text = self.text_encoder(batch["text_feats"], None if official_rows else text_mask)
        # V' (B, T, d), T' (B, N, d)
        video_pos = self.video_pos(video_mask)
        text_pos = self.text_pos(text_mask) if self.text_pos is not None else None
        memory = self.convolutional_fuser(
            video, text, video_mask, text_mask, video_pos, text_pos
        )  # R' (B, T, d)
        hs, references = self.loop_decoder(memory, self.anchors.weight, video_pos, video_mask)
        out = self.moment_head(hs, references, aux=self.config.loss.aux_loss)
        clip_len = float(batch.get("clip_len", 1.0))
        out["saliency_scores"] = in_float32(
            self.highlight_head,
            out["pred_logits"], out["pred_spans"], memory, video, video_mask, clip_len,
        )  # fmt: skip
        out["video_mask"] = video_mask
        if self.distill_align is not None:
            encoders = (self.video_encoder, self.text_encoder)
            if self.training:
                out.update(self.distill_align.losses(video, text, batch, encoders))
            elif c.momentum_update == "official":
                self.distill_align.momentum_step(encoders)
        return out
