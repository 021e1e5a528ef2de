"""SG-DETR: each component against its equation on hand-made numbers, then the whole model."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_configs import TINY_DETR

from momentkit.modeling.atss_head import (
    ATSSHead,
    ATSSOutputs,
    atss_assign,
    atss_predictions,
    centerness_target,
    loss_atss,
    make_points,
    positive_anchor_queries,
    temporal_pyramid,
)
from momentkit.modeling.attention import MultiheadAttention, scaled_dot_attention
from momentkit.modeling.criterion import LossConfig
from momentkit.modeling.denoising import DenoisingConfig, build_denoising_queries
from momentkit.modeling.dino_decoder import DINODecoder
from momentkit.modeling.iou_head import (
    iou_aware_logits,
    localization_score,
    loss_iou_head,
    matched_iou_targets,
    score_to_logits,
)
from momentkit.modeling.query_selection import QuerySelection, top_k_wrapped
from momentkit.modeling.saliency_guided import (
    CrossModalEncoder,
    LocalSaliency,
    PoolingEncoder,
    SaliencyAmplifier,
)
from momentkit.modeling.wbf import weighted_boxes_fusion_1d
from momentkit.models import MomentModel, build_model
from momentkit.models.sg_detr import (
    SGDETR,
    SGDETRConfig,
    SGDETRCriterion,
    clips_in_spans,
    query_group_mask,
    same_video_as_next,
)
from momentkit.structures.spans import span_cxw_to_xx, span_xx_to_cxw
from momentkit.training.config import build_config

TINY = dict(
    **TINY_DETR,
    enc_layers=1,
    dec_layers=2,
    t2v_layers=1,
    pooling_layers=1,
    pyramid_levels=2,
    anchor_sizes=[2.0, 4.0],
    proposal_widths=[0.1, 0.3],
    atss_topk=3,
    atss_convs=1,
)


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------ 3.2 local saliency
def test_local_saliency_is_scaled_shifted_cosine() -> None:
    clips = torch.tensor([[[3.0, 4.0], [0.0, 2.0], [-1.0, 0.0]]])
    sentence = torch.tensor([[2.0, 0.0]])
    head = LocalSaliency()  # paper-code initial values: scale 20, shift 0
    assert torch.allclose(head(clips, sentence), torch.tensor([[12.0, 0.0, -20.0]]))
    head = LocalSaliency(init_scale=2.0, init_shift=-1.0)
    assert torch.allclose(head(clips, sentence), torch.tensor([[0.2, -1.0, -3.0]]))
    assert {n for n, _ in head.named_parameters()} == {"scale", "shift"}


def test_pooling_encoder_ignores_masked_tokens() -> None:
    torch.manual_seed(0)
    pool = PoolingEncoder(8, 2, num_layers=2, dim_feedforward=16, dropout=0.0).eval()
    x = torch.randn(2, 5, 8)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    noisy = x.clone()
    noisy[1, 2:] = 100.0
    out = pool(x, mask)
    assert out.shape == (2, 8)
    assert torch.allclose(out, pool(noisy, mask), atol=1e-6)
    assert not torch.allclose(pool(noisy, torch.ones_like(mask))[1], out[1], atol=1e-3)


# ------------------------------------------------------------------------------ 3.3 SGCA
def test_sgca_scales_each_clips_attention_weights() -> None:
    torch.manual_seed(0)
    sgca = MultiheadAttention(8, 2).eval()  # SGCA: the shared attention with a gate
    q, kv = torch.randn(2, 3, 8), torch.randn(2, 4, 8)
    key_mask = torch.tensor([[True] * 4, [True, True, True, False]])
    gate = torch.tensor([[1.0, 0.5, 0.0], [0.25, 1.0, 0.1]])
    bias = sgca.out_proj.bias
    plain = sgca(q, kv, kv, key_mask)
    expected = bias + gate[..., None] * (plain - bias)
    assert torch.allclose(sgca(q, kv, kv, key_mask, gate), expected, atol=1e-6)
    assert torch.allclose(sgca(q, kv, kv, key_mask, torch.ones(2, 3)), plain)
    # a clip with saliency 0 takes nothing from the words: only the output bias
    assert torch.allclose(sgca(q, kv, kv, key_mask, gate)[0, 2], bias)


def test_sgca_irrelevant_clips_draw_less_from_the_text() -> None:
    torch.manual_seed(0)
    enc = CrossModalEncoder(8, 2, num_layers=2, dim_feedforward=16, dropout=0.0).eval()
    clips, words = torch.randn(1, 3, 8), torch.randn(1, 4, 8)
    other_words = torch.randn(1, 4, 8)
    gate = torch.sigmoid(torch.tensor([[6.0, 0.0, -30.0]]))  # salient, unsure, irrelevant
    a, b = enc(clips, words, gate=gate), enc(clips, other_words, gate=gate)
    change = (a - b).norm(dim=-1)[0]
    assert change[0] > change[1] > change[2]
    assert change[2] < 1e-6  # sigmoid(-30) ~ 1e-13: the irrelevant clip ignores the query
    plain = enc(clips, words) - enc(clips, other_words)
    assert plain.norm(dim=-1)[0, 2] > 1e-2  # without the gate every clip reads the words


# -------------------------------------------------------------------------- 3.4 amplifier
def test_saliency_amplifier_formula() -> None:
    x = torch.tensor([[[1.0, -2.0], [3.0, 0.5]]])
    s = torch.tensor([[0.0, math.log(3.0)]])  # sigmoid: 0.5, 0.75
    out = SaliencyAmplifier()(x, s)
    assert torch.allclose(out, torch.tensor([[[1.5, -3.0], [5.25, 0.875]]]))


# ------------------------------------------------------------------------------------ WBF
def test_wbf_hand_made_spans() -> None:
    detr = (torch.tensor([[0.10, 0.30], [0.60, 0.90]]), torch.tensor([0.9, 0.5]))
    atss = (torch.tensor([[0.12, 0.32], [0.61, 0.70]]), torch.tensor([0.6, 0.01]))
    spans, scores = weighted_boxes_fusion_1d(
        [detr[0], atss[0]], [detr[1], atss[1]], weights=[2.0, 1.0], skip_threshold=0.05
    )
    # weighted scores: 1.8, 1.0, 0.6 (0.01 is skipped). [0.12, 0.32] overlaps [0.1, 0.3] with
    # IoU 0.18 / 0.22 > 0.55: fused = (1.8 * [.1, .3] + .6 * [.12, .32]) / 2.4 = [.105, .305],
    # score = mean(1.8, .6) * min(2, 2) / 3 = 0.8; [.6, .9] alone: 1.0 * min(2, 1) / 3.
    assert torch.allclose(spans, torch.tensor([[0.105, 0.305], [0.6, 0.9]]), atol=1e-6)
    assert torch.allclose(scores, torch.tensor([0.8, 1.0 / 3.0]), atol=1e-6)


def test_wbf_compares_with_the_current_fused_span_and_needs_iou_above_threshold() -> None:
    spans = [torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 0.55]]), torch.tensor([[0.45, 1.0]])]
    scores = [torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([0.5])]
    fused, s = weighted_boxes_fusion_1d(spans, scores, iou_threshold=0.5)
    # [0, .55] joins [0, 1] (IoU .55): fused [0, .775]; [.45, 1] vs [0, .775]: IoU .325/1 -> new
    assert torch.allclose(fused, torch.tensor([[0.0, 0.775], [0.45, 1.0]]))
    assert torch.allclose(s, torch.tensor([1.0 * 2 / 3, 0.5 / 3]))
    empty, none = weighted_boxes_fusion_1d([torch.zeros(0, 2)], [torch.zeros(0)])
    assert empty.shape == (0, 2) and none.shape == (0,)
    with pytest.raises(ValueError, match="one per source"):
        weighted_boxes_fusion_1d(spans, scores, weights=[1.0])


# ----------------------------------------------------------------------------------- ATSS
def test_pyramid_and_points() -> None:
    feats = torch.arange(12.0).view(1, 6, 2)
    mask = torch.tensor([[True] * 5 + [False]])
    levels, masks = temporal_pyramid(feats + 100.0 * ~mask[..., None], mask, 2)
    assert torch.equal(levels[0][0, 5], torch.zeros(2))  # padding zeroed
    # level 1 pools clips (0, 1), (2, 3), (4, [padding]): the padded clip never wins the max
    assert torch.equal(levels[1][0], torch.tensor([[2.0, 3.0], [6.0, 7.0], [8.0, 9.0]]))
    assert masks[1].tolist() == [[True, True, True]]
    pts = make_points(masks, mask.sum(1), [2.0, 4.0])
    assert pts.level_sizes == [6, 3]
    expected = [0.1, 0.3, 0.5, 0.7, 0.9, 1.0, 0.2, 0.6, 0.9]  # last level-1 point: clip 4 only
    assert torch.allclose(pts.centers[0], torch.tensor(expected))
    assert torch.allclose(pts.widths[0], torch.tensor([0.4] * 6 + [0.8] * 3))
    assert torch.allclose(pts.strides[0], torch.tensor([0.2] * 6 + [0.4] * 3))
    assert pts.valid[0].tolist() == [True] * 5 + [False] + [True] * 3


def _one_level(num_clips: int, anchor: float):
    mask = torch.ones(1, num_clips, dtype=torch.bool)
    _, masks = temporal_pyramid(torch.zeros(1, num_clips, 1), mask, 1)
    return make_points(masks, mask.sum(1), [anchor])


def test_atss_adaptive_positive_selection_by_hand() -> None:
    pts = _one_level(10, 2.0)  # centres .05, .15, ..., .95; anchors .2 wide
    target = span_xx_to_cxw(torch.tensor([[0.3, 0.6]]))
    a = atss_assign(pts, [target], topk=3)
    # candidates: the 3 centres nearest .45 -> clips 3, 4, 5 with anchor IoUs 3/7, 2/3, 3/7;
    # threshold mean + std (unbiased) = 0.508 + 0.137 = 0.645 -> only clip 4 is positive
    ious = torch.tensor([3 / 7, 2 / 3, 3 / 7])
    assert (ious.mean() + ious.std()).item() == pytest.approx(0.6454, abs=1e-3)
    assert a.positive[0].nonzero().flatten().tolist() == [4]
    assert torch.allclose(a.target_spans[0, 4], torch.tensor([0.3, 0.6]))
    assert a.centerness[0, 4].item() == pytest.approx(1.0)
    assert a.anchor_iou[0, 4].item() == pytest.approx(2 / 3)
    assert a.target_index[0].tolist() == [-1] * 4 + [0] + [-1] * 5


def test_atss_threshold_is_capped_on_an_iou_plateau() -> None:
    # span [.2, .8]: the anchors of clips 3-6 lie inside it, all with IoU .2 / .6 = 1/3; the 9
    # candidates (clips 0-8 or 1-9) have mean + std = 0.349 > 1/3, which would leave no
    # positive: the threshold is capped at the best candidate IoU, so all four are positive
    a = atss_assign(_one_level(10, 2.0), [span_xx_to_cxw(torch.tensor([[0.2, 0.8]]))], topk=9)
    assert a.positive[0].nonzero().flatten().tolist() == [3, 4, 5, 6]
    expected = centerness_target(torch.tensor([0.35, 0.45, 0.55, 0.65]), torch.tensor([0.2, 0.8]))
    assert torch.allclose(a.centerness[0, 3:7], expected)
    assert torch.allclose(
        expected, torch.tensor([(0.15 / 0.45) ** 0.5, (0.25 / 0.35) ** 0.5] * 2)[[0, 1, 1, 0]]
    )


def test_atss_conflicts_go_to_the_higher_iou_and_invalid_points_are_never_positive() -> None:
    pts = _one_level(10, 4.0)  # anchors .4 wide
    gt = torch.tensor([[0.2, 0.6], [0.25, 0.65]])
    a = atss_assign(pts, [span_xx_to_cxw(gt)], topk=2)
    # span 0 (centre .4): candidates clips 3, 4, both with anchor IoU 7/9 -> both positive;
    # span 1 (centre .45): clip 4 (IoU 1) and clip 3 or 5 (IoU .6): threshold min(1.08, 1) -> 4.
    # clip 4 is positive for both spans and takes span 1, whose IoU is higher
    assert a.positive[0].nonzero().flatten().tolist() == [3, 4]
    assert a.target_index[0, [3, 4]].tolist() == [0, 1]
    assert torch.allclose(a.anchor_iou[0, [3, 4]], torch.tensor([7 / 9, 1.0]))
    masks = [torch.arange(10)[None].expand(2, -1) < 4]  # clips 4.. are padding
    few = make_points(masks, torch.tensor([10, 10]), [4.0])
    a = atss_assign(few, [span_xx_to_cxw(gt), torch.zeros(0, 2)], topk=2)
    assert not a.positive[:, 4:].any() and not a.positive[1].any()
    assert a.positive[0].nonzero().flatten().tolist() == [3]


def test_centerness_target() -> None:
    spans = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.2, 0.3]])
    assert torch.allclose(
        centerness_target(torch.tensor([0.5, 0.1, 0.29]), spans),
        torch.tensor([1.0, math.sqrt(0.1 / 0.9), math.sqrt(0.01 / 0.09)]),
    )


def test_atss_head_loss_and_predictions() -> None:
    torch.manual_seed(0)
    mask = torch.tensor([[True] * 8, [True] * 6 + [False] * 2])
    feats, masks = temporal_pyramid(torch.randn(2, 8, 16), mask, 2)
    pts = make_points(masks, mask.sum(1), [2.0, 4.0])
    head = ATSSHead(16, num_convs=1, num_levels=2)
    cls, dist, ctr = head(feats, masks, pts)
    assert cls.shape == (2, 12) and dist.shape == (2, 12, 2) and (dist > 0).all()
    # the classifier starts at the prior foreground probability 0.01
    assert torch.allclose(cls.sigmoid(), torch.full_like(cls, 0.01), atol=3e-3)
    targets = [span_xx_to_cxw(torch.tensor([[0.25, 0.75]])), torch.zeros(0, 2)]
    out = ATSSOutputs(cls, dist, ctr, pts, atss_assign(pts, targets, 3))
    losses = loss_atss({"atss": out}, {}, [], LossConfig())
    assert set(losses) == {
        "loss_atss_label",
        "loss_atss_giou",
        "loss_atss_span",
        "loss_atss_centerness",
    }
    sum(losses.values()).backward()
    assert head.scales.grad is not None
    assert loss_atss({"atss": ATSSOutputs(cls, dist, ctr, pts)}, {}, [], LossConfig()) == {}
    preds = atss_predictions(out, score_threshold=0.0, top_n=3)
    assert len(preds) == 2 and len(preds[0][0]) <= 3
    assert (preds[1][0] <= 1.0).all() and (preds[0][1][:-1] >= preds[0][1][1:]).all()
    assert len(atss_predictions(out, score_threshold=0.99)[0][0]) == 0
    q = positive_anchor_queries(pts, out.assignment, max_per_video=2)
    assert q.valid[1].sum() == 0 and 1 <= q.valid[0].sum() <= 2
    assert torch.allclose(q.targets[0, q.valid[0]], targets[0].expand(int(q.valid[0].sum()), 2))


# ---------------------------------------------------------------------- query selection
def test_top_k_wraps_around_short_videos() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.3, 0.8, 0.9, 0.0]])
    valid = torch.tensor([[True] * 4, [True, True, False, False]])
    idx = top_k_wrapped(scores, valid, 5)
    assert idx.tolist() == [[1, 3, 2, 0, 1], [1, 0, 1, 0, 1]]


def test_query_selection_anchors_are_the_best_proposals() -> None:
    torch.manual_seed(0)
    qs = QuerySelection(8, num_queries=2, default_widths=[0.1, 0.4])
    memory = torch.randn(1, 6, 8)
    centers = torch.tensor([[0.1, 0.3, 0.5, 0.7, 0.25, 0.75]])
    sel = qs(memory, torch.ones(1, 6, dtype=torch.bool), centers, [4, 2])
    fg = qs.class_embed(qs.transform(memory)).softmax(-1)[0, :, 0]
    assert sel.index[0].tolist() == fg.argsort(descending=True)[:2].tolist()
    # the span head starts at zero: the anchors are the default proposals of the positions
    expected = torch.stack(
        [centers[0, sel.index[0]], torch.tensor([0.1, 0.1, 0.1, 0.1, 0.4, 0.4])[sel.index[0]]], -1
    )
    assert torch.allclose(sel.anchors.sigmoid()[0], expected, atol=1e-5)
    assert not sel.anchors.requires_grad and sel.enc_spans.requires_grad


# ------------------------------------------------------------------------------ IoU head
def test_iou_targets_loss_and_scores() -> None:
    pred = span_xx_to_cxw(torch.tensor([[[0.0, 0.4], [0.5, 1.0], [0.2, 0.3]]]))
    tgt = [span_xx_to_cxw(torch.tensor([[0.1, 0.5], [0.5, 0.9]]))]
    indices = [(torch.tensor([0, 1]), torch.tensor([0, 1]))]
    (b, q), iou = matched_iou_targets(pred, indices, tgt)
    assert q.tolist() == [0, 1] and torch.allclose(iou, torch.tensor([0.3 / 0.5, 0.8]))
    logits = torch.tensor([[0.3, -1.0, 2.0]], requires_grad=True)
    out = loss_iou_head(
        {"pred_iou": logits, "pred_spans": pred},
        {"span_targets": [{"spans": tgt[0]}]},
        indices,
        LossConfig(),
    )
    expected = F.binary_cross_entropy_with_logits(logits[0, :2], torch.tensor([0.6, 0.8]))
    assert torch.allclose(out["loss_iou"], expected)
    assert loss_iou_head({"pred_spans": pred}, {}, indices, LossConfig()) == {}
    # localisation score sqrt(p * u) and logits whose softmax gives it
    class_logits = torch.tensor([[math.log(0.64 / 0.36), 0.0]])
    iou_logit = torch.tensor([math.log(0.25 / 0.75)])
    assert localization_score(class_logits, iou_logit, 0.5).item() == pytest.approx(0.4)
    assert localization_score(class_logits, None, 0.5).item() == pytest.approx(0.64)
    assert iou_aware_logits(class_logits, iou_logit, 0.5).softmax(-1)[0, 0].item() == pytest.approx(
        0.4
    )
    assert score_to_logits(torch.tensor([0.0])).softmax(-1)[0, 0] > 0.999


def test_iou_aware_matching_prefers_the_query_with_higher_predicted_iou() -> None:
    # two queries at equal distance from the target; query 0 is more confident, query 1
    # predicts a much higher IoU: plain matching picks 0, IoU-aware matching picks 1
    layer = {
        "pred_logits": torch.tensor([[[2.0, 0.0], [1.0, 0.0]]]),
        "pred_spans": torch.tensor([[[0.45, 0.2], [0.55, 0.2]]]),
        "pred_iou": torch.tensor([[-6.0, 6.0]]),
    }
    targets = [torch.tensor([[0.5, 0.2]])]
    cfg = LossConfig(losses=["spans"])
    plain = SGDETRCriterion(cfg, iou_alpha=None).match([(None, layer)], targets)
    aware = SGDETRCriterion(cfg, iou_alpha=0.5).match([(None, layer)], targets)
    assert plain[0][0][0].tolist() == [0] and aware[0][0][0].tolist() == [1]


# ------------------------------------------------------------------ denoising / groups
def test_query_group_mask_isolates_groups() -> None:
    targets = [
        {"spans": torch.tensor([[0.5, 0.2]])},
        {"spans": torch.tensor([[0.3, 0.1], [0.7, 0.2]])},
    ]
    dn = build_denoising_queries(
        targets, DenoisingConfig(num_groups=2), 3, torch.Generator().manual_seed(0)
    )
    assert dn.num_denoising == 8  # 2 groups x (positive, negative) x 2 slots
    pts = _one_level(10, 2.0)
    pos_assign = atss_assign(pts, [targets[0]["spans"]], 3)
    pos = positive_anchor_queries(pts, pos_assign, 4)
    pos.valid = pos.valid.expand(2, -1).clone()
    pos.valid[1] = False
    allowed = query_group_mask(dn, pos, 3, 2)
    d, p = 8, pos.num_queries
    size = d + p + 3
    assert allowed.shape == (2, size, size)
    a = allowed[1]
    match, posq = slice(d + p, size), slice(d, d + p)
    assert a[match, match].all() and not a[match, :d].any() and not a[match, posq].any()
    assert a[:4, :4].all() and not a[:4, 4:8].any()  # group 0 (video 1 has both targets)
    assert a[:4, match].all() and not a[:8, posq].any()
    assert torch.equal(a[posq, posq], torch.eye(p, dtype=torch.bool))  # invalid: only itself
    v0 = allowed[0]  # video 0 has one target: its slot-1 queries are invalid keys
    assert not v0[0, 1] and v0[0, 0] and v0[1, 1]
    assert query_group_mask(None, None, 3, 2) is None


def test_masked_decoder_groups_cannot_see_each_other() -> None:
    torch.manual_seed(0)
    dec = DINODecoder(16, 2, 2, 32, dropout=0.0).eval()
    memory, pos = torch.randn(1, 6, 16), torch.randn(1, 6, 16)
    anchors, tgt = torch.randn(1, 5, 2), torch.randn(1, 5, 16)
    allowed = torch.ones(5, 5, dtype=torch.bool)
    allowed[:3, 3:] = False  # queries 0-2 do not see 3-4
    hs, refs = dec(memory, anchors, pos, None, tgt, allowed)
    assert hs.shape == (2, 1, 5, 16) and refs.shape == (2, 1, 5, 2)
    tgt2, anchors2 = tgt.clone(), anchors.clone()
    tgt2[:, 3:] += 5.0
    anchors2[:, 3:] -= 1.0
    hs2, _ = dec(memory, anchors2, pos, None, tgt2, allowed)
    assert torch.allclose(hs[:, :, :3], hs2[:, :, :3], atol=1e-5)
    assert not torch.allclose(hs[:, :, 3:], hs2[:, :, 3:], atol=1e-3)
    full, _ = dec(memory, anchors2, pos, None, tgt2, None)
    assert not torch.allclose(full[:, :, :3], hs[:, :, :3], atol=1e-3)


def test_masked_attention_matches_manual_softmax() -> None:
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 5)
    allowed = torch.tensor([[True, False, True], [False, True, False], [True, True, True]])
    scores = (q @ k.transpose(-1, -2) / 2.0).masked_fill(~allowed, float("-inf"))
    expected = scores.softmax(-1) @ v
    assert torch.allclose(scaled_dot_attention(q, k, v, allowed=allowed), expected, atol=1e-6)
    torch.manual_seed(0)
    dropped = scaled_dot_attention(q, k, v, dropout=0.5, training=True, allowed=allowed[None])
    assert dropped.shape == expected.shape and not torch.allclose(dropped, expected)


# ------------------------------------------------------------------------- model helpers
def test_clips_in_spans_and_fake_negatives() -> None:
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    inside = clips_in_spans(mask, [torch.tensor([[0.5, 0.5]]), torch.tensor([[0.25, 0.5]])])
    assert inside.tolist() == [[False, True, True, False], [True, False, False, False]]
    same = same_video_as_next(["a", "a", "b"], 3, torch.device("cpu"))
    assert same.tolist() == [True, False, False]
    assert same_video_as_next(None, 2, torch.device("cpu")).tolist() == [False, False]


# ---------------------------------------------------------------------------- the model
def test_defaults_follow_the_paper() -> None:
    cfg = SGDETRConfig()
    assert (cfg.hidden_dim, cfg.num_queries, cfg.t2v_layers, cfg.enc_layers) == (256, 25, 2, 3)
    assert (cfg.dec_layers, cfg.pooling_layers, cfg.dropout, cfg.input_dropout) == (3, 2, 0.1, 0.5)
    assert cfg.sgca and cfg.global_saliency and cfg.iou_scoring and cfg.hybrid_head
    qvh = build_config("sg_detr", "qvhighlights")
    assert (qvh.optim.lr, qvh.optim.weight_decay, qvh.trainer.batch_size) == (5e-4, 0.1, 128)
    assert (qvh.trainer.epochs, qvh.optim.milestones, qvh.optim.gamma) == (150, [100, 125], 0.5)
    cha = build_config("sg_detr", "charades_sta")
    assert (cha.trainer.epochs, cha.trainer.batch_size, cha.data.clip_len) == (100, 64, 1.0)
    tacos = build_config("sg_detr", "tacos")
    assert (tacos.trainer.epochs, tacos.trainer.batch_size) == (120, 32)
    assert build_config("sg_detr", "synth").model.name == "sg_detr"
    with pytest.raises(ValueError, match="anchor_sizes"):
        SGDETRConfig(**{**TINY, "anchor_sizes": [2.0]}).validate()
    with pytest.raises(ValueError, match="wbf_weights"):
        SGDETRConfig(wbf_weights=[1.0]).validate()


def test_forward_train_outputs_and_gradients(make_batch: Callable[..., dict]) -> None:
    torch.manual_seed(0)
    cfg = SGDETRConfig(**TINY)
    model = build_model(cfg).train()
    batch = make_batch()
    out = model(batch)
    assert out["pred_logits"].shape == (3, 5, 2) and out["pred_iou"].shape == (3, 5)
    assert out["saliency_scores"].shape == out["local_saliency_scores"].shape == (3, 12)
    assert out["saliency_scores_neg"].shape == (3, 12)
    assert len(out["aux_outputs"]) == 1 and "dn_pred_spans" in out["aux_outputs"][0]
    assert out["dn_pred_logits"].shape[1] == out["dn_queries"].num_denoising == 10 * 2 * 2
    assert out["co_pred_spans"].shape[1] == out["co_queries"].num_queries >= 1
    assert out["enc_outputs"]["pred_spans"].shape == (3, 5, 2)
    assert out["atss"].assignment is not None
    criterion = SGDETR.build_criterion(cfg)
    losses = criterion(out, batch)
    expected_terms = {t for name in cfg.loss.losses for t in _terms(name)}
    computed = {k.rsplit("_", 1)[0] if k[-1].isdigit() else k for k in losses} - {"loss"}
    assert computed == expected_terms
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


def _terms(name: str) -> tuple[str, ...]:
    from momentkit.modeling.losses import LOSSES

    return LOSSES.get(name).terms


def test_eval_outputs_are_fused_and_padding_invariant(make_batch: Callable[..., dict]) -> None:
    torch.manual_seed(0)
    model = build_model(SGDETRConfig(**TINY)).eval()
    batch = make_batch()
    noisy = dict(batch)
    noisy["video_feats"] = batch["video_feats"] + 50.0 * ~batch["video_mask"][..., None]
    noisy["text_feats"] = batch["text_feats"] - 30.0 * ~batch["text_mask"][..., None]
    with torch.no_grad():
        a, b = model(batch), model(noisy)
    for key in ("pred_logits", "pred_spans", "detr_pred_spans", "detr_pred_iou"):
        assert torch.allclose(a[key], b[key], atol=1e-4), key
    mask = batch["video_mask"]
    assert torch.allclose(a["saliency_scores"][mask], b["saliency_scores"][mask], atol=1e-4)
    assert "saliency_scores_neg" not in a and "moment_tokens" not in a
    # the fused predictions: the WBF of the localisation-scored DETR spans and the ATSS spans
    cfg = model.config
    score = localization_score(a["detr_pred_logits"], a["detr_pred_iou"], 0.5)
    atss = atss_predictions(a["atss"], cfg.atss_score_threshold, cfg.atss_nms_threshold, 10)
    spans, scores = weighted_boxes_fusion_1d(
        [span_cxw_to_xx(a["detr_pred_spans"][1]).clamp(0, 1), atss[1][0]],
        [score[1], atss[1][1]],
        cfg.wbf_weights,
        cfg.wbf_iou_threshold,
    )
    n = len(scores)
    assert torch.allclose(a["pred_logits"][1, :n].softmax(-1)[:, 0], scores, atol=1e-5)
    assert torch.allclose(span_cxw_to_xx(a["pred_spans"][1, :n]), spans, atol=1e-5)
    assert (a["pred_logits"][1, n:].softmax(-1)[:, 0] < 1e-10).all()  # padding


@pytest.mark.parametrize(
    ("switch", "absent", "present"),
    [
        ("sgca", [], ["cross_modal"]),
        ("iou_scoring", ["iou_head"], []),
        ("global_saliency", ["saliency_offset"], []),
        ("hybrid_head", ["atss_head"], ["query_selection"]),
    ],
)
def test_ablation_switches(
    switch: str, absent: list[str], present: list[str], make_batch: Callable[..., dict]
) -> None:
    torch.manual_seed(0)
    cfg = SGDETRConfig(**{**TINY, switch: False})
    model = build_model(cfg)
    assert all(getattr(model, name) is None for name in absent)
    assert all(getattr(model, name) is not None for name in present)
    batch = make_batch()
    out = model.train()(batch)
    losses = SGDETR.build_criterion(cfg)(out, batch)
    losses["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    if switch == "hybrid_head":
        assert "atss" not in out and "co_queries" not in out and "loss_atss_label" not in losses
    if switch == "iou_scoring":
        assert "pred_iou" not in out and "loss_iou" not in losses
    if switch == "global_saliency":
        assert torch.equal(out["saliency_scores"], out["local_saliency_scores"])
    with torch.no_grad():
        evaluated = model.eval()(batch)
    assert evaluated["pred_spans"].shape[-1] == 2
    if switch != "hybrid_head":
        return
    # DETR only: the scores are the localisation scores of the queries
    score = localization_score(evaluated["detr_pred_logits"], evaluated["detr_pred_iou"], 0.5)
    assert torch.allclose(evaluated["pred_logits"].softmax(-1)[..., 0], score, atol=1e-6)


def test_sgca_switch_changes_how_the_saliency_is_used(make_batch: Callable[..., dict]) -> None:
    torch.manual_seed(0)
    with_gate = build_model(SGDETRConfig(**TINY)).eval()
    without = build_model(SGDETRConfig(**{**TINY, "sgca": False})).eval()
    without.load_state_dict(with_gate.state_dict())
    batch = make_batch()
    with torch.no_grad():
        a, b = with_gate(batch), without(batch)
    assert torch.equal(a["local_saliency_scores"], b["local_saliency_scores"])
    assert not torch.allclose(a["detr_pred_spans"], b["detr_pred_spans"])


def test_save_and_load_round_trip(tmp_path: Path, make_batch: Callable[..., dict]) -> None:
    torch.manual_seed(0)
    model = build_model(SGDETRConfig(**TINY)).eval()
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["name"] == "sg_detr" and config["denoising"]["num_groups"] == 10
    loaded = MomentModel.from_pretrained(tmp_path / "m").eval()
    assert isinstance(loaded, SGDETR) and loaded.config == model.config
    batch = make_batch()
    with torch.no_grad():
        a, b = model(batch), loaded(batch)
    for key in ("pred_logits", "pred_spans", "saliency_scores"):
        assert torch.equal(a[key], b[key])


def test_short_training_run_overfits(make_batch: Callable[..., dict]) -> None:
    torch.manual_seed(0)
    cfg = SGDETRConfig(**{**TINY, "dropout": 0.0, "input_dropout": 0.0})
    model = build_model(cfg).train()
    criterion = SGDETR.build_criterion(cfg)
    batch = make_batch(seed=1, video_lens=(12, 9, 7, 12), text_lens=(6, 4, 3, 5))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history, spans = [], []
    for _ in range(40):
        losses = criterion(model(batch), batch)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        history.append(losses["loss"].item())
        spans.append(losses["loss_span"].item())
    assert history[-1] < 0.6 * history[0]
    assert sum(spans[-5:]) < 0.6 * sum(spans[:5])


def test_train_pipeline_builds_the_iou_aware_criterion() -> None:
    """``models.build_criterion`` (what ``momentkit train`` calls) defers to SG-DETR's own."""
    from momentkit.models import build_criterion
    from momentkit.models.qd_detr import QDDETRConfig
    from momentkit.models.sg_detr import SGDETRConfig, SGDETRCriterion

    assert isinstance(build_criterion(SGDETRConfig()), SGDETRCriterion)
    assert not isinstance(build_criterion(QDDETRConfig()), SGDETRCriterion)
