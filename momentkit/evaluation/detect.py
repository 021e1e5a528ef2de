"""Guess which benchmark's metrics fit a ground-truth file (``momentkit evaluate`` default).

The rule, first match wins:

1. a per-clip ``label`` field (raw TVSum / YouTube Highlights rows), or ``saliency_scores``
   with 20 annotators (TVSum) or 1 annotator (YouTube Highlights): ``tvsum`` when rows have
   several annotator columns, else ``youtube_highlights``;
2. ``saliency_scores`` with any other number of annotators (QVHighlights has 3): ``qvhighlights``;
3. ``relevant_windows`` only: ``grounding`` (Charades-STA, TACoS and ActivityNet Captions share
   these metrics).

Anything else is an error asking for ``--dataset``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from momentkit.data.records import MomentAnnotation
from momentkit.utils.errors import FormatError

#: annotator count of TVSum and YouTube Highlights rows mapped onto saliency_scores
TVSUM_ANNOTATORS = 20
YOUTUBE_ANNOTATORS = 1


def _label_width(label: object) -> int:
    if isinstance(label, list) and label and isinstance(label[0], list):
        return len(label[0])
    return 1


def detect_dataset(annotations: Sequence[MomentAnnotation], path: str | Path | None = None) -> str:
    """The evaluator name (an ``EVALUATORS`` key) for ``annotations``; see the module rule."""
    if not annotations:
        raise FormatError(path, None, None, "the ground-truth file holds no rows")
    first = annotations[0]
    if "label" in first.extra:
        width = _label_width(first.extra["label"])
        return "tvsum" if width > 1 else "youtube_highlights"
    with_saliency = next((a for a in annotations if a.saliency_scores), None)
    if with_saliency is not None:
        width = len(with_saliency.saliency_scores[0])
        if width == TVSUM_ANNOTATORS:
            return "tvsum"
        if width == YOUTUBE_ANNOTATORS:
            return "youtube_highlights"
        return "qvhighlights"
    if any(a.relevant_windows for a in annotations):
        return "grounding"
    raise FormatError(
        path,
        None,
        None,
        "cannot tell the benchmark: rows have no relevant_windows, saliency_scores or label",
        "Pass --dataset explicitly",
    )
