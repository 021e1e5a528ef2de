"""Losses on a generated query corpus (MS-DETR, Ma et al., ACM MM 2025, Sec. 3.4).

A model trained with the corpus scores every video against its own query and against queries
generated from it (``momentkit augment``): *positives* keep the meaning (same moments),
*negatives* change it. It puts ``aug_saliency_scores`` ``(B, A, T)`` into its outputs, the
per-clip saliency of video ``b`` given its ``a``-th generated query; the batch holds ``aug_kind``
``(B, A)`` (1 positive, 0 negative, -1 empty slot; :mod:`momentkit.text_augment.corpus`).

The score of a video-text pair is its mean saliency over the ground-truth clips of the source
query (``saliency_all_labels > 0``): the moment the source query describes. A generated negative
may well match *other* clips of the video (the synthetic benchmark plants such distractors), but
not that moment.

- ``corpus_contrastive`` (``loss_corpus_contrast``): the explicit contrastive metric loss between
  the matched pair and the unmatched pairs,
  ``mean_{b, n} max(0, margin + s(v_b, q_n^-) - s(v_b, q_b))`` over the generated negatives,
  ``margin = LossConfig.saliency_margin``.
- ``corpus_positive`` (``loss_corpus_positive``): generated positives share the source query's
  moment, but a generator can be wrong (a "near-synonym" that is not one). Each positive is
  trained with the generalised cross-entropy of Zhang & Sabuncu (NeurIPS 2018), ``(1 - p^q) / q``
  with ``q = GCE_Q``, of ``p``, the share of the clip softmax ``softmax(S / rank_tau)`` (valid
  clips; the temperature of ``saliency_rank_contrastive``) that falls on the moment: bounded, so
  a wrong positive cannot dominate the gradient as it would under cross-entropy (``q -> 0``),
  while correct positives still learn (``q = 1`` is MAE). ``p`` is unchanged by adding a
  constant to all of a pair's saliencies, as are the ranking losses.
- ``corpus_positive_per_clip`` (same term; the first form, kept to reproduce its runs): the same
  GCE per clip of ``sigmoid(S)`` against the moment's clip labels. It depends on the absolute
  level of ``S``, which the other losses do not fix: MS-DETR's negative-pair loss pushes every
  saliency down (about -7 after training on the synthetic benchmark), where ``sigmoid(S)`` of the
  moment's clips is ~0.001 and the GCE's gradient ``p^q (1 - p)`` ~0.01: the term stays at its
  bound and trains nothing (docs/ms_detr.md).

Both are skipped when the outputs or the batch lack the corpus (evaluation, no corpus, no
saliency labels) or hold no query of their kind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from momentkit.modeling.losses import register_loss
from momentkit.modeling.matcher import Indices
from momentkit.text_augment.corpus import NEGATIVE, POSITIVE

if TYPE_CHECKING:
    from momentkit.modeling.criterion import LossConfig

#: exponent of the generalised cross-entropy (Zhang & Sabuncu's recommended 0.7)
GCE_Q = 0.7


def _corpus_inputs(
    outputs: dict[str, Any], batch: dict[str, Any]
) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """``(aug scores (B, A, T), kinds (B, A), clip labels (B, T) bool, valid clips (B, T))``."""
    if "aug_saliency_scores" not in outputs or "aug_kind" not in batch:
        return None
    if "saliency_all_labels" not in batch:
        return None
    scores = outputs["aug_saliency_scores"]
    mask = outputs["video_mask"] if "video_mask" in outputs else batch["video_mask"]
    mask = mask.to(scores.device)
    labels = (batch["saliency_all_labels"].to(scores.device) > 0) & mask
    return scores, batch["aug_kind"].to(scores.device), labels, mask


def _rows(
    outputs: dict[str, Any], batch: dict[str, Any], kind: int, need_moment: bool = True
) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """``(aug scores (B, A, T), rows (B, A) bool, moment (B, T), valid clips (B, T))``: the
    generated queries of ``kind`` (of videos with a moment when ``need_moment``), or ``None``
    when there are none."""
    inputs = _corpus_inputs(outputs, batch)
    if inputs is None:
        return None
    aug, kinds, moment, mask = inputs
    rows = kinds == kind
    if need_moment:
        rows = rows & moment.any(1)[:, None]
    return (aug, rows, moment, mask) if rows.any() else None


def moment_score(saliency: Tensor, moment: Tensor) -> Tensor:
    """Mean saliency over the moment's clips: ``(..., T)`` x ``(..., T)`` bool -> ``(...)``."""
    weight = moment.to(saliency.dtype)
    return (saliency * weight).sum(-1) / weight.sum(-1).clamp(min=1.0)


@register_loss("corpus_contrastive", ("loss_corpus_contrast",))
def loss_corpus_contrastive(
    outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
) -> dict[str, Tensor]:
    """Hinge between the matched pair and every generated negative (see the module doc)."""
    inputs = _rows(outputs, batch, NEGATIVE)
    if inputs is None:
        return {}
    aug, negative, moment, _ = inputs
    matched = moment_score(outputs["saliency_scores"], moment)  # (B,)
    unmatched = moment_score(aug, moment[:, None, :])  # (B, A)
    hinge = (config.saliency_margin + unmatched - matched[:, None]).clamp(min=0)
    return {"loss_corpus_contrast": hinge[negative].mean()}


def generalized_cross_entropy(logits: Tensor, targets: Tensor, q: float = GCE_Q) -> Tensor:
    """Element-wise ``(1 - p^q) / q``: ``p = sigmoid(logits)`` on targets 1, ``1 - p`` on 0."""
    log_p = torch.where(
        targets, torch.nn.functional.logsigmoid(logits), torch.nn.functional.logsigmoid(-logits)
    )
    return (1.0 - torch.exp(q * log_p)) / q


@register_loss("corpus_positive", ("loss_corpus_positive",))
def loss_corpus_positive(
    outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
) -> dict[str, Tensor]:
    """Noise-tolerant loss of the moment's softmax share under each generated positive."""
    inputs = _rows(outputs, batch, POSITIVE)  # a share needs a moment
    if inputs is None:
        return {}
    aug, positive, moment, mask = inputs
    # only the positive rows (each has a moment, so no row is all -inf: no NaN gradient)
    video = positive.nonzero()[:, 0]  # (N,)
    logits = (aug[positive] / config.rank_tau).masked_fill(~mask[video], float("-inf"))  # (N, T)
    log_share = torch.logsumexp(logits.masked_fill(~moment[video], float("-inf")), -1)
    log_share = log_share - torch.logsumexp(logits, -1)  # log p, (N,)
    gce = (1.0 - torch.exp(GCE_Q * log_share)) / GCE_Q
    return {"loss_corpus_positive": gce.mean()}


@register_loss("corpus_positive_per_clip", ("loss_corpus_positive",))
def loss_corpus_positive_per_clip(
    outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
) -> dict[str, Tensor]:
    """The first form: per-clip GCE of ``sigmoid(S)`` (see the module doc)."""
    inputs = _rows(outputs, batch, POSITIVE, need_moment=False)
    if inputs is None:
        return {}
    aug, positive, moment, mask = inputs
    gce = generalized_cross_entropy(aug, moment[:, None, :].expand_as(aug))  # (B, A, T)
    clips = mask[:, None, :].expand_as(aug).to(aug.dtype)
    per_query = (gce * clips).sum(-1) / clips.sum(-1).clamp(min=1.0)  # (B, A)
    return {"loss_corpus_positive": per_query[positive].mean()}
