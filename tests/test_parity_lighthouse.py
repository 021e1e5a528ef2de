"""Moment-DETR and QD-DETR against line/lighthouse's released code, through its checkpoints.

Each fixture under ``tests/fixtures/parity/lighthouse_<model>_<preset>/`` holds what the official
code computed with random weights (``scripts/parity/lighthouse_fixtures.py``): outputs of a
padded batch and of one video alone, the criterion's losses, the prediction rows of its
evaluation and the gradient signature of one backward pass. The tests write the weights as a
Lighthouse checkpoint, convert it (``--from lighthouse``), run momentkit on the same inputs and
compare; then check the converter's refusals.
"""

from __future__ import annotations

import argparse
import math
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from momentkit.cli.main import main
from momentkit.interop import lighthouse
from momentkit.interop.convert import ConversionError, Converted, convert_checkpoint
from momentkit.interop.parity import (
    Fixture,
    compare_signatures,
    grad_signature,
    write_official_checkpoint,
)
from momentkit.interop.safe_pickle import UnreadableCheckpointError
from momentkit.modeling.postprocess import PostProcessor
from momentkit.models import MomentModel, build_criterion, build_model
from momentkit.training.config import build_config

FIXTURES = Path(__file__).parent / "fixtures" / "parity"
PRESETS = ("qvhighlights", "charades_sta", "tacos")
NAMES = [f"lighthouse_{m}_{p}" for m in ("moment_detr", "qd_detr") for p in PRESETS]
ATOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread")


class Case:
    """A fixture, its Lighthouse checkpoint converted, and the momentkit batch of its inputs."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.name = name
        self.fixture = Fixture(FIXTURES / name)
        self.checkpoint = write_official_checkpoint(
            tmp / f"{name}.ckpt", self.fixture.official_state(), self.fixture.opt, layout="plain"
        )
        self.converted: Converted = convert_checkpoint(self.checkpoint, "lighthouse")
        self.model = self.converted.model.eval()
        self.batch = momentkit_batch(self.fixture)
        torch.manual_seed(0)
        self.outputs = self.model(self.batch)


def momentkit_batch(fx: Fixture, videos: int | None = None) -> dict[str, Any]:
    """The fixture's official inputs as a momentkit batch dict (the loader's conventions: the
    QVHighlights saliency is the annotators' mean, Lighthouse's is their sum)."""
    i = fx.inputs
    n = len(i["src_vid"]) if videos is None else videos
    scale = 3.0 if fx.opt["dset_name"] == "qvhighlight" else 1.0
    return {
        "video_feats": i["src_vid"][:n],
        "video_mask": i["src_vid_mask"][:n].bool(),
        "text_feats": i["src_txt"][:n],
        "text_mask": i["src_txt_mask"][:n].bool(),
        "span_targets": [{"spans": i[f"span_labels.{k}"]} for k in range(n)],
        "saliency_all_labels": i["saliency_all_labels"][:n] / scale,
        "saliency_pos_labels": i["saliency_pos_labels"][:n],
        "saliency_neg_labels": i["saliency_neg_labels"][:n],
        "duration": i["duration"][:n].float(),
        "clip_len": float(fx.opt["clip_length"]),
        "qids": [100 + k for k in range(n)],
        "vids": [f"video{k}" for k in range(n)],
    }


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("lighthouse")
    return {name: Case(name, tmp) for name in NAMES}


@pytest.fixture(params=NAMES)
def case(request: pytest.FixtureRequest, cases: dict[str, Case]) -> Case:
    return cases[request.param]


def max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    diff = (a.detach().float() - b.float()).abs()
    if mask is not None:
        diff = diff * mask.unsqueeze(-1) if diff.dim() > mask.dim() else diff * mask
    return float(diff.max())


def output_diffs(out: dict[str, Any], fx: Fixture, prefix: str, mask: torch.Tensor) -> dict:
    """Largest difference per official output (saliency on valid clips)."""
    diffs = {}
    for key, want in fx.outputs.items():
        name = key.removeprefix(prefix)
        if not key.startswith(prefix) or name.startswith(("predictions.", "single.")):
            continue
        if name.startswith("aux_outputs."):
            _, layer, field = name.split(".")
            got = out["aux_outputs"][int(layer)][field]
        elif name == "video_mask":
            continue
        else:
            got = out[name]
        diffs[key] = max_diff(got, want, mask if name.startswith("saliency") else None)
    return diffs


def test_every_fixture_is_there() -> None:
    assert sorted(p.name for p in FIXTURES.glob("lighthouse_*")) == sorted(NAMES)
    for name in NAMES:
        size = sum(f.stat().st_size for f in (FIXTURES / name).iterdir())
        assert size < 200_000


def test_outputs_of_a_padded_batch_match(case: Case) -> None:
    fx, mask = case.fixture, case.batch["video_mask"]
    diffs = output_diffs(case.outputs, fx, "", mask)
    expected = {"pred_logits", "pred_spans", "saliency_scores", "aux_outputs.0.pred_spans"}
    if "qd_detr" in case.name:
        expected.add("saliency_scores_neg")  # the released code pairs negatives in eval too
    assert expected <= set(diffs)
    assert max(diffs.values()) <= ATOL, diffs


def test_a_single_video_matches(case: Case) -> None:
    fx = case.fixture
    t0, n0 = fx.notes["num_clips"][0], fx.notes["num_words"][0]
    batch = momentkit_batch(fx, videos=1)
    for key, length in (("video", t0), ("text", n0)):
        batch[f"{key}_feats"] = batch[f"{key}_feats"][:, :length]
        batch[f"{key}_mask"] = batch[f"{key}_mask"][:, :length]
    with torch.no_grad():
        out = case.model(batch)
    diffs = output_diffs(out, fx, "single.", batch["video_mask"])
    assert "single.pred_spans" in diffs and max(diffs.values()) <= ATOL, diffs


def test_padded_positions_match_when_padding_is_projected(case: Case) -> None:
    """``project_padding`` (as the released code) also reproduces the values past each video's
    end, which nothing reads; without it only they differ."""
    config = case.model.config.replace(project_padding=True)
    model = build_model(config).eval()
    model.load_state_dict(case.model.state_dict())
    with torch.no_grad():
        out = model(case.batch)
    for key in ("saliency_scores", "saliency_scores_neg"):
        if key in case.fixture.outputs:
            assert max_diff(out[key], case.fixture.outputs[key]) <= ATOL


def test_losses_match(case: Case) -> None:
    fx, config = case.fixture, case.model.config
    losses = build_criterion(config)(case.outputs, case.batch)
    weights = config.loss.weights
    for term in ("loss_span", "loss_giou", "loss_label"):
        for layer in ("", "_0"):
            got = float(losses[term + layer].detach()) / weights[term]
            assert abs(got - fx.losses[term + layer]) <= ATOL, term + layer
    # Lighthouse returns its saliency terms as one sum weighted lw_saliency
    saliency = [k for k in losses if k.startswith("loss_saliency")]
    assert len(saliency) == (3 if "qd_detr" in case.name else 1)
    got = sum(float(losses[k].detach()) for k in saliency) / weights["loss_saliency_margin"]
    assert abs(got - fx.losses["loss_saliency"]) <= ATOL
    total = fx.losses["loss_overall"]
    assert abs(float(losses["loss"].detach()) - total) <= ATOL * max(1.0, abs(total))


def gradient_check(case: Case) -> tuple[dict[str, float], float]:
    """``compare_signatures`` per official tensor (<= 1 passes) with tolerances scaled by the
    tensor's gradient norm, floored at 1e-2 of the whole gradient's norm (gradients that are 0
    analytically, e.g. of key biases, are float32 noise), and the largest absolute difference."""
    fx = case.fixture
    model = case.model
    model.zero_grad()
    out = model(case.batch)
    build_criterion(model.config)(out, case.batch)["loss"].backward()
    params = dict(model.named_parameters())
    grads = {off: params[mk].grad for off, mk in case.converted.report.mapped if off in fx.grads}
    got = grad_signature(grads, fx.seed)
    total = math.sqrt(sum(sig[1] for sig in fx.grads.values()))
    worst, largest = {}, 0.0
    for name, want in fx.grads.items():
        scale = max(math.sqrt(want[1]), 1e-2 * total)
        worst.update(
            compare_signatures({name: got[name]}, {name: want}, rtol=1e-4, atol=1e-5 * scale)
        )
        largest = max(largest, *(abs(a - b) for a, b in zip(got[name], want)))
    return worst, largest


def test_first_gradient_step_matches(case: Case) -> None:
    fx = case.fixture
    mapped = {off for off, _ in case.converted.report.mapped}
    assert set(fx.grads) <= mapped  # every official tensor with a gradient has a momentkit one
    worst, _ = gradient_check(case)
    assert set(worst) == set(fx.grads)
    assert max(worst.values()) <= 1.0, sorted(worst.items(), key=lambda kv: -kv[1])[:3]


def test_predictions_match_lighthouse_evaluation(case: Case) -> None:
    fx, config = case.fixture, case.model.config
    preds = PostProcessor(**config.postprocess)(case.outputs, case.batch)
    want = fx.outputs["predictions.windows"]
    got = torch.tensor([p.pred_relevant_windows for p in preds], dtype=torch.float64)
    assert got.shape == want.shape  # every query kept, in the same order
    assert torch.equal(got[..., :2], want[..., :2])  # multiples of the clip length
    assert float((got[..., 2] - want[..., 2]).abs().max()) <= 1e-4  # 4-decimal scores
    if "predictions.saliency" in fx.outputs:  # half precision, valid clips only
        for pred, row, n in zip(preds, fx.outputs["predictions.saliency"], fx.notes["num_clips"]):
            assert len(pred.pred_saliency_scores) == n
            assert max(abs(a - b) for a, b in zip(pred.pred_saliency_scores, row[:n])) <= 2e-3


def test_conversion_report_lists_every_tensor(case: Case) -> None:
    report = case.converted.report
    state = case.fixture.official_state()
    assert {o for o, _ in report.mapped} | {o for o, _ in report.unused} == set(state)
    assert {o for o, _ in report.unused} == {k for k in state if k.startswith("txt_position")}
    assert all("use_txt_pos" in why for _, why in report.unused)
    assert report.variant == "official" and report.source == "lighthouse"
    experiment = case.converted.experiment
    assert experiment["data"]["video_features"] == case.fixture.opt["v_feat_dirs"]
    assert experiment["data"]["clip_len"] == float(case.fixture.opt["clip_length"])


@pytest.mark.parametrize("model", ["moment_detr", "qd_detr"])
@pytest.mark.parametrize("preset", PRESETS)
def test_real_data_presets_follow_the_released_code(
    cases: dict[str, Case], model: str, preset: str
) -> None:
    """The preset's switches, losses, matcher and post-processing equal those of a converted
    Lighthouse checkpoint of the same dataset (sizes aside)."""
    converted = cases[f"lighthouse_{model}_{preset}"].model.config.to_dict()
    config = build_config(model, preset=preset).model.to_dict()
    sized = {"video_dim", "text_dim", "max_video_len", "max_text_len", "dim_feedforward"}
    differ = sorted(k for k in config if k not in sized and config[k] != converted[k])
    assert not differ, {k: (config[k], converted[k]) for k in differ}


def test_cli_convert_and_from_pretrained(cases: dict[str, Case], tmp_path: Path) -> None:
    case = cases["lighthouse_qd_detr_tacos"]
    out = tmp_path / "run"
    assert main(["convert", str(case.checkpoint), "--from", "lighthouse", "--out", str(out)]) == 0
    assert (out / "conversion.json").is_file()
    for source in (out, case.checkpoint):  # the written checkpoint, and the official file
        model = MomentModel.from_pretrained(source).eval()
        with torch.no_grad():
            spans = model(case.batch)["pred_spans"]
        assert max_diff(spans, case.fixture.outputs["pred_spans"]) <= ATOL


# ---------------------------------------------------------------------------- refusals
def easydict_module() -> types.ModuleType:
    """A stand-in ``easydict`` whose ``EasyDict`` pickles under that name."""
    module = types.ModuleType("easydict")

    class EasyDict(dict):
        def __getattr__(self, name: str) -> Any:
            return self[name]

        def __setattr__(self, name: str, value: Any) -> None:
            super().__setattr__(name, value)
            self[name] = value

    EasyDict.__module__, EasyDict.__qualname__ = "easydict", "EasyDict"
    module.EasyDict = EasyDict
    return module


def test_an_easydict_checkpoint_is_read_and_detected(
    cases: dict[str, Case], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lighthouse's real layout: ``opt`` an ``easydict.EasyDict`` (read as ``OptionDict``)."""
    case = cases["lighthouse_moment_detr_qvhighlights"]
    module = easydict_module()
    monkeypatch.setitem(sys.modules, "easydict", module)
    opt = module.EasyDict()
    for key, value in case.fixture.opt.items():
        setattr(opt, key, value)
    path = tmp_path / "best.ckpt"
    torch.save(
        {"model": case.fixture.official_state(), "optimizer": {}, "lr_scheduler": {},
         "epoch": 7, "opt": opt},
        path,
    )  # fmt: skip
    monkeypatch.delitem(sys.modules, "easydict")  # momentkit never imports it
    converted = convert_checkpoint(path)  # detected
    assert (
        converted.report.source == "lighthouse" and "saved after epoch 7" in converted.report.notes
    )
    with torch.no_grad():
        logits = converted.model.eval()(case.batch)["pred_logits"]
    assert max_diff(logits, case.fixture.outputs["pred_logits"]) <= ATOL


def test_detection_claims_lighthouse_files_only(cases: dict[str, Case]) -> None:
    fx = cases["lighthouse_qd_detr_qvhighlights"].fixture
    state = {"x": torch.zeros(1)}
    assert lighthouse.matches({"model": state, "opt": dict(fx.opt)}, Path("a"))
    namespace = argparse.Namespace(**fx.opt)  # LD-DETR / MS-DETR save a Namespace
    assert not lighthouse.matches({"model": state, "opt": namespace}, Path("a"))
    assert not lighthouse.matches({"state_dict": state, "epoch": 1}, Path("a"))  # UniMD
    assert not lighthouse.matches({"model": state, "opt": {"dset_name": "x"}}, Path("a"))


def write(tmp: Path, name: str, state: dict, opt: dict, layout: str = "plain") -> Path:
    return write_official_checkpoint(tmp / name, state, opt, layout=layout)


def test_refusals_name_the_file(cases: dict[str, Case], tmp_path: Path) -> None:
    md = cases["lighthouse_moment_detr_qvhighlights"].fixture
    qd = cases["lighthouse_qd_detr_qvhighlights"].fixture
    state, opt = md.official_state(), md.opt
    # another Lighthouse model
    path = write(tmp_path, "cg.ckpt", state, {**opt, "model_name": "cg_detr"})
    with pytest.raises(ConversionError, match=r"cg\.ckpt: a Lighthouse checkpoint of 'cg_detr'"):
        convert_checkpoint(path, "lighthouse")
    # Moment-DETR weights whose options say QD-DETR
    path = write(tmp_path, "mixed.ckpt", state, {**opt, "model_name": "qd_detr"})
    with pytest.raises(ConversionError, match=r"mixed\.ckpt: .*has shape .* another model"):
        convert_checkpoint(path, "lighthouse")
    # an LD-DETR / MS-DETR style file given with --from lighthouse
    path = write(tmp_path, "ld.ckpt", qd.official_state(), qd.opt, layout="namespace")
    with pytest.raises(ConversionError, match=r"ld\.ckpt: this is not a lighthouse checkpoint"):
        convert_checkpoint(path, "lighthouse")
    path = write(tmp_path, "unimd.pth.tar", state, {}, layout="unimd")
    with pytest.raises(ConversionError, match=r"unimd\.pth\.tar: this is not a lighthouse"):
        convert_checkpoint(path, "lighthouse")
    # unknown key layout
    extra = {**state, "transformer.refiner.weight": torch.zeros(2)}
    path = write(tmp_path, "extra.ckpt", extra, opt)
    with pytest.raises(ConversionError, match=r"extra\.ckpt: unknown key layout.*refiner"):
        convert_checkpoint(path, "lighthouse")
    # options momentkit does not implement
    path = write(tmp_path, "ce.ckpt", state, {**opt, "span_loss_type": "ce"})
    with pytest.raises(ConversionError, match=r"ce\.ckpt: span_loss_type 'ce'"):
        convert_checkpoint(path, "lighthouse")


def test_a_truncated_file_is_unreadable(cases: dict[str, Case], tmp_path: Path, capsys) -> None:
    data = cases["lighthouse_moment_detr_tacos"].checkpoint.read_bytes()
    path = tmp_path / "cut.ckpt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableCheckpointError, match=r"cut\.ckpt: not a readable"):
        convert_checkpoint(path, "lighthouse")
    assert main(["convert", str(path), "--from", "lighthouse", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "cut.ckpt" in err and "Traceback" not in err


def test_audio_channels_are_reordered(cases: dict[str, Case], tmp_path: Path) -> None:
    """Lighthouse feeds ``[video, TEF, audio]`` (``ctx_mode: video_audio_tef``), momentkit
    ``[video streams..., TEF]``: the first video layer's channels are permuted so both compute
    the same projection."""
    fx = cases["lighthouse_moment_detr_qvhighlights"].fixture
    g = torch.Generator().manual_seed(0)
    state = fx.official_state()
    state["input_vid_proj.0.LayerNorm.weight"] = 0.5 + torch.rand(38, generator=g)
    state["input_vid_proj.0.LayerNorm.bias"] = torch.randn(38, generator=g)
    state["input_vid_proj.0.net.1.weight"] = torch.randn(256, 38, generator=g)
    opt = {**fx.opt, "ctx_mode": "video_audio_tef", "a_feat_dim": 4, "a_feat_dirs": ["pann"]}
    converted = convert_checkpoint(write(tmp_path, "pann.ckpt", state, opt), "lighthouse")
    assert converted.model.config.video_dim == 38
    assert converted.experiment["data"]["video_features"][-1] == "pann"
    video, tef, audio = (torch.randn(5, n, generator=g) for n in (32, 2, 4))
    official = (
        torch.nn.functional.layer_norm(
            torch.cat([video, tef, audio], -1),
            (38,),
            state["input_vid_proj.0.LayerNorm.weight"],
            state["input_vid_proj.0.LayerNorm.bias"],
        )
        @ state["input_vid_proj.0.net.1.weight"].T
        + state["input_vid_proj.0.net.1.bias"]
    )
    layer = converted.model.video_proj.layers[0]
    with torch.no_grad():
        ours = layer.linear(layer.norm(torch.cat([video, audio, tef], -1)))
    assert max_diff(ours, official) <= ATOL
