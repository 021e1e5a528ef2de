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


#: how :class:`MomentGRUHead` compares ``G'_v`` with the clips
SIMILARITIES = ("dot", "cosine")


class MomentGRUHead(nn.Module):
    """Saliency from the clips of the top predicted moment through a GRU (section 3.5).

    Args:
        d_model: width ``d``.
        similarity: ``"dot"`` (the paper's ``S = G'_v V'^T``) or ``"cosine"`` (the same between
            unit vectors).
    """

    def __init__(self, d_model: int, similarity: str = "dot") -> None:
        super().__init__()
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got '{similarity}'")
        self.similarity = similarity
        self.gru = nn.GRU(d_model, d_model, num_layers=1, batch_first=True)
        self.saliency_proj = nn.Linear(d_model, d_model)
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

    def forward(
        self,
        pred_logits: Tensor,
        pred_spans: Tensor,
        memory: Tensor,
        video: Tensor,
        video_mask: Tensor,
    ) -> Tensor:
        """Per-clip saliency.

        Args:
            pred_logits: ``(B, Q, 2)`` and ``pred_spans`` ``(B, Q, 2)``: the MR predictions.
            memory: ``(B, T, d)`` fused memory ``R'``.
            video: ``(B, T, d)`` unimodal clip features ``V'``.
            video_mask: ``(B, T)`` bool, True = valid.

        Returns:
            ``(B, T)`` saliency scores (meaningless at padded clips).
        """
        start, end = top_moment_clips(pred_logits, pred_spans, video_mask)
        global_video = self.moment_feature(video, start, end)  # G'_v (B, d)
        if self.similarity == "cosine":
            global_video, video = F.normalize(global_video, dim=-1), F.normalize(video, dim=-1)
        similarity = torch.einsum("bd,btd->bt", global_video, video)  # S (B, T)
        weighted = self.saliency_proj(memory * similarity.unsqueeze(-1) + memory)  # M (B, T, d)
        return weighted.sum(-1) * self.scale
