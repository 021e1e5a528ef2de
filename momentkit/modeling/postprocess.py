"""From model outputs to :class:`~momentkit.data.records.MomentPrediction` rows in seconds.

Per query: foreground probabilities score the ``Q`` predicted spans; spans are converted to
seconds, clamped to ``[0, duration]``, optionally snapped to the clip grid (at least one clip
wide), sorted by score, optionally de-duplicated with temporal NMS and cut to ``top_k``.
Saliency scores are kept for the valid clips only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from momentkit.data.records import MomentPrediction
from momentkit.structures.spans import span_cxw_to_xx, temporal_iou


def top_indices(scores: Tensor, k: int) -> Tensor:
    """``scores.argsort(descending=True, stable=True)[:k]`` without sorting all of ``scores``.

    The ``k`` best of ``(N,)`` ``scores`` (no NaN), best first, equal scores in index order:
    everything above the ``k``-th largest value, then as many of the values equal to it as fit,
    first indices first, sorted. UniMD's decoding ranks 28 260 (point, class) pairs of a video's
    finest level to keep 2000: a full stable sort took ~2 ms, most of it on pairs it drops.
    """
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    if 4 * k >= len(scores):  # sorting them all costs about the same
        return scores.argsort(descending=True, stable=True)[:k]
    kth = scores.topk(k).values[-1]
    above = torch.nonzero(scores > kth).flatten()
    ties = torch.nonzero(scores == kth).flatten()[: k - len(above)]
    # each value's indices are in index order (all of a value lie in one of the two parts)
    chosen = torch.cat([above, ties])
    return chosen[scores[chosen].argsort(descending=True, stable=True)]


def temporal_nms(windows: Tensor, scores: Tensor, threshold: float) -> Tensor:
    """Greedy non-maximum suppression of temporal windows.

    Args:
        windows: ``(N, 2)`` start/end.
        scores: ``(N,)``.
        threshold: a window is dropped when its IoU with a kept, higher-scored one is
            ``> threshold`` (the official Moment-DETR rule).

    Returns:
        indices of the kept windows, best first.
    """
    order = scores.argsort(descending=True, stable=True)
    iou = temporal_iou(windows[order], windows[order])[0]
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > threshold
    return order[torch.tensor(keep, dtype=torch.long)]


def snap_to_clips(windows: Tensor, duration: float, clip_len: float) -> Tensor:
    """Round ``(N, 2)`` start/end seconds to the grid ``0, clip_len, 2 clip_len, ..., duration``.

    The video end is a grid point even when the duration is not a multiple of ``clip_len``. Each
    window stays at least one clip (or the whole video, if shorter) wide.
    """
    width = min(clip_len, duration)
    column = torch.tensor([duration, width], dtype=torch.float32).view(2, 1, 1, 1)
    return _snap_rows(windows[None], column[0], clip_len, column[1], [width])[0]


def _snap_rows(
    windows: Tensor, duration: Tensor, clip_len: float, width: Tensor, widths: list[float]
) -> Tensor:
    """The grid rounding of :func:`snap_to_clips` on ``(B, Q, 2)`` windows, one duration per
    row: ``duration`` and ``width`` (``min(clip_len, duration)``) float32 ``(B, 1, 1)``,
    ``widths`` the same widths as Python floats (the short-window bound ``width - 1e-6`` is
    computed in double, then compared in float32)."""
    snapped = (windows / clip_len).round() * clip_len
    to_end = (windows - duration).abs() < (windows - snapped).abs()
    snapped = torch.where(to_end, duration.expand_as(snapped), snapped)
    snapped = torch.minimum(snapped.clamp(min=0.0), duration)
    start, end = snapped.unbind(-1)
    limit = torch.tensor([w - 1e-6 for w in widths], dtype=torch.float32).view(-1, 1)
    short = end - start < limit
    end = torch.where(short, torch.minimum(start + width[..., 0], duration[..., 0]), end)
    start = torch.where(short, end - width[..., 0], start)
    return torch.stack([start, end], dim=-1)


@dataclass
class PostProcessor:
    """Turns a batch of model outputs into predictions.

    Attributes:
        top_k: windows kept per query (after NMS); ``None`` keeps all.
        nms_threshold: IoU above which a lower-scored window is suppressed; ``None``: no NMS.
        round_to_clip: snap windows to the clip grid.
        decimals: decimals kept in window coordinates and scores.
        span_scale: what the normalised spans are multiplied by: ``timeline`` (the
            ``num_clips * clip_len`` seconds the training targets are normalised by) or
            ``duration`` (the video duration, as Lighthouse's ``compute_mr_results`` does).
        rounding: ``grid`` (:func:`snap_to_clips`: the video end is a grid point, windows at
            least one clip wide) or ``multiple`` (Lighthouse's ``PostProcessorDETR``: coordinates
            first rounded to ``decimals``, then ``round(t / clip_len) * clip_len`` with ties to
            even; zero-width windows are kept).
        clamp: ``duration`` (clamp to ``[0, duration]``), ``fixed`` (to ``[0, max_time]``,
            Lighthouse's ``clip_ts`` on QVHighlights and Charades-STA) or ``none`` (Lighthouse on
            TACoS). ``rounding="grid"`` always ends inside ``[0, duration]``.
        max_time: upper bound of ``clamp="fixed"``, seconds.
        saliency_dtype: ``float32``, or ``float16`` to round the saliency scores to half
            precision as Lighthouse's evaluation writes them.
    """

    top_k: int | None = 10
    nms_threshold: float | None = None
    round_to_clip: bool = True
    decimals: int = 4
    span_scale: str = "timeline"
    rounding: str = "grid"
    clamp: str = "duration"
    max_time: float = 150.0
    saliency_dtype: str = "float32"

    def __post_init__(self) -> None:
        choices = {
            "span_scale": ("timeline", "duration"),
            "rounding": ("grid", "multiple"),
            "clamp": ("duration", "fixed", "none"),
            "saliency_dtype": ("float32", "float16"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"postprocess.{name} must be one of {', '.join(allowed)}, got "
                    f"{getattr(self, name)!r}"
                )
        if self.max_time <= 0:
            raise ValueError(f"postprocess.max_time must be > 0 seconds, got {self.max_time}")

    def windows(
        self,
        logits: Tensor,
        spans: Tensor,
        duration: float,
        clip_len: float,
        timeline: float | None = None,
    ) -> list:
        """``[[start, end, score], ...]`` (seconds, best first) for one query.

        Args:
            logits: ``(Q, 2)`` class logits (class 0 = foreground).
            spans: ``(Q, 2)`` ``(center, width)`` normalised by ``timeline``.
            duration: video duration in seconds (windows are clamped to it).
            clip_len: seconds per clip.
            timeline: seconds the normalised ``[0, 1]`` covers: ``num_clips * clip_len`` (how
                the loader normalises targets); defaults to ``duration``.
        """
        timelines = None if timeline is None else [timeline]
        return self.batch_windows(logits[None], spans[None], [duration], clip_len, timelines)[0]

    def __call__(self, outputs: dict[str, Any], batch: dict[str, Any]) -> list[MomentPrediction]:
        """One :class:`MomentPrediction` per query of ``batch``.

        Uses ``outputs["pred_logits"]`` ``(B, Q, 2)``, ``outputs["pred_spans"]`` ``(B, Q, 2)``,
        optional ``outputs["saliency_scores"]`` ``(B, T)``, and ``batch["duration"]``,
        (spans are scaled by each video's ``num_clips * clip_len``, then clamped to its duration),
        ``batch["clip_len"]``, ``batch["video_mask"]``, ``batch["qids"]``, ``batch["vids"]``
        and (for the query text) ``batch["annotations"]``.
        """
        logits = outputs["pred_logits"].detach().cpu()
        spans = outputs["pred_spans"].detach().cpu()
        saliency = outputs.get("saliency_scores")
        saliency = saliency.detach().float().cpu() if saliency is not None else None
        if saliency is not None and self.saliency_dtype == "float16":
            saliency = saliency.half().float()
        durations = [float(d) for d in torch.as_tensor(batch["duration"]).tolist()]
        clip_len = float(batch["clip_len"])
        num_clips = [int(n) for n in batch["video_mask"].sum(1).tolist()]
        annotations = batch.get("annotations") or [None] * len(durations)
        timelines = [n * clip_len for n in num_clips]
        rows = self.batch_windows(logits, spans, durations, clip_len, timelines)
        saliency_rows = saliency.tolist() if saliency is not None else None
        preds = []
        for i, (qid, vid) in enumerate(zip(batch["qids"], batch["vids"])):
            query = annotations[i].query if annotations[i] is not None else ""
            sal = saliency_rows[i][: num_clips[i]] if saliency_rows is not None else []
            preds.append(MomentPrediction(qid, query, vid, rows[i], sal))
        return preds

    def batch_windows(
        self,
        logits: Tensor,
        spans: Tensor,
        durations: list[float],
        clip_len: float,
        timelines: list[float] | None = None,
    ) -> list[list]:
        """:meth:`windows` of every query of a batch at once (each row depends on its query only).

        ``logits`` and ``spans`` ``(B, Q, 2)``, ``durations`` and ``timelines`` one per query.
        Per-query values (duration, scale, clip width) are float32 ``(B, 1, 1)`` columns, so a
        batch costs a few tensor ops instead of a few per query.
        """
        batch = len(durations)
        if batch == 0:
            return []
        timelines = timelines if timelines is not None else [None] * batch
        scores = logits.float().softmax(-1)[..., 0]  # (B, Q)

        def column(values: list[float]) -> Tensor:
            return torch.tensor(values, dtype=torch.float32).view(batch, 1, 1)

        scales = [
            d if t is None or self.span_scale == "duration" else t
            for d, t in zip(durations, timelines)
        ]
        windows = span_cxw_to_xx(spans.float()) * column(scales)
        if self.round_to_clip and self.rounding == "multiple":
            windows = torch.tensor(  # as Lighthouse: to `decimals` in double precision first
                [float(f"{v:.{self.decimals}f}") for v in windows.reshape(-1).tolist()],
                dtype=torch.float32,
            ).reshape(windows.shape)
        duration = column(durations)
        if self.clamp == "duration":
            windows = torch.minimum(windows.clamp(min=0.0), duration)
        elif self.clamp == "fixed":
            windows = windows.clamp(0.0, self.max_time)
        if self.round_to_clip and self.rounding == "grid":
            widths = [min(clip_len, d) for d in durations]
            windows = _snap_rows(windows, duration, clip_len, column(widths), widths)
        elif self.round_to_clip:
            windows = torch.round(windows / clip_len) * clip_len
        if self.nms_threshold is None:
            order = scores.argsort(dim=-1, descending=True, stable=True)
            if self.top_k is not None:
                order = order[:, : self.top_k]
            picked = windows.gather(1, order[..., None].expand(-1, -1, 2))
            table = torch.cat([picked, scores.gather(1, order)[..., None]], dim=-1).tolist()
        else:
            table = []
            for i in range(batch):
                order = temporal_nms(windows[i], scores[i], self.nms_threshold)
                if self.top_k is not None:
                    order = order[: self.top_k]
                table.append(torch.cat([windows[i][order], scores[i][order, None]], 1).tolist())
        decimals = self.decimals
        return [[[round(v, decimals) for v in row] for row in query] for query in table]


def postprocess(
    outputs: dict[str, Any], batch: dict[str, Any], **settings: Any
) -> list[MomentPrediction]:
    """Shortcut for ``PostProcessor(**settings)(outputs, batch)``."""
    return PostProcessor(**settings)(outputs, batch)
