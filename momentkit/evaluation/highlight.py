"""Highlight-detection mAP for TVSum and YouTube Highlights (the UMT / UniVTG / Lighthouse way).

Both benchmarks score a video by ranking its clips by predicted saliency (decreasing; equal
scores keep clip order) and computing a trapezoidal average precision
(:func:`~momentkit.evaluation.average_precision.trapezoid_ap`):

- **TVSum** (``top_k=5``, ``binarize="median"``): for each of the 20 annotators a clip is positive
  when its score is above that annotator's median score over the video (the lower median, as
  ``torch.median``); AP is taken over the 5 top-ranked clips only, relative to the positives
  among them (0 if none). A video's AP is the mean over annotators.
- **YouTube Highlights** (``top_k=None``, ``binarize="positive"``): the single binary label per
  clip; AP over the whole ranking (0 for a video without positive clip).

The mAP of a domain is the mean over its videos; ``HL-mAP`` is the mean over domains (the
papers train and test one model per domain and report the average). Only the first
``min(#predicted scores, #labelled clips)`` clips are ranked, as in UMT where the scores come
from the (possibly shorter) feature sequence.

Labels come from ``saliency_scores`` (clips x annotators, as the dataset loaders map them) or,
when that is empty, from the raw ``label`` field kept in ``MomentAnnotation.extra``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from momentkit.data.records import MomentAnnotation, MomentPrediction
from momentkit.evaluation.average_precision import trapezoid_ap
from momentkit.evaluation.base import (
    EVALUATORS,
    AnnotationLike,
    Evaluator,
    Metrics,
    as_annotations,
    percent,
)
from momentkit.utils.errors import FormatError

Binarize = Literal["median", "positive"]


def clip_labels(annotation: MomentAnnotation, gt_path: str | Path | None = None) -> np.ndarray:
    """``(num_clips, num_annotators)`` float64 per-clip scores of one video.

    Raises:
        FormatError: if the row has neither ``saliency_scores`` nor a ``label`` field.
    """
    if annotation.saliency_scores:
        ids = annotation.relevant_clip_ids
        scores = np.asarray(annotation.saliency_scores, dtype=np.float64)
        labels = np.zeros((max(ids) + 1, scores.shape[1]))
        labels[ids] = scores
        return labels
    raw = annotation.extra.get("label")
    if raw is None:
        raise FormatError(
            gt_path,
            None,
            "label",
            f"qid {annotation.qid!r} has neither saliency_scores nor a per-clip label",
            "Highlight ground truth needs one row of scores per clip",
        )
    try:
        labels = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        labels = np.empty(0)
    if labels.ndim == 1 and labels.size:
        labels = labels[:, None]
    if labels.ndim != 2 or labels.shape[0] == 0 or not np.isfinite(labels).all():
        raise FormatError(
            gt_path,
            None,
            "label",
            f"qid {annotation.qid!r}: expected a clips x annotators table of numbers",
        )
    return labels


def binarize_labels(labels: np.ndarray, rule: Binarize) -> np.ndarray:
    """0/1 relevance per clip and annotator.

    Args:
        labels: ``(N, A)`` scores.
        rule: ``"median"``: above the annotator's lower median; ``"positive"``: above 0.
    """
    if rule == "median":
        lower_median = np.sort(labels, axis=0)[(labels.shape[0] - 1) // 2]
        return (labels > lower_median[None, :]).astype(np.float64)
    if rule == "positive":
        return (labels > 0).astype(np.float64)
    raise ValueError(f"unknown binarize rule {rule!r}; use 'median' or 'positive'")


def video_ap(scores: np.ndarray, labels: np.ndarray, top_k: int | None, rule: Binarize) -> float:
    """AP of one video, averaged over annotators.

    Args:
        scores: ``(S,)`` predicted saliency per clip.
        labels: ``(N, A)`` ground-truth scores per clip and annotator.
        top_k: rank only the best ``top_k`` clips (None: all).
        rule: how scores become binary (see :func:`binarize_labels`).
    """
    binary = binarize_labels(labels, rule)
    n = min(len(scores), len(binary))
    order = np.argsort(-np.asarray(scores[:n], dtype=np.float64), kind="stable")
    if top_k is not None:
        order = order[:top_k]
    ranked = binary[order].T  # (A, K)
    return float(trapezoid_ap(ranked, np.ones_like(ranked, dtype=bool)).mean())


class HighlightEvaluator(Evaluator):
    """Per-domain and mean highlight mAP (see the module docstring).

    Args:
        annotations: one row per video with per-clip labels and a ``domain``.
        top_k: rank only the best ``top_k`` clips of each video (None: all).
        binarize: ``"median"`` (TVSum) or ``"positive"`` (YouTube Highlights).
        match_number: require predictions for exactly the ground-truth qids.
        gt_path: where the annotations come from, for error messages.

    ``evaluate()`` returns ``{"brief": {"HL-mAP": ..., "HL-mAP-<domain>": ...},
    "per_domain": {domain: {"HL-mAP": ..., "num_videos": n}}, "HL-mAP": ...}``; a video without
    domain counts in the domain ``"all"``.
    """

    def __init__(
        self,
        annotations: Iterable[AnnotationLike],
        *,
        top_k: int | None = None,
        binarize: Binarize = "positive",
        match_number: bool = True,
        gt_path: str | Path | None = None,
    ) -> None:
        super().__init__(annotations, match_number=match_number, gt_path=gt_path)
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be positive or None, got {top_k}")
        binarize_labels(np.zeros((1, 1)), binarize)  # validates the rule
        self.top_k = top_k
        self.binarize: Binarize = binarize

    def compute(
        self, predictions: list[MomentPrediction], annotations: list[MomentAnnotation]
    ) -> Metrics:
        """Per-domain and mean mAP of ``predictions`` against the aligned ``annotations``."""
        per_domain: dict[str, list[float]] = {}
        for p, a in zip(predictions, annotations):
            if not p.pred_saliency_scores:
                raise self._error(
                    "pred_saliency_scores",
                    f"qid {p.qid!r} has no clip scores",
                    "Highlight detection needs one score per clip",
                )
            labels = clip_labels(a, self.gt_path)
            scores = np.asarray(p.pred_saliency_scores, dtype=np.float64)
            ap = video_ap(scores, labels, self.top_k, self.binarize)
            per_domain.setdefault(a.domain or "all", []).append(ap)
        domains = {name: float(np.mean(aps)) for name, aps in sorted(per_domain.items())}
        mean_ap = percent(float(np.mean(list(domains.values()))))
        brief = {"HL-mAP": mean_ap}
        brief.update({f"HL-mAP-{name}": percent(v) for name, v in domains.items()})
        details: dict[str, Any] = {
            name: {"HL-mAP": percent(v), "num_videos": len(per_domain[name])}
            for name, v in domains.items()
        }
        return {"brief": brief, "per_domain": details, "HL-mAP": mean_ap}


@EVALUATORS.register("tvsum")
def tvsum_evaluator(annotations: Iterable[AnnotationLike], **kwargs: Any) -> HighlightEvaluator:
    """TVSum: top-5 mAP, clips above each annotator's median are positive."""
    return HighlightEvaluator(annotations, **{"top_k": 5, "binarize": "median", **kwargs})


@EVALUATORS.register("youtube_highlights")
def youtube_highlights_evaluator(
    annotations: Iterable[AnnotationLike], **kwargs: Any
) -> HighlightEvaluator:
    """YouTube Highlights: mAP over the whole ranking of binary labels."""
    return HighlightEvaluator(annotations, **{"top_k": None, "binarize": "positive", **kwargs})


@EVALUATORS.register("highlight")
def highlight_evaluator(annotations: Iterable[AnnotationLike], **kwargs: Any) -> HighlightEvaluator:
    """TVSum conventions when the rows have several annotators, YouTube Highlights otherwise."""
    rows = as_annotations(annotations, kwargs.get("gt_path"))
    several = bool(rows) and clip_labels(rows[0], kwargs.get("gt_path")).shape[1] > 1
    factory = tvsum_evaluator if several else youtube_highlights_evaluator
    return factory(rows, **kwargs)
