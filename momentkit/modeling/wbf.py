"""Weighted boxes fusion for temporal spans (Solovyev et al., "Weighted boxes fusion: Ensembling
boxes from different object detection models", Image and Vision Computing 2021).

SG-DETR (3.5) fuses the spans of its DETR head and of its ATSS head with it at inference. Unlike
NMS, which keeps one span of a cluster, WBF averages the cluster's coordinates weighted by their
scores. The algorithm, in 1-D (``conf_type="avg"`` of the reference implementation):

1. every span of source ``m`` with score ``>= skip_threshold`` enters with score
   ``s * weights[m]``; all are sorted by that score, best first;
2. each span joins the first fused span (in creation order) with which its IoU is highest and
   ``> iou_threshold``, else it starts a new cluster;
3. a cluster's fused span is ``sum(s_i * span_i) / sum(s_i)`` and its score ``mean(s_i)``, updated
   after every insertion (so later spans are compared with the current fused span);
4. finally each score is rescaled by ``min(len(weights), n) / sum(weights)`` for a cluster of
   ``n`` spans: a span that only one source found is down-weighted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _iou(span: list[float], others: list[list[float]]) -> list[float]:
    out = []
    for o in others:
        inter = max(0.0, min(span[1], o[1]) - max(span[0], o[0]))
        union = (span[1] - span[0]) + (o[1] - o[0]) - inter
        out.append(inter / union if union > 0 else 0.0)
    return out


def weighted_boxes_fusion_1d(
    spans: Sequence[Tensor],
    scores: Sequence[Tensor],
    weights: Sequence[float] | None = None,
    iou_threshold: float = 0.55,
    skip_threshold: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Fuse the spans of several sources.

    Args:
        spans: per source ``(n_m, 2)`` start/end spans (any unit; normalised in SG-DETR).
        scores: per source ``(n_m,)`` confidences.
        weights: per source weight (default all 1).
        iou_threshold: a span joins a cluster whose fused span it overlaps with IoU above this.
        skip_threshold: spans scoring below this (before weighting) are dropped.

    Returns:
        ``(fused spans (F, 2), scores (F,))`` sorted by score, best first, on the CPU.
    """
    if len(spans) != len(scores):
        raise ValueError(f"{len(spans)} span sets but {len(scores)} score sets")
    weights = [1.0] * len(spans) if weights is None else list(weights)
    if len(weights) != len(spans):
        raise ValueError(f"{len(weights)} weights for {len(spans)} sources; give one per source")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {weights}")
    entries: list[tuple[float, list[float]]] = []
    for s, c, w in zip(spans, scores, weights):
        for span, score in zip(
            s.detach().float().cpu().tolist(), c.detach().float().cpu().tolist()
        ):
            if score >= skip_threshold:
                entries.append((score * w, span))
    entries.sort(key=lambda e: -e[0])
    clusters: list[list[tuple[float, list[float]]]] = []
    fused: list[list[float]] = []
    for score, span in entries:
        best, best_iou = -1, iou_threshold
        for j, iou in enumerate(_iou(span, fused)):
            if iou > best_iou:
                best, best_iou = j, iou
        if best < 0:
            clusters.append([(score, span)])
            fused.append(list(span))
            continue
        clusters[best].append((score, span))
        total = sum(s for s, _ in clusters[best])
        fused[best] = [
            sum(s * sp[k] for s, sp in clusters[best]) / total if total > 0 else span[k]
            for k in range(2)
        ]
    out_scores = [
        sum(s for s, _ in c) / len(c) * min(len(weights), len(c)) / sum(weights) for c in clusters
    ]
    order = sorted(range(len(fused)), key=lambda j: -out_scores[j])
    return (
        torch.tensor([fused[j] for j in order], dtype=torch.float32).reshape(-1, 2),
        torch.tensor([out_scores[j] for j in order], dtype=torch.float32),
    )
