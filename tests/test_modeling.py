"""Shared blocks: dropout, position encodings, MLPs, attention, transformer layers, anchor
decoder, span head and post-processing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import momentkit.modeling.dropout as dropout_module
from momentkit.data.records import MomentPrediction
from momentkit.modeling.anchor_decoder import AnchorDecoder, inverse_sigmoid
from momentkit.modeling.attention import (
    MultiheadAttention,
    ProjectedAttention,
    merge_heads,
    scaled_dot_attention,
    split_heads,
)
from momentkit.modeling.dropout import Dropout, fast_dropout, keep_mask, random_bytes
from momentkit.modeling.heads import SpanHead
from momentkit.modeling.mlp import MLP, InputProjection, LinearLayer
from momentkit.modeling.position_encoding import (
    PositionEmbeddingLearned,
    PositionEmbeddingSine,
    build_position_encoding,
    sine_encoding,
    span_sine_encoding,
)
from momentkit.modeling.postprocess import PostProcessor, snap_to_clips, temporal_nms
from momentkit.modeling.transformer import (
    CrossAttentionLayer,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)

D, H = 16, 4


pytestmark = pytest.mark.usefixtures("one_thread")


def lengths_mask(lengths: list[int], total: int) -> torch.Tensor:
    return torch.arange(total)[None] < torch.tensor(lengths)[:, None]


# ------------------------------------------------------------------------------------ dropout
@pytest.mark.parametrize("p", [0.5, 0.25, 0.75, 0.0625, 0.1, 0.3, 3 / 256])
def test_keep_mask_values_and_rate(p: float) -> None:
    torch.manual_seed(0)
    mask = keep_mask((400_000,), p)
    values = mask.unique()
    assert len(values) == 2 and values[0] == 0.0
    assert values[1].item() == pytest.approx(1 / (1 - p))
    kept = (mask > 0).double().mean().item()
    assert kept == pytest.approx(1 - p, abs=5 * math.sqrt(p * (1 - p) / 400_000))
    assert mask.mean().item() == pytest.approx(1.0, abs=0.01)  # inverted dropout keeps the mean


@pytest.mark.parametrize("p", [0.5, 0.1])
def test_keep_mask_elements_are_independent(p: float) -> None:
    torch.manual_seed(1)
    kept = keep_mask((200_000, 2), p) > 0
    both = (kept[:, 0] & kept[:, 1]).double().mean().item()
    assert both == pytest.approx((1 - p) ** 2, abs=0.006)


def test_keep_mask_half_is_exactly_the_random_bits() -> None:
    torch.manual_seed(3)
    bits = random_bytes(4)
    torch.manual_seed(3)
    mask = keep_mask((32,), 0.5)
    expected = ((bits[:, None].long() >> torch.arange(8)) & 1).flatten().float() * 2.0
    assert torch.equal(mask, expected)


@pytest.mark.parametrize(("p", "bits"), [(0.25, 2), (0.75, 2), (3 / 16, 4)])
def test_keep_mask_packed_fields_are_the_random_bits_in_order(p: float, bits: int) -> None:
    """Byte b holds 8 / bits fields, low bits first; a field >= p * 2**bits keeps its element."""
    torch.manual_seed(4)
    codes = random_bytes(6)
    torch.manual_seed(4)
    mask = keep_mask((6 * 8 // bits,), p)
    shifts = torch.arange(0, 8, bits)
    fields = (codes[:, None].long() >> shifts) & ((1 << bits) - 1)
    expected = (fields.flatten() >= round(p * 2**bits)).float() / (1 - p)
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("p", [0.1, 0.25])
def test_keep_mask_dtypes_share_the_pattern_and_float64_is_exact(p: float) -> None:
    masks = {}
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        torch.manual_seed(6)
        masks[dtype] = keep_mask((5000,), p, dtype=dtype)
        assert masks[dtype].dtype == dtype
    assert torch.equal(masks[torch.float32] > 0, masks[torch.float64] > 0)
    assert torch.equal(masks[torch.float32] > 0, masks[torch.bfloat16] > 0)
    assert set(masks[torch.float64].unique().tolist()) == {0.0, 1 / (1 - p)}
    assert set(masks[torch.float32].unique().tolist()) == {0.0, float(torch.tensor(1 / (1 - p)))}


def test_keep_mask_is_reproducible_and_rejects_bad_p() -> None:
    torch.manual_seed(5)
    a = keep_mask((3, 7), 0.1)
    torch.manual_seed(5)
    assert torch.equal(a, keep_mask((3, 7), 0.1))
    with pytest.raises(ValueError):
        keep_mask((3,), 1.0)


def test_fast_dropout_modes_and_gradient() -> None:
    x = torch.randn(5, 6, requires_grad=True)
    assert fast_dropout(x, 0.3, training=False) is x
    assert fast_dropout(x, 0.0, training=True) is x
    assert torch.count_nonzero(fast_dropout(x, 1.0)) == 0
    torch.manual_seed(2)
    y = fast_dropout(x, 0.5)
    y.sum().backward()
    torch.manual_seed(2)
    mask = keep_mask(x.shape, 0.5)
    assert torch.allclose(y, x * mask)
    assert torch.equal(x.grad, mask)
    drop = Dropout(0.2).eval()
    assert drop(x) is x and "p=0.2" in repr(drop)


# ----------------------------------------------------------------------- position encodings
def test_sine_encoding_values() -> None:
    enc = sine_encoding(torch.tensor([0.0, 1.0]), 4, temperature=10000.0)
    expected = torch.tensor(
        [[0.0, 1.0, 0.0, 1.0], [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)]]
    )
    assert torch.allclose(enc, expected, atol=1e-6)
    with pytest.raises(ValueError):
        sine_encoding(torch.zeros(2), 3)


def test_position_embedding_sine_normalises_by_valid_length() -> None:
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    pos = PositionEmbeddingSine(8)(mask)
    assert pos.shape == (2, 4, 8)
    # first video: positions 1, 2, 2, 2 of 2 valid clips -> pi, 2pi, 2pi, 2pi
    angles = torch.tensor([math.pi, 2 * math.pi, 2 * math.pi, 2 * math.pi])
    assert torch.allclose(pos[0, :, 0], torch.sin(angles), atol=1e-5)
    assert torch.allclose(pos[0, :, 1], torch.cos(angles), atol=1e-5)
    # second video: 4 clips -> pi/2, pi, 3pi/2, 2pi
    assert torch.allclose(pos[1, :, 1], torch.cos(torch.arange(1, 5) * math.pi / 2), atol=1e-5)
    # padded clips repeat the last valid position
    assert torch.equal(pos[0, 2], pos[0, 1])


def test_span_sine_encoding_halves() -> None:
    spans = torch.tensor([[0.25, 0.5]])
    enc = span_sine_encoding(spans, 8)
    assert enc.shape == (1, 8)
    assert torch.allclose(enc[:, :4], sine_encoding(spans[:, 0] * 2 * math.pi, 4))
    assert torch.allclose(enc[:, 4:], sine_encoding(spans[:, 1] * 2 * math.pi, 4))


def test_learned_position_embedding() -> None:
    learned = build_position_encoding("learned", D, max_len=6)
    assert isinstance(learned, PositionEmbeddingLearned)
    pos = learned(torch.ones(3, 5, dtype=torch.bool))
    assert pos.shape == (3, 5, D)
    assert torch.equal(pos[0], learned.embed.weight[:5]) and torch.equal(pos[0], pos[2])
    with pytest.raises(ValueError, match="max_len"):
        learned(torch.ones(1, 7, dtype=torch.bool))
    assert isinstance(build_position_encoding("sine", D, 6), PositionEmbeddingSine)
    with pytest.raises(ValueError):
        build_position_encoding("rope", D, 6)


# ----------------------------------------------------------------------------------- MLPs
def test_mlp_relu_between_layers_only() -> None:
    mlp = MLP(2, 3, 2, 2)
    for layer in mlp.layers:
        nn.init.zeros_(layer.bias)
    mlp.layers[0].weight.data = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    mlp.layers[1].weight.data = -torch.eye(2, 3)
    out = mlp(torch.tensor([[2.0, -1.0]]))
    assert torch.allclose(out, torch.tensor([[-2.0, 0.0]]))  # hidden ReLU, no output ReLU
    assert MLP(4, 8, 3, 3)(torch.randn(2, 5, 4)).shape == (2, 5, 3)
    with pytest.raises(ValueError):
        MLP(2, 2, 2, 0)


def test_linear_layer_eval_is_layernorm_linear_relu() -> None:
    layer = LinearLayer(6, 4, dropout=0.5, relu=True).eval()
    x = torch.randn(3, 6)
    expected = torch.relu(layer.linear(nn.functional.layer_norm(x, (6,))))
    assert torch.allclose(layer(x), expected, atol=1e-6)


def test_input_projection_skips_padding() -> None:
    proj = InputProjection(6, D, num_layers=2, dropout=0.5).eval()
    x = torch.randn(2, 5, 6)
    mask = lengths_mask([3, 5], 5)
    out = proj(x, mask)
    full = proj(x)
    assert out.shape == (2, 5, D)
    assert torch.allclose(out[mask], full[mask], atol=1e-6)
    assert torch.count_nonzero(out[~mask]) == 0
    assert torch.equal(proj(x, torch.ones(2, 5, dtype=torch.bool)), full)
    # little padding (below PACK_MIN_PADDING): every row projected, the padded ones zeroed,
    # even when the padding holds NaN; the valid rows equal the packed computation's
    from momentkit.modeling import mlp

    long_x = torch.randn(4, 30, 6)
    long_mask = lengths_mask([30, 30, 30, 28], 30)  # 2 of 120 rows padded
    long_x[~long_mask] = float("nan")
    little = proj(long_x, long_mask)
    assert torch.count_nonzero(little[~long_mask]) == 0 and not little.isnan().any()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mlp, "PACK_MIN_PADDING", 0.0)  # always gather
        gathered = proj(long_x, long_mask)
    torch.testing.assert_close(little, gathered, rtol=0, atol=1e-6)
    # the last layer has no ReLU
    assert not proj.layers[-1].relu and proj.layers[0].relu


# ------------------------------------------------------------------------------ attention
def test_split_merge_heads_roundtrip() -> None:
    x = torch.randn(2, 5, D)
    heads = split_heads(x, H)
    assert heads.shape == (2, H, 5, D // H)
    assert torch.equal(merge_heads(heads), x)


def test_multihead_attention_matches_torch() -> None:
    torch.manual_seed(0)
    ours = MultiheadAttention(D, H).eval()
    ref = nn.MultiheadAttention(D, H, batch_first=True).eval()
    ref.load_state_dict(ours.state_dict())
    q, kv = torch.randn(2, 3, D), torch.randn(2, 6, D)
    mask = lengths_mask([4, 6], 6)
    expected = ref(q, kv, kv, key_padding_mask=~mask, need_weights=False)[0]
    assert torch.allclose(ours(q, kv, kv, mask), expected, atol=1e-5)
    # self-attention path (query is key: one fused projection)
    expected = ref(kv, kv, kv, key_padding_mask=~mask, need_weights=False)[0]
    assert torch.allclose(ours(kv, kv, kv, mask), expected, atol=1e-5)


def test_attention_dropout_path_drops_weights() -> None:
    q, k, v = torch.randn(2, H, 3, 4), torch.randn(2, H, 5, 4), torch.randn(2, H, 5, 6)
    mask = lengths_mask([2, 5], 5)
    torch.manual_seed(7)
    out = scaled_dot_attention(q, k, v, mask, dropout=0.5, training=True)
    torch.manual_seed(7)
    scores = (q @ k.transpose(-2, -1) / 2.0).masked_fill(~mask[:, None, None], float("-inf"))
    expected = (scores.softmax(-1) * keep_mask((2, H, 3, 5), 0.5)) @ v
    assert torch.allclose(out, expected, atol=1e-6)
    no_drop = scaled_dot_attention(q, k, v, mask, dropout=0.5, training=False)
    assert torch.allclose(no_drop, scores.softmax(-1) @ v, atol=1e-5)


def test_projected_attention_widths() -> None:
    attn = ProjectedAttention(D, H)
    q, k = torch.randn(2, H, 3, 2 * D // H), torch.randn(2, H, 7, 2 * D // H)
    v = torch.randn(2, H, 7, D // H)
    assert attn(q, k, v).shape == (2, 3, D)


# ------------------------------------------------------------------------ transformer layers
def _copy_encoder_layer(ours: TransformerEncoderLayer, ref: nn.TransformerEncoderLayer) -> None:
    ref.self_attn.load_state_dict(ours.self_attn.state_dict())
    ref.linear1.load_state_dict(ours.ffn.linear1.state_dict())
    ref.linear2.load_state_dict(ours.ffn.linear2.state_dict())
    ref.norm1.load_state_dict(ours.norm1.state_dict())
    ref.norm2.load_state_dict(ours.norm2.state_dict())


@pytest.mark.parametrize("pre_norm", [False, True])
def test_encoder_layer_matches_torch(pre_norm: bool) -> None:
    torch.manual_seed(0)
    ours = TransformerEncoderLayer(D, H, 32, dropout=0.1, pre_norm=pre_norm).eval()
    ref = nn.TransformerEncoderLayer(D, H, 32, 0.1, batch_first=True, norm_first=pre_norm).eval()
    _copy_encoder_layer(ours, ref)
    x = torch.randn(2, 5, D)
    mask = lengths_mask([3, 5], 5)
    out = ours(x, None, mask)
    expected = ref(x, src_key_padding_mask=~mask)
    assert torch.allclose(out[mask], expected[mask], atol=1e-5)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_decoder_layer_matches_torch(pre_norm: bool) -> None:
    torch.manual_seed(0)
    ours = TransformerDecoderLayer(D, H, 32, dropout=0.1, pre_norm=pre_norm).eval()
    ref = nn.TransformerDecoderLayer(D, H, 32, 0.1, batch_first=True, norm_first=pre_norm).eval()
    ref.self_attn.load_state_dict(ours.self_attn.state_dict())
    ref.multihead_attn.load_state_dict(ours.cross_attn.state_dict())
    ref.linear1.load_state_dict(ours.ffn.linear1.state_dict())
    ref.linear2.load_state_dict(ours.ffn.linear2.state_dict())
    for i in (1, 2, 3):
        getattr(ref, f"norm{i}").load_state_dict(getattr(ours, f"norm{i}").state_dict())
    tgt, memory = torch.randn(2, 3, D), torch.randn(2, 6, D)
    mask = lengths_mask([4, 6], 6)
    out = ours(tgt, memory, memory_mask=mask)
    assert torch.allclose(out, ref(tgt, memory, memory_key_padding_mask=~mask), atol=1e-5)


def test_post_norm_output_is_normalised_pre_norm_is_not() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, D) * 5 + 3
    post = TransformerEncoderLayer(D, H, 32, pre_norm=False).eval()(x)
    pre = TransformerEncoderLayer(D, H, 32, pre_norm=True).eval()(x)
    assert torch.allclose(post.mean(-1), torch.zeros(2, 5), atol=1e-5)
    assert torch.allclose(post.std(-1, unbiased=False), torch.ones(2, 5), atol=1e-3)
    assert pre.mean(-1).abs().max() > 0.5  # the residual stream keeps the input's offset


def test_positions_go_to_queries_and_keys() -> None:
    torch.manual_seed(0)
    layer = TransformerEncoderLayer(D, H, 32).eval()
    x, pos = torch.randn(1, 4, D), torch.randn(1, 4, D)
    assert not torch.allclose(layer(x, pos), layer(x))
    # zero positions are the same as none
    assert torch.allclose(layer(x, torch.zeros_like(pos)), layer(x))


def test_encoder_ignores_padded_tokens() -> None:
    torch.manual_seed(0)
    enc = TransformerEncoder(D, H, 2, 32).eval()
    x = torch.randn(2, 5, D)
    mask = lengths_mask([3, 5], 5)
    changed = x.clone()
    changed[0, 3:] = 100.0
    assert torch.allclose(enc(x, None, mask)[mask], enc(changed, None, mask)[mask], atol=1e-5)
    assert enc.norm is None and TransformerEncoder(D, H, 1, 32, pre_norm=True).norm is not None


def test_decoder_returns_every_normalised_layer() -> None:
    torch.manual_seed(0)
    dec = TransformerDecoder(D, H, 3, 32).eval()
    tgt, memory = torch.zeros(2, 4, D), torch.randn(2, 6, D)
    hs = dec(tgt, memory, torch.randn(1, 4, D), torch.randn(2, 6, D), lengths_mask([6, 2], 6))
    assert hs.shape == (3, 2, 4, D)
    assert torch.allclose(hs.mean(-1), torch.zeros(3, 2, 4), atol=1e-5)


def test_cross_attention_layer_variants() -> None:
    torch.manual_seed(0)
    x, ctx = torch.randn(2, 5, D), torch.randn(2, 3, D)
    mask = lengths_mask([2, 3], 3)
    plain = CrossAttentionLayer(D, H, 32).eval()
    skip = CrossAttentionLayer(D, H, 32, ffn_skip_norm=True).eval()
    skip.load_state_dict(plain.state_dict())
    s = x + plain.cross_attn(x, ctx, ctx, mask)
    standard = plain.norm2(plain.norm1(s) + plain.ffn(plain.norm1(s)))
    qd_style = plain.norm2(s + plain.ffn(plain.norm1(s)))
    assert torch.allclose(plain(x, ctx, context_mask=mask), standard, atol=1e-5)
    assert torch.allclose(skip(x, ctx, context_mask=mask), qd_style, atol=1e-5)
    assert not torch.allclose(standard, qd_style)
    # padded context tokens are ignored
    ctx2 = ctx.clone()
    ctx2[0, 2] = 50.0
    assert torch.allclose(plain(x, ctx2, context_mask=mask), plain(x, ctx, context_mask=mask))
    with pytest.raises(ValueError):
        CrossAttentionLayer(D, H, 32, pre_norm=True, ffn_skip_norm=True)
    pre = CrossAttentionLayer(D, H, 32, pre_norm=True).eval()
    assert pre(x, ctx, context_mask=mask).shape == (2, 5, D)


# ---------------------------------------------------------------------------- anchor decoder
def test_inverse_sigmoid() -> None:
    x = torch.tensor([-3.0, 0.0, 2.0])
    assert torch.allclose(inverse_sigmoid(x.sigmoid()), x, atol=1e-4)
    assert inverse_sigmoid(torch.tensor([0.0, 1.0, 2.0])).tolist() == pytest.approx(
        [math.log(1e-3 / 1), math.log(1 / 1e-3), math.log(1 / 1e-3)], rel=1e-4
    )


@pytest.mark.parametrize("pre_norm", [False, True])
def test_anchor_decoder_shapes_and_references(pre_norm: bool) -> None:
    torch.manual_seed(0)
    dec = AnchorDecoder(D, H, 3, 32, pre_norm=pre_norm).eval()
    memory, pos = torch.randn(2, 6, D), torch.randn(2, 6, D)
    mask = lengths_mask([4, 6], 6)
    anchors = torch.randn(5, 2)
    hs, refs = dec(memory, anchors, pos, mask)
    assert hs.shape == (3, 2, 5, D) and refs.shape == (3, 2, 5, 2)
    assert torch.allclose(refs[0], anchors.sigmoid().expand(2, 5, 2))
    assert ((refs > 0) & (refs < 1)).all()
    # padded memory is ignored
    memory2 = memory.clone()
    memory2[0, 4:] = 30.0
    hs2, refs2 = dec(memory2, anchors, pos, mask)
    assert torch.allclose(hs, hs2, atol=1e-5) and torch.allclose(refs, refs2, atol=1e-5)


def test_anchor_decoder_query_pos_and_modulation_switches() -> None:
    dec = AnchorDecoder(D, H, 3, 32)
    assert dec.layers[0].ca_qpos_proj is not None
    assert all(layer.ca_qpos_proj is None for layer in dec.layers[1:])
    keep = AnchorDecoder(D, H, 3, 32, keep_query_pos=True, modulate_width=False)
    assert all(layer.ca_qpos_proj is not None for layer in keep.layers)
    assert keep.ref_anchor_head is None
    assert torch.count_nonzero(dec.span_refine.layers[-1].bias) == 0


def test_anchor_references_gradient_flows_to_refinement() -> None:
    torch.manual_seed(0)
    dec = AnchorDecoder(D, H, 2, 32)
    hs, refs = dec(torch.randn(1, 4, D), torch.randn(3, 2), torch.randn(1, 4, D))
    refs[1].sum().backward()  # layer 0's refined anchors, kept for layer 1's predictions
    assert dec.span_refine.layers[-1].weight.grad is not None


# ---------------------------------------------------------------------------------- span head
def test_span_head_outputs_and_aux() -> None:
    head = SpanHead(D)
    hs = torch.randn(3, 2, 5, D)
    out = head(hs)
    assert out["pred_logits"].shape == (2, 5, 2) and out["pred_spans"].shape == (2, 5, 2)
    assert len(out["aux_outputs"]) == 2
    # batched vs single-layer matmuls may take different BLAS paths: equal up to rounding
    assert torch.allclose(
        out["aux_outputs"][0]["pred_logits"], head.class_embed(hs[0]), atol=1e-6, rtol=1e-5
    )
    assert ((out["pred_spans"] > 0) & (out["pred_spans"] < 1)).all()
    assert "aux_outputs" not in head(hs, aux=False)
    assert torch.allclose(head(hs, aux=False)["pred_spans"], out["pred_spans"])


def test_span_head_refines_references() -> None:
    head = SpanHead(D)
    nn.init.zeros_(head.span_embed.layers[-1].weight)
    nn.init.zeros_(head.span_embed.layers[-1].bias)
    refs = torch.rand(2, 1, 3, 2) * 0.8 + 0.1
    out = head(torch.randn(2, 1, 3, D), refs)
    assert torch.allclose(out["pred_spans"], refs[-1], atol=1e-5)


# ---------------------------------------------------------------------------- post-processing
def test_temporal_nms() -> None:
    windows = torch.tensor([[0.0, 10.0], [1.0, 10.0], [20.0, 30.0], [0.0, 4.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    assert temporal_nms(windows, scores, 0.5).tolist() == [3, 0, 2]
    assert temporal_nms(windows, scores, 0.95).tolist() == [3, 0, 1, 2]


def test_snap_to_clips() -> None:
    windows = torch.tensor([[0.9, 3.2], [147.5, 149.9], [10.2, 10.4], [149.6, 150.0]])
    snapped = snap_to_clips(windows, duration=150.0, clip_len=2.0)
    assert snapped.tolist() == [[0.0, 4.0], [148.0, 150.0], [10.0, 12.0], [148.0, 150.0]]
    # a video shorter than a clip gives the whole video
    assert snap_to_clips(torch.tensor([[0.2, 0.4]]), 1.5, 2.0).tolist() == [[0.0, 1.5]]
    # durations off the grid are respected
    assert snap_to_clips(torch.tensor([[140.0, 149.0]]), 149.0, 2.0).tolist() == [[140.0, 149.0]]


def _outputs_and_batch() -> tuple[dict, dict]:
    logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]]])  # fg prob .88, .12, .73
    spans = torch.tensor([[[0.5, 0.2], [0.1, 0.4], [0.52, 0.2]]])  # cxw
    outputs = {
        "pred_logits": logits,
        "pred_spans": spans,
        "saliency_scores": torch.tensor([[0.5, -1.0, 2.0] + [0.0] * 47 + [9.0]]),
    }

    class Ann:
        query = "a man cooks"

    batch = {
        "duration": torch.tensor([100.0]),
        "clip_len": 2.0,
        "video_mask": torch.tensor([[True] * 50 + [False]]),  # 50 clips x 2 s = 100 s
        "qids": [7],
        "vids": ["vid"],
        "annotations": [Ann()],
    }
    return outputs, batch


def test_postprocessor_builds_sorted_predictions() -> None:
    outputs, batch = _outputs_and_batch()
    (pred,) = PostProcessor(top_k=None, round_to_clip=False)(outputs, batch)
    assert isinstance(pred, MomentPrediction)
    assert (pred.qid, pred.vid, pred.query) == (7, "vid", "a man cooks")
    fg = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]]).softmax(-1)[:, 0]
    assert pred.pred_relevant_windows == [
        [40.0, 60.0, round(fg[0].item(), 4)],
        [42.0, 62.0, round(fg[2].item(), 4)],
        [0.0, 30.0, round(fg[1].item(), 4)],  # [-10, 30] clamped to the video
    ]
    assert pred.pred_saliency_scores[:3] == [0.5, -1.0, 2.0]
    assert len(pred.pred_saliency_scores) == 50  # valid clips only


def test_postprocessor_scales_by_feature_timeline_and_clamps_to_duration() -> None:
    """Targets are normalised by ``num_clips * clip_len`` (20 s here), not the 19 s duration."""
    outputs, batch = _outputs_and_batch()
    outputs["pred_spans"] = torch.tensor([[[0.5, 0.2], [0.95, 0.1], [0.25, 0.1]]])
    outputs["saliency_scores"] = outputs["saliency_scores"][:, :11]
    batch["duration"] = torch.tensor([19.0])
    batch["video_mask"] = torch.tensor([[True] * 10 + [False]])
    (pred,) = PostProcessor(top_k=None, round_to_clip=False)(outputs, batch)
    windows = sorted(w[:2] for w in pred.pred_relevant_windows)
    assert windows == [[4.0, 6.0], [8.0, 12.0], [18.0, 19.0]]  # [18, 20] clamped to 19 s


def test_postprocessor_top_k_nms_and_rounding() -> None:
    outputs, batch = _outputs_and_batch()
    outputs["pred_spans"] = torch.tensor([[[0.5, 0.2], [0.1, 0.4], [0.513, 0.2]]])
    (pred,) = PostProcessor(top_k=2, nms_threshold=0.5)(outputs, batch)
    # [41.3, 61.3] snaps to [42, 62] and overlaps [40, 60] by 0.82 -> suppressed
    assert [w[:2] for w in pred.pred_relevant_windows] == [[40.0, 60.0], [0.0, 30.0]]
    (pred,) = PostProcessor(top_k=1)(outputs, batch)
    assert len(pred.pred_relevant_windows) == 1


def test_keep_mask_resolves_top_byte_ties_with_more_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    top, rest = 25, 1 << 23  # p = (25 * 2**24 + 2**23) / 2**32: half of the tied values drop
    p = (top * 2**24 + rest) / 2**32
    monkeypatch.setattr(
        dropout_module,
        "random_bytes",
        lambda n, device, generator: torch.full((n,), top, dtype=torch.uint8),
    )
    torch.manual_seed(0)
    kept = (keep_mask((100_000,), p) > 0).double().mean().item()
    assert kept == pytest.approx(0.5, abs=0.01)
    monkeypatch.setattr(
        dropout_module,
        "random_bytes",
        lambda n, device, generator: torch.full((n,), top + 1, dtype=torch.uint8),
    )
    assert bool((keep_mask((1000,), p) > 0).all())  # bytes above the threshold byte always keep


def test_feed_forward_prelu_is_learnable_and_matches_formula():
    import torch

    from momentkit.modeling.transformer import FeedForward

    ffn = FeedForward(4, 8, dropout=0.0, activation="prelu").eval()
    slope = ffn.activation.weight
    assert slope.requires_grad and "activation.weight" in dict(ffn.named_parameters())
    x = torch.randn(3, 4)
    h = ffn.linear1(x)
    expected = ffn.linear2(torch.where(h > 0, h, slope * h))
    torch.testing.assert_close(ffn(x), expected)
    relu = FeedForward(4, 8, dropout=0.0, activation="relu")
    assert "activation.weight" not in dict(relu.named_parameters())
