"""UniMD against the official code (yingsen1/UniMD): golden fixtures written by
``scripts/parity/unimd_fixtures.py`` (random weights, every tensor randomised).

Each fixture's weights are saved the way the official training script saves them (``module.``
names, ``state_dict`` + ``state_dict_ema``, the run's ``config.yaml`` beside the file), converted
with ``momentkit convert --from unimd`` and run by momentkit on the same inputs: per-level
logits and offsets (eval mode, 3 videos of different lengths as one padded batch), decoded
detections (soft-NMS), the per-task losses and the first gradient step (train mode, float64
on both sides: see the fixture script); the compiled official soft-NMS on tied scores.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from momentkit.cli.main import main
from momentkit.interop.convert import ConversionError, convert_checkpoint
from momentkit.interop.parity import (
    Fixture,
    compare_signatures,
    grad_signature,
    write_official_checkpoint,
)
from momentkit.interop.safe_pickle import UnreadableCheckpointError
from momentkit.modeling.soft_nms import soft_nms
from momentkit.models import MomentModel
from momentkit.models.unimd import UniMD, UniMDCriterion, decode_detections
from momentkit.training.pipeline import load_experiment

FIXTURES = Path(__file__).parent / "fixtures" / "parity"
PRESETS = ("charades_sta", "activitynet")
TOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread")


def fixture(preset: str) -> Fixture:
    return Fixture(FIXTURES / f"unimd_{preset}")


def official_files(fx: Fixture, directory: Path) -> Path:
    """The checkpoint and config.yaml as ``train_sync.py`` leaves them in its folder."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(fx.opt), encoding="utf-8")
    return write_official_checkpoint(
        directory / "epoch_001.pth.tar", fx.official_state(), fx.opt, layout="unimd"
    )


def videos(fx: Fixture) -> list[dict]:
    """Per video: features ``(T, C)``, MR and TAD queries and ground truth (grid units)."""
    out = []
    for i in range(len(fx.notes["lengths"])):
        out.append(
            {
                "feats": fx.inputs[f"v{i}.feats"].T,
                "mr": (fx.inputs[f"v{i}.mr.q_feats"], fx.inputs[f"v{i}.mr.segments"],
                       fx.inputs[f"v{i}.mr.labels"]),
                "tad": (fx.inputs["tad.q_feats"], fx.inputs[f"v{i}.tad.segments"],
                        fx.inputs[f"v{i}.tad.labels"]),
            }
        )  # fmt: skip
    return out


def batch_of(fx: Fixture, tasks: list[list[str]], which: list[int] | None = None) -> dict:
    """The multi-query batch of the fixture's videos ``which`` (default: all), video ``i`` with
    the tasks ``tasks[i]`` (MR rows first)."""
    every = videos(fx)
    which = list(range(len(every))) if which is None else which
    vids = [every[i] for i in which]
    tasks = [tasks[i] for i in which]
    b, t = len(vids), max(v["feats"].shape[0] for v in vids)
    rows = [[(task, q) for task in ("mr", "tad") if task in ts
             for q in range(len(vids[i][task][0]))] for i, ts in enumerate(tasks)]  # fmt: skip
    q = max(len(r) for r in rows)
    g = max(len(v[task][1]) for v in vids for task in ("mr", "tad"))
    batch = {
        "video_feats": torch.zeros(b, t, vids[0]["feats"].shape[1]),
        "video_mask": torch.zeros(b, t, dtype=torch.bool),
        "query_feats": torch.zeros(b, q, 512),
        "query_mask": torch.zeros(b, q, dtype=torch.bool),
        "query_task": torch.zeros(b, q, dtype=torch.long),
        "query_segments": torch.zeros(b, q, g, 2),
        "segment_mask": torch.zeros(b, q, g, dtype=torch.bool),
    }
    for i, v in enumerate(vids):
        n = v["feats"].shape[0]
        batch["video_feats"][i, :n] = v["feats"]
        batch["video_mask"][i, :n] = True
        for j, (task, k) in enumerate(rows[i]):
            feats, segs, labels = v[task]
            mine = segs[labels == k]  # in listed order (the official class-wise rule)
            batch["query_feats"][i, j] = feats[k]
            batch["query_mask"][i, j] = True
            batch["query_task"][i, j] = int(task == "tad")
            batch["query_segments"][i, j, : len(mine)] = mine
            batch["segment_mask"][i, j, : len(mine)] = True
    return batch


def deterministic(model: torch.nn.Module) -> None:
    """Stochastic depth and dropout off (the fixture ran the official model so)."""
    for m in model.modules():
        if hasattr(m, "p") and isinstance(m.p, float):
            m.p = 0.0


@pytest.fixture(scope="module", params=PRESETS)
def converted(request, tmp_path_factory):
    fx = fixture(request.param)
    path = official_files(fx, tmp_path_factory.mktemp(request.param))
    return fx, convert_checkpoint(path, "unimd")


def per_level_difference(model: torch.nn.Module, fx: Fixture, which: list[int]) -> float:
    """Largest |momentkit - official| of the per-level logits and offsets of videos ``which``
    run as one (padded) batch, padded steps included (the official pads to max_seq_len)."""
    n = len(fx.notes["lengths"])
    with torch.no_grad():
        out = model(batch_of(fx, [["mr", "tad"]] * n, which))
    levels = torch.log2(out["points"][:, 3]).round().long()
    worst = 0.0
    for row, i in enumerate(which):
        for task, rows in (("mr", slice(0, 3)), ("tad", slice(3, None))):
            for lv in range(int(levels.max()) + 1):
                cols = levels == lv
                cls = out["cls_logits"][row, rows][:, cols].T
                reg = out["reg_offsets"][row, rows][:, cols].permute(1, 0, 2)
                for got, key in ((cls, f"v{i}.{task}.cls.{lv}"), (reg, f"v{i}.{task}.reg.{lv}")):
                    want = fx.outputs[key]
                    assert got.shape == want.shape, key
                    worst = max(worst, float((got - want).abs().max()))
    return worst


def test_outputs_and_detections_match_the_official_code(converted) -> None:
    fx, conv = converted
    model = conv.model.eval()
    n = len(fx.notes["lengths"])
    for which in [list(range(n))] + [[i] for i in range(n)]:  # padded batch, single videos
        worst = per_level_difference(model, fx, which)
        assert worst <= TOL, f"videos {which}: largest per-level output difference {worst:.3g}"
    batch = batch_of(fx, [["mr", "tad"]] * n)
    with torch.no_grad():
        out = model(batch)
    # decoded: every task of every video, official order (score, descending)
    section = next(v for v in fx.opt.values() if isinstance(v, dict) and "feat_stride" in v)
    clip_len = section["feat_stride"] / fx.notes["fps"]
    durations = [
        (n * section["feat_stride"] + section["num_frames"]) / fx.notes["fps"]
        for n in fx.notes["lengths"]
    ]
    dets = decode_detections(out, durations, clip_len, model.config)
    for i in range(len(fx.notes["lengths"])):
        for task, first in (("mr", 0), ("tad", 3)):
            segs, scores, labels = [], [], []
            for q, (s, c) in enumerate(dets[i]):
                if int(batch["query_task"][i, q]) == int(task == "tad"):
                    segs.append(s)
                    scores.append(c)
                    labels.append(torch.full((len(c),), q - first))
            segs_t, scores_t, labels_t = torch.cat(segs), torch.cat(scores), torch.cat(labels)
            order = scores_t.argsort(descending=True, stable=True)
            key = f"v{i}.{task}"
            assert len(order) == len(fx.outputs[f"{key}.scores"]), key
            torch.testing.assert_close(
                scores_t[order], fx.outputs[f"{key}.scores"], atol=TOL, rtol=0
            )
            assert torch.equal(labels_t[order], fx.outputs[f"{key}.labels"]), key
            torch.testing.assert_close(
                segs_t[order], fx.outputs[f"{key}.segments"], atol=TOL, rtol=TOL
            )


def test_losses_and_first_gradient_step_match_the_official_code(converted) -> None:
    fx, conv = converted
    model = copy.deepcopy(conv.model).double()  # as the fixture: float64, losses in float32
    model.train()
    deterministic(model)
    batch = {
        k: v.double() if v.is_floating_point() else v
        for k, v in batch_of(fx, fx.notes["train_tasks"]).items()
    }
    losses = UniMDCriterion(model.config)(model(batch), batch)
    w = {"tad": model.config.tad_loss_weight, "mr": model.config.mr_loss_weight}
    for task in ("tad", "mr"):
        for name, key in (("cls", "cls_loss"), ("reg", "reg_loss")):
            got = float(losses[f"loss_{name}_{task}"].detach()) / w[task]
            assert got == pytest.approx(fx.losses[f"{task}.{key}"], abs=TOL, rel=TOL), (task, name)
    assert float(losses["loss"].detach()) == pytest.approx(fx.losses["total"], abs=TOL, rel=TOL)
    assert float(model.loss_norm) == pytest.approx(fx.notes["loss_normalizer_after"], rel=1e-6)
    model.zero_grad(set_to_none=True)
    losses["loss"].backward()
    params = dict(model.named_parameters())
    grads: dict[str, torch.Tensor] = {}
    targets = set()
    for official, target in conv.report.mapped:
        if official not in fx.grads:
            continue
        name, _, index = target.partition("[")
        grad = params[name].grad
        assert grad is not None, target
        grads[official] = grad[int(index[:-1])] if index else grad
        targets.add(name)
    with_grad = {k for k, p in params.items() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad <= targets, f"momentkit gradients without official ones: {with_grad - targets}"
    worst = compare_signatures(grad_signature(grads, fx.seed), fx.grads, rtol=1e-4, atol=1e-6)
    assert max(worst.values()) <= 1.0, max(worst.items(), key=lambda kv: kv[1])


@pytest.mark.parametrize("case", [0, 1, 2])
def test_soft_nms_matches_the_compiled_official_nms(case: int) -> None:
    """Tied scores and duplicated segments: the official arithmetic reproduces the C++ order."""
    out = fixture("charades_sta").outputs
    segs, scores = out[f"nms.{case}.segs"], out[f"nms.{case}.scores"]
    sigma, min_score, max_num = out[f"nms.{case}.settings"].tolist()
    got = soft_nms(segs, scores, method="gaussian", sigma=sigma, min_score=min_score,
                   max_num=int(max_num), arithmetic="official")  # fmt: skip
    assert torch.equal(got[0], out[f"nms.{case}.soft.segs"])
    torch.testing.assert_close(got[1], out[f"nms.{case}.soft.scores"], atol=1e-6, rtol=0)
    hard = soft_nms(segs, scores, method="hard", iou_threshold=0.3, min_score=min_score,
                    max_num=int(max_num), arithmetic="official")  # fmt: skip
    assert torch.equal(hard[0], out[f"nms.{case}.hard.segs"])
    assert torch.equal(hard[1], out[f"nms.{case}.hard.scores"])


def test_convert_cli_and_from_pretrained(tmp_path) -> None:
    fx = fixture("charades_sta")
    ckpt = official_files(fx, tmp_path / "official")
    out = tmp_path / "converted"
    assert main(["convert", str(ckpt), "--from", "unimd", "--config",
                 str(tmp_path / "official" / "config.yaml"), "--out", str(out)]) == 0  # fmt: skip
    report = yaml.safe_load((out / "conversion.json").read_text())  # JSON is YAML
    assert report["options"]["weights"] == "state_dict_ema"
    assert sorted(name for name, _ in report["unused"]) == [
        "reg_head.query_norm.2.bias",
        "reg_head.query_norm.2.weight",
    ]
    assert len(report["mapped"]) == len(fx.shapes) - 2
    experiment = load_experiment(out)  # what `momentkit predict` reads
    assert experiment.model.pad_to == "max_len" and experiment.optim.schedule_epochs == 70
    model = MomentModel.from_pretrained(ckpt)  # config.yaml beside the file
    assert isinstance(model, UniMD) and model.config.regression_target == "last"
    # the raw weights on request
    raw = convert_checkpoint(ckpt, "unimd", weights="raw")
    assert raw.report.options["weights"] == "state_dict"
    out_raw = tmp_path / "converted_raw"
    config = str(tmp_path / "official" / "config.yaml")
    argv = ["convert", str(ckpt), "--weights", "raw", "--config", config, "--out", str(out_raw)]
    assert main(argv) == 0
    report = yaml.safe_load((out_raw / "conversion.json").read_text())
    assert report["options"]["weights"] == "state_dict"


def test_bad_inputs_are_clear_errors_naming_the_file(tmp_path, capsys) -> None:
    fx = fixture("charades_sta")
    ckpt = official_files(fx, tmp_path / "run")
    # another codebase's checkpoint given as unimd
    other = tmp_path / "ld.ckpt"
    write_official_checkpoint(other, {"w": torch.zeros(1)}, {"a": 1}, layout="namespace")
    assert main(["convert", str(other), "--from", "unimd", "--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert "ld.ckpt: this is not a unimd checkpoint" in err and "Traceback" not in err
    # truncated file
    cut = tmp_path / "cut.pth.tar"
    cut.write_bytes(ckpt.read_bytes()[:5000])
    with pytest.raises(UnreadableCheckpointError, match="cut.pth.tar"):
        convert_checkpoint(cut, "unimd")
    # unknown key layout
    state = {**fx.official_state(), "decoder.extra.weight": torch.zeros(2)}
    odd = write_official_checkpoint(tmp_path / "run" / "odd.pth.tar", state, fx.opt, layout="unimd")
    with pytest.raises(ConversionError, match=r"odd\.pth\.tar: unknown key layout.*decoder\.extra"):
        convert_checkpoint(odd, "unimd")
    # no config.yaml beside the file, none given
    alone = tmp_path / "alone"
    alone.mkdir()
    lonely = alone / "model_best.pth.tar"
    lonely.write_bytes(ckpt.read_bytes())
    with pytest.raises(ConversionError, match=r"model_best\.pth\.tar: .*config\.yaml.*--config"):
        convert_checkpoint(lonely, "unimd")
    # an unsupported official option names the YAML and the field
    bad = dict(fx.opt, model={**fx.opt["model"], "reg_head_type": "one_head"})
    (alone / "config.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConversionError, match=r"config\.yaml: model\.reg_head_type"):
        convert_checkpoint(lonely, "unimd")


def test_matches_recognises_unimd_and_rejects_the_others() -> None:
    from momentkit.interop import unimd

    here = Path("x.pth.tar")
    assert unimd.matches({"epoch": 3, "state_dict": {}, "state_dict_ema": {}}, here)
    assert unimd.matches({"epoch": 3, "state_dict": {}, "best_map": 0.1}, here)
    assert not unimd.matches({"model": {}, "opt": {}, "epoch": 1}, here)
    assert not unimd.matches({"state_dict": {}}, here)
    assert not unimd.matches([1, 2], here)
