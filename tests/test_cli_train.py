"""`momentkit train` / `momentkit predict` end to end on a tiny synthetic benchmark.

Tiny model sizes come in through ``--set``; a real ``kill -9`` in the middle of training is
followed by ``--resume``, which must end with the weights and metrics of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from momentkit.cli.main import main
from momentkit.data.records import load_predictions
from momentkit.data.synth import SynthConfig, generate

TINY = [
    "model.hidden_dim=16",
    "model.dim_feedforward=32",
    "model.nheads=2",
    "model.num_queries=4",
    "model.enc_layers=1",
    "model.dec_layers=1",
    "trainer.progress=false",
    "data.eval_batch_size=5",
]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    cfg = SynthConfig(num_train=16, num_val=6, seed=1, min_duration=30, max_duration=40)
    generate(cfg, root, progress=False)
    return root


def data_args(root: Path, video: list[Path] | None = None, text: Path | None = None) -> list[str]:
    feats = root / "features"
    video = video or [feats / "slowfast", feats / "clip"]
    return [
        "--train", str(root / "annotations" / "train.jsonl"),
        "--val", str(root / "annotations" / "val.jsonl"),
        "--video-features", *map(str, video),
        "--text-features", str(text or feats / "clip_text"),
    ]  # fmt: skip


def train_args(root: Path, out: Path, *extra: str, model: str = "moment_detr") -> list[str]:
    return [
        "train", "--model", model, "--preset", "synth", *data_args(root), "--out", str(out),
        "--epochs", "3", "--batch-size", "8", "--set", *TINY, *extra,
    ]  # fmt: skip


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_train_then_predict(synth, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(synth, out, model="qd_detr")) == 0
    assert "best MR-full-mAP" in capsys.readouterr().out
    assert {"model.safetensors", "config.json", "experiment.json"} <= {
        p.name for p in (out / "best").iterdir()
    }
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["name"] == "qd_detr" and config["model"]["hidden_dim"] == 16
    assert config["model"]["video_dim"] == 2304 + 512 + 2  # from the stores, TEF included
    assert json.loads((out / "best" / "config.json").read_text())["hidden_dim"] == 16
    metrics = json.loads((out / "val_metrics.json").read_text())
    assert "MR-full-mAP" in metrics["brief"] and "HL-min-VeryGood-mAP" in metrics["brief"]
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    best = max(rows, key=lambda r: r["metrics"]["MR-full-mAP"])
    assert metrics["brief"]["MR-full-mAP"] == best["metrics"]["MR-full-mAP"]

    pred = tmp_path / "pred.jsonl"
    rc = main(
        ["predict", "--checkpoint", str(out), "--annotations"]
        + [str(synth / "annotations" / "val.jsonl"), "--video-features"]
        + [str(synth / "features" / s) for s in ("slowfast", "clip")]
        + ["--text-features", str(synth / "features" / "clip_text"), "--out", str(pred)]
    )
    assert rc == 0
    preds = load_predictions(pred)
    assert len(preds) == 6 and all(len(p.pred_relevant_windows) == 4 for p in preds)
    # the official format, identical to the validation predictions of the best epoch
    assert pred.read_text() == (out / "val_preds.jsonl").read_text()


def test_packed_stores_and_init_from(synth, tmp_path):
    from momentkit.features import open_feature_store, pack_features

    packed = {}
    for stream in ("slowfast", "clip", "clip_text"):
        src = open_feature_store(synth / "features" / stream)
        packed[stream] = tmp_path / f"packed_{stream}"
        pack_features(src, packed[stream], progress=False)
    first = tmp_path / "first"
    assert main(train_args(synth, first, "trainer.epochs=1")) == 0
    # --init-from with 0 epochs: the best checkpoint is the loaded weights, read from packed stores
    second = tmp_path / "second"
    args = ["train", "--model", "moment_detr", "--preset", "synth"]
    args += data_args(synth, [packed["slowfast"], packed["clip"]], packed["clip_text"])
    args += ["--out", str(second), "--epochs", "0", "--init-from", str(first), "--set", *TINY]
    assert main(args) == 0
    assert same_weights(first / "best", second / "best")
    assert (second / "val_metrics.json").read_text() == (first / "val_metrics.json").read_text()


def test_kill_9_then_resume_matches_uninterrupted_run(synth, tmp_path):
    extra = ("trainer.checkpoint_every=1", "trainer.epochs=4")
    full = tmp_path / "full"
    assert main(train_args(synth, full, *extra)) == 0

    crashed = tmp_path / "crashed"
    # same thread count as this process: float sums must happen in the same order
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    cmd = [sys.executable, "-m", "momentkit", *train_args(synth, crashed, *extra)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if (crashed / "last" / "state.json").exists():  # a checkpoint to resume from
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    log = crashed / "log.jsonl"
    done = [json.loads(x)["epoch"] for x in log.read_text().splitlines()] if log.exists() else []
    assert not done or done[-1] < 4  # interrupted before the end

    assert main(["train", "--out", str(crashed), "--resume"]) == 0
    assert same_weights(full / "last", crashed / "last")
    assert same_weights(full / "best", crashed / "best")
    for name in ("val_metrics.json", "val_preds.jsonl"):
        assert (full / name).read_text() == (crashed / name).read_text()

    def no_time(path: Path) -> list[dict]:
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "time"} for r in rows]

    assert no_time(crashed / "log.jsonl") == no_time(full / "log.jsonl")


def test_cli_errors(synth, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(synth, out, "model.hiden_dim=3")) == 2
    err = capsys.readouterr().err
    assert "field 'model.hiden_dim': unknown key" in err and "model.hidden_dim" in err

    assert main(train_args(synth, out, "trainer.epochs=1")) == 0
    capsys.readouterr()
    assert main(train_args(synth, out, "trainer.epochs=1")) == 2
    assert "already holds a training run" in capsys.readouterr().err
    assert main(train_args(synth, out, "trainer.epochs=1", "optim.lr=1")) == 2
    assert main([*train_args(synth, out, "trainer.epochs=1", "optim.lr=1"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume with a different config (optim.lr: saved 0.0003, given 1.0)" in err

    rc = main(["train", "--model", "moment_detr", "--out", str(tmp_path / "x")])
    assert rc == 2 and "--train" in capsys.readouterr().err


def test_a_finished_run_can_be_extended(synth, tmp_path, capsys):
    """--resume --epochs N (N above the saved count) continues a finished run; epochs already
    trained are never undone, and settings that change the run's meaning stay refused."""
    out = tmp_path / "run"
    assert main(train_args(synth, out, "trainer.epochs=1")) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2"]) == 0
    rows = [json.loads(x)["epoch"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert rows == [1, 2]
    assert json.loads((out / "config.json").read_text())["trainer"]["epochs"] == 2
    # fewer epochs than already trained: refused with the number to give
    assert main(["train", "--out", str(out), "--resume", "--epochs", "1"]) == 2
    assert "already trained 2 epochs; resume with --epochs 2 or more" in capsys.readouterr().err
    # a change of meaning (the learning rate) is still refused
    rc = main(["train", "--out", str(out), "--resume", "--epochs", "3", "--set", "optim.lr=1"])
    assert rc == 2
    assert "optim.lr: saved 0.0003, given 1.0" in capsys.readouterr().err


def test_show_config(tmp_path, capsys):
    rc = main(
        ["train", "--model", "qd_detr", "--preset", "charades_sta", "--out", str(tmp_path)]
        + ["--show-config", "--set", "optim.lr=3e-4", "model.hidden_dim=64"]
    )
    assert rc == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["optim"]["lr"] == 3e-4 and cfg["model"]["hidden_dim"] == 64
    assert cfg["data"]["clip_len"] == 1.0 and cfg["optim"]["lr_drop"] == 40
    assert cfg["model"]["loss"]["weights"]["loss_saliency_rank"] == 4.0


def test_a_run_started_with_relative_paths_resumes_from_another_folder(
    synth, tmp_path, capsys, monkeypatch
):
    """Data paths are saved as given (relative to the folder the run started in). Resumed
    from elsewhere, the run says which saved path does not exist from there and how to go on;
    the same files named from there are accepted (and used), other files still refused."""
    import shutil

    start, elsewhere = tmp_path / "start", tmp_path / "start" / "elsewhere"
    shutil.copytree(synth, start / "s1")
    elsewhere.mkdir()
    monkeypatch.chdir(start)
    rel = [a.replace(str(synth), "s1") for a in data_args(synth)]
    args = ["train", "--model", "moment_detr", "--preset", "synth", *rel, "--out", "run"]
    assert main([*args, "--epochs", "1", "--batch-size", "8", "--set", *TINY]) == 0
    assert json.loads(Path("run/config.json").read_text())["data"]["train_path"].startswith("s1")

    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["train", "--out", "../run", "--resume", "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "field 'data.train_path': 's1/annotations/train.jsonl' does not exist from here" in err
    assert "resume from that folder, or give the data paths again" in err

    given = [a.replace("s1", "../s1") if a.startswith("s1") else a for a in rel]
    assert main(["train", *given, "--out", "../run", "--resume", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "--resume: data.train_path given as '../s1/annotations/train.jsonl'" in out
    rows = [json.loads(x)["epoch"] for x in Path("../run/log.jsonl").read_text().splitlines()]
    assert rows == [1, 2]

    monkeypatch.chdir(start)  # other files than the saved ones: still a different config
    other = [a.replace("train.jsonl", "val.jsonl") for a in rel]
    assert main(["train", *other, "--out", "run", "--resume", "--epochs", "3"]) == 2
    assert "--resume with a different config (data.train_path" in capsys.readouterr().err
