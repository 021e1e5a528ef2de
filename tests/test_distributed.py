"""DistributedDataParallel with two CPU processes (gloo) matches one process.

With dropout off and per-sample-mean losses, 2 processes x 4 queries compute the same global
batches as 1 process x 8 (the sampler interleaves the shards), so the weights agree to float
rounding and the gathered evaluation covers every validation query once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from momentkit.training.distributed import ShardSampler, SkipSampler

TESTS = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_trainer import make_trainer, toy_config
    from momentkit.training.distributed import cleanup_distributed, init_distributed

    info = init_distributed("cpu")
    cfg = toy_config(epochs=3, batch_size=8)
    cfg.model.dropout = 0.0
    trainer = make_trainer(cfg, Path(sys.argv[1]), Path(sys.argv[2]), dist_info=info)
    result = trainer.fit(resume="--resume" in sys.argv)
    print(f"rank {{info.rank}}/{{info.world_size}} best {{result.best_value}}")
    del trainer  # its DistributedDataParallel holds the process group (the CLI frees it too)
    cleanup_distributed()
    """
)


def run_script(tmp_path: Path, run_dir: Path, nproc: int) -> str:
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT.format(tests=str(TESTS)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS.parent)}
    cmd = [sys.executable]
    if nproc > 1:
        cmd += ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
        cmd += ["--master_port", "0", "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0"]
    cmd += [str(script), str(tmp_path / "data"), str(run_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_two_processes_match_one(tmp_path):
    sys.path.insert(0, str(TESTS))
    from test_trainer import make_data

    make_data(tmp_path / "data")  # written once, read by every process
    out1 = run_script(tmp_path, tmp_path / "one", 1)
    out2 = run_script(tmp_path, tmp_path / "two", 2)
    assert "rank 0/1" in out1 and "rank 0/2" in out2 and "rank 1/2" in out2

    a = load_file(str(tmp_path / "one" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "last" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)

    # only rank 0 writes: one log line per epoch, every val query predicted exactly once
    log = [json.loads(x) for x in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    m1 = json.loads((tmp_path / "one" / "val_metrics.json").read_text())["brief"]
    m2 = json.loads((tmp_path / "two" / "val_metrics.json").read_text())["brief"]
    assert m2["n"] == 8
    assert m2["MR-full-mAP"] == pytest.approx(m1["MR-full-mAP"], abs=1e-3)
    preds = (tmp_path / "two" / "val_preds.jsonl").read_text().splitlines()
    assert [json.loads(p)["qid"] for p in preds] == list(range(16, 24))


def test_shard_and_skip_samplers():
    data = list(range(7))
    shards = [list(ShardSampler(data, r, 3)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(sum(shards, [])) == data
    skip = SkipSampler(ShardSampler(data), skip=5)
    assert list(skip) == [5, 6] and len(skip) == 2


def test_torchrun_cli_trains_with_two_processes(tmp_path):
    """``torchrun --nproc_per_node 2 -m momentkit train`` on a tiny synthetic benchmark."""
    from momentkit.data.synth import SynthConfig, generate

    data = tmp_path / "synth"
    generate(SynthConfig(num_train=16, num_val=6, seed=2, min_duration=30, max_duration=40), data,
             progress=False)  # fmt: skip
    out = tmp_path / "run"
    feats = data / "features"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0"]
    cmd += ["-m", "momentkit", "train", "--model", "qd_detr", "--preset", "synth"]
    cmd += ["--train", str(data / "annotations" / "train.jsonl")]
    cmd += ["--val", str(data / "annotations" / "val.jsonl")]
    cmd += ["--video-features", str(feats / "slowfast"), str(feats / "clip")]
    cmd += ["--text-features", str(feats / "clip_text"), "--out", str(out)]
    cmd += ["--epochs", "2", "--batch-size", "8", "--set", "model.hidden_dim=16"]
    cmd += ["model.dim_feedforward=32", "model.nheads=2", "trainer.progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("best MR-full-mAP") == 1  # printed by rank 0 only
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert len((out / "val_preds.jsonl").read_text().splitlines()) == 6
    assert (out / "best" / "model.safetensors").exists()
