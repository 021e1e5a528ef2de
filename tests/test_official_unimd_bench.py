"""``momentkit bench train|infer --model unimd --official-dir DIR``: UniMD's released code
(yingsen1/UniMD) against momentkit, side by side (:mod:`momentkit.benchmarks.official_unimd`).

The tests with the checkout run in fresh processes (importing the official code installs
stand-ins for packages it imports but never calls) on the release's Charades-STA config shrunk
as the parity fixtures shrink it (16 channels, 64 steps, 4 classes): the same code paths in a
fraction of a second a step. The official 1-D NMS is compiled from the checkout once and kept
in a cache folder under the system's temporary directory, shared by later runs (the first run
compiles it: a minute or two).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from momentkit.benchmarks.official_unimd import preset_eval_batch_size
from momentkit.cli.main import main

OFFICIAL = Path(__file__).resolve().parents[2] / "official"
UNIMD = OFFICIAL / "yingsen1+UniMD"
#: where the compiled official NMS is kept between test runs (not the user's cache)
NMS_CACHE = Path(tempfile.gettempdir()) / f"momentkit-tests-{os.getuid()}-unimd-nms"
TOL = 1e-5

needs_checkout = pytest.mark.skipif(
    not UNIMD.is_dir(), reason="no yingsen1/UniMD checkout beside the repo"
)

#: the pair on the shrunk config (as scripts/parity/unimd_fixtures.py), then ``argv``
SMALL_PAIR = """
import json, sys
import momentkit.benchmarks.official_unimd as m

class SmallPair(m.UniMDPair):
    def release_config(self, root):
        cfg = super().release_config(root)
        small = {"input_dim": 24, "max_seq_len": 64, "num_classes": 4}
        cfg["dataset"].update(small)
        cfg[m.SECTION].update(small)
        cfg["model"].update(embd_dim=16, fpn_dim=16, fpn_layer=2, query_fc_chanel=16)
        return self.modules.config._update_config(cfg)

m.PAIR = SmallPair
"""
_CLI = """
from momentkit.cli.main import main
raise SystemExit(main(sys.argv[1:]))
"""
_OUTPUTS = """
import torch
from momentkit.benchmarks.official import build_pair
pair = build_pair("unimd", sys.argv[1])
videos = pair.make_videos(3, 40, seed=5)
diffs = pair.max_differences(videos)
batch = pair.momentkit_batch(videos, training=True)
queries = int(batch["query_mask"].sum())
figures = {"diffs": diffs, "lengths": videos.lengths, "queries": queries}
print(json.dumps({**figures, "describe": pair.describe_batch(videos)}))
"""
CLI, OUTPUTS = SMALL_PAIR + _CLI, SMALL_PAIR + _OUTPUTS


def _python(code: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MOMENTKIT_CACHE": str(NMS_CACHE)}
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


def _bench(argv: list[str], tmp_path: Path) -> dict:
    out = tmp_path / "figures.json"
    done = _python(CLI, ["bench", *argv, "--json", str(out)])
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text())


@needs_checkout
def test_the_pair_computes_the_same_function() -> None:
    """Per-level logits and offsets of both tasks, and the decoded detections (official
    soft-NMS vs momentkit's), on 3 videos of different lengths, all with both tasks."""
    done = _python(OUTPUTS, [str(UNIMD)])
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    diffs = figures["diffs"]
    assert set(diffs) == {"cls_logits_rel", "reg_offsets_rel", "scores", "segments_s"}
    assert max(diffs.values()) <= TOL, diffs  # inf where the numbers of detections differ
    assert figures["lengths"][1] < 40 == figures["lengths"][0]  # every 2nd video shorter
    assert figures["queries"] >= 3 * (4 + 1)  # 4 classes + 1-4 sentences a video
    assert figures["describe"].startswith("3 videos of ") and "4 TAD classes" in figures["describe"]


@needs_checkout
def test_bench_train_unimd_writes_a_ratio_and_a_difference(tmp_path: Path) -> None:
    argv = ["train", "--model", "unimd", "--official-dir", str(UNIMD), "--threads", "1"]
    figures = _bench([*argv, "--clips", "40", "--steps", "2", "--warmup", "0"], tmp_path)
    assert max(figures["max_difference"].values()) <= TOL, figures["max_difference"]
    assert figures["batch"].startswith("2 videos of ")  # the release's batch size
    for side in ("official", "momentkit"):
        step = figures[side]
        assert len(step["steps_s"]) == 2 and step["step_s"] > 0 and step["clip_adamw_s"] > 0
    r = figures["ratio"]
    assert 0 < r["low"] <= r["median"] <= r["high"]
    assert figures["load_average_before"] and "unimd checkout" in figures["official_code"]


@needs_checkout
def test_bench_infer_unimd_writes_ratios_and_a_difference(tmp_path: Path) -> None:
    argv = ["infer", "--model", "unimd", "--official-dir", str(UNIMD), "--threads", "1"]
    argv += ["--queries", "3", "--clips", "40", "--repeat", "1", "--latency-repeat", "2"]
    figures = _bench([*argv, "--warmup", "0"], tmp_path)
    # momentkit's evaluation batch (the preset's 16 videos; here all 3 in one batch), compared
    # with the official model called on each video alone (its loader's batch of one)
    assert figures["batch_size"] == preset_eval_batch_size() == 16
    assert max(figures["max_difference"].values()) <= TOL, figures["max_difference"]
    for figure in ("latency", "throughput"):
        assert figures[f"{figure}_official_median_s"] > 0
        assert figures[f"{figure}_momentkit_median_s"] > 0
        assert figures[f"{figure}_ratio"]["median"] > 0


@pytest.mark.parametrize("bench", ["train", "infer"])
def test_a_folder_that_is_not_a_unimd_checkout_is_one_line(
    bench: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", bench, "--model", "unimd", "--official-dir", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "not a checkout of yingsen1/UniMD" in err and "git clone" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
