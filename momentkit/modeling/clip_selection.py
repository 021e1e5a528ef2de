"""Clip selection blocks of cross-modal clip trimming (Fang et al., "Fewer Steps, Better
Performance", AAAI 2024).

A selection step scores every *visited* clip of a video and keeps a subset of them; moment
retrieval then runs on the kept clips only. This module holds the reusable pieces:

- :class:`ClipSelection`: the scoring head, fused clip features ``(B, L, d)`` -> logits
  ``(B, L)``;
- :func:`step_budget`, :func:`selection_counts`, :func:`hard_select`: how many clips a step
  may keep, how many it keeps (above a probability threshold, within ``[min_keep, budget]``)
  and which (the best-scored ones);
- :func:`straight_through`, :func:`logistic_noise`: a hard ``{0, 1}`` selection whose gradient
  is the selection probability's (straight-through estimator), with optional Gumbel (logistic)
  noise for exploration;
- :func:`compact`, :func:`gather_clips`, :func:`scatter_clips`: from a ``(B, T)`` keep mask to
  a padded ``(B, K)`` sequence of the kept clips' original indices, and back;
- :func:`compact_to_video_spans`, :func:`video_spans_to_compact`: spans on the kept clips'
  sequence <-> spans on the original timeline, through the kept clips' original timestamps;
- :func:`cut_channels`: where the kept sequence jumps over trimmed clips;
- :class:`TemporalContext`: dilated depthwise temporal convolutions over a (kept) sequence;
- :func:`timeline_scores`, :func:`best_window`: every clip's latest selection probability on
  the original timeline, and the contiguous window of a given size that scores highest.

Masks are bool, True = valid. ``B`` batch, ``T`` clips of the video, ``L`` visited clips,
``K`` kept clips.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from momentkit.modeling.dropout import Dropout
from momentkit.modeling.linear import Linear
from momentkit.modeling.mlp import MLP


class ClipSelection(nn.Module):
    """Selection logits of clips: ``MLP(c'_b)`` (a two-layer MLP to one logit per clip).

    ``sigmoid(logit)`` is the probability ``p_{b+1}`` that the clip is kept by the next step.
    """

    def __init__(self, d_model: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        self.mlp = MLP(d_model, hidden_dim or d_model, 1, 2)

    def forward(self, clips: Tensor, mask: Tensor) -> Tensor:
        """``clips`` ``(B, L, d)``, ``mask`` ``(B, L)`` -> ``(B, L)`` logits (-inf: padding)."""
        logits = self.mlp(clips).squeeze(-1)
        return logits.masked_fill(~mask, float("-inf"))


def logistic_noise(shape: torch.Size | Sequence[int], like: Tensor) -> Tensor:
    """``log(u) - log(1 - u)``, ``u ~ U(0, 1)``: the difference of two Gumbel variables.

    Adding it to a logit and thresholding at 0 samples a Bernoulli of probability
    ``sigmoid(logit)`` (the binary Gumbel-max trick).
    """
    u = torch.rand(shape, device=like.device, dtype=like.dtype).clamp_(1e-6, 1.0 - 1e-6)
    return u.log() - (-u).log1p()


def selection_counts(
    probs: Tensor, candidates: Tensor, threshold: float, min_keep: int, budget: Tensor
) -> Tensor:
    """How many clips each video keeps: those above ``threshold``, clamped to the limits.

    Args:
        probs: ``(B, L)`` selection probabilities.
        candidates: ``(B, L)`` clips that may be kept (visited, not padding).
        threshold: a clip with probability above it asks to be kept.
        min_keep: keep at least this many (fewer only if fewer candidates exist).
        budget: ``(B,)`` keep at most this many.

    Returns:
        ``(B,)`` int64 in ``[min(min_keep, n_candidates), min(budget, n_candidates)]``.
    """
    available = candidates.sum(1)
    wanted = ((probs > threshold) & candidates).sum(1)
    upper = torch.minimum(budget.to(available), available)
    lower = torch.minimum(torch.full_like(available, min_keep), upper)
    return torch.maximum(torch.minimum(wanted, upper), lower)


def hard_select(scores: Tensor, candidates: Tensor, counts: Tensor) -> Tensor:
    """The ``counts[i]`` best-scored candidates of each video.

    Args:
        scores: ``(B, L)`` ranking scores (higher is kept first; ties: earlier clip first).
        candidates: ``(B, L)`` bool, the clips that may be kept.
        counts: ``(B,)`` how many to keep.

    Returns:
        ``(B, L)`` bool keep mask, a subset of ``candidates``.
    """
    ranked = scores.detach().masked_fill(~candidates, float("-inf"))
    order = ranked.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
    )
    return (rank < counts[:, None]) & candidates


def straight_through(keep: Tensor, probs: Tensor) -> Tensor:
    """Hard ``{0, 1}`` values of ``keep`` in the forward pass, gradient of ``probs`` backward.

    ``keep + (probs - stop_gradient(probs))`` (Bengio et al., 2013): the bracket is exactly 0,
    so multiplying features by the result leaves them bit-for-bit unchanged while their loss
    gradient reaches the selection probabilities.
    """
    return keep.to(probs.dtype) + (probs - probs.detach())


def compact(keep: Tensor) -> tuple[Tensor, Tensor]:
    """Original indices of the kept clips, in temporal order, padded to the longest selection.

    Args:
        keep: ``(B, T)`` bool.

    Returns:
        ``(index, mask)``: ``(B, K)`` int64 original clip indices (padding repeats the last
        kept index, 0 when none is kept) and ``(B, K)`` bool validity, ``K = max_i |keep_i|``
        (at least 1).
    """
    counts = keep.sum(1)
    k = max(int(counts.max()) if keep.numel() else 0, 1)
    positions = torch.arange(keep.shape[1], device=keep.device).expand_as(keep)
    # kept clips first, in order; the sort is stable so equal keys keep temporal order
    order = torch.where(keep, positions, positions + keep.shape[1]).argsort(dim=1, stable=True)
    index = order[:, :k]
    mask = torch.arange(k, device=keep.device)[None, :] < counts[:, None]
    last = index.gather(1, (counts - 1).clamp(min=0)[:, None])
    last = torch.where(counts[:, None] > 0, last, torch.zeros_like(last))
    return torch.where(mask, index, last), mask


def gather_clips(x: Tensor, index: Tensor) -> Tensor:
    """``x`` ``(B, T, ...)`` at ``index`` ``(B, K)`` -> ``(B, K, ...)``."""
    shape = (*index.shape, *x.shape[2:])
    flat = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(shape)
    return x.gather(1, flat)


def scatter_clips(
    values: Tensor, index: Tensor, mask: Tensor, num_clips: int, fill: float
) -> Tensor:
    """Put ``(B, K)`` values of kept clips back on a ``(B, T)`` timeline, ``fill`` elsewhere."""
    out = values.new_full((values.shape[0], num_clips + 1), fill)
    # padded entries go to a scratch column T, so they can never overwrite a kept clip
    target = torch.where(mask, index, torch.full_like(index, num_clips))
    return out.scatter(1, target, values)[:, :num_clips]


def cut_channels(index: Tensor, mask: Tensor) -> Tensor:
    """Where a kept sequence skips trimmed clips: ``(B, K, 2)`` float.

    Channel 0 is 1 where the previous kept clip is not the clip just before in the video,
    channel 1 where the next kept clip is not the clip just after. A contiguous window gives
    zeros.
    """
    jump = (index[:, 1:] != index[:, :-1] + 1) & mask[:, 1:]  # (B, K-1)
    zero = torch.zeros_like(mask[:, :1])
    before = torch.cat([zero, jump], dim=1)
    after = torch.cat([jump, zero], dim=1) & mask
    return torch.stack([before, after], dim=-1).to(torch.float32)


_EDGE = 1e-4  # kept-clip units


def compact_to_video_spans(spans: Tensor, index: Tensor, kept: Tensor, num_clips: Tensor) -> Tensor:
    """Spans predicted on the kept clips' sequence -> spans on the original timeline.

    A kept sequence of ``K`` clips is the time axis ``[0, K]`` (clip ``k`` covers
    ``[k, k + 1)``), normalised to ``[0, 1]``. A point ``x`` inside kept clip ``k`` lies
    ``x - k`` clips into original clip ``index[k]``: starts are read in the clip they open
    (``k = floor(x)``), ends in the clip they close (``k = ceil(x) - 1``), so a span covering
    kept clips ``a .. b`` maps to ``[index[a], index[b] + 1]``. Piecewise linear, hence
    differentiable in ``spans``.

    Args:
        spans: ``(B, Q, 2)`` ``(center, width)`` normalised by the kept sequence's length.
        index: ``(B, K)`` original indices of the kept clips (:func:`compact`).
        kept: ``(B,)`` kept clips per video, ``K_i >= 1``.
        num_clips: ``(B,)`` clips of each original video, ``T_i``.

    Returns:
        ``(B, Q, 2)`` ``(center, width)`` normalised by ``T_i`` (clamped to ``[0, 1]``).
    """
    k = kept.to(spans.dtype)[:, None]
    center, width = spans.unbind(-1)
    start = (center - 0.5 * width).clamp(0.0, 1.0) * k  # (B, Q), kept-clip units
    end = (center + 0.5 * width).clamp(0.0, 1.0) * k
    last = (kept - 1)[:, None]
    # a boundary computed a rounding error off a clip edge belongs to the clip it touches
    j_start = torch.minimum((start.detach() + _EDGE).floor().long().clamp(min=0), last)
    j_end = torch.minimum(((end.detach() - _EDGE).ceil().long() - 1).clamp(min=0), last)
    orig_start = index.gather(1, j_start).to(spans.dtype) + (start - j_start.to(spans.dtype))
    orig_end = index.gather(1, j_end).to(spans.dtype) + (end - j_end.to(spans.dtype))
    total = num_clips.to(spans.dtype)[:, None]
    xx = torch.stack([orig_start / total, orig_end / total], dim=-1).clamp(0.0, 1.0)
    return torch.stack([xx.mean(-1), xx[..., 1] - xx[..., 0]], dim=-1)


def video_spans_to_compact(spans: Tensor, index: Tensor, num_clips: int) -> Tensor:
    """Target spans of one video -> spans on its kept clips' sequence.

    A kept clip belongs to a span when its centre lies inside it; the span becomes the run of
    kept clips it holds (kept clips are in temporal order, so they form one run). Spans that
    hold no kept clip are dropped.

    Args:
        spans: ``(n, 2)`` ``(center, width)`` normalised by the video's ``num_clips``.
        index: ``(K,)`` original indices of the video's kept clips (no padding).
        num_clips: ``T``, clips of the video.

    Returns:
        ``(m, 2)`` ``(center, width)`` normalised by ``K``, ``m <= n``.
    """
    k = len(index)
    if len(spans) == 0 or k == 0:
        return spans.new_zeros(0, 2)
    start = (spans[:, 0] - 0.5 * spans[:, 1]) * num_clips  # (n,) clip units
    end = (spans[:, 0] + 0.5 * spans[:, 1]) * num_clips
    centers = index.to(spans.dtype) + 0.5  # (K,)
    inside = (centers[None, :] >= start[:, None]) & (centers[None, :] <= end[:, None])  # (n, K)
    has = inside.any(1)
    positions = torch.arange(k, device=spans.device)
    first = torch.where(inside, positions, k).amin(1)
    last = torch.where(inside, positions, -1).amax(1)
    xx = torch.stack([first, last + 1], dim=-1)[has].to(spans.dtype) / k
    return torch.stack([xx.mean(-1), xx[:, 1] - xx[:, 0]], dim=-1)


class TemporalContext(nn.Module):
    """Residual dilated depthwise-separable temporal convolutions over a clip sequence.

    Each layer is ``x + pointwise(relu(depthwise(x)))`` followed by LayerNorm, where the
    depthwise convolution has kernel 3 and dilation ``d``:
    ``w_0 * x[t - d] + w_1 * x[t] + w_2 * x[t + d] + b`` per channel (zero outside the
    sequence). Written with shifts and element-wise products, whose backward pass is far cheaper
    on CPUs than a grouped convolution's. Padded clips are zeroed before every layer, so they
    never leak into valid ones. The receptive field is ``1 + 2 * sum(dilations)`` clips and the
    cost linear in the sequence length.
    """

    def __init__(
        self, d_model: int, dilations: Sequence[int] = (1, 2, 4, 8), dropout: float = 0.1
    ) -> None:
        super().__init__()
        if any(d < 1 for d in dilations):
            raise ValueError(f"dilations must be >= 1, got {list(dilations)}")
        self.dilations = tuple(int(d) for d in dilations)
        bound = 1.0 / math.sqrt(3.0)  # PyTorch's default init of a depthwise kernel of size 3
        self.taps = nn.Parameter(torch.empty(len(dilations), 3, d_model).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(len(dilations), d_model).uniform_(-bound, bound))
        self.pointwise = nn.ModuleList(Linear(d_model, d_model) for _ in dilations)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in dilations)
        self.dropout = Dropout(dropout)

    @property
    def receptive_field(self) -> int:
        """Clips each output sees."""
        return 1 + 2 * sum(self.dilations)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x`` ``(B, L, d)``, ``mask`` ``(B, L)`` -> ``(B, L, d)``."""
        keep = mask.unsqueeze(-1).to(x.dtype)
        length = x.shape[1]
        for i, (d, point, norm) in enumerate(zip(self.dilations, self.pointwise, self.norms)):
            x = x * keep
            padded = F.pad(x, (0, 0, d, d))  # (B, L + 2d, d_model)
            w = self.taps[i]
            h = padded[:, :length] * w[0] + x * w[1] + padded[:, 2 * d :] * w[2] + self.bias[i]
            x = norm(x + self.dropout(point(F.relu(h))))
        return x * keep


def step_budget(candidates: Tensor, keep_ratio: float, max_clips: int, final: bool) -> Tensor:
    """``(B,)`` most clips a selection step may keep.

    A step keeps at most ``ceil(keep_ratio * visited)`` clips but never needs to go below the
    moment-retrieval budget ``max_clips``; the last allowed step must reach it.
    """
    visited = candidates.sum(1)
    if final:
        return torch.full_like(visited, max_clips)
    ratio = torch.ceil(visited.to(torch.float64) * keep_ratio).long()
    return torch.clamp(ratio, min=max_clips)


def timeline_scores(
    probs: Sequence[Tensor], indices: Sequence[Tensor], masks: Sequence[Tensor], num_clips: int
) -> Tensor:
    """Each clip's latest selection probability on the original timeline, ``(B, T)``.

    Steps are applied in order, so a clip visited by a later step takes that step's
    probability; a clip never visited scores 0.

    Args:
        probs: per step, ``(B, L_b)`` selection probabilities of the visited clips.
        indices: per step, ``(B, L_b)`` their original clip indices.
        masks: per step, ``(B, L_b)`` bool validity.
        num_clips: ``T``.
    """
    out: Tensor | None = None
    for p, index, mask in zip(probs, indices, masks):
        step = scatter_clips(p, index, mask, num_clips, -1.0)
        out = step if out is None else torch.where(step >= 0, step, out)
    if out is None:
        raise ValueError("timeline_scores needs at least one step")
    return out.clamp(min=0.0)


def best_window(scores: Tensor, valid: Tensor, size: int) -> Tensor:
    """The contiguous window of ``size`` clips with the highest summed score, per video.

    Args:
        scores: ``(B, T)`` non-negative clip scores.
        valid: ``(B, T)`` bool, the video's clips (a prefix of the row).
        size: window length; a video of at most ``size`` clips keeps all of them.

    Returns:
        ``(B, T)`` bool keep mask (ties: the earliest window).
    """
    lengths = valid.sum(1)
    t = scores.shape[1]
    cum = F.pad((scores * valid).cumsum(1), (1, 0))  # (B, T + 1)
    starts = torch.arange(t, device=scores.device)
    ends = (starts + size).clamp(max=t)
    sums = cum[:, ends] - cum[:, starts]  # (B, T): window starting at each clip
    possible = starts[None, :] <= (lengths - size).clamp(min=0)[:, None]
    first = sums.masked_fill(~possible, float("-inf")).argmax(1)  # earliest maximum
    offset = starts[None, :] - first[:, None]
    return (offset >= 0) & (offset < size) & valid
