"""Cross-modal clip trimming (Fang et al., "Fewer Steps, Better Performance: Efficient
Cross-Modal Clip Trimming for Video Moment Retrieval Using Language", AAAI 2024).

Instead of running moment retrieval (MR) on every clip of a long video, a light network trims
the video to the few clips the query may be about, then an ordinary MR model runs on those:

1. **Index features.** Each clip's features ``c_0`` are joined by cheap semantic index
   features (Background, Appearance, Motion: ``momentkit.encoders.bam``), the last
   ``index_dim`` video channels before the TEF: ``s_b = [c_b ; BAM]``.
2. **Cross-modal fusion.** :class:`CrossModalFusion` fuses ``s_b`` with the query words
   (clips attend to words; the product of a clip with what it attended to measures the match)
   and with the neighbouring clips of the current sequence (dilated temporal convolutions):
   ``c'_b``.
3. **Recursive clip selection.** :class:`~momentkit.modeling.clip_selection.ClipSelection`
   scores ``c'_b``; the step keeps the clips whose probability ``p_{b+1}`` passes
   ``threshold`` (at least ``min_clips``, at most ``ceil(keep_ratio * visited)`` and never
   fewer than ``max_clips``). Hard ``{0, 1}`` decisions, trained through a straight-through
   estimator (optionally with Gumbel noise). The **adaptive clip update** carries the kept
   clips' ``c'_b`` into the next step as ``c_{b+1}``. Steps repeat while a video has more than
   ``max_clips`` clips left, at most ``max_steps`` times (the last step cuts to ``max_clips``).
4. **Moment retrieval on the kept clips.** The kept clips, in temporal order, form a short
   video for any registered DETR model (``mr``, default QD-DETR) with its own TEF and two
   "cut" channels marking jumps over trimmed clips. Its spans are mapped back through the
   kept clips' original timestamps (``compact_to_video_spans``), so the model's
   ``pred_spans`` live on the whole video's timeline like any other momentkit model's.

Losses (``loss.losses``, registered here): ``trimmed_mr`` (the MR model's own criterion on
the kept clips, targets mapped onto them), ``clip_selection`` (class-balanced BCE of every
step's logits against "clip inside a target moment") and ``feature_distill`` (the trimmed
sequence's ``c'_b`` should stay close to ``c'_b`` computed on the untrimmed video; zero when
nothing is trimmed).

The same MR model also runs on every clip through sliding windows of ``max_clips`` clips
(``momentkit.inference.trimmed``): the no-trimming reference. ``window_prob`` trains it on
such windows too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from momentkit.modeling.attention import MultiheadAttention
from momentkit.modeling.clip_selection import (
    ClipSelection,
    TemporalContext,
    best_window,
    compact,
    compact_to_video_spans,
    cut_channels,
    gather_clips,
    hard_select,
    logistic_noise,
    scatter_clips,
    selection_counts,
    step_budget,
    straight_through,
    timeline_scores,
    video_spans_to_compact,
)
from momentkit.modeling.criterion import LossConfig, SetCriterion
from momentkit.modeling.dropout import Dropout
from momentkit.modeling.linear import Linear
from momentkit.modeling.losses import register_loss
from momentkit.modeling.matcher import Indices
from momentkit.modeling.mlp import MLP, InputProjection
from momentkit.modeling.transformer import xavier_init_
from momentkit.models.base import MODELS, DETRConfig, ModelConfig, MomentModel, config_from_dict
from momentkit.utils.errors import FormatError

SELECTIONS = ("straight_through", "gumbel")
FINAL_SELECTIONS = ("clips", "window")
CUT_DIM = 2


def _trimming_loss() -> LossConfig:
    weights = LossConfig().weights  # the shared defaults too, so configs round-trip
    weights.update(loss_mr=1.0, loss_clip_selection=1.0, loss_feature_distill=1.0)
    return LossConfig(
        losses=["trimmed_mr", "clip_selection", "feature_distill"], weights=weights, aux_loss=False
    )


def _default_mr() -> dict[str, Any]:
    return {"name": "qd_detr"}


@dataclass
class ClipTrimmingConfig(ModelConfig):
    """Clip-trimming hyper-parameters (selection network + the MR model it feeds).

    Attributes:
        hidden_dim: width ``d`` of the selection network.
        nheads: heads of the clip-to-word attention.
        dim_feedforward: hidden width of the fusion's feed-forward block.
        dropout: dropout of the selection network (0: the untrimmed teacher of
            ``feature_distill`` is then the exact same computation).
        context_dilations: dilations of the fusion's temporal convolutions (kernel 3).
        index_dim: channels of the BAM index stream, the last ones before the TEF (0: none).
        index_hidden_dim: width the index features are projected to.
        tef_dim: TEF channels at the end of ``video_feats`` (0 when ``data.use_tef`` is off).
        max_steps: most selection steps.
        keep_ratio: a step keeps at most this fraction of the clips it visits.
        max_clips: clips the MR model takes (its window in the no-trimming reference).
        min_clips: a step keeps at least this many clips.
        threshold: selection probability above which a clip asks to be kept.
        selection: ``straight_through`` (rank by logit) or ``gumbel`` (rank by logit + logistic
            noise in training).
        gumbel_tau: temperature of the Gumbel relaxation whose gradient is passed through.
        final_selection: what reaches the MR model at inference: ``clips`` (the paper: the
            best-scored clips, wherever they lie) or ``window`` (the contiguous window of
            ``max_clips`` clips whose latest selection probabilities sum highest: the MR model
            sees an ordinary, gap-free video, which a model trained on short videos needs).
        keep_gt_prob: probability, per training video, that its target clips are forced into
            the selection (teacher forcing of the MR model).
        window_prob: probability, per training video, that the MR model sees a contiguous
            window of ``max_clips`` clips instead of the selection (half of them holding a
            target moment), so it also serves sliding-window inference.
        positive_dilation: clips on each side of a target moment that the selection loss also
            counts as positive.
        use_cut_channels: give the MR model the two channels marking trimmed gaps.
        mr_reads_index: give the MR model the index stream too (off: it reads the clip
            features + TEF only, like an MR model trained on ordinary short videos, so a
            pretrained checkpoint of one can be plugged in).
        mr: the MR model's config (``name`` of a registered DETR model + overrides); its
            ``video_dim``, ``text_dim``, ``max_video_len`` and ``max_text_len`` are derived.
    """

    name: str = "trimming"
    hidden_dim: int = 128
    nheads: int = 4
    dim_feedforward: int = 256
    dropout: float = 0.0
    context_dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    index_dim: int = 0
    index_hidden_dim: int = 32
    tef_dim: int = 2
    max_steps: int = 3
    keep_ratio: float = 0.25
    max_clips: int = 75
    min_clips: int = 24
    threshold: float = 0.5
    selection: str = "straight_through"
    gumbel_tau: float = 1.0
    final_selection: str = "clips"
    keep_gt_prob: float = 0.5
    window_prob: float = 0.25
    positive_dilation: int = 1
    use_cut_channels: bool = True
    mr_reads_index: bool = True
    mr: dict[str, Any] = field(default_factory=_default_mr)
    loss: LossConfig = field(default_factory=_trimming_loss)

    @property
    def feature_dim(self) -> int:
        """Video channels before the index stream and the TEF (the heavy clip features)."""
        return self.video_dim - self.index_dim - self.tef_dim

    @property
    def mr_feature_dim(self) -> int:
        """Video channels the MR model reads (its TEF included, cut channels excluded)."""
        return self.feature_dim + (self.index_dim if self.mr_reads_index else 0) + self.tef_dim

    def mr_config(self) -> DETRConfig:
        """The MR model's config, with its input sizes derived from this one.

        Raises:
            FormatError: ``mr`` names no registered model, a non-DETR model, or bad fields.
        """
        if self.mr.get("name") == self.name:
            raise FormatError(None, None, "model.mr.name", "a trimming model cannot nest itself")
        derived = {
            "video_dim": self.mr_feature_dim + (CUT_DIM if self.use_cut_channels else 0),
            "text_dim": self.text_dim,
            "max_video_len": self.max_clips,
            "max_text_len": self.max_text_len,
        }
        try:
            config = config_from_dict({**self.mr, **derived})
        except FormatError as e:
            field_name = f"model.mr.{e.field.removeprefix('model.')}" if e.field else "model.mr"
            hint = e.hint or (
                "Give the MR model's settings as one mapping, e.g. --set "
                "'model.mr={name: qd_detr, hidden_dim: 128}'"
            )
            raise FormatError(e.path, e.line, field_name, e.problem, hint) from None
        if not isinstance(config, DETRConfig):
            raise FormatError(
                None, None, "model.mr.name", f"'{config.name}' is not a DETR moment model"
            )
        return config

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range field."""
        super().validate()
        positive = ("hidden_dim", "nheads", "dim_feedforward", "index_hidden_dim", "max_steps")
        for name in (*positive, "max_clips", "min_clips"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_dim % self.nheads:
            raise ValueError(
                f"model.hidden_dim ({self.hidden_dim}) must be a multiple of nheads ({self.nheads})"
            )
        if self.index_dim < 0 or self.tef_dim < 0 or self.feature_dim < 1:
            raise ValueError(
                f"model.index_dim ({self.index_dim}) and model.tef_dim ({self.tef_dim}) must be "
                f">= 0 and leave clip features in model.video_dim ({self.video_dim})"
            )
        if self.min_clips > self.max_clips:
            raise ValueError(
                f"model.min_clips ({self.min_clips}) must be <= model.max_clips ({self.max_clips})"
            )
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"model.keep_ratio must be in (0, 1], got {self.keep_ratio}")
        for name in ("threshold", "keep_gt_prob", "window_prob", "dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"model.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"model.selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.final_selection not in FINAL_SELECTIONS:
            raise ValueError(
                f"model.final_selection must be one of {FINAL_SELECTIONS}, "
                f"got {self.final_selection!r}"
            )
        if self.gumbel_tau <= 0:
            raise ValueError(f"model.gumbel_tau must be > 0, got {self.gumbel_tau}")
        if self.positive_dilation < 0 or any(d < 1 for d in self.context_dilations):
            raise ValueError("model.positive_dilation must be >= 0 and context_dilations >= 1")
        self.mr_config().validate()


class CrossModalFusion(nn.Module):
    """``s_b`` -> ``c'_b``: clip-to-word attention, a multiplicative match, temporal context.

    ``h = W s_b``; every clip attends to the query words, ``a = Attn(h, words)``; then
    ``x = LN(h + a)``, ``x = LN(x + FFN([x ; h * a]))`` (the element-wise product says how well
    a clip matches the words it attends to, which the attention's softmax-normalised mixture
    alone does not), and dilated temporal convolutions over the current clip sequence
    (:class:`~momentkit.modeling.clip_selection.TemporalContext`).

    Shapes: ``s`` ``(B, L, d_in)``, ``mask`` ``(B, L)``, ``words`` ``(B, N, d)``,
    ``word_mask`` ``(B, N)`` -> ``(B, L, d)`` (zeros on padded clips).
    """

    def __init__(self, in_dim: int, config: ClipTrimmingConfig) -> None:
        super().__init__()
        d = config.hidden_dim
        self.input = Linear(in_dim, d)
        self.attn = MultiheadAttention(d, config.nheads, config.dropout)
        self.norm1 = nn.LayerNorm(d)
        self.ffn = MLP(2 * d, config.dim_feedforward, d, 2)
        self.norm2 = nn.LayerNorm(d)
        self.dropout = Dropout(config.dropout)
        self.context = TemporalContext(d, config.context_dilations, config.dropout)
        xavier_init_(self.attn)

    def forward(self, s: Tensor, mask: Tensor, words: Tensor, word_mask: Tensor) -> Tensor:
        """See the class docstring."""
        h = self.input(s)
        a = self.attn(h, words, words, word_mask)
        x = self.norm1(h + self.dropout(a))
        x = self.norm2(x + self.dropout(self.ffn(torch.cat([x, h * a], dim=-1))))
        return self.context(x, mask)


@dataclass
class SelectionStep:
    """One recursion step, on the ``L`` clips it visited (in temporal order).

    Attributes:
        index: ``(B, L)`` original clip indices of the visited clips.
        visited: ``(B, L)`` bool, valid visited clips.
        logits: ``(B, L)`` selection logits (``-inf`` on padding).
        kept: ``(B, L)`` bool, the clips passed to the next step.
        fused: ``(B, L, d)`` ``c'_b``.
        teacher: ``(B, L, d)`` ``c'_b`` computed on the untrimmed video at the same clips
            (training only, no gradient), else ``None``.
    """

    index: Tensor
    visited: Tensor
    logits: Tensor
    kept: Tensor
    fused: Tensor
    teacher: Tensor | None = None


@dataclass
class Selection:
    """The outcome of recursive clip selection.

    Attributes:
        index: ``(B, K)`` original indices of the finally kept clips, in temporal order.
        mask: ``(B, K)`` bool validity of ``index``.
        weight: ``(B, K)`` straight-through weights (1 in value) of the kept clips.
        steps: the steps that ran (none when every video fits ``max_clips``).
    """

    index: Tensor
    mask: Tensor
    weight: Tensor
    steps: list[SelectionStep]

    def keep_mask(self, num_clips: int) -> Tensor:
        """``(B, T)`` bool: the kept clips on the original timeline."""
        kept = scatter_clips(self.mask.to(torch.float32), self.index, self.mask, num_clips, 0.0)
        return kept > 0


def relevant_clips(batch: dict[str, Any], num_clips: int, dilation: int = 0) -> Tensor | None:
    """``(B, T)`` bool: clips whose centre lies in a target span (widened by ``dilation``).

    ``None`` when the batch has no ``span_targets``.
    """
    if "span_targets" not in batch:
        return None
    lengths = batch["video_mask"].sum(1).tolist()
    out = torch.zeros(len(lengths), num_clips, dtype=torch.bool)
    centers = torch.arange(num_clips, dtype=torch.float32) + 0.5
    for i, (target, length) in enumerate(zip(batch["span_targets"], lengths)):
        spans = target["spans"].float().cpu().reshape(-1, 2) * length
        for center, width in spans.tolist():
            lo, hi = center - width / 2 - dilation, center + width / 2 + dilation
            out[i] |= (centers >= lo) & (centers <= hi)
        out[i, int(length) :] = False
    return out.to(batch["video_mask"].device)


def local_tef(mask: Tensor) -> Tensor:
    """TEF of each kept sequence: ``(B, K, 2)``, ``(k / K_i, (k + 1) / K_i)``, 0 on padding."""
    counts = mask.sum(1, keepdim=True).clamp(min=1).to(torch.float32)
    k = torch.arange(mask.shape[1], device=mask.device, dtype=torch.float32)[None, :]
    tef = torch.stack([k / counts, (k + 1) / counts], dim=-1)
    return tef * mask.unsqueeze(-1)


@MODELS.register("trimming")
class ClipTrimming(MomentModel):
    """Cross-modal clip trimming + an MR model on the kept clips (see the module docstring)."""

    config_class = ClipTrimmingConfig

    def __init__(self, config: ClipTrimmingConfig) -> None:
        super().__init__(config)
        c, d = config, config.hidden_dim
        self.clip_proj = InputProjection(c.feature_dim, d, 1, c.dropout)
        self.index_proj = (
            InputProjection(c.index_dim, c.index_hidden_dim, 1, c.dropout) if c.index_dim else None
        )
        self.text_proj = InputProjection(c.text_dim, d, 1, c.dropout)
        in_dim = d + (c.index_hidden_dim if c.index_dim else 0)
        self.fusion = nn.ModuleList(CrossModalFusion(in_dim, c) for _ in range(c.max_steps))
        self.selection = ClipSelection(d)
        mr_config = c.mr_config()
        self.mr = MODELS.get(mr_config.name)(mr_config)

    # -- recursive clip selection -------------------------------------------------------------
    def select(
        self,
        batch: dict[str, Any],
        relevant: Tensor | None = None,
        teacher: bool = False,
    ) -> Selection:
        """Recursive clip selection (module docstring, steps 1-3).

        Args:
            batch: the batch dict (``video_feats`` ``(B, T, Dv)``, ``video_mask``,
                ``text_feats``, ``text_mask``).
            relevant: ``(B, T)`` target clips, forced into the selection of the training videos
                drawn with ``keep_gt_prob``; ``None`` forces nothing.
            teacher: also compute each step's ``c'_b`` on the untrimmed video (no gradient).
        """
        c = self.config
        video, video_mask = batch["video_feats"], batch["video_mask"].bool()
        batch_size, num_clips = video_mask.shape
        words = self.text_proj(batch["text_feats"], batch["text_mask"].bool())
        word_mask = batch["text_mask"].bool()
        clips = self.clip_proj(video[..., : c.feature_dim], video_mask)  # c_0 (B, T, d)
        index_feats = None
        if self.index_proj is not None:
            stop = c.feature_dim + c.index_dim
            index_feats = self.index_proj(video[..., c.feature_dim : stop], video_mask)

        def inputs(state: Tensor, index: Tensor) -> Tensor:  # s_b = [c_b ; BAM]
            if index_feats is None:
                return state
            return torch.cat([state, gather_clips(index_feats, index)], dim=-1)

        positions = torch.arange(num_clips, device=video.device).expand(batch_size, -1)
        index, mask = positions, video_mask
        weight = video_mask.to(clips.dtype)
        forced = None
        if relevant is not None and self.training and c.keep_gt_prob > 0:
            draw = torch.rand(batch_size, device=video.device) < c.keep_gt_prob
            forced = relevant & draw[:, None]
        state, full_state = clips, clips
        steps: list[SelectionStep] = []
        for b in range(c.max_steps):
            active = mask.sum(1) > c.max_clips  # (B,) videos still above the MR budget
            if not bool(active.any()):
                break
            fused = self.fusion[b](inputs(state, index), mask, words, word_mask)  # c'_b
            logits = self.selection(fused, mask)  # (B, L)
            target = None
            if teacher:
                with torch.no_grad():
                    full_state = self.fusion[b](
                        inputs(full_state, positions), video_mask, words, word_mask
                    )
                    target = gather_clips(full_state, index)
            kept, gate = self._keep(logits, mask, b == c.max_steps - 1, forced, index)
            kept = torch.where(active[:, None], kept, mask)
            steps.append(SelectionStep(index, mask, logits, kept, fused, target))
            # adaptive clip update: the kept clips carry c'_b (and their gates) onward
            sub, sub_mask = compact(kept)
            gate = torch.where(active[:, None], gate, torch.ones_like(gate))
            state = gather_clips(fused * gate.unsqueeze(-1), sub)
            weight = (weight * gate).gather(1, sub) * sub_mask
            index, mask = index.gather(1, sub), sub_mask
        if steps and c.final_selection == "window" and not self.training:
            scores = timeline_scores(
                [s.logits.masked_fill(~s.visited, 0.0).sigmoid() for s in steps],
                [s.index for s in steps],
                [s.visited for s in steps],
                num_clips,
            )
            index, mask = compact(best_window(scores, video_mask, c.max_clips))
            weight = mask.to(clips.dtype)
        return Selection(index, mask, weight, steps)

    def _keep(
        self, logits: Tensor, mask: Tensor, final: bool, forced: Tensor | None, index: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One step's hard decision ``(B, L)`` bool and its straight-through gate ``(B, L)``."""
        c = self.config
        safe = logits.masked_fill(~mask, 0.0)
        probs = safe.sigmoid()
        scores, relaxed = safe, probs
        if self.training and c.selection == "gumbel":
            noisy = safe + logistic_noise(safe.shape, safe)
            scores, relaxed = noisy, (noisy / c.gumbel_tau).sigmoid()
        budget = step_budget(mask, c.keep_ratio, c.max_clips, final)
        counts = selection_counts(probs, mask, c.threshold, c.min_clips, budget)
        if forced is not None:  # forced clips rank first and are kept within the budget
            force = forced.gather(1, index) & mask
            scores = scores + 1e4 * force.to(scores.dtype)
            counts = torch.maximum(counts, torch.minimum(force.sum(1), budget))
        kept = hard_select(scores, mask, counts)
        return kept, straight_through(kept, relaxed) * mask

    # -- moment retrieval on the kept clips ---------------------------------------------------
    def mr_batch(
        self,
        batch: dict[str, Any],
        index: Tensor,
        mask: Tensor,
        weight: Tensor | None = None,
    ) -> dict[str, Any]:
        """The batch of the MR model: the kept clips as a short video of their own.

        Args:
            batch: the original batch dict.
            index: ``(B, K)`` original indices of the kept clips (a window: consecutive ones).
            mask: ``(B, K)`` bool validity.
            weight: ``(B, K)`` straight-through weights multiplied into the features.

        Returns:
            A batch dict over ``K`` clips: features (original TEF replaced by the kept
            sequence's own, plus the cut channels), ``duration = K_i * clip_len``, and the
            targets mapped onto the kept clips when the batch has them.
        """
        c = self.config
        video = batch["video_feats"]
        feats = gather_clips(video[..., : c.mr_feature_dim - c.tef_dim], index)
        scale = mask.to(feats.dtype) if weight is None else weight * mask
        parts = [feats * scale.unsqueeze(-1)]
        if c.use_cut_channels:
            parts.append(cut_channels(index, mask).to(feats.dtype))
        if c.tef_dim:
            parts.append(local_tef(mask).to(feats.dtype))
        clip_len = float(batch.get("clip_len", 1.0))
        counts = mask.sum(1)
        out: dict[str, Any] = {
            "video_feats": torch.cat(parts, dim=-1),
            "video_mask": mask,
            "text_feats": batch["text_feats"],
            "text_mask": batch["text_mask"],
            "duration": counts.to(torch.float32).cpu() * clip_len,
            "clip_len": clip_len,
            "qids": batch.get("qids", list(range(len(mask)))),
            "vids": batch.get("vids", [""] * len(mask)),
        }
        if "span_targets" in batch:
            out.update(self._mr_targets(batch, index, mask))
        return out

    def _mr_targets(self, batch: dict[str, Any], index: Tensor, mask: Tensor) -> dict[str, Any]:
        """Span and saliency targets of the kept clips (see :meth:`mr_batch`)."""
        lengths = batch["video_mask"].sum(1).tolist()
        spans = []
        for i, target in enumerate(batch["span_targets"]):
            kept = index[i, mask[i]]
            mapped = video_spans_to_compact(
                target["spans"].to(index.device).float(), kept, int(lengths[i])
            )
            spans.append({"spans": mapped})
        out: dict[str, Any] = {"span_targets": spans}
        if "saliency_all_labels" in batch:
            saliency = gather_clips(batch["saliency_all_labels"].to(index.device), index) * mask
            ranked = saliency.masked_fill(~mask, float("-inf"))
            pos = ranked.topk(min(2, ranked.shape[1]), dim=1).indices
            neg = (
                saliency.masked_fill(~mask, float("inf"))
                .topk(min(2, ranked.shape[1]), dim=1, largest=False)
                .indices
            )
            if pos.shape[1] < 2:  # a one-clip selection: repeat it
                pos, neg = pos.repeat(1, 2), neg.repeat(1, 2)
            out.update(
                saliency_all_labels=saliency, saliency_pos_labels=pos, saliency_neg_labels=neg
            )
        return out

    def _training_windows(
        self, selection: Selection, batch: dict[str, Any], relevant: Tensor | None
    ) -> Selection:
        """Replace the selection of ``window_prob`` of the videos by a contiguous window."""
        c = self.config
        video_mask = batch["video_mask"].bool()
        lengths = video_mask.sum(1)
        draw = (torch.rand(len(lengths)) < c.window_prob).tolist()
        if not any(draw):
            return selection
        keep = selection.keep_mask(video_mask.shape[1])
        weight = scatter_clips(
            selection.weight, selection.index, selection.mask, video_mask.shape[1], 0.0
        )
        for i, use_window in enumerate(draw):
            if not use_window:
                continue
            n, size = int(lengths[i]), min(c.max_clips, int(lengths[i]))
            start = int(torch.randint(0, n - size + 1, ()))
            if relevant is not None and relevant[i].any() and torch.rand(()) < 0.5:
                hits = relevant[i].nonzero().squeeze(1)
                anchor = int(hits[torch.randint(0, len(hits), ())])
                start = int(torch.randint(max(0, anchor - size + 1), min(anchor, n - size) + 1, ()))
            keep[i] = False
            keep[i, start : start + size] = True
            weight[i] = keep[i].to(weight.dtype)
        index, mask = compact(keep)
        return Selection(index, mask, weight.gather(1, index) * mask, selection.steps)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Batch dict -> output dict.

        Returns the DETR outputs on the whole video's timeline (``pred_logits``, ``pred_spans``
        normalised by the video's clips, ``saliency_scores`` ``(B, T)`` with trimmed clips
        scored below every kept one, ``video_mask``) plus ``kept_mask`` ``(B, T)``,
        ``selection_steps`` (:class:`SelectionStep` list), ``selection_targets`` (``(B, T)``
        or ``None``) and ``trimmed`` (the MR model's ``outputs``, ``batch``, ``config``,
        ``index`` and ``mask``) for the losses. In training with a zero ``loss_mr`` weight
        (a frozen, pretrained MR model) the MR model is skipped and only ``video_mask`` and the
        selection entries are returned.
        """
        c = self.config
        video_mask = batch["video_mask"].bool()
        num_clips = video_mask.shape[1]
        targets = relevant_clips(batch, num_clips, c.positive_dilation)
        exact = relevant_clips(batch, num_clips, 0)
        selection = self.select(batch, exact, teacher=self.training)
        out: dict[str, Any] = {
            "selection_steps": selection.steps,
            "selection_targets": targets,
            "video_mask": video_mask,
        }
        if self.training and not self.trains_mr:
            return out  # a frozen MR model: nothing to learn downstream of the selection
        if self.training and c.window_prob > 0:
            selection = self._training_windows(selection, batch, exact)
        mr_batch = self.mr_batch(batch, selection.index, selection.mask, selection.weight)
        mr_out = self.mr(mr_batch)
        return out | self.video_outputs(mr_out, mr_batch, selection, video_mask)

    @property
    def trains_mr(self) -> bool:
        """Whether training runs the MR model: its loss is listed with a non-zero weight."""
        loss = self.config.loss
        return "trimmed_mr" in loss.losses and loss.weights.get("loss_mr", 0.0) != 0.0

    def video_outputs(
        self,
        mr_out: dict[str, Any],
        mr_batch: dict[str, Any],
        selection: Selection,
        video_mask: Tensor,
    ) -> dict[str, Any]:
        """The MR model's outputs mapped from the kept clips back to the video's timeline."""
        counts = selection.mask.sum(1).clamp(min=1)
        num_clips = video_mask.sum(1)
        spans = compact_to_video_spans(mr_out["pred_spans"], selection.index, counts, num_clips)
        saliency = mr_out["saliency_scores"]
        low = saliency.masked_fill(~selection.mask, float("inf")).amin(1, keepdim=True)
        low = torch.where(torch.isfinite(low), low, torch.zeros_like(low))
        full = scatter_clips(
            saliency - low, selection.index, selection.mask, video_mask.shape[1], -1.0
        )
        return {
            "pred_logits": mr_out["pred_logits"],
            "pred_spans": spans,
            "saliency_scores": (full + low) * video_mask,
            "video_mask": video_mask,
            "kept_mask": selection.keep_mask(video_mask.shape[1]) & video_mask,
            "trimmed": {
                "outputs": mr_out,
                "batch": mr_batch,
                "config": self.mr.config,
                "index": selection.index,
                "mask": selection.mask,
            },
        }


# ------------------------------------------------------------------------------------- losses
@register_loss("trimmed_mr", ("loss_mr",))
def loss_trimmed_mr(
    outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
) -> dict[str, Tensor]:
    """The MR task loss: the MR model's own criterion (matching + its weighted losses) on the
    kept clips, with the targets mapped onto them; their weighted sum."""
    trimmed = outputs.get("trimmed")
    if trimmed is None or "span_targets" not in trimmed["batch"]:
        return {}
    mr_config: ModelConfig = trimmed["config"]
    criterion = SetCriterion(mr_config.loss, mr_config.matcher)
    return {"loss_mr": criterion(trimmed["outputs"], trimmed["batch"])["loss"]}


def balanced_bce(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Binary cross-entropy averaged separately over positives and negatives of each row, then
    ``(pos + neg) / 2`` (rows with one class use it alone), mean over rows with valid entries.

    Shapes: ``(B, L)`` each; returns a scalar.
    """
    bce = F.binary_cross_entropy_with_logits(
        logits.masked_fill(~mask, 0.0), targets.to(logits.dtype), reduction="none"
    )
    pos, neg = (targets & mask).to(bce.dtype), (~targets & mask).to(bce.dtype)
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    mean_pos = (bce * pos).sum(1) / n_pos.clamp(min=1)
    mean_neg = (bce * neg).sum(1) / n_neg.clamp(min=1)
    classes = (n_pos > 0).to(bce.dtype) + (n_neg > 0).to(bce.dtype)
    per_row = (mean_pos + mean_neg) / classes.clamp(min=1)
    valid = classes > 0
    return per_row[valid].mean() if bool(valid.any()) else logits.sum() * 0.0


@register_loss("clip_selection", ("loss_clip_selection",))
def loss_clip_selection(
    outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
) -> dict[str, Tensor]:
    """Clip selection loss: class-balanced BCE (:func:`balanced_bce`) of every step's logits
    against "the clip lies in a target moment", over the clips the step visited; mean over
    steps."""
    targets = outputs.get("selection_targets")
    steps: list[SelectionStep] = outputs.get("selection_steps") or []
    if targets is None:
        return {}
    if not steps:
        return {"loss_clip_selection": targets.new_zeros((), dtype=torch.float32)}
    terms = [balanced_bce(s.logits, targets.gather(1, s.index), s.visited) for s in steps]
    return {"loss_clip_selection": torch.stack(terms).mean()}


def distillation_error(steps: list[SelectionStep]) -> Tensor | None:
    """Mean squared error between each step's trimmed ``c'_b`` and its untrimmed teacher,
    averaged over visited clips and channels, then over steps; ``None`` without teachers."""
    terms = []
    for s in steps:
        if s.teacher is None:
            continue
        err = (s.fused - s.teacher).pow(2).mean(-1)  # (B, L)
        visited = s.visited.to(err.dtype)
        terms.append((err * visited).sum() / visited.sum().clamp(min=1.0))
    return torch.stack(terms).mean() if terms else None


@register_loss("feature_distill", ("loss_feature_distill",))
def loss_feature_distill(
    outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
) -> dict[str, Tensor]:
    """Feature distillation: keep the trimmed representation close to the full one
    (:func:`distillation_error`); zero when nothing was trimmed."""
    if outputs.get("selection_targets") is None:
        return {}
    error = distillation_error(outputs.get("selection_steps") or [])
    if error is None:
        error = outputs["selection_targets"].new_zeros((), dtype=torch.float32)
    return {"loss_feature_distill": error}


__all__ = [
    "ClipTrimming",
    "ClipTrimmingConfig",
    "CrossModalFusion",
    "Selection",
    "SelectionStep",
    "balanced_bce",
    "distillation_error",
    "local_tef",
    "relevant_clips",
]
