"""Vectorised numpy kernels: temporal IoU, detection AP and ranking AP over padded batches.

Every kernel works on a whole split at once: queries are padded to a common number of windows
(or clips) and a boolean ``valid`` mask (True = real entry) marks the padding. The arithmetic is
arranged so that each query's result is bit-for-bit the number the official QVHighlights
evaluator (``standalone_eval``) computes one query at a time: same formulas, same operation
order and, for sums of more than seven terms, numpy's own pairwise summation applied to rows of
exactly the same length (:func:`masked_sum`).
"""

from __future__ import annotations

import numpy as np


def cross_iou(spans1: np.ndarray, spans2: np.ndarray) -> np.ndarray:
    """Batched cross temporal IoU, ``inter / (len1 + len2 - inter)``.

    Args:
        spans1: ``(..., N, 2)`` start/end windows.
        spans2: ``(..., M, 2)`` start/end windows (same leading dimensions).

    Returns:
        ``(..., N, M)`` IoU. A pair with zero union gives NaN, as in the official code.
    """
    len1 = spans1[..., 1] - spans1[..., 0]
    len2 = spans2[..., 1] - spans2[..., 0]
    left = np.maximum(spans1[..., :, None, 0], spans2[..., None, :, 0])
    right = np.minimum(spans1[..., :, None, 1], spans2[..., None, :, 1])
    inter = np.clip(right - left, 0, None)
    union = len1[..., :, None] + len2[..., None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def paired_hull_iou(spans1: np.ndarray, spans2: np.ndarray) -> np.ndarray:
    """Row-wise IoU of ``(N, 2)`` and ``(N, 2)`` windows -> ``(N,)``, dividing by the hull.

    The hull ``max(end) - min(start)`` equals the union whenever the windows overlap, and the IoU
    is 0 otherwise, so this is the usual IoU; it is the formula the official R@1 uses. A zero hull
    gives 0.
    """
    inter = np.maximum(
        0.0,
        np.minimum(spans1[:, 1], spans2[:, 1]) - np.maximum(spans1[:, 0], spans2[:, 0]),
    )
    hull = np.maximum(spans1[:, 1], spans2[:, 1]) - np.minimum(spans1[:, 0], spans2[:, 0])
    out = np.zeros_like(inter, dtype=np.float64)
    np.divide(inter, hull, out=out, where=hull != 0)
    return out


def masked_sum(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sum of ``values[r][mask[r]]`` for each row ``r``, exactly as ``np.sum`` on that 1-D slice.

    numpy sums more than seven float64 numbers pairwise, so the result of adding a row's selected
    terms depends on how many there are. Rows are therefore grouped by their count and each group
    is summed over an array of exactly that width (the selected terms moved to the front, order
    kept).

    Args:
        values: ``(R, L)`` float64 terms.
        mask: ``(R, L)`` bool, True for the terms to add.

    Returns:
        ``(R,)`` float64 sums (0 for rows with no selected term).
    """
    counts = mask.sum(axis=-1)
    order = np.argsort(~mask, axis=-1, kind="stable")
    packed = np.take_along_axis(values, order, axis=-1)
    out = np.zeros(values.shape[0], dtype=np.float64)
    for count in np.unique(counts):
        if count == 0:
            continue
        rows = counts == count
        out[rows] = np.ascontiguousarray(packed[rows, :count]).sum(axis=-1)
    return out


def _argsort_rows_by_length(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``np.argsort`` (numpy's default kind) of each row's first ``lengths[r]`` entries.

    Rows of equal length are sorted together, so every row goes through the very call the official
    code makes on a 1-D array of that length; ties therefore come out in the same (possibly
    unstable, platform-dependent) order. Entries past a row's length keep their positions.

    Args:
        values: ``(R, ..., L)`` keys, sorted along the last axis.
        lengths: ``(R,)`` number of real entries per row.
    """
    order = np.broadcast_to(np.arange(values.shape[-1]), values.shape).copy()
    for length in np.unique(lengths):
        if length == 0:
            continue
        rows = lengths == length
        order[rows, ..., :length] = np.argsort(values[rows, ..., :length], axis=-1)
    return order


def detection_ap(
    pred_windows: np.ndarray,
    pred_scores: np.ndarray,
    pred_valid: np.ndarray,
    gt_windows: np.ndarray,
    gt_valid: np.ndarray,
    thresholds: np.ndarray,
) -> np.ndarray:
    """Per-query average precision of temporal detections (ActivityNet/VOC style).

    For each query and IoU threshold: predictions are visited by decreasing score (a stable sort,
    so equal scores keep their listed order); each one is matched to the not-yet-matched ground
    truth window of highest IoU if that IoU reaches the threshold (true positive), else it is a
    false positive; AP is the area under the interpolated precision/recall curve (VOC 2011).

    Args:
        pred_windows: ``(Q, P, 2)`` predicted start/end.
        pred_scores: ``(Q, P)`` confidence.
        pred_valid: ``(Q, P)`` bool, real predictions first (padding after them).
        gt_windows: ``(Q, G, 2)`` ground-truth start/end.
        gt_valid: ``(Q, G)`` bool, real windows first; every query needs at least one.
        thresholds: ``(T,)`` IoU thresholds.

    Returns:
        ``(Q, T)`` float64 AP in [0, 1] (0 for a query without predictions).
    """
    num_q, num_p = pred_scores.shape
    num_t = len(thresholds)
    # sort predictions by decreasing score, stable; padding last
    key = np.where(pred_valid, -pred_scores, np.inf)
    order = np.argsort(key, axis=-1, kind="stable")
    windows = np.take_along_axis(pred_windows, order[..., None], axis=1)
    valid = np.take_along_axis(pred_valid, order, axis=1)

    iou = cross_iou(windows, gt_windows)  # (Q, P, G)
    num_gt = gt_valid.sum(axis=-1)
    iou = np.where(gt_valid[:, None, :], iou, -np.inf)
    # ground truth visited by decreasing IoU: the official reverses numpy's default argsort
    gt_order = _argsort_rows_by_length(iou, num_gt)
    gt_order = _reverse_prefix(gt_order, num_gt)
    iou_sorted = np.take_along_axis(iou, gt_order, axis=-1)

    q_idx = np.arange(num_q)[:, None]
    t_idx = np.arange(num_t)[None, :]
    locked = np.zeros((num_q, num_t, gt_windows.shape[1]), dtype=bool)
    tp = np.zeros((num_q, num_t, num_p))
    fp = np.zeros((num_q, num_t, num_p))
    for p in range(num_p):
        done = np.zeros((num_q, num_t), dtype=bool)
        hit = np.zeros((num_q, num_t), dtype=bool)
        for r in range(gt_windows.shape[1]):
            g = gt_order[:, p, r]
            below = iou_sorted[:, p, r][:, None] < thresholds[None, :]  # NaN is not below
            done |= below
            free = ~locked[q_idx, t_idx, g[:, None]]
            new_hit = ~done & free
            hit |= new_hit
            locked[q_idx, t_idx, g[:, None]] |= new_hit & valid[:, p, None]
            done |= new_hit
        tp[:, :, p] = hit & valid[:, p, None]
        fp[:, :, p] = ~hit & valid[:, p, None]

    tp_cum = np.cumsum(tp, axis=-1)
    fp_cum = np.cumsum(fp, axis=-1)
    num_pos = num_gt.astype(np.float64)[:, None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp_cum / num_pos
        precision = tp_cum / (tp_cum + fp_cum)
    has_pred = valid.any(axis=-1)
    precision = np.where(has_pred[:, None, None], precision, 0.0)
    recall = np.where(has_pred[:, None, None], recall, 0.0)

    zeros = np.zeros((num_q, num_t, 1))
    m_prec = np.concatenate([zeros, precision, zeros], axis=-1)
    m_rec = np.concatenate([zeros, recall, np.ones((num_q, num_t, 1))], axis=-1)
    m_prec = np.maximum.accumulate(m_prec[..., ::-1], axis=-1)[..., ::-1]
    changed = m_rec[..., 1:] != m_rec[..., :-1]
    terms = (m_rec[..., 1:] - m_rec[..., :-1]) * m_prec[..., 1:]
    width = terms.shape[-1]
    ap = masked_sum(terms.reshape(num_q * num_t, width), changed.reshape(num_q * num_t, width))
    ap = ap.reshape(num_q, num_t)
    return np.where(has_pred[:, None], ap, 0.0)


def _reverse_prefix(order: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Reverse the first ``lengths[r]`` entries along the last axis of each row ``r``."""
    width = order.shape[-1]
    pos = np.arange(width)
    src = np.where(pos[None, :] < lengths[:, None], lengths[:, None] - 1 - pos[None, :], pos)
    src = np.broadcast_to(src.reshape(len(lengths), *([1] * (order.ndim - 2)), width), order.shape)
    return np.take_along_axis(order, src, axis=-1)


def ranking_ap(labels: np.ndarray, scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Average precision of ranking clips by score, with the official HL-mAP conventions.

    Clips are ranked by decreasing score; equal scores form one threshold. At every threshold
    where the number of retrieved positives grows, take the interpolated precision (the best
    precision at this or any lower threshold); AP is the mean of those values. A label vector
    that is all 0 gives 0 and all 1 gives 1. This is ``get_ap`` of the official evaluator (which
    uses scikit-learn's ``precision_recall_curve``), reproduced to the bit.

    Args:
        labels: ``(Q, A, N)`` binary relevance (0/1) per query, annotator and clip.
        scores: ``(Q, N)`` predicted saliency per clip.
        valid: ``(Q, N)`` bool, real clips first; every query needs at least one.

    Returns:
        ``(Q, A)`` float64 AP in [0, 1].
    """
    num_q, num_a, num_n = labels.shape
    order = np.argsort(np.where(valid, -scores, np.inf), axis=-1, kind="stable")
    s = np.take_along_axis(scores, order, axis=-1)
    v = np.take_along_axis(valid, order, axis=-1)
    y = np.take_along_axis(labels, order[:, None, :], axis=-1) * v[:, None, :]

    nxt_valid = np.concatenate([v[:, 1:], np.zeros((num_q, 1), dtype=bool)], axis=-1)
    nxt_diff = np.concatenate([s[:, 1:] != s[:, :-1], np.ones((num_q, 1), dtype=bool)], axis=-1)
    is_end = v & (~nxt_valid | nxt_diff)  # last clip of a group of equal scores

    tp = np.cumsum(y, axis=-1)  # (Q, A, N)
    precision = tp / np.arange(1, num_n + 1, dtype=np.float64)
    ends = is_end[:, None, :]
    # interpolated precision: best precision at this threshold or any lower one
    interp = np.where(ends, precision, 0.0)
    interp = np.maximum.accumulate(interp[..., ::-1], axis=-1)[..., ::-1]
    tp_at_ends = np.where(ends, tp, 0.0)
    prev = np.maximum.accumulate(tp_at_ends, axis=-1)
    prev = np.concatenate([np.zeros((num_q, num_a, 1)), prev[..., :-1]], axis=-1)
    selected = ends & (tp > prev)

    # the official averages from the lowest threshold upwards
    interp = interp[..., ::-1].reshape(num_q * num_a, num_n)
    selected = selected[..., ::-1].reshape(num_q * num_a, num_n)
    counts = selected.sum(axis=-1)
    sums = masked_sum(interp, selected)
    with np.errstate(divide="ignore", invalid="ignore"):
        ap = (sums / counts).reshape(num_q, num_a)

    num_pos = y.sum(axis=-1)
    num_clips = v.sum(axis=-1)[:, None]
    ap = np.where(num_pos == 0, 0.0, ap)
    return np.where(num_pos == num_clips, 1.0, ap)


def trapezoid_ap(ranked_labels: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """AP of ranked binary labels with trapezoidal interpolation (the UMT / UniVTG convention).

    ``AP = sum_j (rec_j - rec_{j-1}) * (prec_{j-1} + prec_j) / 2`` with ``prec_0 = 1`` and
    ``rec_0 = 0``, recall taken relative to the positives in the ranked list. A list without
    positives scores 0.

    Args:
        ranked_labels: ``(R, K)`` 0/1 labels in ranked order.
        valid: ``(R, K)`` bool, True for real entries (a prefix of each row).

    Returns:
        ``(R,)`` float64 AP in [0, 1].
    """
    y = np.where(valid, ranked_labels, 0.0)
    hits = np.cumsum(y, axis=-1)
    num_gt = hits[:, -1:] if y.shape[-1] else np.zeros((y.shape[0], 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = hits / num_gt
    prc = hits / np.arange(1, y.shape[-1] + 1, dtype=np.float64)
    rec_prev = np.concatenate([np.zeros((y.shape[0], 1)), rec[:, :-1]], axis=-1)
    prc_prev = np.concatenate([np.ones((y.shape[0], 1)), prc[:, :-1]], axis=-1)
    terms = np.where(valid, (rec - rec_prev) * (prc_prev + prc) / 2, 0.0)
    ap = terms.sum(axis=-1)
    return np.where(num_gt[:, 0] > 0, ap, 0.0)
