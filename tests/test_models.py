"""Moment-DETR and QD-DETR: forward shapes, masking, save/load, configs, and a short overfit."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tiny_configs import TINY_DETR

from momentkit.models import (
    MODELS,
    QDDETR,
    MomentDETR,
    MomentDETRConfig,
    MomentModel,
    QDDETRConfig,
    build_criterion,
    build_model,
    config_from_dict,
)
from momentkit.utils.errors import FormatError

TINY = dict(TINY_DETR)
CONFIGS = {"moment_detr": MomentDETRConfig(**TINY), "qd_detr": QDDETRConfig(**TINY)}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=sorted(CONFIGS))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_registry_and_defaults() -> None:
    assert {"moment_detr", "qd_detr"} <= set(MODELS.names())
    cfg = MomentDETRConfig()
    paper = dict(hidden_dim=256, num_queries=10, nheads=8, enc_layers=2, dec_layers=2)
    paper.update(dim_feedforward=1024, dropout=0.1, input_dropout=0.5, pre_norm=False)
    assert all(getattr(cfg, k) == v for k, v in paper.items())
    assert (cfg.matcher.cost_span, cfg.matcher.cost_giou, cfg.matcher.cost_class) == (10, 1, 4)
    assert cfg.loss.eos_coef == 0.1 and cfg.loss.saliency_margin == 0.2 and cfg.loss.aux_loss
    qd = QDDETRConfig()
    assert all(getattr(qd, k) == v for k, v in paper.items())
    assert {"saliency_rank_contrastive", "saliency_neg_pair"} <= set(qd.loss.losses)


def test_forward_shapes(name: str, make_batch: Callable[..., dict]) -> None:
    torch.manual_seed(0)
    model = build_model(CONFIGS[name])
    batch = make_batch()
    out = model.train()(batch)
    assert out["pred_logits"].shape == (3, 5, 2)
    assert out["pred_spans"].shape == (3, 5, 2)
    assert ((out["pred_spans"] > 0) & (out["pred_spans"] < 1)).all()
    assert out["saliency_scores"].shape == (3, 12)
    assert len(out["aux_outputs"]) == CONFIGS[name].dec_layers - 1
    assert torch.equal(out["video_mask"], batch["video_mask"])
    assert ("saliency_scores_neg" in out) == (name == "qd_detr")
    with torch.no_grad():
        evaluated = model.eval()(batch)
    assert "saliency_scores_neg" not in evaluated  # negatives are a training-time signal
    losses = build_criterion(model.config)(out, batch)
    losses["loss"].backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "text_pos" not in n)


def test_padding_does_not_change_valid_outputs(name: str, make_batch: Callable[..., dict]) -> None:
    torch.manual_seed(0)
    model = build_model(CONFIGS[name]).eval()
    batch = make_batch()
    noisy = dict(batch)
    noisy["video_feats"] = batch["video_feats"] + 50.0 * ~batch["video_mask"][..., None]
    noisy["text_feats"] = batch["text_feats"] - 30.0 * ~batch["text_mask"][..., None]
    with torch.no_grad():
        a, b = model(batch), model(noisy)
    for key in ("pred_logits", "pred_spans"):
        assert torch.allclose(a[key], b[key], atol=1e-5)
    mask = batch["video_mask"]
    assert torch.allclose(a["saliency_scores"][mask], b["saliency_scores"][mask], atol=1e-5)


def test_qd_detr_negatives_use_the_next_query(make_batch: Callable[..., dict]) -> None:
    torch.manual_seed(0)
    cfg = CONFIGS["qd_detr"].replace(dropout=0.0, input_dropout=0.0)  # comparable passes
    model = build_model(cfg).train()
    batch = make_batch()
    out = model(batch)
    # the negative scores of video 0 equal the positive scores of video 0 paired with query 1
    swapped = dict(batch)
    swapped["text_feats"] = batch["text_feats"].roll(-1, 0)
    swapped["text_mask"] = batch["text_mask"].roll(-1, 0)
    out_swapped = model(swapped)
    assert torch.allclose(out["saliency_scores_neg"], out_swapped["saliency_scores"], atol=1e-5)


def test_save_and_load_round_trip(
    name: str, tmp_path: Path, make_batch: Callable[..., dict]
) -> None:
    torch.manual_seed(0)
    model = build_model(CONFIGS[name]).eval()
    batch = make_batch()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["name"] == name and config["hidden_dim"] == 16
    loaded = MomentModel.from_pretrained(tmp_path / "m").eval()
    assert type(loaded) is type(model) and loaded.config == model.config
    with torch.no_grad():
        a, b = model(batch), loaded(batch)
    for key in ("pred_logits", "pred_spans", "saliency_scores"):
        assert torch.equal(a[key], b[key])
    # a subclass loads its own kind and refuses the other
    own, other = (MomentDETR, QDDETR) if name == "moment_detr" else (QDDETR, MomentDETR)
    assert isinstance(own.from_pretrained(tmp_path / "m"), own)
    with pytest.raises(FormatError, match="not a"):
        other.from_pretrained(tmp_path / "m")


def test_load_errors(tmp_path: Path) -> None:
    model = build_model(CONFIGS["moment_detr"])
    with pytest.raises(FileNotFoundError, match="config.json"):
        MomentModel.from_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_dim": 32}))
    with pytest.raises(FormatError, match="model.safetensors.*do not fit"):
        MomentModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "hiden_dim": 32}))
    with pytest.raises(FormatError, match="config.json: field 'model.hiden_dim': unknown field"):
        MomentModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(FormatError, match="invalid JSON"):
        MomentModel.from_pretrained(tmp_path)


def test_configs_from_dicts() -> None:
    model = build_model({"name": "qd_detr", **TINY, "loss": {"weights": {"loss_span": 5.0}}})
    assert isinstance(model, QDDETR)
    # partial nested sections keep the model's own defaults for the rest
    assert model.config.loss.weights["loss_span"] == 5.0
    assert model.config.loss.weights["loss_giou"] == 1.0
    assert "saliency_neg_pair" in model.config.loss.losses
    with pytest.raises(FormatError, match="model.name"):
        config_from_dict({"hidden_dim": 3})
    with pytest.raises(FormatError, match="unknown model 'detr3d'"):
        config_from_dict({"name": "detr3d"})
    with pytest.raises(FormatError, match="model.hidden_dim': expected int"):
        config_from_dict({"name": "moment_detr", "hidden_dim": "big"})
    with pytest.raises(FormatError, match="model.loss.eos_coeff': unknown field"):
        config_from_dict({"name": "moment_detr", "loss": {"eos_coeff": 0.2}})
    cfg = MomentDETRConfig(**TINY)
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_invalid_configs_are_rejected() -> None:
    with pytest.raises(ValueError, match="hidden_dim"):
        build_model(MomentDETRConfig(**{**TINY, "nheads": 3}))
    with pytest.raises(ValueError, match="input_dropout"):
        build_model(MomentDETRConfig(**{**TINY, "input_dropout": 1.0}))
    with pytest.raises(TypeError, match="needs a QDDETRConfig"):
        QDDETR(MomentDETRConfig(**TINY))


@pytest.mark.parametrize("pre_norm", [False, True])
def test_pre_norm_models_run(name: str, pre_norm: bool, make_batch: Callable[..., dict]) -> None:
    cfg = CONFIGS[name].replace(pre_norm=pre_norm, position_embedding="learned", use_text_pos=True)
    out = build_model(cfg)(make_batch())
    assert out["pred_spans"].shape == (3, 5, 2)


def test_short_training_run_overfits(name: str, make_batch: Callable[..., dict]) -> None:
    torch.manual_seed(0)
    cfg = CONFIGS[name].replace(dropout=0.0, input_dropout=0.0)
    model = build_model(cfg)
    criterion = build_criterion(cfg)
    batch = make_batch(seed=1, video_lens=(12, 9, 7, 12), text_lens=(6, 4, 3, 5))
    batch["saliency_neg_labels"] = torch.tensor([[5, 6], [7, 8], [5, 6], [9, 10]])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    history = []
    for _ in range(40):
        losses = criterion(model(batch), batch)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        history.append(losses["loss"].item())
    assert history[-1] < 0.5 * history[0]
    assert sum(history[-5:]) < sum(history[:5])


# ------------------------------------------------------------- switches of the official variant
def test_project_padding_changes_only_padded_positions(
    name: str, make_batch: Callable[..., dict]
) -> None:
    torch.manual_seed(0)
    model = build_model(CONFIGS[name]).eval()
    every_row = build_model(CONFIGS[name].replace(project_padding=True)).eval()
    every_row.load_state_dict(model.state_dict())
    batch = make_batch()
    with torch.no_grad():
        a, b = model(batch), every_row(batch)
    mask = batch["video_mask"]
    assert torch.allclose(a["pred_spans"], b["pred_spans"], atol=1e-5)
    assert torch.allclose(a["saliency_scores"][mask], b["saliency_scores"][mask], atol=1e-5)
    assert not torch.allclose(a["saliency_scores"][~mask], b["saliency_scores"][~mask])


def test_qd_detr_negative_pairs_in_evaluation(make_batch: Callable[..., dict]) -> None:
    torch.manual_seed(0)
    model = build_model(CONFIGS["qd_detr"].replace(neg_pairs="always")).eval()
    batch = make_batch()
    with torch.no_grad():
        out = model(batch)
        swapped = model(
            {**batch, "text_feats": batch["text_feats"].roll(-1, 0),
             "text_mask": batch["text_mask"].roll(-1, 0)}
        )  # fmt: skip
    assert torch.allclose(out["saliency_scores_neg"], swapped["saliency_scores"], atol=1e-5)
    losses = build_criterion(model.config)(out, batch)
    assert "loss_saliency_neg" in losses  # the validation loss includes the negatives


def test_tiled_t2v_mask_reads_other_videos_padding() -> None:
    from momentkit.models.qd_detr import tiled_t2v_allowed

    video = torch.tensor([[True] * 4, [True, True, True, False]])
    text = torch.tensor([[True] * 3, [True, True, False]])
    allowed = tiled_t2v_allowed(video, text, nhead=2)  # (B, H, T, N)
    assert allowed.shape == (2, 2, 4, 3)
    # head h of video b reads the mask of video (2b + h) mod 2 = h: odd heads see video 1's
    assert not allowed[0, 1, 3, 2] and not allowed[1, 1, 3, 2]
    assert allowed[0, 0].all() and allowed[1, 0].all()
    assert allowed[:, 1].sum() == 2 * 12 - 2


def test_tiled_t2v_mask_changes_only_padded_batches(make_batch: Callable[..., dict]) -> None:
    torch.manual_seed(0)
    per_video = build_model(CONFIGS["qd_detr"]).eval()
    tiled = build_model(CONFIGS["qd_detr"].replace(t2v_mask="tiled")).eval()
    tiled.load_state_dict(per_video.state_dict())
    padded = make_batch()
    full = make_batch(video_lens=(12, 12, 12), text_lens=(6, 6, 6))
    with torch.no_grad():
        assert torch.allclose(per_video(full)["pred_spans"], tiled(full)["pred_spans"], atol=1e-6)
        one = {k: v[:1] if isinstance(v, torch.Tensor) else v for k, v in padded.items()}
        assert torch.allclose(per_video(one)["pred_spans"], tiled(one)["pred_spans"], atol=1e-6)
        a, b = per_video(padded)["saliency_scores"], tiled(padded)["saliency_scores"]
    assert not torch.allclose(a[padded["video_mask"]], b[padded["video_mask"]], atol=1e-4)


def test_official_switches_are_validated() -> None:
    with pytest.raises(ValueError, match="model.neg_pairs must be one of train, always"):
        build_model(QDDETRConfig(**TINY, neg_pairs="eval"))
    with pytest.raises(ValueError, match="model.t2v_mask"):
        build_model(QDDETRConfig(**TINY, t2v_mask="tile"))
    with pytest.raises(ValueError, match=r"model.postprocess: unknown setting\(s\) \['clip'\]"):
        build_model(MomentDETRConfig(**TINY, postprocess={"clip": 2}))
    with pytest.raises(ValueError, match="model.postprocess.clamp must be one of"):
        build_model(MomentDETRConfig(**TINY, postprocess={"clamp": "video"}))


def test_lighthouse_postprocessing() -> None:
    from momentkit.modeling.postprocess import PostProcessor
    from momentkit.models.moment_detr import LIGHTHOUSE_POSTPROCESS

    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [1.0, 0.0]])  # foreground 0.88, 0.5, 0.73
    spans = torch.tensor([[0.5, 0.2], [0.0, 0.5], [0.95, 0.3]])  # cxw, normalised
    post = PostProcessor(**LIGHTHOUSE_POSTPROCESS)
    # x duration 10 (not the 9 clips x 2 s timeline), clamped to [0, 150], rounded to multiples
    # of 2 s, ties to even: [4, 6]; [-2.5, 2.5] -> [0, 2.5] -> [0, 2]; [8, 11] -> 5.5 -> [8, 12]
    rows = post.windows(logits, spans, duration=10.0, clip_len=2.0, timeline=18.0)
    assert [r[:2] for r in rows] == [[4.0, 6.0], [8.0, 12.0], [0.0, 2.0]]
    assert rows[0][2] == round(float(torch.tensor([2.0, 0.0]).softmax(0)[0]), 4)
    unclamped = PostProcessor(**{**LIGHTHOUSE_POSTPROCESS, "clamp": "none"})
    assert unclamped.windows(logits, spans, 10.0, 2.0)[2][:2] == [-2.0, 2.0]
    momentkit = PostProcessor().windows(logits, spans, 10.0, 2.0, timeline=18.0)
    assert momentkit[0][:2] == [8.0, 10.0]  # timeline scale, grid snapped, within the duration


def test_negative_pair_loss_forms() -> None:
    from momentkit.modeling.criterion import LossConfig
    from momentkit.modeling.losses import loss_saliency_neg_pair

    neg = torch.tensor([[-3.0, 0.5, 9.0, 12.0]])
    outputs = {"saliency_scores_neg": neg, "video_mask": torch.tensor([[True, True, True, False]])}
    soft = loss_saliency_neg_pair(outputs, {}, [], LossConfig())["loss_saliency_neg"]
    literal = loss_saliency_neg_pair(outputs, {}, [], LossConfig(neg_pair_form="log_sigmoid"))
    exact = sum(math.log1p(math.exp(x)) for x in (-3.0, 0.5, 9.0))
    assert abs(float(soft) - exact) < 1e-5
    assert abs(float(literal["loss_saliency_neg"]) - exact) < 1e-3  # float32 precision of 1 - p
    outputs["saliency_scores_neg"] = torch.tensor([[20.0, 0.5, 9.0, 1.0]])  # 1 - p = 0 at s=20
    assert math.isinf(
        float(
            loss_saliency_neg_pair(outputs, {}, [], LossConfig(neg_pair_form="log_sigmoid"))[
                "loss_saliency_neg"
            ]
        )
    )
    with pytest.raises(ValueError, match="loss.neg_pair_form"):
        LossConfig(neg_pair_form="exact").validate()
