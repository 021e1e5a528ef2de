"""Relevance in [0, 1] that means the same for every video, query and predictor.

A predictor's raw moment scores have no fixed scale: the zero-shot contrast is ~1e-4 for one
query and 0.09 for another, a DETR's foreground probability is a softmax within one video, and
every predictor proposes moments even for a query the video does not show. A threshold on them
means nothing. momentkit therefore calibrates each moment against a *null*: the same predictor's
answer, on the same clips, to a bank of reference captions of everyday scenes
(``reference_captions.txt``, 122 captions), most of which the video does not show::

    s_q = mean saliency of the query over the moment's clips
    s_b = mean saliency of reference caption b over the same clips      (b = 1..B)
    relevance = (#{b: s_b < s_q} + 0.5 #{b: s_b = s_q}) / B

(``s_b = s_q`` within float32 rounding, 1e-5 of the largest saliency, so that a query's
relevance does not depend on which other queries share its batch)

i.e. the share of unrelated captions the predictor finds less relevant to this stretch of video
than the query. It is a rank, so its scale does not depend on the predictor, the video or the
query: 0.5 is "as relevant as a typical unrelated caption", 0.95 "more relevant than 95 % of
them". A query the video does not show ("a dog" in a kitchen) sits among the reference
captions (relevance ~0.1-0.6); a shown one above them. ``--min-score`` keeps moments at or
above a relevance; a query left with none is reported as having no confident match. How often
that rejects queries with no relevant moment, and what it costs in recall, is measured on the
synthetic benchmark (``momentkit bench calibration``; README "Relevance you can threshold").

The reference saliency is computed once per video and predictor (one batch of ``B`` captions)
and reused for every query. Moments are also de-duplicated here: a moment overlapping a better
one with IoU >= 0.5, or nested in it (or containing it) for >= 80 % of the shorter one, is
dropped, so ranks 2-4 are not sub-spans of rank 1.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import replace
from importlib import resources

import numpy as np

from momentkit.inference.results import Moment, QueryResult
from momentkit.inference.similarity import temporal_nms

#: saliencies closer than this fraction of the largest one count as ties (float32 rounding)
TIE_RTOL = 1e-5
#: de-duplication: IoU and nesting (overlap / shorter span) at which a worse moment is dropped
DEDUP_IOU = 0.5
DEDUP_CONTAINMENT = 0.8


@functools.cache
def reference_captions() -> tuple[str, ...]:
    """The bank of reference captions shipped with momentkit (comments and blanks skipped)."""
    text = resources.files("momentkit.inference").joinpath("reference_captions.txt").read_text()
    return tuple(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )


def clip_range(clip_len: float, num_clips: int, start: float, end: float) -> tuple[int, int]:
    """Clips ``[first, last)`` that ``[start, end]`` overlaps (at least one clip)."""
    first = min(max(int(math.floor(start / clip_len + 1e-6)), 0), num_clips - 1)
    last = min(max(int(math.ceil(end / clip_len - 1e-6)), first + 1), num_clips)
    return first, last


def bank_relevance(
    query_saliency: np.ndarray,
    reference_saliency: np.ndarray,
    spans: np.ndarray,
    clip_len: float,
) -> np.ndarray:
    """Relevance of moments of one query (see the module doc).

    Args:
        query_saliency: ``(T,)`` the query's per-clip saliency.
        reference_saliency: ``(B, T)`` the reference captions' saliency on the same clips.
        spans: ``(M, 2)`` moments ``[start, end]`` in seconds.
        clip_len: seconds per clip.

    Returns:
        ``(M,)`` float64 relevance in [0, 1].
    """
    q = np.asarray(query_saliency, dtype=np.float64)
    ref = np.asarray(reference_saliency, dtype=np.float64)
    n = min(len(q), ref.shape[1])
    # saliencies within float32 rounding of each other are ties: a query's saliency moves by
    # ~1e-9 with the other queries of its batch, which must not change its relevance
    tol = TIE_RTOL * max(float(np.abs(ref).max(initial=0.0)), float(np.abs(q).max(initial=0.0)))
    out = np.zeros(len(spans))
    for i, (start, end) in enumerate(np.asarray(spans, dtype=np.float64).reshape(-1, 2)):
        first, last = clip_range(clip_len, n, float(start), float(end))
        s_q = q[first:last].mean()
        s_b = ref[:, first:last].mean(1)
        tied = np.abs(s_b - s_q) <= tol
        out[i] = (np.sum((s_b < s_q) & ~tied) + 0.5 * np.sum(tied)) / len(s_b)
    return out


def deduplicate(
    moments: Sequence[Moment], iou: float = DEDUP_IOU, containment: float = DEDUP_CONTAINMENT
) -> list[Moment]:
    """``moments`` (best first) without those overlapping or nested in a better one."""
    if not moments:
        return []
    rows = np.array([[m.start, m.end, m.score] for m in moments], dtype=np.float64)
    return [moments[i] for i in temporal_nms(rows, iou, containment)]


def calibrate_result(
    result: QueryResult,
    reference_saliency: np.ndarray | None,
    *,
    top_k: int | None,
    min_relevance: float | None = None,
    dedup: bool = True,
) -> QueryResult:
    """A copy of ``result`` with de-duplicated moments, each with its relevance, cut to those
    at or above ``min_relevance`` and to ``top_k``.

    Args:
        result: the scorer's answer (moments best first, full saliency).
        reference_saliency: ``(B, T)`` the reference bank's saliency on the same video, or
            ``None`` (relevance stays ``None``; ``min_relevance`` must then be ``None``).
        top_k: moments kept (``None``: all).
        min_relevance: threshold in [0, 1] (``None``: none).
        dedup: drop overlapping and nested moments (see :func:`deduplicate`).
    """
    moments = deduplicate(result.moments) if dedup else list(result.moments)
    best = None
    if reference_saliency is not None and moments:
        spans = np.array([[m.start, m.end] for m in moments])
        rel = bank_relevance(result.saliency, reference_saliency, spans, result.clip_len)
        moments = [replace(m, relevance=float(r)) for m, r in zip(moments, rel, strict=True)]
        best = float(rel.max())
    if min_relevance is not None:
        moments = [m for m in moments if m.relevance is not None and m.relevance >= min_relevance]
    return replace(
        result,
        moments=moments[:top_k] if top_k is not None else moments,
        min_relevance=min_relevance,
        best_relevance=best,
    )
