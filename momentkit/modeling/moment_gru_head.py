"""LD-DETR's highlight-detection head (Zhao et al. 2025, section 3.5; after TR-DETR's MR2HD).

The clips inside the moment the decoder is most confident about summarise the query: a GRU
reads them and its last hidden state becomes a new global video feature ``G'_v``; clips similar
to it are highlighted:

- the top moment: the query with the highest foreground probability, its span turned into clip
  indices ``floor(start * T_i) .. floor(end * T_i)`` (inclusive, clamped to the ``T_i`` valid
  clips, at least one clip) - as the official code, with no gradient through the choice;
- ``G'_v`` ``(B, d)``: the GRU hidden state after the moment's last clip of ``V'``;
- ``S = G'_v V'^T`` ``(B, T)``;
- ``M = Linear(R' o S + R')`` ``(B, T, d)``, with ``R'`` the fused memory;
- saliency ``= sum_d M / sqrt(d)`` ``(B, T)`` (the official code's scale).

``form="official"`` reads the moment as the official release does (``ld_detr/methods.py``,
``HighlightDetectionPredictionHead``; :func:`official_moment_slice`): the span is turned into
clip indices with the *padded* length ``T``, sliced with Python's rules (a negative start counts
from the end), left-aligned and zero-padded to ``T`` steps, and ``G'_v`` is the GRU state after
all ``T`` steps, so it also reads the zero padding after the moment (its dependence on the moment
fades with the number of padded steps).

``similarity="cosine"`` takes ``S`` between the L2-normalised ``G'_v`` and clips instead, so
``1 + S`` is a weight in ``[0, 2]``. The paper's raw dot product is unbounded (``|S|`` 1-2 on
average, std 1.5-3, in training on the synthetic benchmark): ``1 + S`` changes sign from clip to
clip, and the sign, set by the GRU summary of a moment the decoder has not learned to find yet,
scrambles the clips' order. Measured on ``momentkit synth`` (docs/ld_detr.md): with the dot
product HL-min-VeryGood mAP stayed at 13-18 for 16 epochs and moment retrieval never took off;
with the cosine it reached 35.7 at epoch 2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from momentkit.modeling.linear import Linear
from momentkit.structures.spans import span_cxw_to_xx


def top_moment_clips(
    pred_logits: Tensor, pred_spans: Tensor, video_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """First and last clip (inclusive) of each video's most confident predicted moment.

    Args:
        pred_logits: ``(B, Q, 2)``, class 0 = foreground.
        pred_spans: ``(B, Q, 2)`` normalised ``(center, width)``.
        video_mask: ``(B, T)`` bool, True = valid; spans are normalised by the valid clips.

    Returns:
        ``(start, end)``, two ``(B,)`` long tensors with ``0 <= start <= end < T_i``.
    """
    top = pred_logits.detach().softmax(-1)[..., 0].argmax(dim=1)  # (B,)
    span = pred_spans.detach()[torch.arange(len(top), device=top.device), top]  # (B, 2)
    num_clips = video_mask.sum(1)  # (B,)
    clips = torch.floor(span_cxw_to_xx(span) * num_clips[:, None]).long()
    last = (num_clips - 1).clamp(min=0)
    start = torch.minimum(clips[:, 0].clamp(min=0), last)
    end = torch.minimum(torch.maximum(clips[:, 1], start), last)
    return start, end


def official_moment_slice(
    pred_logits: Tensor, pred_spans: Tensor, length: int, clip_len: float = 1.0
) -> tuple[Tensor, Tensor]:
    """The top moment's clips as the official release slices them: ``(start, count)``.

    The release converts the top span to seconds with the padded length, ``xx * (T * clip_len)``,
    floors ``seconds / clip_len`` to ``(s, e)`` and takes ``video[b, s : e + 1]`` with Python's
    slice rules. This returns that slice as a non-negative start and a clip count.

    Args:
        pred_logits: ``(B, Q, 2)``, class 0 = foreground.
        pred_spans: ``(B, Q, 2)`` normalised ``(center, width)``.
        length: ``T``, the padded number of clips.
        clip_len: seconds per clip (the release's ``clip_length``).

    Returns:
        ``(start, count)``, two ``(B,)`` long tensors: clips ``start .. start + count - 1``
        (``count`` may be 0: an empty slice).
    """
    top = pred_logits.detach().softmax(-1)[..., 0].argmax(dim=1)  # (B,)
    span = pred_spans.detach()[torch.arange(len(top), device=top.device), top]  # (B, 2)
    seconds = span_cxw_to_xx(span) * (length * clip_len)
    first, last = torch.floor(seconds / clip_len).long().unbind(-1)  # (B,), (B,)

    def python_index(i: Tensor) -> Tensor:  # a slice bound as Python resolves it
        return torch.where(i < 0, i + length, i).clamp(0, length)

    start, stop = python_index(first), python_index(last + 1)
    return start, (stop - start).clamp(min=0)


#: how :class:`MomentGRUHead` compares ``G'_v`` with the clips
SIMILARITIES = ("dot", "cosine")

#: which clips :class:`MomentGRUHead`'s GRU reads: the paper's moment or the release's slice
FORMS = ("paper", "official")


class MomentGRUHead(nn.Module):
    """Saliency from the clips of the top predicted moment through a GRU (section 3.5).

    Args:
        d_model: width ``d``.
        similarity: ``"dot"`` (the paper's ``S = G'_v V'^T``) or ``"cosine"`` (the same between
            unit vectors).
        form: ``"paper"`` (the state after the moment's last valid clip) or ``"official"``
            (the release's slice, GRU run over the padded length; module doc).
    """

    def __init__(self, d_model: int, similarity: str = "dot", form: str = "paper") -> None:
        super().__init__()
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got '{similarity}'")
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got '{form}'")
        self.similarity = similarity
        self.form = form
        self.gru = nn.GRU(d_model, d_model, num_layers=1, batch_first=True)
        self.saliency_proj = Linear(d_model, d_model)
        self.scale = 1.0 / math.sqrt(d_model)

    def moment_feature(self, video: Tensor, start: Tensor, end: Tensor) -> Tensor:
        """``G'_v`` ``(B, d)``: the GRU state after reading clips ``start .. end`` of ``video``.

        ``video`` ``(B, T, d)``; ``start``/``end`` ``(B,)`` inclusive clip indices.
        """
        batch, length, dim = video.shape
        lengths = end - start + 1  # (B,)
        steps = int(lengths.max())
        offsets = torch.arange(steps, device=video.device)
        idx = (start[:, None] + offsets).clamp(max=length - 1)  # (B, steps)
        inside = (offsets < lengths[:, None]).to(video.dtype).unsqueeze(-1)
        clips = video.gather(1, idx.unsqueeze(-1).expand(-1, -1, dim)) * inside  # left-aligned
        states, _ = self.gru(clips)  # (B, steps, d): the state after each clip
        return states[torch.arange(batch, device=video.device), lengths - 1]

    def official_moment_feature(self, video: Tensor, start: Tensor, count: Tensor) -> Tensor:
        """``G'_v`` ``(B, d)`` as the release computes it: clips ``start .. start + count - 1``
        of ``video`` ``(B, T, d)``, left-aligned, zero-padded to ``T`` steps, the GRU state after
        all ``T`` steps."""
        batch, length, dim = video.shape
        offsets = torch.arange(length, device=video.device)
        idx = (start[:, None] + offsets).clamp(max=length - 1)  # (B, T)
        inside = (offsets < count[:, None]).to(video.dtype).unsqueeze(-1)
        clips = video.gather(1, idx.unsqueeze(-1).expand(-1, -1, dim)) * inside
        _, hidden = self.gru(clips)  # (1, B, d)
        return hidden[-1]

    def forward(
        self,
        pred_logits: Tensor,
        pred_spans: Tensor,
        memory: Tensor,
        video: Tensor,
        video_mask: Tensor,
        clip_len: float = 1.0,
    ) -> Tensor:
        """Per-clip saliency.

        Args:
            pred_logits: ``(B, Q, 2)`` and ``pred_spans`` ``(B, Q, 2)``: the MR predictions.
            memory: ``(B, T, d)`` fused memory ``R'``.
            video: ``(B, T, d)`` unimodal clip features ``V'``.
            video_mask: ``(B, T)`` bool, True = valid.
            clip_len: seconds per clip (the official form converts spans through seconds).

        Returns:
            ``(B, T)`` saliency scores (meaningless at padded clips).
        """
        if self.form == "official":
            start, count = official_moment_slice(pred_logits, pred_spans, video.shape[1], clip_len)
            global_video = self.official_moment_feature(video, start, count)  # G'_v (B, d)
        else:
            start, end = top_moment_clips(pred_logits, pred_spans, video_mask)
            global_video = self.moment_feature(video, start, end)  # G'_v (B, d)
        if self.similarity == "cosine":
            global_video, video = F.normalize(global_video, dim=-1), F.normalize(video, dim=-1)
        similarity = torch.einsum("bd,btd->bt", global_video, video)  # S (B, T)
        weighted = self.saliency_proj(memory * similarity.unsqueeze(-1) + memory)  # M (B, T, d)
        return weighted.sum(-1) * self.scale
