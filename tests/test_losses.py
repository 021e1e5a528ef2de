"""Loss functions on hand-computed values, and the set criterion's weighting and bookkeeping."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import momentkit.modeling.losses as losses_module
from momentkit.modeling.criterion import LossConfig, SetCriterion
from momentkit.modeling.losses import (
    LOSSES,
    loss_labels,
    loss_labels_focal,
    loss_saliency_ce,
    loss_saliency_margin,
    loss_saliency_neg_pair,
    loss_saliency_rank_contrastive,
    loss_spans,
)
from momentkit.modeling.matcher import HungarianMatcher

CFG = LossConfig()


pytestmark = pytest.mark.usefixtures("one_thread")


ONE_MATCH = [(torch.tensor([1]), torch.tensor([0]))]  # query 1 <-> target 0


def test_loss_spans_hand_values() -> None:
    outputs = {"pred_spans": torch.tensor([[[0.1, 0.1], [0.5, 0.2], [0.9, 0.1]]])}
    batch = {"span_targets": [{"spans": torch.tensor([[0.6, 0.2]])}]}
    losses = loss_spans(outputs, batch, ONE_MATCH, CFG)
    # |0.5 - 0.6| and |0.2 - 0.2| averaged over the two coordinates
    assert losses["loss_span"].item() == pytest.approx(0.05)
    # [0.4, 0.6] vs [0.5, 0.7]: iou 1/3, hull = union -> giou 1/3
    assert losses["loss_giou"].item() == pytest.approx(2 / 3)


def test_loss_spans_without_matches_is_zero_and_differentiable() -> None:
    spans = torch.rand(1, 3, 2, requires_grad=True)
    batch = {"span_targets": [{"spans": torch.zeros(0, 2)}]}
    empty = [(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))]
    losses = loss_spans({"pred_spans": spans}, batch, empty, CFG)
    assert losses["loss_span"].item() == 0.0
    losses["loss_span"].backward()


def test_loss_labels_hand_values() -> None:
    outputs = {"pred_logits": torch.zeros(1, 3, 2)}
    loss = loss_labels(outputs, {}, ONE_MATCH, CFG)["loss_label"].item()
    # every query costs log 2; one foreground (weight 1) and two background (weight 0.1),
    # averaged over the 3 queries
    assert loss == pytest.approx(math.log(2) * (1 + 2 * 0.1) / 3)
    logits = torch.tensor([[[2.0, 0.0], [0.0, 3.0]]])
    loss = loss_labels({"pred_logits": logits}, {}, [(torch.tensor([0]), torch.tensor([0]))], CFG)
    expected = (-F.log_softmax(logits[0, 0], -1)[0] - 0.1 * F.log_softmax(logits[0, 1], -1)[1]) / 2
    assert loss["loss_label"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_loss_labels_focal() -> None:
    logits = torch.randn(2, 4, 2)
    idx = [(torch.tensor([0, 2]), torch.tensor([0, 1])), (torch.tensor([3]), torch.tensor([0]))]
    no_focus = LossConfig(focal_gamma=0.0)
    assert loss_labels_focal({"pred_logits": logits}, {}, idx, no_focus)["loss_label"].item() == (
        pytest.approx(loss_labels({"pred_logits": logits}, {}, idx, no_focus)["loss_label"].item())
    )
    # p_t = 0.5 everywhere: the focal factor is 0.25
    flat = torch.zeros(1, 3, 2)
    focal = loss_labels_focal({"pred_logits": flat}, {}, ONE_MATCH, CFG)["loss_label"].item()
    assert focal == pytest.approx(0.25 * math.log(2) * (1 + 2 * 0.1) / 3)


def test_loss_saliency_margin_hand_values() -> None:
    outputs = {"saliency_scores": torch.tensor([[1.0, 0.0, 0.5, 0.9]])}
    batch = {
        "saliency_pos_labels": torch.tensor([[0, 2]]),
        "saliency_neg_labels": torch.tensor([[1, 3]]),
    }
    loss = loss_saliency_margin(outputs, batch, [], CFG)["loss_saliency_margin"].item()
    # pairs (1.0, 0.0) -> max(0, 0.2 - 1) = 0; (0.5, 0.9) -> 0.2 + 0.4 = 0.6; mean 0.3, times 2
    assert loss == pytest.approx(0.6)
    assert loss_saliency_margin(outputs, {}, [], CFG) == {}


def rank_contrastive_loop(scores, scores_neg, labels, mask, tau, num_thresholds):
    """QD-DETR's loss as described in the paper: one InfoNCE per rank threshold, in a loop."""
    if scores_neg is not None:
        scores = torch.cat([scores, scores_neg], 1)
        labels = torch.cat([labels, torch.zeros_like(labels)], 1)
        mask = torch.cat([mask, mask], 1)
    scores = mask * scores + (1 - mask) * -1e3
    total = 0.0
    for k in range(1, num_thresholds + 1):
        positive = labels >= k
        if not positive.any():
            continue
        logits = scores / tau
        logits = logits - logits.max(1, keepdim=True).values
        log_prob = logits - torch.log(logits.exp().sum(1, keepdim=True) + 1e-6)
        per_video = (positive * log_prob * mask).sum(1) / (positive.sum(1) + 1e-6)
        total = total + (-per_video * (positive.sum(1) > 0)).mean()
    return total / (num_thresholds + 1)


def test_rank_contrastive_single_threshold_by_hand() -> None:
    scores = torch.tensor([[2.0, 1.0]])
    batch = {"saliency_all_labels": torch.tensor([[1.0, 0.0]]), "video_mask": torch.ones(1, 2)}
    cfg = LossConfig(rank_label_scale=1.0, rank_num_thresholds=1, rank_tau=0.5)
    loss = loss_saliency_rank_contrastive({"saliency_scores": scores}, batch, [], cfg)
    # clip 0 is the only positive: -log softmax([4, 2])[0], halved (K + 1 = 2)
    expected = math.log(1 + math.exp(-2)) / 2
    assert loss["loss_saliency_rank"].item() == pytest.approx(expected, rel=1e-4)


def test_rank_contrastive_matches_per_threshold_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    scores, neg = torch.randn(3, 6, generator=gen), torch.randn(3, 6, generator=gen)
    mask = torch.tensor([[1.0] * 6, [1.0] * 4 + [0.0] * 2, [1.0] * 5 + [0.0]])
    # annotator means of 3 annotators (multiples of 1/3), zero on padding
    labels = torch.randint(0, 13, (3, 6), generator=gen).float() / 3 * mask
    labels[2] = 0.0  # a video without any salient clip
    batch = {"saliency_all_labels": labels, "video_mask": mask.bool()}
    outputs = {"saliency_scores": scores, "saliency_scores_neg": neg}
    got = loss_saliency_rank_contrastive(outputs, batch, [], CFG)["loss_saliency_rank"]
    expected = rank_contrastive_loop(scores, neg, torch.round(labels * 3), mask, 0.5, 11)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # without negatives (evaluation mode) only the matched pair is used
    got = loss_saliency_rank_contrastive({"saliency_scores": scores}, batch, [], CFG)
    expected = rank_contrastive_loop(scores, None, torch.round(labels * 3), mask, 0.5, 11)
    assert got["loss_saliency_rank"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_neg_pair_loss_hand_values() -> None:
    outputs = {
        "saliency_scores_neg": torch.zeros(2, 3),
        "video_mask": torch.tensor([[1, 1, 0], [1, 1, 1]]),
    }
    loss = loss_saliency_neg_pair(outputs, {}, [], CFG)["loss_saliency_neg"].item()
    assert loss == pytest.approx((2 + 3) / 2 * math.log(2))  # -log(1 - sigmoid(0)) per valid clip
    big = {"saliency_scores_neg": torch.tensor([[100.0]]), "video_mask": torch.ones(1, 1)}
    assert loss_saliency_neg_pair(big, {}, [], CFG)["loss_saliency_neg"].item() == pytest.approx(
        100.0
    )
    assert loss_saliency_neg_pair({"saliency_scores": torch.zeros(1, 1)}, {}, [], CFG) == {}


def test_saliency_ce_hand_values() -> None:
    outputs = {"saliency_scores": torch.tensor([[0.0, 0.0, 5.0]])}
    batch = {
        "saliency_all_labels": torch.tensor([[2.0, 0.0, 1.0]]),
        "video_mask": torch.tensor([[1, 1, 0]]),
    }
    loss = loss_saliency_ce(outputs, batch, [], CFG)["loss_saliency_ce"].item()
    assert loss == pytest.approx(math.log(2))  # two valid clips at p = 0.5; the third is padding


# ------------------------------------------------------------------------------- criterion
def detr_outputs(
    batch_size: int = 2, queries: int = 4, clips: int = 6, aux_layers: int = 1
) -> dict:
    gen = torch.Generator().manual_seed(0)

    def layer() -> dict:
        return {
            "pred_logits": torch.randn(batch_size, queries, 2, generator=gen, requires_grad=True),
            "pred_spans": torch.rand(batch_size, queries, 2, generator=gen).requires_grad_(),
        }

    out = layer()
    out["aux_outputs"] = [layer() for _ in range(aux_layers)]
    out["saliency_scores"] = torch.randn(batch_size, clips, generator=gen, requires_grad=True)
    out["video_mask"] = torch.ones(batch_size, clips, dtype=torch.bool)
    return out


def detr_batch(batch_size: int = 2, clips: int = 6) -> dict:
    return {
        "span_targets": [
            {"spans": torch.tensor([[0.3, 0.2]])},
            {"spans": torch.tensor([[0.5, 0.1], [0.8, 0.2]])},
        ][:batch_size],
        "saliency_pos_labels": torch.tensor([[0, 1], [2, 3]])[:batch_size],
        "saliency_neg_labels": torch.tensor([[4, 5], [0, 1]])[:batch_size],
        "saliency_all_labels": torch.rand(batch_size, clips),
        "video_mask": torch.ones(batch_size, clips, dtype=torch.bool),
    }


def test_criterion_weights_terms_and_sums_them() -> None:
    outputs, batch = detr_outputs(), detr_batch()
    losses = SetCriterion()(outputs, batch)
    assert set(losses) == {
        "loss", "loss_span", "loss_giou", "loss_label", "loss_saliency_margin",
        "loss_span_0", "loss_giou_0", "loss_label_0",
    }  # fmt: skip
    total = sum(v for k, v in losses.items() if k != "loss")
    assert losses["loss"].item() == pytest.approx(total.item())
    # each term is the weighted loss of its own layer's matching
    matcher = HungarianMatcher()
    targets = [t["spans"] for t in batch["span_targets"]]
    aux = outputs["aux_outputs"][0]
    idx = matcher(aux["pred_logits"].detach(), aux["pred_spans"].detach(), targets)
    raw = loss_spans(aux, batch, idx, CFG)
    assert losses["loss_span_0"].item() == pytest.approx(10 * raw["loss_span"].item())
    idx = matcher(outputs["pred_logits"].detach(), outputs["pred_spans"].detach(), targets)
    assert losses["loss_label"].item() == pytest.approx(
        4 * loss_labels(outputs, batch, idx, CFG)["loss_label"].item()
    )
    losses["loss"].backward()
    assert outputs["aux_outputs"][0]["pred_spans"].grad is not None


def test_criterion_switches() -> None:
    outputs, batch = detr_outputs(), detr_batch()
    no_aux = SetCriterion(LossConfig(aux_loss=False))(outputs, batch)
    assert not any(k.endswith("_0") for k in no_aux)
    weights = {**LossConfig().weights, "loss_giou": 0.0}
    assert "loss_giou" not in SetCriterion(LossConfig(weights=weights))(outputs, batch)
    # highlight-only batches (no span targets) skip matching-based losses
    batch.pop("span_targets")
    assert set(SetCriterion()(outputs, batch)) == {"loss", "loss_saliency_margin"}
    qd = LossConfig(
        losses=["spans", "labels", "saliency_margin", "saliency_rank_contrastive", "saliency_ce"]
    )
    assert {"loss_saliency_rank", "loss_saliency_ce"} <= set(SetCriterion(qd)(outputs, batch))
    with pytest.raises(ValueError, match="no loss could be computed"):
        SetCriterion()(outputs, {"video_mask": batch["video_mask"]})


def test_criterion_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="loss.losses: unknown loss 'spanz'"):
        SetCriterion(LossConfig(losses=["spanz"]))
    with pytest.raises(ValueError, match="loss.weights: unknown loss term"):
        SetCriterion(LossConfig(weights={**LossConfig().weights, "loss_typo": 1.0}))
    with pytest.raises(ValueError, match="no weight for"):
        SetCriterion(LossConfig(weights={"loss_span": 1.0}))
    with pytest.raises(ValueError, match="loss.rank_tau"):
        LossConfig(rank_tau=0.0).validate()


def test_registry_lists_every_loss() -> None:
    # models register their own losses from their modules; the shared ones are exactly these
    shared = {n for n in LOSSES.names() if LOSSES.get(n).fn.__module__ == losses_module.__name__}
    assert shared == {
        "spans", "labels", "labels_focal", "saliency_margin",
        "saliency_rank_contrastive", "saliency_neg_pair", "saliency_ce",
    }  # fmt: skip
