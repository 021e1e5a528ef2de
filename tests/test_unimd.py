"""UniMD: the ConvNeXt pyramid, the query-dependent heads against hand-written computations,
centre sampling, the dense losses, soft-NMS, decoding, the co-training batch plans and a short
learning run (model, criterion, ``momentkit cotrain``)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from momentkit.data.multitask import collate_videos, grid_windows
from momentkit.modeling.convnext_pyramid import FPN, BiFPN, ConvNeXtPyramid, masked_max_pool
from momentkit.modeling.dense_losses import (
    assign_targets,
    default_regression_ranges,
    diou_loss_1d,
    pyramid_points,
    sigmoid_focal_loss,
)
from momentkit.modeling.query_heads import (
    QueryClassificationHead,
    QueryRegressionHead,
    dynamic_conv1d,
)
from momentkit.modeling.soft_nms import soft_nms
from momentkit.models import MomentModel, UniMD, UniMDConfig, build_criterion, build_model
from momentkit.models.unimd import OFFICIAL_SWITCHES, UniMDCriterion, decode_detections
from momentkit.training.cotrain import epoch_plan

TINY = dict(
    video_dim=6,
    text_dim=8,
    hidden_dim=8,
    head_dim=8,
    depths=[1, 1],
    fpn_layers=1,
    fpn_kernel_size=3,
    query_hidden_dim=8,
    drop_path_rate=0.0,
    query_dropout=0.0,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def lengths_mask(lengths: list[int], t: int) -> torch.Tensor:
    return torch.arange(t)[None] < torch.tensor(lengths)[:, None]


def multi_batch(seed: int = 0, lengths=(12, 7), queries=(3, 2), dim=6, text_dim=8) -> dict:
    """A multi-query batch built by hand: video 0 has 2 MR + 1 TAD query, video 1 two TAD."""
    g = torch.Generator().manual_seed(seed)
    b, t, q = len(lengths), max(lengths), max(queries)
    mask = lengths_mask(list(lengths), t)
    qmask = lengths_mask(list(queries), q)
    segments = torch.tensor(
        [
            [[[1.0, 5.0], [0, 0]], [[6.0, 9.5], [0, 0]], [[2.0, 4.0], [7, 10]]],
            [[[0.5, 3.0], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]],
        ]
    )
    seg_mask = torch.tensor([[[1, 0], [1, 0], [1, 1]], [[1, 0], [0, 0], [0, 0]]], dtype=torch.bool)
    return {
        "video_feats": torch.randn(b, t, dim, generator=g) * mask[..., None],
        "video_mask": mask,
        "query_feats": torch.nn.functional.normalize(
            torch.randn(b, q, text_dim, generator=g), dim=-1
        ),
        "query_mask": qmask,
        "query_task": torch.tensor([[0, 0, 1], [1, 1, 0]]),
        "query_segments": segments,
        "segment_mask": seg_mask,
        "duration": torch.tensor([24.0, 14.0]),
        "clip_len": 2.0,
    }


# -------------------------------------------------------------------------------- the pyramid
def test_pyramid_levels_strides_and_masks():
    torch.manual_seed(0)
    enc = ConvNeXtPyramid(6, 8, depths=(1, 2, 1), drop_path_rate=0.3).eval()
    mask = lengths_mask([16, 9], 16)
    x = torch.randn(2, 6, 16) * mask[:, None]
    levels, masks = enc(x, mask)
    assert [tuple(z.shape) for z in levels] == [(2, 8, 16), (2, 8, 8), (2, 8, 4), (2, 8, 2)]
    for level, (z, m) in enumerate(zip(levels, masks)):
        assert torch.equal(m, mask[:, :: 2**level])
        assert (z[~m[:, None].expand_as(z)] == 0).all()
    for neck in (BiFPN(8, 4, num_layers=2, kernel_size=3), FPN(8, 4)):
        out, out_masks = neck(levels, masks)
        assert [o.shape for o in out] == [z.shape for z in levels]
        assert all(torch.equal(a, b) for a, b in zip(out_masks, masks))
        assert all((o[~m[:, None].expand_as(o)] == 0).all() for o, m in zip(out, out_masks))


def test_masked_max_pool_ignores_padding():
    x = torch.tensor([[[1.0, -5.0, -2.0, 9.0]]])
    mask = torch.tensor([[True, True, True, False]])
    out, out_mask = masked_max_pool(x, mask, kernel_size=3)
    assert out.tolist() == [[[1.0, -2.0]]]  # the padded 9 never wins
    assert out_mask.tolist() == [[True, True]]


def test_model_outputs_do_not_depend_on_padding():
    torch.manual_seed(0)
    model = build_model({"name": "unimd", **TINY}).eval()
    batch = multi_batch()
    out = model(batch)
    longer = dict(batch)
    extra = 9  # more padded clips (another multiple of the coarsest stride after padding)
    longer["video_feats"] = torch.cat([batch["video_feats"], torch.randn(2, extra, 6)], dim=1)
    longer["video_mask"] = torch.cat(
        [batch["video_mask"], torch.zeros(2, extra, dtype=torch.bool)], 1
    )
    out2 = model(longer)
    for b in range(2):
        keep = out["point_mask"][b]
        t_valid = out["points"][keep, 0]
        keep2 = out2["point_mask"][b]
        # same valid points (time, stride) in the same order
        assert torch.equal(out2["points"][keep2][:, [0, 3]], out["points"][keep][:, [0, 3]])
        torch.testing.assert_close(out2["cls_logits"][b][:, keep2], out["cls_logits"][b][:, keep])
        torch.testing.assert_close(out2["reg_offsets"][b][:, keep2], out["reg_offsets"][b][:, keep])
        assert len(t_valid) > 0


# ------------------------------------------------------------------------------------- heads
def hand_conv(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x`` ``(C, T)``, ``w`` ``(O, C, K)``, ``bias`` ``(O,)`` -> ``(O, T)`` with zero padding."""
    c, t = x.shape
    o, _, k = w.shape
    out = torch.zeros(o, t, dtype=torch.float64)
    for oi in range(o):
        for ti in range(t):
            total = float(bias[oi])
            for ci in range(c):
                for ki in range(k):
                    src = ti + ki - k // 2
                    if 0 <= src < t:
                        total += float(w[oi, ci, ki]) * float(x[ci, src])
            out[oi, ti] = total
    return out


def test_dynamic_conv_matches_a_hand_written_convolution():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 7, generator=g)
    w = torch.randn(2, 4, 2, 3, 3, generator=g)  # (B, Q, O, C, K)
    bias = torch.randn(2, 4, 2, generator=g)
    out = dynamic_conv1d(x, w, bias)
    assert out.shape == (2, 4, 2, 7)
    for b in range(2):
        for q in range(4):
            expected = hand_conv(x[b], w[b, q], bias[b, q])
            torch.testing.assert_close(out[b, q].double(), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="odd"):
        dynamic_conv1d(x, torch.randn(2, 4, 2, 3, 2))


def test_classification_head_is_a_scaled_inner_product():
    torch.manual_seed(0)
    head = QueryClassificationHead(6, 5, num_layers=3, kernel_size=3)
    with torch.no_grad():
        head.scale.fill_(2.0)
        head.bias.fill_(-0.5)
    masks = [lengths_mask([8, 5], 8), lengths_mask([4, 3], 4)]
    levels = [torch.randn(2, 6, 8) * masks[0][:, None], torch.randn(2, 6, 4) * masks[1][:, None]]
    queries = torch.randn(2, 3, 5)
    with torch.no_grad():
        out = head(levels, masks, queries)
    assert [o.shape for o in out] == [(2, 3, 8), (2, 3, 4)]
    for x, m, o in zip(levels, masks, out):
        z = head.tower(x, m).detach()  # (B, 5, T): conv -> LN -> ReLU -> conv (no norm after)
        for b in range(2):
            for q in range(3):
                for t in range(x.shape[-1]):
                    # the official head's logits are zero at padded steps
                    expected = (2.0 * float(z[b, :, t] @ queries[b, q]) - 0.5) * float(m[b, t])
                    assert math.isclose(float(o[b, q, t]), expected, rel_tol=1e-5, abs_tol=1e-5)


def test_regression_head_applies_each_querys_kernel():
    torch.manual_seed(0)
    head = QueryRegressionHead(6, 5, query_dim=4, num_levels=2, kernel_size=3, query_hidden_dim=7)
    head.eval()
    with torch.no_grad():
        head.scales.copy_(torch.tensor([1.5, -1.0]))
    masks = [lengths_mask([8, 5], 8), lengths_mask([4, 3], 4)]
    levels = [torch.randn(2, 6, 8) * masks[0][:, None], torch.randn(2, 6, 4) * masks[1][:, None]]
    queries = torch.randn(2, 3, 4)
    out = head(levels, masks, queries)
    assert [o.shape for o in out] == [(2, 3, 8, 2), (2, 3, 4, 2)]
    weight, bias = head.kernels(queries)
    assert weight.shape == (2, 3, 2, 5, 3) and bias.shape == (2, 3, 2)
    for level, (x, m, o) in enumerate(zip(levels, masks, out)):
        z = head.tower(x, m)
        for b in range(2):
            for q in range(3):
                conv = hand_conv(z[b].detach(), weight[b, q].detach(), bias[b, q].detach())
                expected = torch.relu(head.scales[level].double() * conv) * m[b].double()
                torch.testing.assert_close(o[b, q].T.double(), expected, atol=1e-5, rtol=1e-4)
    assert all((o >= 0).all() for o in out)
    # the coarse level's scale is negative: relu(-1 * conv) is zero where conv >= 0
    assert (out[1] == 0).any()


# ----------------------------------------------------------------------------- dense targets
def test_regression_ranges_and_points():
    assert default_regression_ranges(6) == [
        (0.0, 4.0), (4.0, 8.0), (8.0, 16.0), (16.0, 32.0), (32.0, 64.0), (64.0, math.inf),
    ]  # fmt: skip
    pts = pyramid_points([4, 2], [(0, 4), (4, math.inf)])
    assert pts.tolist() == [
        [0, 0, 4, 1], [1, 0, 4, 1], [2, 0, 4, 1], [3, 0, 4, 1],
        [0, 4, math.inf, 2], [2, 4, math.inf, 2],
    ]  # fmt: skip


def test_centre_sampling_assigns_the_expected_positives():
    points = pyramid_points([10, 5], [(0, 4), (4, math.inf)])  # strides 1 and 2
    seg = torch.tensor([[[2.0, 8.0]]])
    labels, targets = assign_targets(points, seg, torch.tensor([[True]]), center_radius=1.5)
    t, stride = points[:, 0], points[:, 3]
    pos = [(int(a), int(s)) for a, s in zip(t[labels[0]], stride[labels[0]])]
    # level 0: centre 5 +- 1.5 -> t in (3.5, 6.5): 4, 5, 6; their farthest boundary (4, 3, 4)
    # is within [0, 4]. level 1: centre 5 +- 3 -> (2, 8): t = 4, 6 with farthest 4 in [4, inf)
    assert pos == [(4, 1), (5, 1), (6, 1), (4, 2), (6, 2)]
    got = {
        (int(a), int(s)): targets[0, i].tolist()
        for i, (a, s) in enumerate(zip(t, stride))
        if labels[0, i]
    }
    assert got == {(4, 1): [2, 4], (5, 1): [3, 3], (6, 1): [4, 2], (4, 2): [1, 2], (6, 2): [2, 1]}
    assert (targets[0][~labels[0]] == 0).all()
    # without centre sampling every point strictly inside (and in range) is positive
    labels, _ = assign_targets(points, seg, torch.tensor([[True]]), center_radius=None)
    pos = [(int(a), int(s)) for a, s in zip(t[labels[0]], stride[labels[0]])]
    assert pos == [(4, 1), (5, 1), (6, 1), (4, 2), (6, 2)]  # 3 and 7 are 5 from a boundary
    # a masked-out segment gives no positive
    labels, _ = assign_targets(points, seg, torch.tensor([[False]]), center_radius=1.5)
    assert not labels.any()


def test_overlapping_segments_the_shortest_wins():
    points = pyramid_points([12], [(0, math.inf)])
    segs = torch.tensor([[[0.0, 11.0], [4.0, 7.0]]])
    labels, targets = assign_targets(points, segs, torch.ones(1, 2, dtype=torch.bool), 10.0)
    assert labels[0].tolist() == [t in range(1, 11) for t in range(12)]
    assert targets[0, 5].tolist() == [1.0, 2.0]  # inside the short one: its boundaries
    assert targets[0, 2].tolist() == [2.0, 9.0]  # only the long one covers it


def test_focal_and_diou_losses_on_hand_numbers():
    focal = sigmoid_focal_loss(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0]))
    assert torch.allclose(
        focal, torch.tensor([0.25 * 0.25 * math.log(2), 0.75 * 0.25 * math.log(2)])
    )
    # pred (1, 1) vs target (1, 3): IoU 2/4, hull 4, centre offset 1 -> 0.5 + 1/16
    loss = diou_loss_1d(
        torch.tensor([[1.0, 1.0], [2.0, 3.0]]), torch.tensor([[1.0, 3.0], [2.0, 3.0]])
    )
    assert torch.allclose(loss, torch.tensor([0.5625, 0.0]))


def test_criterion_normalises_and_weights_each_task():
    """Outputs built by hand on one level: compare with the formula of UniMDCriterion."""
    config = UniMDConfig(**TINY, mr_loss_weight=1.0, tad_loss_weight=3.0)
    points = pyramid_points([6], [(0, math.inf)])
    g = torch.Generator().manual_seed(2)
    cls = torch.randn(1, 2, 6, generator=g, requires_grad=True)
    reg = torch.rand(1, 2, 6, 2, generator=g).requires_grad_()
    outputs = {
        "cls_logits": cls, "reg_offsets": reg, "points": points,
        "point_mask": torch.tensor([[True] * 5 + [False]]),
        "query_mask": torch.ones(1, 2, dtype=torch.bool),
        "center_radius": 1.5, "focal_alpha": 0.25,
    }  # fmt: skip
    batch = {
        "query_segments": torch.tensor([[[[1.0, 3.0]], [[2.0, 4.0]]]]),
        "segment_mask": torch.ones(1, 2, 1, dtype=torch.bool),
        "query_task": torch.tensor([[0, 1]]),
    }
    losses = UniMDCriterion(config)(outputs, batch)
    valid = outputs["point_mask"][0]
    for q, (name, w) in enumerate((("mr", 1.0), ("tad", 3.0))):
        labels, targets = assign_targets(
            points, batch["query_segments"][0, q : q + 1], torch.ones(1, 1, dtype=torch.bool)
        )
        pos = labels[0] & valid
        n = max(int(pos.sum()), 1)
        focal = (sigmoid_focal_loss(cls[0, q], pos.float()) * valid).sum()
        diou = diou_loss_1d(reg[0, q][pos], targets[0][pos]).sum()
        assert torch.allclose(losses[f"loss_cls_{name}"], w * focal / n)
        assert torch.allclose(losses[f"loss_reg_{name}"], w * diou / n)
    assert torch.allclose(losses["loss"], sum(v for k, v in losses.items() if k != "loss"))
    losses["loss"].backward()
    assert cls.grad[0, :, 5].abs().sum() == 0  # the padded point gets no gradient


# ---------------------------------------------------------------------------------- the model
def test_forward_shapes_save_load_and_config_checks(tmp_path):
    torch.manual_seed(0)
    model = build_model({"name": "unimd", **TINY})
    assert isinstance(model, UniMD)
    batch = multi_batch()
    out = model(batch)
    p = out["points"].shape[0]
    assert p == 12 + 6 + 3  # 12 clips padded to a multiple of 4: levels 12, 6, 3
    assert out["cls_logits"].shape == (2, 3, p) and out["reg_offsets"].shape == (2, 3, p, 2)
    assert out["point_mask"].shape == (2, p) and int(out["point_mask"][1].sum()) == 7 + 4 + 2
    losses = UniMDCriterion(model.config)(out, batch)
    assert set(losses) == {"loss_cls_mr", "loss_reg_mr", "loss_cls_tad", "loss_reg_tad", "loss"}
    losses["loss"].backward()
    model.eval()
    model.save_pretrained(tmp_path / "m")
    again = MomentModel.from_pretrained(tmp_path / "m").eval()
    torch.testing.assert_close(again(batch)["cls_logits"], model(batch)["cls_logits"])
    with pytest.raises(ValueError, match="model.regression_ranges"):
        UniMDConfig(**TINY, regression_ranges=[[0, 4]]).validate()
    with pytest.raises(ValueError, match="class_prompt"):
        UniMDConfig(**TINY, class_prompt="a video").validate()
    # text width != head width: a projection appears
    assert not isinstance(
        build_model({"name": "unimd", **{**TINY, "head_dim": 16}}).query_proj, torch.nn.Identity
    )


def test_standard_batch_trains_with_set_criterion_and_postprocesses():
    from momentkit.modeling import PostProcessor

    torch.manual_seed(0)
    model = build_model({"name": "unimd", **TINY, "max_seg_num": 5})
    mask = lengths_mask([12, 7], 12)
    batch = {
        "video_feats": torch.randn(2, 12, 6) * mask[..., None], "video_mask": mask,
        "text_feats": torch.randn(2, 4, 8), "text_mask": lengths_mask([4, 2], 4),
        "duration": torch.tensor([24.0, 14.0]), "clip_len": 2.0, "qids": [1, 2], "vids": ["a", "b"],
        "span_targets": [
            {"spans": torch.tensor([[0.5, 0.25]])}, {"spans": torch.tensor([[0.3, 0.4]])},
        ],
    }  # fmt: skip
    criterion = build_criterion(model.config)
    losses = criterion(model(batch), batch)
    assert set(losses) == {"loss_cls", "loss_reg", "loss"}
    losses["loss"].backward()
    model.eval()
    out = model(batch)
    assert out["pred_spans"].shape == (2, 5, 2) and out["pred_logits"].shape == (2, 5, 2)
    preds = PostProcessor(top_k=3)(out, batch)
    assert [p.qid for p in preds] == [1, 2]
    for p, duration in zip(preds, (24.0, 14.0)):
        assert 1 <= len(p.pred_relevant_windows) <= 3
        assert all(0 <= s < e <= duration for s, e, _ in p.pred_relevant_windows)


def test_decode_detections_on_hand_made_outputs():
    """One video, one query, one level of stride 1; two overlapping candidates + a far one."""
    config = UniMDConfig(**TINY, max_seg_num=10, nms_sigma=0.5, min_score=0.001)
    points = pyramid_points([8], [(0, math.inf)])
    logits = torch.full((1, 1, 8), -20.0)
    logits[0, 0, 2], logits[0, 0, 3], logits[0, 0, 6] = 3.0, 2.0, 1.0
    reg = torch.zeros(1, 1, 8, 2)
    reg[0, 0, 2] = torch.tensor([1.0, 2.0])  # [1, 4] -> seconds [3, 9]
    reg[0, 0, 3] = torch.tensor([2.0, 1.0])  # [1, 4]: same segment -> Gaussian decay by e^-2
    reg[0, 0, 6] = torch.tensor([1.0, 0.5])  # [5, 6.5] -> [11, 14] clamped to the 13 s video
    outputs = {
        "cls_logits": logits, "reg_offsets": reg, "points": points,
        "point_mask": torch.ones(1, 8, dtype=torch.bool),
        "query_mask": torch.ones(1, 1, dtype=torch.bool),
    }  # fmt: skip
    ((segs, scores),) = decode_detections(outputs, [13.0], 2.0, config)[0]
    s = torch.sigmoid(torch.tensor([3.0, 2.0, 1.0]))
    assert segs.tolist() == [[3.0, 9.0], [11.0, 13.0], [3.0, 9.0]]
    torch.testing.assert_close(scores, torch.stack([s[0], s[2], s[1] * math.exp(-2.0)]))
    config.max_seg_num = 1
    ((segs, scores),) = decode_detections(outputs, [13.0], 2.0, config)[0]
    assert segs.tolist() == [[3.0, 9.0]]


def test_soft_nms_on_hand_made_spans():
    segs = torch.tensor([[0.0, 10.0], [0.0, 5.0], [20.0, 30.0], [1.0, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    kept, new, idx = soft_nms(segs, scores, sigma=0.5, min_score=0.001)
    # IoU with [0, 10]: 0.5 and 0.9; the far segment keeps its score
    assert idx.tolist() == [0, 2, 1, 3]
    decayed = 0.6 * math.exp(-0.81 / 0.5) * math.exp(-0.16 / 0.5)  # IoU 0.9, then 0.4
    expected = torch.tensor([0.9, 0.7, 0.8 * math.exp(-0.25 / 0.5), decayed])
    torch.testing.assert_close(new, expected)
    assert torch.equal(kept, segs[idx])
    # min_score drops the decayed duplicate; max_num cuts after the best picks
    _, new, idx = soft_nms(segs, scores, sigma=0.5, min_score=0.3)
    assert idx.tolist() == [0, 2, 1]
    assert soft_nms(segs, scores, max_num=2)[2].tolist() == [0, 2]
    # linear decays only overlaps >= threshold; hard = temporal_nms (IoU > threshold dropped)
    _, new, idx = soft_nms(segs, scores, method="linear", iou_threshold=0.6, min_score=0.0)
    assert idx.tolist() == [0, 1, 2, 3] and math.isclose(float(new[3]), 0.6 * 0.1, rel_tol=1e-6)
    assert soft_nms(segs, scores, method="hard", iou_threshold=0.5)[2].tolist() == [0, 1, 2]
    assert soft_nms(segs[:0], scores[:0])[2].tolist() == []


# --------------------------------------------------------------------------------- the data
def test_collate_maps_windows_to_the_grid():
    from momentkit.data.multitask import QueryGroup, VideoItem

    items = [
        VideoItem("a", 20.0, 2.0, np.ones((10, 3), np.float32), [
            QueryGroup("mr", [7], ["x"], np.ones((1, 4), np.float32), [[[2.0, 6.0]]]),
            QueryGroup("tad", ["run", "jump"], ["p", "q"], np.zeros((2, 4), np.float32),
                       [[[0.0, 4.0], [10.0, 30.0]], []]),
        ]),
        VideoItem("b", 8.0, 2.0, np.ones((4, 3), np.float32), [
            QueryGroup("tad", ["run", "jump"], ["p", "q"], np.zeros((2, 4), np.float32),
                       [[], [[1.0, 3.0]]]),
        ]),
    ]  # fmt: skip
    batch = collate_videos(items)
    assert batch["video_feats"].shape == (2, 10, 3) and batch["video_mask"].sum(1).tolist() == [
        10,
        4,
    ]
    assert batch["query_mask"].tolist() == [[True] * 3, [True, True, False]]
    assert batch["query_task"].tolist() == [[0, 1, 1], [1, 1, 0]]
    assert batch["query_keys"][0] == [("mr", 7), ("tad", "run"), ("tad", "jump")]
    # seconds / clip_len - 0.5, clipped to the 20 s the features cover
    assert batch["query_segments"][0, 0, 0].tolist() == [0.5, 2.5]
    assert batch["query_segments"][0, 1, :2].tolist() == [[-0.5, 1.5], [4.5, 9.5]]
    assert batch["segment_mask"][0].tolist() == [[True, False], [True, True], [False, False]]
    assert batch["segment_mask"][1, 1].tolist() == [True, False]
    assert grid_windows([[9.0, 12.0]], 4, 2.0).tolist() == []  # past the features


def test_epoch_plans_of_the_three_strategies():
    vids = {"mr": ["a", "b", "c", "d"], "tad": ["b", "c", "d", "e", "f"]}
    sync = epoch_plan("synchronized", vids, 2, seed=0, epoch=0)
    units = [u for batch in sync for u in batch]
    assert sorted(units) == sorted(
        [(v, ("mr", "tad")) for v in "bcd"] + [("a", ("mr",)), ("e", ("tad",)), ("f", ("tad",))]
    )
    for batch in sync:  # joint videos are never batched with single-task ones
        assert len({len(tasks) for _, tasks in batch}) == 1
    sel = epoch_plan("selective", vids, 2, seed=0, epoch=0)
    assert all(len({tasks for _, tasks in batch}) == 1 for batch in sel)
    assert sorted(u for b in sel for u in b) == sorted(
        [(v, ("mr",)) for v in "abcd"] + [(v, ("tad",)) for v in "bcdef"]
    )
    assert len(sel) == 2 + 3
    rnd = epoch_plan("random", vids, 3, seed=0, epoch=0)
    assert sorted(u for b in rnd for u in b) == sorted(u for b in sel for u in b)
    assert len(rnd) == 3 and all(len(t) == 1 for b in rnd for _, t in b)
    # pure functions of (seed, epoch); same number of batches every epoch
    assert epoch_plan("random", vids, 3, 0, 0) == rnd
    assert epoch_plan("random", vids, 3, 0, 1) != rnd
    assert all(len(epoch_plan(s, vids, 2, 5, e)) == len(epoch_plan(s, vids, 2, 5, 0))
               for s in ("synchronized", "selective", "random") for e in range(4))  # fmt: skip
    single = epoch_plan("synchronized", {"tad": ["x", "y", "z"]}, 2, 0, 0)
    assert sorted(u for b in single for u in b) == [(v, ("tad",)) for v in "xyz"]


# ------------------------------------------------------------------------------------ learning
@pytest.fixture(scope="module")
def synth_tad(tmp_path_factory):
    from momentkit.data.synth import SynthConfig, generate
    from momentkit.data.synth_tad import write_synth_tad

    root = tmp_path_factory.mktemp("unimd_synth")
    config = SynthConfig(
        num_train=12, num_val=4, seed=5, mode="tad", min_duration=30, max_duration=40
    )
    generate(config, root, progress=False)
    write_synth_tad(root)
    return root


def cotrain_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "cotrain", "--model", "unimd",
        "--mr-train", str(root / "annotations/train.jsonl"),
        "--mr-val", str(root / "annotations/val.jsonl"),
        "--tad-train", str(root / "annotations/tad.json"),
        "--tad-val", str(root / "annotations/tad.json"),
        "--tad-classes", str(root / "annotations/tad_classes.txt"),
        "--tad-class-features", str(root / "features/tad_class_text.npz"),
        "--video-features", str(root / "features/slowfast"), str(root / "features/clip"),
        "--text-features", str(root / "features/clip_text"),
        "--out", str(out), "--batch-size", "4",
        "--set", "model.hidden_dim=16", "model.head_dim=16", "model.query_hidden_dim=16",
        "model.depths=[1,1]", "model.fpn_layers=1", "model.drop_path_rate=0",
        "data.use_tef=false", "data.clip_len=2.0", "data.max_v_len=75", "data.eval_batch_size=8",
        "optim.lr=2e-3", "optim.weight_decay=0.05", "optim.grad_clip=1.0", "trainer.progress=false",
        "model.max_seg_num=20",
        *extra,
    ]  # fmt: skip


def test_loss_goes_down_on_a_few_videos(synth_tad):
    """A tiny model fits one synchronized batch (4 videos, their sentence and 8 classes)."""
    from momentkit.training.config import build_config
    from momentkit.training.cotrain import (
        CoTrainSpec,
        PlannedBatches,
        collate_planned,
        load_cotrain_data,
    )

    root = synth_tad
    args = cotrain_args(root, root / "unused")
    sets = args[args.index("--set") + 1 :]
    cfg = build_config("unimd", None, [
        f"data.train_path={root / 'annotations/train.jsonl'}",
        "data.video_features="
        + json.dumps([str(root / "features/slowfast"), str(root / "features/clip")]),
        f"data.text_features={root / 'features/clip_text'}", *sets,
    ])  # fmt: skip
    spec = CoTrainSpec(
        tad_train=str(root / "annotations/tad.json"),
        tad_class_features=str(root / "features/tad_class_text.npz"),
    )
    data = load_cotrain_data(cfg, spec, root)
    cfg.model.video_dim, cfg.model.text_dim = data.train.video_dim, data.train.text_dim
    torch.manual_seed(0)
    model = build_model(cfg.model)
    criterion = UniMDCriterion(model.config)
    batch = collate_planned(
        [PlannedBatches(data.train, "synchronized", ("mr", "tad"), 4, 0)[(0, 0)]]
    )
    assert set(batch["query_task"][0].tolist()) == {0, 1}  # both tasks on the same video
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = None
    for _ in range(40):
        losses = criterion(model(batch), batch)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        first = first if first is not None else float(losses["loss"].detach())
    assert float(losses["loss"].detach()) < 0.5 * first


@pytest.mark.parametrize("strategy", ["selective", "sequential"])
def test_cotrain_cli_runs_and_selects(synth_tad, tmp_path, capsys, strategy):
    out = tmp_path / strategy
    argv = cotrain_args(synth_tad, out, "--strategy", strategy, "--epochs", "1")
    if strategy == "sequential":
        argv += ["--pretrain-epochs", "1"]
    code = _run_cotrain(argv)
    assert code == 0
    printed = capsys.readouterr().out
    assert "TAD-mAP" in printed and "MR-R1@0.5" in printed
    run = out / "finetune_mr" if strategy == "sequential" else out
    assert (run / "best" / "model.safetensors").exists()
    metrics = json.loads((run / "val_metrics.json").read_text())
    assert {"MR-R1@0.5", "MR-R5@0.7", "TAD-mAP", "TAD-mAP@0.5"} <= set(metrics["brief"])
    rows = [json.loads(line) for line in (run / "val_preds.jsonl").read_text().splitlines()]
    assert {r.get("task") for r in rows} == {None, "tad"}
    if strategy == "sequential":
        assert (out / "pretrain_tad" / "best" / "model.safetensors").exists()
    else:
        assert "MR-TAD-mean" in metrics["brief"]


def _run_cotrain(argv: list[str]) -> int:
    """``momentkit cotrain`` through its module (registered in cli/main.py by the lead)."""
    import argparse

    from momentkit.cli import cotrain

    parser = argparse.ArgumentParser()
    cotrain.add_arguments(parser)
    return cotrain.run(parser.parse_args(argv[1:]))


def test_cotrain_resume_ends_like_an_uninterrupted_run(synth_tad, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from momentkit.training.cotrain import CoTrainer

    full, part = tmp_path / "full", tmp_path / "part"
    once = ("--strategy", "random", "--epochs", "2", "--set", "trainer.eval_every=2")
    assert _run_cotrain(cotrain_args(synth_tad, full, *once)) == 0
    original = CoTrainer._train_step

    def interrupted(self, batch, epoch):
        if epoch == 1 and self.state.step_in_epoch == 1:
            raise KeyboardInterrupt
        return original(self, batch, epoch)

    monkeypatch.setattr(CoTrainer, "_train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run_cotrain(cotrain_args(synth_tad, part, *once))
    monkeypatch.undo()
    with pytest.raises(Exception, match="already holds a training run"):
        _run_cotrain(cotrain_args(synth_tad, part, *once))
    assert _run_cotrain(cotrain_args(synth_tad, part, *once, "--resume")) == 0
    with pytest.raises(Exception, match="different settings .*trainer.epochs"):
        _run_cotrain(cotrain_args(synth_tad, part, "--resume"))
    a = load_file(str(full / "last" / "model.safetensors"))
    b = load_file(str(part / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cotrain_resumes_from_another_folder_with_the_same_files(synth_tad, tmp_path, monkeypatch):
    """A run started with relative paths, resumed from elsewhere: a clear error naming the
    saved path missing from there; the same files named from there (experiment and TAD paths)
    are accepted and kept as absolute paths; other files are still refused."""
    import argparse
    import shutil

    from momentkit.cli import cotrain
    from momentkit.training.config import ConfigError

    start, elsewhere = tmp_path / "start", tmp_path / "start" / "elsewhere"
    shutil.copytree(synth_tad, start / "s1")
    elsewhere.mkdir()
    monkeypatch.chdir(start)
    rel = [a.replace(str(synth_tad), "s1") for a in cotrain_args(synth_tad, Path("run"))]
    assert _run_cotrain([*rel, "--epochs", "1"]) == 0

    def resolve(argv: list[str]):  # noqa: ANN202
        parser = argparse.ArgumentParser()
        cotrain.add_arguments(parser)
        return cotrain.resolve(parser.parse_args(argv[1:]))

    monkeypatch.chdir(elsewhere)
    with pytest.raises(ConfigError, match="'s1/annotations/train.jsonl' does not exist from here"):
        resolve(["cotrain", "--out", "../run", "--resume"])
    given = [a.replace("s1/", "../s1/") for a in rel]
    given[given.index("run")] = "../run"
    cfg, spec = resolve([*given, "--epochs", "1", "--resume"])
    assert cfg.data.train_path == str(start / "s1" / "annotations" / "train.jsonl")
    assert spec.tad_train == str(start / "s1" / "annotations" / "tad.json")
    monkeypatch.chdir(start)  # other files than the saved ones (which exist here): refused
    other = [a.replace("train.jsonl", "val.jsonl") for a in rel]
    with pytest.raises(ConfigError, match="different settings .*data.train_path"):
        resolve([*other, "--epochs", "1", "--resume"])


def test_bench_cotrain_table_and_reuse(synth_tad, tmp_path):
    """`momentkit bench cotrain`: one run per row and seed, both tasks' metrics of every run
    (an MR-only model still answers the class queries), finished runs reused."""
    from momentkit.cli.main import main

    out = tmp_path / "bench"
    tiny = cotrain_args(synth_tad, out)[cotrain_args(synth_tad, out).index("--set") + 1 :]
    argv = ["bench", "cotrain", "--data", str(synth_tad), "--out", str(out), "--seeds", "0"]
    argv += ["--rows", "mr", "sequential", "--epochs", "1", "--set", *tiny, "trainer.batch_size=4"]
    assert main(argv) == 0
    rows = json.loads((out / "results.json").read_text())
    assert list(rows) == ["MR only", "sequential: TAD, then MR"]
    assert {"TAD-mAP", "MR-R1@0.5"} <= set(rows["MR only"][0])
    assert (out / "sequential" / "seed0" / "finetune_mr" / "val_metrics.json").exists()
    table = (out / "table.md").read_text().splitlines()
    assert table[0] == "| variant | runs | R1@0.5 | R1@0.7 | R5@0.5 | R5@0.7 | TAD mAP |"
    assert table[2].startswith("| MR only | 1 |") and len(table) == 4
    done = out / "mr" / "seed0" / "bench_cotrain_done"
    mtime = done.stat().st_mtime_ns
    assert main(argv) == 0 and done.stat().st_mtime_ns == mtime


# ------------------------------------------------------------------- the official switches
OFFICIAL_TINY = dict(TINY, **{k: v for k, v in OFFICIAL_SWITCHES.items() if k != "cotrain_plan"})


def test_last_listed_segment_is_the_class_wise_target():
    points = pyramid_points([12], [(0, math.inf)])
    segs = torch.tensor([[[4.0, 7.0], [0.0, 11.0]]])  # the long one listed last
    ok = torch.ones(1, 2, dtype=torch.bool)
    _, shortest = assign_targets(points, segs, ok, 10.0)
    labels, last = assign_targets(points, segs, ok, 10.0, target_choice="last")
    assert shortest[0, 5].tolist() == [1.0, 2.0] and last[0, 5].tolist() == [5.0, 6.0]
    assert last[0, 2].tolist() == [2.0, 9.0] and labels[0, 2]
    with pytest.raises(ValueError, match="target_choice"):
        assign_targets(points, segs, ok, 10.0, target_choice="longest")


def test_official_loss_normaliser_is_one_moving_average_tad_then_mr():
    """EMA N <- 0.9 N + 0.1 max(1, positives): TAD updates it first, MR divides by the result."""
    config = UniMDConfig(**OFFICIAL_TINY, label_smoothing=0.1, smoothing_classes=1)
    points = pyramid_points([6], [(0, math.inf)])
    g = torch.Generator().manual_seed(2)
    buffer = torch.tensor(100.0)
    outputs = {
        "cls_logits": torch.randn(1, 2, 6, generator=g), "reg_offsets": torch.rand(1, 2, 6, 2),
        "points": points, "point_mask": torch.tensor([[True] * 5 + [False]]),
        "query_mask": torch.ones(1, 2, dtype=torch.bool), "center_radius": 1.5,
        "focal_alpha": 0.25, "loss_norm": buffer,
    }  # fmt: skip
    batch = {
        "query_segments": torch.tensor([[[[1.0, 3.0]], [[2.0, 4.0]]]]),
        "segment_mask": torch.ones(1, 2, 1, dtype=torch.bool),
        "query_task": torch.tensor([[0, 1]]),
    }
    losses = UniMDCriterion(config)(outputs, batch)
    valid = outputs["point_mask"][0]
    norm = 100.0
    for q, (name, w) in ((1, ("tad", 3.0)), (0, ("mr", 1.0))):
        labels, targets = assign_targets(
            points, batch["query_segments"][0, q : q + 1], torch.ones(1, 1, dtype=torch.bool)
        )
        pos = labels[0] & valid
        norm = 0.9 * norm + 0.1 * max(int(pos.sum()), 1)
        smooth = pos.float() * 0.9 + 0.1 / 2
        focal = (sigmoid_focal_loss(outputs["cls_logits"][0, q], smooth) * valid).sum()
        assert torch.allclose(losses[f"loss_cls_{name}"], w * focal / norm)
    assert math.isclose(float(buffer), norm, rel_tol=1e-6)  # kept for the next step


def test_official_model_keeps_padded_values_and_pads_to_max_len():
    from momentkit.interop.parity import random_state, state_shapes

    torch.manual_seed(0)
    model = build_model({"name": "unimd", **OFFICIAL_TINY, "max_video_len": 16}).eval()
    # random norm shifts and BatchNorm statistics: padded steps then carry non-zero values
    model.load_state_dict(random_state(state_shapes(model.state_dict()), seed=3))
    assert isinstance(model.neck.layers[0].lateral[0][1], torch.nn.BatchNorm1d)
    assert len(model.neck.layers[0].down_weights[-2].weight) == 2  # second-coarsest: 2 inputs
    batch = multi_batch()
    out = model(batch)
    assert out["point_mask"].shape[1] == 16 + 8 + 4  # padded to max_video_len, not to 12
    # padded steps keep values: a second video's padding changes the first one's outputs only
    # through its length, so the same video alone gives the same outputs
    alone = {k: v[:1] if torch.is_tensor(v) and v.dim() else v for k, v in batch.items()}
    torch.testing.assert_close(model(alone)["cls_logits"][0], out["cls_logits"][0])
    # ...but not when the padding is shorter (momentkit's stride padding)
    short = build_model({"name": "unimd", **OFFICIAL_TINY, "max_video_len": 16, "pad_to": "stride"})
    short.load_state_dict(model.state_dict())
    second = {k: v[1:] if torch.is_tensor(v) and v.dim() else v for k, v in batch.items()}
    second["video_feats"], second["video_mask"] = (
        second["video_feats"][:, :8],
        second["video_mask"][:, :8],
    )
    a, b = model(second), short.eval()(second)
    keep = a["point_mask"][0]
    assert not torch.allclose(
        a["cls_logits"][0][:, keep], b["cls_logits"][0][:, b["point_mask"][0]]
    )
    with pytest.raises(ValueError, match="model.padded_steps"):
        UniMDConfig(**dict(TINY, padded_steps="kept_maybe")).validate()


def test_masked_max_pool_can_pool_over_padded_zeros():
    x = torch.tensor([[[-1.0, -5.0, -2.0, 0.0]]])
    mask = torch.tensor([[True, True, True, False]])
    out, _ = masked_max_pool(x, mask, kernel_size=3, ignore_padding=False)
    assert out.tolist() == [[[-1.0, 0.0]]]  # the padded zero wins (the official MaskMaxPool1d)


def test_detections_are_capped_per_task():
    """MR and TAD queries of one video: each task keeps max_seg_num (the official per-task
    inference), instead of the TAD classes crowding the sentences out."""
    config = UniMDConfig(**TINY, max_seg_num=2, nms_method="none")
    points = pyramid_points([8], [(0, math.inf)])
    logits = torch.full((1, 3, 8), -20.0)
    logits[0, 0, 1] = 0.0  # the MR query: one weak candidate
    logits[0, 1:, 2:6] = 5.0  # two TAD classes, strong everywhere
    outputs = {
        "cls_logits": logits, "reg_offsets": torch.ones(1, 3, 8, 2), "points": points,
        "point_mask": torch.ones(1, 8, dtype=torch.bool),
        "query_mask": torch.ones(1, 3, dtype=torch.bool), "query_task": torch.tensor([[0, 1, 1]]),
    }  # fmt: skip
    dets = decode_detections(outputs, [20.0], 2.0, config)[0]
    assert len(dets[0][1]) == 1  # the MR detection survives
    assert len(dets[1][1]) + len(dets[2][1]) == 2  # TAD: 2 over its classes
    # grid_offset: grid point g is (g + offset) * clip_len
    shifted = decode_detections(outputs, [20.0], 2.0, dataclasses.replace(config, grid_offset=2.0))
    torch.testing.assert_close(shifted[0][0][0], dets[0][0] + 3.0)


def test_soft_nms_official_arithmetic_on_ties():
    """Equal scores: the C++ order decides (the best remaining segment is swapped to the front,
    which moves the one it replaces back), float64 keeps input order."""
    segs = torch.tensor([[0.0, 10.0], [20.0, 30.0], [50.0, 60.0], [40.0, 41.0]])
    scores = torch.tensor([0.9, 0.5, 0.5, 0.7])
    _, s64, i64 = soft_nms(segs, scores, sigma=0.5, min_score=0.001)
    _, s32, i32 = soft_nms(segs, scores, sigma=0.5, min_score=0.001, arithmetic="official")
    assert i64.tolist() == [0, 3, 1, 2]
    assert i32.tolist() == [0, 3, 2, 1]  # picking 3 swaps it with 1: [0, 3, 2, 1]
    torch.testing.assert_close(s32, s64.float())  # no overlaps: scores unchanged
    # IoU with lengths + 1e-6: a duplicate decays by exp(-IoU^2 / sigma), IoU just below 1
    dup = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    _, s, _ = soft_nms(dup, torch.tensor([0.9, 0.8]), sigma=0.5, arithmetic="official")
    assert float(s[1]) == pytest.approx(0.8 * math.exp(-2.0), rel=1e-5)
    with pytest.raises(ValueError, match="arithmetic"):
        soft_nms(segs, scores, arithmetic="float16")  # type: ignore[arg-type]


def test_window_clipping_modes():
    windows = [[-2.0, 4.0], [6.0, 30.0], [40.0, 44.0]]
    assert grid_windows(windows, 10, 2.0).tolist() == [[-0.5, 1.5], [2.5, 9.5]]
    assert grid_windows(windows, 10, 2.0, 2.0, "none").tolist() == [
        [-3.0, 0.0], [1.0, 13.0], [18.0, 20.0]
    ]  # fmt: skip
    assert grid_windows(windows, 10, 2.0, 0.5, "grid_end").tolist() == [
        [-1.5, 1.5], [2.5, 10.0]
    ]  # fmt: skip
    with pytest.raises(ValueError, match="clipping"):
        grid_windows(windows, 10, 2.0, 0.5, "both")


def test_official_epoch_plans():
    from momentkit.training.cotrain import official_epoch_plan

    vids = {"mr": ["a", "b", "c", "m1", "m2", "m3"], "tad": ["b", "c", "d", "t1", "t2", "t3", "t4"]}
    sync = official_epoch_plan("synchronized", vids, 2, seed=0, epoch=0)
    joint = [b for b in sync if all(t == ("mr", "tad") for _, t in b)]
    paired = [b for b in sync if b not in joint]
    assert len(joint) == 1 and sorted(v for v, _ in joint[0]) == ["b", "c"]  # both tasks
    # TAD-only {d, t1..t4} subsampled to the 4 MR-only {a, m1..m3}: 2 steps, each one TAD-only
    # and one MR-only batch of 2 (4 units)
    assert len(paired) == 2 and all(len(b) == 4 for b in paired)
    assert all([t for _, t in b] == [("tad",)] * 2 + [("mr",)] * 2 for b in paired)
    assert sorted(v for b in paired for v, _ in b[2:]) == ["a", "m1", "m2", "m3"]
    assert len({v for b in paired for v, _ in b[:2]}) == 4  # 4 of the 5 TAD-only videos
    rnd = official_epoch_plan("random", vids, 4, seed=0, epoch=0)
    units = [u for b in rnd for u in b]
    assert len(rnd) == 2 and len(units) == 8  # 11 videos, batches of 4, drop_last
    assert all(t == (("mr", "tad") if v in "bc" else ("mr",) if v[0] in "am" else ("tad",))
               for v, t in units)  # fmt: skip
    assert official_epoch_plan("random", vids, 4, 0, 0) == rnd
    with pytest.raises(ValueError, match="no official counterpart"):
        official_epoch_plan("selective", vids, 2, 0, 0)


def test_presets_follow_the_released_code():
    """charades_sta / activitynet / synth_official carry every official switch; the real-data
    presets also the values the converter reads from the official configs."""
    from momentkit.interop.parity import Fixture
    from momentkit.interop.unimd import model_config
    from momentkit.training.config import build_config

    fixtures = Path(__file__).parent / "fixtures" / "parity"
    for preset in ("charades_sta", "activitynet", "synth_official"):
        model = build_config("unimd", preset).model
        assert {k: getattr(model, k) for k in OFFICIAL_SWITCHES} == OFFICIAL_SWITCHES, preset
        if preset == "synth_official":
            synth = build_config("unimd", "synth")
            assert build_config("unimd", preset).optim == synth.optim
            assert model.hidden_dim == synth.model.hidden_dim
            continue
        official, _ = model_config(Fixture(fixtures / f"unimd_{preset}").opt, Path("x.yaml"))
        for key in ("grid_offset", "window_clipping", "loss_norm_init", "label_smoothing",
                    "nms_sigma", "max_seg_num", "duration_thresh", "min_score", "pre_nms_topk",
                    "regression_ranges", "mr_loss_weight", "tad_loss_weight",
                    "center_sample_radius", "drop_path_rate", "depths",
                    "fpn_kernel_size", "head_layers"):  # fmt: skip
            assert getattr(model, key) == getattr(official, key), (preset, key)


def test_cotrain_with_the_official_plan_and_switches(synth_tad, tmp_path, capsys):
    """The official computation trains end to end (random plan); selective is refused."""
    switches = [f"model.{k}={v if not isinstance(v, bool) else str(v).lower()}"
                for k, v in OFFICIAL_SWITCHES.items()]  # fmt: skip
    out = tmp_path / "official"
    argv = cotrain_args(synth_tad, out, *switches, "--strategy", "random", "--epochs", "1")
    assert _run_cotrain(argv) == 0
    assert (out / "best" / "model.safetensors").exists()
    saved = json.loads((out / "cotrain.json").read_text())["experiment"]["model"]
    assert saved["cotrain_plan"] == "official" and saved["loss_normalizer"] == "ema"
    from momentkit.utils.errors import MomentkitError

    argv = cotrain_args(synth_tad, tmp_path / "sel", *switches, "--strategy", "selective")
    with pytest.raises(MomentkitError, match="selective has no official counterpart"):
        _run_cotrain(argv)


def test_schedule_epochs_stretches_the_cosine_beyond_the_run():
    """The official Charades run: a 10 + 60-epoch schedule stopped after epoch 20."""
    from momentkit.training.config import OptimConfig
    from momentkit.training.optim import lr_factor

    stretched = OptimConfig(scheduler="cosine", warmup_epochs=10, schedule_epochs=70)
    plain = OptimConfig(scheduler="cosine", warmup_epochs=10)
    end = 20 * 5 - 1  # last step of epoch 20, 5 steps an epoch
    assert lr_factor(plain, end, 5, 20) < 1e-3  # annealed over the 20 epochs run
    expected = 0.5 * (1 + math.cos(math.pi * (end - 50) / (70 * 5 - 50)))
    assert lr_factor(stretched, end, 5, 20) == pytest.approx(expected)
