"""Long videos: the ``long`` synthetic mode (durations, moment shares, storage options, the BAM
stream), the ``bam`` encoder, and ``momentkit bench long-video`` end to end at a tiny size."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from momentkit.data.synth import SynthConfig, build_world, generate_sample, match_events
from momentkit.data.synth_long import (
    BAM_STREAM,
    LONG_MIN_DURATION,
    REFERENCE_CLIPS,
    LongFeatureConfig,
    LongVideoGenerator,
    moment_share,
    plan_long_query,
    write_long_benchmark,
)
from momentkit.encoders.bam import BAMEncoder, ColorLayout, build_bam_encoder, parse_parts
from momentkit.encoders.base import EncoderError
from momentkit.utils.errors import MomentkitError


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def long_config(**changes) -> SynthConfig:
    values = dict(num_train=4, num_val=2, mode="long", min_duration=600, max_duration=1800)
    values.update(changes)
    return SynthConfig(**values)


# ----------------------------------------------------------------------------- the long mode
def test_long_mode_durations_and_moment_shares():
    config = long_config(min_duration=600, max_duration=7200)
    world = build_world(config)
    shares, clips = [], []
    for i in range(40):
        plan = plan_long_query(np.random.default_rng(i), config, world)
        assert config.min_clips <= plan.num_clips <= config.max_clips
        assert plan.relevant and plan.relevant == match_events(plan.events, plan.spec)
        relevant = sum(len(plan.events[j].intensity) for j in plan.relevant)
        shares.append(relevant / plan.num_clips)
        clips.append(plan.num_clips)
        # the layout covers the whole video, events in order, never overlapping
        ends = [ev.end for ev in plan.events]
        assert all(a.end <= b.start for a, b in zip(plan.events, plan.events[1:]))
        assert max(ends) <= plan.num_clips
    assert 300 <= min(clips) and max(clips) <= 3600 and max(clips) > 1500  # 10 min to 2 h
    assert np.mean(shares) < 0.05 and max(shares) < 0.25  # moments are a small share
    # a long video holds as many events per minute as a short one: mostly fillers/negatives
    plan = plan_long_query(np.random.default_rng(0), config, world)
    assert len(plan.events) > plan.num_clips / REFERENCE_CLIPS * 4


def test_long_mode_needs_long_durations():
    config = long_config(min_duration=30, max_duration=150)
    with pytest.raises(MomentkitError, match="min_duration=600"):
        plan_long_query(np.random.default_rng(0), config, build_world(config))
    assert LONG_MIN_DURATION == 600


def test_generator_matches_the_standard_streams_and_stores_compactly():
    config = long_config(min_duration=600, max_duration=700)
    sample = LongVideoGenerator(config).sample("train", 1)
    ann, _, streams, text = generate_sample(config, build_world(config), "train", 1)
    assert sample.annotation.to_dict() == ann.to_dict()
    np.testing.assert_array_equal(sample.streams["slowfast"], streams["slowfast"])
    np.testing.assert_array_equal(sample.streams["clip"], streams["clip"])
    np.testing.assert_array_equal(sample.text["last_hidden_state"], text["last_hidden_state"])
    assert 300 <= len(streams["clip"]) <= 350 and 600 <= ann.duration <= 700
    assert 0 < moment_share(ann) < 0.25

    small = LongFeatureConfig(slowfast_dim=64, float16=True, background_dim=4)
    s = LongVideoGenerator(config, small).sample("train", 1)
    t = len(s.streams["clip"])
    assert s.streams["slowfast"].shape == (t, 64) and s.streams["slowfast"].dtype == np.float16
    assert s.streams[BAM_STREAM].shape == (t, 4 + 32 + 32) and small.bam_dim == 68
    assert s.annotation.to_dict() == ann.to_dict()  # same plan, other storage
    with pytest.raises(MomentkitError, match="unknown fields"):
        LongFeatureConfig.from_dict({"slowfast": 3})


def test_bam_stream_carries_the_concepts_through_a_noisier_view():
    """The appearance part of the BAM stream, read with the generator's own projection,
    recovers the target event's appearance about as often as not in clutter: a cheap but
    informative index."""
    config = long_config(min_duration=600, max_duration=600)
    gen = LongVideoGenerator(config, LongFeatureConfig(background_dim=8))
    hits = []
    for i in range(4):
        sample = gen.sample("val", i)
        bam = sample.streams[BAM_STREAM].astype(np.float64)
        appearance = bam[:, 8 : 8 + 32]
        decoded = appearance @ np.linalg.pinv(gen.appearance_proj)  # (T, A)
        for start, end, a_name, _ in sample.latent["events"]:
            a = list(gen.world.appearance).index(a_name)
            hits.append(decoded[start:end].mean(0).argmax() == a)
    assert np.mean(hits) > 0.8
    # background: constant within a shot, different across shots
    background = sample.streams[BAM_STREAM][:, :8]
    jumps = np.linalg.norm(np.diff(background.astype(np.float64), axis=0), axis=1)
    shots = (jumps > 0.9).sum() + 1  # unit scene vectors apart; the noise moves ~0.4
    assert 2 <= shots <= 300 / 30


def test_write_long_benchmark_and_load_it(tmp_path: Path):
    from momentkit.data.loader import MomentDataset, collate
    from momentkit.data.records import load_annotations

    config = long_config(num_train=2, num_val=1, min_duration=600, max_duration=620)
    features = LongFeatureConfig(slowfast_dim=32, float16=True)
    summary = write_long_benchmark(config, tmp_path / "d", features, progress=False)
    assert summary.num_queries == {"train": 2, "val": 1}
    meta = json.loads((tmp_path / "d" / "synth_config.json").read_text())
    assert meta["streams"]["bam"] == {"dir": "features/bam", "dim": 80}
    assert meta["streams"]["slowfast"]["dim"] == 32 and meta["config"]["mode"] == "long"
    with np.load(next((tmp_path / "d" / "features" / "bam").glob("*.npz"))) as npz:
        assert npz["features"].dtype == np.float16
    anns = load_annotations(tmp_path / "d" / "annotations" / "train.jsonl")
    feats = tmp_path / "d" / "features"
    dataset = MomentDataset(
        anns, [feats / "slowfast", feats / "clip", feats / "bam"], feats / "clip_text",
        max_v_len=None,
    )  # fmt: skip
    batch = collate([dataset[0], dataset[1]])
    assert batch["video_feats"].shape[-1] == 32 + 512 + 80 + 2
    assert batch["video_feats"].shape[1] >= 300
    with pytest.raises(MomentkitError, match="already holds"):
        write_long_benchmark(config, tmp_path / "d", features, progress=False)
    again = write_long_benchmark(config, tmp_path / "d", features, overwrite=True, progress=False)
    assert again.num_windows == summary.num_windows


# ------------------------------------------------------------------------------- bam encoder
def frames_with_motion(t: int = 4) -> np.ndarray:
    """``(T, 3, 32, 48, 3)``: clip 0 still and grey, clip 1 a red square moving between its end
    frames, the others random."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (t, 3, 32, 48, 3), dtype=np.uint8)
    frames[0] = 128
    frames[1] = 30
    frames[1, 0, :8, :8] = (220, 20, 20)
    frames[1, 1, 12:20, 20:28] = (220, 20, 20)
    frames[1, 2, 24:, 40:] = (220, 20, 20)
    return frames


def test_bam_encoder_reads_the_right_frames():
    encoder = BAMEncoder("grid", "grid", "motion")
    assert encoder.name == "bam:grid,grid,motion"
    assert encoder.frame_request.frames_per_clip == 3
    dims = encoder.part_dims
    assert dims == {"background": 51, "appearance": 51, "motion": 48}
    assert encoder.video_streams == {"bam": 150}
    frames = frames_with_motion()
    out = encoder.encode_clips(frames)["bam"]
    assert out.shape == (4, 150) and out.dtype == np.float32
    background, appearance, motion = out[:, :51], out[:, 51:102], out[:, 102:]
    np.testing.assert_array_equal(background, appearance)  # one extractor, one centre frame
    np.testing.assert_allclose(background[:, :48], ColorLayout()(frames[:, 1:2])[:, :48])
    assert not motion[0].any()  # a still clip
    assert motion[1].max() > 0.1  # the square moved between the first and last frames
    # the centre frame alone decides the background: change the end frames, nothing moves
    changed = frames.copy()
    changed[:, [0, 2]] = 0
    np.testing.assert_array_equal(encoder.encode_clips(changed)["bam"][:, :102], out[:, :102])


def test_bam_specs_and_errors():
    assert parse_parts(None) == ("grid", "effnet", "motion")
    assert parse_parts("grid, grid ,motion") == ("grid", "grid", "motion")
    with pytest.raises(EncoderError, match="three extractors"):
        parse_parts("grid,motion")
    with pytest.raises(EncoderError, match="unknown bam appearance extractor 'clip'"):
        BAMEncoder("grid", "clip", "motion")
    with pytest.raises(EncoderError, match="3 frames per clip"):
        BAMEncoder("grid", "grid", "motion").encode_clips(np.zeros((2, 1, 8, 8, 3), np.uint8))
    enc = build_bam_encoder("grid,grid,motion", device="cpu", batch_size=2, frames_per_clip=1)
    assert enc.batch_size == 2
    out = enc.encode_clips(frames_with_motion(5))["bam"]  # batches of 2 clips
    np.testing.assert_allclose(out, BAMEncoder("grid", "grid", "motion").encode_clips(
        frames_with_motion(5))["bam"], atol=1e-6)  # fmt: skip


def test_bam_with_efficientnet_appearance():
    pytest.importorskip("efficientnet_lite_pytorch")
    encoder = BAMEncoder(size=64)
    assert encoder.part_dims == {"background": 51, "appearance": 1280, "motion": 48}
    out = encoder.encode_clips(frames_with_motion(2))["bam"]
    assert out.shape == (2, 51 + 1280 + 48) and np.isfinite(out).all()


# ------------------------------------------------------------------------------ the benchmark
def test_peak_memory_sees_a_large_allocation():
    from momentkit.benchmarks.long_video import PeakMemory

    memory = PeakMemory()
    small = memory.measure(lambda: np.ones(1000).sum())
    large = memory.measure(lambda: np.ones(40_000_000).sum())  # 320 MB, freed at once
    if memory.exact:
        assert large > 250 and small < 50
    else:
        assert large >= small


def test_bench_long_video_end_to_end(tmp_path: Path):
    """Train 2 steps of a tiny model on 10-minute videos, measure 2 queries at 10 minutes, load
    the saved model back through --checkpoint and through the Predictor."""
    from momentkit.benchmarks import long_video
    from momentkit.inference import Predictor
    from momentkit.inference.trimmed import TrimmedScorer

    parser = argparse.ArgumentParser()
    long_video.add_arguments(parser)
    tiny = [
        "model.hidden_dim=16",
        "model.nheads=2",
        "model.dim_feedforward=32",
        "model.mr={name: qd_detr, hidden_dim: 16, dim_feedforward: 32, nheads: 2, "
        "enc_layers: 1, dec_layers: 1, t2v_layers: 1}",
    ]
    common = ["--lengths", "10", "--queries", "2", "--slowfast-dim", "16", "--no-progress"]
    args = parser.parse_args(
        ["--out", str(tmp_path / "a"), "--train-steps", "2", "--batch-size", "2",
         "--train-minutes", "10", "10.5", *common, "--set", *tiny]
    )  # fmt: skip
    assert long_video.run(args) == 0
    report = json.loads((tmp_path / "a" / "long_video.json").read_text())
    (row,) = report["lengths"]
    assert row["minutes"] == 10 and row["clips"] == 300 and row["queries"] == 2
    assert row["every_clip"]["kept_clips_mean"] == 300
    assert row["trimmed"]["kept_clips_mean"] <= 75
    for mode in ("trimmed", "every_clip"):
        m = row[mode]
        assert m["latency_ms_median"] > 0 and m["peak_extra_mb"] >= 0
        assert 0 <= m["MR-R1@0.5"] <= 100 and 0 <= m["MR-mIoU"] <= 100
    assert row["speedup"] == pytest.approx(
        row["every_clip"]["latency_ms_median"] / row["trimmed"]["latency_ms_median"]
    )
    assert report["training"]["steps"] == 2
    assert (tmp_path / "a" / "latency_vs_length.png").read_bytes()[:4] == b"\x89PNG"

    model_dir = tmp_path / "a" / "model"
    again = parser.parse_args(
        ["--out", str(tmp_path / "b"), "--checkpoint", str(model_dir), *common]
    )
    assert long_video.run(again) == 0
    second = json.loads((tmp_path / "b" / "long_video.json").read_text())["lengths"][0]
    for mode in ("trimmed", "every_clip"):  # same model, same data: same accuracy
        assert second[mode]["MR-mIoU"] == row[mode]["MR-mIoU"]
    # the saved run is a checkpoint the Predictor reads (synthetic streams: encoders given)
    from test_predictor import ToyEncoder

    with pytest.raises(Exception, match="slowfast"):
        Predictor.from_checkpoint(model_dir, encoder=ToyEncoder())
    from momentkit.models import MomentModel

    model = MomentModel.from_pretrained(model_dir)
    scorer = TrimmedScorer(model, None, long_video.STREAMS, 2.0)  # type: ignore[arg-type]
    assert "clip selection" in scorer.description


def test_a_pretrained_short_video_model_plugs_in_frozen(tmp_path: Path):
    """--mr-checkpoint: an MR model trained on short videos of the clip features (no BAM, no
    cut channels) becomes the trimming model's MR model and stays frozen; only the selection
    trains."""
    from momentkit.benchmarks import long_video
    from momentkit.models import build_model

    features = LongFeatureConfig(slowfast_dim=16, float16=True)
    tiny = ["model.hidden_dim=16", "model.nheads=2", "model.dim_feedforward=32"]
    cfg = long_video.benchmark_config(features, tiny)
    mr_settings = dict(
        name="qd_detr", hidden_dim=16, dim_feedforward=32, nheads=2, enc_layers=1,
        dec_layers=1, t2v_layers=1, num_queries=3,
    )  # fmt: skip
    wrong = build_model({**mr_settings, "video_dim": 2304 + 512 + 2, "text_dim": 512})
    wrong.save_pretrained(tmp_path / "wrong")
    with pytest.raises(MomentkitError, match="--slowfast-dim 2304"):
        long_video.plug_in_mr(cfg, tmp_path / "wrong", finetune=False)

    cfg = long_video.benchmark_config(features, tiny)
    short = build_model({**mr_settings, "video_dim": 16 + 512 + 2, "text_dim": 512})
    short.save_pretrained(tmp_path / "short")
    mr = long_video.plug_in_mr(cfg, tmp_path / "short", finetune=False)
    assert cfg.model.mr["num_queries"] == 3 and "video_dim" not in cfg.model.mr
    assert not cfg.model.mr_reads_index and not cfg.model.use_cut_channels
    assert cfg.model.loss.weights["loss_mr"] == 0.0 and cfg.model.window_prob == 0.0
    synth = SynthConfig(num_train=0, num_val=0, mode="long", min_duration=600, max_duration=620)
    model, log = long_video.train_model(
        cfg, LongVideoGenerator(synth, features), 2, 2, progress=False, mr_init=mr,
        freeze_mr=True, selection_lr=1e-2,
    )  # fmt: skip
    assert set(log[0]) == {"loss_clip_selection", "loss_feature_distill", "loss"}
    for name, value in short.state_dict().items():
        torch.testing.assert_close(model.mr.state_dict()[name], value)  # untouched
    # the trimming model's MR reads exactly what the short-video model was trained on
    assert model.mr.config.video_dim == short.config.video_dim
