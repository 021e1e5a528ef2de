"""LD-DETR against the official code (qingchen239/ld-detr): golden fixtures, conversion.

The fixtures under ``tests/fixtures/parity/ld_detr_<preset>/`` were written by
``scripts/parity/ld_detr_fixtures.py`` from the official code with random weights (every tensor,
norms and batch norms included). Each test writes those weights in the official ``train.py``
checkpoint layout, converts the file with ``momentkit.interop`` and replays the fixture's
sequence on the converted model: a padded evaluation batch, each video alone, a training step
(outputs, losses, gradients, queues, batch-norm statistics, momentum encoders) and a second
training forward whose batch (3 videos, queue of 8) is not enqueued.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from momentkit.cli.main import main
from momentkit.interop import ld_detr as interop
from momentkit.interop.convert import REPORT_NAME, ConversionError, Converted, convert_checkpoint
from momentkit.interop.parity import (
    Fixture,
    compare_signatures,
    grad_signature,
    write_official_checkpoint,
)
from momentkit.interop.safe_pickle import UnreadableCheckpointError
from momentkit.models import MomentModel, build_criterion
from momentkit.models.ld_detr import CHOICES, LDDETR, OFFICIAL

FIXTURES = Path(__file__).parent / "fixtures" / "parity"
PRESETS = ("qvhighlights", "charades_sta", "tacos")
ATOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------- helpers
def batch_of(fx: Fixture, rows: slice, rank_label_scale: float) -> dict[str, Any]:
    """The momentkit batch of the fixture's official inputs ``rows`` (padded to the longest)."""
    x = fx.inputs
    video_mask, text_mask = x["src_vid_mask"][rows].bool(), x["src_txt_mask"][rows].bool()
    t, n = int(video_mask.sum(1).max()), int(text_mask.sum(1).max())
    spans = x["span_labels"].split(x["span_counts"].tolist())[rows]
    clip_len = float(fx.opt["clip_length"])
    return {
        "video_feats": x["src_vid"][rows, :t],
        "video_mask": video_mask[:, :t],
        "text_feats": x["src_txt"][rows, :n],
        "text_mask": text_mask[:, :n],
        "clip_len": clip_len,
        "duration": video_mask.sum(1).float() * clip_len,
        "span_targets": [{"spans": s} for s in spans],
        # the official labels are annotator sums; momentkit's are means
        "saliency_all_labels": x["saliency_all_labels"][rows, :t] / rank_label_scale,
        "saliency_pos_labels": x["saliency_pos_labels"][rows],
        "saliency_neg_labels": x["saliency_neg_labels"][rows],
    }


def record(out: dict[str, Any], prefix: str, into: dict[str, torch.Tensor]) -> None:
    for key in ("pred_logits", "pred_spans", "saliency_scores"):
        into[f"{prefix}.{key}"] = out[key].detach().clone()
    for i, aux in enumerate(out.get("aux_outputs") or []):
        for key in ("pred_logits", "pred_spans"):
            into[f"{prefix}.aux{i}.{key}"] = aux[key].detach().clone()


def snapshot(model: LDDETR, into: dict[str, torch.Tensor], prefix: str, names: dict) -> None:
    """The momentkit tensors of the official names the fixture snapshots, in official layout."""
    state = model.state_dict()
    for official, ours in names.items():
        value = state[ours]
        if official.endswith("_queue"):
            value = value.t()
        into[f"{prefix}.{official}"] = value.detach().clone()


@functools.cache
def converted_fixture(preset: str, tmp: Path) -> tuple[Fixture, Converted, Path]:
    """The fixture, its weights written as an official checkpoint and that file converted."""
    fx = Fixture(FIXTURES / f"ld_detr_{preset}")
    path = write_official_checkpoint(
        tmp / f"{preset}.ckpt", fx.official_state(), fx.opt, layout="namespace"
    )
    return fx, convert_checkpoint(path, "ld_detr"), path


def run_sequence(
    fx: Fixture,
    converted: Converted,
    eval_only: bool = False,
    backward: bool = True,
    **changes: Any,
) -> dict[str, Any]:
    """The fixture's sequence on a fresh copy of the converted model (``changes``: config
    fields changed from the converted ones; ``eval_only``: its first step only; ``backward``:
    also the gradients of the training step)."""
    base = converted.model
    # every dropout at 0 (training is deterministic, as in the fixture; evaluation has none)
    # and the alpha ramp at step 3 of 10 when the training step comes
    config = base.config.replace(
        dropout=0.0, input_dropout=0.0, align_alpha_warmup_steps=10, **changes
    )
    model = LDDETR(config)
    model.load_state_dict(base.state_dict(), strict=config.align_sim_loss)
    scale = config.loss.rank_label_scale
    official_of = {ours: official for official, ours in converted.report.mapped}
    ours_of = {official: ours for official, ours in converted.report.mapped}
    got: dict[str, torch.Tensor] = {}
    model.eval()
    with torch.no_grad():
        record(model(batch_of(fx, slice(None), scale)), "eval", got)
        if eval_only:
            return {"outputs": got}
        for i in range(len(fx.inputs["span_counts"])):
            record(model(batch_of(fx, slice(i, i + 1), scale)), f"single{i}", got)

    trained = model
    assert trained.distill_align is not None
    trained.distill_align.steps.fill_(3)
    trained.train()
    batch = batch_of(fx, slice(None), scale)
    out = trained(batch)
    record(out, "train", got)
    losses = build_criterion(config)(out, batch)
    grads: dict[str, torch.Tensor] = {}
    if backward:
        losses["loss"].backward()
        grads = {
            official_of[name]: p.grad
            for name, p in trained.named_parameters()
            if p.grad is not None and name in official_of
        }
    snapshots = {
        k.removeprefix("after_train."): ours_of[k.removeprefix("after_train.")]
        for k in fx.outputs
        if k.startswith("after_train.")
    }
    snapshot(trained, got, "after_train", snapshots)
    with torch.no_grad():
        out3 = trained(batch_of(fx, slice(0, 3), scale))
    record(out3, "train3", got)
    for term in ("loss_align", "loss_sim"):
        if term in out3:
            got[f"train3.{term}"] = out3[term].reshape(1)
    # the official code keeps one pointer for both queues
    snapshots["distill_align.queue_ptr"] = "distill_align.text_queue.ptr"
    snapshot(trained, got, "after_train3", snapshots)
    return {
        "outputs": got,
        "losses": {k: float(v.detach()) for k, v in losses.items()},
        "grads": grad_signature(grads, fx.seed),
    }


@functools.cache
def replay(preset: str, tmp: Path) -> dict[str, Any]:
    """:func:`run_sequence` of the converted official checkpoint (cached per preset)."""
    fx, converted, path = converted_fixture(preset, tmp)
    return {
        "fixture": fx,
        "converted": converted,
        "checkpoint": path,
        **run_sequence(fx, converted),
    }


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ld_detr_parity")


def max_diff(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], prefix: str) -> float:
    """Largest absolute difference over the fixture outputs named ``prefix...`` (``inf`` for
    one momentkit did not produce or produced with another shape)."""
    keys = [k for k in want if k.startswith(prefix)]
    assert keys, f"the fixture has no '{prefix}' outputs"
    worst = 0.0
    for k in keys:
        if k not in got or got[k].shape != want[k].shape:
            return math.inf
        worst = max(worst, float((got[k].double() - want[k].double()).abs().max()))
    return worst


def loss_pairs(result: dict[str, Any], fx: Fixture) -> dict[str, tuple[float, float]]:
    """``{term: (momentkit, official)}`` of the weighted loss terms and the total."""
    weights, got = fx.notes["loss_weights"], dict(result["losses"])
    if "loss_saliency_margin" in got:  # the official term is margin + rank contrastive
        got["loss_saliency"] = got["loss_saliency_margin"] + got.get("loss_saliency_rank", 0.0)
    pairs = {"loss": (got["loss"], fx.losses["total"])}
    for term, value in fx.losses.items():
        if term != "total":
            pairs[term] = (got.get(term, math.nan), value * weights[term])
    return pairs


# --------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("part", ["eval.", "single", "train.", "train3."])
def test_outputs_match_the_official_code(preset: str, part: str, tmp: Path) -> None:
    """Padded batch, each video alone, the training forward, the non-enqueued batch: logits,
    spans, saliency and every auxiliary layer within 1e-5."""
    r = replay(preset, tmp)
    assert max_diff(r["outputs"], r["fixture"].outputs, part) <= ATOL


@pytest.mark.parametrize("preset", PRESETS)
def test_state_after_the_steps_matches(preset: str, tmp: Path) -> None:
    """Queues, pointer (3 videos do not divide the queue of 8: not enqueued), batch-norm
    statistics over the padding, momentum encoders updated in every forward (eval too)."""
    r = replay(preset, tmp)
    assert max_diff(r["outputs"], r["fixture"].outputs, "after_train") <= ATOL
    assert int(r["outputs"]["after_train3.distill_align.queue_ptr"]) == 4


@pytest.mark.parametrize("preset", PRESETS)
def test_losses_match_the_official_criterion(preset: str, tmp: Path) -> None:
    """Every weighted term (focal labels, spans, saliency, align, sim, auxiliary) and the total."""
    r = replay(preset, tmp)
    for term, (got, want) in loss_pairs(r, r["fixture"]).items():
        assert got == pytest.approx(want, rel=1e-5, abs=1e-5), term


def scaled(signatures: dict[str, list[float]], want: dict[str, list[float]]) -> tuple[dict, dict]:
    """``(sums, rest)`` of :func:`grad_signature` results divided by each tensor's gradient
    norm (at least 1e-3 of the whole gradient's: key biases of attention get ~0 gradients).

    The sum is compared on its own: it cancels to ~0 for weights that feed a LayerNorm, so its
    float32 rounding is large next to its value."""
    total = math.sqrt(sum(w[1] for w in want.values()))
    sums, rest = {}, {}
    for name, (s, sq, proj, *first) in signatures.items():
        n = max(math.sqrt(want[name][1]), 1e-3 * total)
        sums[name] = [s / n]
        rest[name] = [sq / n**2, proj / n, *(v / n for v in first)]
    return sums, rest


@pytest.mark.parametrize("preset", PRESETS)
def test_first_gradient_step_matches(preset: str, tmp: Path) -> None:
    """Every parameter's gradient after one backward pass of the official total loss."""
    r = replay(preset, tmp)
    want = r["fixture"].grads
    assert want is not None
    got_sums, got_rest = scaled(r["grads"], want)
    want_sums, want_rest = scaled(want, want)
    worst = compare_signatures(got_rest, want_rest, rtol=1e-4, atol=2e-5)
    worst_sums = compare_signatures(got_sums, want_sums, rtol=0.0, atol=5e-4)
    for table in (worst, worst_sums):
        assert max(table.values()) <= 1.0, sorted(table.items(), key=lambda kv: -kv[1])[:5]


#: each official switch set back to momentkit's default, and where the fixture then disagrees
FLIPS: dict[str, tuple[dict[str, Any], str]] = {
    **{name: ({name: CHOICES[name][0]}, "eval.") for name in CHOICES},
    "align_mean": ({"align_mean": "masked"}, "loss_align"),
    "momentum_update": ({"momentum_update": "train"}, "after_train.momentum"),
    "align_enqueue": ({"align_enqueue": "any"}, "after_train3.distill_align.queue_ptr"),
    "align_sim_loss": ({"align_sim_loss": False}, "loss_sim"),
    "labels_sigmoid_focal": ({}, "loss_label"),
}


@pytest.mark.parametrize("switch", sorted(FLIPS))
def test_every_official_switch_is_needed(switch: str, tmp: Path) -> None:
    """With one switch back at momentkit's default, the official outputs are not reproduced
    (the parity tests above can fail, and each switch matters on these inputs)."""
    fx, converted, _ = converted_fixture("qvhighlights", tmp)
    changes, where = FLIPS[switch]
    if switch == "labels_sigmoid_focal":
        loss = converted.model.config.loss
        losses = ["labels" if n == "labels_sigmoid_focal" else n for n in loss.losses]
        changes = {"loss": type(loss)(**{**vars(loss), "losses": losses})}
    r = run_sequence(fx, converted, eval_only=where == "eval.", backward=False, **changes)
    if where.startswith("loss_"):
        got, want = loss_pairs(r, fx)[where]
        assert not got == pytest.approx(want, rel=1e-3), (switch, got, want)
    else:
        assert max_diff(r["outputs"], fx.outputs, where) > 100 * ATOL, switch


def test_official_switches_are_all_flipped_above() -> None:
    assert set(OFFICIAL) | {"labels_sigmoid_focal"} == set(FLIPS)


# ----------------------------------------------------------------------------- conversion
def test_report_lists_every_tensor_and_the_unused_ones(tmp: Path) -> None:
    fx, converted, _ = converted_fixture("qvhighlights", tmp)
    report = converted.report
    mapped = {official for official, _ in report.mapped}
    unused = {official: why for official, why in report.unused}
    assert mapped | set(unused) == set(fx.shapes)  # nothing dropped silently
    assert set(unused) == {k for k in fx.shapes if k.startswith("txt_position_embed.")}
    assert all("use_txt_pos" in why for why in unused.values())
    assert dict(report.derived).keys() == {"distill_align.text_queue.ptr", "distill_align.steps"}
    assert report.options["num_decoder_loops"] == 3
    config = converted.model.config
    assert config.official_switches == {name: True for name in OFFICIAL}
    assert config.decoder_loops == 3 and config.conv_blocks == 2 and config.nheads == 8
    data = converted.experiment["data"]
    assert data["video_features"] == ["slowfast_features", "clip_features"]
    assert data["text_features"] == "clip_text_features"
    assert (data["dataset"], data["clip_len"], data["max_v_len"]) == ("qvhighlights", 2.0, 75)


def test_charades_options_reach_the_config(tmp: Path) -> None:
    _, converted, _ = converted_fixture("charades_sta", tmp)
    config, data = converted.model.config, converted.experiment["data"]
    assert (data["dataset"], data["clip_len"], data["max_v_len"]) == ("charades_sta", 1.0, None)
    assert config.align_alpha == 0.3 and config.loss.rank_label_scale == 1.0
    assert config.loss.weights["loss_sim"] == 0.4
    assert config.loss.weights["loss_saliency_rank"] == 1.5
    # ld_detr/inference.py post-processes Charades-STA (SlowFast + CLIP) with clip_ts [0, 150]
    assert (config.postprocess["clamp"], config.postprocess["max_time"]) == ("fixed", 150.0)


def test_cli_convert_and_from_pretrained(tmp: Path, capsys: pytest.CaptureFixture) -> None:
    fx, converted, path = converted_fixture("tacos", tmp)
    assert converted.model.config.postprocess["clamp"] == "none"  # TACoS: round_multiple only
    out = tmp / "tacos_run"
    assert main(["convert", str(path), "--from", "ld_detr", "--out", str(out)]) == 0
    assert "txt_position_embed" in capsys.readouterr().out
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["source"] == "ld_detr" and report["variant"] == "official"
    batch = batch_of(fx, slice(None), converted.model.config.loss.rank_label_scale)
    for model in (MomentModel.from_pretrained(out), MomentModel.from_pretrained(path)):
        assert isinstance(model, LDDETR)
        model.eval()
        with torch.no_grad():
            scores = model(batch)["saliency_scores"]
        assert (scores - fx.outputs["eval.saliency_scores"]).abs().max() <= ATOL
    # UniMD's --weights choice means nothing for an LD-DETR file: refused, naming the file
    assert main(["convert", str(path), "--weights", "raw", "--out", str(tmp / "w")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "no conversion options" in err and not (tmp / "w").exists()


# ------------------------------------------------------------------------------ bad input
def official_like(path: Path, state: dict[str, torch.Tensor], **opt: Any) -> Path:
    return write_official_checkpoint(path, state, opt, layout="namespace")


def easydict_options(monkeypatch: pytest.MonkeyPatch, **values: Any) -> dict:
    """Options pickled as ``easydict.EasyDict`` (Lighthouse's holder), without easydict."""
    module = types.ModuleType("easydict")

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "easydict", "EasyDict"
    module.EasyDict = EasyDict  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "easydict", module)
    return EasyDict(values)


def test_other_models_checkpoints_are_refused_naming_the_file(
    tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ms_detr = official_like(  # MS-DETR: a Namespace opt too, but its own tensor names
        tmp / "ms_detr.ckpt",
        {"input_txt_proj.0.LayerNorm.weight": torch.ones(4), "global_rep_token": torch.ones(4)},
        dset_name="hl",
        hidden_dim=4,
    )
    unimd = write_official_checkpoint(
        tmp / "unimd.pth.tar", {"backbone.weight": torch.ones(2)}, {}, layout="unimd"
    )
    lighthouse = write_official_checkpoint(
        tmp / "qd_detr.ckpt",
        {"transformer.decoder.norm.weight": torch.ones(4), "saliency_proj1.weight": torch.ones(2)},
        {},
        layout="plain",
        extra={"opt": easydict_options(monkeypatch, model_name="qd_detr")},
    )
    for path in (ms_detr, unimd, lighthouse):
        with pytest.raises(ConversionError, match=rf"{path.name}: this is not a ld_detr"):
            convert_checkpoint(path, "ld_detr")


def test_matches_tells_ld_detr_files_from_the_others(tmp: Path) -> None:
    fx, _, path = converted_fixture("qvhighlights", tmp)
    state = fx.official_state()
    assert interop.matches({"model": state, "opt": argparse.Namespace()}, path)
    prefixed = {f"module.{k}": v for k, v in state.items()}
    assert interop.matches({"model": prefixed, "opt": argparse.Namespace()}, path)
    assert not interop.matches({"state_dict": state}, path)  # UniMD's key
    assert not interop.matches({"model": {"transformer.encoder.x": torch.ones(1)}}, path)
    assert not interop.matches([state], path)


def test_truncated_file_is_a_clear_error(tmp: Path) -> None:
    _, _, path = converted_fixture("qvhighlights", tmp)
    cut = tmp / "cut.ckpt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UnreadableCheckpointError, match=r"cut\.ckpt: not a readable"):
        convert_checkpoint(cut, "ld_detr")


def test_unknown_key_layout_and_missing_options_name_the_file(tmp: Path) -> None:
    fx, _, _ = converted_fixture("qvhighlights", tmp)
    extra = {**fx.official_state(), "convolutional_fuser.v2t_extractor.extra": torch.ones(3)}
    path = official_like(tmp / "extra.ckpt", extra, **fx.opt)
    with pytest.raises(ConversionError, match=r"extra\.ckpt: unknown key layout.*v2t_extractor"):
        convert_checkpoint(path, "ld_detr")
    no_opt = tmp / "no_opt.ckpt"
    torch.save({"model": fx.official_state(), "epoch": 3}, no_opt)
    with pytest.raises(ConversionError, match=r"no_opt\.ckpt: .*no saved training options"):
        convert_checkpoint(no_opt, "ld_detr")
    ce = official_like(tmp / "ce.ckpt", fx.official_state(), **{**fx.opt, "span_loss_type": "ce"})
    with pytest.raises(ConversionError, match=r"ce\.ckpt: option 'span_loss_type'"):
        convert_checkpoint(ce, "ld_detr")


def test_shapes_the_options_do_not_explain_are_an_error(tmp: Path) -> None:
    fx, _, _ = converted_fixture("qvhighlights", tmp)
    path = official_like(tmp / "dims.ckpt", fx.official_state(), **{**fx.opt, "t_feat_dim": 11})
    with pytest.raises(ConversionError, match=r"dims\.ckpt: official tensor 'text_encoder"):
        convert_checkpoint(path, "ld_detr")


def test_unsupported_official_options_are_refused(tmp: Path) -> None:
    """The audio variant reads two TEF copies (video and audio), a text position embedding of
    another form: both refused with the option named."""
    fx, _, _ = converted_fixture("qvhighlights", tmp)
    state = fx.official_state()
    for name, value in (("a_feat_dir", "pann_features"), ("use_txt_pos", True)):
        path = official_like(tmp / f"{name}.ckpt", state, **{**fx.opt, name: value})
        with pytest.raises(ConversionError, match=rf"{name}\.ckpt: option '{name}'"):
            convert_checkpoint(path, "ld_detr")
