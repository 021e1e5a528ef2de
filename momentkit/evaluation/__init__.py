"""Evaluators as objects (detectron2 style) and the ``EVALUATORS`` registry.

- ``qvhighlights``: the official QVHighlights MR + HL metrics (:class:`QVHighlightsEvaluator`,
  :func:`eval_submission`, a vectorised drop-in for the official ``standalone_eval``);
- ``grounding`` (= ``charades_sta``, ``tacos``, ``activitynet``): R1/R5 at IoU 0.3/0.5/0.7 and
  mIoU (:class:`GroundingEvaluator`);
- ``tvsum``, ``youtube_highlights`` (and ``highlight``, which picks one of the two from the
  annotator count): highlight mAP per domain (:class:`HighlightEvaluator`).

See docs/evaluation.md for the exact conventions.
"""

from momentkit.evaluation.base import (
    EVALUATORS,
    Evaluator,
    Metrics,
    as_annotations,
    as_predictions,
    build_evaluator,
    match_qids,
    metrics_json,
)
from momentkit.evaluation.detect import detect_dataset
from momentkit.evaluation.grounding import GroundingEvaluator
from momentkit.evaluation.highlight import HighlightEvaluator
from momentkit.evaluation.qvhighlights import QVHighlightsEvaluator, eval_submission
from momentkit.evaluation.tad import TADEvaluator

__all__ = [
    "EVALUATORS",
    "Evaluator",
    "GroundingEvaluator",
    "HighlightEvaluator",
    "Metrics",
    "QVHighlightsEvaluator",
    "TADEvaluator",
    "as_annotations",
    "as_predictions",
    "build_evaluator",
    "detect_dataset",
    "eval_submission",
    "match_qids",
    "metrics_json",
]
