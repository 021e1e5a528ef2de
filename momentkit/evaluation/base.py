"""The evaluator protocol (detectron2 style) and the ``EVALUATORS`` registry.

An evaluator is built from the ground truth of a split, then fed predictions::

    evaluator = EVALUATORS.get("qvhighlights")(annotations)
    evaluator.reset()
    for batch_predictions in ...:
        evaluator.process(batch_predictions)
    metrics = evaluator.evaluate()   # {"brief": {...}, ...}

Predictions and annotations may be :class:`~momentkit.data.records.MomentPrediction` /
:class:`~momentkit.data.records.MomentAnnotation` records or plain JSON rows (dicts), which are
validated on the way in.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from momentkit.data.records import MomentAnnotation, MomentPrediction, Qid
from momentkit.utils.errors import FormatError
from momentkit.utils.registry import Registry

Metrics = dict[str, Any]
AnnotationLike = MomentAnnotation | dict[str, Any]
PredictionLike = MomentPrediction | dict[str, Any]


def as_annotations(
    rows: Iterable[AnnotationLike], path: str | Path | None = None
) -> list[MomentAnnotation]:
    """Validate ``rows`` into annotation records; errors name ``path`` and the row number."""
    out: list[MomentAnnotation] = []
    seen: dict[Qid, int] = {}
    for i, row in enumerate(rows, start=1):
        ann = row if isinstance(row, MomentAnnotation) else MomentAnnotation.from_dict(row, path, i)
        if ann.qid in seen:
            raise FormatError(
                path, i, "qid", f"duplicate qid {ann.qid!r} (first in row {seen[ann.qid]})"
            )
        seen[ann.qid] = i
        out.append(ann)
    return out


def as_predictions(
    rows: Iterable[PredictionLike], path: str | Path | None = None, start: int = 1
) -> list[MomentPrediction]:
    """Validate ``rows`` into prediction records; ``start`` is the number of the first row."""
    return [
        row if isinstance(row, MomentPrediction) else MomentPrediction.from_dict(row, path, i)
        for i, row in enumerate(rows, start=start)
    ]


def _examples(qids: Iterable[Qid], limit: int = 5) -> str:
    qids = sorted(qids, key=str)
    shown = ", ".join(repr(q) for q in qids[:limit])
    return shown + (f", ... ({len(qids)} in all)" if len(qids) > limit else "")


def match_qids(
    predictions: Sequence[MomentPrediction],
    annotations: Sequence[MomentAnnotation],
    match_number: bool = True,
    pred_path: str | Path | None = None,
    gt_path: str | Path | None = None,
) -> tuple[list[MomentPrediction], list[MomentAnnotation]]:
    """Pair predictions with ground truth by ``qid``.

    Args:
        match_number: if True (the official default) both files must hold the same qids;
            otherwise only the qids present in both are kept.

    Returns:
        ``(predictions, annotations)``: predictions in their own order (the order every metric
        is accumulated in, as in the official evaluator) and the annotation of each, aligned.

    Raises:
        FormatError: naming the files and some missing or unexpected qids.
    """
    gt_by_qid = {a.qid: a for a in annotations}
    pred_qids = [p.qid for p in predictions]
    seen: set[Qid] = set()
    for i, qid in enumerate(pred_qids, start=1):
        if qid in seen:
            raise FormatError(pred_path, i, "qid", f"duplicate qid {qid!r} in the predictions")
        seen.add(qid)
    missing = set(gt_by_qid) - seen
    extra = seen - set(gt_by_qid)
    if match_number and (missing or extra):
        problems = []
        if missing:
            problems.append(
                f"{len(missing)} ground-truth qid(s) of {gt_path or 'the ground truth'} have no "
                f"prediction: {_examples(missing)}"
            )
        if extra:
            problems.append(
                f"{len(extra)} predicted qid(s) are not in {gt_path or 'the ground truth'}: "
                f"{_examples(extra)}"
            )
        raise FormatError(
            pred_path,
            None,
            "qid",
            "; ".join(problems),
            "Predict every query of the split, or evaluate the shared queries only "
            "(match_number=False, `momentkit evaluate --subset`)",
        )
    kept = [p for p in predictions if p.qid in gt_by_qid]
    if not kept:
        raise FormatError(
            pred_path,
            None,
            "qid",
            f"no prediction matches a qid of {gt_path or 'the ground truth'}",
        )
    return kept, [gt_by_qid[p.qid] for p in kept]


def percent(x: float) -> float:
    """``x`` in [0, 1] as a percentage rounded to 2 decimals, the official way (NaN stays NaN)."""
    return float(f"{100 * x:.2f}")


def is_nan(x: Any) -> bool:
    """True for a float NaN (empty subsets give NaN metrics)."""
    return isinstance(x, float) and math.isnan(x)


def _json_value(x: Any) -> tuple[Any, bool]:
    """``x`` with every NaN/infinite float replaced by ``None``; whether any was."""
    if isinstance(x, float) and not math.isfinite(x):
        return None, True
    if isinstance(x, dict):
        items = {k: _json_value(v) for k, v in x.items()}
        return {k: v for k, (v, _) in items.items()}, any(u for _, u in items.values())
    if isinstance(x, (list, tuple)):
        values = [_json_value(v) for v in x]
        return [v for v, _ in values], any(u for _, u in values)
    return x, False


def metrics_json(metrics: Metrics, num_queries: dict[str, int] | None = None) -> Metrics:
    """``metrics`` as standard JSON data (what ``momentkit evaluate --out`` writes).

    An undefined metric (NaN: e.g. a QVHighlights length range without queries, where the
    official code fails) becomes ``null``: bare ``NaN`` is not JSON and strict parsers reject
    it. When any metric is ``null`` and ``num_queries`` (the evaluator's
    :attr:`Evaluator.num_queries`) is given, it is added as the ``"num_queries"`` entry, the
    number of queries behind each metric group (``0``: no query, hence no score). Metrics
    with no undefined value are returned unchanged (equal to ``metrics``), so the file of
    normal data is exactly the official evaluator's.
    """
    out, undefined = _json_value(metrics)
    if undefined and num_queries and "num_queries" not in out:
        out["num_queries"] = dict(num_queries)
    return out


class Evaluator(ABC):
    """Accumulates predictions for one split and computes its metrics.

    Args:
        annotations: the split's ground truth (records or JSON rows).
        match_number: require predictions for exactly the ground-truth qids (else score the
            shared qids only).
        gt_path: where the annotations come from, for error messages.
    """

    def __init__(
        self,
        annotations: Iterable[AnnotationLike],
        *,
        match_number: bool = True,
        gt_path: str | Path | None = None,
    ) -> None:
        self.gt_path = gt_path
        self.annotations = as_annotations(annotations, gt_path)
        self.match_number = match_number
        self._predictions: list[MomentPrediction] = []
        self._pred_path: str | Path | None = None
        #: the number of queries behind each metric group of the last :meth:`evaluate`
        #: (group name -> count; empty when the evaluator does not report them)
        self.num_queries: dict[str, int] = {}

    def reset(self) -> None:
        """Forget the predictions processed so far."""
        self._predictions = []
        self._pred_path = None

    def process(
        self, predictions: Iterable[PredictionLike], path: str | Path | None = None
    ) -> None:
        """Add a batch of predictions (records or JSON rows); ``path`` names them in errors."""
        if path is not None:
            self._pred_path = path
        start = len(self._predictions) + 1
        self._predictions.extend(as_predictions(predictions, path or self._pred_path, start))

    def evaluate(self) -> Metrics:
        """Metrics of everything processed since the last :meth:`reset`.

        Returns:
            a dict whose ``"brief"`` entry maps metric names to numbers (the table printed by
            ``momentkit evaluate``); other entries hold the details.
        """
        if not self._predictions:
            raise FormatError(self._pred_path, None, None, "no predictions to evaluate")
        preds, gts = match_qids(
            self._predictions, self.annotations, self.match_number, self._pred_path, self.gt_path
        )
        self.num_queries = {}
        return self.compute(preds, gts)

    @abstractmethod
    def compute(
        self, predictions: list[MomentPrediction], annotations: list[MomentAnnotation]
    ) -> Metrics:
        """Metrics of ``predictions`` against the aligned ``annotations`` (same length/order)."""

    def _error(self, field: str | None, problem: str, hint: str = "") -> FormatError:
        return FormatError(self._pred_path, None, field, problem, hint)


EvaluatorFactory = Callable[..., Evaluator]

#: name -> evaluator factory ``(annotations, **kwargs) -> Evaluator``
EVALUATORS: Registry[EvaluatorFactory] = Registry("evaluator")


def build_evaluator(name: str, annotations: Iterable[AnnotationLike], **kwargs: Any) -> Evaluator:
    """The evaluator registered as ``name`` for ``annotations``."""
    return EVALUATORS.get(name)(annotations, **kwargs)
