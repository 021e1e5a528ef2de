"""The trainer on a toy model: loss goes down, best/last checkpoints, exact resume, early stop.

The toy model (dropout included, so RNG restoration matters) and toy evaluator stand in for the
real ones; ``tests/test_distributed.py`` reuses them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from momentkit.data.loader import MomentDataset
from momentkit.data.records import MomentAnnotation, MomentPrediction, load_predictions
from momentkit.structures.spans import span_cxw_to_xx
from momentkit.training.checkpoint import (
    CheckpointError,
    find_checkpoint,
    load_state,
    load_weights,
    pack_state,
    save_checkpoint,
    unpack_state,
)
from momentkit.training.config import ExperimentConfig
from momentkit.training.optim import build_optimizer
from momentkit.training.trainer import Trainer, TrainingError, find_metric

DV, DT, T = 6, 5, 10


# ------------------------------------------------------------------------------------ toy setup
@dataclass
class ToyConfig:
    hidden: int = 16
    dropout: float = 0.2


class ToyModel(nn.Module):
    """Predicts per-clip saliency and one span from video and query features."""

    def __init__(self, dv: int, dt: int, hidden: int = 16, dropout: float = 0.2) -> None:
        super().__init__()
        self.v = nn.Linear(dv, hidden)
        self.t = nn.Linear(dt, hidden)
        self.drop = nn.Dropout(dropout)
        self.sal = nn.Linear(hidden, 1)
        self.span = nn.Linear(hidden, 2)

    def forward(self, batch: dict) -> dict:
        vmask = batch["video_mask"].float()
        tmask = batch["text_mask"].float()
        v = self.drop(torch.relu(self.v(batch["video_feats"])))
        t = (self.t(batch["text_feats"]) * tmask[..., None]).sum(1) / tmask.sum(1, True)
        h = v * t[:, None]
        sal = self.sal(h).squeeze(-1)
        pooled = (h * vmask[..., None]).sum(1) / vmask.sum(1, True)
        return {"saliency_scores": sal, "pred_spans": torch.sigmoid(self.span(pooled))[:, None]}


def toy_criterion(outputs: dict, batch: dict) -> dict:
    mask = batch["video_mask"].float()
    target = (batch["saliency_all_labels"] > 0).float()
    bce = nn.functional.binary_cross_entropy_with_logits(
        outputs["saliency_scores"], target, reduction="none"
    )
    sal = (bce * mask).sum() / mask.sum()
    gt = torch.stack([t["spans"][0] for t in batch["span_targets"]])
    span = (outputs["pred_spans"][:, 0] - gt).abs().mean()
    return {"loss": sal + span, "loss_saliency": sal, "loss_span": span}


def toy_postprocess(outputs: dict, batch: dict) -> list[MomentPrediction]:
    out = []
    spans = span_cxw_to_xx(outputs["pred_spans"][:, 0]).clamp(0, 1)
    for i, ann in enumerate(batch["annotations"]):
        dur = float(batch["video_mask"][i].sum()) * batch["clip_len"]
        s, e = (spans[i] * dur).tolist()
        n = int(batch["video_mask"][i].sum())
        sal = outputs["saliency_scores"][i, :n].tolist()
        out.append(MomentPrediction(ann.qid, ann.query, ann.vid, [[s, e, 1.0]], sal))
    return out


def toy_evaluator(preds: list[MomentPrediction], anns: list[MomentAnnotation]) -> dict:
    """Mean temporal IoU of the top window (x100) as ``MR-full-mAP``."""
    gts = {a.qid: a.relevant_windows[0] for a in anns}
    ious = []
    for p in preds:
        s, e, _ = p.pred_relevant_windows[0]
        gs, ge = gts[p.qid]
        inter = max(0.0, min(e, ge) - max(s, gs))
        ious.append(inter / (max(e, ge) - min(s, gs) + 1e-9))
    assert len(preds) == len(anns)
    return {"brief": {"MR-full-mAP": 100 * float(np.mean(ious)), "n": len(preds)}}


def make_data(root: Path, n: int = 24, seed: int = 0) -> tuple[list[MomentAnnotation], Path, Path]:
    """``n`` videos whose relevant clips carry a bump on channel 0; query features random."""
    rng = np.random.default_rng(seed)
    vdir, tdir = root / "video", root / "text"
    write = not (tdir / f"qid{n - 1}.npz").exists()  # (pre-written for multi-process tests)
    vdir.mkdir(parents=True, exist_ok=True)
    tdir.mkdir(parents=True, exist_ok=True)
    anns = []
    for i in range(n):
        start = int(rng.integers(0, T - 3))
        length = int(rng.integers(2, T - start + 1))
        feats = rng.normal(size=(T, DV)).astype(np.float32) * 0.3
        feats[start : start + length, 0] += 2.0
        text = rng.normal(size=(4, DT)).astype("f4")
        if write:
            np.savez(vdir / f"v{i}.npz", features=feats)
            np.savez(tdir / f"qid{i}.npz", last_hidden_state=text)
        clips = list(range(start, start + length))
        anns.append(
            MomentAnnotation(
                i, f"query {i}", f"v{i}", T * 2.0, [[start * 2.0, (start + length) * 2.0]],
                clips, [[2, 3, 2]] * len(clips),
            )
        )  # fmt: skip
    return anns, vdir, tdir


def toy_config(**trainer) -> ExperimentConfig:
    cfg = ExperimentConfig("toy", ToyConfig())
    cfg.optim.lr = 1e-2
    cfg.trainer.batch_size = 8
    cfg.trainer.epochs = 4
    cfg.trainer.progress = False
    cfg.trainer.seed = 3
    cfg.data.eval_batch_size = 7
    for k, v in trainer.items():
        setattr(cfg.trainer, k, v)
    return cfg


def make_trainer(
    cfg: ExperimentConfig, data_root: Path, run_dir: Path, cls: type = Trainer, **kw
) -> Trainer:
    anns, vdir, tdir = make_data(data_root)
    train = MomentDataset(anns[:16], [vdir], tdir, max_v_len=T, seed=cfg.trainer.seed)
    val = MomentDataset(anns[16:], [vdir], tdir, max_v_len=T, training=False)
    torch.manual_seed(cfg.trainer.seed)
    model = ToyModel(train.video_dim, train.text_dim, cfg.model.hidden, cfg.model.dropout)
    return cls(
        cfg,
        model,
        toy_criterion,
        train,
        val,
        run_dir=run_dir,
        postprocess=toy_postprocess,
        evaluator=kw.pop("evaluator", toy_evaluator),
        best_metric="MR-full-mAP",
        **kw,
    )


def weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


class Crash(Exception):
    pass


class CrashingTrainer(Trainer):
    """Dies (like ``kill -9``: nothing is saved) when about to run global step ``crash_at``."""

    crash_at = -1

    def _train_step(self, batch, epoch):
        if self.state.global_step == self.crash_at:
            raise Crash
        return super()._train_step(batch, epoch)


# ---------------------------------------------------------------------------------------- tests
def test_training_lowers_the_loss_and_writes_the_run_dir(tmp_path):
    cfg = toy_config(epochs=6, batch_size=4)
    cfg.optim.lr = 3e-2
    trainer = make_trainer(cfg, tmp_path / "data", tmp_path / "run")
    result = trainer.fit()
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[-1]["train"]["loss"] < 0.75 * rows[0]["train"]["loss"]
    assert {"loss_saliency", "loss_span"} <= set(rows[0]["train"])
    assert all("MR-full-mAP" in r["metrics"] and "lr" in r and "time" in r for r in rows)
    assert result.epochs_done == 6 and result.best_epoch is not None
    best_row = rows[result.best_epoch - 1]
    assert best_row["metrics"]["MR-full-mAP"] == pytest.approx(result.best_value)
    assert max(r["metrics"]["MR-full-mAP"] for r in rows) == pytest.approx(result.best_value)
    # best/ and last/ checkpoints, predictions and metrics of the best epoch
    for d in ("best", "last"):
        assert {"model.safetensors", "config.json", "experiment.json"} <= {
            p.name for p in (run / d).iterdir()
        }
    assert json.loads((run / "config.json").read_text())["trainer"]["epochs"] == 6
    metrics = json.loads((run / "val_metrics.json").read_text())
    assert metrics["brief"]["MR-full-mAP"] == pytest.approx(result.best_value)
    assert len(load_predictions(run / "val_preds.jsonl")) == 8
    assert not list(run.glob(".*tmp*")) and not list(run.glob("*.old"))


@pytest.mark.parametrize(("checkpoint_every", "crash_at"), [(0, 5), (3, 3)])
def test_resume_after_crash_equals_uninterrupted_run(tmp_path, checkpoint_every, crash_at):
    """2 steps/epoch x 4 epochs; crash mid-epoch, resume from last/, compare exactly."""
    cfg = toy_config(checkpoint_every=checkpoint_every, eval_every=1)
    full = make_trainer(cfg, tmp_path / "data", tmp_path / "full")
    full.fit()

    crashing = make_trainer(cfg, tmp_path / "data", tmp_path / "crash", CrashingTrainer)
    crashing.crash_at = crash_at
    with pytest.raises(Crash):
        crashing.fit()
    state = load_state(tmp_path / "crash" / "last")["trainer"]
    # the crash lost work: the checkpoint is behind the crash point
    assert state["global_step"] <= crash_at
    if checkpoint_every:  # the mid-epoch checkpoint after step 3 (epoch 2, step 1)
        assert (state["global_step"], state["step_in_epoch"]) == (3, 1)
    else:  # the end of epoch 2
        assert (state["global_step"], state["step_in_epoch"]) == (4, 0)

    resumed = make_trainer(cfg, tmp_path / "data", tmp_path / "crash")
    result = resumed.fit(resume=True)
    assert result.epochs_done == 4
    a, b = weights(tmp_path / "full" / "last"), weights(tmp_path / "crash" / "last")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = weights(tmp_path / "full" / "best"), weights(tmp_path / "crash" / "best")
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("val_metrics.json", "val_preds.jsonl"):
        assert (tmp_path / "full" / name).read_text() == (tmp_path / "crash" / name).read_text()

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "time"} for r in rows]

    full_log = strip(full.log.read())
    assert strip(resumed.log.read()) == full_log and len(full_log) == 4


def test_resume_without_checkpoint_starts_fresh_and_finished_run_is_a_noop(tmp_path):
    cfg = toy_config(epochs=2)
    trainer = make_trainer(cfg, tmp_path / "data", tmp_path / "run")
    assert trainer.fit(resume=True).epochs_done == 2
    before = weights(tmp_path / "run" / "last")
    again = make_trainer(cfg, tmp_path / "data", tmp_path / "run").fit(resume=True)
    assert again.epochs_done == 2 and again.best_value is not None
    after = weights(tmp_path / "run" / "last")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_best_checkpoint_follows_the_metric_and_early_stopping(tmp_path):
    values = iter([1.0, 5.0, 4.0, 3.0, 9.0, 9.5])

    def scripted(preds, anns):
        return {"brief": {"MR-full-mAP": next(values), "R1": 0.0}}

    cfg = toy_config(epochs=6, patience=2)
    trainer = make_trainer(cfg, tmp_path / "data", tmp_path / "run", evaluator=scripted)
    result = trainer.fit()
    assert result.stopped_early and result.epochs_done == 4
    assert (result.best_epoch, result.best_value) == (2, 5.0)
    assert json.loads((tmp_path / "run" / "val_metrics.json").read_text())["brief"] == {
        "MR-full-mAP": 5.0,
        "R1": 0.0,
    }
    assert json.loads((tmp_path / "run" / "best" / "metrics.json").read_text())["epoch"] == 2
    rows = trainer.log.read()
    assert rows[-1]["early_stop"] is True and rows[-1]["best"]["epoch"] == 2
    best = weights(tmp_path / "run" / "best")
    last = weights(tmp_path / "run" / "last")
    assert not all(torch.equal(best[k], last[k]) for k in best)
    # resuming a stopped run does nothing more
    assert make_trainer(cfg, tmp_path / "data", tmp_path / "run").fit(resume=True).epochs_done == 4


def test_eval_every_and_untrained_evaluation(tmp_path):
    cfg = toy_config(epochs=3, eval_every=2, eval_before_training=True)
    trainer = make_trainer(cfg, tmp_path / "data", tmp_path / "run")
    trainer.fit()
    rows = trainer.log.read()
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert ["metrics" in r for r in rows] == [True, False, True, True]


def test_unknown_metric_and_nan_loss_are_reported(tmp_path):
    trainer = make_trainer(toy_config(epochs=1), tmp_path / "data", tmp_path / "a")
    trainer.best_metric = "MR-full-R1@0.7"
    with pytest.raises(TrainingError, match="no metric 'MR-full-R1@0.7'.*MR-full-mAP"):
        trainer.fit()

    def nan_criterion(outputs, batch):
        return {"loss": outputs["saliency_scores"].sum() * float("nan")}

    trainer = make_trainer(toy_config(epochs=1), tmp_path / "data", tmp_path / "b")
    trainer.criterion = nan_criterion
    with pytest.raises(TrainingError, match="loss became nan at epoch 1, step 1"):
        trainer.fit()


def test_bf16_autocast_on_cpu_trains(tmp_path):
    cfg = toy_config(epochs=1, precision="bf16")
    trainer = make_trainer(cfg, tmp_path / "data", tmp_path / "run")
    assert trainer.autocast_dtype == torch.bfloat16
    result = trainer.fit()
    assert np.isfinite(trainer.log.read()[0]["train"]["loss"]) and result.best_value is not None
    assert make_trainer(toy_config(), tmp_path / "data", tmp_path / "x").autocast_dtype is None


def test_find_metric_layouts():
    assert find_metric({"brief": {"a": 1}}, "a") == 1.0
    assert find_metric({"R1@0.5": 2.5}, "R1@0.5") == 2.5
    assert find_metric({"full": {"mAP": 3}}, "full.mAP") == 3.0


# ---------------------------------------------------------------------------------- checkpoints
def test_pack_state_round_trip():
    state = {
        "opt": {0: {"step": torch.tensor(3.0), "m": torch.randn(2, 3)}, 5: {}},
        "groups": [{"betas": (0.9, 0.99), "params": [0, 5]}],
        "np": ("MT19937", np.arange(4, dtype=np.uint32), 2, 0, 0.0),
        "nested": [[1, 2.5, None, "x", True]],
    }
    tree, tensors = pack_state(state)
    json.dumps(tree)  # JSON-serialisable
    back = unpack_state(json.loads(json.dumps(tree)), tensors)
    assert back["opt"][0]["step"].item() == 3.0 and torch.equal(back["opt"][0]["m"], tensors[
        tree["opt"]["__items__"][0][1]["m"]["__tensor__"]
    ])  # fmt: skip
    assert set(back["opt"]) == {0, 5}
    assert back["groups"][0]["betas"] == (0.9, 0.99)
    assert back["np"][0] == "MT19937" and back["np"][1].dtype == np.uint32
    assert back["nested"] == [[1, 2.5, None, "x", True]]
    with pytest.raises(TypeError, match="at 'state.bad'"):
        pack_state({"bad": object()})


def test_optimizer_state_round_trip_continues_identically(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = build_optimizer(model, toy_config().optim)
    x = torch.randn(8, 4)
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
    save_checkpoint(
        tmp_path / "ck", model, model_config={"a": 1}, experiment={}, state=opt.state_dict()
    )
    model2 = nn.Linear(4, 2)
    load_weights(model2, tmp_path / "ck")
    opt2 = build_optimizer(model2, toy_config().optim)
    opt2.load_state_dict(load_state(tmp_path / "ck"))
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()
    assert torch.equal(model.weight, model2.weight)
    assert json.loads((tmp_path / "ck" / "config.json").read_text()) == {"a": 1}


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    model = nn.Linear(2, 2)
    target = tmp_path / "last"
    save_checkpoint(target, model, model_config={}, experiment={"v": 1})
    import momentkit.training.checkpoint as ck

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_state", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(target, model, model_config={}, experiment={"v": 2}, state={"x": 1})
    assert json.loads((target / "experiment.json").read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last"]
    # a swap interrupted between its two renames is recovered
    target.rename(tmp_path / "last.old")
    assert find_checkpoint(target) == target and (target / "model.safetensors").exists()


def test_load_weights_reports_mismatches(tmp_path):
    save_checkpoint(tmp_path / "ck", nn.Linear(2, 3), model_config={}, experiment={})
    with pytest.raises(CheckpointError, match=r"'weight' has shape \(3, 2\).*\(4, 2\)"):
        load_weights(nn.Linear(2, 4), tmp_path / "ck")
    with pytest.raises(CheckpointError, match="no such weights file"):
        load_weights(nn.Linear(2, 4), tmp_path / "nothing")
    missing, unexpected = load_weights(
        nn.Sequential(nn.Linear(2, 3)), tmp_path / "ck", strict=False
    )
    assert missing == ["0.weight", "0.bias"] and sorted(unexpected) == ["bias", "weight"]
