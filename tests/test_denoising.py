"""Contrastive denoising queries, attention masks and losses (momentkit.modeling.denoising)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from momentkit.modeling.criterion import LossConfig, SetCriterion
from momentkit.modeling.denoising import (
    NEGATIVE,
    POSITIVE,
    DenoisingConfig,
    build_denoising_queries,
    denoising_attn_mask,
    denoising_loss,
    sigmoid_focal_loss,
)
from momentkit.structures.spans import span_cxw_to_xx


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"spans": torch.tensor([[0.5, 0.2], [0.3, 0.1]])},
        {"spans": torch.tensor([[0.6, 0.4]])},
        {"spans": torch.zeros(0, 2)},
    ]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_layout_positives_then_negatives_per_group() -> None:
    dn = build_denoising_queries(_targets(), DenoisingConfig(num_groups=3), 5, _gen())
    assert dn.spans.shape == (3, 3 * 2 * 2, 2) and dn.num_denoising == 12
    assert dn.max_targets == 2 and dn.num_groups == 3
    group = torch.tensor([POSITIVE, POSITIVE, NEGATIVE, NEGATIVE])
    assert torch.equal(dn.labels, group.repeat(3).expand(3, -1))
    assert torch.equal(dn.valid[0], torch.ones(12, dtype=torch.bool))
    assert torch.equal(dn.valid[1], torch.tensor([True, False] * 6))
    assert not dn.valid[2].any()
    assert torch.equal(dn.group_targets[0], torch.tensor([0, 1] * 6))
    assert torch.equal(dn.group_targets[1], torch.tensor([0, -1] * 6))
    # clean targets follow group_targets; invalid slots hold zeros
    assert torch.allclose(dn.target_spans[0, 1], torch.tensor([0.3, 0.1]))
    assert torch.allclose(dn.target_spans[1, 2], torch.tensor([0.6, 0.4]))
    assert (dn.spans[~dn.valid] == 0).all()
    assert (dn.input_labels == POSITIVE).all()


def test_noise_magnitudes_positive_below_negative() -> None:
    """Positives move each edge by < lambda*w/2, negatives by [lambda*w/2, lambda*w)."""
    lam, w = 0.5, 0.2
    targets = [{"spans": torch.tensor([[0.5, w]])}] * 4
    dn = build_denoising_queries(targets, DenoisingConfig(num_groups=50, span_noise=lam), 1, _gen())
    shift = (span_cxw_to_xx(dn.spans) - span_cxw_to_xx(dn.target_spans)).abs()  # (B, D, 2)
    pos, neg = shift[dn.labels == POSITIVE], shift[dn.labels == NEGATIVE]
    unit = lam * w / 2
    assert pos.max() < unit + 1e-6 and neg.min() >= unit - 1e-6 and neg.max() < 2 * unit + 1e-6
    assert pos.mean() < neg.mean()
    # both directions occur
    signed = span_cxw_to_xx(dn.spans) - span_cxw_to_xx(dn.target_spans)
    assert (signed > 0).any() and (signed < 0).any()


def test_noised_spans_stay_in_unit_interval() -> None:
    targets = [{"spans": torch.tensor([[0.02, 0.04], [0.97, 0.06]])}]
    cfg = DenoisingConfig(num_groups=20, span_noise=1.0)
    xx = span_cxw_to_xx(build_denoising_queries(targets, cfg, 2, _gen()).spans)
    assert xx.min() >= -1e-6 and xx.max() <= 1 + 1e-6
    assert (xx[..., 1] >= xx[..., 0]).all()


def test_deterministic_for_a_seed() -> None:
    cfg = DenoisingConfig(num_groups=4, label_noise=0.5)
    a = build_denoising_queries(_targets(), cfg, 3, _gen(7))
    b = build_denoising_queries(_targets(), cfg, 3, _gen(7))
    c = build_denoising_queries(_targets(), cfg, 3, _gen(8))
    assert torch.equal(a.spans, b.spans) and torch.equal(a.input_labels, b.input_labels)
    assert not torch.equal(a.spans, c.spans)


def test_label_noise_replaces_input_labels_only() -> None:
    dn = build_denoising_queries(_targets(), DenoisingConfig(10, 0.5, 1.0), 2, _gen())
    assert set(dn.input_labels.unique().tolist()) == {0, 1}
    # the labels to *predict* are not noised
    assert torch.equal(dn.labels[:, :4], torch.tensor([0, 0, 1, 1]).expand(3, -1))


def test_attn_mask_by_hand() -> None:
    """2 groups of size 2, 2 matching queries (True = blocked)."""
    expected = torch.tensor(
        [
            [0, 0, 1, 1, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(denoising_attn_mask(2, 2, 2), expected)
    dn = build_denoising_queries([{"spans": torch.tensor([[0.5, 0.2]])}], DenoisingConfig(2), 2)
    assert torch.equal(dn.attn_mask, expected)


def test_attn_mask_blocks_information_flow_between_groups() -> None:
    """Under the mask, changing group 1 changes neither group 0 nor the matching queries."""
    g, size, q, dim = 3, 4, 5, 8
    mask = denoising_attn_mask(g, size, q)
    x = torch.randn(1, g * size + q, dim)

    def attend(x: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(x, x, x, attn_mask=~mask)

    y = x.clone()
    y[:, size : 2 * size] += torch.randn(1, size, dim)  # perturb group 1
    out_x, out_y = attend(x), attend(y)
    changed = (out_x - out_y).abs().amax(-1)[0] > 1e-6
    assert changed[size : 2 * size].all()
    assert not changed[:size].any() and not changed[2 * size :].any()
    # denoising queries do see the matching queries
    z = x.clone()
    z[:, g * size :] += 1.0
    assert ((attend(z) - out_x).abs().amax(-1)[0, : g * size] > 1e-6).all()


def test_no_targets_gives_empty_denoising() -> None:
    dn = build_denoising_queries([{"spans": torch.zeros(0, 2)}] * 2, DenoisingConfig(), 4)
    assert dn.num_denoising == 0 and dn.spans.shape == (2, 0, 2)
    assert dn.attn_mask.shape == (4, 4) and not dn.attn_mask.any()
    assert dn.key_mask(4).shape == (2, 4)


def test_split_and_key_mask() -> None:
    dn = build_denoising_queries(_targets(), DenoisingConfig(num_groups=2), 3, _gen())
    hs = torch.randn(2, 3, 8 + 3, 4)
    a, b = dn.split(hs)
    assert a.shape == (2, 3, 8, 4) and b.shape == (2, 3, 3, 4)
    assert torch.equal(dn.key_mask(3)[1], torch.tensor([True, False] * 4 + [True] * 3))


def test_focal_loss_by_hand() -> None:
    logit, alpha, gamma = torch.tensor([0.3]), 0.25, 2.0
    p = 1 / (1 + math.exp(-0.3))
    on = sigmoid_focal_loss(logit, torch.tensor([1.0]), alpha, gamma)
    off = sigmoid_focal_loss(logit, torch.tensor([0.0]), alpha, gamma)
    assert on.item() == pytest.approx(alpha * (1 - p) ** 2 * -math.log(p), rel=1e-5)
    assert off.item() == pytest.approx((1 - alpha) * p**2 * -math.log(1 - p), rel=1e-5)


def test_denoising_loss_values() -> None:
    dn = build_denoising_queries(_targets(), DenoisingConfig(num_groups=2), 3, _gen())
    logits = torch.zeros(3, 8, 2, requires_grad=True)
    perfect = denoising_loss(logits, dn.target_spans, dn)
    assert perfect["loss_dn_span"].item() == 0 and perfect["loss_dn_giou"].item() < 1e-6
    # logits 0: p = 0.5 for both classes; per query alpha*.25*ln2 + (1-alpha)*.25*ln2
    assert perfect["loss_dn_label"].item() == pytest.approx(0.25 * math.log(2), rel=1e-5)
    # a wrong span on a positive counts, on a negative it does not; normalised by 12 valid
    spans = dn.target_spans.clone()
    spans[0, 0] += torch.tensor([0.1, 0.0])  # positive of video 0
    spans[0, 2] += torch.tensor([0.1, 0.0])  # negative of video 0
    assert denoising_loss(logits, spans, dn)["loss_dn_span"].item() == pytest.approx(0.1 / 12)
    # the label loss rewards foreground on positives and background on negatives
    good = torch.where(dn.labels[..., None] == torch.arange(2), 5.0, -5.0)
    bad = -good
    assert (
        denoising_loss(good, dn.target_spans, dn)["loss_dn_label"]
        < denoising_loss(bad, dn.target_spans, dn)["loss_dn_label"]
    )
    perfect["loss_dn_label"].backward()
    assert logits.grad is not None and logits.grad[2].abs().sum() == 0  # invalid video


def test_registered_loss_per_layer_and_skipped_without_outputs() -> None:
    dn = build_denoising_queries(_targets(), DenoisingConfig(num_groups=2), 3, _gen())
    weights = {"loss_dn_span": 1.0, "loss_dn_giou": 1.0, "loss_dn_label": 1.0}
    crit = SetCriterion(LossConfig(losses=["denoising"], weights=weights))
    layer = {"dn_pred_logits": torch.zeros(3, 8, 2), "dn_pred_spans": dn.target_spans}
    outputs = {
        "pred_logits": torch.zeros(3, 3, 2),
        "pred_spans": torch.full((3, 3, 2), 0.5),
        **layer,
        "dn_queries": dn,
        "aux_outputs": [{**layer, "dn_queries": dn, "pred_logits": torch.zeros(3, 3, 2)}],
    }
    losses = crit(outputs, {"span_targets": _targets()})
    assert {"loss_dn_label", "loss_dn_label_0", "loss_dn_span_0"} <= set(losses)
    with pytest.raises(ValueError, match="no loss could be computed"):
        crit({"pred_logits": torch.zeros(3, 3, 2)}, {"span_targets": _targets()})


def test_config_validation_names_field() -> None:
    with pytest.raises(ValueError, match="denoising.num_groups"):
        DenoisingConfig(num_groups=0).validate()
    with pytest.raises(ValueError, match="model.denoising.label_noise"):
        DenoisingConfig(label_noise=2.0).validate("model.denoising.")
