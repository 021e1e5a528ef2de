"""UniMD (Zeng et al., ECCV 2024): one detector for moment retrieval and temporal action detection.

A query is a text embedding from a frozen text encoder: a sentence for moment retrieval (MR) or
the prompt "a video of [action]" for each action class of temporal action detection (TAD). The
video is never fused with the text before the heads:

1. video encoder (Sec. 3.1): :class:`~momentkit.modeling.convnext_pyramid.ConvNeXtPyramid`
   (ConvNeXt blocks, strided stages) and a BiFPN/FPN neck -> levels ``Z_l`` of strides
   ``1, 2, 4, ...``;
2. query-dependent decoders (Sec. 3.2): the classification head scores every (point, query)
   pair, ``sigmoid(scale(G . conv(Z)))``; the regression head turns each query into a dynamic
   convolution kernel that predicts the distances to the segment's start and end;
3. loss (Eq. 3): focal classification on every (point, query) pair + ``delta`` x DIoU
   regression on the positives (centre sampling, radius 1.5), per task normalised by its
   positives and weighted (TAD 3.0, MR 1.0);
4. inference: per query, the points' segments are ranked by confidence and de-duplicated with
   soft-NMS (:func:`decode_detections`).

Batches: the multi-query batch of :mod:`momentkit.data.multitask` (``query_feats`` ``(B, Q, D)``,
several queries of both tasks per video; loss :class:`UniMDCriterion`), or the standard batch of
:mod:`momentkit.data.loader` (one sentence per row, pooled from ``text_feats``; loss
``unimd_dense`` through ``SetCriterion``). On a standard batch in eval mode the model also
returns each query's ``max_seg_num`` best segments as DETR-style ``pred_spans``/``pred_logits``,
so :class:`~momentkit.modeling.postprocess.PostProcessor`, ``momentkit train`` and
``momentkit predict`` work unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from momentkit.data.multitask import TASKS, WINDOW_CLIPPING
from momentkit.modeling.convnext_pyramid import BiFPNOptions, ConvNeXtPyramid, build_neck
from momentkit.modeling.criterion import LossConfig
from momentkit.modeling.dense_losses import (
    assign_targets,
    default_regression_ranges,
    dense_loss_sums,
    pyramid_points,
)
from momentkit.modeling.linear import Linear
from momentkit.modeling.postprocess import top_indices
from momentkit.modeling.query_heads import QueryClassificationHead, QueryRegressionHead
from momentkit.modeling.soft_nms import soft_nms_groups
from momentkit.models.base import MODELS, ModelConfig, MomentModel


def _unimd_loss() -> LossConfig:
    weights = dict(LossConfig().weights)
    weights.update({"loss_cls": 1.0, "loss_reg": 1.0})
    return LossConfig(losses=["unimd_dense"], weights=weights, aux_loss=False)


@dataclass
class UniMDConfig(ModelConfig):
    """UniMD hyper-parameters; defaults are the official Charades config
    (``configs/charades/charades_i3d_convnext_bs2_70e_stop20e.yaml`` of yingsen1/UniMD).

    Attributes:
        hidden_dim: channels of the pyramid and the neck (official ``embd_dim``/``fpn_dim``).
        head_dim: channels of the head towers; the classification head dots them with the
            query embedding, so a linear projection of the queries is added only when
            ``text_dim`` differs.
        depths: ConvNeXt blocks per downsampling stage (``convnext_depths``).
        num_embed_convs: embedding convolutions (``backbone_arch[0]``).
        num_stem_blocks: full-resolution ConvNeXt blocks (``backbone_arch[1]``).
        embed_kernel_size: kernel of the embedding convolutions.
        block_kernel_size: depthwise kernel of the stem and stage blocks (``embd_kernel_size``).
        drop_path_rate: stochastic depth of the stage blocks (0 -> this, linearly).
        layer_scale_init: initial ConvNeXt layer scale.
        neck: ``bifpn`` or ``fpn``.
        fpn_layers: BiFPN layers (``fpn_layer``).
        fpn_kernel_size: kernel of the BiFPN blocks and pooling.
        head_layers: convolutions of each head, the query layer included (``head_num_layers``).
        head_kernel_size: kernel of the head convolutions and of the dynamic kernel ``K``.
        head_with_ln: LayerNorm in the head towers.
        query_layers: layers of the MLP that makes the dynamic kernels (``reg_head_fc_num``).
        query_hidden_dim: its hidden width (``query_fc_chanel``).
        query_dropout: its dropout.
        regression_ranges: ``[min, max]`` distance (clips) each level regresses; ``None``: the
            official ``(0, 4), (4, 8), ... (64, inf)`` for as many levels as there are.
        center_sample_radius: centre-sampling radius in strides; ``<= 0`` disables it.
        focal_alpha: focal-loss class balance (gamma is ``loss.focal_gamma``).
        mr_loss_weight, tad_loss_weight: weight of each task's loss (official 1.0 and 3.0).
        text_pooling: one embedding from the token features of a standard batch: ``last``
            (the EOS token, CLIP's pooled feature) or ``mean``.
        class_prompt: template turning an action class into a TAD query.
        pre_nms_thresh: points with a lower confidence are not decoded.
        pre_nms_topk: most (point, query) candidates per level and video.
        duration_thresh: candidates shorter than this (clips) are dropped.
        nms_method: ``gaussian`` (soft-NMS), ``linear``, ``hard`` or ``none``.
        nms_sigma: soft-NMS Gaussian width.
        iou_threshold: overlap threshold of ``linear`` and ``hard`` NMS.
        min_score: detections scoring below this after soft-NMS are dropped.
        max_seg_num: most detections per query after NMS, and per video and task over the
            task's queries (the official code caps MR and TAD separately).
        pad_to: how far inputs are padded: ``stride`` (to a multiple of the coarsest stride,
            momentkit) or ``max_len`` (to ``max_video_len``, or a multiple of the stride beyond
            it, in training and inference: the official code).
        padded_steps: ``zeroed`` (padded steps re-zeroed after every normalisation: outputs
            independent of padding, momentkit) or ``kept`` (the values the embedding's LN+ReLU,
            the downsamplings' LN, the BiFPN input projections and the head towers leave at
            padded steps are kept and read by the next convolution: the official code).
        bifpn_input_norm: ``layer`` (momentkit) or ``batch`` (BatchNorm1d, momentum 0.01, eps
            1e-3: the official code) after the BiFPN's input projections.
        bifpn_pool_padding: ``ignore`` (the bottom-up max pooling skips padded steps) or
            ``zeros`` (pools over their zeros: the official ``MaskMaxPool1d``).
        bifpn_second_top_inputs: inputs fused by the second-coarsest level's bottom-up node:
            3 (like every middle level; the EfficientDet design) or 2 (the official code leaves
            out its top-down node).
        regression_target: the segment a positive regresses when several of its query's
            segments qualify: ``shortest`` (ActionFormer, the paper) or ``last`` (the last
            listed, the official class-wise assignment).
        loss_normalizer: ``positives`` (each task's loss divided by its positives in the batch)
            or ``ema`` (the official code: one exponential moving average of the positives,
            shared by both tasks, updated by TAD then MR before each divides by it; kept in the
            ``loss_norm`` buffer so that resuming continues it).
        loss_norm_init: initial value of the moving average (official ``init_loss_norm``: 100
            Charades, 400 ActivityNet).
        loss_norm_momentum: its momentum (official 0.9).
        label_smoothing: classification targets ``y (1 - e) + e / (smoothing_classes + 1)``
            (official ``label_smoothing``: 0.1 ActivityNet, 0 elsewhere).
        smoothing_classes: ``K`` of the smoothing (the official ``num_classes``: 1 ActivityNet).
        nms_arithmetic: ``float64`` or ``official`` (float32, lengths + 1e-6 in the IoU, the C++
            swap order; :func:`~momentkit.modeling.soft_nms.soft_nms`).
        grid_offset: grid point ``g`` is the time ``(g + grid_offset) * clip_len``: 0.5 (clip
            centres, momentkit) or the official ``0.5 * num_frames / feat_stride`` (2.0 for the
            Charades I3D features: 16 frames every 4; 0.5 for ActivityNet's 16 every 16). Used
            to map annotations to the grid (:mod:`momentkit.data.multitask`) and back.
        window_clipping: how annotated windows are fitted to the features before the grid
            (:func:`momentkit.data.multitask.grid_windows`): ``seconds`` (clipped to the
            seconds the features cover, momentkit), ``none`` (as annotated: the official
            Charades loader) or ``grid_end`` (windows starting after the features dropped, ends
            clamped to them: the official ActivityNet loader).
        normalize_mr_queries: L2-normalise the sentence embeddings (momentkit, with
            ``data.normalize_text``); the official code normalises the class embeddings only.
        cotrain_plan: how ``momentkit cotrain`` forms the batches of its strategies:
            ``momentkit`` or ``official`` (the released ``train_sync.py`` /
            ``train_random.py``; :func:`momentkit.training.cotrain.official_epoch_plan`).
    """

    name: str = "unimd"
    max_video_len: int = 288
    hidden_dim: int = 512
    head_dim: int = 512
    depths: list[int] = field(default_factory=lambda: [1, 1, 1, 1, 1])
    num_embed_convs: int = 2
    num_stem_blocks: int = 2
    embed_kernel_size: int = 3
    block_kernel_size: int = 3
    drop_path_rate: float = 0.4
    layer_scale_init: float = 1e-6
    neck: str = "bifpn"
    fpn_layers: int = 3
    fpn_kernel_size: int = 7
    head_layers: int = 3
    head_kernel_size: int = 3
    head_with_ln: bool = True
    query_layers: int = 3
    query_hidden_dim: int = 512
    query_dropout: float = 0.1
    regression_ranges: list[list[float]] | None = None
    center_sample_radius: float = 1.5
    focal_alpha: float = 0.25
    mr_loss_weight: float = 1.0
    tad_loss_weight: float = 3.0
    text_pooling: str = "last"
    class_prompt: str = "a video of {}"
    pre_nms_thresh: float = 0.001
    pre_nms_topk: int = 2000
    duration_thresh: float = 0.05
    nms_method: str = "gaussian"
    nms_sigma: float = 0.5
    iou_threshold: float = 0.1
    min_score: float = 0.001
    max_seg_num: int = 200
    pad_to: str = "stride"
    padded_steps: str = "zeroed"
    bifpn_input_norm: str = "layer"
    bifpn_pool_padding: str = "ignore"
    bifpn_second_top_inputs: int = 3
    regression_target: str = "shortest"
    loss_normalizer: str = "positives"
    loss_norm_init: float = 100.0
    loss_norm_momentum: float = 0.9
    label_smoothing: float = 0.0
    smoothing_classes: int = 1
    nms_arithmetic: str = "float64"
    grid_offset: float = 0.5
    window_clipping: str = "seconds"
    normalize_mr_queries: bool = True
    cotrain_plan: str = "momentkit"
    loss: LossConfig = field(default_factory=_unimd_loss)

    @property
    def num_levels(self) -> int:
        """Pyramid levels: the stem output plus one per stage."""
        return 1 + len(self.depths)

    def ranges(self) -> list[tuple[float, float]]:
        """The regression range of every level."""
        if self.regression_ranges is None:
            return default_regression_ranges(self.num_levels)
        return [(float(a), float(b)) for a, b in self.regression_ranges]

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range field."""
        super().validate()
        positive = (
            "hidden_dim", "head_dim", "num_embed_convs", "embed_kernel_size", "block_kernel_size",
            "fpn_layers", "fpn_kernel_size", "head_layers", "head_kernel_size", "query_layers",
            "query_hidden_dim", "pre_nms_topk", "max_seg_num",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_stem_blocks < 0 or any(d < 0 for d in self.depths):
            raise ValueError("model.num_stem_blocks and model.depths must be >= 0")
        if self.head_kernel_size % 2 == 0:
            raise ValueError(f"model.head_kernel_size must be odd, got {self.head_kernel_size}")
        if self.neck not in ("bifpn", "fpn"):
            raise ValueError(f"model.neck must be 'bifpn' or 'fpn', got '{self.neck}'")
        if self.neck == "bifpn" and not self.depths:
            raise ValueError("model.neck 'bifpn' needs at least one stage (model.depths)")
        for name in ("drop_path_rate", "query_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.regression_ranges is not None:
            if len(self.regression_ranges) != self.num_levels or any(
                len(r) != 2 or r[0] > r[1] for r in self.regression_ranges
            ):
                raise ValueError(
                    f"model.regression_ranges needs {self.num_levels} [min, max] pairs (one per "
                    f"level), got {self.regression_ranges}"
                )
        if self.text_pooling not in ("last", "mean"):
            raise ValueError(
                f"model.text_pooling must be 'last' or 'mean', got {self.text_pooling!r}"
            )
        if "{}" not in self.class_prompt:
            raise ValueError(
                f"model.class_prompt needs a '{{}}' for the class name, got {self.class_prompt!r}"
            )
        if self.nms_method not in ("gaussian", "linear", "hard", "none"):
            raise ValueError(
                f"model.nms_method must be gaussian, linear, hard or none, got {self.nms_method!r}"
            )
        if self.nms_sigma <= 0:
            raise ValueError(f"model.nms_sigma must be > 0, got {self.nms_sigma}")
        for name in ("mr_loss_weight", "tad_loss_weight", "duration_thresh", "pre_nms_thresh"):
            if getattr(self, name) < 0:
                raise ValueError(f"model.{name} must be >= 0, got {getattr(self, name)}")
        choices = {
            "pad_to": ("stride", "max_len"),
            "padded_steps": ("zeroed", "kept"),
            "bifpn_input_norm": ("layer", "batch"),
            "bifpn_pool_padding": ("ignore", "zeros"),
            "regression_target": ("shortest", "last"),
            "loss_normalizer": ("positives", "ema"),
            "nms_arithmetic": ("float64", "official"),
            "window_clipping": WINDOW_CLIPPING,
            "cotrain_plan": ("momentkit", "official"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"model.{name} must be {' or '.join(allowed)}, got {getattr(self, name)!r}"
                )
        if self.bifpn_second_top_inputs not in (2, 3):
            raise ValueError(
                f"model.bifpn_second_top_inputs must be 2 or 3, got {self.bifpn_second_top_inputs}"
            )
        if self.loss_norm_init <= 0 or not 0.0 <= self.loss_norm_momentum < 1.0:
            raise ValueError(
                "model.loss_norm_init must be > 0 and model.loss_norm_momentum in [0, 1), got "
                f"{self.loss_norm_init} and {self.loss_norm_momentum}"
            )
        if not 0.0 <= self.label_smoothing < 1.0 or self.smoothing_classes < 1:
            raise ValueError(
                "model.label_smoothing must be in [0, 1) and model.smoothing_classes >= 1, got "
                f"{self.label_smoothing} and {self.smoothing_classes}"
            )
        if self.grid_offset < 0:
            raise ValueError(f"model.grid_offset must be >= 0, got {self.grid_offset}")

    def padded_length(self, length: int) -> int:
        """The length an input of ``length`` steps is padded to (``pad_to``)."""
        stride = 2 ** (self.num_levels - 1)
        if self.pad_to == "max_len" and length <= self.max_video_len:
            length = self.max_video_len
        return -(-length // stride) * stride


#: the released code's value of every switch that differs from momentkit's default (see
#: docs/unimd.md, "Faithfulness"); dataset-specific values (``grid_offset``,
#: ``window_clipping``, ``loss_norm_init``, smoothing, NMS settings) live in the presets.
OFFICIAL_SWITCHES: dict[str, Any] = {
    "pad_to": "max_len",
    "padded_steps": "kept",
    "bifpn_input_norm": "batch",
    "bifpn_pool_padding": "zeros",
    "bifpn_second_top_inputs": 2,
    "regression_target": "last",
    "loss_normalizer": "ema",
    "nms_arithmetic": "official",
    "normalize_mr_queries": False,
    "cotrain_plan": "official",
}


def pool_text(text_feats: Tensor, text_mask: Tensor, mode: str) -> Tensor:
    """One embedding per query from its tokens: ``(B, N, D)``, ``(B, N)`` -> ``(B, D)``."""
    if mode == "last":
        last = (text_mask.long().sum(1) - 1).clamp(min=0)
        return text_feats[torch.arange(len(text_feats), device=text_feats.device), last]
    weights = text_mask.to(text_feats.dtype)
    return (text_feats * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp(min=1)


@MODELS.register("unimd")
class UniMD(MomentModel):
    """Video pyramid + query-dependent classification and regression heads (see module doc)."""

    config_class = UniMDConfig

    def __init__(self, config: UniMDConfig) -> None:
        super().__init__(config)
        c = config
        keep = c.padded_steps == "kept"
        self.video_encoder = ConvNeXtPyramid(
            c.video_dim,
            c.hidden_dim,
            c.depths,
            c.num_embed_convs,
            c.num_stem_blocks,
            c.embed_kernel_size,
            c.block_kernel_size,
            c.drop_path_rate,
            c.layer_scale_init,
            keep_padding=keep,
        )
        options = BiFPNOptions(
            input_norm=c.bifpn_input_norm,
            keep_padding=keep,
            pool_ignores_padding=c.bifpn_pool_padding == "ignore",
            second_top_inputs=c.bifpn_second_top_inputs,
        )
        self.neck = build_neck(
            c.neck, c.hidden_dim, c.num_levels, c.fpn_layers, c.fpn_kernel_size, options
        )
        self.query_proj = (
            Linear(c.text_dim, c.head_dim) if c.text_dim != c.head_dim else nn.Identity()
        )
        self.cls_head = QueryClassificationHead(
            c.hidden_dim, c.head_dim, c.head_layers, c.head_kernel_size, c.head_with_ln, keep
        )
        self.reg_head = QueryRegressionHead(
            c.hidden_dim,
            c.head_dim,
            c.text_dim,
            c.num_levels,
            c.head_layers,
            c.head_kernel_size,
            c.head_with_ln,
            c.query_layers,
            c.query_hidden_dim,
            c.query_dropout,
            keep,
        )
        if c.loss_normalizer == "ema":
            # the official normaliser: a moving average of the positives, updated in training
            # (float32: the trainer's float32 cast of the outputs then passes the buffer itself)
            self.register_buffer("loss_norm", torch.tensor(c.loss_norm_init, dtype=torch.float32))

    def queries(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """``(B, Q, D)`` query embeddings and ``(B, Q)`` mask of a batch.

        Multi-query batches carry ``query_feats``/``query_mask``; standard batches carry one
        query per row as tokens, pooled by ``config.text_pooling``.
        """
        if "query_feats" in batch:
            return batch["query_feats"], batch["query_mask"].bool()
        pooled = pool_text(batch["text_feats"], batch["text_mask"].bool(), self.config.text_pooling)
        return pooled[:, None], torch.ones(len(pooled), 1, dtype=torch.bool, device=pooled.device)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Batch dict -> dense outputs over every pyramid point.

        Returns:
            ``cls_logits`` ``(B, Q, P)``; ``reg_offsets`` ``(B, Q, P, 2)`` distances to start
            and end in units of the point's stride; ``points`` ``(P, 4)`` (time in clips,
            regression range, stride); ``point_mask`` ``(B, P)``; ``query_mask`` ``(B, Q)``;
            ``query_task`` ``(B, Q)`` (ids into :data:`TASKS`; MR for a standard batch);
            ``center_radius`` and ``focal_alpha`` (loss settings); in training with
            ``loss_normalizer="ema"`` the ``loss_norm`` buffer (the criterion updates it); on a
            standard batch in eval mode also ``pred_spans`` ``(B, K, 2)`` and ``pred_logits``
            ``(B, K, 2)``.
        """
        c = self.config
        video, mask = batch["video_feats"], batch["video_mask"].bool()
        pad = c.padded_length(video.shape[1]) - video.shape[1]
        if pad:
            video = F.pad(video, (0, 0, 0, pad))
            mask = F.pad(mask, (0, pad))
        x = (video * mask[..., None].to(video.dtype)).transpose(1, 2)  # (B, Dv, T)
        levels, masks = self.video_encoder(x, mask)
        levels, masks = self.neck(levels, masks)
        queries, query_mask = self.queries(batch)
        cls = self.cls_head(levels, masks, self.query_proj(queries))
        reg = self.reg_head(levels, masks, queries)
        points = pyramid_points([m.shape[1] for m in masks], c.ranges(), video.device)
        query_task = batch.get("query_task")
        if query_task is None:
            query_task = torch.zeros_like(query_mask, dtype=torch.long)
        out: dict[str, Any] = {
            "cls_logits": torch.cat(cls, dim=-1),
            "reg_offsets": torch.cat(reg, dim=-2),
            "points": points,
            "point_mask": torch.cat(masks, dim=1),
            "query_mask": query_mask,
            "query_task": query_task,
            "center_radius": c.center_sample_radius if c.center_sample_radius > 0 else None,
            "focal_alpha": c.focal_alpha,
        }
        if self.training and c.loss_normalizer == "ema":
            out["loss_norm"] = self.loss_norm
        if not self.training and "query_feats" not in batch:
            out.update(detr_proposals(out, batch, c))
        return out


def decode_detections(
    outputs: dict[str, Any],
    durations: Tensor | list[float],
    clip_len: float,
    config: UniMDConfig,
) -> list[list[tuple[Tensor, Tensor]]]:
    """Each query's detections in seconds, best first (the official ``inference`` + NMS).

    Per video and per task (MR and TAD separately, as the official code runs one inference per
    task): on every level the (point, query) pairs of the task above ``pre_nms_thresh`` are
    ranked and the best ``pre_nms_topk`` decoded into segments ``t - d_start * s, t + d_end *
    s``; segments not longer than ``duration_thresh`` grid steps are dropped; each query's
    candidates go through (soft-)NMS keeping ``max_seg_num``; the task keeps its
    ``max_seg_num`` best detections over its queries. Grid point ``g`` is the time ``(g +
    grid_offset) * clip_len``; segments are clamped to ``[0, duration]``.

    Args:
        outputs: the model's outputs (``cls_logits`` ``(B, Q, P)``, ``reg_offsets``,
            ``points``, ``point_mask``, ``query_mask``, optionally ``query_task`` ``(B, Q)``;
            without it every query is MR).
        durations: ``(B,)`` seconds.
        clip_len: seconds per grid step.
        config: the inference settings.

    Returns:
        ``[video][query] -> (segments (n, 2) seconds, scores (n,))`` for every query of the
        batch (padded queries get empty results).
    """
    cls = outputs["cls_logits"].detach().float().cpu()
    reg = outputs["reg_offsets"].detach().float().cpu()
    points = outputs["points"].detach().float().cpu()
    point_mask = outputs["point_mask"].detach().cpu()
    query_mask = outputs["query_mask"].detach().cpu().bool()
    task_of = outputs.get("query_task")
    task_of = torch.zeros_like(query_mask, dtype=torch.long) if task_of is None else task_of.cpu()
    durations = torch.as_tensor(durations, dtype=torch.float32).cpu().tolist()
    level_ids = torch.log2(points[:, 3]).round().long()
    levels = [torch.nonzero(level_ids == lv).flatten() for lv in range(int(level_ids.max()) + 1)]
    empty = (torch.zeros(0, 2), torch.zeros(0))
    results = []
    for b in range(cls.shape[0]):
        prob = torch.sigmoid(cls[b]) * (point_mask[b][None] & query_mask[b][:, None])  # (Q, P)
        per_query: list[tuple[Tensor, Tensor]] = [empty] * cls.shape[1]
        for task_id in range(len(TASKS)):
            rows = torch.nonzero(query_mask[b] & (task_of[b] == task_id)).flatten()
            if not len(rows):
                continue
            q_idx, segs, scores = _decode_task(prob[rows], reg[b, rows], points, levels, config)
            seconds = ((segs + config.grid_offset) * clip_len).clamp(0.0, durations[b])
            # each query's detections, best first (the task's list is in score order)
            mine = split_by_query(q_idx, len(rows), seconds, scores)
            for row, detections in zip(rows.tolist(), mine, strict=True):
                per_query[row] = detections
        results.append(per_query)
    return results


def split_by_query(q_idx: Tensor, num_q: int, *values: Tensor) -> list[tuple[Tensor, ...]]:
    """``values`` (rows aligned with ``q_idx`` ``(n,)``) grouped by query: one tuple per query
    ``0 .. num_q - 1`` of its rows, in their order in ``values`` (a stable sort by query)."""
    order = q_idx.argsort(stable=True)
    counts = torch.bincount(q_idx, minlength=num_q).tolist()
    return list(zip(*(v[order].split(counts) for v in values), strict=True))


def _decode_task(
    prob: Tensor, reg: Tensor, points: Tensor, levels: list[Tensor], config: UniMDConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """One task's detections of one video, grid units, best first, ``max_seg_num`` at most.

    Args:
        prob: ``(Q, P)`` confidences (0 at padded points).
        reg: ``(Q, P, 2)`` distances.
        points: ``(P, 4)``.
        levels: the point indices of each level.

    Returns:
        ``(query (n,), segments (n, 2), scores (n,))``.
    """
    num_q = prob.shape[0]
    cand_q, cand_p, cand_s = [], [], []
    for cols in levels:
        flat = prob[:, cols].T.reshape(-1)  # official order: (T, Q) flattened
        keep = torch.nonzero(flat > config.pre_nms_thresh).flatten()
        scores = flat[keep]
        top = top_indices(scores, config.pre_nms_topk)
        keep, scores = keep[top], scores[top]
        cand_p.append(cols[keep // num_q])
        cand_q.append(keep % num_q)
        cand_s.append(scores)
    q_idx, p_idx, scores = (torch.cat(x) for x in (cand_q, cand_p, cand_s))
    t, s = points[p_idx, 0], points[p_idx, 3]
    off = reg[q_idx, p_idx]
    segs = torch.stack([t - off[:, 0] * s, t + off[:, 1] * s], dim=1)
    long_enough = segs[:, 1] - segs[:, 0] > config.duration_thresh
    q_idx, segs, scores = q_idx[long_enough], segs[long_enough], scores[long_enough]
    groups = split_by_query(q_idx, num_q, segs, scores)  # each in candidate order
    kept = _suppress(groups, config)  # per query (class) NMS, in query order
    all_q = [torch.full((len(qsc),), q, dtype=torch.long) for q, (_, qsc) in enumerate(kept)]
    all_segs, all_scores = [qs for qs, _ in kept], [qsc for _, qsc in kept]
    q_cat, seg_cat, sc_cat = torch.cat(all_q), torch.cat(all_segs), torch.cat(all_scores)
    top = sc_cat.argsort(descending=True, stable=True)[: config.max_seg_num]
    return q_cat[top], seg_cat[top], sc_cat[top]


def _suppress(
    groups: list[tuple[Tensor, Tensor]], config: UniMDConfig
) -> list[tuple[Tensor, Tensor]]:
    """NMS of each query's candidates (``config.nms_method``; all queries in one
    :func:`~momentkit.modeling.soft_nms.soft_nms_groups` call), best first, ``max_seg_num``
    kept of each; a query stops once none of its further picks can be among the task's
    ``max_seg_num`` best (``total_max``: :func:`_decode_task` keeps only those)."""
    if config.nms_method == "none":
        orders = [scores.argsort(descending=True, stable=True)[: config.max_seg_num]
                  for _, scores in groups]  # fmt: skip
        return [(segs[o], scores[o]) for (segs, scores), o in zip(groups, orders)]
    kept = soft_nms_groups(
        groups,
        method=config.nms_method,  # type: ignore[arg-type]
        sigma=config.nms_sigma,
        iou_threshold=config.iou_threshold,
        min_score=config.min_score,
        max_num=config.max_seg_num,
        arithmetic=config.nms_arithmetic,  # type: ignore[arg-type]
        total_max=config.max_seg_num,  # the task keeps its max_seg_num best over all queries
    )
    return [(segs, scores) for segs, scores, _ in kept]


def detr_proposals(
    outputs: dict[str, Any], batch: dict[str, Any], config: UniMDConfig
) -> dict[str, Tensor]:
    """The detections of a one-query-per-row batch as DETR-style outputs.

    Returns:
        ``pred_spans`` ``(B, K, 2)`` ``(center, width)`` normalised by each video's
        ``num_clips * clip_len`` (as the loader's targets) and ``pred_logits`` ``(B, K, 2)``
        whose softmax gives the detection score as foreground probability; ``K =
        max_seg_num``, missing detections have score 0.
    """
    clip_len = float(batch["clip_len"])
    detections = decode_detections(outputs, batch["duration"], clip_len, config)
    num_clips = batch["video_mask"].sum(1).float().cpu()
    k = config.max_seg_num
    spans = torch.zeros(len(detections), k, 2)
    spans[..., 0] = 0.5
    prob = torch.zeros(len(detections), k)
    for b, ((segs, scores),) in enumerate(detections):
        n = len(scores)
        xx = segs / (num_clips[b] * clip_len)
        spans[b, :n] = torch.stack([(xx[:, 0] + xx[:, 1]) / 2, xx[:, 1] - xx[:, 0]], dim=1)
        prob[b, :n] = scores
    prob = prob.clamp(1e-12, 1.0 - 1e-7)
    logits = torch.stack([prob.log(), torch.log1p(-prob)], dim=-1)
    device = outputs["cls_logits"].device
    return {"pred_spans": spans.to(device), "pred_logits": logits.to(device)}


class UniMDCriterion(nn.Module):
    """UniMD's loss on a multi-query batch (Eq. 3), per task normalised and weighted.

    For each task ``k`` (MR, TAD): ``L_k = (sum focal + delta * sum DIoU) / N_k`` over its
    queries; the total is ``sum_k w_k L_k`` with ``w = (mr_loss_weight, tad_loss_weight)`` and
    ``delta = loss.weights["loss_reg"]``. ``N_k`` is ``max(1, positives_k)``
    (``loss_normalizer="positives"``) or, as the official code, the moving average
    ``N <- m N + (1 - m) max(1, positives_k)`` shared by the tasks, updated by TAD then by MR
    (``"ema"``; the model's ``loss_norm`` buffer holds ``N`` between steps).

    Needs ``batch["query_segments"]`` ``(B, Q, G, 2)`` (feature-grid units),
    ``batch["segment_mask"]`` ``(B, Q, G)`` and ``batch["query_task"]`` ``(B, Q)`` (ids into
    :data:`TASKS`), as :func:`momentkit.data.multitask.collate_videos` makes them.
    """

    def __init__(self, config: UniMDConfig) -> None:
        super().__init__()
        self.config = config
        self.cls_weight = config.loss.weights.get("loss_cls", 1.0)
        self.reg_weight = config.loss.weights.get("loss_reg", 1.0)
        self.task_weights = {"mr": config.mr_loss_weight, "tad": config.tad_loss_weight}

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, Tensor]:
        """``{loss_cls_<task>, loss_reg_<task>}`` (weighted) for each task present, and ``loss``."""
        c = self.config
        cls, reg = outputs["cls_logits"], outputs["reg_offsets"]
        b, q, p = cls.shape
        segments = batch["query_segments"].to(cls.device)
        seg_mask = batch["segment_mask"].to(cls.device).bool()
        labels, targets = assign_targets(
            outputs["points"],
            segments.flatten(0, 1),
            seg_mask.flatten(0, 1),
            outputs["center_radius"],
            c.regression_target,
        )
        query_mask = outputs["query_mask"].bool()
        valid = (outputs["point_mask"][:, None, :] & query_mask[..., None]).reshape(b * q, p)
        task = batch["query_task"].to(cls.device).reshape(b * q)
        ema = c.loss_normalizer == "ema"
        norm_state = outputs.get("loss_norm") if ema else None
        norm_value = float(norm_state) if norm_state is not None else c.loss_norm_init
        terms: dict[str, Tensor] = {}
        for name in ("tad", "mr") if ema else TASKS:
            rows = (task == TASKS.index(name)) & query_mask.reshape(b * q)
            if not bool(rows.any()):
                continue
            cls_sum, reg_sum, num_pos = dense_loss_sums(
                cls.reshape(b * q, p)[rows],
                reg.reshape(b * q, p, 2)[rows],
                labels[rows],
                targets[rows],
                valid[rows],
                c.focal_alpha,
                c.loss.focal_gamma,
                c.label_smoothing,
                c.smoothing_classes,
            )
            if ema:
                m = c.loss_norm_momentum
                norm_value = m * norm_value + (1 - m) * max(int(num_pos), 1)
                norm: Tensor | float = norm_value
            else:
                norm = num_pos.clamp(min=1).float()
            scale = self.task_weights[name] / norm
            terms[f"loss_cls_{name}"] = self.cls_weight * cls_sum * scale
            terms[f"loss_reg_{name}"] = self.reg_weight * reg_sum * scale
        if not terms:
            raise ValueError("the batch has no query of a known task (query_task / query_mask)")
        if norm_state is not None:
            with torch.no_grad():
                norm_state.fill_(norm_value)
        terms["loss"] = sum(terms.values())  # type: ignore[assignment]
        return terms


__all__ = [
    "OFFICIAL_SWITCHES",
    "TASKS",
    "UniMD",
    "UniMDConfig",
    "UniMDCriterion",
    "decode_detections",
    "detr_proposals",
    "pool_text",
]
