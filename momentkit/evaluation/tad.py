"""Temporal action detection mAP, as the ActivityNet and THUMOS14 evaluators compute it.

The conventions of ``Evaluation/eval_detection.py`` (activitynet/ActivityNet), which the THUMOS14
numbers of ActionFormer/UniMD also use with other thresholds:

- AP is computed per class over the whole split: the class's detections from every video are
  ranked by decreasing score; each one is a true positive at threshold ``tau`` if some ground
  truth instance of that class *in the same video*, not yet matched at ``tau``, has
  ``tIoU >= tau`` (the highest-tIoU such instance is taken), else a false positive;
- ``AP = sum_i (r_i - r_{i-1}) * p_interp(r_i)`` over the points where recall changes, with the
  precision made monotone from the right (VOC 2011 interpolation);
- mAP at ``tau`` is the mean AP over the classes with ground truth in the split (a class without
  detections has AP 0; detections of classes without ground truth are ignored, where the official
  code would stop); the reported average mAP is the mean over the thresholds.

Thresholds: ``0.5:0.05:0.95`` (ActivityNet, the default), ``0.3:0.1:0.7`` (THUMOS14 and the
UniMD Charades evaluation). Equal scores are ranked in listed order (a stable sort; the official
code's ``argsort()[::-1]`` reverses ties).

Ground truth: one record per video (qid = video id), windows in ``relevant_windows`` and their
classes in ``extra["labels"]`` (:func:`momentkit.data.tad.to_moment_annotations`). Predictions:
one record per video, ``pred_relevant_windows`` ``[[start, end, score], ...]`` and their classes
in ``extra["pred_labels"]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from momentkit.data.records import MomentAnnotation, MomentPrediction
from momentkit.evaluation.base import EVALUATORS, AnnotationLike, Evaluator, Metrics, percent
from momentkit.utils.errors import FormatError

ACTIVITYNET_TIOU = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
THUMOS_TIOU = (0.3, 0.4, 0.5, 0.6, 0.7)


def interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC 2011 AP of a precision/recall curve (the official ``interpolated_prec_rec``)."""
    mprec = np.concatenate([[0.0], precision, [0.0]])
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mprec = np.maximum.accumulate(mprec[::-1])[::-1]
    idx = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


def _segment_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``(P, 2)`` x ``(G, 2)`` -> ``(P, G)`` tIoU (official ``segment_iou``; 0 for a 0 union)."""
    left = np.maximum(pred[:, None, 0], gt[None, :, 0])
    right = np.minimum(pred[:, None, 1], gt[None, :, 1])
    inter = np.clip(right - left, 0.0, None)
    union = (pred[:, None, 1] - pred[:, None, 0]) + (gt[None, :, 1] - gt[None, :, 0]) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_detections(
    pred_segments: np.ndarray, gt_segments: np.ndarray, thresholds: np.ndarray
) -> np.ndarray:
    """Greedy matching of one video's detections (best first) with its ground truth.

    Args:
        pred_segments: ``(P, 2)`` detections, in decreasing score order.
        gt_segments: ``(G, 2)`` ground truth of the same class and video.
        thresholds: ``(T,)`` tIoU thresholds.

    Returns:
        ``(T, P)`` bool, True for true positives.
    """
    num_t, num_p = len(thresholds), len(pred_segments)
    tp = np.zeros((num_t, num_p), dtype=bool)
    if not len(gt_segments) or not num_p:
        return tp
    iou = _segment_iou(pred_segments, gt_segments)  # (P, G)
    locked = np.zeros((num_t, len(gt_segments)), dtype=bool)
    rows = np.arange(num_t)
    for p in range(num_p):
        candidates = (iou[p][None, :] >= thresholds[:, None]) & ~locked  # (T, G)
        scored = np.where(candidates, iou[p][None, :], -1.0)
        best = scored.argmax(axis=1)
        hit = candidates[rows, best]
        tp[hit, p] = True
        locked[rows[hit], best[hit]] = True
    return tp


def class_average_precision(
    gt: Sequence[tuple[str, np.ndarray]],
    detections: Sequence[tuple[str, np.ndarray, np.ndarray]],
    thresholds: np.ndarray,
) -> np.ndarray:
    """AP of one class at every threshold.

    Args:
        gt: ``(video id, (G, 2) segments)`` of the class.
        detections: ``(video id, (P, 2) segments, (P,) scores)`` of the class.
        thresholds: ``(T,)``.

    Returns:
        ``(T,)`` AP in ``[0, 1]`` (0 without ground truth or detections).
    """
    num_gt = sum(len(s) for _, s in gt)
    vids = [v for v, s, _ in detections for _ in range(len(s))]
    if not num_gt or not vids:
        return np.zeros(len(thresholds))
    segments = np.concatenate([s for _, s, _ in detections]).reshape(-1, 2)
    scores = np.concatenate([c for _, _, c in detections])
    order = np.argsort(-scores, kind="stable")
    gt_by_vid: dict[str, list[np.ndarray]] = {}
    for vid, s in gt:
        gt_by_vid.setdefault(vid, []).append(np.asarray(s, dtype=np.float64).reshape(-1, 2))
    rank_of = np.empty(len(order), dtype=np.int64)
    rank_of[order] = np.arange(len(order))
    tp = np.zeros((len(thresholds), len(order)), dtype=bool)
    video_of = np.asarray(vids, dtype=object)
    for vid in set(vids):
        members = np.flatnonzero(video_of == vid)
        members = members[np.argsort(rank_of[members], kind="stable")]
        gts = gt_by_vid.get(vid)
        if gts is None:
            continue
        hits = match_detections(segments[members], np.concatenate(gts), thresholds)
        tp[:, rank_of[members]] = hits
    tp_cum = np.cumsum(tp, axis=1).astype(np.float64)
    fp_cum = np.cumsum(~tp, axis=1).astype(np.float64)
    recall = tp_cum / num_gt
    precision = tp_cum / (tp_cum + fp_cum)
    return np.array([interpolated_ap(precision[i], recall[i]) for i in range(len(thresholds))])


@EVALUATORS.register("tad")
class TADEvaluator(Evaluator):
    """TAD mAP per tIoU threshold and averaged (see the module docstring).

    Args:
        annotations: one record per video with ``extra["labels"]`` (see the module docstring).
        tiou_thresholds: thresholds (default ActivityNet's ``0.5:0.05:0.95``).
        classes: the classes to average over (default: every class with ground truth); classes
            listed here without ground truth count with AP 0 only if ``count_empty``.
        count_empty: see ``classes``.
        match_number: require a prediction row for exactly the ground-truth videos.
        gt_path: where the annotations come from, for error messages.

    ``evaluate()`` returns ``{"brief": {"TAD-mAP": avg, "TAD-mAP@0.5": ...}, "mAP": {"0.5": ...},
    "per_class_AP": {class: {"0.5": ...}}, "num_classes": C, "num_videos": V,
    "num_instances": N}`` in percent.
    """

    def __init__(
        self,
        annotations: Iterable[AnnotationLike],
        *,
        tiou_thresholds: Sequence[float] = ACTIVITYNET_TIOU,
        classes: Sequence[str] | None = None,
        count_empty: bool = False,
        match_number: bool = True,
        gt_path: str | Path | None = None,
    ) -> None:
        super().__init__(annotations, match_number=match_number, gt_path=gt_path)
        self.thresholds = np.asarray(sorted(float(t) for t in tiou_thresholds), dtype=np.float64)
        if not len(self.thresholds) or not ((self.thresholds > 0) & (self.thresholds <= 1)).all():
            raise ValueError(f"tIoU thresholds must be in (0, 1], got {list(tiou_thresholds)}")
        for i, ann in enumerate(self.annotations, start=1):
            labels = ann.extra.get("labels")
            if not isinstance(labels, list) or len(labels) != len(ann.relevant_windows):
                raise FormatError(
                    gt_path, i, "labels",
                    f"video {ann.vid!r} needs one class label per relevant window",
                    "Build TAD ground truth with momentkit.data.tad.to_moment_annotations",
                )  # fmt: skip
        self.classes = list(classes) if classes is not None else None
        self.count_empty = count_empty

    def compute(
        self, predictions: list[MomentPrediction], annotations: list[MomentAnnotation]
    ) -> Metrics:
        """mAP of ``predictions`` against the aligned per-video ``annotations``."""
        gt: dict[str, list[tuple[str, np.ndarray]]] = {}
        for ann in annotations:
            by_class: dict[str, list[list[float]]] = {}
            for window, label in zip(ann.relevant_windows, ann.extra["labels"]):
                by_class.setdefault(str(label), []).append(window)
            for label, windows in by_class.items():
                gt.setdefault(label, []).append((ann.vid, np.asarray(windows, dtype=np.float64)))
        dets: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {}
        for i, pred in enumerate(predictions, start=1):
            labels = pred.extra.get("pred_labels", [])
            if not isinstance(labels, list) or len(labels) != len(pred.pred_relevant_windows):
                raise self._error(
                    "pred_labels",
                    f"prediction {i} (video {pred.vid!r}) needs one class label per window",
                    "Write extra['pred_labels'] aligned with pred_relevant_windows",
                )
            by_class: dict[str, list[list[float]]] = {}
            for window, label in zip(pred.pred_relevant_windows, labels):
                by_class.setdefault(str(label), []).append(window)
            for label, rows in by_class.items():
                arr = np.asarray(rows, dtype=np.float64)
                dets.setdefault(label, []).append((pred.vid, arr[:, :2], arr[:, 2]))
        classes = self.classes if self.classes is not None else sorted(gt)
        scored = [c for c in classes if c in gt or self.count_empty]
        if not scored:
            raise FormatError(self.gt_path, None, "labels", "no class has ground truth to score")
        ap = np.stack(
            [
                class_average_precision(gt.get(c, []), dets.get(c, []), self.thresholds)
                for c in scored
            ]
        )  # (C, T)
        mean_ap = ap.mean(axis=0)
        keys = [f"{t:g}" for t in self.thresholds]
        brief = {"TAD-mAP": percent(float(mean_ap.mean()))}
        brief.update({f"TAD-mAP@{k}": percent(float(v)) for k, v in zip(keys, mean_ap)})
        return {
            "brief": brief,
            "mAP": {k: percent(float(v)) for k, v in zip(keys, mean_ap)},
            "per_class_AP": {
                c: {k: percent(float(v)) for k, v in zip(keys, row)} for c, row in zip(scored, ap)
            },
            "num_classes": len(scored),
            "num_videos": len(annotations),
            "num_instances": int(sum(len(a.relevant_windows) for a in annotations)),
        }


#: most tIoU thresholds one evaluation takes (ActivityNet's 0.5:0.05:0.95 is 10)
MAX_THRESHOLDS = 100

#: the accepted forms of a threshold list, for error messages
THRESHOLDS_FORMS = (
    "give start:step:stop (inclusive, e.g. 0.5:0.05:0.95) or a comma-separated list "
    "(e.g. 0.3,0.5,0.7) of tIoU thresholds in (0, 1]"
)


def parse_thresholds(text: str) -> tuple[float, ...]:
    """``"0.3:0.1:0.7"`` (start:step:stop, inclusive) or ``"0.5,0.75,0.95"`` -> thresholds.

    Raises:
        ValueError: saying what is wrong and the accepted forms (:data:`THRESHOLDS_FORMS`): not
            numbers, not 3 parts of a range, a step <= 0 or stop < start, a threshold that is
            NaN, infinite or outside (0, 1], no threshold, more than :data:`MAX_THRESHOLDS`.
    """
    text = text.strip()

    def number(part: str) -> float:
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not a number; {THRESHOLDS_FORMS}") from None
        if not math.isfinite(value):
            raise ValueError(f"{part.strip()!r} is not a finite number; {THRESHOLDS_FORMS}")
        return value

    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"expected start:step:stop, got {text!r}; {THRESHOLDS_FORMS}")
        start, step, stop = (number(p) for p in parts)
        if step <= 0 or stop < start:
            raise ValueError(
                f"expected start <= stop and step > 0, got {text!r}; {THRESHOLDS_FORMS}"
            )
        count = int(round((stop - start) / step)) + 1
        if count > MAX_THRESHOLDS:
            raise ValueError(f"{text!r} gives {count} thresholds, more than {MAX_THRESHOLDS}")
        values = tuple(round(start + i * step, 6) for i in range(count))
    else:
        values = tuple(number(p) for p in text.split(",") if p.strip())
    if not values:
        raise ValueError(f"no threshold in {text!r}; {THRESHOLDS_FORMS}")
    if len(values) > MAX_THRESHOLDS:
        raise ValueError(f"{len(values)} thresholds, more than {MAX_THRESHOLDS}")
    bad = [v for v in values if not 0 < v <= 1]
    if bad:
        raise ValueError(f"{bad[0]:g} is outside (0, 1] (from {text!r}); {THRESHOLDS_FORMS}")
    return values


#: tIoU thresholds by dataset name (UniMD's evaluation of Charades uses 0.3:0.1:0.7)
DEFAULT_TIOU = {
    "activitynet": ACTIVITYNET_TIOU,
    "thumos14": THUMOS_TIOU,
    "charades": THUMOS_TIOU,
    "charades_sta": THUMOS_TIOU,
    "synth": THUMOS_TIOU,
}


__all__ = [
    "ACTIVITYNET_TIOU",
    "DEFAULT_TIOU",
    "TADEvaluator",
    "THUMOS_TIOU",
    "class_average_precision",
    "interpolated_ap",
    "match_detections",
    "parse_thresholds",
]
