"""Video grounding metrics: Charades-STA, TACoS, ActivityNet Captions.

The convention of the literature (2D-TAN, Moment-DETR, UniVTG, Lighthouse):

- predictions are ranked by decreasing score (a stable sort: equal scores keep their listed
  order) and no NMS is applied here (it belongs to post-processing);
- the IoU of a predicted window is the usual ``inter / union`` against the ground-truth window
  it overlaps most (datasets with one window per query, the usual case, just use that window);
- ``MR-R{k}@{t}``: the percentage of queries for which one of the top-``k`` windows has IoU >= t;
- ``MR-mIoU``: the mean IoU of the top-1 window, in percent.

A query without predicted windows counts as a miss (IoU 0). Windows are used as given (no
clipping to the video). Values are percentages rounded to 2 decimals.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from momentkit.data.records import MomentAnnotation, MomentPrediction
from momentkit.evaluation.average_precision import cross_iou
from momentkit.evaluation.base import EVALUATORS, AnnotationLike, Evaluator, Metrics, percent
from momentkit.utils.errors import FormatError


def top_k_iou(
    predictions: Sequence[MomentPrediction], annotations: Sequence[MomentAnnotation], k: int
) -> np.ndarray:
    """IoU of each query's ``k`` best-scored windows with their closest ground-truth window.

    Returns:
        ``(Q, k)`` float64, 0 where a query has fewer than ``k`` windows.
    """
    num_q = len(predictions)
    num_g = max(len(a.relevant_windows) for a in annotations)
    preds = np.zeros((num_q, k, 2))
    pred_valid = np.zeros((num_q, k), dtype=bool)
    gts = np.zeros((num_q, num_g, 2))
    gt_valid = np.zeros((num_q, num_g), dtype=bool)
    for i, (p, a) in enumerate(zip(predictions, annotations)):
        windows = p.pred_relevant_windows
        if windows:
            scores = np.asarray([w[2] for w in windows], dtype=np.float64)
            order = np.argsort(-scores, kind="stable")[:k]
            preds[i, : len(order)] = np.asarray(windows, dtype=np.float64)[order, :2]
            pred_valid[i, : len(order)] = True
        gts[i, : len(a.relevant_windows)] = a.relevant_windows
        gt_valid[i, : len(a.relevant_windows)] = True
    iou = np.nan_to_num(cross_iou(preds, gts), nan=0.0)  # (Q, k, G)
    iou = np.where(gt_valid[:, None, :], iou, 0.0).max(axis=-1)
    return np.where(pred_valid, iou, 0.0)


@EVALUATORS.register("grounding")
class GroundingEvaluator(Evaluator):
    """Recall at top-k over IoU thresholds and mean IoU (see the module docstring).

    Args:
        annotations: ground truth with at least one ``relevant_windows`` entry per query.
        iou_thresholds: IoU thresholds of the recalls.
        top_k: the ``k`` of the recalls.
        match_number: require predictions for exactly the ground-truth qids.
        gt_path: where the annotations come from, for error messages.

    ``evaluate()`` returns ``{"brief": {"MR-R1@0.3": ..., "MR-R5@0.7": ..., "MR-mIoU": ...},
    "MR-R1": {"0.3": ...}, "MR-R5": {...}, "MR-mIoU": ..., "num_queries": Q}``.
    """

    def __init__(
        self,
        annotations: Iterable[AnnotationLike],
        *,
        iou_thresholds: Sequence[float] = (0.3, 0.5, 0.7),
        top_k: Sequence[int] = (1, 5),
        match_number: bool = True,
        gt_path: str | Path | None = None,
    ) -> None:
        super().__init__(annotations, match_number=match_number, gt_path=gt_path)
        self.iou_thresholds = tuple(float(t) for t in iou_thresholds)
        self.top_k = tuple(int(k) for k in top_k)
        if not self.top_k or min(self.top_k) < 1:
            raise ValueError(f"top_k must hold positive integers, got {top_k}")

    def compute(
        self, predictions: list[MomentPrediction], annotations: list[MomentAnnotation]
    ) -> Metrics:
        """Recalls and mean IoU of ``predictions`` against the aligned ``annotations``."""
        for a in annotations:
            if not a.relevant_windows:
                raise FormatError(
                    self.gt_path,
                    None,
                    "relevant_windows",
                    f"qid {a.qid!r} has no ground-truth window",
                    "Grounding metrics need at least one window per query",
                )
        iou = top_k_iou(predictions, annotations, max(self.top_k))
        out: Metrics = {"brief": {}}
        for k in self.top_k:
            hit_iou = iou[:, :k].max(axis=-1)
            recalls = {f"{t:g}": percent(np.mean(hit_iou >= t)) for t in self.iou_thresholds}
            out[f"MR-R{k}"] = recalls
            out["brief"].update({f"MR-R{k}@{t}": v for t, v in recalls.items()})
        out["MR-mIoU"] = out["brief"]["MR-mIoU"] = percent(np.mean(iou[:, 0]))
        out["num_queries"] = len(predictions)
        return out


for _name in ("charades_sta", "tacos", "activitynet"):
    EVALUATORS.register(_name)(GroundingEvaluator)
