"""Evaluators: official QVHighlights parity and speed, hand-made cases, grounding, HD, CLI."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from momentkit.cli import evaluate as cli_evaluate
from momentkit.cli.main import main
from momentkit.data.records import MomentAnnotation, load_annotations, load_predictions
from momentkit.evaluation import (
    EVALUATORS,
    GroundingEvaluator,
    HighlightEvaluator,
    QVHighlightsEvaluator,
    build_evaluator,
    detect_dataset,
    eval_submission,
)
from momentkit.evaluation.average_precision import (
    detection_ap,
    masked_sum,
    ranking_ap,
    trapezoid_ap,
)
from momentkit.utils.errors import FormatError
from momentkit.utils.io import read_jsonl, write_jsonl

THRESHOLDS = [float(f"{t:.2f}") for t in np.linspace(0.5, 0.95, 10)]


# --------------------------------------------------------------------------- official parity
@pytest.fixture(scope="module")
def sample(shared_data: Path) -> dict:
    folder = shared_data / "qvhighlights"
    return {
        "pred_path": folder / "sample_val_preds.jsonl",
        "gt_path": folder / "highlight_val_release.jsonl",
        "pred": read_jsonl(folder / "sample_val_preds.jsonl"),
        "gt": read_jsonl(folder / "highlight_val_release.jsonl"),
        "expected": json.loads((folder / "sample_val_preds_metrics_raw.json").read_text()),
    }


def test_official_sample_exact_parity(sample: dict) -> None:
    metrics = eval_submission(sample["pred"], sample["gt"])
    assert metrics == sample["expected"]
    # same layout as the official JSON: brief first, then entries by name
    assert list(metrics) == list(sample["expected"])
    assert list(metrics["brief"]) == list(sample["expected"]["brief"])


def test_official_sample_speed(sample: dict) -> None:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        eval_submission(sample["pred"], sample["gt"])
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"eval_submission on the sample file: median {median:.3f} s")
    assert median < 4.0  # target < 2 s (measured ~0.3 s); slack for busy CI machines


def test_evaluator_object_in_batches_with_records(sample: dict) -> None:
    evaluator = QVHighlightsEvaluator(load_annotations(sample["gt_path"]))
    predictions = load_predictions(sample["pred_path"])
    evaluator.process(predictions[:5])
    evaluator.reset()
    for i in range(0, len(predictions), 400):
        evaluator.process(predictions[i : i + 400])
    assert evaluator.evaluate() == sample["expected"]


def test_missing_qids_name_both_files(sample: dict) -> None:
    evaluator = QVHighlightsEvaluator(sample["gt"], gt_path=sample["gt_path"])
    evaluator.process(sample["pred"][:-2], path="preds.jsonl")
    with pytest.raises(FormatError, match=r"preds\.jsonl.*2 ground-truth qid\(s\) of .*highlight"):
        evaluator.evaluate()


# --------------------------------------------------------------------------- hand-made QVHighlights
def _gt(qid: int, windows: list, duration: float = 150, **kw: object) -> dict:
    return {
        "qid": qid,
        "query": "q",
        "vid": f"v{qid}",
        "duration": duration,
        "relevant_windows": windows,
        **kw,
    }


def _pred(qid: int, windows: list, **kw: object) -> dict:
    return {"qid": qid, "pred_relevant_windows": windows, **kw}


def _mr(preds: list, gts: list, **kw: object) -> dict:
    return eval_submission(preds, gts, **kw)


def test_equal_scores_keep_listed_order() -> None:
    gts = [_gt(1, [[0, 10]])]
    miss_first = _mr([_pred(1, [[20, 30, 0.5], [0, 10, 0.5]])], gts)
    hit_first = _mr([_pred(1, [[0, 10, 0.5], [20, 30, 0.5]])], gts)
    # stable sort: the miss stays first -> precision 1/2 at the hit
    assert miss_first["full"]["MR-mAP"]["0.5"] == 50.0
    assert hit_first["full"]["MR-mAP"]["0.5"] == 100.0


def test_top10_truncation_happens_before_sorting() -> None:
    gts = [_gt(1, [[0, 10]])]
    misses = [[50 + i, 60 + i, 0.5] for i in range(10)]
    # the best-scored, matching window is 11th in the list: dropped, AP 0
    dropped = _mr([_pred(1, [*misses, [0, 10, 0.99]])], gts)
    assert dropped["full"]["MR-mAP"]["average"] == 0.0
    # 10th in the list: kept, and sorted first by its score
    kept = _mr([_pred(1, [*misses[:9], [0, 10, 0.99], misses[9]])], gts)
    assert kept["full"]["MR-mAP"]["average"] == 100.0


def test_r1_uses_first_listed_window_not_best_score() -> None:
    gts = [_gt(1, [[0, 10]])]
    m = _mr([_pred(1, [[0, 10, 0.1], [20, 30, 0.9]])], gts)
    assert m["full"]["MR-R1"]["0.95"] == 100.0
    assert m["full"]["MR-mAP"]["0.5"] == 50.0  # ranked by score the match comes second


def test_windows_outside_the_video_are_not_clipped() -> None:
    gts = [_gt(1, [[140, 150]], duration=150)]
    m = _mr([_pred(1, [[140, 160, 0.9]])], gts)
    # IoU 10 / 20 = 0.5 as given (clipping to 150 s would make it 1.0)
    assert m["full"]["MR-R1"]["0.5"] == 100.0
    assert m["full"]["MR-R1"]["0.55"] == 0.0
    assert m["full"]["MR-mAP"]["0.5"] == 100.0 and m["full"]["MR-mAP"]["0.55"] == 0.0


def test_length_bins_keep_only_the_windows_in_range() -> None:
    gts = [
        _gt(1, [[0, 10], [20, 50]]),  # lengths 10 (short) and 30 (middle)
        _gt(2, [[0, 31]]),  # long
        _gt(3, [[0, 160]], duration=160),  # longer than 150: only in full
    ]
    preds = [_pred(1, [[0, 10, 0.9]]), _pred(2, [[0, 31, 0.8]]), _pred(3, [[0, 160, 1.0]])]
    m = _mr(preds, gts)
    assert set(m["short"]["MR-mAP"].values()) == {100.0}
    assert set(m["middle"]["MR-mAP"].values()) == {0.0}  # [0, 10] vs the kept [20, 50]
    assert set(m["middle"]["MR-R1"].values()) == {0.0}
    assert set(m["long"]["MR-mAP"].values()) == {100.0}
    # full: q1 finds one of its two windows (AP 0.5), q2 and q3 score 1
    assert m["full"]["MR-mAP"]["average"] == 83.33
    assert set(m["full"]["MR-R1"].values()) == {100.0}
    assert m["brief"]["MR-short-mAP"] == 100.0 and m["brief"]["MR-long-mAP"] == 100.0


def test_empty_bin_gives_nan() -> None:
    m = _mr([_pred(1, [[0, 40, 0.9]])], [_gt(1, [[0, 40]])])
    assert math.isnan(m["brief"]["MR-short-mAP"]) and math.isnan(m["short"]["MR-R1"]["0.5"])
    assert m["brief"]["MR-long-mAP"] == 100.0


def test_highlight_metrics_hand_computed() -> None:
    gt = _gt(
        1,
        [[0, 6]],
        duration=8,
        relevant_clip_ids=[0, 1, 2],
        saliency_scores=[[4, 4, 4], [2, 2, 2], [0, 0, 0]],
    )
    # 4 clips; ranking by score: clip 1, 3, 2, 0; a 5th score beyond the video
    pred = {"qid": 1, "pred_saliency_scores": [0.1, 0.9, 0.5, 0.7]}
    m = eval_submission([pred], [gt])
    assert set(m["brief"]) == {
        f"HL-min-{n}-{k}" for n in ("Fair", "Good", "VeryGood") for k in ("mAP", "Hit1")
    }
    # Fair: positives are clips 0, 1 -> precisions 1 and 2/4 -> 0.75; top clip 1 is positive
    assert m["HL-min-Fair"] == {"HL-mAP": 75.0, "HL-Hit1": 100.0}
    # Good / VeryGood: only clip 0, ranked 4th -> 1/4; top clip 1 scores 2 < 3
    assert m["HL-min-Good"] == {"HL-mAP": 25.0, "HL-Hit1": 0.0}
    assert m["HL-min-VeryGood"] == {"HL-mAP": 25.0, "HL-Hit1": 0.0}
    # extra scores are dropped for mAP, but Hit@1 looks at them: top clip 4 is outside -> miss
    longer = eval_submission([{**pred, "pred_saliency_scores": [0.1, 0.9, 0.5, 0.7, 5.0]}], [gt])
    assert longer["HL-min-Fair"] == {"HL-mAP": 75.0, "HL-Hit1": 0.0}
    # equal scores form one threshold: precision 2/4 for Fair; Hit@1 takes the first clip
    tied = eval_submission([{**pred, "pred_saliency_scores": [0.5] * 4}], [gt])
    assert tied["HL-min-Fair"] == {"HL-mAP": 50.0, "HL-Hit1": 100.0}


def test_mr_only_and_hl_only_submissions() -> None:
    gt = _gt(1, [[0, 4]], duration=8, relevant_clip_ids=[0, 1], saliency_scores=[[4], [4]])
    mr = eval_submission([_pred(1, [[0, 4, 1.0]])], [gt])
    assert "HL-min-Fair" not in mr and mr["brief"]["MR-full-mAP"] == 100.0
    hl = eval_submission([{"qid": 1, "pred_saliency_scores": [1, 1, 0, 0]}], [gt])
    assert "full" not in hl and hl["brief"]["HL-min-Fair-mAP"] == 100.0


def test_qvhighlights_errors_name_the_problem() -> None:
    gts = [_gt(1, [[0, 10]]), _gt(2, [[0, 10]])]
    with pytest.raises(FormatError, match="qid 2 has no pred_relevant_windows"):
        eval_submission([_pred(1, [[0, 10, 1.0]]), _pred(2, [])], gts)
    with pytest.raises(FormatError, match="pred_relevant_windows\\[0\\].*expected"):
        eval_submission([_pred(1, [[0, 10]]), _pred(2, [[0, 10, 1]])], gts)
    with pytest.raises(FormatError, match="qid 1 has no saliency annotation"):
        eval_submission([{"qid": 1, "pred_saliency_scores": [1.0]}], [_gt(1, [[0, 10]])])
    with pytest.raises(FormatError, match="duplicate qid 1"):
        eval_submission([_pred(1, [[0, 1, 1]]), _pred(1, [[0, 1, 1]])], [_gt(1, [[0, 10]])])
    # match_number=False scores the shared qids only
    m = eval_submission(
        [_pred(1, [[0, 10, 1.0]]), _pred(9, [[0, 1, 1.0]])], gts, match_number=False
    )
    assert m["brief"]["MR-full-mAP"] == 100.0


# --------------------------------------------------------------------------- AP kernels vs loops
def _iou(a: list, b: list) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / ((a[1] - a[0]) + (b[1] - b[0]) - inter)


def _reference_detection_ap(preds: list, gts: list, thd: float) -> float:
    preds = sorted(preds, key=lambda w: -w[2])
    locked: set[int] = set()
    tp = []
    for w in preds:
        ious = np.array([_iou(w, g) for g in gts])
        hit = False
        for j in np.argsort(ious)[::-1]:
            if ious[j] < thd:
                break
            if j in locked:
                continue
            locked.add(int(j))
            hit = True
            break
        tp.append(float(hit))
    tp_cum = np.cumsum(tp)
    fp_cum = np.cumsum([1 - t for t in tp])
    prec = [0.0, *(tp_cum / (tp_cum + fp_cum)), 0.0]
    rec = [0.0, *(tp_cum / len(gts)), 1.0]
    for i in reversed(range(len(prec) - 1)):
        prec[i] = max(prec[i], prec[i + 1])
    return float(
        np.sum(
            [(rec[i] - rec[i - 1]) * prec[i] for i in range(1, len(rec)) if rec[i] != rec[i - 1]]
        )
    )


def test_detection_ap_matches_a_per_query_loop_bitwise() -> None:
    rng = np.random.default_rng(0)
    queries = []
    for _ in range(300):
        n, g = rng.integers(1, 11), rng.integers(1, 12)
        s = rng.integers(0, 30, n).astype(float)
        preds = np.stack([s, s + rng.integers(0, 15, n), rng.integers(0, 4, n) / 4], 1)
        gs = rng.integers(0, 30, g).astype(float)
        gts = np.stack([gs, gs + rng.integers(1, 15, g)], 1)
        if rng.random() < 0.2:
            gts[:] = gts[0]  # identical windows: ties in IoU
        queries.append((preds.tolist(), gts.tolist()))
    num_p, num_g = 10, max(len(g) for _, g in queries)
    pw, pv = np.zeros((300, num_p, 3)), np.zeros((300, num_p), bool)
    gw, gv = np.zeros((300, num_g, 2)), np.zeros((300, num_g), bool)
    for i, (p, g) in enumerate(queries):
        pw[i, : len(p)], pv[i, : len(p)], gw[i, : len(g)], gv[i, : len(g)] = p, True, g, True
    ap = detection_ap(pw[..., :2], pw[..., 2], pv, gw, gv, np.asarray(THRESHOLDS))
    ref = np.array([[_reference_detection_ap(p, g, t) for t in THRESHOLDS] for p, g in queries])
    assert np.array_equal(ap, ref)


def _reference_ranking_ap(y: np.ndarray, s: np.ndarray) -> float:
    if y.min() == y.max():
        return float(y[0])
    thresholds = sorted(set(s.tolist()), reverse=True)
    tps = [y[s >= t].sum() for t in thresholds]
    precs = [tp / (s >= t).sum() for tp, t in zip(tps, thresholds)]
    interp = [max(precs[k:]) for k in range(len(precs))]
    chosen = [interp[k] for k in range(len(precs)) if tps[k] > (tps[k - 1] if k else 0)]
    return float(np.mean(chosen[::-1]))


def test_ranking_ap_matches_a_per_query_loop_bitwise() -> None:
    rng = np.random.default_rng(1)
    num_q, width = 200, 30
    labels, scores = np.zeros((num_q, 2, width)), np.zeros((num_q, width))
    valid = np.zeros((num_q, width), bool)
    for i in range(num_q):
        n = rng.integers(1, width + 1)
        labels[i, :, :n] = rng.random((2, n)) < rng.random()
        scores[i, :n] = rng.integers(0, 5, n) if i % 2 else rng.standard_normal(n)
        valid[i, :n] = True
    ap = ranking_ap(labels, scores, valid)
    n_of = valid.sum(1)
    ref = np.array(
        [
            [_reference_ranking_ap(labels[i, a, : n_of[i]], scores[i, : n_of[i]]) for a in range(2)]
            for i in range(num_q)
        ]
    )
    assert np.array_equal(ap, ref)


def test_masked_sum_is_numpy_sum_of_the_selected_terms() -> None:
    rng = np.random.default_rng(2)
    values = rng.random((500, 40)) * 10.0 ** rng.integers(-3, 3, (500, 1))
    mask = rng.random((500, 40)) < rng.random((500, 1))
    expected = np.array([np.sum(v[m]) for v, m in zip(values, mask)])
    assert np.array_equal(masked_sum(values, mask), expected)


def test_trapezoid_ap_hand_computed() -> None:
    ranked = np.array([[1.0, 0, 1], [0, 0, 0], [0, 1, 0]])
    ap = trapezoid_ap(ranked, np.ones_like(ranked, dtype=bool))
    # [1, 0, 1]: 0.5 * (1 + 1) / 2 + 0.5 * (1/2 + 2/3) / 2; no positive: 0; [0, 1, 0]: (1 + 1/2)/2
    assert ap == pytest.approx([0.5 + 0.5 * (0.5 + 2 / 3) / 2, 0.0, (0.0 + 0.5) / 2])


# --------------------------------------------------------------------------- grounding
def test_grounding_metrics_hand_computed() -> None:
    gts = [_gt(1, [[0, 10]]), _gt(2, [[10, 20], [30, 40]]), _gt(3, [[0, 10]]), _gt(4, [[0, 10]])]
    preds = [
        _pred(1, [[0, 5, 0.9], [0, 10, 0.1]]),  # top-1 IoU 0.5, top-2 IoU 1
        _pred(2, [[30, 38, 0.7]]),  # IoU 0.8 with the closest window
        _pred(3, [[20, 30, 0.2], [0, 10, 0.9]]),  # ranked by score: top-1 IoU 1
        _pred(4, []),  # no window: a miss
    ]
    ev = GroundingEvaluator(gts)
    ev.process(preds)
    m = ev.evaluate()
    assert m["brief"] == {
        "MR-R1@0.3": 75.0,
        "MR-R1@0.5": 75.0,
        "MR-R1@0.7": 50.0,
        "MR-R5@0.3": 75.0,
        "MR-R5@0.5": 75.0,
        "MR-R5@0.7": 75.0,
        "MR-mIoU": 57.5,
    }
    assert m["MR-R1"] == {"0.3": 75.0, "0.5": 75.0, "0.7": 50.0} and m["num_queries"] == 4
    custom = GroundingEvaluator(gts, iou_thresholds=[0.1], top_k=[2])
    custom.process(preds)
    assert custom.evaluate()["brief"] == {"MR-R2@0.1": 75.0, "MR-mIoU": 57.5}


def test_grounding_names_share_the_evaluator() -> None:
    for name in ("grounding", "charades_sta", "tacos", "activitynet"):
        assert isinstance(build_evaluator(name, [_gt(1, [[0, 1]])]), GroundingEvaluator)


# --------------------------------------------------------------------------- highlights
def _hl_gt(qid: str, label: list, domain: str) -> dict:
    return {
        "qid": qid,
        "query": domain,
        "vid": qid,
        "duration": 2.0 * len(label),
        "relevant_windows": None,
        "relevant_clip_ids": None,
        "label": label,
        "domain": domain,
    }


def test_youtube_highlights_mean_over_domains() -> None:
    gts = [
        _hl_gt("a", [[0], [1], [0], [1]], "dog"),
        _hl_gt("b", [[1], [0], [0]], "dog"),
        _hl_gt("c", [[1], [1]], "skiing"),
    ]
    preds = [
        {"qid": "a", "pred_saliency_scores": [0.1, 0.9, 0.2, 0.8]},  # positives first: AP 1
        {"qid": "b", "pred_saliency_scores": [0.1, 0.5, 0.3]},  # ranked [0, 0, 1]: (0 + 1/3) / 2
        {"qid": "c", "pred_saliency_scores": [0.0, 0.0]},  # AP 1
    ]
    ev = build_evaluator("youtube_highlights", gts)
    ev.process(preds)
    m = ev.evaluate()
    dog = (1 + 1 / 6) / 2
    assert m["per_domain"]["dog"] == {"HL-mAP": round(100 * dog, 2), "num_videos": 2}
    assert m["brief"] == {
        "HL-mAP": round(100 * (dog + 1) / 2, 2),
        "HL-mAP-dog": round(100 * dog, 2),
        "HL-mAP-skiing": 100.0,
    }


def test_tvsum_top5_and_median_binarisation() -> None:
    # 8 clips, 2 annotators; annotator 0 likes the late clips, annotator 1 the early ones
    label = [[float(i + 1), float(8 - i)] for i in range(8)]
    gts = [_hl_gt("v", label, "BK")]
    preds = [{"qid": "v", "pred_saliency_scores": [8.0, 7, 6, 5, 4, 3, 2, 1]}]
    ev = build_evaluator("tvsum", gts)
    ev.process(preds)
    # annotator 0: positives are clips 4..7 (above median 4); top-5 labels [0, 0, 0, 0, 1]:
    # AP (0 + 1/5) / 2 = 0.1. annotator 1: clips 0..3, top-5 [1, 1, 1, 1, 0]: AP 1.
    assert ev.evaluate()["brief"] == {"HL-mAP": 55.0, "HL-mAP-BK": 55.0}
    # the same without top-5 (YouTube-style full ranking) differs
    full = HighlightEvaluator(gts, top_k=None, binarize="median")
    full.process(preds)
    assert full.evaluate()["HL-mAP"] != 55.0


def test_highlight_labels_from_saliency_scores_or_raw_label() -> None:
    label = [[1.0, 5.0], [3.0, 2.0], [4.0, 4.0], [2.0, 1.0]]
    raw = _hl_gt("v", label, "VT")
    mapped = {**raw, "relevant_clip_ids": [0, 1, 2, 3], "saliency_scores": label}
    mapped.pop("label")
    preds = [{"qid": "v", "pred_saliency_scores": [0.3, 0.1, 0.9, 0.2]}]
    results = []
    for rows in ([raw], [mapped]):
        ev = build_evaluator("highlight", rows)  # several annotators: TVSum conventions
        ev.process(preds)
        results.append(ev.evaluate())
    assert results[0] == results[1]
    assert build_evaluator("highlight", [raw]).top_k == 5


def test_highlight_on_real_tvsum_loader_and_raw_rows_agree(shared_data: Path) -> None:
    from momentkit.data.datasets import load_dataset

    raw = load_annotations(shared_data / "tvsum" / "tvsum_val.jsonl")
    mapped = load_dataset("tvsum", "val", shared_data)
    rng = np.random.default_rng(0)
    preds = [
        {"qid": a.qid, "pred_saliency_scores": rng.random(len(a.extra["label"])).tolist()}
        for a in raw
    ]
    metrics = []
    for rows in (raw, mapped):
        ev = build_evaluator("tvsum", rows)
        ev.process(preds)
        metrics.append(ev.evaluate())
    assert metrics[0] == metrics[1] and len(metrics[0]["per_domain"]) == 10


def test_highlight_errors() -> None:
    row = MomentAnnotation(qid="v", query="q", vid="v", duration=4.0)
    with pytest.raises(FormatError, match="neither saliency_scores nor a per-clip label"):
        ev = build_evaluator("youtube_highlights", [row])
        ev.process([{"qid": "v", "pred_saliency_scores": [1.0, 2.0]}])
        ev.evaluate()
    ev = build_evaluator("youtube_highlights", [_hl_gt("v", [[1], [0]], "dog")])
    ev.process([{"qid": "v", "pred_relevant_windows": [[0, 1, 1.0]]}])
    with pytest.raises(FormatError, match="qid 'v' has no clip scores"):
        ev.evaluate()


# --------------------------------------------------------------------------- detection + CLI
def test_detect_dataset_rule() -> None:
    def rows(**kw: object) -> list[MomentAnnotation]:
        return [
            MomentAnnotation.from_dict({"qid": 1, "query": "q", "vid": "v", "duration": 10, **kw})
        ]

    assert detect_dataset(rows(label=[[1.0, 2.0], [3.0, 1.0]])) == "tvsum"
    assert detect_dataset(rows(label=[[0], [1]])) == "youtube_highlights"
    assert detect_dataset(rows(relevant_clip_ids=[0], saliency_scores=[[1] * 20])) == "tvsum"
    assert detect_dataset(rows(relevant_clip_ids=[0], saliency_scores=[[1, 2, 3]])) == (
        "qvhighlights"
    )
    assert detect_dataset(rows(relevant_windows=[[0, 1]])) == "grounding"
    with pytest.raises(FormatError, match="--dataset"):
        detect_dataset(rows())


def test_cli_choices_are_registered_evaluators() -> None:
    assert set(cli_evaluate.DATASETS) <= set(EVALUATORS.names())


def test_cli_end_to_end_on_the_sample(sample: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "metrics.json"
    rc = main(["evaluate", str(sample["pred_path"]), str(sample["gt_path"]), "--out", str(out)])
    assert rc == 0
    assert json.loads(out.read_text()) == sample["expected"]
    printed = capsys.readouterr().out
    assert "MR-full-mAP" in printed and "32.20" in printed and "qvhighlights" in printed


def test_cli_grounding_auto_and_override(tmp_path: Path, capsys) -> None:
    gt, pred = tmp_path / "gt.jsonl", tmp_path / "pred.jsonl"
    write_jsonl(gt, [_gt(1, [[0, 10]]), _gt(2, [[5, 10]])])
    write_jsonl(pred, [_pred(1, [[0, 10, 0.9]]), _pred(2, [[0, 5, 0.9]])])
    out = tmp_path / "m.json"
    assert main(["evaluate", str(pred), str(gt), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["brief"]["MR-R1@0.5"] == 50.0
    assert "grounding" in capsys.readouterr().out
    assert (
        main(["evaluate", str(pred), str(gt), "--dataset", "qvhighlights", "--out", str(out)]) == 0
    )
    assert json.loads(out.read_text())["brief"]["MR-full-R1@0.5"] == 50.0


def test_cli_errors_name_the_file(tmp_path: Path, capsys) -> None:
    gt, pred = tmp_path / "gt.jsonl", tmp_path / "pred.jsonl"
    write_jsonl(gt, [_gt(1, [[0, 10]]), _gt(2, [[0, 10]])])
    pred.write_text('{"qid": 1, "pred_relevant_windows": [[0, 10, 1.0]]}\n{"qid": 2, "pred_rel\n')
    assert main(["evaluate", str(pred), str(gt)]) == 2
    err = capsys.readouterr().err
    assert f"{pred}:2" in err and "invalid JSON" in err
    write_jsonl(pred, [_pred(1, [[0, 10, 1.0]])])
    assert main(["evaluate", str(pred), str(gt)]) == 2
    err = capsys.readouterr().err
    assert str(pred) in err and str(gt) in err and "--subset" in err
    assert main(["evaluate", str(pred), str(gt), "--subset"]) == 0
    write_jsonl(pred, [_pred(1, [[10, 0, 1.0]]), _pred(2, [[0, 10, 1.0]])])
    assert main(["evaluate", str(pred), str(gt)]) == 2
    assert f"{pred}:1: field 'pred_relevant_windows[0]'" in capsys.readouterr().err


# --------------------------------------------------------------------------- benchmark module
def _bench_args(sample: dict, tmp_path: Path, **kw: object) -> argparse.Namespace:
    from momentkit.benchmarks import evaluate as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(
        [
            "--pred",
            str(sample["pred_path"]),
            "--gt",
            str(sample["gt_path"]),
            "--repeat",
            "1",
            "--out",
            str(tmp_path / "bench.json"),
        ]
    )
    for key, value in kw.items():
        setattr(args, key, value)
    return args


def test_bench_evaluate_checks_against_expected_and_official(
    sample: dict, tmp_path: Path, monkeypatch
) -> None:
    from momentkit.benchmarks import evaluate as bench

    # a stand-in for the official checkout, with the official module layout
    fake = tmp_path / "checkout" / "standalone_eval"
    fake.mkdir(parents=True)
    (fake / "eval.py").write_text(
        "from momentkit.evaluation import eval_submission as _ours\n"
        "def eval_submission(submission, ground_truth, verbose=True, match_number=True):\n"
        "    print('official-style chatter')\n"
        "    return _ours(submission, ground_truth)\n"
    )
    monkeypatch.delitem(sys.modules, "standalone_eval", raising=False)
    monkeypatch.delitem(sys.modules, "standalone_eval.eval", raising=False)
    args = _bench_args(sample, tmp_path, official_dir=fake)
    assert bench.run(args) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["ours_equals_expected"] and report["ours_equals_official"]
    assert report["ours_median_s"] > 0 and len(report["official_s"]) == 1
    sys.modules.pop("standalone_eval.eval", None)
    sys.modules.pop("standalone_eval", None)


def test_bench_evaluate_rejects_a_wrong_official_dir(sample: dict, tmp_path: Path) -> None:
    from momentkit.benchmarks import evaluate as bench
    from momentkit.utils.errors import MomentkitError

    with pytest.raises(MomentkitError, match="standalone_eval"):
        bench.run(_bench_args(sample, tmp_path, official_dir=tmp_path))
