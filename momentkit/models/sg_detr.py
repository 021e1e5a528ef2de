"""SG-DETR (Gordeev, Dokholyan, Tolstykh, Kuprashevich, "Saliency-Guided DETR for Moment
Retrieval and Highlight Detection", arXiv 2410.01615, 2024).

Composition (paper sections in brackets; blocks in :mod:`momentkit.modeling`)::

    clips, words --InputProjection--> (B, T, d), (B, N, d)
    words --PoolingEncoder--> sentence token (B, d)                                [3.2]
    local saliency s = scale * cos(sentence, clip) + shift        (B, T)          [3.2]
    CrossModalEncoder: clips attend to words, weights x sigmoid(s) (SGCA)          [3.3]
    TransformerEncoder (enc_layers, global context over clips)                     [3.3]
    SaliencyAmplifier(memory, s) -> offsets; global saliency g = s + offsets        [3.4]
    memory <- SaliencyAmplifier(memory, g)                                          [3.4]
    hybrid detector on the amplified memory:                                        [3.5]
      temporal pyramid -> ATSSHead (dense, one-to-many)  + QuerySelection (top-K positions)
      DINODecoder over [denoising groups | ATSS positive anchors (Co-DETR) | K matching]
      SpanHead (class, span) + IoUHead (predicted IoU)                              [3.6]
    inference: DETR spans scored sqrt(p * IoU) and ATSS spans fused by WBF          [3.5, 3.6]

Training also pairs every video with the next video's query (QD-DETR's negatives, the "CE on
negative video-text pairs"), and pools moment / non-moment tokens from the clips inside / outside
the target spans for CG-DETR's moment-sentence alignment.

Losses (3.7), all registered names of ``loss.losses``:

- HD: ``saliency_margin``, ``saliency_rank_contrastive``, ``saliency_ce``, ``saliency_neg_pair``
  on the global scores and ``local_saliency_*`` on the local ones;
- MR, DETR head: ``spans`` (L1 + gIoU), ``labels`` (CE), ``iou_head``, each on every decoder
  layer; ``denoising`` on the denoising groups; ``co_queries`` on the ATSS positive queries;
  ``query_selection`` on the selected encoder proposals (DINO);
- MR, ATSS head: ``atss`` (focal, gIoU, smooth L1, centerness);
- auxiliary: ``moment_sentence_align`` and ``moment_token_ce``.

Choices where the paper's equations did not survive in our copy (see ``docs/sg_detr.md``):

- SGCA multiplies each clip's softmax attention weights over the words by ``sigmoid(s_t)``
  (before dropout and the output projection); no CG-DETR dummy tokens.
- The Pooling Encoder is ``pooling_layers`` cross-attention layers whose only query is a learned
  token; one instance pools words into the sentence token, another pools clips into the moment
  and non-moment tokens.
- Saliency Amplifier: ``x * (1 + sigmoid(s))``, parameter-free; the saliency offsets come from a
  zero-initialised ``Linear(d, 1)`` on the amplified memory, and the amplifier is re-applied to
  the (un-amplified) encoder memory with the global scores.
- The ATSS head runs on a max-pooled pyramid of the memory (strides 1, 2, 4, 8 clips; anchors of
  ``anchor_sizes`` clips), and DINO's query selection ranks the same pyramid positions, each
  proposing its level's default width (``proposal_widths``).
- Denoising queries get a label embedding as content, ATSS positive queries
  ``LayerNorm(Linear(feature))`` of their point, matching queries a learned content; all groups
  are decoded in one pass under a block mask (no group sees another; matching queries see only
  themselves; denoising groups also see the matching queries, as DN-DETR).
- Localisation score ``q = p**(1 - a) * u**a`` (``a = iou_score_alpha``, 0.5): used for the class
  cost of matching (needs :meth:`SGDETR.build_criterion`) and as the final DETR score.
- WBF: DETR and ATSS spans with weights ``wbf_weights`` and IoU threshold
  ``wbf_iou_threshold``; ATSS spans scored ``sqrt(sigmoid(cls) * sigmoid(centerness))``,
  thresholded at 0.05, NMS 0.5, top 10 (as the ATSS recipe).
- Alignment: CE over cosine similarities of each moment token with every sentence token and of
  its non-moment token with every sentence token (CG-DETR); moment-token CE: BCE of
  ``moment_token . clip / sqrt(d)`` against "clip inside a target span".

Ablations of table 2 are config switches: ``sgca``, ``iou_scoring``, ``global_saliency``,
``hybrid_head``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from momentkit.modeling.anchor_decoder import inverse_sigmoid
from momentkit.modeling.atss_head import (
    ATSSHead,
    ATSSOutputs,
    PositiveQueries,
    atss_assign,
    atss_predictions,
    make_points,
    positive_anchor_queries,
    temporal_pyramid,
)
from momentkit.modeling.criterion import LossConfig, SetCriterion
from momentkit.modeling.denoising import DenoisingConfig, DenoisingQueries, build_denoising_queries
from momentkit.modeling.dino_decoder import DINODecoder
from momentkit.modeling.heads import SpanHead
from momentkit.modeling.iou_head import (
    IoUHead,
    iou_aware_logits,
    localization_score,
    score_to_logits,
)
from momentkit.modeling.linear import Linear
from momentkit.modeling.losses import (
    FOREGROUND,
    loss_saliency_ce,
    loss_saliency_margin,
    loss_saliency_neg_pair,
    loss_saliency_rank_contrastive,
    register_loss,
)
from momentkit.modeling.matcher import Indices, MatcherConfig, pad_targets
from momentkit.modeling.precision import in_float32
from momentkit.modeling.query_selection import QuerySelection
from momentkit.modeling.saliency_guided import (
    CrossModalEncoder,
    LocalSaliency,
    PoolingEncoder,
    SaliencyAmplifier,
)
from momentkit.modeling.transformer import TransformerEncoder
from momentkit.modeling.wbf import weighted_boxes_fusion_1d
from momentkit.models.base import MODELS, DETRConfig, MomentModel, build_inputs
from momentkit.structures.spans import (
    paired_generalized_temporal_iou,
    paired_temporal_iou,
    span_cxw_to_xx,
    span_xx_to_cxw,
)

#: score given to padding slots of the fused predictions (never ranked above a real one)
_PAD_LOG_SCORE = -30.0
#: saliency score standing in for a "negative" pair that is in fact the same video
_NOT_A_NEGATIVE = -1e4


def _sg_detr_loss() -> LossConfig:
    return LossConfig(
        losses=[
            "spans",
            "labels",
            "iou_head",
            "denoising",
            "co_queries",
            "query_selection",
            "atss",
            "saliency_margin",
            "saliency_rank_contrastive",
            "saliency_ce",
            "saliency_neg_pair",
            "local_saliency_margin",
            "local_saliency_rank_contrastive",
            "local_saliency_ce",
            "local_saliency_neg_pair",
            "moment_sentence_align",
            "moment_token_ce",
        ],
        weights={
            "loss_span": 10.0,
            "loss_giou": 1.0,
            "loss_label": 4.0,
            "loss_iou": 1.0,
            "loss_dn_span": 2.5,
            "loss_dn_giou": 0.5,
            "loss_dn_label": 1.0,
            "loss_co_span": 5.0,
            "loss_co_giou": 0.5,
            "loss_co_label": 2.0,
            "loss_co_iou": 0.5,
            "loss_enc_span": 5.0,
            "loss_enc_giou": 0.5,
            "loss_enc_label": 2.0,
            "loss_atss_label": 1.0,
            "loss_atss_giou": 2.0,
            "loss_atss_span": 1.0,
            "loss_atss_centerness": 1.0,
            "loss_saliency_margin": 1.0,
            "loss_saliency_rank": 1.0,
            "loss_saliency_ce": 1.0,
            "loss_saliency_neg": 1.0,
            "loss_local_saliency_margin": 1.0,
            "loss_local_saliency_rank": 1.0,
            "loss_local_saliency_ce": 1.0,
            "loss_local_saliency_neg": 1.0,
            "loss_align": 1.0,
            "loss_moment_ce": 1.0,
        },
        saliency_margin=0.15,
    )


@dataclass
class SGDETRConfig(DETRConfig):
    """SG-DETR hyper-parameters (paper section 4.4 defaults where it gives them).

    Attributes:
        t2v_layers: layers of the Cross-Modal Transformer Encoder (SGCA).
        pooling_layers: attention-pooling layers of each Pooling Encoder.
        saliency_init_scale: initial scale of the local saliency ``scale * cos + shift``.
        saliency_init_shift: its initial shift.
        sgca: saliency-guided cross-attention (off: plain cross-attention; table 2).
        global_saliency: the local-to-global saliency module (amplifier + offsets; off: the
            local scores are the final ones and nothing is amplified; table 2).
        iou_scoring: the IoU head, IoU-aware matching and scoring (off: class probability
            only; table 2).
        hybrid_head: the ATSS auxiliary head, its positive queries and WBF (off: the DINO head
            alone; table 2).
        iou_score_alpha: weight ``a`` of the predicted IoU in ``p**(1 - a) * u**a``.
        use_denoising: contrastive denoising groups during training.
        denoising: their settings.
        negative_pairs: also encode every video with the next video's query (training).
        pyramid_levels: levels of the temporal pyramid (stride ``2**l`` clips).
        anchor_sizes: ATSS anchor width of each level, in clips.
        atss_topk: ATSS candidates per level and target.
        atss_convs: conv blocks in each ATSS tower.
        proposal_widths: DINO default proposal width of each level (normalised).
        max_positive_queries: ATSS positive anchors fed to the decoder per video (Co-DETR).
        atss_score_threshold: ATSS score below which points are dropped before fusion.
        atss_nms_threshold: NMS IoU of ATSS spans before fusion.
        atss_top_n: ATSS spans kept per video before fusion.
        wbf_weights: WBF weights of the DETR and ATSS spans.
        wbf_iou_threshold: WBF clustering IoU.
    """

    name: str = "sg_detr"
    num_queries: int = 25
    enc_layers: int = 3
    dec_layers: int = 3
    t2v_layers: int = 2
    pooling_layers: int = 2
    saliency_init_scale: float = 20.0
    saliency_init_shift: float = 0.0
    sgca: bool = True
    global_saliency: bool = True
    iou_scoring: bool = True
    hybrid_head: bool = True
    iou_score_alpha: float = 0.5
    use_denoising: bool = True
    denoising: DenoisingConfig = field(default_factory=DenoisingConfig)
    negative_pairs: bool = True
    pyramid_levels: int = 4
    anchor_sizes: list[float] = field(default_factory=lambda: [4.0, 8.0, 16.0, 32.0])
    atss_topk: int = 9
    atss_convs: int = 2
    proposal_widths: list[float] = field(default_factory=lambda: [0.05, 0.2, 0.4, 0.85])
    max_positive_queries: int = 30
    atss_score_threshold: float = 0.05
    atss_nms_threshold: float = 0.5
    atss_top_n: int = 10
    wbf_weights: list[float] = field(default_factory=lambda: [2.0, 1.0])
    wbf_iou_threshold: float = 0.55
    loss: LossConfig = field(default_factory=_sg_detr_loss)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range field."""
        super().validate()
        for name in ("t2v_layers", "max_positive_queries", "atss_top_n"):
            if getattr(self, name) < 0:
                raise ValueError(f"model.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("pooling_layers", "pyramid_levels", "atss_topk", "atss_convs"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("anchor_sizes", "proposal_widths"):
            values = getattr(self, name)
            if len(values) < self.pyramid_levels or any(v <= 0 for v in values):
                raise ValueError(
                    f"model.{name} needs one positive value per pyramid level "
                    f"({self.pyramid_levels}), got {values}"
                )
        if not 0.0 <= self.iou_score_alpha <= 1.0:
            raise ValueError(f"model.iou_score_alpha must be in [0, 1], got {self.iou_score_alpha}")
        weights = self.wbf_weights
        if len(weights) != 2 or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(
                f"model.wbf_weights needs two weights >= 0 (DETR, ATSS), got {self.wbf_weights}"
            )
        for name in ("wbf_iou_threshold", "atss_nms_threshold", "atss_score_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"model.{name} must be in [0, 1], got {getattr(self, name)}")
        self.denoising.validate("model.denoising.")


# ------------------------------------------------------------------------------ building blocks
@dataclass
class MomentTokens:
    """Sentence, moment and non-moment tokens for the auxiliary alignment losses.

    Attributes:
        sentence: ``(B, d)``; ``moment``: ``(B, d)``; ``non_moment``: ``(B, d)``.
        has_moment: ``(B,)`` bool, the video has clips inside a target span.
        has_non_moment: ``(B,)`` bool, it has valid clips outside every target span.
        moment_clips: ``(B, T)`` bool, clips inside a target span.
        clips: ``(B, T, d)`` the projected clip features the tokens were pooled from.
        clip_mask: ``(B, T)`` bool.
    """

    sentence: Tensor
    moment: Tensor
    non_moment: Tensor
    has_moment: Tensor
    has_non_moment: Tensor
    moment_clips: Tensor
    clips: Tensor
    clip_mask: Tensor


def clips_in_spans(video_mask: Tensor, span_targets: list[Tensor]) -> Tensor:
    """``(B, T)`` bool: valid clips whose centre lies inside one of the video's target spans.

    Spans are ``(center, width)`` normalised by each video's number of valid clips.
    """
    num = video_mask.sum(1, keepdim=True).clamp(min=1).float()
    centers = (torch.arange(video_mask.shape[1], device=video_mask.device) + 0.5) / num  # (B, T)
    spans, counts = pad_targets(span_targets, video_mask.device)  # (B, N, 2)
    xx = span_cxw_to_xx(spans)[:, None]  # (B, 1, N, 2)
    counts = counts.to(video_mask.device)[:, None]
    has = torch.arange(spans.shape[1], device=video_mask.device)[None] < counts  # (B, N)
    c = centers[..., None]  # (B, T, 1)
    inside = ((c >= xx[..., 0]) & (c <= xx[..., 1]) & has[:, None]).any(-1)
    return inside & video_mask


def same_video_as_next(vids: list[Any] | None, batch_size: int, device: torch.device) -> Tensor:
    """``(B,)`` bool: video ``i`` is also video ``i + 1`` (its "negative" query is not one)."""
    if not vids or len(vids) != batch_size:
        return torch.zeros(batch_size, dtype=torch.bool, device=device)
    same = [vids[i] == vids[(i + 1) % batch_size] for i in range(batch_size)]
    return torch.tensor(same, dtype=torch.bool, device=device)


def query_group_mask(
    dn: DenoisingQueries | None, positives: PositiveQueries | None, num_queries: int, batch: int
) -> Tensor | None:
    """``(B, L, L)`` self-attention mask (True = may attend) over ``[denoising | positive |
    matching]`` queries, ``None`` when there are only matching queries.

    Denoising groups follow ``dn.attn_mask`` (own group + matching queries); positive queries see
    only each other; matching queries see only each other. Invalid slots are never attended to,
    but every query may attend to itself.
    """
    if dn is None and positives is None:
        return None
    d = dn.num_denoising if dn is not None else 0
    p = positives.num_queries if positives is not None else 0
    size = d + p + num_queries
    device = (dn.spans if dn is not None else positives.anchors).device  # type: ignore[union-attr]
    blocked = torch.ones(size, size, dtype=torch.bool, device=device)
    match = slice(d + p, size)
    blocked[match, match] = False
    if dn is not None:
        blocked[:d, :d] = dn.attn_mask[:d, :d]
        blocked[:d, match] = dn.attn_mask[:d, d:]
    if positives is not None:
        blocked[d : d + p, d : d + p] = False
    parts = []
    if dn is not None:
        parts.append(dn.valid)
    if positives is not None:
        parts.append(positives.valid)
    parts.append(torch.ones(batch, num_queries, dtype=torch.bool, device=device))
    key_valid = torch.cat(parts, dim=1)  # (B, L)
    allowed = ~blocked[None] & key_valid[:, None, :]
    return allowed | torch.eye(size, dtype=torch.bool, device=device)[None]


# ------------------------------------------------------------------------------------ the model
@MODELS.register("sg_detr")
class SGDETR(MomentModel):
    """SG-DETR: local saliency, SGCA, local-to-global saliency, hybrid ATSS + DINO detector."""

    config_class = SGDETRConfig

    def __init__(self, config: SGDETRConfig) -> None:
        super().__init__(config)
        c, d = config, config.hidden_dim
        layer_args = (c.dim_feedforward, c.dropout, c.activation, c.pre_norm)
        self.video_proj, self.text_proj, self.video_pos, self.text_pos = build_inputs(c)
        # 3.2 local saliency
        self.sentence_pooling = PoolingEncoder(d, c.nheads, c.pooling_layers, *layer_args)
        self.moment_pooling = PoolingEncoder(d, c.nheads, c.pooling_layers, *layer_args)
        self.local_saliency = LocalSaliency(c.saliency_init_scale, c.saliency_init_shift)
        # 3.3 cross-modal (SGCA) and global-context encoders
        self.cross_modal = CrossModalEncoder(d, c.nheads, c.t2v_layers, *layer_args)
        self.encoder = TransformerEncoder(d, c.nheads, c.enc_layers, *layer_args)
        # 3.4 local to global saliency
        self.amplifier = SaliencyAmplifier()
        self.saliency_offset = Linear(d, 1) if c.global_saliency else None
        if self.saliency_offset is not None:
            nn.init.zeros_(self.saliency_offset.weight)
            nn.init.zeros_(self.saliency_offset.bias)
        # 3.5 hybrid detector, 3.6 IoU head
        self.atss_head = ATSSHead(d, c.atss_convs, c.pyramid_levels) if c.hybrid_head else None
        self.query_selection = QuerySelection(d, c.num_queries, c.proposal_widths)
        self.label_embed = nn.Embedding(2, d) if c.use_denoising else None
        self.decoder = DINODecoder(d, c.nheads, c.dec_layers, *layer_args)
        self.head = SpanHead(d)
        self.iou_head = IoUHead(d) if c.iou_scoring else None

    @classmethod
    def build_criterion(cls, config: SGDETRConfig) -> SGDETRCriterion:
        """The training criterion: matching uses the localisation score when ``iou_scoring``."""
        alpha = config.iou_score_alpha if config.iou_scoring else None
        return SGDETRCriterion(config.loss, config.matcher, alpha)

    # -- encoders -------------------------------------------------------------------------------
    def _encode(
        self, batch: dict[str, Any], negatives: bool
    ) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor, Tensor]:
        """Saliency scores and the amplified clip memory of the batch's own pairs.

        Returns ``(scores, memory (B, T, d), video (B, T, d), video_pos, sentence (B, d))``;
        ``scores`` holds ``saliency_scores``, ``local_saliency_scores`` and, with ``negatives``,
        their ``*_neg`` versions for every video paired with the next video's query.
        """
        c = self.config
        video_mask, text_mask = batch["video_mask"].bool(), batch["text_mask"].bool()
        video = self.video_proj(batch["video_feats"], video_mask)  # (B, T, d)
        text = self.text_proj(batch["text_feats"], text_mask)  # (B, N, d)
        video_pos = self.video_pos(video_mask)
        text_pos = self.text_pos(text_mask) if self.text_pos is not None else None
        sentence = self.sentence_pooling(text, text_mask, text_pos)  # (B, d)
        local = in_float32(self.local_saliency, video, sentence)  # (B, T)
        b = len(video)
        vm, vp, tm, v_index, t_index = video_mask, video_pos, text_mask, None, None
        if negatives:  # the same videos with the next video's query, as one batch of 2B
            vm, vp = (torch.cat([x, x]) for x in (video_mask, video_pos))
            # each video's clip queries (first layer) and each query's words are projected
            # once: pair i is video v_index[i] with query t_index[i]
            own = torch.arange(b, device=text.device)
            v_index, t_index = torch.cat([own, own]), torch.cat([own, own.roll(-1)])
            tm = text_mask.index_select(0, t_index)
            local = torch.cat([local, in_float32(self.local_saliency, video, sentence.roll(-1, 0))])
        gate = local.sigmoid() if c.sgca else None
        clips = self.cross_modal(
            video, text, video_pos, text_pos, tm, gate, context_index=t_index, query_index=v_index
        )
        memory = self.encoder(clips, vp, vm)
        saliency = local
        if self.saliency_offset is not None:
            offsets = in_float32(self.saliency_offset, self.amplifier(memory, local)).squeeze(-1)
            saliency = local + offsets
            memory = self.amplifier(memory, saliency)
        scores = {"saliency_scores": saliency[:b], "local_saliency_scores": local[:b]}
        if negatives:
            same = same_video_as_next(batch.get("vids"), b, local.device)[:, None]
            for key, value in (("saliency_scores", saliency), ("local_saliency_scores", local)):
                scores[f"{key}_neg"] = torch.where(same, _NOT_A_NEGATIVE, value[b:])
        return scores, memory[:b], video, video_pos, sentence

    def _moment_tokens(
        self, video: Tensor, video_mask: Tensor, video_pos: Tensor, sentence: Tensor, targets: list
    ) -> MomentTokens:
        """Pool the clips inside / outside the target spans into moment / non-moment tokens."""
        moment = clips_in_spans(video_mask, targets)
        outside = video_mask & ~moment
        has_m, has_n = moment.any(1), outside.any(1)
        keys = torch.cat(  # sets without a clip pool all clips (and are left out of the losses)
            [
                torch.where(has_m[:, None], moment, video_mask),
                torch.where(has_n[:, None], outside, video_mask),
            ]
        )
        tokens = self.moment_pooling(
            torch.cat([video, video]), keys, torch.cat([video_pos, video_pos])
        )
        b = len(video)
        return MomentTokens(
            sentence, tokens[:b], tokens[b:], has_m, has_n, moment, video, video_mask
        )

    # -- detector -------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Batch dict -> output dict.

        Training outputs: the DETR head's ``pred_logits``/``pred_spans``/``pred_iou`` of the
        matching queries with ``aux_outputs`` per decoder layer (each also holding the denoising
        and positive-query predictions), ``enc_outputs``, ``atss``, ``moment_tokens``, the
        (local) saliency scores and their negatives. Evaluation outputs: ``pred_logits`` /
        ``pred_spans`` are the final predictions (localisation-scored, fused with the ATSS spans
        by WBF with the hybrid head; padded slots score ~0), the raw DETR head under
        ``detr_pred_*``.
        """
        c = self.config
        video_mask = batch["video_mask"].bool()
        b, d = video_mask.shape[0], c.hidden_dim
        targets = None
        if self.training and "span_targets" in batch:
            targets = [t["spans"].to(video_mask.device) for t in batch["span_targets"]]
        scores, memory, video, video_pos, sentence = self._encode(
            batch, self.training and c.negative_pairs
        )

        feats, masks = temporal_pyramid(memory, video_mask, c.pyramid_levels)
        points = make_points(masks, video_mask.sum(1), c.anchor_sizes)
        flat = torch.cat(feats, 1)  # (B, P, d)
        selected = self.query_selection(flat, points.valid, points.centers, points.level_sizes)
        atss = None
        if self.atss_head is not None:
            cls_logits, distances, centerness = self.atss_head(feats, masks, points)
            assignment = atss_assign(points, targets, c.atss_topk) if targets is not None else None
            atss = ATSSOutputs(cls_logits, distances, centerness, points, assignment)

        contents, anchors = [], []
        dn: DenoisingQueries | None = None
        if targets is not None and self.label_embed is not None:
            dn = build_denoising_queries(batch["span_targets"], c.denoising, c.num_queries)
            if dn.num_denoising:
                contents.append(self.label_embed(dn.input_labels))
                anchors.append(inverse_sigmoid(dn.spans))
            else:
                dn = None
        positives: PositiveQueries | None = None
        if atss is not None and atss.assignment is not None and c.max_positive_queries:
            positives = positive_anchor_queries(points, atss.assignment, c.max_positive_queries)
            if positives.num_queries:
                feat = flat.gather(1, positives.point_index[..., None].expand(-1, -1, d))
                contents.append(self.query_selection.transform(feat))
                anchors.append(inverse_sigmoid(positives.anchors))
            else:
                positives = None
        contents.append(selected.content)
        anchors.append(selected.anchors)
        allowed = query_group_mask(dn, positives, c.num_queries, b)
        hs, references = self.decoder(
            memory, torch.cat(anchors, 1), video_pos, video_mask, torch.cat(contents, 1), allowed
        )
        head = self.head(hs, references, aux=True)
        layers = [*head["aux_outputs"], {k: head[k] for k in ("pred_logits", "pred_spans")}]
        ious = self.iou_head(hs) if self.iou_head is not None else None  # (layers, B, L)
        n_dn = dn.num_denoising if dn is not None else 0
        n_pos = positives.num_queries if positives is not None else 0
        outputs = []
        for i, layer in enumerate(layers):
            logits, spans = layer["pred_logits"], layer["pred_spans"]
            out: dict[str, Any] = {
                "pred_logits": logits[:, n_dn + n_pos :],
                "pred_spans": spans[:, n_dn + n_pos :],
            }
            if ious is not None:
                out["pred_iou"] = ious[i][:, n_dn + n_pos :]
            if dn is not None:
                out.update(
                    dn_pred_logits=logits[:, :n_dn], dn_pred_spans=spans[:, :n_dn], dn_queries=dn
                )
            if positives is not None:
                part = slice(n_dn, n_dn + n_pos)
                out.update(
                    co_pred_logits=logits[:, part],
                    co_pred_spans=spans[:, part],
                    co_queries=positives,
                )
                if ious is not None:
                    out["co_pred_iou"] = ious[i][:, part]
            outputs.append(out)
        result = outputs[-1]
        if c.loss.aux_loss:
            result["aux_outputs"] = outputs[:-1]
        result.update(scores)
        result["enc_outputs"] = {
            "pred_logits": selected.enc_logits,
            "pred_spans": selected.enc_spans,
        }
        if atss is not None:
            result["atss"] = atss
        if targets is not None:
            result["moment_tokens"] = self._moment_tokens(
                video, video_mask, video_pos, sentence, targets
            )
        result["video_mask"] = video_mask
        if not self.training:
            result.update(self.final_predictions(result, atss))
        return result

    @torch.no_grad()
    def final_predictions(
        self, outputs: dict[str, Any], atss: ATSSOutputs | None
    ) -> dict[str, Tensor]:
        """Localisation-scored DETR spans, fused with the ATSS spans by WBF (hybrid head).

        Returns ``pred_logits`` ``(B, F, 2)`` whose foreground probability is the final score,
        ``pred_spans`` ``(B, F, 2)`` cxw, and the raw ``detr_pred_logits``/``detr_pred_spans``
        (and ``detr_pred_iou``).
        """
        c = self.config
        logits, spans = outputs["pred_logits"], outputs["pred_spans"]
        pred_iou = outputs.get("pred_iou")
        raw = {"detr_pred_logits": logits, "detr_pred_spans": spans}
        if pred_iou is not None:
            raw["detr_pred_iou"] = pred_iou
        score = localization_score(logits, pred_iou, c.iou_score_alpha)  # (B, Q)
        if atss is None:
            return {"pred_logits": score_to_logits(score.clamp(min=1e-12).log()), **raw}
        detr_xx = span_cxw_to_xx(spans).clamp(0.0, 1.0)
        fused = []
        atss_preds = atss_predictions(
            atss, c.atss_score_threshold, c.atss_nms_threshold, c.atss_top_n
        )
        for i, (atss_spans, atss_scores) in enumerate(atss_preds):
            fused.append(
                weighted_boxes_fusion_1d(
                    [detr_xx[i], atss_spans],
                    [score[i], atss_scores],
                    c.wbf_weights,
                    c.wbf_iou_threshold,
                )
            )
        size = max(len(s) for s, _ in fused)
        out_spans = torch.zeros(len(fused), size, 2)
        out_spans[..., 1] = 1.0
        log_scores = torch.full((len(fused), size), _PAD_LOG_SCORE)
        for i, (s, sc) in enumerate(fused):
            out_spans[i, : len(s)] = span_xx_to_cxw(s)
            log_scores[i, : len(s)] = sc.clamp(min=1e-12).log()
        device = logits.device
        return {
            "pred_logits": score_to_logits(log_scores).to(device),
            "pred_spans": out_spans.to(device),
            **raw,
        }


# ---------------------------------------------------------------------------------- criterion
class SGDETRCriterion(SetCriterion):
    """:class:`SetCriterion` whose Hungarian class cost uses the localisation score (3.6).

    Args:
        loss: losses and weights.
        matcher: matching cost weights.
        iou_alpha: weight ``a`` of the predicted IoU in ``p**(1 - a) * u**a``; ``None``: plain
            foreground probability (IoU scoring off).
    """

    def __init__(
        self,
        loss: LossConfig | None = None,
        matcher: MatcherConfig | None = None,
        iou_alpha: float | None = 0.5,
    ) -> None:
        super().__init__(loss, matcher)
        self.iou_alpha = iou_alpha

    def match(
        self, layers: list[tuple[int | None, dict[str, Any]]], targets: list[Tensor]
    ) -> list[Indices]:
        """Hungarian matching of every layer, the class cost on the localisation score."""
        if self.iou_alpha is None or any("pred_iou" not in out for _, out in layers):
            return super().match(layers, targets)
        logits = torch.stack([out["pred_logits"] for _, out in layers]).detach()
        spans = torch.stack([out["pred_spans"] for _, out in layers]).detach()
        ious = torch.stack([out["pred_iou"] for _, out in layers]).detach()
        scored = iou_aware_logits(logits, ious, self.iou_alpha)
        return self.matcher.match_layers(scored, spans, targets)


# -------------------------------------------------------------------------------------- losses
def _local_view(outputs: dict[str, Any]) -> dict[str, Any]:
    """``outputs`` with the local saliency scores in place of the global ones."""
    view = {"saliency_scores": outputs["local_saliency_scores"]}
    if "local_saliency_scores_neg" in outputs:
        view["saliency_scores_neg"] = outputs["local_saliency_scores_neg"]
    if "video_mask" in outputs:
        view["video_mask"] = outputs["video_mask"]
    return view


def _register_local(name: str, fn: Any, term: str) -> None:
    local_term = term.replace("loss_", "loss_local_", 1)

    @register_loss(f"local_{name}", (local_term,))
    def loss(
        outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
    ) -> dict[str, Tensor]:
        if "local_saliency_scores" not in outputs:
            return {}
        values = fn(_local_view(outputs), batch, indices, config)
        return {local_term: values[term]} if term in values else {}

    loss.__doc__ = f"``{name}`` on the local saliency scores (SG-DETR 3.7)."


for _name, _fn, _term in (
    ("saliency_margin", loss_saliency_margin, "loss_saliency_margin"),
    ("saliency_rank_contrastive", loss_saliency_rank_contrastive, "loss_saliency_rank"),
    ("saliency_ce", loss_saliency_ce, "loss_saliency_ce"),
    ("saliency_neg_pair", loss_saliency_neg_pair, "loss_saliency_neg"),
):
    _register_local(_name, _fn, _term)


@register_loss(
    "co_queries", ("loss_co_span", "loss_co_giou", "loss_co_label", "loss_co_iou"), per_layer=True
)
def loss_co_queries(
    outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
) -> dict[str, Tensor]:
    """Co-DETR's losses of the ATSS positive queries, each with its fixed target span.

    L1 (mean over coordinates) and ``1 - gIoU`` against the assigned span, foreground CE, and
    the IoU head's BCE against the actual IoU; means over the valid queries. Skipped without
    ``co_queries`` in the outputs.
    """
    queries: PositiveQueries | None = outputs.get("co_queries")
    if queries is None:
        return {}
    valid = queries.valid
    spans = outputs["co_pred_spans"]
    if not bool(valid.any()):
        zero = spans.sum() * 0.0 + outputs["co_pred_logits"].sum() * 0.0
        return {"loss_co_span": zero, "loss_co_giou": zero, "loss_co_label": zero}
    src, tgt = spans[valid], queries.targets[valid].to(spans)
    src_xx, tgt_xx = span_cxw_to_xx(src), span_cxw_to_xx(tgt)
    logits = outputs["co_pred_logits"][valid]
    out = {
        "loss_co_span": F.l1_loss(src, tgt),
        "loss_co_giou": (1.0 - paired_generalized_temporal_iou(src_xx, tgt_xx)).mean(),
        "loss_co_label": F.cross_entropy(logits, torch.full_like(logits[:, 0], FOREGROUND).long()),
    }
    if "co_pred_iou" in outputs:
        iou, _ = paired_temporal_iou(src_xx.detach(), tgt_xx)
        out["loss_co_iou"] = F.binary_cross_entropy_with_logits(outputs["co_pred_iou"][valid], iou)
    return out


@register_loss("moment_sentence_align", ("loss_align",))
def loss_moment_sentence_align(
    outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
) -> dict[str, Tensor]:
    """CG-DETR's moment-sentence alignment: each moment token must pick its own sentence.

    Row ``i`` (videos with a moment) holds the cosine similarities of moment token ``i`` with
    every sentence token and of non-moment token ``i`` with every sentence token; the target is
    sentence ``i``. Cross-entropy, mean over rows.
    """
    tokens: MomentTokens | None = outputs.get("moment_tokens")
    if tokens is None:
        return {}
    rows = tokens.has_moment
    sentence = F.normalize(tokens.sentence.float(), dim=-1)
    if not bool(rows.any()):
        return {"loss_align": sentence.sum() * 0.0}
    moment_sim = F.normalize(tokens.moment.float(), dim=-1) @ sentence.T  # (B, B)
    other_sim = F.normalize(tokens.non_moment.float(), dim=-1) @ sentence.T
    other_sim = other_sim.masked_fill(~tokens.has_non_moment[:, None], float("-inf"))
    logits = torch.cat([moment_sim, other_sim], dim=1)[rows]
    labels = torch.arange(len(rows), device=logits.device)[rows]
    return {"loss_align": F.cross_entropy(logits, labels)}


@register_loss("moment_token_ce", ("loss_moment_ce",))
def loss_moment_token_ce(
    outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
) -> dict[str, Tensor]:
    """Moment / non-moment clip classification by the moment token.

    ``BCE(moment . clip_t / sqrt(d), clip_t inside a target span)``, mean over the valid clips
    of videos with a moment.
    """
    tokens: MomentTokens | None = outputs.get("moment_tokens")
    if tokens is None:
        return {}
    logits = torch.einsum("btd,bd->bt", tokens.clips.float(), tokens.moment.float()) / math.sqrt(
        tokens.clips.shape[-1]
    )
    mask = (tokens.clip_mask & tokens.has_moment[:, None]).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(
        logits, tokens.moment_clips.to(logits.dtype), reduction="none"
    )
    return {"loss_moment_ce": (bce * mask).sum() / mask.sum().clamp(min=1.0)}
