"""The similarity baseline, ``momentkit demo`` (real video) and ``momentkit demo --synthetic``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from momentkit.cli.main import main
from momentkit.data.records import MomentAnnotation, MomentPrediction, load_annotations
from momentkit.data.synth import SynthConfig, generate
from momentkit.inference import SimilarityBaseline
from momentkit.inference.similarity import read_npz_array, runs_above, temporal_nms
from momentkit.utils.errors import FeatureError


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate(SynthConfig(num_train=2, num_val=60, seed=4), root, progress=False)
    return root


def test_runs_above():
    values = np.array([0.0, 1.0, 1.0, 0.2, 0.9, 0.0, 1.0])
    assert runs_above(values, 0.9) == [(1, 3), (4, 5), (6, 7)]
    assert runs_above(values, 0.1) == [(1, 5), (6, 7)]
    assert runs_above(values, 2.0) == []


def test_temporal_nms_drops_overlapping_worse_windows():
    windows = np.array([[0, 10, 0.9], [1, 10, 0.8], [20, 30, 0.7], [0, 4, 0.6]])
    assert temporal_nms(windows, 0.7) == [0, 2, 3]
    assert temporal_nms(windows, 1.01) == [0, 1, 2, 3]
    assert temporal_nms(np.zeros((0, 3)), 0.5) == []


def test_saliency_is_the_cosine():
    video = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]], dtype=np.float32)
    text = np.array([2.0, 0.0], dtype=np.float32)
    np.testing.assert_allclose(
        SimilarityBaseline.saliency(video, text), [1.0, 1 / np.sqrt(2), 0.0], atol=1e-6
    )


def test_propose_finds_the_salient_run():
    baseline = SimilarityBaseline(".", max_windows=3)
    saliency = np.array([0.1, 0.1, 0.8, 0.9, 0.85, 0.1, 0.1, 0.3, 0.1, 0.1])
    windows = baseline.propose(saliency, duration=19.0)
    assert windows[0][:2] == [4.0, 10.0]
    assert len(windows) <= 3
    assert [w[2] for w in windows] == sorted((w[2] for w in windows), reverse=True)
    # the last clip is cut at the duration
    tail = baseline.propose(np.array([0.0, 0.0, 1.0]), duration=5.0)
    assert tail[0][:2] == [4.0, 5.0]


def test_predictions_are_valid(bench: Path):
    val = load_annotations(bench / "annotations" / "val.jsonl")
    predictions = SimilarityBaseline(bench / "features").predict_all(val)
    assert [p.qid for p in predictions] == [a.qid for a in val]
    for a, p in zip(val, predictions):
        assert isinstance(p, MomentPrediction) and p.vid == a.vid and p.query == a.query
        assert MomentPrediction.from_dict(json.loads(json.dumps(p.to_dict()))) == p
        assert 1 <= len(p.pred_relevant_windows) <= 10
        for start, end, _ in p.pred_relevant_windows:
            assert 0 <= start < end <= a.duration
        scores = [w[2] for w in p.pred_relevant_windows]
        assert scores == sorted(scores, reverse=True)
        assert len(p.pred_saliency_scores) == a.duration / 2
        assert all(-1.0 <= s <= 1.0 for s in p.pred_saliency_scores)


def test_window_score_mean_and_bad_options(bench: Path):
    val = load_annotations(bench / "annotations" / "val.jsonl")[:5]
    mean = SimilarityBaseline(bench / "features", window_score="mean").predict_all(val)
    assert all(p.pred_relevant_windows for p in mean)
    with pytest.raises(ValueError, match="window_score"):
        SimilarityBaseline(".", window_score="max")
    with pytest.raises(ValueError, match="quantiles"):
        SimilarityBaseline(".", quantiles=(1.5,))


def test_feature_errors_name_the_file(tmp_path: Path):
    path = tmp_path / "x.npz"
    np.savez(path, other=np.zeros(3))
    with pytest.raises(FeatureError, match=r"x\.npz.*'features'"):
        read_npz_array(path, "features")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        read_npz_array(tmp_path / "missing.npz", "features")
    np.savez(path, features=np.array([1.0, np.nan]))
    with pytest.raises(FeatureError, match="NaN"):
        read_npz_array(path, "features")
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip_text").mkdir()
    np.savez(tmp_path / "clip" / "v.npz", features=np.zeros((3, 4)))
    np.savez(tmp_path / "clip_text" / "qid1.npz", pooler_output=np.zeros(5))
    ann = MomentAnnotation(qid=1, query="q", vid="v", duration=6)
    with pytest.raises(FeatureError, match="dimension 5"):
        SimilarityBaseline(tmp_path).predict(ann)
    np.savez(tmp_path / "clip" / "v.npz", features=np.zeros((0, 5)))
    with pytest.raises(FeatureError, match=r"v\.npz.*at least one clip"):
        SimilarityBaseline(tmp_path).predict(ann)


def test_baseline_gets_partial_credit(bench: Path):
    """Appearance is shared with the text, so the zero-shot baseline beats chance; motion and
    context are not, so it stays far from solving the benchmark."""
    eval_submission = pytest.importorskip("momentkit.evaluation.qvhighlights").eval_submission
    val = load_annotations(bench / "annotations" / "val.jsonl")
    predictions = SimilarityBaseline(bench / "features").predict_all(val)
    brief = eval_submission([p.to_dict() for p in predictions], [a.to_dict() for a in val])["brief"]
    assert 10 <= brief["MR-full-R1@0.5"] <= 60
    assert brief["MR-full-mAP"] <= 40


def test_synthetic_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    pytest.importorskip("momentkit.evaluation.qvhighlights")
    start = time.perf_counter()
    assert main(["demo", "--synthetic", "--workdir", str(tmp_path), "--seed", "2"]) == 0
    assert time.perf_counter() - start < 30, "the demo must finish in under 30 s"
    out = capsys.readouterr().out
    assert "MR-full-R1@0.5" in out and "HL-min-VeryGood-mAP" in out
    metrics = json.loads((tmp_path / "val_metrics.json").read_text())
    assert set(metrics["brief"]) >= {"MR-full-mAP", "MR-full-R1@0.7", "HL-min-VeryGood-Hit1"}
    predictions = (tmp_path / "val_predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 100
    assert len(load_annotations(tmp_path / "synth" / "annotations" / "train.jsonl")) == 200


def test_synthetic_demo_in_a_temporary_folder(capsys: pytest.CaptureFixture[str]):
    pytest.importorskip("momentkit.evaluation.qvhighlights")
    assert main(["demo", "--synthetic", "--train", "3", "--val", "5"]) == 0
    out = capsys.readouterr().out
    assert "synthetic val (5 queries)" in out
    folder = Path(out.split(" to ", 1)[1].split()[0])
    assert not folder.exists(), "the temporary folder must be removed"


def test_video_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """`momentkit demo`: zero-shot search of the packaged Charades clip, in under a minute."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("matplotlib")
    from momentkit.cli.demo import DEMO_QUERIES

    out = tmp_path / "demo"
    start = time.perf_counter()
    assert main(["demo", "--out", str(out)]) == 0
    assert time.perf_counter() - start < 60, "the video demo must finish in under 60 s"
    text = capsys.readouterr().out
    assert "encoded 30.7 s of video as 16 clips of 2 s" in text
    for query in DEMO_QUERIES:
        assert query in text
    assert (out / "highlights.png").read_bytes()[:4] == b"\x89PNG"
    doc = json.loads((out / "results.json").read_text())
    (video,) = doc["videos"]
    assert (video["video"], video["num_clips"]) == ("charades_demo.mp4", 16)
    assert [r["query"] for r in doc["results"]] == list(DEMO_QUERIES)
    frame = 1001 / 15000
    for result in doc["results"]:
        assert 1 <= len(result["moments"]) <= 3 and len(result["saliency"]) == 16
        exported = ["clip" in m for m in result["moments"]]  # the best moment only
        assert exported == [True] + [False] * (len(exported) - 1)
        best = result["moments"][0]  # cut frame-accurately: it covers the moment, to a frame
        assert best["start"] - frame < best["clip"]["start"] <= best["start"]
        assert best["end"] <= best["clip"]["end"] < best["end"] + frame + 1e-6
    assert len(list((out / "clips").glob("charades-demo_q*_1_*.mp4"))) == 3
    # the one query the zero-shot bridge gets right: the doorway, crossed in the first seconds
    assert doc["results"][0]["moments"][0]["end"] <= 8.0


def test_example_video_is_packaged():
    from importlib import resources

    from momentkit.cli.demo import EXAMPLE_VIDEO

    examples = resources.files("momentkit").joinpath("examples")
    assert examples.joinpath(EXAMPLE_VIDEO).is_file()
    assert "UniVTG" in examples.joinpath("README.txt").read_text()
