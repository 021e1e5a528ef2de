"""Contrastive denoising training (DN-DETR / DINO), for moment spans.

During training a decoder additionally reconstructs noised copies of the ground-truth spans.
Each of ``num_groups`` groups holds, for every ground-truth span of a video, one *positive*
query (span edges moved by less than ``span_noise * width / 2``: reconstruct the span) and one
*negative* query (edges moved by ``[1, 2) * span_noise * width / 2``: predict "no moment"),
DINO's contrastive denoising. The queries are laid out group by group, positives then negatives:

    query d = g * 2M + k       positive copy of target k in group g   (k < M)
    query d = g * 2M + M + k   negative copy of target k in group g

with ``M`` the most targets of any video in the batch (videos with fewer have invalid slots) and
``D = num_groups * 2M`` denoising queries in all. The decoder's self-attention runs over the
``D`` denoising queries followed by the ``num_queries`` matching queries, under
:attr:`DenoisingQueries.attn_mask`: a group sees itself and the matching queries, never another
group; the matching queries never see a denoising query (so inference, which has no denoising
queries, sees what training saw).

Losses (:func:`denoising_loss`, registered as ``"denoising"``): L1 and ``1 - gIoU`` of the
positives' predictions against their clean spans, and a sigmoid focal loss (``alpha``,
``gamma``) on the two class logits (positives foreground, negatives background). As in the
official MS-DETR/DN-DETR code every sum is divided by the number of valid denoising queries
(positives and negatives).

Shapes: ``B`` videos, ``D`` denoising queries, ``Q`` matching queries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from momentkit.modeling.losses import BACKGROUND, FOREGROUND, register_loss
from momentkit.modeling.matcher import Indices
from momentkit.structures.spans import (
    paired_generalized_temporal_iou,
    span_cxw_to_xx,
    span_xx_to_cxw,
)

if TYPE_CHECKING:
    from momentkit.modeling.criterion import LossConfig

POSITIVE, NEGATIVE = FOREGROUND, BACKGROUND  # denoising labels: what each query should predict


@dataclass
class DenoisingConfig:
    """Contrastive denoising settings (official MS-DETR / DINO defaults).

    Attributes:
        num_groups: denoising groups (each one positive and one negative copy of every target).
        span_noise: edge noise scale ``lambda``: positives move each edge by ``u * lambda * w/2``
            with ``u ~ U[0, 1)``, negatives with ``u ~ U[1, 2)`` (``w`` the target width).
        label_noise: probability that a query's *input* class label (fed to a label embedding)
            is replaced by a uniformly random label (0 or 1), as DN-DETR.
        focal_alpha: foreground weight ``alpha`` of the denoising focal loss.
    """

    num_groups: int = 10
    span_noise: float = 0.5
    label_noise: float = 0.0
    focal_alpha: float = 0.25

    def validate(self, prefix: str = "denoising.") -> None:
        """Raise ``ValueError`` naming the first out-of-range field (``prefix`` + field)."""
        if self.num_groups < 1:
            raise ValueError(f"{prefix}num_groups must be >= 1, got {self.num_groups}")
        if self.span_noise < 0:
            raise ValueError(f"{prefix}span_noise must be >= 0, got {self.span_noise}")
        if not 0.0 <= self.label_noise <= 1.0:
            raise ValueError(f"{prefix}label_noise must be in [0, 1], got {self.label_noise}")
        if not 0.0 <= self.focal_alpha <= 1.0:
            raise ValueError(f"{prefix}focal_alpha must be in [0, 1], got {self.focal_alpha}")


@dataclass
class DenoisingQueries:
    """The denoising queries of one batch (see the module docstring for the layout).

    Attributes:
        spans: ``(B, D, 2)`` noised ``(center, width)`` in ``[0, 1]`` (zeros in invalid slots).
        labels: ``(B, D)`` long, the class each query must predict: 0 (``POSITIVE``,
            foreground) for positives, 1 (``NEGATIVE``, background) for negatives.
        valid: ``(B, D)`` bool, False for slots of targets a video does not have.
        attn_mask: ``(D + Q, D + Q)`` bool self-attention mask, **True = blocked** (row = query,
            column = key); the ``D`` denoising queries come first.
        group_targets: ``(B, D)`` long, the index of the target each query reconstructs
            (``-1`` in invalid slots).
        target_spans: ``(B, D, 2)`` the clean ``(center, width)`` of that target.
        input_labels: ``(B, D)`` long, the (possibly label-noised) class fed to a label
            embedding; 0 unless ``label_noise > 0``.
        num_groups: groups ``G``.
        max_targets: targets per group slot ``M`` (``D = G * 2M``).
        config: the settings that built them (the loss reads ``focal_alpha``).
    """

    spans: Tensor
    labels: Tensor
    valid: Tensor
    attn_mask: Tensor
    group_targets: Tensor
    target_spans: Tensor
    input_labels: Tensor
    num_groups: int
    max_targets: int
    config: DenoisingConfig = field(default_factory=DenoisingConfig)

    @property
    def num_denoising(self) -> int:
        """``D``, the number of denoising queries per video."""
        return self.spans.shape[1]

    def split(self, x: Tensor, dim: int = -2) -> tuple[Tensor, Tensor]:
        """Split a ``(..., D + Q, ...)`` decoder output into its denoising and matching parts."""
        d = self.num_denoising
        return x.narrow(dim, 0, d), x.narrow(dim, d, x.shape[dim] - d)

    def key_mask(self, num_queries: int) -> Tensor:
        """``(B, D + Q)`` bool, True for keys that exist (valid denoising slots, all queries)."""
        b = self.valid.shape[0]
        return torch.cat([self.valid, self.valid.new_ones(b, num_queries)], dim=1)


def denoising_attn_mask(num_groups: int, group_size: int, num_queries: int) -> Tensor:
    """``(D + Q, D + Q)`` bool, True = blocked, with ``D = num_groups * group_size``.

    Denoising query ``i`` (group ``i // group_size``) may attend to its own group and to the
    matching queries; matching queries may attend only to matching queries.
    """
    d = num_groups * group_size
    size = d + num_queries
    group = torch.arange(size) // max(group_size, 1)
    is_dn = torch.arange(size) < d
    different_group = group[:, None] != group[None, :]
    blocked = is_dn[:, None] & is_dn[None, :] & different_group  # group vs other groups
    blocked |= ~is_dn[:, None] & is_dn[None, :]  # matching queries vs denoising queries
    return blocked


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    return torch.rand(shape, generator=generator)


def build_denoising_queries(
    targets: list[dict[str, Any]],
    cfg: DenoisingConfig,
    num_queries: int,
    generator: torch.Generator | None = None,
) -> DenoisingQueries:
    """Noised copies of every video's target spans, with the group attention mask.

    Args:
        targets: per video ``{"spans": (n_i, 2) cxw in [0, 1]}`` (the batch's ``span_targets``).
        cfg: groups and noise scales.
        num_queries: ``Q``, matching queries that follow the denoising ones in the decoder.
        generator: source of the noise (CPU generator; ``None``: torch's default), so a seeded
            generator gives the same queries every time.

    Returns:
        :class:`DenoisingQueries` on the device of the target spans. With no target in the
        batch ``D = 0`` (every tensor empty along ``D``; the mask is ``(Q, Q)``, all False).
    """
    cfg.validate()
    device = targets[0]["spans"].device if targets else torch.device("cpu")
    counts = [len(t["spans"]) for t in targets]
    b, m, g = len(targets), max(counts, default=0), cfg.num_groups
    d = g * 2 * m
    clean = torch.zeros(b, m, 2)
    for i, t in enumerate(targets):
        if counts[i]:
            clean[i, : counts[i]] = t["spans"].detach().float().cpu()
    slot_valid = torch.arange(m)[None, :] < torch.tensor(counts, dtype=torch.long)[:, None]

    # (B, G, 2, M, ...): group, positive/negative copy, target
    tgt = clean[:, None, None].expand(b, g, 2, m, 2)
    negative = torch.arange(2).view(1, 1, 2, 1, 1).float()  # 0 positives, 1 negatives
    magnitude = _uniform((b, g, 2, m, 2), generator) + negative
    sign = torch.randint(0, 2, (b, g, 2, m, 2), generator=generator).float() * 2.0 - 1.0
    half_width = tgt[..., 1:2] / 2
    noised = span_cxw_to_xx(tgt) + sign * magnitude * half_width * cfg.span_noise
    noised = noised.clamp(0.0, 1.0).sort(dim=-1).values  # edges cannot cross when noise <= 0.5
    noised = span_xx_to_cxw(noised)

    labels = negative.view(1, 1, 2, 1).expand(b, g, 2, m).long()
    valid = slot_valid[:, None, None, :].expand(b, g, 2, m)
    target_idx = torch.arange(m).view(1, 1, 1, m).expand(b, g, 2, m)
    input_labels = torch.full((b, g, 2, m), POSITIVE, dtype=torch.long)
    if cfg.label_noise > 0:
        flip = _uniform((b, g, 2, m), generator) < cfg.label_noise
        random_label = torch.randint(0, 2, (b, g, 2, m), generator=generator)
        input_labels = torch.where(flip, random_label, input_labels)

    valid = valid.reshape(b, d)
    zero = torch.zeros(())
    return DenoisingQueries(
        spans=torch.where(valid[..., None], noised.reshape(b, d, 2), zero).to(device),
        labels=labels.reshape(b, d).to(device),
        valid=valid.to(device),
        attn_mask=denoising_attn_mask(g, 2 * m, num_queries).to(device),
        group_targets=torch.where(valid, target_idx.reshape(b, d), -1).to(device),
        target_spans=torch.where(valid[..., None], tgt.reshape(b, d, 2), zero).to(device),
        input_labels=input_labels.reshape(b, d).to(device),
        num_groups=g,
        max_targets=m,
        config=cfg,
    )


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Element-wise focal loss of independent sigmoids (RetinaNet), same shape as ``logits``.

    ``alpha_t (1 - p_t)**gamma BCE(logits, targets)`` with ``alpha_t = alpha`` on targets 1 and
    ``1 - alpha`` on targets 0.
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * ce * (1 - p_t).pow(gamma)


def denoising_loss(
    pred_logits: Tensor, pred_spans: Tensor, dn: DenoisingQueries, focal_gamma: float = 2.0
) -> dict[str, Tensor]:
    """Reconstruction losses of the denoising queries.

    Args:
        pred_logits: ``(B, D, 2)`` class logits of the denoising queries (class 0 foreground).
        pred_spans: ``(B, D, 2)`` their predicted ``(center, width)``.
        dn: the queries they were decoded from.
        focal_gamma: focal exponent.

    Returns:
        ``loss_dn_span`` (L1 summed over both coordinates of the positives),
        ``loss_dn_giou`` (``1 - gIoU`` of the positives) and ``loss_dn_label`` (focal loss
        summed over the two classes of every valid query), each divided by the number of
        valid denoising queries. Zeros (with gradient graph) when there are none.
    """
    valid = dn.valid
    num = valid.sum().clamp(min=1).to(pred_spans.dtype)
    positive = valid & (dn.labels == POSITIVE)
    src, tgt = pred_spans[positive], dn.target_spans[positive].to(pred_spans)
    l1 = (src - tgt).abs().sum() / num
    giou = (
        1.0 - paired_generalized_temporal_iou(span_cxw_to_xx(src), span_cxw_to_xx(tgt))
    ).sum() / num
    onehot = F.one_hot(dn.labels, 2).to(pred_logits.dtype)
    focal = sigmoid_focal_loss(pred_logits, onehot, dn.config.focal_alpha, focal_gamma)
    label = (focal.sum(-1) * valid).sum() / num
    return {"loss_dn_span": l1, "loss_dn_giou": giou, "loss_dn_label": label}


DN_OUTPUT_KEYS = ("dn_pred_logits", "dn_pred_spans", "dn_queries")


@register_loss("denoising", ("loss_dn_span", "loss_dn_giou", "loss_dn_label"), per_layer=True)
def loss_denoising(
    outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
) -> dict[str, Tensor]:
    """The ``denoising`` loss: :func:`denoising_loss` on a model's denoising outputs.

    A model trained with denoising puts ``dn_pred_logits`` ``(B, D, 2)``, ``dn_pred_spans``
    ``(B, D, 2)`` and ``dn_queries`` (:class:`DenoisingQueries`) into its output dict and into
    every ``aux_outputs`` entry; without them (evaluation, denoising off) the loss is skipped.
    """
    if any(k not in outputs for k in DN_OUTPUT_KEYS):
        return {}
    dn: DenoisingQueries = outputs["dn_queries"]
    if dn.num_denoising == 0:
        return {}
    return denoising_loss(
        outputs["dn_pred_logits"], outputs["dn_pred_spans"], dn, config.focal_gamma
    )
