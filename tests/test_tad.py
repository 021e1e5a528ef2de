"""Temporal action detection: the ActivityNet-layout reader, class queries, the TAD mAP evaluator
(hand-made cases and a line-by-line port of the official loop) and the synthetic TAD data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from momentkit.data.records import MomentPrediction
from momentkit.data.tad import (
    TADVideo,
    check_classes,
    class_queries,
    classes_of,
    load_class_features,
    load_class_list,
    load_tad_json,
    save_class_features,
    save_tad_json,
    to_moment_annotations,
)
from momentkit.evaluation.base import EVALUATORS, build_evaluator
from momentkit.evaluation.tad import (
    ACTIVITYNET_TIOU,
    TADEvaluator,
    class_average_precision,
    interpolated_ap,
    match_detections,
    parse_thresholds,
)
from momentkit.utils.errors import FormatError

ANET = {
    "version": "VERSION 1.3",
    "taxonomy": [{"nodeName": "Long jump"}],
    "database": {
        "v1": {
            "duration": 60.0,
            "subset": "training",
            "url": "https://example.org/v1",
            "annotations": [
                {"segment": [1.5, 10.0], "label": "Long jump"},
                {"segment": [20, 30], "label": "Shot put"},
            ],
        },
        "v2": {"duration": 40, "subset": "validation", "annotations": [
            {"segment": [0.0, 4.0], "label": "Long jump"},
        ]},
        "v3": {"duration": 30, "subset": "testing", "annotations": []},
    },
}  # fmt: skip


def write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


# ------------------------------------------------------------------------------------- reader
def test_reader_reads_videos_subsets_and_classes(tmp_path):
    path = write(tmp_path / "anet.json", ANET)
    videos = load_tad_json(path)
    assert [v.vid for v in videos] == ["v1", "v2", "v3"]
    v1 = videos[0]
    assert v1.duration == 60.0 and v1.subset == "training"
    assert v1.segments == [[1.5, 10.0], [20.0, 30.0]]
    assert v1.labels == ["Long jump", "Shot put"]
    assert v1.extra == {"url": "https://example.org/v1"}
    assert v1.windows_of("Shot put") == [[20.0, 30.0]]
    assert [v.vid for v in load_tad_json(path, "VALIDATION")] == ["v2"]
    assert classes_of(videos) == ["Long jump", "Shot put"]
    assert class_queries(["Long jump"]) == ["a video of Long jump"]
    # round trip
    save_tad_json(tmp_path / "again.json", videos)
    again = load_tad_json(tmp_path / "again.json")
    assert [(v.vid, v.segments, v.labels, v.extra) for v in again] == [
        (v.vid, v.segments, v.labels, v.extra) for v in videos
    ]


@pytest.mark.parametrize(
    ("patch", "field", "problem"),
    [
        ({"segment": [10, 2], "label": "x"}, "database.v1.annotations[0].segment", "before start"),
        ({"segment": [1], "label": "x"}, "database.v1.annotations[0].segment", "[start, end]"),
        ({"segment": [1, 2], "label": ""}, "database.v1.annotations[0].label", "class name"),
    ],
)
def test_reader_errors_name_the_field(tmp_path, patch, field, problem):
    bad = json.loads(json.dumps(ANET))
    bad["database"]["v1"]["annotations"][0] = patch
    with pytest.raises(FormatError) as e:
        load_tad_json(write(tmp_path / "bad.json", bad))
    assert e.value.field == field and problem in str(e.value)
    assert str(tmp_path / "bad.json") in str(e.value)


def test_reader_errors_on_duration_database_and_subset(tmp_path):
    bad = json.loads(json.dumps(ANET))
    bad["database"]["v2"]["duration"] = -1
    with pytest.raises(FormatError, match="database.v2.duration"):
        load_tad_json(write(tmp_path / "d.json", bad))
    with pytest.raises(FormatError, match="database"):
        load_tad_json(write(tmp_path / "n.json", {"results": {}}))
    with pytest.raises(FormatError, match="Subsets present: 'testing', 'training', 'validation'"):
        load_tad_json(write(tmp_path / "a.json", ANET), "train")


def test_class_list_and_class_features(tmp_path):
    (tmp_path / "c.txt").write_text("Long jump\n\nShot put\n")
    assert load_class_list(tmp_path / "c.txt") == ["Long jump", "Shot put"]
    assert load_class_list(write(tmp_path / "c.json", ["a", "b"])) == ["a", "b"]
    (tmp_path / "dup.txt").write_text("a\nb\na\n")
    with pytest.raises(FormatError, match="repeats line 1") as e:
        load_class_list(tmp_path / "dup.txt")
    assert e.value.line == 3
    videos = load_tad_json(write(tmp_path / "anet.json", ANET))
    with pytest.raises(FormatError, match="'Shot put' is not in the class list"):
        check_classes(videos, ["Long jump"], "anet.json")

    feats = np.arange(6, dtype=np.float32).reshape(3, 2)
    save_class_features(tmp_path / "f.npz", ["a", "b", "c"], feats)
    names, loaded = load_class_features(tmp_path / "f.npz")
    assert names == ["a", "b", "c"] and np.array_equal(loaded, feats)
    names, loaded = load_class_features(tmp_path / "f.npz", ["c", "a"])
    assert names == ["c", "a"] and np.array_equal(loaded, feats[[2, 0]])
    with pytest.raises(FormatError, match="no embedding for 1 class"):
        load_class_features(tmp_path / "f.npz", ["a", "zzz"])


def test_to_moment_annotations_one_row_per_video():
    videos = [TADVideo("v", 20.0, "val", [[0, 5], [6, 9]], ["a", "b"])]
    (ann,) = to_moment_annotations(videos)
    assert ann.qid == "v" and ann.vid == "v" and ann.duration == 20.0
    assert ann.relevant_windows == [[0, 5], [6, 9]] and ann.extra == {"labels": ["a", "b"]}


# ---------------------------------------------------------------------------------- evaluator
def gt_rows() -> list[TADVideo]:
    return [
        TADVideo("v1", 40, "val", [[0, 10], [20, 30]], ["a", "a"]),
        TADVideo("v2", 40, "val", [[5, 15], [0, 4]], ["a", "b"]),
    ]


def pred_rows() -> list[MomentPrediction]:
    return [
        MomentPrediction(
            "v1", "", "v1",
            [[0, 10, 0.9], [21, 30, 0.8], [0, 9, 0.7], [0, 5, 0.95]],
            extra={"pred_labels": ["a", "a", "a", "c"]},  # class c has no ground truth
        ),
        MomentPrediction("v2", "", "v2", [[5, 10, 0.85]], extra={"pred_labels": ["a"]}),
    ]  # fmt: skip


def test_tad_map_hand_made():
    """Class a: detections by score are TP, (TP@0.5 / FP@0.7), TP, duplicate FP; 3 instances.

    AP_a@0.5 = 1; AP_a@0.7: precision 1, .5, 2/3, .5 at recall 1/3, 1/3, 2/3, 2/3 -> 1/3 * 1 +
    1/3 * 2/3 = 5/9. Class b has no detection: AP 0. mAP@0.5 = 0.5, mAP@0.7 = 5/18.
    """
    evaluator = TADEvaluator(to_moment_annotations(gt_rows()), tiou_thresholds=(0.5, 0.7))
    evaluator.process(pred_rows())
    metrics = evaluator.evaluate()
    assert metrics["per_class_AP"]["a"] == {"0.5": 100.0, "0.7": round(500 / 9, 2)}
    assert metrics["per_class_AP"]["b"] == {"0.5": 0.0, "0.7": 0.0}
    assert "c" not in metrics["per_class_AP"]
    assert metrics["mAP"] == {"0.5": 50.0, "0.7": round(500 / 18, 2)}
    assert metrics["brief"]["TAD-mAP"] == round(100 * (0.5 + 5 / 18) / 2, 2)
    assert metrics["brief"]["TAD-mAP@0.5"] == 50.0
    assert metrics["num_classes"] == 2 and metrics["num_videos"] == 2
    assert metrics["num_instances"] == 4


def test_tad_map_detection_in_wrong_video_is_false_positive():
    gt = [TADVideo("v1", 40, "val", [[0, 10]], ["a"]), TADVideo("v2", 40, "val", [], [])]
    preds = [
        MomentPrediction("v1", "", "v1", [], extra={"pred_labels": []}),
        MomentPrediction("v2", "", "v2", [[0, 10, 0.9]], extra={"pred_labels": ["a"]}),
    ]
    evaluator = TADEvaluator(to_moment_annotations(gt), tiou_thresholds=(0.5,))
    evaluator.process(preds)
    assert evaluator.evaluate()["brief"]["TAD-mAP"] == 0.0


def test_tad_evaluator_registered_and_checks_labels():
    assert "tad" in EVALUATORS
    anns = to_moment_annotations(gt_rows())
    evaluator = build_evaluator("tad", anns)
    assert tuple(evaluator.thresholds) == ACTIVITYNET_TIOU
    bad = MomentPrediction("v1", "", "v1", [[0, 1, 0.5]], extra={"pred_labels": []})
    evaluator.process([bad, pred_rows()[1]])
    with pytest.raises(FormatError, match="one class label per window"):
        evaluator.evaluate()
    row = anns[0].to_dict()
    row["extra_field"] = 1
    del row["labels"]
    with pytest.raises(FormatError, match="one class label per relevant window"):
        TADEvaluator([row])
    evaluator = build_evaluator("tad", anns)
    evaluator.process(pred_rows()[:1])  # v2 has no prediction row
    with pytest.raises(FormatError, match="no prediction"):
        evaluator.evaluate()


def official_ap(gt, preds, thresholds):
    """The official compute_average_precision_detection, loop for loop (no pandas)."""
    npos = float(len(gt))
    lock = -np.ones((len(thresholds), len(gt)))
    preds = sorted(preds, key=lambda p: -p[3])
    tp = np.zeros((len(thresholds), len(preds)))
    fp = np.zeros((len(thresholds), len(preds)))
    for idx, (vid, s, e, _) in enumerate(preds):
        this = [(j, g) for j, g in enumerate(gt) if g[0] == vid]
        if not this:
            fp[:, idx] = 1
            continue
        segs = np.array([[g[1], g[2]] for _, g in this])
        inter = np.clip(np.minimum(e, segs[:, 1]) - np.maximum(s, segs[:, 0]), 0, None)
        union = (segs[:, 1] - segs[:, 0]) + (e - s) - inter
        tiou = inter / union
        order = tiou.argsort()[::-1]
        for t, thr in enumerate(thresholds):
            for jdx in order:
                if tiou[jdx] < thr:
                    fp[t, idx] = 1
                    break
                if lock[t, this[jdx][0]] >= 0:
                    continue
                tp[t, idx] = 1
                lock[t, this[jdx][0]] = idx
                break
            if fp[t, idx] == 0 and tp[t, idx] == 0:
                fp[t, idx] = 1
    tp_c, fp_c = np.cumsum(tp, 1), np.cumsum(fp, 1)
    rec, prec = tp_c / npos, tp_c / (tp_c + fp_c)
    out = []
    for t in range(len(thresholds)):
        mprec = np.hstack([[0], prec[t], [0]])
        mrec = np.hstack([[0], rec[t], [1]])
        for i in range(len(mprec) - 1)[::-1]:
            mprec[i] = max(mprec[i], mprec[i + 1])
        idx = np.where(mrec[1:] != mrec[:-1])[0] + 1
        out.append(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))
    return np.array(out)


@pytest.mark.parametrize("seed", range(6))
def test_class_ap_matches_official_loop(seed):
    rng = np.random.default_rng(seed)
    thresholds = np.array(ACTIVITYNET_TIOU)
    gt, preds = [], []
    for v in range(5):
        for _ in range(rng.integers(0, 4)):
            s = rng.uniform(0, 80)
            gt.append((f"v{v}", s, s + rng.uniform(1, 20)))
        for _ in range(rng.integers(0, 12)):
            s = rng.uniform(0, 80)
            preds.append((f"v{v}", s, s + rng.uniform(1, 20), rng.uniform()))
    if not gt:
        gt.append(("v0", 1.0, 5.0))
    expected = official_ap(gt, preds, thresholds)
    by_vid_gt = {}
    for vid, s, e in gt:
        by_vid_gt.setdefault(vid, []).append([s, e])
    by_vid_pred = {}
    for vid, s, e, c in preds:
        by_vid_pred.setdefault(vid, []).append([s, e, c])
    got = class_average_precision(
        [(v, np.array(x)) for v, x in by_vid_gt.items()],
        [(v, np.array(x)[:, :2], np.array(x)[:, 2]) for v, x in by_vid_pred.items()],
        thresholds,
    )
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_match_detections_and_interpolation():
    hits = match_detections(
        np.array([[0.0, 10.0], [0.0, 9.0], [20.0, 26.0]]),
        np.array([[0.0, 10.0], [20.0, 30.0]]),
        np.array([0.5, 0.7]),
    )
    # second detection duplicates the first ground truth; third has tIoU 0.6 with the second
    assert hits.tolist() == [[True, False, True], [True, False, False]]
    assert interpolated_ap(np.array([1.0, 0.5]), np.array([0.5, 0.5])) == 0.5
    assert math.isclose(interpolated_ap(np.array([0.5, 2 / 3]), np.array([0.5, 1.0])), 2 / 3)


def test_parse_thresholds():
    assert parse_thresholds("0.3:0.1:0.7") == (0.3, 0.4, 0.5, 0.6, 0.7)
    assert parse_thresholds("0.5:0.05:0.95") == ACTIVITYNET_TIOU
    assert parse_thresholds("0.5, 0.75") == (0.5, 0.75)
    with pytest.raises(ValueError):
        parse_thresholds("0.7:0.1:0.3")


# ------------------------------------------------------------------------------- synthetic TAD
@pytest.fixture(scope="module")
def synth_tad(tmp_path_factory):
    from momentkit.data.synth import SynthConfig, generate
    from momentkit.data.synth_tad import write_synth_tad

    root = tmp_path_factory.mktemp("synth_tad")
    generate(
        SynthConfig(num_train=6, num_val=3, seed=3, mode="tad", min_duration=30, max_duration=50),
        root,
        progress=False,
    )
    return root, write_synth_tad(root)


def test_synth_tad_labels_every_event_with_its_motion(synth_tad):
    from momentkit.utils.io import read_jsonl

    root, files = synth_tad
    assert files.num_videos == {"training": 6, "validation": 3}
    videos = {v.vid: v for v in load_tad_json(files.annotations)}
    classes = load_class_list(files.classes)
    assert classes == ["running", "jumping", "spinning", "falling", "waving", "climbing",
                       "crawling", "swimming"]  # fmt: skip
    for split, subset in (("train", "training"), ("val", "validation")):
        for row in read_jsonl(root / "latent" / f"{split}.jsonl"):
            video = videos[row["vid"]]
            assert video.subset == subset
            assert video.duration == row["num_clips"] * 2.0
            assert video.segments == [[ev[0] * 2.0, ev[1] * 2.0] for ev in row["events"]]
            assert video.labels == [ev[3] for ev in row["events"]]
            assert len(set(video.labels)) >= 2  # several classes a video
    # the MR annotations share the videos
    mr = [json.loads(line) for line in (root / "annotations/train.jsonl").read_text().splitlines()]
    assert {r["vid"] for r in mr} == {v for v in videos if v.startswith("synth_train")}


def test_synth_class_queries_are_the_worlds_text_encoding(synth_tad):
    from momentkit.data.synth import build_world, load_synth_config
    from momentkit.data.synth_tad import encode_class_prompt

    root, files = synth_tad
    config = load_synth_config(root)
    world = build_world(config)
    names, feats = load_class_features(files.class_features)
    assert names == list(world.motion)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-6)
    again = encode_class_prompt("jumping", world, config.world_seed)
    assert np.array_equal(feats[names.index("jumping")], again["pooler_output"])
    assert again["last_hidden_state"].shape == (6, 512)  # <sos> a video of jumping + pooled
    # the class query points at its motion word (weight 1 against 0.2 for the other words)
    cos = feats @ world.motion_text_dirs.T
    assert (cos.argmax(axis=1) == np.arange(len(names))).all() and (cos.diagonal() > 0.9).all()


def test_write_synth_tad_is_deterministic(synth_tad):
    from momentkit.data.synth_tad import write_synth_tad

    root, files = synth_tad
    before = [p.read_bytes() for p in (files.annotations, files.classes, files.class_features)]
    write_synth_tad(root)
    after = [p.read_bytes() for p in (files.annotations, files.classes, files.class_features)]
    assert before == after
    with pytest.raises(FileNotFoundError, match="momentkit synth"):
        write_synth_tad(root / "nowhere")
