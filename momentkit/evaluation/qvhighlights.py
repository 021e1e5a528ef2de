"""The official QVHighlights metrics (Moment-DETR's ``standalone_eval``), vectorised.

Moment retrieval (MR), for the ``full`` split and for queries binned by ground-truth window
length (``short`` (0, 10] s, ``middle`` (10, 30] s, ``long`` (30, 150] s; a query falls in a
bin if one of its windows does, and only those windows are kept):

- ``MR-mAP``: ActivityNet-style detection AP per query at IoU 0.5:0.05:0.95 over the **first 10
  listed** windows (truncated before sorting by score; equal scores keep their listed order),
  averaged over queries, plus the ``average`` over thresholds;
- ``MR-R1``: whether the **first listed** window reaches the IoU threshold with the ground-truth
  window it overlaps most.

Highlight detection (HL), with clips of ``clip_len`` (2) seconds, ``int(duration / clip_len)``
clips per video and a clip positive for an annotator when its score is at least 2 (``Fair``),
3 (``Good``) or 4 (``VeryGood``):

- ``HL-mAP``: ranking AP of the predicted clip scores (missing scores count as 0, extra ones are
  dropped), per query and annotator, averaged;
- ``HL-Hit1``: whether the top-scored clip (first on ties) is positive for any annotator.

Windows are used as given (no clipping to the video). Every value is a percentage formatted to
2 decimals exactly as the official code does, so :func:`eval_submission` returns the very dict
the official ``eval_submission`` returns (checked on the official sample predictions).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from momentkit.data.records import (
    MomentAnnotation,
    MomentPrediction,
    check_clip_ids,
    check_clip_len,
)
from momentkit.data.records import num_clips as clip_count
from momentkit.evaluation.average_precision import (
    cross_iou,
    detection_ap,
    paired_hull_iou,
    ranking_ap,
)
from momentkit.evaluation.base import (
    EVALUATORS,
    AnnotationLike,
    Evaluator,
    Metrics,
    PredictionLike,
    percent,
)
from momentkit.utils.errors import FormatError

#: IoU thresholds 0.5:0.05:0.95, formatted as the official code formats them
IOU_THRESHOLDS: tuple[float, ...] = tuple(float(f"{t:.2f}") for t in np.linspace(0.5, 0.95, 10))
#: ground-truth window length bins, ``(min, max]`` seconds
LENGTH_BINS: dict[str, tuple[float, float]] = {
    "short": (0, 10),
    "middle": (10, 30),
    "long": (30, 150),
}
#: only the first windows of each prediction count for mAP
MAX_PRED_WINDOWS = 10
#: minimum saliency score (0-4) of a positive clip, by level name
SALIENCY_LEVELS: dict[str, int] = {"Fair": 2, "Good": 3, "VeryGood": 4}


def _pad_windows(rows: Sequence[Sequence[Sequence[float]]], width: int) -> np.ndarray:
    """``(Q, K, width)`` float64 array of ragged window lists, zero-padded."""
    k = max((len(r) for r in rows), default=0)
    out = np.zeros((len(rows), k, width))
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = r
    return out


def _valid(lengths: Sequence[int], width: int) -> np.ndarray:
    return np.arange(width)[None, :] < np.asarray(lengths, dtype=np.int64)[:, None]


def _moment_retrieval_bin(
    preds: np.ndarray, pred_valid: np.ndarray, gt_windows: list[list[list[float]]]
) -> dict[str, dict[str, float]]:
    """``MR-mAP`` and ``MR-R1`` of the queries whose ground truth is ``gt_windows``.

    Args:
        preds: ``(Q, P, 3)`` first ``MAX_PRED_WINDOWS`` predicted ``[start, end, score]``.
        pred_valid: ``(Q, P)`` bool.
        gt_windows: ``Q`` non-empty lists of ``[start, end]``.
    """
    if not gt_windows:  # an empty bin: the official code fails, we report NaN
        nan = float("nan")
        mr_map = {str(t): nan for t in IOU_THRESHOLDS}
        return {
            "MR-mAP": {**mr_map, "average": nan},
            "MR-R1": {str(t): nan for t in IOU_THRESHOLDS},
        }
    thresholds = np.asarray(IOU_THRESHOLDS)
    gts = _pad_windows(gt_windows, 2)
    gt_valid = _valid([len(w) for w in gt_windows], gts.shape[1])
    ap = detection_ap(preds[..., :2], preds[..., 2], pred_valid, gts, gt_valid, thresholds)
    ap_thds = ap.mean(0)
    mean_ap = np.mean(ap_thds)
    mr_map = {str(t): percent(v) for t, v in zip(IOU_THRESHOLDS, ap_thds)}
    mr_map["average"] = percent(mean_ap)

    # R@1: the first listed window against the ground-truth window it overlaps most
    first = preds[:, 0, :2]
    iou = cross_iou(first[:, None, :], gts)[:, 0, :]
    iou = np.where(gt_valid, iou, -np.inf)
    best = np.argmax(iou, axis=-1)
    matched = gts[np.arange(len(gts)), best]
    r1_iou = paired_hull_iou(first, matched)
    mr_r1 = {str(t): percent(np.mean(r1_iou >= t)) for t in IOU_THRESHOLDS}
    return {"MR-mAP": mr_map, "MR-R1": mr_r1}


def _bin_windows(
    annotations: Sequence[MomentAnnotation], length_range: tuple[float, float]
) -> list[list[list[float]]]:
    """The ground-truth windows of each query whose length is in ``(min, max]``."""
    lo, hi = length_range
    return [[w for w in a.relevant_windows if lo < w[1] - w[0] <= hi] for a in annotations]


def length_bin_counts(annotations: Sequence[MomentAnnotation]) -> dict[str, int]:
    """The number of queries in each length bin (``short``/``middle``/``long``) and ``full``:
    a bin with 0 queries gets NaN metrics."""
    counts = {
        name: sum(1 for w in _bin_windows(annotations, length_range) if w)
        for name, length_range in LENGTH_BINS.items()
    }
    return {**counts, "full": len(annotations)}


def eval_moment_retrieval(
    predictions: Sequence[MomentPrediction],
    annotations: Sequence[MomentAnnotation],
    verbose: bool = False,
) -> dict[str, dict[str, dict[str, float]]]:
    """MR metrics for ``short``/``middle``/``long``/``full``; inputs aligned one-to-one.

    A bin without queries gets NaN metrics (the official code fails on it).
    """
    preds = _pad_windows([p.pred_relevant_windows[:MAX_PRED_WINDOWS] for p in predictions], 3)
    pred_valid = _valid(
        [min(len(p.pred_relevant_windows), MAX_PRED_WINDOWS) for p in predictions], preds.shape[1]
    )
    out: dict[str, dict[str, dict[str, float]]] = {}
    bins: list[tuple[str, tuple[float, float] | None]] = [*LENGTH_BINS.items(), ("full", None)]
    for name, length_range in bins:
        start = time.perf_counter()
        if length_range is None:
            keep = np.ones(len(annotations), dtype=bool)
            gt_windows = [a.relevant_windows for a in annotations]
        else:
            in_bin = _bin_windows(annotations, length_range)
            keep = np.array([bool(w) for w in in_bin], dtype=bool)
            gt_windows = [w for w in in_bin if w]
        out[name] = _moment_retrieval_bin(preds[keep], pred_valid[keep], gt_windows)
        if verbose:
            n, total = int(keep.sum()), len(annotations)
            print(
                f"[MR] {name}: {n}/{total} = {100 * n / total:.2f}% queries, "
                f"{time.perf_counter() - start:.3f} s"
            )
    return out


#: most bytes the dense per-clip ground truth of one evaluation may take (8 GiB)
MAX_SALIENCY_BYTES = 8 << 30


def _check_size(
    annotations: Sequence[MomentAnnotation],
    num_clips: Sequence[int],
    num_a: int,
    clip_len: float,
    gt_path: str | Path | None,
) -> None:
    """Refuse ground truth whose dense ``(Q, A, max clips)`` scores would not fit in memory."""
    if not num_clips:
        return
    longest = max(range(len(num_clips)), key=num_clips.__getitem__)
    # float64 ground truth, its 3 binarised levels and the scores: about 5 such arrays
    size = 5 * 8 * len(num_clips) * num_a * num_clips[longest]
    if size > MAX_SALIENCY_BYTES:
        ann = annotations[longest]
        file, line = ann.source
        raise FormatError(
            file or gt_path,
            line,
            "duration",
            f"qid {ann.qid!r}: a {ann.duration} s video in {clip_len} s clips has "
            f"{num_clips[longest]} clips; scoring {len(num_clips)} queries at that length needs "
            f"{size / 2**30:.0f} GiB",
            "Check the duration (seconds) and the clip length, or score long videos apart",
        )


def _ground_truth_saliency(
    annotations: Sequence[MomentAnnotation], clip_len: float, gt_path: str | Path | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-clip annotator scores ``(Q, A, N)`` (0 for unannotated clips), clip counts ``(Q,)``."""
    num_annotators = {len(a.saliency_scores[0]) for a in annotations if a.saliency_scores}
    if len(num_annotators) > 1:
        raise FormatError(
            gt_path,
            None,
            "saliency_scores",
            f"rows disagree on the number of annotators ({sorted(num_annotators)})",
            "Give every clip the same number of annotator scores",
        )
    num_a = num_annotators.pop() if num_annotators else 1
    clip_len = check_clip_len(clip_len)
    num_clips = [clip_count(a.duration, clip_len) for a in annotations]
    _check_size(annotations, num_clips, num_a, clip_len, gt_path)
    full = np.zeros((len(annotations), num_a, max(num_clips, default=0)))
    for i, ann in enumerate(annotations):
        if not ann.relevant_clip_ids:
            raise FormatError(
                gt_path,
                None,
                "saliency_scores",
                f"qid {ann.qid!r} has no saliency annotation",
                "Highlight metrics need relevant_clip_ids and saliency_scores; drop "
                "pred_saliency_scores from the predictions to evaluate moments only",
            )
        check_clip_ids([ann], clip_len, gt_path, partial_last=False)  # the official count
        if any(len(row) != num_a for row in ann.saliency_scores):
            raise FormatError(
                gt_path,
                None,
                "saliency_scores",
                f"qid {ann.qid!r}: expected {num_a} annotator scores per clip",
            )
        full[i, :, ann.relevant_clip_ids] = np.asarray(ann.saliency_scores, dtype=np.float64)
    return full, np.asarray(num_clips, dtype=np.int64)


def eval_highlight(
    predictions: Sequence[MomentPrediction],
    annotations: Sequence[MomentAnnotation],
    clip_len: float = 2.0,
    verbose: bool = False,
    gt_path: str | Path | None = None,
) -> dict[str, dict[str, float]]:
    """``HL-min-{Fair,Good,VeryGood}`` -> ``{"HL-mAP", "HL-Hit1"}``; inputs aligned one-to-one."""
    start = time.perf_counter()
    gt, num_clips = _ground_truth_saliency(annotations, clip_len, gt_path)
    num_q, num_a, width = gt.shape
    valid = _valid(num_clips, width)
    scores = np.zeros((num_q, width))
    longest = max(len(p.pred_saliency_scores) for p in predictions)
    all_scores = np.full((num_q, longest), -np.inf)
    for i, (p, n) in enumerate(zip(predictions, num_clips)):
        s = p.pred_saliency_scores[:n]
        scores[i, : len(s)] = s
        all_scores[i, : len(p.pred_saliency_scores)] = p.pred_saliency_scores
    # Hit@1 looks at the top clip among all predicted scores, first on ties
    top = np.argmax(all_scores, axis=-1)
    top_in_video = top < num_clips
    top_gt = gt[np.arange(num_q), :, np.minimum(top, width - 1)]  # (Q, A)

    levels = list(SALIENCY_LEVELS.items())
    labels = np.concatenate([(gt >= lvl).astype(np.float64) for _, lvl in levels], axis=1)
    ap = ranking_ap(labels, scores, valid)  # (Q, len(levels) * A)
    out: dict[str, dict[str, float]] = {}
    for k, (name, lvl) in enumerate(levels):
        hit = np.where(top_in_video[:, None], top_gt >= lvl, False).astype(np.float64)
        level_ap = np.ascontiguousarray(ap[:, k * num_a : (k + 1) * num_a])
        out[f"HL-min-{name}"] = {
            "HL-mAP": percent(np.mean(level_ap)),
            "HL-Hit1": percent(np.mean(np.max(hit, 1))),
        }
    if verbose:
        print(f"[HL] {num_q} queries, {time.perf_counter() - start:.3f} s")
    return out


@EVALUATORS.register("qvhighlights")
class QVHighlightsEvaluator(Evaluator):
    """The official QVHighlights metrics (see the module docstring).

    MR metrics are computed when the first prediction has windows, HL metrics when it has clip
    scores, as in the official code; then every prediction must have them. After
    :meth:`evaluate`, :attr:`num_queries` holds the number of queries behind each group of the
    metrics dict (``short``/``middle``/``long``/``full``, ``HL-min-*``): 0 for a length bin
    without queries, whose metrics are NaN.

    Args:
        annotations: ground truth in the QVHighlights schema.
        clip_len: seconds per clip for the saliency scores.
        match_number: require predictions for exactly the ground-truth qids.
        verbose: print the size and time of each part.
        gt_path: where the annotations come from, for error messages.
    """

    def __init__(
        self,
        annotations: Iterable[AnnotationLike],
        *,
        clip_len: float = 2.0,
        match_number: bool = True,
        verbose: bool = False,
        gt_path: str | Path | None = None,
    ) -> None:
        super().__init__(annotations, match_number=match_number, gt_path=gt_path)
        self.clip_len = check_clip_len(clip_len)
        self.verbose = verbose

    def _check(
        self, predictions: list[MomentPrediction], annotations: list[MomentAnnotation], mr: bool
    ) -> None:
        field = "pred_relevant_windows" if mr else "pred_saliency_scores"
        for p, a in zip(predictions, annotations):
            if not getattr(p, field):
                raise self._error(
                    field,
                    f"qid {p.qid!r} has no {field} while the first prediction has some",
                    "Give every query at least one window (or clip score), or none at all",
                )
            if mr and not a.relevant_windows:
                raise FormatError(
                    self.gt_path,
                    None,
                    "relevant_windows",
                    f"qid {a.qid!r} has no ground-truth window",
                    "Moment retrieval needs at least one window per query",
                )

    def compute(
        self, predictions: list[MomentPrediction], annotations: list[MomentAnnotation]
    ) -> Metrics:
        """The official metrics dict: ``brief`` first, then the other entries by name."""
        details: dict[str, dict] = {}
        brief: dict[str, float] = {}
        if predictions[0].pred_relevant_windows:
            self._check(predictions, annotations, mr=True)
            mr = eval_moment_retrieval(predictions, annotations, self.verbose)
            details.update(mr)
            self.num_queries.update(length_bin_counts(annotations))
            mr_brief = {
                "MR-full-mAP": mr["full"]["MR-mAP"]["average"],
                "MR-full-mAP@0.5": mr["full"]["MR-mAP"]["0.5"],
                "MR-full-mAP@0.75": mr["full"]["MR-mAP"]["0.75"],
                "MR-short-mAP": mr["short"]["MR-mAP"]["average"],
                "MR-middle-mAP": mr["middle"]["MR-mAP"]["average"],
                "MR-long-mAP": mr["long"]["MR-mAP"]["average"],
                "MR-full-R1@0.5": mr["full"]["MR-R1"]["0.5"],
                "MR-full-R1@0.7": mr["full"]["MR-R1"]["0.7"],
            }
            brief.update(sorted(mr_brief.items()))
        if predictions[0].pred_saliency_scores:
            self._check(predictions, annotations, mr=False)
            hl = eval_highlight(predictions, annotations, self.clip_len, self.verbose, self.gt_path)
            details.update(hl)
            self.num_queries.update((name, len(annotations)) for name in hl)
            for name, values in hl.items():
                for key, value in values.items():
                    brief[f"{name}-{key.split('-')[1]}"] = value
        return {"brief": brief, **dict(sorted(details.items()))}


def eval_submission(
    submission: Iterable[PredictionLike],
    ground_truth: Iterable[AnnotationLike],
    verbose: bool = False,
    match_number: bool = True,
) -> Metrics:
    """Drop-in for the official ``eval_submission``: same arguments, same returned dict.

    Args:
        submission: prediction rows (dicts in the official format or ``MomentPrediction``).
        ground_truth: annotation rows (dicts or ``MomentAnnotation``).
        verbose: print the size and time of each part.
        match_number: require the same qids on both sides (else score the shared ones).
    """
    evaluator = QVHighlightsEvaluator(ground_truth, match_number=match_number, verbose=verbose)
    evaluator.process(submission)
    return evaluator.evaluate()
