"""The Predictor API: checkpoints, batched queries, sliding windows, zero-shot search, plots.

A tiny colour encoder (``toy``, registered below) and tiny random models keep these tests fast;
the real ``offline`` encoder runs once, on the real demo video.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from momentkit.encoders import ENCODERS, Encoder, TextFeatures
from momentkit.inference import (
    Moment,
    Predictor,
    PredictorError,
    QueryResult,
    VideoEncoding,
    ZeroShotScorer,
)
from momentkit.inference.predictor import infer_encoder_specs, stream_name
from momentkit.inference.windows import merge_moments, merge_saliency, plan_windows, shift_moments
from momentkit.inference.zero_shot import class_weights, cosine_saliency
from momentkit.models import build_model, config_from_dict
from momentkit.training.config import ExperimentConfig
from momentkit.utils.io import write_json
from momentkit.video.decode import FrameRequest
from momentkit.video.write import write_video

DEMO = Path(__file__).resolve().parents[2] / "shared" / "media" / "charades_demo.mp4"
COLORS = {"red": 0, "green": 1, "blue": 2}


class ToyEncoder(Encoder):
    """Mean colour of each clip (stream ``toy``) and its pixel spread (``toy_spread``); queries
    are one-hot on colour words, other words on a fourth channel."""

    def __init__(self) -> None:
        self.name = "toy"
        self.frame_request = FrameRequest(1, 16)
        self.video_streams = {"toy": 4, "toy_spread": 3}
        self.text_stream = "toy_text"
        self.text_dim = 4

    def encode_clips(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        x = frames.astype(np.float32) / 255.0  # (T, K, H, W, 3)
        mean = x.mean(axis=(1, 2, 3))
        toy = np.concatenate([mean, np.full((len(x), 1), 0.05, np.float32)], axis=1)
        return {"toy": toy, "toy_spread": x.std(axis=(1, 2, 3))}

    def encode_text(self, queries):
        out = []
        for q in queries:
            tokens = np.zeros((len(q.split()), 4), np.float32)
            for i, w in enumerate(q.lower().split()):
                tokens[i, COLORS.get(w, 3)] = 1.0
            colour = tokens[:, :3].sum(0)
            pooled = np.concatenate([colour, [0.0 if colour.any() else 1.0]]).astype(np.float32)
            out.append(TextFeatures(tokens, pooled))
        return out


if "toy" not in ENCODERS:
    ENCODERS.register("toy")(lambda arg, **kw: ToyEncoder())

TINY = dict(hidden_dim=16, dim_feedforward=32, nheads=2, num_queries=5, enc_layers=1, dec_layers=1)


def make_run(
    root: Path,
    video: tuple[str, ...] = ("toy", "toy_spread"),
    text: str = "toy_text",
    video_dim: int = 4 + 3 + 2,
    text_dim: int = 4,
    max_v_len: int | None = 75,
    clip_len: float = 2.0,
    model: str = "moment_detr",
    seed: int = 0,
) -> Path:
    """A run directory as `momentkit train` leaves it: best/{model.safetensors, config.json,
    experiment.json}, with a random tiny model trained on features in ``feats/<stream>``."""
    import torch

    dims = dict(video_dim=video_dim, text_dim=text_dim, max_video_len=max_v_len or 75)
    cfg = ExperimentConfig.from_dict(
        {
            "model": {"name": model, **TINY, **dims},
            "data": {
                "dataset": "synth",
                "video_features": [str(root / "feats" / s) for s in video],
                "text_features": str(root / "feats" / text),
                "max_v_len": max_v_len,
                "clip_len": clip_len,
            },
        }
    )
    torch.manual_seed(seed)
    net = build_model(config_from_dict({"name": model, **TINY, **dims}))
    best = root / "run" / "best"
    net.save_pretrained(best)
    write_json(best / "experiment.json", cfg.to_dict())
    write_json(root / "run" / "config.json", cfg.to_dict())
    return root / "run"


@pytest.fixture(scope="module")
def toy_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 s at 5 fps, grey except red from 6 to 10 s and green from 14 to 16 s."""
    frames = np.full((100, 32, 32, 3), 128, np.uint8)
    frames[30:50] = (220, 20, 20)
    frames[70:80] = (20, 220, 20)
    return write_video(tmp_path_factory.mktemp("video") / "toy.mp4", frames, fps=5)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("toy_run"))


def random_encoding(num_clips: int, clip_len: float = 2.0, seed: int = 0) -> VideoEncoding:
    rng = np.random.default_rng(seed)
    streams = {
        "toy": rng.random((num_clips, 4)).astype(np.float32),
        "toy_spread": rng.random((num_clips, 3)).astype(np.float32),
    }
    duration = (num_clips - 0.5) * clip_len  # the last clip is partial
    return VideoEncoding("random.mp4", duration, clip_len, streams)


# --------------------------------------------------------------------------------- windows
def test_plan_windows_short_video_is_one_window():
    assert plan_windows(5, 8) == [(0, 5)]
    assert plan_windows(8, 8) == [(0, 8)]
    assert plan_windows(100, None) == [(0, 100)]


def test_plan_windows_long_video():
    assert plan_windows(20, 8, 0.5) == [(0, 8), (4, 12), (8, 16), (12, 20)]
    # the last window is aligned with the end, so it is full length
    assert plan_windows(21, 8, 0.5) == [(0, 8), (4, 12), (8, 16), (12, 20), (13, 21)]
    assert plan_windows(10, 4, 0.0) == [(0, 4), (4, 8), (6, 10)]
    for bad in [dict(num_clips=0, window=4), dict(num_clips=5, window=0)]:
        with pytest.raises(ValueError):
            plan_windows(**bad)
    with pytest.raises(ValueError, match="overlap"):
        plan_windows(10, 4, 1.0)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 300), st.integers(1, 80), st.floats(0.0, 0.95, allow_nan=False)
)  # fmt: skip
def test_plan_windows_cover_every_clip_with_full_windows(num_clips, window, overlap):
    ranges = plan_windows(num_clips, window, overlap)
    covered = np.zeros(num_clips, int)
    for first, last in ranges:
        covered[first:last] += 1
        assert last - first == min(window, num_clips)
    assert covered.min() >= 1
    assert ranges[0][0] == 0 and ranges[-1][1] == num_clips
    starts = [r[0] for r in ranges]
    assert starts == sorted(set(starts))


def test_merge_saliency_averages_overlaps():
    ranges = [(0, 3), (2, 5)]
    merged = merge_saliency(5, ranges, [np.array([1.0, 2.0, 3.0]), np.array([5.0, 6.0, 7.0])])
    np.testing.assert_allclose(merged, [1.0, 2.0, 4.0, 6.0, 7.0])
    with pytest.raises(ValueError, match="clip 3 is in no window"):
        merge_saliency(5, [(0, 3), (4, 5)], [np.zeros(3), np.zeros(1)])
    with pytest.raises(ValueError, match="2 saliency scores"):
        merge_saliency(3, [(0, 3)], [np.zeros(2)])


def test_shift_and_merge_moments():
    shifted = shift_moments(np.array([[0.0, 4.0, 0.9], [6.0, 10.0, 0.5]]), 20.0, 28.0)
    np.testing.assert_allclose(shifted, [[20.0, 24.0, 0.9], [26.0, 28.0, 0.5]])
    assert len(shift_moments(np.array([[9.0, 10.0, 0.9]]), 20.0, 28.0)) == 0  # past the end
    a = np.array([[0.0, 10.0, 0.6], [20.0, 30.0, 0.9]])
    b = np.array([[0.0, 10.0, 0.8], [40.0, 44.0, 0.1]])  # the same [0, 10] seen by two windows
    merged = merge_moments([a, b], nms_iou=0.5)
    np.testing.assert_allclose(merged, [[20, 30, 0.9], [0, 10, 0.8], [40, 44, 0.1]])
    assert len(merge_moments([a, b], nms_iou=None)) == 4
    assert len(merge_moments([a, b], nms_iou=0.5, top_k=2)) == 2
    assert merge_moments([], nms_iou=0.5).shape == (0, 3)


# ------------------------------------------------------------------------------ checkpoints
def test_from_checkpoint_reads_the_training_setup(toy_run: Path):
    predictor = Predictor.from_checkpoint(toy_run, encoder="toy")
    assert predictor.clip_len == 2.0 and predictor.window == 75
    assert predictor.video_streams == {"toy": 4, "toy_spread": 3}
    assert "moment_detr" in predictor.description
    # the best/ folder itself works too, and so does an encoder instance
    assert Predictor.from_checkpoint(toy_run / "best", encoder=ToyEncoder()).window == 75


def test_from_checkpoint_errors_name_the_problem(tmp_path: Path, toy_run: Path):
    # a synthetic-benchmark checkpoint: say so, rather than suggest an encoder
    with pytest.raises(PredictorError, match="streams toy_text, toy, toy_spread of the 'synth'"):
        Predictor.from_checkpoint(toy_run)
    from momentkit.inference.predictor import infer_encoder_specs

    with pytest.raises(PredictorError, match="'clip' does not say which encoder.*--encoder"):
        infer_encoder_specs(("minilm_text", "clip"), tmp_path)
    wide = make_run(tmp_path / "wide", video_dim=12)
    with pytest.raises(
        PredictorError,
        match=r"video_dim.*12 channels.*toy \(4\) \+ toy_spread \(3\).*7 \+ 2 TEF = 9",
    ):
        Predictor.from_checkpoint(wide, encoder="toy")
    text = make_run(tmp_path / "text", text_dim=8)
    with pytest.raises(PredictorError, match="text_dim.*8-d"):
        Predictor.from_checkpoint(text, encoder="toy")
    motion = make_run(tmp_path / "motion", video=("toy", "motion"))
    with pytest.raises(PredictorError, match="stream 'motion'.*'toy' write toy"):
        Predictor.from_checkpoint(motion, encoder="toy")
    # renamed feature folders: name the streams
    renamed = make_run(tmp_path / "renamed", video=("a", "b"), text="c")
    predictor = Predictor.from_checkpoint(
        renamed, encoder="toy", video_streams=["toy", "toy_spread"], text_stream="toy_text"
    )
    assert list(predictor.video_streams) == ["toy", "toy_spread"]


def test_encoder_specs_are_inferred_from_stream_names(tmp_path: Path):
    where = tmp_path
    assert infer_encoder_specs(["minilm_text", "effnet", "imagenet_probs"], where) == ["offline"]
    assert infer_encoder_specs(["glove_text", "effnet", "motion"], where) == [
        "offline-glove",
        "motion",
    ]
    with pytest.raises(PredictorError, match="'clip_text'.*clip:openai/clip-vit-base-patch32"):
        infer_encoder_specs(["clip_text", "clip"], where)
    # a packed store is named after the folder it was packed from
    packed = tmp_path / "packed_effnet"
    packed.mkdir()
    (packed / "index.json").write_text(json.dumps({"source": "/data/feats/effnet"}))
    assert stream_name(packed) == "effnet" and stream_name("/x/feats/motion/") == "motion"


def test_batched_queries_equal_one_by_one(toy_run: Path, toy_video: Path):
    predictor = Predictor.from_checkpoint(toy_run, encoder="toy", nms_iou=None)
    video = predictor.encode_video(toy_video)
    assert video.num_clips == 10 and video.duration == pytest.approx(20.0, abs=0.2)
    assert set(video.streams) == {"toy", "toy_spread"}
    queries = ["red", "a green thing appears", "blue blue blue sky at night"]
    batched = predictor.predict(video, queries, top_k=None, calibrate=False)
    assert [r.query for r in batched] == queries
    for query, result in zip(queries, batched):
        (single,) = predictor.predict(video, [query], top_k=None, calibrate=False)
        np.testing.assert_allclose(result.saliency, single.saliency, atol=1e-5)
        got = np.array([[m.start, m.end, m.score] for m in result.moments])
        want = np.array([[m.start, m.end, m.score] for m in single.moments])
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert len(result.moments) == 5  # every decoder query, no NMS
        assert result.saliency.shape == (10,)
        for m in result.moments:
            assert 0 <= m.start < m.end <= video.duration
            assert m.start % 2.0 == 0  # snapped to the clip grid
    # different queries give different answers
    assert not np.allclose(batched[0].saliency, batched[1].saliency)
    # search = encode + predict
    searched = predictor.search(toy_video, queries[:1], top_k=2)
    assert [m.to_dict() for m in searched[0].moments] == [
        m.to_dict() for m in predictor.predict(video, queries[:1], top_k=2)[0].moments
    ]
    # calibrated output: the raw moments de-duplicated (the toy model repeats spans), each
    # with a relevance in [0, 1]
    (calibrated,) = predictor.predict(video, queries[:1], top_k=None)
    spans = [(m.start, m.end) for m in calibrated.moments]
    assert len(set(spans)) == len(spans) <= len(batched[0].moments)
    assert all(0.0 <= m.relevance <= 1.0 for m in calibrated.moments)


def test_sliding_windows_merge_into_absolute_times(tmp_path: Path):
    """A video of 23 clips through a model trained on 8: windows [0,8) [4,12) [8,16) [12,20)
    [15,23); the merged result must equal predicting each window as its own video, shifted."""
    run = make_run(tmp_path, max_v_len=8, model="qd_detr")
    predictor = Predictor.from_checkpoint(run, encoder="toy", nms_iou=None)
    assert predictor.window == 8
    video = random_encoding(23)
    queries = ["red", "green blue"]
    results = predictor.predict(video, queries, top_k=None, calibrate=False)

    whole = Predictor.from_checkpoint(run, encoder="toy", nms_iou=None)
    whole.scorer.window = None  # predict each window as a video of its own
    ranges = plan_windows(23, 8, 0.5)
    assert ranges == [(0, 8), (4, 12), (8, 16), (12, 20), (15, 23)]
    for qi, result in enumerate(results):
        total, count, pooled = np.zeros(23), np.zeros(23), []
        for first, last in ranges:
            part = video.slice(first, last)
            (r,) = whole.predict(part, [queries[qi]], top_k=None, calibrate=False)
            total[first:last] += r.saliency
            count[first:last] += 1
            pooled += [[m.start + first * 2.0, min(m.end + first * 2.0, video.duration), m.score]
                       for m in r.moments]  # fmt: skip
        np.testing.assert_allclose(result.saliency, total / count, atol=1e-5)
        got = sorted(
            (round(m.start, 4), round(m.end, 4), round(m.score, 4)) for m in result.moments
        )
        want = sorted((round(s, 4), round(e, 4), round(v, 4)) for s, e, v in pooled)
        assert got == want
        assert len(result.moments) == 5 * len(ranges)
        assert all(0 <= m.start < m.end <= video.duration for m in result.moments)
        assert max(m.end for m in result.moments) > 8 * 2.0  # moments past the first window
        scores = [m.score for m in result.moments]
        assert scores == sorted(scores, reverse=True)
    # with NMS (the default), duplicates from overlapping windows are merged, best first
    deduped = Predictor.from_checkpoint(run, encoder="toy").predict(video, queries, top_k=4)
    assert all(len(r.moments) <= 4 for r in deduped)
    assert deduped[0].moments[0].score == pytest.approx(results[0].moments[0].score, abs=1e-5)


def test_predict_rejects_bad_input(toy_run: Path):
    predictor = Predictor.from_checkpoint(toy_run, encoder="toy")
    video = random_encoding(4)
    with pytest.raises(PredictorError, match="no queries"):
        predictor.predict(video, [])
    with pytest.raises(PredictorError, match="query 2 is '  '"):
        predictor.predict(video, ["red", "  "])
    with pytest.raises(PredictorError, match="top_k"):
        predictor.predict(video, ["red"], top_k=0)
    with pytest.raises(PredictorError, match="1.0 s clips but this predictor uses 2.0 s"):
        predictor.predict(random_encoding(4, clip_len=1.0), ["red"])
    partial = VideoEncoding("v.mp4", 8.0, 2.0, {"toy": np.zeros((4, 4), np.float32)})
    with pytest.raises(PredictorError, match="lacks stream.*toy_spread"):
        predictor.predict(partial, ["red"])


# -------------------------------------------------------------------------------- zero-shot
def test_zero_shot_cosine_finds_the_coloured_moments(toy_video: Path):
    predictor = Predictor.zero_shot("toy")
    assert predictor.window is None and "cosine of 'toy' and 'toy_text'" in predictor.description
    red, green = predictor.search(toy_video, ["red", "green"], top_k=3)
    assert (red.moments[0].start, red.moments[0].end) == (6.0, 10.0)
    assert (green.moments[0].start, green.moments[0].end) == (14.0, 16.0)
    assert red.saliency.shape == (10,) and red.saliency.argmax() in (3, 4)
    assert [m.score for m in red.moments] == sorted((m.score for m in red.moments), reverse=True)


def test_zero_shot_helpers():
    sims = np.array([0.1, 0.5, 0.3], np.float32)
    np.testing.assert_allclose(class_weights(sims, None), sims)
    w = class_weights(sims, 0.05)
    assert w.sum() == pytest.approx(1.0) and list(np.argsort(w)) == [0, 2, 1]
    assert class_weights(sims, 0.01)[1] > w[1]  # colder: more weight on the best class
    video = np.array([[1.0, 0.0], [0.0, 3.0]], np.float32)
    np.testing.assert_allclose(cosine_saliency(video, np.array([[2.0, 0.0]])), [[1.0, 0.0]])


def test_zero_shot_needs_an_image_text_space():
    from momentkit.encoders.base import EncoderError

    class NoText(ToyEncoder):
        def __init__(self) -> None:
            super().__init__()
            self.text_stream, self.text_dim = None, 0

    with pytest.raises(EncoderError, match="no image-text space"):
        ZeroShotScorer(NoText())
    with pytest.raises(ValueError, match="temperature"):
        ZeroShotScorer(ToyEncoder(), temperature=0.0)


@pytest.fixture(scope="module")
def offline_zero_shot() -> Predictor:
    pytest.importorskip("efficientnet_lite_pytorch")
    return Predictor.zero_shot("offline")


def test_zero_shot_offline_on_the_real_demo_video(offline_zero_shot: Predictor):
    if not DEMO.exists():
        pytest.skip("../shared/media/charades_demo.mp4 is not present")
    video = offline_zero_shot.encode_video(DEMO)
    assert video.num_clips == 16 and set(video.streams) == {"imagenet_probs"}
    queries = ["a person walks through the doorway", "a person drinks from a cup"]
    door, cup = offline_zero_shot.predict(video, queries, top_k=3)
    assert door.saliency.shape == (16,) and 1 <= len(door.moments) <= 3
    # the person walks out through the doorway in the first seconds (the ImageNet classes
    # 'sliding door' and 'wardrobe' light up there)
    best = door.moments[0]
    assert best.start < 4.0 and best.end <= 8.0
    assert int(door.saliency.argmax()) in (0, 1, 2)
    # one query at a time gives the same saliency
    (alone,) = offline_zero_shot.predict(video, queries[1:], top_k=3)
    np.testing.assert_allclose(alone.saliency, cup.saliency, rtol=1e-4, atol=1e-7)
    # ... and the same relevance: it must not depend on the other queries of the batch
    assert [m.relevance for m in alone.moments] == [m.relevance for m in cup.moments]
    # a query the video does not show ranks below one it does
    (dog,) = offline_zero_shot.predict(video, ["a dog jumps over a fence"], top_k=3)
    assert door.best_relevance > 0.9 > dog.best_relevance


# ------------------------------------------------------------------------------ results, plot
def test_results_and_encodings():
    result = QueryResult("q", [Moment(0.0, 4.0, 0.9)], np.array([0.5, 0.25, 0.125]), 2.0, 5.0)
    assert json.loads(json.dumps(result.to_dict())) == {
        "query": "q",
        "moments": [{"start": 0.0, "end": 4.0, "score": 0.9, "relevance": None}],
        "saliency": [0.5, 0.25, 0.125],
        "clip_len": 2.0,
        "duration": 5.0,
        "min_relevance": None,
        "best_relevance": None,
        "no_confident_match": False,
    }
    # full precision by default: zero-shot scores 1e-5 apart stay distinct
    tiny = QueryResult("q", [Moment(0, 2, 1.23456789e-4, 0.123456789)], np.zeros(1), 2.0, 2.0)
    moment = json.loads(json.dumps(tiny.to_dict()))["moments"][0]
    assert moment["score"] == 1.23456789e-4 and moment["relevance"] == 0.123456789
    assert tiny.to_dict(decimals=4)["moments"][0]["score"] == 0.0001
    np.testing.assert_allclose(result.clip_times(), [1.0, 3.0, 4.5])
    assert result.moments[0].length == 4.0 and result.moments[0].to_window() == [0.0, 4.0, 0.9]
    video = random_encoding(5)  # 9 s
    part = video.slice(3, 5)
    assert part.num_clips == 2 and part.duration == pytest.approx(3.0)
    np.testing.assert_array_equal(part.streams["toy"], video.streams["toy"][3:])
    with pytest.raises(ValueError, match="bad clip range"):
        video.slice(4, 9)
    with pytest.raises(ValueError, match="clip_len"):
        VideoEncoding("v", 1.0, 0.0)
    with pytest.raises(ValueError, match="stream 'x'"):
        VideoEncoding("v", 1.0, 1.0, {"x": np.zeros(3)})


def test_plot_writes_a_png(tmp_path: Path):
    pytest.importorskip("matplotlib")
    from momentkit.inference.plot import plot_highlights

    results = [
        QueryResult("a", [Moment(2.0, 6.0, 0.8), Moment(2.0, 4.0, 0.5)], np.arange(5.0), 2.0, 9.0),
        QueryResult("b", [], np.zeros(5), 2.0, 9.0),  # flat saliency, no moment
    ]
    out = plot_highlights(results, tmp_path / "sub" / "curve.png", title="t")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError, match="at least one"):
        plot_highlights([], tmp_path / "x.png")
