"""`momentkit pseudo-label`: thresholds, runs and grades on hand-made similarities, the CLI on tiny
synthetic features, and pretrain -> zero-shot evaluation -> fine-tune with SG-DETR."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from momentkit.cli import pseudo_label as cli
from momentkit.cli.main import main
from momentkit.data.records import load_annotations, load_predictions
from momentkit.data.synth import SynthConfig, generate
from momentkit.pretraining.pseudo_label import (
    Caption,
    PseudoLabelConfig,
    clip_similarities,
    grade_clips,
    interval_threshold,
    label_corpus,
    load_captions,
    positive_clips,
    positive_runs,
    pseudo_label,
)
from momentkit.utils.errors import FeatureError, FormatError
from momentkit.utils.io import write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------- hand-made numbers
def test_clip_similarities_are_cosines() -> None:
    video = np.array([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]])
    assert np.allclose(clip_similarities(video, np.array([1.0, 0.0])), [0.6, 0.0, -1.0])
    with pytest.raises(ValueError, match="width"):
        clip_similarities(video, np.ones(3))


def test_threshold_from_the_interval_and_positive_clips() -> None:
    sims = np.array([0.1, 0.5, 0.9, 0.3, 0.7])
    inside = np.array([1, 2])
    assert interval_threshold(sims, inside, "mean") == pytest.approx(0.7)
    assert interval_threshold(sims, inside, "min") == pytest.approx(0.5)
    assert interval_threshold(sims, inside, "q0.5") == pytest.approx(0.7)
    assert interval_threshold(sims, inside, "q0") == pytest.approx(0.5)
    assert positive_clips(sims, 0.7).tolist() == [False, False, True, False, True]
    with pytest.raises(ValueError, match="quantile"):
        interval_threshold(sims, inside, "q2")
    with pytest.raises(ValueError, match="covers no clip"):
        interval_threshold(sims, np.array([], dtype=int))


def test_runs_of_positive_clips() -> None:
    positive = np.array([0, 1, 1, 0, 1, 0, 1, 1, 1], dtype=bool)
    assert positive_runs(positive) == [(1, 3), (4, 5), (6, 9)]
    assert positive_runs(positive, min_clips=2) == [(1, 3), (6, 9)]
    assert positive_runs(np.ones(3, dtype=bool)) == [(0, 3)]
    assert positive_runs(np.zeros(3, dtype=bool)) == []


def test_grades_from_mean_std_and_max() -> None:
    # mu 3, sigma sqrt(2): cuts 1.59, 3, min(4.41, 5) -> 1, 2, 3, 3, 4
    assert grade_clips(np.array([1.0, 2.0, 3.0, 4.0, 5.0])).tolist() == [1, 2, 3, 3, 4]
    # mu + sigma (5.73) above the maximum: the maximum is the last cut, so it still gets 4
    assert grade_clips(np.array([1.0, 5.0, 5.0, 5.0])).tolist() == [1, 4, 4, 4]
    assert grade_clips(np.array([1.0, 3.0])).tolist() == [2, 4]  # mu 2, sigma 1
    assert grade_clips(np.array([0.2])).tolist() == [4]
    assert grade_clips(np.array([])).tolist() == []


def test_pseudo_label_of_one_caption() -> None:
    sims = np.array([0.1, 0.5, 0.9, 0.3, 0.7])
    # original interval [2, 6] s = clips 1, 2 -> threshold mean(.5, .9) = .7 -> clips 2 and 4
    label = pseudo_label(sims, 2.0, 6.0, duration=10.0)
    assert label is not None and label.threshold == pytest.approx(0.7)
    assert label.windows == [[4.0, 6.0], [8.0, 10.0]]
    assert label.clip_ids == [2, 4]
    assert label.grades == [4, 2]  # mu .8, sigma .1: .9 -> 4, .7 -> 2
    # the minimum of the interval admits clip 1 too; the last window is clamped to the duration
    label = pseudo_label(sims, 2.0, 6.0, 9.0, PseudoLabelConfig(threshold="min"))
    assert label.windows == [[2.0, 6.0], [8.0, 9.0]] and label.clip_ids == [1, 2, 4]
    # runs shorter than min_clips are dropped, and with them their clips
    label = pseudo_label(sims, 2.0, 6.0, 10.0, PseudoLabelConfig(threshold="min", min_clips=2))
    assert label.windows == [[2.0, 6.0]] and label.clip_ids == [1, 2]
    assert pseudo_label(sims, 2.0, 6.0, 10.0, PseudoLabelConfig(min_clips=3)) is None
    with pytest.raises(ValueError, match="covers no clip"):
        pseudo_label(sims, 12.0, 14.0, 20.0)


def test_label_corpus_rows_and_report() -> None:
    videos = {"a": np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])}
    captions = [
        Caption(7, "a", "first", 0.0, 2.0, 6.0),
        Caption(8, "missing", "second", 0.0, 2.0, 6.0),
        Caption(9, "a", "third", 10.0, 12.0, 20.0),
    ]
    anns, report = label_corpus(captions, videos.__getitem__, lambda c: np.array([1.0, 0.0]))
    assert [a.qid for a in anns] == [7]
    row = anns[0].to_dict()
    # threshold: clip 0's similarity 1.0; clip 2 (cos .995) is below it: one window
    assert row["relevant_windows"] == [[0.0, 2.0]] and row["relevant_clip_ids"] == [0]
    assert row["saliency_scores"] == [[4, 4, 4]] and row["query"] == "first"
    assert report.captions == 3 and report.labelled == 1
    assert report.skipped["without video features"] == 1
    assert report.skipped["with an interval beyond the video features"] == 1
    assert "1 of 3 captions labelled" in report.summary()
    one, _ = label_corpus(captions[:1], videos.__getitem__, lambda c: np.array([1.0, 0.0]),
                          PseudoLabelConfig(annotators=1))  # fmt: skip
    assert one[0].saliency_scores == [[4]]


def test_load_captions_validates_rows(tmp_path: Path) -> None:
    path = tmp_path / "caps.jsonl"
    write_jsonl(path, [{"vid": "a", "caption": "x", "start": 0, "end": 2, "duration": 9}])
    caps = load_captions(path)
    assert caps[0].qid == 0 and caps[0].end == 2.0 and caps[0].line == 1
    bad = [
        ({"vid": "a", "start": 0, "end": 2, "duration": 9}, "caption"),
        ({"vid": "a", "query": "x", "end": 2, "duration": 9}, "start"),
        ({"vid": "a", "query": "x", "start": 3, "end": 2, "duration": 9}, "end"),
        ({"vid": "a", "query": "x", "start": 0, "end": 2, "duration": "9"}, "duration"),
        ({"vid": 5, "query": "x", "start": 0, "end": 2, "duration": 9}, "vid"),
    ]
    for row, field in bad:
        write_jsonl(path, [{"vid": "b", "caption": "ok", "start": 0, "end": 1, "duration": 2}, row])
        with pytest.raises(FormatError, match=rf"caps.jsonl:2: field '{field}'"):
            load_captions(path)
    write_jsonl(
        path, [{"qid": 3, "vid": "a", "caption": "x", "start": 0, "end": 2, "duration": 9}] * 2
    )
    with pytest.raises(FormatError, match="duplicate qid 3"):
        load_captions(path)


# --------------------------------------------------------------------------- CLI, tiny data
def _npz(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: v.astype(np.float32) for k, v in arrays.items()})


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(list(argv)))


def test_cli_with_stored_text_features(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    topic = rng.normal(size=16)
    video = rng.normal(size=(10, 16)) * 0.3
    video[[3, 4, 5, 8]] += topic  # the caption was written for clips 3-5; clip 8 shows it too
    _npz(tmp_path / "clip" / "v0.npz", features=video)
    _npz(tmp_path / "text" / "qid0.npz", last_hidden_state=rng.normal(size=(4, 16)),
         pooler_output=topic)  # fmt: skip
    captions = tmp_path / "caps.jsonl"
    write_jsonl(
        captions, [{"vid": "v0", "caption": "the topic", "start": 6, "end": 12, "duration": 19}]
    )
    out = tmp_path / "pseudo.jsonl"
    common = [
        "--captions",
        str(captions),
        "--video-features",
        str(tmp_path / "clip"),
        "--out",
        str(out),
    ]
    assert _cli(*common, "--text-features", str(tmp_path / "text"), "--threshold", "min") == 0
    assert "1 of 1 captions labelled" in capsys.readouterr().out
    (ann,) = load_annotations(out)
    assert ann.relevant_windows == [[6.0, 12.0], [16.0, 18.0]]
    assert ann.relevant_clip_ids == [3, 4, 5, 8]
    assert all(len(r) == 3 and len(set(r)) == 1 and 1 <= r[0] <= 4 for r in ann.saliency_scores)
    assert max(r[0] for r in ann.saliency_scores) == 4
    # a text store of another width is refused, naming both
    _npz(tmp_path / "text8" / "qid0.npz", pooler_output=np.ones(8))
    with pytest.raises(FeatureError, match="8 channels.*16"):
        _cli(*common, "--text-features", str(tmp_path / "text8"))
    write_jsonl(
        captions, [{"qid": 5, "vid": "v0", "caption": "x", "start": 0, "end": 2, "duration": 19}]
    )
    with pytest.raises(FeatureError, match=r"qid5 \(line 1\)"):
        _cli(*common, "--text-features", str(tmp_path / "text"))
    assert _cli(*common, "--text-features", str(tmp_path / "text"), "--threshold", "best") == 2
    assert _cli(*common, "--text-encoder", "offline-glove") == 2  # needs --text-out


def test_cli_with_a_text_encoder(tmp_path: Path) -> None:
    from momentkit.encoders import build_encoder

    encoder = build_encoder("offline-glove")
    (cat,) = [f.pooler_output for f in encoder.encode_text(["a cat sleeping"])]
    rng = np.random.default_rng(1)
    video = rng.normal(size=(6, len(cat))) * 0.2
    video[[1, 2]] += cat
    _npz(tmp_path / "clip" / "v.npz", features=video)
    captions = tmp_path / "caps.jsonl"
    write_jsonl(
        captions,
        [
            {
                "qid": "c1",
                "vid": "v",
                "caption": "a cat sleeping",
                "start": 2,
                "end": 6,
                "duration": 12,
            }
        ],
    )
    out, text_out = tmp_path / "pseudo.jsonl", tmp_path / "caption_text"
    args = ["--captions", str(captions), "--video-features", str(tmp_path / "clip")]
    args += ["--text-encoder", "offline-glove", "--text-out", str(text_out), "--out", str(out)]
    assert _cli(*args, "--annotators", "1", "--threshold", "min") == 0
    (ann,) = load_annotations(out)
    assert ann.qid == "c1" and ann.relevant_clip_ids[:2] == [1, 2]
    assert all(len(r) == 1 for r in ann.saliency_scores)
    with np.load(text_out / "qidc1.npz") as f:  # the features the pretraining run reads
        assert np.allclose(f["pooler_output"], cat, atol=1e-6)
        assert f["last_hidden_state"].shape[1] == len(cat)


# ----------------------------------------------------- pretrain, zero-shot, fine-tune (SG-DETR)
TINY_SG = [
    "model.hidden_dim=16",
    "model.dim_feedforward=32",
    "model.nheads=2",
    "model.num_queries=4",
    "model.enc_layers=1",
    "model.dec_layers=1",
    "model.t2v_layers=1",
    "model.pooling_layers=1",
    "model.pyramid_levels=2",
    "model.anchor_sizes=[2,4]",
    "model.proposal_widths=[0.1,0.3]",
    "model.denoising.num_groups=2",
    "trainer.progress=false",
    "data.eval_batch_size=4",
]


def test_pretrain_on_pseudo_labels_zero_shot_then_fine_tune(tmp_path: Path, capsys) -> None:
    root = tmp_path / "synth"
    cfg = SynthConfig(num_train=12, num_val=4, seed=3, min_duration=30, max_duration=40)
    generate(cfg, root, progress=False)
    feats, ann_dir = root / "features", root / "annotations"
    # the "captions": the training queries with a loose interval (their first window widened)
    rows = []
    for a in load_annotations(ann_dir / "train.jsonl"):
        start, end = a.relevant_windows[0]
        loose = {"start": max(0.0, start - 2.0), "end": min(a.duration, end + 2.0)}
        rows.append(
            {"qid": a.qid, "vid": a.vid, "caption": a.query, "duration": a.duration, **loose}
        )
    write_jsonl(tmp_path / "captions.jsonl", rows)
    pseudo = tmp_path / "pretrain.jsonl"
    args = ["--captions", str(tmp_path / "captions.jsonl"), "--video-features", str(feats / "clip")]
    assert _cli(*args, "--text-features", str(feats / "clip_text"), "--out", str(pseudo)) == 0
    assert len(load_annotations(pseudo)) >= 10

    data = ["--video-features", str(feats / "slowfast"), str(feats / "clip")]
    data += ["--text-features", str(feats / "clip_text")]
    pretrain = tmp_path / "pretrain"
    args = ["train", "--model", "sg_detr", "--preset", "synth", "--train", str(pseudo)]
    args += [*data, "--out", str(pretrain), "--epochs", "1", "--batch-size", "4", "--set", *TINY_SG]
    assert main(args) == 0
    # zero-shot: the pretrained model answers the benchmark's validation queries directly
    preds = tmp_path / "zero_shot.jsonl"
    val = str(ann_dir / "val.jsonl")
    args = ["predict", "--checkpoint", str(pretrain), "--annotations", val, *data]
    assert main([*args, "--out", str(preds)]) == 0
    predictions = load_predictions(preds)
    assert len(predictions) == 4 and all(p.pred_relevant_windows for p in predictions)
    metrics = tmp_path / "zero_shot_metrics.json"
    assert main(["evaluate", str(preds), val, "--out", str(metrics)]) == 0
    assert "MR-full-mAP" in json.loads(metrics.read_text())["brief"]
    # fine-tune from the pretrained weights (0 epochs: the best checkpoint is the loaded one)
    finetune = tmp_path / "finetune"
    args = [
        "train",
        "--model",
        "sg_detr",
        "--preset",
        "synth",
        "--train",
        str(ann_dir / "train.jsonl"),
    ]
    args += [
        "--val",
        val,
        *data,
        "--out",
        str(finetune),
        "--epochs",
        "0",
        "--init-from",
        str(pretrain),
    ]
    assert main([*args, "--set", *TINY_SG]) == 0
    from safetensors.torch import load_file

    a = load_file(str(pretrain / "best" / "model.safetensors"))
    b = load_file(str(finetune / "best" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
