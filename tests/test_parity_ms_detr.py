"""MS-DETR against the official release (snailma0229/MS-DETR), through its own checkpoints.

Each fixture (``tests/fixtures/parity/ms_detr_<preset>/``, written by
``scripts/parity/ms_detr_fixtures.py`` from the official code) holds the release's options, the
shapes of its state dict (the weights are :func:`random_state` draws, tied heads equal), inputs,
and the official outputs, losses and first-step gradient signatures. Here the official state is
saved the way ``train.py`` saves it, converted with ``convert_checkpoint(..., "ms_detr")``, and
momentkit's outputs, losses and gradients must equal the release's: outputs to 1e-5, losses to
1e-5 relative, gradients within ``compare_signatures``' tolerance.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

import momentkit.modeling.mtcd_denoising as mtcd_denoising
from momentkit.cli.main import main
from momentkit.interop import ms_detr as ms_detr_source
from momentkit.interop.convert import ConversionError, Converted, convert_checkpoint
from momentkit.interop.parity import (
    Fixture,
    compare_signatures,
    grad_signature,
    write_official_checkpoint,
)
from momentkit.interop.safe_pickle import OptionDict
from momentkit.models import MomentModel, build_criterion, build_model
from momentkit.training.config import build_config
from momentkit.utils.errors import MomentkitError

ROOT = Path(__file__).parent / "fixtures" / "parity"
FIXTURES = sorted(ROOT.glob("ms_detr_*"))
ATOL = 1e-5
CORE_TILES = 36  # the fixture stores SlowFast as a 64-channel block tiled 36 times
#: official loss name -> momentkit terms whose (weighted) sum it equals
LOSS_TERMS = {
    "loss_span": ["loss_span"],
    "loss_giou": ["loss_giou"],
    "loss_label": ["loss_label", "loss_label_neg"],
    "loss_saliency": ["loss_saliency_margin", "loss_saliency_rank", "loss_saliency_neg"],
    "loss_span_interm": ["loss_enc_span"],
    "loss_giou_interm": ["loss_enc_giou"],
    "loss_label_interm": ["loss_enc_label"],
    "loss_label_interm_neg": ["loss_enc_label_neg"],
    "tgt_loss_bbox": ["loss_dn_span"],
    "tgt_loss_giou": ["loss_dn_giou"],
    "tgt_loss_ce": ["loss_dn_label"],
}
#: the switches on which the paper and the release differ (docs/ms_detr.md)
SWITCHES = (
    "activation", "sentence_token", "mtcd_rank", "mtcd_candidates", "mtcd_min_anchor_width",
    "selection_init", "saliency_refinement", "denoising_negatives", "denoising_targets",
    "denoising_source", "decoder_negatives", "selection_negatives", "use_corpus", "fuse_dropout",
    "mtcd_content", "use_msde", "use_mtcd", "use_denoising", "num_queries",
)  # fmt: skip


def official_state(fx: Fixture) -> dict[str, torch.Tensor]:
    """The fixture's official state dict, tied heads sharing one tensor as in ``train.py``."""
    state = fx.official_state()
    for name, owner in fx.notes["tied"].items():
        state[name] = state[owner]
    return state


def video_feats(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    if "video_plain" in inputs:
        return torch.cat([inputs["video_plain"], inputs["tef"]], dim=-1)
    core = inputs["video_core"].repeat(1, 1, CORE_TILES)
    return torch.cat([core, inputs["video_clip"], inputs["tef"]], dim=-1)


def make_batch(fx: Fixture, rows: list[int], clips: int | None = None, words: int | None = None):
    x = fx.inputs
    scale = 3.0 if fx.notes["summed_saliency"] else 1.0  # momentkit: annotator mean
    return {
        "video_feats": video_feats(x)[rows][:, :clips],
        "video_mask": x["video_mask"][rows][:, :clips].bool(),
        "text_feats": x["text"][rows][:, :words],
        "text_mask": x["text_mask"][rows][:, :words].bool(),
        "span_targets": [{"spans": x[f"spans{i}"]} for i in rows],
        "saliency_all_labels": x["saliency_all_labels"][rows][:, :clips] / scale,
        "saliency_pos_labels": x["saliency_pos_labels"][rows],
        "saliency_neg_labels": x["saliency_neg_labels"][rows],
    }


@pytest.fixture(scope="module", params=FIXTURES, ids=lambda p: p.name)
def case(request, tmp_path_factory) -> tuple[Fixture, Converted, Path]:
    fx = Fixture(request.param)
    path = tmp_path_factory.mktemp(request.param.name) / "model_best.ckpt"
    write_official_checkpoint(path, official_state(fx), fx.opt, layout="namespace")
    return fx, convert_checkpoint(path, "ms_detr"), path


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.detach().double() - b.double()).abs().max()) if a.numel() else 0.0


def compare(got: dict[str, torch.Tensor], fx: Fixture, prefix: str) -> float:
    """Largest difference between momentkit outputs ``got`` (official names) and the fixture's
    ``prefix.*`` outputs, padded clips included (``project_padding``: the release projects
    them too)."""
    worst = 0.0
    for key, want in fx.outputs.items():
        if not key.startswith(prefix + ".") or key.removeprefix(prefix + ".") not in got:
            continue
        value = got[key.removeprefix(prefix + ".")].detach()
        diff = max_diff(value, want)
        assert diff <= ATOL, f"{fx.directory.name} {key}: {diff:.2e}"
        worst = max(worst, diff)
    return worst


def official_names(out: dict[str, Any]) -> dict[str, torch.Tensor]:
    """momentkit outputs under the fixture's (official) names."""
    names = {
        "pred_logits": out["pred_logits"],
        "pred_spans": out["pred_spans"],
        "saliency_scores": out["saliency_scores"],
    }
    if "saliency_scores_neg" in out:
        names["saliency_scores_neg"] = out["saliency_scores_neg"]
    if "pred_logits_neg" in out:
        names["pred_logits_neg"] = out["pred_logits_neg"]
    for i, aux in enumerate(out.get("aux_outputs", [])):
        names[f"aux{i}.pred_logits"] = aux["pred_logits"]
        names[f"aux{i}.pred_spans"] = aux["pred_spans"]
        if "pred_logits_neg" in aux:
            names[f"aux{i}.pred_logits_neg"] = aux["pred_logits_neg"]
    for ours, theirs in (("enc_outputs", "interm"), ("enc_outputs_neg", "interm_neg")):
        for key, value in out.get(ours, {}).items():
            names[f"{theirs}.{key}"] = value
    if "dn_pred_logits" in out:
        layers = [*out.get("aux_outputs", []), out]
        names["dn.pred_logits"] = torch.stack([x["dn_pred_logits"] for x in layers])
        names["dn.pred_spans"] = torch.stack([x["dn_pred_spans"] for x in layers])
    return names


def training_model(converted: Converted) -> MomentModel:
    """The converted model with every dropout at 0 (as the fixture's official run)."""
    config = converted.model.config.replace(dropout=0.0, input_dropout=0.0, fuse_dropout=0.0)
    model = build_model(config)
    model.load_state_dict(converted.model.state_dict())
    return model.train()


def replay_noise(fx: Fixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The release's denoising draws, fed to momentkit's builder."""
    bits, magnitude = fx.inputs.get("dn_sign_bits"), fx.inputs.get("dn_magnitude")
    if bits is None:
        return

    def noise(shape, generator=None):
        assert tuple(shape) == tuple(bits.shape)
        return bits * 2.0 - 1.0, magnitude.clone()

    monkeypatch.setattr(mtcd_denoising, "denoising_noise", noise)


# ------------------------------------------------------------------------------------ parity
def test_eval_outputs_match_the_release(case) -> None:
    fx, converted, _ = case
    model = converted.model.eval()
    b = len(fx.notes["clips"])
    batch = make_batch(fx, list(range(b)))
    with torch.no_grad():
        out = official_names(model(batch))
    assert compare(out, fx, "eval") <= ATOL
    for i, (clips, words) in enumerate(zip(fx.notes["clips"], fx.notes["words"])):
        single = make_batch(fx, [i], clips, words)
        with torch.no_grad():
            out = official_names(model(single))
        assert compare(out, fx, f"single{i}") <= ATOL


def test_training_outputs_losses_and_gradients_match_the_release(case, monkeypatch) -> None:
    fx, converted, _ = case
    replay_noise(fx, monkeypatch)
    model = training_model(converted)
    batch = make_batch(fx, list(range(len(fx.notes["clips"]))))
    out = model(batch)
    assert compare(official_names(out), fx, "train") <= ATOL
    losses = build_criterion(model.config)(out, batch)
    weights = fx.notes["weights"]
    for name, want in fx.losses.items():
        base = name.rsplit("_", 1)[0] if name[-1].isdigit() else name
        if base not in LOSS_TERMS:
            assert "error" in name or name == "total", name
            continue
        suffix = name.removeprefix(base)
        got = sum(
            float(losses[t + suffix].detach()) for t in LOSS_TERMS[base] if t + suffix in losses
        )
        assert got == pytest.approx(want * weights[name], rel=1e-5, abs=1e-6), name
    assert float(losses["loss"].detach()) == pytest.approx(fx.losses["total"], rel=1e-5)
    losses["loss"].backward()
    to_momentkit = dict(converted.report.mapped)
    params = dict(model.named_parameters())
    got = {name: params[to_momentkit[name]].grad for name in fx.grads}
    missing = [name for name, g in got.items() if g is None]
    assert not missing, f"no momentkit gradient for {missing[:5]}"
    worst = gradient_errors(grad_signature(got, fx.seed), fx.grads)
    bad = {k: v for k, v in worst.items() if v > 1.0}
    assert not bad, f"gradients differ: {sorted(bad.items(), key=lambda kv: -kv[1])[:5]}"


def gradient_errors(got: dict[str, list[float]], want: dict[str, list[float]]) -> dict[str, float]:
    """:func:`compare_signatures` per tensor, the absolute tolerance scaled by the gradient's
    norm ``|g|``: a gradient's sum can be 0 by construction (a layer feeding a LayerNorm, keys'
    biases under a softmax), where it holds only float rounding on either side, and small
    gradients behind a softmax carry float32 rounding of ~1e-4 ``|g|`` (measured: at most
    6e-5 ``|g|`` on the MS-DETR presets, 5e-4 ``|g|`` on the bare script's decoder
    self-attention, where a float64 run agrees with the release to 1e-7). A wrong computation
    is off by O(``|g|``); the 1e-6 floor covers gradients that are 0 up to rounding."""
    errors = {}
    for name, signature in want.items():
        norm = max(signature[1], 0.0) ** 0.5
        errors.update(
            compare_signatures(
                {name: got[name]}, {name: signature}, rtol=1e-4, atol=1e-6 + 2e-3 * norm
            )
        )
    return errors


def test_presets_are_the_release(case) -> None:
    """The converted config's switches are those of momentkit's preset of the dataset (the
    bare Charades script trains the release's single-stream baseline instead)."""
    fx, converted, _ = case
    preset = fx.notes["preset"]
    got = converted.model.config
    if preset.endswith("_bare"):
        assert (got.use_msde, got.use_mtcd, got.use_denoising) == (False, False, False)
        return
    want = build_config("ms_detr", f"ms_detr/{preset}").model
    for name in SWITCHES:
        assert getattr(got, name) == getattr(want, name), name
    assert got.stream_dims == [2304, 512] and got.loss.rank_label_scale == (
        want.loss.rank_label_scale
    )


# --------------------------------------------------------------------------- the conversion
def test_report_lists_unused_tensors_with_reasons(case) -> None:
    fx, converted, _ = case
    report = converted.report
    unused = dict(report.unused)
    assert all(reason for reason in unused.values())
    assert "txt_position_embed.position_embeddings.weight" in unused
    if fx.opt["use_sf"]:
        assert any(k.startswith("input_vid_proj.") for k in unused)
        assert any(k.startswith("transformer.t2v_encoder.") for k in unused)
    mapped = dict(report.mapped)
    if "class_embed.1.weight" in mapped:  # tied heads: both layers' names, one tensor
        assert mapped["class_embed.0.weight"] == mapped["class_embed.1.weight"]
    assert set(mapped) | set(unused) == set(fx.shapes)


def test_cli_convert_and_from_pretrained(tmp_path) -> None:
    fx = Fixture(ROOT / "ms_detr_charades_sta_bare")  # the smallest: conversion is the same
    path = write_official_checkpoint(tmp_path / "model_best.ckpt", official_state(fx), fx.opt)
    converted = convert_checkpoint(path, "ms_detr")
    out = tmp_path / "run"
    assert main(["convert", str(path), "--from", "ms_detr", "--out", str(out)]) == 0
    report = json.loads((out / "conversion.json").read_text())
    assert report["source"] == "ms_detr" and report["unused"]
    with safe_open(out / "model.safetensors", "pt") as f:  # no shared storage in our file
        tensors = [f.get_tensor(k) for k in f.keys()]
    assert len({t.data_ptr() for t in tensors}) == len(tensors)
    batch = make_batch(fx, [0])
    with torch.no_grad():
        want = converted.model.eval()(batch)["pred_spans"]
        for loaded in (MomentModel.from_pretrained(out), MomentModel.from_pretrained(path)):
            assert torch.equal(loaded.eval()(batch)["pred_spans"], want)
    assert convert_checkpoint(path).report.source == "ms_detr"  # detected from the file


# ---------------------------------------------------------------------------- bad checkpoints
@pytest.fixture(scope="module")
def qvh() -> tuple[Fixture, dict[str, torch.Tensor]]:
    fx = Fixture(ROOT / "ms_detr_qvhighlights")
    return fx, official_state(fx)


@pytest.fixture(scope="module")
def small() -> tuple[Fixture, dict[str, torch.Tensor]]:
    fx = Fixture(ROOT / "ms_detr_charades_sta_bare")
    return fx, official_state(fx)


def test_matches_recognises_ms_detr_and_rejects_other_sources(qvh) -> None:
    fx, state = qvh
    namespace = argparse.Namespace(**fx.opt)
    here = Path("x.ckpt")
    assert ms_detr_source.matches({"model": state, "opt": namespace}, here)
    ld_detr = argparse.Namespace(**{"dset_name": "hl", "num_encoder": 2, "queue_length": 4})
    ld_state = {"video_encoder.proj.weight": torch.zeros(1), "global_rep_token": torch.zeros(1)}
    assert not ms_detr_source.matches({"model": ld_state, "opt": ld_detr}, here)
    lighthouse = OptionDict(fx.opt)  # Lighthouse saves an EasyDict
    assert not ms_detr_source.matches({"model": state, "opt": lighthouse}, here)
    unimd = {"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}
    assert not ms_detr_source.matches(unimd, here)


def _error(path: Path, source: str | None = "ms_detr") -> str:
    with pytest.raises(MomentkitError) as info:
        convert_checkpoint(path, source)
    assert str(path) in str(info.value)
    return str(info.value)


def test_other_models_checkpoint_is_refused_naming_the_file(small, tmp_path, capsys) -> None:
    fx, state = small
    ld = tmp_path / "ld_detr.ckpt"
    ld_opt = {"dset_name": "hl", "num_encoder": 2, "queue_length": 4, "v_feat_dim": 2818}
    write_official_checkpoint(ld, {"video_encoder.proj.weight": torch.zeros(2)}, ld_opt)
    assert "not a ms_detr checkpoint" in _error(ld)
    unimd = tmp_path / "unimd.ckpt"
    write_official_checkpoint(unimd, state, {}, layout="unimd")
    assert "not a ms_detr checkpoint" in _error(unimd)
    assert main(["convert", str(ld), "--from", "ms_detr", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "ld_detr.ckpt" in err and "Traceback" not in err


def test_truncated_file_is_refused(small, tmp_path) -> None:
    fx, state = small
    path = write_official_checkpoint(tmp_path / "cut.ckpt", state, fx.opt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    _error(path)


def test_unknown_tensor_and_differing_tied_copies_are_refused(small, tmp_path) -> None:
    fx, state = small
    extra = write_official_checkpoint(
        tmp_path / "extra.ckpt", {**state, "transformer.extra.weight": torch.zeros(3)}, fx.opt
    )
    assert "unknown key layout" in _error(extra) and "transformer.extra.weight" in _error(extra)
    untied = dict(state)
    untied["class_embed.1.weight"] = state["class_embed.0.weight"] + 1.0
    path = write_official_checkpoint(tmp_path / "untied.ckpt", untied, fx.opt)
    assert "differ" in _error(path)


def test_unsupported_options_are_refused_naming_the_option(qvh) -> None:
    fx, _ = qvh
    here = Path("runs/model_best.ckpt")
    for option, value in (("span_loss_type", "ce"), ("use_txt_pos", True), ("v_feat_dim", 3000)):
        with pytest.raises(ConversionError, match=rf"runs/model_best\.ckpt: .*{option}"):
            ms_detr_source.config_from_options({**fx.opt, option: value}, here)
