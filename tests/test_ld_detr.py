"""LD-DETR: every component against its equation, the plug-and-play switches, presets, learning."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tiny_configs import TINY_DETR

from momentkit.cli.main import main
from momentkit.data.synth import SynthConfig, generate
from momentkit.modeling.anchor_decoder import AnchorDecoder
from momentkit.modeling.conv_fuser import (
    ConvBlocks,
    ConvolutionalFuser,
    ConvResidualBlock,
    MaskedBatchNorm1d,
    V2TExtractor,
    official_t2v_allowed,
    stage_order,
)
from momentkit.modeling.criterion import LossConfig
from momentkit.modeling.distill_align import (
    DistillAlign,
    FeatureQueue,
    distill_align_loss,
    distillation_targets,
    global_feature,
    momentum_update_,
    similarity_loss,
)
from momentkit.modeling.losses import LOSSES
from momentkit.modeling.moment_gru_head import (
    MomentGRUHead,
    official_moment_slice,
    top_moment_clips,
)
from momentkit.modeling.transformer import TransformerDecoder
from momentkit.models import (
    LDDETR,
    LDDETRConfig,
    MomentModel,
    build_criterion,
    build_model,
)
from momentkit.models.ld_detr import OFFICIAL
from momentkit.training.config import build_config

TINY = dict(
    **TINY_DETR,
    align_queue_size=16,
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def make_batch(make_batch: Callable[..., dict]) -> Callable[..., dict]:
    """The shared batch builder with saliency labels scaled to ``[0, 4/3]``."""
    return functools.partial(make_batch, saliency_divisor=3.0)


def tiny(name: str = "ld_detr", **changes) -> MomentModel:
    torch.manual_seed(0)
    return build_model({"name": name, **TINY, **changes})


# ------------------------------------------------------------------------------- Distill Align
def test_distillation_target_extremes_and_mix() -> None:
    sim = torch.tensor([[2.0, 0.0, 1.0], [0.5, 1.5, -1.0]])  # (B=2, B + l = 3)
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert torch.equal(distillation_targets(sim, 0.0), identity)
    assert torch.allclose(distillation_targets(sim, 1.0), sim.softmax(1))
    e = [math.exp(2.0), 1.0, math.exp(1.0)]
    mixed = distillation_targets(sim, 0.4)[0]
    expected = [0.4 * x / sum(e) + 0.6 * (i == 0) for i, x in enumerate(e)]
    assert mixed.tolist() == pytest.approx(expected)
    assert torch.allclose(distillation_targets(sim, 0.4).sum(1), torch.ones(2))


def test_distill_align_loss_hand_value() -> None:
    """B = 2 orthogonal pairs, a queue of one vector, temperature 1, alpha 0 and 1."""
    video = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    queue_t = torch.tensor([[1.0, 0.0]])
    queue_v = torch.tensor([[0.0, 1.0]])
    # alpha = 0: one-hot targets; S_v2t rows: [v.t0, v.t1, v.q]
    loss = distill_align_loss(video, text, video, text, queue_v, queue_t, 0.0, 1.0)

    def ce(row: list[float], target: int) -> float:
        return -(row[target] - math.log(sum(math.exp(x) for x in row)))

    v2t = (ce([0.6, 0.0, 1.0], 0) + ce([0.8, 1.0, 0.0], 1)) / 2
    t2v = (ce([0.6, 0.8, 0.8], 0) + ce([0.0, 1.0, 1.0], 1)) / 2
    assert loss.item() == pytest.approx((v2t + t2v) / 2, abs=1e-6)
    # alpha = 1 with the momentum features equal to the online ones: the target is the model's
    # own softmax, so the loss is the mean entropy of the similarity rows
    full = distill_align_loss(video, text, video, text, queue_v, queue_t, 1.0, 1.0)
    rows = [[0.6, 0.0, 1.0], [0.8, 1.0, 0.0], [0.6, 0.8, 0.8], [0.0, 1.0, 1.0]]
    entropy = [-(torch.tensor(r).softmax(0) * torch.tensor(r).log_softmax(0)).sum() for r in rows]
    assert full.item() == pytest.approx(sum(float(h) for h in entropy) / 4, abs=1e-6)


def test_momentum_update_formula() -> None:
    online, momentum = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        online.weight.fill_(1.0)
        online.bias.fill_(-2.0)
        momentum.weight.fill_(0.0)
        momentum.bias.fill_(4.0)
    momentum_update_(online, momentum, 0.995)
    assert momentum.weight[0].tolist() == pytest.approx([0.005, 0.005])
    assert momentum.bias.item() == pytest.approx(0.995 * 4.0 + 0.005 * -2.0)
    momentum_update_(online, momentum, 0.995)
    assert momentum.weight[0, 0].item() == pytest.approx(0.995 * 0.005 + 0.005)
    momentum_update_(online, momentum, 0.0)
    assert torch.equal(momentum.weight, online.weight)


def test_feature_queue_is_fifo() -> None:
    queue = FeatureQueue(5, 2)
    rows = torch.arange(12.0).view(6, 2)  # features 0..5
    for i in range(3):
        queue.enqueue(rows[2 * i : 2 * i + 2])
    # slots 0-4 got 0,1 | 2,3 | 4 then 5 wrapped into slot 0: oldest first is 1..5
    assert torch.equal(queue.features[0], rows[5])
    assert int(queue.ptr) == 1
    assert torch.equal(queue.ordered(), rows[1:6])
    queue.enqueue(torch.arange(14.0).view(7, 2) + 100)  # longer than the queue: keeps the last 5
    assert torch.equal(queue.ordered(), torch.arange(14.0).view(7, 2)[2:] + 100)
    assert not any(True for _ in queue.parameters())
    assert {n for n, _ in queue.named_buffers()} == {"features", "ptr"}


def test_distill_align_updates_once_per_training_step(make_batch: Callable[..., dict]) -> None:
    model = tiny("ld_detr", align_momentum=0.9).train()
    align = model.distill_align
    assert isinstance(align, DistillAlign)
    online = model.video_encoder.layers[0].linear.weight
    momentum = align.momentum_video_encoder.layers[0].linear.weight
    assert torch.equal(online, momentum)  # momentum encoders start as copies
    assert not momentum.requires_grad
    with torch.no_grad():  # as after an optimiser step
        online.add_(1.0)
    before, ptr = momentum.clone(), int(align.video_queue.ptr)
    queue = align.video_queue.features
    out = model(make_batch())
    assert align.video_queue.features is queue  # updated in place (DDP syncs these tensors)
    assert torch.allclose(momentum, 0.9 * before + 0.1 * online)
    assert int(align.steps) == 1 and int(align.video_queue.ptr) == (ptr + 3) % 16
    out["loss_align"].backward()
    assert momentum.grad is None and align.temperature.grad is not None
    assert not align.video_queue.features.requires_grad
    # evaluation neither updates the momentum encoders nor the queues, nor returns the loss
    model.eval()
    snapshot = {k: v.clone() for k, v in align.state_dict().items()}
    with torch.no_grad():
        evaluated = model(make_batch())
    assert "loss_align" not in evaluated
    assert all(torch.equal(v, align.state_dict()[k]) for k, v in snapshot.items())


def test_alpha_warmup_ramps_over_steps() -> None:
    align = DistillAlign(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), 2, 4, 0.9, 0.4, 0.07, 4)
    values = []
    for _ in range(6):
        values.append(float(align.current_alpha()))
        align.steps += 1
    assert values == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.4])


def test_queues_and_momentum_encoders_are_saved(
    tmp_path: Path, make_batch: Callable[..., dict]
) -> None:
    model = tiny().train()
    model(make_batch())  # moves the queue pointer, fills 3 rows
    model.save_pretrained(tmp_path / "m")
    saved = load_file(str(tmp_path / "m" / "model.safetensors"))
    for key in (
        "distill_align.video_queue.features",
        "distill_align.text_queue.ptr",
        "distill_align.steps",
        "distill_align.momentum_text_encoder.layers.1.linear.weight",
    ):
        assert torch.equal(saved[key], model.state_dict()[key])
    names = {n for n, _ in model.named_parameters()}
    assert "distill_align.video_queue.features" not in names
    loaded = MomentModel.from_pretrained(tmp_path / "m")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_distill_align_switch_on_baselines(make_batch: Callable[..., dict]) -> None:
    batch = make_batch()
    for name in ("moment_detr", "qd_detr"):
        plain = tiny(name)
        assert plain.distill_align is None
        assert not any(k.startswith("distill_align") for k in plain.state_dict())
        assert "loss_align" not in plain.train()(batch)
        assert "distill_align" not in build_criterion(plain.config).config.losses
        model = tiny(name, distill_align=True).train()
        out = model(batch)
        losses = build_criterion(model.config)(out, batch)
        assert losses["loss_align"].item() == pytest.approx(0.6 * out["loss_align"].item())
        losses["loss"].backward()
        assert model.video_proj.layers[0].linear.weight.grad is not None


# -------------------------------------------------------------------------------- Loop Decoder
def test_loop_decoder_adds_no_parameters() -> None:
    for name in ("moment_detr", "qd_detr", "ld_detr"):
        one, three = tiny(name, decoder_loops=1), tiny(name, decoder_loops=3)
        assert one.num_parameters() == three.num_parameters()
        assert one.state_dict().keys() == three.state_dict().keys()
    assert LDDETRConfig().decoder_loops == 3


def test_each_loop_output_is_the_next_loop_input() -> None:
    torch.manual_seed(0)
    memory, pos = torch.randn(2, 7, 16), torch.randn(2, 7, 16)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    tgt, query_pos = torch.zeros(2, 4, 16), torch.randn(1, 4, 16)
    once = TransformerDecoder(16, 2, 2, 32, dropout=0.0).eval()
    thrice = TransformerDecoder(16, 2, 2, 32, dropout=0.0, loops=3).eval()
    thrice.load_state_dict(once.state_dict())
    x = tgt
    for _ in range(3):
        x = once(x, memory, query_pos, pos, mask)[-1]
    assert torch.allclose(thrice(tgt, memory, query_pos, pos, mask)[-1], x, atol=1e-6)

    anchors = torch.randn(4, 2)
    once = AnchorDecoder(16, 2, 2, 32, dropout=0.0).eval()
    twice = AnchorDecoder(16, 2, 2, 32, dropout=0.0, loops=2).eval()
    twice.load_state_dict(once.state_dict())
    first_hs, _ = once(memory, anchors, pos, mask)
    second_hs, second_refs = once(memory, anchors, pos, mask, tgt=first_hs[-1])
    hs, refs = twice(memory, anchors, pos, mask)
    assert hs.shape == (2, 2, 4, 16) and refs.shape == (2, 2, 4, 2)
    assert torch.allclose(hs, second_hs, atol=1e-6)
    assert torch.allclose(refs, second_refs, atol=1e-6)
    assert not torch.allclose(hs, first_hs, atol=1e-3)
    with pytest.raises(ValueError, match="at least one loop"):
        AnchorDecoder(16, 2, 2, loops=0)


# --------------------------------------------------------------------------- Convolutional Fuser
def test_v2t_extractor_equations_and_softmax_axes() -> None:
    torch.manual_seed(0)
    v2t = V2TExtractor(4, dropout=0.0).eval()
    video, text = torch.randn(2, 5, 4), torch.randn(2, 3, 4)
    video_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    text_mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    a = v2t.correlation(video, text)
    i, j = 1, 2
    by_hand = (
        v2t.video_score.weight[0] @ video[0, i]
        + v2t.text_score.weight[0] @ text[0, j]
        + (video[0, i] * v2t.joint_score * text[0, j]).sum()
    )
    assert a[0, i, j].item() == pytest.approx(by_hand.item(), abs=1e-6)
    rows, cols = v2t.attention_maps(a, video_mask, text_mask)
    # A_r: each clip's distribution over the valid words; A_c: each word's over the valid clips
    assert torch.allclose(rows.sum(2), torch.ones(2, 5))
    assert torch.allclose(cols.sum(1), torch.ones(2, 3))
    assert (rows[1, :, 2] == 0).all() and (cols[1, 3:] == 0).all()
    assert torch.allclose(rows[0, 0], a[0, 0].softmax(0))
    assert torch.allclose(cols[0, :, 0], a[0, :, 0].softmax(0))

    out = v2t(video, text, video_mask, text_mask)
    t_v = rows @ text
    v_t = rows @ cols.transpose(1, 2) @ video
    fused = v2t.fuse(torch.cat([video, t_v, video * t_v, video * v_t], -1))
    pool = v2t.text_pool(text).squeeze(-1).masked_fill(~text_mask, -1e9).softmax(1)
    t_p = (text * pool[..., None]).sum(1, keepdim=True).expand(-1, 5, -1)
    assert torch.allclose(out, F.relu(v2t.output(torch.cat([fused, t_p], -1))), atol=1e-6)


def test_conv_residual_block_equation() -> None:
    torch.manual_seed(0)
    block = ConvResidualBlock(4).eval()
    for bn in (block.bn1, block.bn2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 4, 6)
    mask = torch.ones(2, 6, dtype=torch.bool)

    def bn(m: MaskedBatchNorm1d, h: torch.Tensor) -> torch.Tensor:
        scale = m.weight / torch.sqrt(m.running_var + m.eps)
        return (h - m.running_mean[:, None]) * scale[:, None] + m.bias[:, None]

    inner = F.relu(bn(block.bn1, F.conv1d(x, block.conv1.weight, block.conv1.bias, padding=1)))
    inner = bn(block.bn2, F.conv1d(inner, block.conv2.weight, block.conv2.bias, padding=1))
    assert torch.allclose(block(x, mask), F.relu(x + inner), atol=1e-5)


def test_masked_batchnorm_skips_padding() -> None:
    torch.manual_seed(0)
    masked, plain = MaskedBatchNorm1d(3), torch.nn.BatchNorm1d(3)
    x = torch.randn(2, 3, 5)
    full = torch.ones(2, 5, dtype=torch.bool)
    assert torch.allclose(masked(x, full), plain(x), atol=1e-5)
    assert torch.allclose(masked.running_var, plain.running_var, atol=1e-5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    noisy = x.clone()
    noisy[1, :, 2:] = 1e3
    bn_a = MaskedBatchNorm1d(3)
    a, b = bn_a(x, mask), MaskedBatchNorm1d(3)(noisy, mask)
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1, :, :2], b[1, :, :2])
    valid = torch.cat([x[0], x[1, :, :2]], dim=1)  # (3, 7): normalised over valid steps only
    std = torch.sqrt(valid.var(1, unbiased=False, keepdim=True) + 1e-5)
    expected = (valid - valid.mean(1, keepdim=True)) / std
    assert torch.allclose(a[0], expected[:, :5], atol=1e-4)
    assert torch.allclose(bn_a.running_mean, 0.1 * valid.mean(1), atol=1e-6)
    assert torch.allclose(bn_a.running_var, 0.9 + 0.1 * valid.var(1), atol=1e-5)  # unbiased


@pytest.mark.parametrize("position", range(5))
def test_fuser_stage_shapes_and_order(position: int, make_batch: Callable[..., dict]) -> None:
    torch.manual_seed(0)
    fuser = ConvolutionalFuser(16, 2, 32, conv_blocks=2, conv_position=position)
    batch = make_batch()
    video, text = torch.randn(3, 12, 16), torch.randn(3, 6, 16)
    calls: list[tuple[str, tuple[int, ...]]] = []
    for name in ("v2t", "t2v", "encoder1", "conv", "encoder2"):
        module = getattr(fuser, name)
        module.register_forward_hook(lambda m, i, o, name=name: calls.append((name, o.shape)))
    memory = fuser(video, text, batch["video_mask"], batch["text_mask"], torch.randn(3, 12, 16))
    assert memory.shape == (3, 12, 16)
    assert [name for name, _ in calls] == list(stage_order(position))
    assert all(shape == (3, 12, 16) for _, shape in calls)
    assert stage_order(3) == ("v2t", "t2v", "encoder1", "conv", "encoder2")


def test_fuser_parts_switch_off(make_batch: Callable[..., dict]) -> None:
    batch = make_batch()
    video, text = torch.randn(3, 12, 16), torch.randn(3, 6, 16)
    masks = (batch["video_mask"], batch["text_mask"])
    off = ConvolutionalFuser(16, 2, 32, use_v2t=False, t2v_layers=0, encoder1_layers=0,
                             conv_blocks=0, encoder2_layers=0)  # fmt: skip
    assert sum(p.numel() for p in off.parameters()) == 0
    assert torch.equal(off(video, text, *masks), video)
    for field in ("use_v2t", "t2v_layers", "enc_layers", "conv_blocks", "enc2_layers"):
        model = tiny(**{field: False if field == "use_v2t" else 0})
        stage = {"use_v2t": "v2t", "t2v_layers": "t2v", "enc_layers": "encoder1",
                 "conv_blocks": "conv", "enc2_layers": "encoder2"}[field]  # fmt: skip
        assert getattr(model.convolutional_fuser, stage) is None
        assert model.train()(batch)["pred_spans"].shape == (3, 5, 2)
    with pytest.raises(ValueError, match="conv_position"):
        LDDETRConfig(conv_position=5).validate()


# ------------------------------------------------------------------------------ highlight head
def test_top_moment_clips() -> None:
    logits = torch.tensor([[[0.0, 1.0], [3.0, 0.0]], [[2.0, 0.0], [0.0, 0.0]]])
    spans = torch.tensor([[[0.1, 0.1], [0.5, 0.2]], [[0.05, 0.3], [0.5, 0.1]]])
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 8:] = False
    start, end = top_moment_clips(logits, spans, mask)
    # video 0: query 1, [0.4, 0.6] of 10 clips -> clips 4..6; video 1: query 0, [-0.1, 0.2] of
    # 8 valid clips -> clamped start 0, end floor(1.6) = 1
    assert start.tolist() == [4, 0] and end.tolist() == [6, 1]
    start, end = top_moment_clips(logits, torch.tensor([0.99, 0.01]).expand_as(spans), mask)
    assert start.tolist() == [9, 7] and end.tolist() == [9, 7]  # past the end: the last clip


def test_moment_gru_head_equation() -> None:
    torch.manual_seed(0)
    head = MomentGRUHead(4)
    logits = torch.tensor([[[3.0, 0.0], [0.0, 0.0]]])
    spans = torch.tensor([[[0.375, 0.25], [0.9, 0.1]]])  # [0.25, 0.5] of 10 clips: 2..5
    memory, video = torch.randn(1, 10, 4), torch.randn(1, 10, 4)
    mask = torch.ones(1, 10, dtype=torch.bool)
    scores = head(logits, spans, memory, video, mask)
    _, hidden = head.gru(video[:, 2:6])  # G'_v: the state after the moment's last clip
    g = hidden[-1]  # (1, d)
    s = (g[:, None, :] * video).sum(-1)  # S = G'_v V'^T
    m = head.saliency_proj(memory * s[..., None] + memory)
    assert torch.allclose(scores, m.sum(-1) / 2.0, atol=1e-5)  # sqrt(d) = 2
    scores.sum().backward()
    assert head.gru.weight_ih_l0.grad is not None


def test_moment_gru_head_cosine_similarity_weights_clips_in_0_2() -> None:
    torch.manual_seed(0)
    dot, cosine = MomentGRUHead(4), MomentGRUHead(4, similarity="cosine")
    cosine.load_state_dict(dot.state_dict())
    logits = torch.tensor([[[3.0, 0.0], [0.0, 0.0]]])
    spans = torch.tensor([[[0.375, 0.25], [0.9, 0.1]]])  # clips 2..5
    memory, video = torch.randn(1, 10, 4), 5.0 * torch.randn(1, 10, 4)
    mask = torch.ones(1, 10, dtype=torch.bool)
    g = cosine.moment_feature(video, torch.tensor([2]), torch.tensor([5]))
    s = torch.nn.functional.cosine_similarity(g[:, None, :], video, dim=-1)  # (1, T)
    assert bool(((1 + s) >= 0).all() and ((1 + s) <= 2).all())
    m = cosine.saliency_proj(memory * s[..., None] + memory)
    assert torch.allclose(cosine(logits, spans, memory, video, mask), m.sum(-1) / 2.0, atol=1e-5)
    # the paper's dot product of the same vectors is unbounded: here some 1 + S are negative
    raw = (g[:, None, :] * video).sum(-1)
    assert bool((1 + raw < 0).any())
    assert not torch.allclose(dot(logits, spans, memory, video, mask), m.sum(-1) / 2.0)
    with pytest.raises(ValueError, match="similarity"):
        MomentGRUHead(4, similarity="l2")


# ----------------------------------------------------------------------------------- the model
def test_defaults_follow_the_paper() -> None:
    c = LDDETRConfig()
    paper = dict(hidden_dim=256, num_queries=10, nheads=8, enc_layers=2, enc2_layers=2)
    paper.update(t2v_layers=2, dec_layers=2, decoder_loops=3, conv_blocks=5, conv_position=3)
    paper.update(distill_align=True, align_queue_size=65536, align_momentum=0.995)
    paper.update(align_alpha=0.4, align_temperature=0.07, use_v2t=True)
    assert {k: getattr(c, k) for k in paper} == paper
    w = c.loss.weights
    assert (w["loss_span"], w["loss_giou"], w["loss_label"], w["loss_align"]) == (10, 1, 4, 0.6)
    assert (w["loss_saliency_margin"], w["loss_saliency_rank"]) == (1, 1)
    assert c.loss.saliency_margin == 0.2 and c.loss.eos_coef == 0.1
    assert "saliency_neg_pair" not in c.loss.losses and "distill_align" in c.loss.losses


def test_forward_shapes_gradients_and_padding(make_batch: Callable[..., dict]) -> None:
    model = tiny().train()
    batch = make_batch()
    out = model(batch)
    assert out["pred_logits"].shape == (3, 5, 2) and out["pred_spans"].shape == (3, 5, 2)
    assert out["saliency_scores"].shape == (3, 12) and len(out["aux_outputs"]) == 1
    assert out["loss_align"].dim() == 0
    build_criterion(model.config)(out, batch)["loss"].backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert [n for n, p in trainable if p.grad is None] == []
    assert not any(p.requires_grad for n, p in model.named_parameters() if "momentum_" in n)

    model.eval()
    noisy = dict(batch)
    noisy["video_feats"] = batch["video_feats"] + 50.0 * ~batch["video_mask"][..., None]
    noisy["text_feats"] = batch["text_feats"] - 30.0 * ~batch["text_mask"][..., None]
    with torch.no_grad():
        a, b = model(batch), model(noisy)
    for key in ("pred_logits", "pred_spans"):
        assert torch.allclose(a[key], b[key], atol=1e-5)
    mask = batch["video_mask"]
    assert torch.allclose(a["saliency_scores"][mask], b["saliency_scores"][mask], atol=1e-4)


def test_config_round_trip_and_errors(tmp_path: Path) -> None:
    model = tiny(conv_blocks=1, conv_position=0, decoder_loops=2)
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["name"] == "ld_detr" and config["conv_position"] == 0
    assert isinstance(MomentModel.from_pretrained(tmp_path / "m"), LDDETR)
    for bad, match in (
        (dict(decoder_loops=0), "decoder_loops"),
        (dict(align_alpha=1.5), "align_alpha"),
        (dict(conv_kernel_size=2), "conv_kernel_size"),
        (dict(align_temperature=0.9), "align_temperature"),
        (dict(hd_similarity="l2"), "hd_similarity"),
        (dict(hd_form="released"), "hd_form.*official"),
        (dict(t2v_mask="none"), "t2v_mask"),
        (dict(align_sim_loss=True, distill_align=False), "align_sim_loss"),
    ):
        with pytest.raises(ValueError, match=match):
            LDDETRConfig(**bad).validate()


def test_presets_and_plug_and_play_flags() -> None:
    qv = build_config("ld_detr", "qvhighlights")
    assert qv.optim.scheduler == "cosine" and qv.trainer.epochs == 250 and qv.optim.lr == 1e-4
    assert qv.model.decoder_loops == 3 and qv.model.align_alpha_warmup_steps == 226
    ch = build_config("ld_detr", "charades_sta")
    assert (ch.model.conv_blocks, ch.model.align_alpha, ch.trainer.epochs) == (4, 0.3, 100)
    assert ch.data.clip_len == 1.0 and ch.model.loss.weights["loss_saliency_rank"] == 1.5
    ta = build_config("ld_detr", "tacos")
    assert (ta.model.align_alpha, ta.trainer.epochs) == (0.7, 250)
    # the release's compute_mr_results: spans x duration, clip_ts [0, 150] s then round to the
    # clip length on QVHighlights / Charades-STA (SlowFast + CLIP), rounding only on TACoS
    for cfg in (qv, ch):
        post = cfg.model.postprocess
        assert (post["span_scale"], post["clamp"], post["max_time"]) == ("duration", "fixed", 150)
        assert post["rounding"] == "multiple" and post["top_k"] is None
    assert ta.model.postprocess["clamp"] == "none" and "max_time" not in ta.model.postprocess
    assert build_config("ld_detr", "synth").model.postprocess == {}
    assert ta.model.loss.weights["loss_saliency_margin"] == 4.0
    assert qv.model.hd_similarity == "dot"  # the paper's; synth measures the bounded one
    assert build_config("ld_detr", "synth").model.hd_similarity == "cosine"
    # the real-data presets follow the released code, synth the paper
    for preset in ("qvhighlights", "charades_sta", "tacos", "synth_official"):
        model = build_config("ld_detr", preset).model
        assert all(model.official_switches.values()), preset
        assert "labels_sigmoid_focal" in model.loss.losses and "distill_sim" in model.loss.losses
    assert ch.model.loss.weights["loss_sim"] == 0.4 and qv.model.loss.weights["loss_sim"] == 0.6
    synth, official = build_config("ld_detr", "synth"), build_config("ld_detr", "synth_official")
    assert not any(synth.model.official_switches.values())
    for section in ("optim", "trainer"):  # the synth budget
        assert getattr(synth, section) == getattr(official, section), section
    assert (official.model.hidden_dim, official.model.align_queue_size) == (128, 1024)
    assert official.model.hd_similarity == "dot"
    one = build_config("ld_detr", "synth", ["model.hd_form=official", "model.align_sim_loss=true"])
    assert (
        one.model.hd_form == "official"
        and "distill_sim" in build_criterion(one.model).config.losses
    )
    qd = build_config(
        "qd_detr", "synth", ["model.distill_align=true", "model.decoder_loops=3"]
    ).model
    assert qd.distill_align and qd.decoder_loops == 3
    assert "distill_align" in build_criterion(qd).config.losses


def test_short_training_run_lowers_every_loss_term(make_batch: Callable[..., dict]) -> None:
    model = tiny(dropout=0.0, input_dropout=0.0, align_queue_size=6).train()
    criterion = build_criterion(model.config)
    batch = make_batch()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    history: list[dict[str, float]] = []
    for _ in range(80):
        losses = criterion(model(batch), batch)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    terms = ("loss_span", "loss_giou", "loss_label", "loss_saliency_margin",
             "loss_saliency_rank", "loss_align")  # fmt: skip
    for term in terms:
        first = sum(h[term] for h in history[:5]) / 5
        last = sum(h[term] for h in history[-5:]) / 5
        # the label and rank terms have floors (background weight, several positives a video)
        assert last < (0.3 if term in ("loss_span", "loss_giou") else 0.9) * first, term


def test_cli_trains_ld_detr_on_synth(tmp_path: Path) -> None:
    root = tmp_path / "synth"
    generate(SynthConfig(num_train=12, num_val=4, seed=1, min_duration=30, max_duration=40), root,
             progress=False)  # fmt: skip
    feats = root / "features"
    rc = main([
        "train", "--model", "ld_detr", "--preset", "synth",
        "--train", str(root / "annotations" / "train.jsonl"),
        "--val", str(root / "annotations" / "val.jsonl"),
        "--video-features", str(feats / "slowfast"), str(feats / "clip"),
        "--text-features", str(feats / "clip_text"), "--out", str(tmp_path / "run"),
        "--epochs", "2", "--batch-size", "4", "--set", "model.hidden_dim=16",
        "model.dim_feedforward=32", "model.nheads=2", "model.num_queries=4",
        "model.align_queue_size=8", "model.conv_blocks=1", "trainer.progress=false",
        "data.eval_batch_size=4",
    ])  # fmt: skip
    assert rc == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert "loss_align" in log[-1]["train"]
    saved = load_file(str(tmp_path / "run" / "last" / "model.safetensors"))
    assert int(saved["distill_align.steps"]) == 6  # 12 queries / 4 per step x 2 epochs


# ------------------------------------------------------------- the official release's forms
def python_slice(length: int, first: int, last: int) -> list[int]:
    return list(range(length))[first : last + 1]


def test_official_moment_slice_follows_python_slicing() -> None:
    """Spans reaching outside the video give negative or too-large clip indices; the release
    slices with Python's rules (a negative start counts from the end)."""
    length = 7
    spans = torch.tensor([[0.5, 0.2], [0.05, 0.3], [0.98, 0.2], [0.02, 0.01], [0.5, 1.9]])
    logits = torch.zeros(len(spans), 1, 2)
    for clip_len in (1.0, 2.0):
        start, count = official_moment_slice(logits, spans[:, None], length, clip_len)
        xx = torch.stack([spans[:, 0] - spans[:, 1] / 2, spans[:, 0] + spans[:, 1] / 2], 1)
        for i, (a, b) in enumerate(torch.floor(xx * length).long().tolist()):
            want = python_slice(length, a, b)
            got = list(range(int(start[i]), int(start[i] + count[i])))
            assert got == want, (i, a, b)
    # (-1, 1): [6:2] is empty; (0, 0): one clip
    assert python_slice(length, -1, 1) == [] and python_slice(length, 0, 0) == [0]


def test_official_hd_head_runs_the_gru_over_the_padded_length() -> None:
    torch.manual_seed(0)
    head = MomentGRUHead(8, form="official")
    video = torch.randn(2, 6, 8)
    start, count = torch.tensor([1, 4]), torch.tensor([3, 0])
    got = head.official_moment_feature(video, start, count)
    for b in range(2):
        clips = torch.zeros(6, 8)
        clips[: int(count[b])] = video[b, int(start[b]) : int(start[b] + count[b])]
        _, hidden = head.gru(clips[None])
        assert torch.allclose(got[b], hidden[0, 0], atol=1e-6)
    # the padded steps after the moment wash out its summary: the paper form reads the state
    # at the moment's last clip instead
    paper = head.moment_feature(video[:1], start[:1], start[:1] + count[:1] - 1)
    assert not torch.allclose(paper, got[:1], atol=1e-3)


def test_official_t2v_mask_is_read_batch_major() -> None:
    """Head h of video b gets the clip-by-word block of video (b * nhead + h) mod B."""
    video_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    text_mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)
    nhead = 2
    allowed = official_t2v_allowed(video_mask, text_mask, nhead)  # (B, H, T, N)
    blocked = (~video_mask)[:, :, None] & (~text_mask)[:, None, :]
    for b in range(3):
        for h in range(nhead):
            assert torch.equal(allowed[b, h], ~blocked[(b * nhead + h) % 3]), (b, h)
    # video 0 (no padding) loses words 1-2 at clips 2-3 in head 1 (video 1's block)
    assert not allowed[0, 1, 2, 1] and allowed[0, 0].all()
    assert official_t2v_allowed(video_mask[:1], text_mask[:1], nhead).all()


def test_conv_blocks_official_form_runs_over_the_padding() -> None:
    torch.manual_seed(0)
    blocks = ConvBlocks(6, 1).train()
    x = torch.randn(2, 5, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    block = blocks.blocks[0]
    h = x.transpose(1, 2)
    bn1 = torch.nn.functional.batch_norm(
        block.conv1(h), None, None, block.bn1.weight, block.bn1.bias, training=True
    )
    inner = block.conv2(torch.relu(bn1))
    bn2 = torch.nn.functional.batch_norm(
        inner, None, None, block.bn2.weight, block.bn2.bias, training=True
    )
    want = torch.relu(bn2 + h).transpose(1, 2)
    assert torch.allclose(blocks(x, None), want, atol=1e-5)
    assert not torch.allclose(blocks(x, mask)[0], want[0], atol=1e-3)  # padding reaches video 0


def test_enqueue_official_drops_batches_that_do_not_divide_the_queue() -> None:
    queue = FeatureQueue(8, 4)
    before = queue.features.clone()
    queue.enqueue(torch.ones(3, 4), divisible_only=True)
    assert torch.equal(queue.features, before) and int(queue.ptr) == 0
    queue.enqueue(torch.ones(4, 4), divisible_only=True)
    assert int(queue.ptr) == 4 and torch.equal(queue.features[:4], torch.ones(4, 4))
    queue.enqueue(torch.full((3, 4), 2.0))  # momentkit's default wraps any batch
    assert int(queue.ptr) == 7


def test_official_global_mean_includes_padding() -> None:
    x = torch.tensor([[[1.0, 0.0], [3.0, 4.0]]])
    assert torch.allclose(global_feature(x, None), F.normalize(torch.tensor([[2.0, 2.0]])))
    assert torch.allclose(
        global_feature(x, torch.tensor([[True, False]])), torch.tensor([[1.0, 0]])
    )


def test_similarity_loss_hand_value() -> None:
    identity = torch.nn.Linear(2, 2)
    with torch.no_grad():
        identity.weight.copy_(torch.eye(2))
        identity.bias.zero_()
    video, text = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.6, 0.8]])
    # h(ReLU(v)) = v: cos(v, t) = 0.6, both ways
    assert float(similarity_loss(identity, video, text).detach()) == pytest.approx(-0.6)


def test_sigmoid_focal_label_loss_hand_value() -> None:
    logits = torch.tensor([[[0.0, 1.0], [2.0, -1.0]]])  # (B=1, Q=2, 2)
    indices = [(torch.tensor([1]), torch.tensor([0]))]  # query 1 is foreground
    got = LOSSES.get("labels_sigmoid_focal").fn({"pred_logits": logits}, {}, indices, LossConfig())
    target = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    total = 0.0
    for x, t in zip(logits.flatten().tolist(), target.flatten().tolist()):
        p = 1 / (1 + math.exp(-x))
        p_t = p if t else 1 - p
        total += (0.25 if t else 0.75) * (1 - p_t) ** 2 * -math.log(p_t)
    assert float(got["loss_label"]) == pytest.approx(total / 4, rel=1e-6)


def test_official_forms_in_the_model(make_batch: Callable[..., dict]) -> None:
    batch = make_batch()
    official = tiny(**OFFICIAL, align_queue_size=6)
    # momentum encoders move in evaluation forwards too
    before = [p.clone() for p in official.distill_align.momentum_video_encoder.parameters()]
    official.video_encoder.layers[0].linear.weight.data.add_(1.0)
    official.eval()
    with torch.no_grad():
        out = official(batch)
    after = list(official.distill_align.momentum_video_encoder.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    assert "loss_align" not in out
    # one decoder pass whatever decoder_loops is: the paper form with 1 loop
    once = tiny(**{**OFFICIAL, "decoder_form": "paper", "decoder_loops": 1}, align_queue_size=6)
    once.load_state_dict(official.state_dict())
    once.eval()
    with torch.no_grad():
        assert torch.allclose(once(batch)["pred_spans"], official(batch)["pred_spans"])
    # training: loss_sim and the focal label loss; 3 videos divide a queue of 6, 4 do not
    official.train()
    out = official(batch)
    assert {"loss_align", "loss_sim"} <= set(out)
    assert int(official.distill_align.video_queue.ptr) == 3
    with torch.no_grad():
        official(make_batch(video_lens=(12, 9, 7, 5), text_lens=(6, 4, 3, 2)))
    assert int(official.distill_align.video_queue.ptr) == 3
    losses = build_criterion(official.config)(out, batch)
    assert {"loss_sim", "loss_align", "loss_label"} <= set(losses)


def test_bench_learn_runs_the_official_variant_for_an_epoch(tmp_path: Path) -> None:
    """``--preset synth_official`` (every switch official) and a synth-preset variant that
    switches one form by ``--variant`` overrides both train on the benchmark."""
    data, out = tmp_path / "synth", tmp_path / "learn"
    tiny_sets = ["model.hidden_dim=16", "model.dim_feedforward=32", "model.nheads=2"]
    tiny_sets += ["model.num_queries=4", "model.align_queue_size=8", "model.conv_blocks=1"]
    tiny_sets += ["trainer.batch_size=4", "data.eval_batch_size=8"]
    common = ["bench", "learn", "--data", str(data), "--make-data", "12", "8", "0"]
    common += ["--seeds", "0", "--epochs", "1", "--no-baseline", "--set", *tiny_sets]
    variant = "LD-DETR official=ld_detr"
    assert (
        main([*common, "--out", str(out), "--preset", "synth_official", "--variant", variant]) == 0
    )
    hd = "LD-DETR official HD=ld_detr model.hd_form=official"
    assert main([*common, "--out", str(out / "synth"), "--variant", hd]) == 0
    for run, official in (
        (out / "ld_detr_official", True),
        (out / "synth" / "ld_detr_official_hd", False),
    ):
        config = json.loads((run / "seed0" / "config.json").read_text())["model"]
        assert (
            config["hd_form"] == "official" and (config["decoder_form"] == "official") is official
        )
        log = json.loads((run / "seed0" / "log.jsonl").read_text().splitlines()[0])["train"]
        assert ("loss_sim" in log) is official
