"""Cross-modal clip trimming: selection blocks against hand-made numbers, the recursion's
limits, timestamps of kept clips, the losses, save/load, a short learning test and the
Predictor / ``momentkit search`` integration (tiny models and a toy encoder: fast)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from momentkit.inference.trimmed import TrimmedScorer
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
from momentkit.models import MomentModel, build_criterion, build_model
from momentkit.models.trimming import (
    ClipTrimming,
    ClipTrimmingConfig,
    Selection,
    balanced_bce,
    distillation_error,
    local_tef,
    relevant_clips,
)
from momentkit.utils.errors import FormatError

TINY_MR = {
    "name": "qd_detr",
    "hidden_dim": 16,
    "dim_feedforward": 32,
    "nheads": 2,
    "num_queries": 4,
    "enc_layers": 1,
    "dec_layers": 1,
    "t2v_layers": 1,
}
TINY = dict(hidden_dim=16, nheads=2, dim_feedforward=32, index_hidden_dim=8)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread avoids OpenMP overhead (and contention on shared CPUs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(**changes) -> ClipTrimming:
    """Video channels: 10 clip features + 4 index + 2 TEF; 6-d words."""
    settings_ = dict(
        name="trimming", video_dim=16, text_dim=6, index_dim=4, max_clips=8, min_clips=2,
        max_steps=3, keep_ratio=0.5, mr=TINY_MR, **TINY,
    )  # fmt: skip
    settings_.update(changes)
    torch.manual_seed(0)
    model = build_model(settings_)
    assert isinstance(model, ClipTrimming)
    return model


def tiny_batch(lengths=(60, 40), seed=0, targets=True) -> dict:
    g = torch.Generator().manual_seed(seed)
    b, t = len(lengths), max(lengths)
    mask = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    batch = {
        "video_feats": torch.randn(b, t, 16, generator=g) * mask[..., None],
        "video_mask": mask,
        "text_feats": torch.randn(b, 5, 6, generator=g),
        "text_mask": torch.ones(b, 5, dtype=torch.bool),
        "duration": torch.tensor(lengths, dtype=torch.float32) * 2.0,
        "clip_len": 2.0,
        "qids": list(range(b)),
        "vids": [f"v{i}" for i in range(b)],
    }
    if targets:
        # one moment per video: clips [10, 14) of each video
        batch["span_targets"] = [{"spans": torch.tensor([[12.0 / n, 4.0 / n]])} for n in lengths]
        sal = torch.zeros(b, t)
        sal[:, 10:14] = 3.0
        batch["saliency_all_labels"] = sal
        batch["saliency_pos_labels"] = torch.tensor([[11, 12]] * b)
        batch["saliency_neg_labels"] = torch.tensor([[0, 30]] * b)
    return batch


# ------------------------------------------------------------------------------ selection blocks
def test_selection_counts_and_hard_select_by_hand():
    probs = torch.tensor([[0.9, 0.2, 0.8, 0.7, 0.1, 0.6], [0.1, 0.1, 0.9, 0.0, 0.0, 0.0]])
    candidates = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    budget = torch.tensor([2, 5])
    counts = selection_counts(probs, candidates, threshold=0.5, min_keep=2, budget=budget)
    # video 0: 3 candidates above 0.5 (0.6 is padding), capped at 2; video 1: 1 above, min 2
    assert counts.tolist() == [2, 2]
    keep = hard_select(probs.logit(), candidates, counts)
    assert keep.tolist() == [
        [True, False, True, False, False, False],
        [True, False, True, False, False, False],  # ties (0.1, 0.1): the earlier clip
    ]
    # never more than the candidates, even if min_keep asks for more
    few = selection_counts(probs, candidates, 0.5, min_keep=10, budget=torch.tensor([9, 9]))
    assert few.tolist() == [5, 3]


def test_step_budget():
    candidates = torch.zeros(3, 400, dtype=torch.bool)
    candidates[0, :400] = True
    candidates[1, :100] = True
    candidates[2, :10] = True
    assert step_budget(candidates, 0.25, 75, final=False).tolist() == [100, 75, 75]
    assert step_budget(candidates, 0.25, 75, final=True).tolist() == [75, 75, 75]


def test_straight_through_is_hard_forward_and_passes_gradients():
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0], requires_grad=True)
    probs = logits.sigmoid()
    keep = torch.tensor([True, False, True, False])
    gate = straight_through(keep, probs)
    assert torch.equal(gate, keep.float())  # exactly 0/1 in value
    feats = torch.tensor([1.0, 2.0, 3.0, 4.0])
    (gate * feats).sum().backward()
    # d/dlogit = feature * sigmoid'(logit), for kept and dropped clips alike
    want = feats * probs.detach() * (1 - probs.detach())
    torch.testing.assert_close(logits.grad, want)


def test_logistic_noise_samples_the_selection_probability():
    torch.manual_seed(0)
    logits = torch.tensor([-1.5, 0.0, 2.0])
    noise = logistic_noise((20000, 3), logits)
    frequency = (logits + noise > 0).float().mean(0)
    torch.testing.assert_close(frequency, logits.sigmoid(), atol=0.015, rtol=0)


def test_gumbel_selection_explores_within_the_limits():
    model = tiny_model(selection="gumbel", gumbel_tau=0.5, max_steps=1, keep_gt_prob=0.0)
    model.train()
    batch = tiny_batch(lengths=(60, 40))
    torch.manual_seed(1)
    first = model.select(batch)
    second = model.select(batch)
    assert not torch.equal(first.keep_mask(60), second.keep_mask(60))  # noise on the ranking
    for s in (first, second):
        assert all(2 <= n <= 8 for n in s.mask.sum(1).tolist())  # min_clips .. max_clips
        assert not (s.keep_mask(60) & ~batch["video_mask"]).any()
    (first.weight.sum()).backward()  # the relaxed gate passes gradients
    assert model.selection.mlp.layers[-1].weight.grad.abs().sum() > 0
    model.eval()  # no noise at inference: deterministic
    assert torch.equal(model.select(batch).index, model.select(batch).index)


def test_compact_gather_scatter_round_trip():
    keep = torch.tensor([[0, 1, 1, 0, 1, 0], [0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0]]).bool()
    index, mask = compact(keep)
    assert index.shape == (3, 3)
    assert index[0].tolist() == [1, 2, 4] and mask[0].all()
    assert index[1, 0] == 4 and mask[1].tolist() == [True, False, False]
    assert not mask[2].any()
    x = torch.arange(3 * 6 * 2, dtype=torch.float32).view(3, 6, 2)
    torch.testing.assert_close(gather_clips(x, index)[0], x[0, [1, 2, 4]])
    back = scatter_clips(mask.float(), index, mask, 6, 0.0)
    assert torch.equal(back.bool(), keep)  # padding (repeated indices) never overwrites


def test_cut_channels_mark_jumps_over_trimmed_clips():
    index = torch.tensor([[2, 3, 7, 8, 8], [0, 1, 2, 3, 4]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]).bool()
    cuts = cut_channels(index, mask)
    assert cuts[0, :, 0].tolist() == [0, 0, 1, 0, 0]  # a gap before clip 7
    assert cuts[0, :, 1].tolist() == [0, 1, 0, 0, 0]  # and after clip 3
    assert not cuts[1].any()  # a contiguous window
    tef = local_tef(mask)
    assert tef[0, :, 0].tolist() == [0.0, 0.25, 0.5, 0.75, 0.0]


def test_best_window_by_hand():
    scores = torch.tensor([[0, 0, 1, 1, 0, 0, 0, 0.0], [1, 0, 0, 0, 0, 0, 0.9, 0.9]])
    full = torch.ones(2, 8, dtype=torch.bool)
    # row 0: [1, 3] and [2, 4] both sum to 2, the earlier wins; row 1: 1.8 at the end beats 1
    assert best_window(scores, full, 3).int().tolist() == [
        [0, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 1, 1, 1],
    ]
    short = full.clone()
    short[1, 6:] = False  # padding never enters a window, however it is scored
    assert best_window(scores, short, 3)[1].int().tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert best_window(scores, short, 10).tolist() == short.tolist()  # short videos: all


def test_timeline_scores_take_each_clips_latest_probability():
    first = (torch.tensor([[0.1, 0.8, 0.7, 0.2]]), torch.tensor([[0, 1, 2, 3]]))
    second = (torch.tensor([[0.3, 0.9]]), torch.tensor([[1, 2]]))
    masks = [torch.ones(1, 4, dtype=torch.bool), torch.tensor([[True, True]])]
    out = timeline_scores([first[0], second[0]], [first[1], second[1]], masks, 5)
    assert out[0].tolist() == pytest.approx([0.1, 0.3, 0.9, 0.2, 0.0])  # clip 4: never visited
    padded = timeline_scores([second[0]], [second[1]], [torch.tensor([[True, False]])], 4)
    assert padded[0].tolist() == pytest.approx([0.0, 0.3, 0.0, 0.0])


def test_timestamps_of_kept_clips_map_back():
    """Kept clips 2, 3, 7, 8 of a 10-clip video: a span over kept clips 1..2 (original 3 and
    7) is original [3, 8) clips; fractions inside a clip stay inside that clip."""
    index = torch.tensor([[2, 3, 7, 8]])
    kept, total = torch.tensor([4]), torch.tensor([10])
    spans = torch.tensor([[[0.5, 0.5], [0.125, 0.25], [0.5, 1.0]]])  # [1,3), [0,1), [0,4)
    out = compact_to_video_spans(spans, index, kept, total)
    xx = torch.stack([out[..., 0] - out[..., 1] / 2, out[..., 0] + out[..., 1] / 2], -1) * 10
    torch.testing.assert_close(xx[0], torch.tensor([[3.0, 8.0], [2.0, 3.0], [2.0, 9.0]]))
    # half a kept clip -> half of that original clip
    half = compact_to_video_spans(torch.tensor([[[0.5625, 0.125]]]), index, kept, total)
    torch.testing.assert_close(half[0, 0] * 10, torch.tensor([7.25, 0.5]))
    # and targets go the other way: original [3, 8) holds kept clips 3 and 7 -> [1, 3) of 4
    target = video_spans_to_compact(torch.tensor([[0.55, 0.5], [0.05, 0.1]]), index[0], 10)
    torch.testing.assert_close(target, torch.tensor([[0.5, 0.5]]))  # [0, 1) holds no kept clip


@settings(max_examples=40, deadline=None)
@given(
    keep=st.lists(st.booleans(), min_size=2, max_size=30).filter(lambda k: any(k)),
    data=st.data(),
)
def test_clip_aligned_spans_round_trip(keep, data):
    """A span over kept clips a..b maps to [index[a], index[b] + 1] and back to [a, b + 1]."""
    keep_t = torch.tensor([keep])
    index, mask = compact(keep_t)
    k = int(mask.sum())
    a = data.draw(st.integers(0, k - 1))
    b = data.draw(st.integers(a, k - 1))
    span = torch.tensor([[[(a + b + 1) / 2 / k, (b + 1 - a) / k]]])
    out = compact_to_video_spans(span, index, torch.tensor([k]), torch.tensor([len(keep)]))
    start, end = (
        (out[0, 0, 0] - out[0, 0, 1] / 2) * len(keep),
        (out[0, 0, 0] + out[0, 0, 1] / 2) * len(keep),
    )
    assert float(start) == pytest.approx(int(index[0, a]), abs=1e-4)
    assert float(end) == pytest.approx(int(index[0, b]) + 1, abs=1e-4)
    back = video_spans_to_compact(out[0], index[0, :k], len(keep))
    torch.testing.assert_close(back, span[0], atol=1e-5, rtol=0)


def test_temporal_context_ignores_padding_and_clip_selection_masks_it():
    torch.manual_seed(0)
    ctx = TemporalContext(8, (1, 2)).eval()
    assert ctx.receptive_field == 7
    x = torch.randn(2, 10, 8)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False
    y = ctx(x, mask)
    x2 = x.clone()
    x2[1, 6:] = 100.0
    torch.testing.assert_close(ctx(x2, mask), y)
    assert not y[1, 6:].any()
    # the kernel acts on neighbours at the dilation: changing clip 0 reaches clip 1 + 2 = 3
    x3 = x.clone()
    x3[0, 0] += 1.0
    changed = (ctx(x3, mask)[0] - y[0]).abs().sum(-1) > 0
    assert changed[:4].all() and not changed[4:].any()
    logits = ClipSelection(8)(y, mask)
    assert torch.isinf(logits[1, 6:]).all() and torch.isfinite(logits[0]).all()


# ----------------------------------------------------------------------------------- recursion
@pytest.mark.parametrize("training", [False, True])
def test_selection_respects_padding_and_step_limit(training: bool):
    model = tiny_model(max_steps=2, keep_ratio=0.6, threshold=0.0)
    model.train(training)
    batch = tiny_batch(lengths=(60, 40, 8))
    relevant = relevant_clips(batch, 60)
    selection = model.select(batch, relevant, teacher=training)
    assert len(selection.steps) <= 2
    lengths = batch["video_mask"].sum(1)
    for step in selection.steps:
        # never a padded clip, kept clips are visited ones
        valid_index = step.index < lengths[:, None]
        assert (valid_index | ~step.visited).all()
        assert (step.kept <= step.visited).all()
    final = selection.keep_mask(60)
    assert not (final & ~batch["video_mask"]).any()
    counts = selection.mask.sum(1)
    assert counts.tolist() == [8, 8, 8]  # the budget after the last step; short video untouched
    assert final[2, :8].all()
    # step 0 (not final) keeps ceil(0.6 * visited) >= max_clips, so step 1 still had work
    first = selection.steps[0]
    assert first.kept.sum(1).tolist()[:2] == [36, 24]
    assert (selection.weight == selection.mask.float()).all()  # straight-through: 1 in value


def test_selection_stops_early_when_everything_fits():
    model = tiny_model(max_steps=3, keep_ratio=0.1, threshold=0.99).eval()
    batch = tiny_batch(lengths=(60, 30))
    selection = model.select(batch)
    # a step keeps at least max_clips clips (budget) but few pass 0.99: min_clips... then stop
    assert 1 <= len(selection.steps) <= 3
    assert (selection.mask.sum(1) <= 8).all()
    short = model.select(tiny_batch(lengths=(8, 5)))
    assert short.steps == [] and short.mask.sum(1).tolist() == [8, 5]


def test_teacher_forcing_keeps_the_target_clips():
    model = tiny_model(keep_gt_prob=1.0, max_steps=1).train()
    batch = tiny_batch(lengths=(60, 40))
    relevant = relevant_clips(batch, 60)
    assert relevant[0].nonzero().squeeze(1).tolist() == [10, 11, 12, 13]
    kept = model.select(batch, relevant).keep_mask(60)
    assert (kept[relevant]).all()


def test_training_windows_are_contiguous():
    model = tiny_model(window_prob=1.0).train()
    batch = tiny_batch(lengths=(60, 40))
    out = model(batch)
    index, mask = out["trimmed"]["index"], out["trimmed"]["mask"]
    for i in range(2):
        kept = index[i, mask[i]]
        assert len(kept) == 8 and torch.equal(kept, torch.arange(int(kept[0]), int(kept[0]) + 8))
    assert not out["trimmed"]["batch"]["video_feats"][..., 14:16].any()  # no cuts in a window


# --------------------------------------------------------------------------------- the model
def test_outputs_live_on_the_video_timeline():
    model = tiny_model().eval()
    batch = tiny_batch(lengths=(60, 40), targets=False)
    with torch.no_grad():
        out = model(batch)
    assert out["pred_spans"].shape == (2, 4, 2) and out["saliency_scores"].shape == (2, 60)
    index, mask = out["trimmed"]["index"], out["trimmed"]["mask"]
    expected = compact_to_video_spans(
        out["trimmed"]["outputs"]["pred_spans"], index, mask.sum(1), torch.tensor([60, 40])
    )
    torch.testing.assert_close(out["pred_spans"], expected)
    kept = out["kept_mask"]
    sal = out["saliency_scores"]
    for i in range(2):
        inner = out["trimmed"]["outputs"]["saliency_scores"][i, mask[i]]
        torch.testing.assert_close(sal[i, index[i, mask[i]]], inner)
        others = sal[i][~kept[i] & batch["video_mask"][i]]
        assert (others < inner.min()).all()  # trimmed clips rank below every kept one
    # the MR model saw the kept clips' features, their own TEF and the cut channels
    feats = out["trimmed"]["batch"]["video_feats"]
    assert feats.shape[-1] == 14 + 2 + 2
    kept_feats = gather_clips(batch["video_feats"], index)
    for i in range(2):
        torch.testing.assert_close(feats[i, mask[i], :14], kept_feats[i, mask[i], :14])
        assert not feats[i, ~mask[i]].any()  # padding rows stay empty


def test_predictions_map_back_to_seconds():
    """The post-processor reads the mapped spans like any model's: a prediction over the kept
    clips holding the moment comes out at the moment's seconds."""
    from momentkit.modeling.postprocess import PostProcessor

    model = tiny_model().eval()
    batch = tiny_batch(lengths=(60,), targets=False)
    index = torch.tensor([[3, 4, 10, 11, 12, 13, 40, 41]])
    selection = Selection(index, torch.ones_like(index, dtype=torch.bool), torch.ones(1, 8), [])
    mr_out = {
        "pred_logits": torch.tensor([[[5.0, -5.0], [-5.0, 5.0]]]),
        "pred_spans": torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]),  # kept clips [2, 6) first
        "saliency_scores": torch.zeros(1, 8),
    }
    out = model.video_outputs(mr_out, {}, selection, batch["video_mask"])
    (pred,) = PostProcessor(top_k=1)(out, batch)
    assert pred.pred_relevant_windows[0][:2] == [20.0, 28.0]  # clips 10..13, 2 s each


def test_losses_and_gradients():
    model = tiny_model(window_prob=0.0, keep_gt_prob=0.0).train()
    batch = tiny_batch()
    out = model(batch)
    losses = build_criterion(model.config)(out, batch)
    assert set(losses) == {"loss_mr", "loss_clip_selection", "loss_feature_distill", "loss"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert model.selection.mlp.layers[0].weight.grad.abs().sum() > 0
    assert model.fusion[0].input.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.mr.parameters())


def test_mr_loss_reaches_the_selection_through_the_straight_through_gate():
    model = tiny_model(window_prob=0.0, keep_gt_prob=0.0).train()
    model.config.loss.weights.update(loss_clip_selection=0.0, loss_feature_distill=0.0)
    batch = tiny_batch()
    losses = build_criterion(model.config)(model(batch), batch)
    assert set(losses) == {"loss_mr", "loss"}
    losses["loss"].backward()
    assert model.selection.mlp.layers[-1].weight.grad.abs().sum() > 0


def test_distillation_is_zero_when_nothing_is_trimmed():
    """keep_ratio 1 and threshold 0: step 0 keeps every clip, so step 1 visits the untrimmed
    video and its representation equals the teacher's; with trimming it differs."""
    batch = tiny_batch(lengths=(60, 40))
    whole = tiny_model(max_steps=2, keep_ratio=1.0, threshold=0.0, keep_gt_prob=0.0).train()
    out = whole(batch)
    assert len(out["selection_steps"]) == 2
    assert out["selection_steps"][0].kept.sum(1).tolist() == [60, 40]
    error = distillation_error(out["selection_steps"])
    assert error is not None and error.item() == 0.0
    losses = build_criterion(whole.config)(out, batch)
    assert losses["loss_feature_distill"].item() == 0.0
    trimmed = tiny_model(max_steps=2, keep_ratio=0.5, threshold=0.0, keep_gt_prob=0.0).train()
    assert distillation_error(trimmed(batch)["selection_steps"]).item() > 1e-4


def test_balanced_bce_by_hand():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, -2.0, 0.0, 0.0]])
    targets = torch.tensor([[True, False, False, False], [True, True, False, False]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]).bool()
    ln2 = float(np.log(2.0))
    row1 = ln2  # every clip has BCE ln 2, positives and negatives alike
    row2 = (
        float(torch.nn.functional.softplus(torch.tensor(-2.0)))
        + float(torch.nn.functional.softplus(torch.tensor(2.0)))
    ) / 2  # positives only: mean over the two positives
    assert float(balanced_bce(logits, targets, mask)) == pytest.approx((row1 + row2) / 2)


def test_frozen_mr_training_skips_the_mr_model():
    model = tiny_model()
    model.config.loss.weights["loss_mr"] = 0.0
    model.train()
    batch = tiny_batch()
    out = model(batch)
    assert "trimmed" not in out and "pred_spans" not in out
    losses = build_criterion(model.config)(out, batch)
    assert set(losses) == {"loss_clip_selection", "loss_feature_distill", "loss"}
    losses["loss"].backward()


def test_save_load_round_trip(tmp_path: Path):
    model = tiny_model().eval()
    model.save_pretrained(tmp_path / "m")
    loaded = MomentModel.from_pretrained(tmp_path / "m").eval()
    assert isinstance(loaded, ClipTrimming) and loaded.config == model.config
    batch = tiny_batch(targets=False)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch)["pred_spans"], model(batch)["pred_spans"])


def test_config_errors_name_the_field():
    with pytest.raises(FormatError, match="model.mr.name"):
        tiny_model(mr={"name": "nope"})
    with pytest.raises(FormatError, match="model.mr.hidden_dim.*'model.mr=\\{name"):
        tiny_model(mr={"name": "qd_detr", "hidden_dim": "32"})
    with pytest.raises(ValueError, match="min_clips"):
        tiny_model(min_clips=20)
    with pytest.raises(ValueError, match="keep_ratio"):
        tiny_model(keep_ratio=0.0)
    with pytest.raises(ValueError, match="leave clip features"):
        tiny_model(index_dim=14)
    with pytest.raises(ValueError, match="final_selection.*'windows'"):
        tiny_model(final_selection="windows")
    config = ClipTrimmingConfig(video_dim=16, text_dim=6, index_dim=4, mr=TINY_MR)
    assert config.feature_dim == 10 and config.mr_config().video_dim == 16 + 2
    plain = config.replace(mr_reads_index=False, use_cut_channels=False)
    assert plain.mr_config().video_dim == 12  # clip features + TEF, like a short-video model


def test_a_few_steps_learn_to_select_the_moment():
    """Clips 10-13 carry a feature the query asks for: 40 steps make them the kept ones."""
    torch.manual_seed(0)
    model = tiny_model(window_prob=0.0, max_steps=1, threshold=0.5)
    batch = tiny_batch(lengths=(60, 50))
    batch["video_feats"][:, 10:14, 0] += 3.0
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    criterion = build_criterion(model.config)
    first = None
    model.train()
    for _ in range(40):
        losses = criterion(model(batch), batch)
        first = first or losses["loss_clip_selection"].item()
        optim.zero_grad()
        losses["loss"].backward()
        optim.step()
    assert losses["loss_clip_selection"].item() < 0.5 * first
    model.eval()
    keep = model.select(batch).keep_mask(60)
    assert keep[:, 10:14].all()
    # the window alternative: one gap-free run of max_clips clips holding the moment
    model.config.final_selection = "window"
    selection = model.select(batch)
    keep = selection.keep_mask(60)
    assert selection.mask.sum(1).tolist() == [8, 8] and keep[:, 10:14].all()
    assert (selection.index[:, 1:] == selection.index[:, :-1] + 1).all()
    assert (selection.weight == 1.0).all()


# ----------------------------------------------------------------------------- integration
def trimming_run(root: Path, **changes) -> Path:
    """A run directory holding a tiny trimming model on the toy encoder's streams."""
    from momentkit.training.config import ExperimentConfig
    from momentkit.utils.io import write_json

    model = tiny_model(
        video_dim=4 + 3 + 2, text_dim=4, index_dim=3, max_clips=6, min_clips=2, **changes
    )
    cfg = ExperimentConfig.from_dict(
        {
            "model": model.config.to_dict(),
            "data": {
                "dataset": "synth",
                "video_features": [str(root / "feats" / s) for s in ("toy", "toy_spread")],
                "text_features": str(root / "feats" / "toy_text"),
                "max_v_len": None,
            },
        }
    )
    best = root / "run" / "best"
    model.save_pretrained(best)
    write_json(best / "experiment.json", cfg.to_dict())
    return root / "run"


def test_predictor_selects_clips_with_a_trimming_checkpoint(tmp_path: Path):
    from test_predictor import random_encoding  # registers the toy encoder

    from momentkit.inference import Predictor

    run = trimming_run(tmp_path)
    predictor = Predictor.from_checkpoint(run, encoder="toy")
    assert isinstance(predictor.scorer, TrimmedScorer) and predictor.window is None
    assert "clip selection" in predictor.description
    video = random_encoding(50)
    results = predictor.predict(video, ["red", "green blue"], top_k=3)
    for r in results:
        assert r.saliency.shape == (50,) and 1 <= len(r.moments) <= 3
        assert all(0 <= m.start < m.end <= video.duration for m in r.moments)
    windows = Predictor.from_checkpoint(run, encoder="toy", trim=False)
    assert windows.window == 6 and "every clip" in windows.description
    (whole,) = windows.predict(video, ["red"], top_k=None)
    assert max(m.end for m in whole.moments) > 12.0  # moments from later windows too


def test_every_clip_mode_equals_the_sliding_window_predictor(tmp_path: Path):
    """Without index/cut channels the MR model reads windows exactly as ModelScorer reads an
    ordinary model's: same moments, same saliency."""
    from test_predictor import random_encoding  # noqa: F401  (registers the toy encoder)

    from momentkit.encoders import build_encoder
    from momentkit.inference.model_scorer import ModelScorer

    model = tiny_model(
        video_dim=4 + 3 + 2, text_dim=4, index_dim=0, max_clips=6, min_clips=2,
        use_cut_channels=False,
    ).eval()  # fmt: skip
    encoder = build_encoder("toy")
    video = random_encoding(23)
    ours = TrimmedScorer(model, encoder, ("toy", "toy_spread"), 2.0, trim=False, nms_iou=None)
    ref = ModelScorer(model.mr, encoder, ("toy", "toy_spread"), 2.0, window=6, nms_iou=None)
    queries = ["red", "blue green"]
    for a, b in zip(ours.predict(video, queries, None), ref.predict(video, queries, None)):
        np.testing.assert_allclose(a.saliency, b.saliency, atol=1e-5)
        got = sorted((round(m.start, 3), round(m.end, 3), round(m.score, 4)) for m in a.moments)
        want = sorted((round(m.start, 3), round(m.end, 3), round(m.score, 4)) for m in b.moments)
        assert got == want


def test_search_cli_with_a_trimming_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture):
    from test_predictor import COLORS  # noqa: F401  (registers the toy encoder)

    from momentkit.cli.main import main
    from momentkit.video.write import write_video

    frames = np.full((150, 16, 16, 3), 128, np.uint8)
    frames[40:60] = (220, 20, 20)
    video = write_video(tmp_path / "long.mp4", frames, fps=5)  # 30 s: 15 clips > 6
    run = trimming_run(tmp_path)
    assert main(["search", str(video), "red", "--checkpoint", str(run), "--encoder", "toy",
                 "--json"]) == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert doc["predictor"].startswith("trimming -> qd_detr, clip selection")
    assert len(doc["results"][0]["saliency"]) == 15
    assert main(["search", str(video), "red", "--checkpoint", str(run), "--encoder", "toy",
                 "--no-trim", "--json"]) == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert "every clip, windows of 6" in doc["predictor"]
