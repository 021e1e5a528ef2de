"""The speed-ups compute what they replace: outputs and gradients against the plain form.

Each fast path (issue 33) is checked against the straightforward computation it replaces, on
inputs that exercise its edge cases; the golden parity fixtures (tests/test_parity_*.py) check
the models that use them against the official code as well.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from momentkit.modeling.distill_align import FeatureQueue, distill_align_loss
from momentkit.modeling.prelu import PReLU, prelu

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------ PReLU
@pytest.mark.parametrize("shape", [(64, 48), (3, 5, 7), (1,)])
def test_prelu_matches_torch_forward_and_gradients(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    x.view(-1)[: max(1, x.numel() // 10)] = 0.0  # the kink: x == 0 takes the slope side
    grad = torch.randn(*shape, generator=g)
    ours, theirs = PReLU(), torch.nn.PReLU()
    for m in (ours, theirs):
        m.weight.data.fill_(0.3)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    ya.backward(grad)
    yb.backward(grad)
    assert torch.equal(ya, yb)
    assert torch.equal(xa.grad, xb.grad)  # bit-identical input gradient
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-5, atol=1e-6)


def test_prelu_state_dict_and_no_grad_path_are_torchs() -> None:
    assert set(PReLU().state_dict()) == set(torch.nn.PReLU().state_dict())
    x, w = torch.randn(4, 6), torch.tensor([0.2])
    with torch.no_grad():
        assert torch.equal(prelu(x, w), F.prelu(x, w))
    per_channel = torch.rand(6)  # one slope per channel: torch's own kernel
    assert torch.equal(prelu(x, per_channel), F.prelu(x, per_channel))


def test_prelu_slope_gradient_is_the_negative_side_dot_product() -> None:
    x = torch.tensor([[-2.0, 3.0], [0.0, -1.0]])
    w = torch.tensor([0.5], requires_grad=True)
    prelu(x, w).sum().backward()
    assert w.grad is not None and float(w.grad) == -3.0


# ------------------------------------------------------------------------------ queue matmul
def test_queue_similarity_backward_sees_the_queue_before_its_enqueue() -> None:
    """Loss, enqueue, backward (a training step): the gradient equals the one computed from a
    copy of the queue taken before the enqueue, bit for bit, and the queue keeps its new rows."""
    torch.manual_seed(0)
    queue = FeatureQueue(10, 4)
    queue.ptr.fill_(8)  # the next enqueue of 3 rows wraps around: rows 8, 9, 0
    copy = queue.features.clone()
    x = torch.randn(3, 4, requires_grad=True)
    grad = torch.randn(3, 10)
    queue.similarity(x, enqueued=3).backward(grad, inputs=[x])
    fresh = torch.randn(3, 4)
    x2 = x.detach().clone().requires_grad_()
    out = queue.similarity(x2, enqueued=3)
    assert torch.equal(out, x2.detach() @ copy.T)
    queue.enqueue(fresh)
    after = queue.features.clone()
    out.backward(grad)
    assert torch.equal(x2.grad, grad @ copy)
    assert torch.equal(queue.features, after)  # the enqueued rows are back in place
    assert torch.equal(after[[8, 9, 0]], fresh)


def test_queue_similarity_refuses_a_second_enqueue_before_backward() -> None:
    queue = FeatureQueue(8, 4)
    x = torch.randn(2, 4, requires_grad=True)
    out = queue.similarity(x, enqueued=2)
    queue.enqueue(torch.randn(2, 4))
    queue.enqueue(torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="enqueued more than once"):
        out.sum().backward()


def test_distill_align_loss_with_queues_equals_the_copied_queues() -> None:
    torch.manual_seed(1)
    video_queue, text_queue = FeatureQueue(16, 8), FeatureQueue(16, 8)
    video_queue.ptr.fill_(14)
    unit = [F.normalize(torch.randn(4, 8), dim=1) for _ in range(4)]
    temperature = torch.tensor(0.07, requires_grad=True)

    def run(queues: tuple) -> tuple[torch.Tensor, ...]:
        v, t = (u.clone().requires_grad_() for u in unit[:2])
        temperature.grad = None
        loss = distill_align_loss(v, t, unit[2], unit[3], *queues, 0.4, temperature)
        video_queue.enqueue(unit[2])
        text_queue.enqueue(unit[3])
        loss.backward()
        return loss.detach(), v.grad, t.grad, temperature.grad.clone()

    before = (video_queue.features.clone(), text_queue.features.clone())
    state = [(q.features.clone(), q.ptr.clone()) for q in (video_queue, text_queue)]
    copied = run(before)
    for q, (features, ptr) in zip((video_queue, text_queue), state):
        q.features.copy_(features)
        q.ptr.copy_(ptr)
    shared = run((video_queue, text_queue))
    for a, b in zip(copied, shared):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------- packed valid rows
def test_encoder_skipping_padding_gives_the_same_valid_outputs_and_gradients() -> None:
    from momentkit.modeling.transformer import TransformerEncoder

    torch.manual_seed(0)
    encoder = TransformerEncoder(16, 2, 2, 32, dropout=0.0, activation="prelu")
    lengths = torch.tensor([7, 3, 5])
    mask = torch.arange(7)[None] < lengths[:, None]
    x0, pos = torch.randn(3, 7, 16), torch.randn(3, 7, 16)
    grad = torch.randn(3, 7, 16) * mask[..., None]
    results = {}
    for skip in (False, True):
        encoder.zero_grad()
        x = x0.clone().requires_grad_()
        out = encoder(x, pos, mask, skip_padding=skip)
        out.backward(grad)
        params = {n: p.grad.clone() for n, p in encoder.named_parameters()}
        results[skip] = (out.detach() * mask[..., None], x.grad * mask[..., None], params)
    plain, packed = results[False], results[True]
    torch.testing.assert_close(packed[0], plain[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed[1], plain[1], rtol=1e-5, atol=1e-6)
    for name, g in plain[2].items():
        torch.testing.assert_close(packed[2][name], g, rtol=1e-4, atol=1e-6, msg=name)
    out = encoder(x0, pos, mask, skip_padding=True)
    assert float(out.detach()[~mask].abs().max()) == 0.0  # padded rows: zeros


def test_encoder_without_padding_takes_the_plain_path() -> None:
    from momentkit.modeling.packing import packing_of

    assert packing_of(None) is None and packing_of(torch.ones(2, 3, dtype=torch.bool)) is None
    packing = packing_of(torch.tensor([[True, False], [True, True]]))
    assert packing is not None and packing.rows.tolist() == [0, 2, 3]
    x = torch.arange(8.0).view(2, 2, 2)
    assert packing.pack(x).tolist() == [[0.0, 1.0], [4.0, 5.0], [6.0, 7.0]]
    assert packing.pad(packing.pack(x)).tolist() == [[[0, 1], [0, 0]], [[4, 5], [6, 7]]]


@pytest.mark.parametrize("drop_path", [0.0, 0.3])
def test_convnext_block_skipping_padding_gives_the_same_outputs_and_gradients(
    drop_path: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """UniMD's blocks run LayerNorm + MLP on the valid steps only (37-43 % of its Charades-STA
    steps are padding): the output (zero at padded steps), the input gradient and every
    parameter's gradient equal the plain path's, stochastic depth included."""
    from momentkit.modeling import convnext_pyramid
    from momentkit.modeling.packing import Packing

    torch.manual_seed(0)
    block = convnext_pyramid.ConvNeXtBlock1d(16, 3, drop_path=drop_path, layer_scale_init=0.5)
    block.train()
    lengths = torch.tensor([11, 4, 7])
    mask = torch.arange(12)[None] < lengths[:, None]  # 42 % padding
    x0, grad = torch.randn(3, 16, 12), torch.randn(3, 16, 12)
    packed_calls = []
    monkeypatch.setattr(
        Packing, "pack", lambda self, x, f=Packing.pack: packed_calls.append(1) or f(self, x)
    )
    results = {}
    for plain in (True, False):
        monkeypatch.setattr(convnext_pyramid, "PACK_MIN_PADDING", 1.0 if plain else 0.1)
        block.zero_grad()
        x = x0.clone().requires_grad_()
        torch.manual_seed(1)  # the same stochastic-depth draws
        out, out_mask = block(x, mask)
        out.backward(grad)
        grads = {n: p.grad.clone() for n, p in block.named_parameters()}
        results[plain] = (out.detach(), x.grad, grads)
        assert torch.equal(out_mask, mask)
    assert len(packed_calls) == 1  # the fast path ran once, the plain one did not pack
    (out_a, dx_a, g_a), (out_b, dx_b, g_b) = results[True], results[False]
    assert float(out_b[~mask[:, None].expand_as(out_b)].abs().max()) == 0.0
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dx_b, dx_a, rtol=1e-5, atol=1e-6)
    for name, g in g_a.items():
        torch.testing.assert_close(g_b[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_convnext_block_packs_only_from_the_padding_threshold() -> None:
    """Below :data:`~momentkit.modeling.mlp.PACK_MIN_PADDING` of padding every step runs the
    branch (no gather), and a fully valid batch never packs."""
    from unittest.mock import patch

    from momentkit.modeling.convnext_pyramid import ConvNeXtBlock1d
    from momentkit.modeling.packing import Packing

    block = ConvNeXtBlock1d(8, 3).eval()
    x = torch.randn(2, 8, 20)
    for lengths, packs in (([20, 20], False), ([20, 19], False), ([20, 12], True)):
        mask = torch.arange(20)[None] < torch.tensor(lengths)[:, None]
        with patch.object(Packing, "pack", autospec=True, side_effect=Packing.pack) as spy:
            block(x, mask)
        assert spy.called is packs, lengths


# ------------------------------------------------------ QD-DETR: no negatives in predictions
def test_qd_detr_predictions_skip_the_negative_pairs_and_stay_equal(make_batch) -> None:
    from tiny_configs import TINY_DETR

    from momentkit.models import build_model
    from momentkit.models.qd_detr import OFFICIAL

    torch.manual_seed(0)
    model = build_model({"name": "qd_detr", **TINY_DETR, **OFFICIAL}).eval()
    batch = make_batch()
    with torch.no_grad():  # the released code's evaluation: negative pairs too
        full = model(batch)
    with torch.inference_mode():  # prediction (inference_loop, scorers): not needed
        fast = model(batch)
    assert "saliency_scores_neg" in full and "saliency_scores_neg" not in fast
    for key in ("pred_logits", "pred_spans", "saliency_scores"):
        torch.testing.assert_close(fast[key], full[key], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------- inference: attention per item
def test_packed_attention_per_item_equals_the_masked_padded_attention() -> None:
    """Evaluation, a few items: packed self-attention runs item by item without masks; the
    valid outputs are those of the padded, key-masked path (an item of one row too)."""
    from momentkit.modeling.attention import PER_ITEM_MAX
    from momentkit.modeling.transformer import TransformerEncoder

    assert PER_ITEM_MAX >= 4  # the batch below takes the per-item path
    torch.manual_seed(0)
    encoder = TransformerEncoder(16, 2, 2, 32, dropout=0.1).eval()
    lengths = torch.tensor([7, 3, 1, 5])
    mask = torch.arange(7)[None] < lengths[:, None]
    mask[3, 1] = False  # a hole inside an item (video then words): rows still contiguous packed
    x, pos = torch.randn(4, 7, 16), torch.randn(4, 7, 16)
    with torch.no_grad():
        plain = encoder(x, pos, mask, skip_padding=False) * mask[..., None]
        per_item = encoder(x, pos, mask, skip_padding=True)
    torch.testing.assert_close(per_item, plain, rtol=1e-5, atol=1e-6)
    x.requires_grad_()  # gradients flow through the per-item path too (evaluation mode)
    encoder(x, pos, mask, skip_padding=True).sum().backward()
    assert x.grad is not None and bool(x.grad[~mask].eq(0).all())


def test_packing_offsets_delimit_each_items_rows() -> None:
    from momentkit.modeling.packing import Packing

    mask = torch.tensor([[True, False, True], [False, False, False], [True, True, True]])
    assert Packing.of(mask).offsets == [0, 2, 2, 5]


# ----------------------------------------------------------------- in-place ReLU
@pytest.mark.parametrize("activation", ["relu", "gelu", "prelu"])
def test_feed_forward_in_place_relu_is_bit_identical(activation: str) -> None:
    from momentkit.modeling.transformer import FeedForward

    torch.manual_seed(0)
    ffn = FeedForward(16, 64, dropout=0.1, activation=activation).train()
    x = torch.randn(2, 37, 16)
    torch.manual_seed(1)
    xa = x.clone().requires_grad_()
    out = ffn(xa)
    torch.manual_seed(1)  # the same dropout mask
    xb = x.clone().requires_grad_()
    reference = ffn.linear2(ffn.dropout(ffn.activation(ffn.linear1(xb))))
    assert torch.equal(out, reference)
    grad = torch.randn_like(out)
    out.backward(grad)
    grads = [p.grad.clone() for p in ffn.parameters()]
    ffn.zero_grad()
    reference.backward(grad)
    assert torch.equal(xa.grad, xb.grad)
    for a, b in zip(grads, (p.grad for p in ffn.parameters())):
        assert torch.equal(a, b)


# ------------------------------------------- inference: Moment-DETR without padding columns
def test_moment_detr_evaluation_drops_columns_of_padding_only(make_batch) -> None:
    from tiny_configs import TINY_DETR

    from momentkit.models import build_model

    torch.manual_seed(0)
    model = build_model({"name": "moment_detr", **TINY_DETR}).eval()
    batch = make_batch(video_lens=(9, 7, 8), text_lens=(4, 3, 4))
    padded = dict(batch)  # two more clip and two more word columns, padding in every item
    for key, mask_key in (("video_feats", "video_mask"), ("text_feats", "text_mask")):
        feats, mask = batch[key], batch[mask_key]
        padded[key] = torch.cat([feats, feats.new_zeros(len(feats), 2, feats.shape[-1])], 1)
        padded[mask_key] = torch.cat([mask, mask.new_zeros(len(mask), 2)], 1)
    with torch.no_grad():
        ref, out = model(batch), model(padded)
    for key in ("pred_logits", "pred_spans"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=1e-6)
    assert out["saliency_scores"].shape == padded["video_mask"].shape
    assert torch.equal(out["video_mask"], padded["video_mask"])
    valid = batch["video_mask"]
    torch.testing.assert_close(
        out["saliency_scores"][:, :9][valid], ref["saliency_scores"][valid], rtol=1e-5, atol=1e-6
    )
    bias = model.saliency_proj.bias.detach()
    assert bool((out["saliency_scores"][:, 9:] == bias).all())  # a zero memory row's score
    one = {k: v[:1] if isinstance(v, torch.Tensor) else v for k, v in padded.items()}
    with torch.no_grad():  # one query: no padding left, no masks
        single = model(one)
    torch.testing.assert_close(single["pred_spans"], ref["pred_spans"][:1], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------ batched post-processing
@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"top_k": None, "nms_threshold": 0.5},
        {"round_to_clip": False, "span_scale": "duration", "clamp": "none"},
        {"top_k": None, "span_scale": "duration", "rounding": "multiple", "clamp": "fixed"},
        {"top_k": 3, "rounding": "multiple", "clamp": "duration", "nms_threshold": 0.3},
    ],
)
def test_batched_postprocessing_equals_the_per_query_windows(settings: dict) -> None:
    from momentkit.modeling.postprocess import PostProcessor

    g = torch.Generator().manual_seed(0)
    post = PostProcessor(**settings)
    batch, queries = 16, 10
    logits = torch.randn(batch, queries, 2, generator=g) * 3
    spans = torch.rand(batch, queries, 2, generator=g) * 1.4 - 0.2  # some outside [0, 1]
    spans[:, 1] = spans[:, 0]  # tied windows and scores
    logits[:, 1] = logits[:, 0]
    durations = (torch.rand(batch, generator=g) * 150 + 0.5).tolist()
    durations[:3] = [0.7, 150.0, 149.3]  # shorter than a clip, the cap, off the grid
    for clip_len in (2.0, 1.7):
        timelines = [max(1, int(d // clip_len)) * clip_len for d in durations]
        rows = post.batch_windows(logits, spans, durations, clip_len, timelines)
        for i in range(batch):
            assert rows[i] == post.windows(
                logits[i], spans[i], durations[i], clip_len, timelines[i]
            )
    assert post.batch_windows(logits[:0], spans[:0], [], 2.0, []) == []


# ------------------------------------------------- PReLU backward: one leaky_relu_backward pass
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_prelu_input_gradient_is_torchs_in_other_dtypes(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 48, generator=g).to(dtype)
    x.view(-1)[:50] = 0.0
    grad = torch.randn(64, 48, generator=g).to(dtype)
    ours, theirs = PReLU().to(dtype), torch.nn.PReLU().to(dtype)
    for m in (ours, theirs):
        m.weight.data.fill_(0.3)  # not a bfloat16 value: rounded the same way on both sides
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours(xa).backward(grad)
    theirs(xb).backward(grad)
    assert torch.equal(xa.grad, xb.grad)


# ------------------------------------- cross-attention of shared items (query/context index)
@pytest.mark.parametrize(
    ("with_pos", "pre_norm", "ffn_skip_norm"),
    [(False, False, True), (True, False, True), (True, True, False), (False, False, False)],
)
def test_cross_attention_of_indexed_items_equals_the_repeated_items(
    with_pos: bool, pre_norm: bool, ffn_skip_norm: bool
) -> None:
    """QD-DETR's negative pairs: the T2V layers project each query's words once and the first
    layer each video's clip queries once, and index the projections; outputs and every
    gradient equal those of the repeated videos and (rolled) queries."""
    from momentkit.modeling.transformer import CrossAttentionEncoder

    torch.manual_seed(0)
    t2v = CrossAttentionEncoder(
        16, 2, 2, 32, dropout=0.0, activation="prelu", pre_norm=pre_norm,
        ffn_skip_norm=ffn_skip_norm,
    )  # fmt: skip
    b, length, words = 3, 7, 5
    video0, vpos = torch.randn(b, length, 16), torch.randn(b, length, 16)
    text0, tpos0 = torch.randn(b, words, 16), torch.randn(b, words, 16)
    mask0 = torch.arange(words)[None] < torch.tensor([5, 2, 4])[:, None]
    own = torch.arange(b)
    video_index, text_index = torch.cat([own, own]), torch.cat([own, own.roll(-1)])
    allowed = torch.rand(2 * b, 2, length, words, generator=torch.Generator().manual_seed(1)) > 0.3
    allowed[..., 0] = True  # every query keeps a key
    gate = torch.rand(2 * b, length, generator=torch.Generator().manual_seed(2))
    grad = torch.randn(2 * b, length, 16)
    results = []
    for indexed in (False, True):
        t2v.zero_grad()
        video, text = video0.clone().requires_grad_(), text0.clone().requires_grad_()
        tpos = tpos0 if with_pos else None
        masks = mask0[text_index]
        if indexed:
            out = t2v(
                video, text, vpos, tpos, masks, gate, allowed=allowed,
                context_index=text_index, query_index=video_index,
            )  # fmt: skip
        else:
            rpos = tpos.index_select(0, text_index) if tpos is not None else None
            out = t2v(
                video.index_select(0, video_index), text.index_select(0, text_index),
                vpos.index_select(0, video_index), rpos, masks, gate, allowed=allowed,
            )  # fmt: skip
        out.backward(grad)
        params = {n: p.grad.clone() for n, p in t2v.named_parameters()}
        results.append((out.detach(), video.grad, text.grad, params))
    (ref, ref_video, ref_text, ref_params), (out, gvideo, gtext, params) = results
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gvideo, ref_video, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gtext, ref_text, rtol=1e-5, atol=1e-6)
    for name, g in ref_params.items():
        torch.testing.assert_close(params[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_qd_detr_training_step_is_the_repeated_context_computation(make_batch) -> None:
    """The whole QD-DETR forward and backward (negative pairs, tiled T2V mask) with the
    indexed videos and queries equals the one with them repeated explicitly."""
    from tiny_configs import TINY_DETR

    from momentkit.modeling.transformer import CrossAttentionEncoder
    from momentkit.models import build_criterion, build_model
    from momentkit.models.qd_detr import OFFICIAL

    torch.manual_seed(0)
    config = {"name": "qd_detr", **TINY_DETR, **OFFICIAL, "dropout": 0.0, "input_dropout": 0.0}
    model = build_model(config).train()
    criterion = build_criterion(model.config)
    batch = make_batch()
    plain_forward = CrossAttentionEncoder.forward
    indexed = []

    def repeated(
        self, x, context, pos=None, context_pos=None, *args, context_index=None,
        query_index=None, **kw,
    ):  # fmt: skip
        indexed.append((context_index is not None, query_index is not None))
        if context_index is not None:  # the reference: the queries repeated, no index
            context = context.index_select(0, context_index)
            context_pos = None if context_pos is None else context_pos[context_index]
        if query_index is not None:  # and the videos
            x, pos = x.index_select(0, query_index), pos.index_select(0, query_index)
        return plain_forward(self, x, context, pos, context_pos, *args, **kw)

    results = []
    for patch in (False, True):
        model.zero_grad()
        if patch:
            CrossAttentionEncoder.forward = repeated
        try:
            out = model(batch)
            loss = criterion(out, batch)["loss"]
        finally:
            CrossAttentionEncoder.forward = plain_forward
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out["saliency_scores_neg"].detach(), loss.detach(), grads))
    assert indexed == [(True, True)]  # the model indexes; the reference repeated the items
    (neg, loss, grads), (ref_neg, ref_loss, ref_grads) = results
    torch.testing.assert_close(neg, ref_neg, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert set(grads) == set(ref_grads)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


# ------------------------------------------------- inference loop: modes switched only if needed
def test_inference_loop_keeps_modes_and_leaves_an_eval_model_untouched(make_batch) -> None:
    """A model in training mode predicts in eval mode and comes back in training mode (a
    submodule in training mode under an eval root predicts in eval mode too); a model already
    in eval mode is not walked by eval()/train() (a tenth of a one-query prediction)."""
    from unittest.mock import patch

    from tiny_configs import TINY_DETR

    from momentkit.modeling.postprocess import PostProcessor
    from momentkit.models import build_model
    from momentkit.training.trainer import inference_loop

    torch.manual_seed(0)
    model = build_model({"name": "moment_detr", **TINY_DETR})
    batch, post = make_batch(), PostProcessor()
    seen: list[bool] = []
    hook = model.register_forward_pre_hook(
        lambda m, a: seen.append(any(x.training for x in m.modules()))
    )
    train_preds = inference_loop(model.train(), [batch], torch.device("cpu"), post)
    assert seen == [False] and model.training and all(m.training for m in model.modules())
    model.eval()
    model.encoder.train()  # one submodule left in training mode
    inference_loop(model, [batch], torch.device("cpu"), post)
    assert seen[-1] is False and not model.training  # predicted in eval mode, root restored
    model.eval()
    with patch.object(torch.nn.Module, "train", side_effect=AssertionError("walked")) as walk:
        eval_preds = inference_loop(model, [batch], torch.device("cpu"), post)
    assert not walk.called and seen[-1] is False
    hook.remove()
    assert [p.qid for p in eval_preds] == [p.qid for p in train_preds]
    for a, b in zip(eval_preds, train_preds):  # eval mode both times: the same predictions
        assert a.pred_relevant_windows == b.pred_relevant_windows
        assert a.pred_saliency_scores == b.pred_saliency_scores


def test_any_training_finds_a_deep_submodule_as_modules_does() -> None:
    """``any_training`` (the inference loop's check) agrees with ``any(m.training for m in
    model.modules())`` on a deep leaf, with ``None`` children, a shared module and a cycle."""
    from momentkit.training.trainer import any_training

    leaf = torch.nn.Linear(2, 2)
    shared = torch.nn.Sequential(torch.nn.ReLU(), leaf)
    model = torch.nn.Sequential(torch.nn.Sequential(shared), shared)
    model.register_module("absent", None)
    model.eval()
    assert not any_training(model)
    leaf.train()
    assert any_training(model) and any(m.training for m in model.modules())
    leaf.eval()
    shared.register_module("loop", model)  # a module inside itself: visited once, no hang
    assert not any_training(model)
    shared[0].training = True  # the ReLU, reached through two parents and the loop
    assert any_training(model)


@pytest.mark.parametrize("levels", [2, 7, 1000])
def test_top_indices_are_the_stable_descending_sort_cut(levels: int) -> None:
    """``top_indices`` picks and orders exactly as a stable descending argsort cut to ``k``,
    ties at the cut included (scores drawn from few distinct values)."""
    from momentkit.modeling.postprocess import top_indices

    g = torch.Generator().manual_seed(levels)
    for n, k in [(28260, 2000), (1000, 10), (50, 49), (5, 0), (9, 3), (300, 1), (0, 4)]:
        scores = torch.randint(0, levels, (n,), generator=g).float() / levels
        want = scores.argsort(descending=True, stable=True)[:k]
        assert torch.equal(top_indices(scores, k), want), (n, k)


# ---------------------------------- masked convolutions: trailing padding left out
@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "groups"),
    [(3, 1, None, 1), (7, 1, None, 16), (1, 1, None, 1), (2, 2, 0, 1)],
)
def test_masked_conv_reads_only_what_valid_outputs_read(
    kernel: int, stride: int, padding: int | None, groups: int
) -> None:
    """With a batch's videos ending well before the padded length, ``MaskedConv1d`` convolves
    only the input its valid outputs read (padded values included: the official UniMD keeps
    them) and zero-fills the rest: outputs and gradients of the whole convolution, masked."""
    from momentkit.modeling import convnext_pyramid
    from momentkit.modeling.convnext_pyramid import MaskedConv1d

    torch.manual_seed(0)
    conv = MaskedConv1d(16, 16, kernel, stride=stride, padding=padding, groups=groups)
    x = torch.randn(2, 16, 96, requires_grad=True)  # non-zero at padded steps too
    mask = torch.arange(96)[None] < torch.tensor([[53], [40]])
    got, got_mask = conv(x, mask)
    plain = conv.conv(x)
    want = plain * got_mask[:, None]
    assert got.shape == want.shape and torch.equal(got_mask, mask[:, ::stride][:, : want.shape[-1]])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    w = torch.randn_like(want)
    params = [x, *conv.parameters()]
    g_got = torch.autograd.grad((got * w).sum(), params)
    g_want = torch.autograd.grad((want * w).sum(), params)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # the trimmed path was taken: the plain convolution would have read all 96 steps
    seen: list[int] = []
    hook = conv.conv.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[-1]))
    conv(x, mask)
    hook.remove()
    assert seen[0] < 96
    old = convnext_pyramid.TRIM_MIN_STEPS
    convnext_pyramid.TRIM_MIN_STEPS = 10**6  # never trim: the whole input
    try:
        seen.clear()
        hook = conv.conv.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[-1]))
        conv(x, mask)
        hook.remove()
    finally:
        convnext_pyramid.TRIM_MIN_STEPS = old
    assert seen == [96]


# ------------------------------------------ UniMD heads: every level in one sequence
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("keep_padding", [False, True])
def test_query_heads_on_one_level_sequence_equal_level_by_level(
    keep_padding: bool, padded: bool
) -> None:
    """The heads' towers, query product and dynamic convolution on the concatenated levels
    (:class:`LevelSequence`) give each level's outputs and gradients of the per-level calls,
    with padded steps kept (the official form: they reach the next convolution) or zeroed;
    ``padded``: both videos end well before the padded length (UniMD's 288), so the levels'
    trailing padding is left out of the sequence (and the convolutions') and zero-filled."""
    import torch.nn.functional as F

    from momentkit.modeling.query_heads import (
        QueryClassificationHead,
        QueryRegressionHead,
        dynamic_conv1d,
    )

    torch.manual_seed(0)
    b, c, q, lengths = 2, 16, 5, [64, 32, 16, 8, 4, 2] if padded else [32, 16, 8, 4, 2, 1]
    cls = QueryClassificationHead(c, c, keep_padding=keep_padding)
    reg = QueryRegressionHead(c, c, c, len(lengths), keep_padding=keep_padding,
                              query_hidden_dim=24, query_dropout=0.0)  # fmt: skip
    with torch.no_grad():  # non-trivial LayerNorm biases: kept padding is not zero
        for m in (cls, reg):
            for norm in m.tower.norms:
                norm.bias.normal_()
            for conv in m.tower.convs:
                conv.conv.weight.mul_(3.0)
    valid = [[t, max(1, t - t // 3)] for t in lengths]  # the second video is shorter
    if padded:  # 36 and 30 of 64 steps, halved (rounded up) level by level
        valid = [[-(-36 // 2**i), -(-30 // 2**i)] for i in range(len(lengths))]
    levels = [torch.randn(b, c, t, requires_grad=True) for t in lengths]
    masks = [torch.arange(t)[None] < torch.tensor(v)[:, None] for t, v in zip(lengths, valid)]
    queries = torch.randn(b, q, c, requires_grad=True)

    def per_level() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, dists = [], []
        weight, bias = reg.kernels(queries)
        for level, (x, m) in enumerate(zip(levels, masks)):
            z = cls.tower(x, m)
            lg = cls.scale * torch.einsum("bqc,bct->bqt", queries, z) + cls.bias
            logits.append(lg * m[:, None])
            z = reg.tower(x, m)
            d = dynamic_conv1d(z, weight, bias) * m[:, None, None]
            dists.append(F.relu(reg.scales[level] * d).transpose(-1, -2))
        return logits, dists

    want_c, want_r = per_level()
    got_c, got_r = cls(levels, masks, queries), reg(levels, masks, queries)
    for got, want in zip(got_c + got_r, want_c + want_r):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    weights = [torch.randn_like(t) for t in want_c + want_r]

    def grads(outs: list[torch.Tensor]) -> list[torch.Tensor]:
        loss = sum((o * w).sum() for o, w in zip(outs, weights))
        params = [*levels, queries, *cls.parameters(), *reg.parameters()]
        return list(torch.autograd.grad(loss, params, allow_unused=True))

    new_grads, old_grads = grads(got_c + got_r), grads(want_c + want_r)
    assert [g is None for g in new_grads] == [g is None for g in old_grads]
    for g_new, g_old in zip(new_grads, old_grads):
        if g_new is not None:
            torch.testing.assert_close(g_new, g_old, rtol=1e-4, atol=1e-5)


# ------------------------------------------ inference: row blocks and grouped attention
@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 8 rows of 16-wide intermediates (and 1-2 items of attention) for tiny models."""
    from momentkit.modeling import row_blocks

    monkeypatch.setattr(row_blocks, "BLOCK_BYTES", 8 * 16 * 4)
    monkeypatch.setattr(row_blocks, "MIN_BLOCK_ROWS", 8)


def test_row_blocks_split_only_without_autograd(small_blocks) -> None:
    from momentkit.modeling.row_blocks import by_row_blocks

    seen: list[int] = []

    def rows(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[:-1].numel())
        return torch.cat([x.sum(-1, keepdim=True), x * 2], -1)

    x = torch.randn(3, 13, 16)
    with torch.no_grad():
        out = by_row_blocks(rows, x, 16)
    assert seen == [8, 8, 8, 8, 7]  # 39 rows in blocks of 8
    assert out.shape == (3, 13, 17) and torch.equal(out, rows(x))
    seen.clear()
    by_row_blocks(rows, x.requires_grad_(), 16)  # autograd records: one call
    assert seen == [39]
    seen.clear()
    with torch.no_grad():
        by_row_blocks(rows, x[:, :1], 16)  # 3 rows: under two blocks, one call
    assert seen == [3]


def test_feed_forward_and_input_projection_in_blocks_equal_the_whole(small_blocks) -> None:
    from momentkit.modeling.mlp import InputProjection
    from momentkit.modeling.transformer import FeedForward

    torch.manual_seed(0)
    ffn = FeedForward(16, 32, dropout=0.1).eval()
    proj = InputProjection(24, 16, num_layers=2, dropout=0.5).eval()
    x, feats = torch.randn(5, 11, 16), torch.randn(5, 11, 24)
    mask = torch.ones(5, 11, dtype=torch.bool)
    mask[1, 9:] = False  # below the packing threshold: every row projected, padding zeroed
    whole = ffn(x), proj(feats, mask), proj(feats)
    with torch.no_grad():
        blocks = ffn(x), proj(feats, mask), proj(feats)
    for a, b in zip(blocks, whole):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_grouped_attention_equals_the_whole_padded_batch(small_blocks) -> None:
    """Evaluation of many items: packed self-attention in groups of items (here 1 item a
    group: 7 rows x 3 x 16 wide > 8 x 16) gives the padded, key-masked batch's valid rows."""
    from momentkit.modeling import attention
    from momentkit.modeling.transformer import TransformerEncoder

    torch.manual_seed(0)
    encoder = TransformerEncoder(16, 2, 2, 32, dropout=0.1).eval()
    lengths = torch.tensor([7, 3, 1, 5, 6, 7, 2])
    assert len(lengths) > attention.PER_ITEM_MAX  # not the per-item path
    mask = torch.arange(7)[None] < lengths[:, None]
    mask[3, 1] = False
    x, pos = torch.randn(7, 7, 16), torch.randn(7, 7, 16)
    calls = []
    grouped = attention.grouped_attention

    def counted(*args, **kwargs):
        calls.append(args[-1])
        return grouped(*args, **kwargs)

    attention.grouped_attention = counted
    try:
        with torch.no_grad():
            plain = encoder(x, pos, mask, skip_padding=False) * mask[..., None]
            out = encoder(x, pos, mask, skip_padding=True)
    finally:
        attention.grouped_attention = grouped
    assert calls == [1, 1]  # both layers, one item a group
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_prelu_slope_gradient_in_half_precision_is_summed_in_float32(dtype: torch.dtype) -> None:
    """The slope gradient of a bf16 / fp16 activation is the float32 sum of its products: its
    error against the exact (float64) sum of the same values is float32 rounding, far below
    one bf16 / fp16 rounding step (what a dot product in the activation's dtype makes)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(300, 1024, generator=g).to(dtype)
    grad = torch.randn(300, 1024, generator=g).to(dtype)
    w = torch.tensor([0.25], requires_grad=True)
    prelu(x.requires_grad_(), w).backward(grad)
    exact = torch.dot(x.detach().double().clamp(max=0).reshape(-1), grad.double().reshape(-1))
    assert w.grad is not None and w.grad.dtype == torch.float32
    assert abs(float(w.grad) - float(exact)) <= 1e-5 * float(exact.abs()) + 1e-4


def test_training_mode_without_autograd_keeps_whole_batch_dropout(small_blocks) -> None:
    """Under ``torch.no_grad`` in training mode (dropout on) nothing is split: the same seed
    draws the same masks as with autograd, and attention keeps its dropout."""
    from momentkit.modeling.mlp import InputProjection
    from momentkit.modeling.transformer import FeedForward, TransformerEncoder

    torch.manual_seed(0)
    ffn, proj = FeedForward(16, 32, dropout=0.3).train(), InputProjection(24, 16, 2, 0.5).train()
    encoder = TransformerEncoder(16, 2, 1, 32, dropout=0.3).train()
    x, feats = torch.randn(5, 11, 16), torch.randn(5, 11, 24)
    mask = torch.arange(11)[None] < torch.tensor([11, 3, 7, 9, 5, 2, 8])[:, None]
    xe, pe = torch.randn(7, 11, 16), torch.randn(7, 11, 16)
    outs = []
    for grad in (True, False):
        torch.manual_seed(1)
        with torch.set_grad_enabled(grad):
            outs.append((ffn(x), proj(feats), encoder(xe, pe, mask, skip_padding=True)))
    for a, b in zip(*outs):
        assert torch.equal(a, b)
