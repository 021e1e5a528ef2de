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

Where the paper and the official release differ, a switch names both (docs/ms_detr.md, "Faithful
to the release"): ``sentence_token``, ``t2v_mask``, ``project_padding``, ``mtcd_rank``,
``mtcd_candidates``, ``mtcd_min_anchor_width``, ``selection_init``, ``denoising_negatives``,
``denoising_targets``, ``denoising_source``, ``decoder_negatives``, ``selection_negatives``,
``postprocess`` (plus ``activation``, ``fuse_dropout``, ``saliency_refinement``,
``use_corpus``). The ``qvhighlights``,
``charades_sta``, ``tacos`` and ``synth_official`` presets set all of them to the release's
values; with those, an official checkpoint converted by :mod:`momentkit.interop.ms_detr`
computes the release's outputs and losses.

With ``decoder_negatives`` / ``selection_negatives`` the negative pairs are decoded too (rows
``[B, 2B)`` of one decoder batch, with the matched pairs' denoising queries, as the release),
giving ``pred_logits_neg`` (and in ``aux_outputs``) and ``enc_outputs_neg``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import momentkit.modeling.corpus_losses  # noqa: F401  (registers the corpus losses)
import momentkit.modeling.mtcd_losses  # noqa: F401  (registers the negative-pair losses)
from momentkit.modeling.criterion import LossConfig
from momentkit.modeling.denoising import (
    DenoisingConfig,
    DenoisingQueries,
    build_denoising_queries,
)
from momentkit.modeling.masked_anchor_decoder import MIN_ANCHOR_WIDTH
from momentkit.modeling.mlp import InputProjection
from momentkit.modeling.msde import (
    MotionSemanticsDisentangledEncoder,
    stream_slices,
    tiled_t2v_allowed,
)
from momentkit.modeling.mtcd import (
    CANDIDATE_MODES,
    CONTENT_MODES,
    RANK_MODES,
    REFINE_MODES,
    MutualTaskCollaborativeDecoder,
    SentenceSaliency,
)
from momentkit.modeling.mtcd_denoising import (
    TARGET_MODES,
    release_denoising_queries,
    repeat_rows,
    take_rows,
)
from momentkit.modeling.position_encoding import PositionEmbeddingLearned, build_position_encoding
from momentkit.modeling.precision import in_float32
from momentkit.modeling.transformer import TransformerEncoder
from momentkit.models.base import MODELS, DETRConfig, MomentModel
from momentkit.models.moment_detr import check_postprocess
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
            "decoder_negatives",
            "query_selection_negatives",
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
        # negative pairs' decoded queries / selected proposals (the release's --use_decoder_neg
        # adds them to loss_label, --interm_neg weighs them as loss_label_interm)
        loss_label_neg=4.0,
        loss_enc_label_neg=4.0,
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
        use_corpus: train on the generated queries the batch carries (``aug_text_feats``;
            momentkit's corpus losses, docs/ms_detr.md; the release has none).
        sentence_token: where the sentence token joins the fused clips: ``"after_fusion"``
            (the paper's figure: ``[x_s; phi(TMCT (+) SSCT)]``) or ``"before_fusion"`` (the
            release: it rides through TMCT and SSCT unchanged and phi fuses ``[x_s; x_s]``,
            with phi's dropout). Same with one stream (no phi).
        mtcd_rank: what ranks the clips for MTCD's query selection: ``"saliency"`` (``S``, the
            paper) or ``"class_logit"`` (the release: the selection head's raw foreground
            logit).
        mtcd_candidates: ``"valid"`` (only valid clips can be selected) or ``"all"`` (the
            release: padding competes too, and padded or edge positions get zero memory and an
            infinite anchor); see :mod:`momentkit.modeling.mtcd`.
        mtcd_min_anchor_width: floor of the anchor width in the decoder's width modulation
            (momentkit 1e-4; the release 0, none).
        selection_init: initialisation of the selection head: ``"default"`` or
            ``"release"`` (Xavier ``W``, foreground prior on the class bias).
        denoising_negatives: each denoising group also holds a negative copy of every target
            (the paper's contrastive denoising; the release's ``train.sh`` passes no
            ``--use_dn_neg``: positives only).
        denoising_targets: the spans the denoising groups reconstruct: ``"own"`` (each video
            its own) or ``"last_video"`` (the release's ``get_dn_targets``: every video gets the
            batch's last video's spans).
        denoising_source: which decoding the denoising loss reads: ``"matched"`` pairs or
            ``"negative_pairs"`` (the release: its negative-pair decoding overwrites the stored
            denoising outputs). ``"negative_pairs"`` needs ``decoder_negatives``.
        decoder_negatives: decode the negative pairs too and train their queries as background
            (the release's ``--use_decoder_neg``; loss ``decoder_negatives``).
        selection_negatives: train the negative pairs' selected proposals as background (the
            release's ``--interm_neg``; loss ``query_selection_negatives``). Needs ``use_mtcd``.
        t2v_mask: the padding mask of the TMCT / SSCT cross-attention: ``"per_video"`` (each
            clip attends to its own query's valid words) or ``"tiled"`` (the release's, which
            QD-DETR's code builds head-major: in a padded batch head ``h`` of video ``b`` uses
            video ``(b H + h) mod B``'s mask; :func:`~momentkit.modeling.msde.
            tiled_t2v_allowed`). Each pairing (matched, negative, generated) is its own batch.
        project_padding: run the input projections and phi on padded rows too (the release);
            only outputs at padded positions change, which no loss or prediction reads.
        postprocess: :class:`~momentkit.modeling.postprocess.PostProcessor` settings for
            evaluation and prediction (``{}``: momentkit's; the real-data presets: the
            release's ``compute_mr_results``, as Lighthouse's).
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
    sentence_token: str = "after_fusion"
    mtcd_rank: str = "saliency"
    mtcd_candidates: str = "valid"
    mtcd_min_anchor_width: float = MIN_ANCHOR_WIDTH
    selection_init: str = "default"
    denoising_negatives: bool = True
    denoising_targets: str = "own"
    denoising_source: str = "matched"
    decoder_negatives: bool = False
    selection_negatives: bool = False
    t2v_mask: str = "per_video"
    project_padding: bool = False
    postprocess: dict[str, Any] = field(default_factory=dict)
    loss: LossConfig = field(default_factory=_ms_detr_loss)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range field."""
        super().validate()
        if self.cross_layers < 0:
            raise ValueError(f"model.cross_layers must be >= 0, got {self.cross_layers}")
        if len(self.stream_dims) > 2:
            raise ValueError(
                f"model.stream_dims lists {len(self.stream_dims)} streams; MSDE takes "
                "[motion, semantic] (or one stream): give MS-DETR at most two "
                "--video-features stores, the motion stream first"
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
        choices = {
            "sentence_token": ("after_fusion", "before_fusion"),
            "mtcd_rank": RANK_MODES,
            "mtcd_candidates": CANDIDATE_MODES,
            "selection_init": ("default", "release"),
            "denoising_targets": TARGET_MODES,
            "denoising_source": ("matched", "negative_pairs"),
            "t2v_mask": ("per_video", "tiled"),
        }
        for name, options in choices.items():
            if getattr(self, name) not in options:
                raise ValueError(
                    f"model.{name} must be one of {options}, got {getattr(self, name)!r}"
                )
        if self.mtcd_min_anchor_width < 0:
            raise ValueError(
                f"model.mtcd_min_anchor_width must be >= 0, got {self.mtcd_min_anchor_width}"
            )
        if self.denoising_source == "negative_pairs" and not self.decoder_negatives:
            raise ValueError(
                "model.denoising_source 'negative_pairs' reads the negative pairs' decoding: "
                "set model.decoder_negatives=true as well (or denoising_source=matched)"
            )
        if self.selection_negatives and not self.use_mtcd:
            raise ValueError(
                "model.selection_negatives trains MTCD's selected proposals: it needs "
                "model.use_mtcd=true"
            )
        if self.use_msde:
            stream_slices(self.video_dim, self.stream_dims)
        self.denoising.validate("model.denoising.")
        check_postprocess(self.postprocess)

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
            aux=c.loss.aux_loss, rank=c.mtcd_rank, candidates=c.mtcd_candidates,
            min_anchor_width=c.mtcd_min_anchor_width, selection_init=c.selection_init,
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

    def denoising_queries(self, batch: dict[str, Any]) -> DenoisingQueries | None:
        """This step's denoising queries (``None`` outside training or without targets).

        The shared builder (:func:`~momentkit.modeling.denoising.build_denoising_queries`) for
        the paper's form (negatives, each video its own targets), the release's builder
        (:func:`~momentkit.modeling.mtcd_denoising.release_denoising_queries`) otherwise.
        """
        c = self.config
        if not (self.training and c.use_denoising and "span_targets" in batch):
            return None
        targets = batch["span_targets"]
        if c.denoising_negatives and c.denoising_targets == "own":
            return build_denoising_queries(targets, c.denoising, c.num_queries)
        return release_denoising_queries(
            targets,
            c.denoising,
            c.num_queries,
            negatives=c.denoising_negatives,
            target_mode=c.denoising_targets,
        )

    def encode(self, batch: dict[str, Any]) -> dict[str, Any]:
        """MSDE and the encoder over every video-text pair of the step (see :meth:`_pairs`).

        Returns ``{"memory": (R, 1 + T, d) (row 0 the sentence token), "saliency": (R, T),
        "pair_pos": (R, T, d), "pair_mask": (R, T), "aug_slots"}`` for the ``R`` pairs.
        """
        c, d = self.config, self.config.hidden_dim
        video_mask, text_mask = batch["video_mask"].bool(), batch["text_mask"].bool()
        every_row = c.project_padding
        text = self.text_proj(batch["text_feats"], None if every_row else text_mask)
        pairs = self._pairs(batch, text, text_mask)
        vi = pairs["video_index"]
        b, rows = len(video_mask), len(vi)

        video_pos = self.video_pos(video_mask)  # (B, T, d)
        projected = self.msde.project(batch["video_feats"], None if every_row else video_mask)
        if rows > b:  # each video projected once, then repeated per pair
            projected = {k: v.index_select(0, vi) for k, v in projected.items()}
        pair_mask, pair_pos = video_mask.index_select(0, vi), video_pos.index_select(0, vi)
        pair_text_mask = pairs["text_mask"]
        text_pos = self.text_pos(pair_text_mask) if self.text_pos is not None else None
        allowed = None
        if c.t2v_mask == "tiled":  # each pairing is its own batch in the release
            groups = [(0, b)] + [(b, 2 * b)] * (rows > b) + [(2 * b, rows)] * (rows > 2 * b)
            allowed = torch.cat(
                [
                    tiled_t2v_allowed(pair_mask[i:j], pair_text_mask[i:j], c.nheads)
                    for i, j in groups
                ]
            )
        branches = self.msde.interact(
            projected, pair_pos, pairs["text"], text_pos, pair_text_mask, allowed
        )
        token = self.sentence_token.expand(rows, 1, d)
        fuse_mask = None if every_row else pair_mask
        if c.sentence_token == "before_fusion":  # [x_s; F_v] = phi([x_s; TMCT] (+) [x_s; SSCT])
            src = self.msde.fuse_branches(branches, fuse_mask, token=token)
        else:
            fused = self.msde.fuse_branches(branches, fuse_mask)  # F_v (rows, T, d)
            src = torch.cat([token, fused], dim=1)
        pos = torch.cat([self.sentence_pos.expand(rows, 1, d), pair_pos], dim=1)
        mask = torch.cat([pair_mask.new_ones(rows, 1), pair_mask], dim=1)
        memory = self.encoder(src, pos, mask)  # (rows, 1 + T, d)
        saliency = in_float32(self.saliency, memory[:, 1:], memory[:, 0])  # (rows, T)
        return {
            "memory": memory,
            "saliency": saliency,
            "pair_pos": pair_pos,
            "pair_mask": pair_mask,
            "aug_slots": pairs["aug_slots"],
        }

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Batch dict -> output dict (see :mod:`momentkit.models.ms_detr`).

        In training adds ``saliency_scores_neg``, the denoising outputs (when the batch has
        ``span_targets``), ``aug_saliency_scores`` ``(B, A, T)`` (when it has generated
        queries; 0 in empty slots) and, with ``decoder_negatives`` / ``selection_negatives``,
        ``pred_logits_neg`` ``(B, Q, 2)`` (also in ``aux_outputs``) / ``enc_outputs_neg``.
        """
        c = self.config
        video_mask = batch["video_mask"].bool()
        b = len(video_mask)
        enc = self.encode(batch)
        memory, saliency = enc["memory"], enc["saliency"]
        denoising = self.denoising_queries(batch)
        negatives = self.training and (c.decoder_negatives or c.selection_negatives)
        n = 2 * b if negatives else b  # rows [b, 2b): the negative pairs, decoded alike
        dn_rows = repeat_rows(denoising, 2) if negatives and denoising is not None else denoising
        decoded = self.mtcd(
            memory[:n, 1:], enc["pair_pos"][:n], enc["pair_mask"][:n], saliency[:n], dn_rows
        )
        out = split_pairs(decoded, b, denoising) if negatives else decoded
        if negatives:
            neg = split_pairs(decoded, b, denoising, second=True)
            if c.decoder_negatives:
                for layer, neg_layer in zip(
                    [out, *out.get("aux_outputs", [])], [neg, *neg.get("aux_outputs", [])]
                ):
                    layer["pred_logits_neg"] = neg_layer["pred_logits"]
                    if c.denoising_source == "negative_pairs" and "dn_queries" in layer:
                        layer["dn_pred_logits"] = neg_layer["dn_pred_logits"]
                        layer["dn_pred_spans"] = neg_layer["dn_pred_spans"]
            if c.selection_negatives and "enc_outputs" in neg:
                out["enc_outputs_neg"] = neg["enc_outputs"]
        if self.training:
            out["saliency_scores_neg"] = saliency[b : 2 * b]
            slots = enc["aug_slots"]
            if slots is not None:
                kind = batch["aug_kind"]
                aug = saliency.new_zeros(*kind.shape, saliency.shape[1])
                aug[slots[:, 0], slots[:, 1]] = saliency[2 * b :]
                out["aug_saliency_scores"] = aug
        out["video_mask"] = video_mask
        return out


def split_pairs(
    decoded: dict[str, Any],
    b: int,
    denoising: DenoisingQueries | None,
    second: bool = False,
) -> dict[str, Any]:
    """Rows ``[0, b)`` (or ``[b, 2b)`` with ``second``) of an MTCD output over ``2b`` rows.

    Tensors are sliced along the batch; ``dn_queries`` become ``denoising`` (the ``b``-row
    queries); ``aux_outputs`` / ``enc_outputs`` are split alike.
    """
    rows = slice(b, 2 * b) if second else slice(0, b)

    def part(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value[rows]
        if isinstance(value, DenoisingQueries):
            return denoising if denoising is not None else take_rows(value, rows)
        if isinstance(value, dict):
            return {k: part(v) for k, v in value.items()}
        if isinstance(value, list):
            return [part(v) for v in value]
        return value

    return part(decoded)
