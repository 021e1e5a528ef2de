"""An anchor decoder with given content queries and a DETR-style query self-attention mask.

Two later designs need more of :class:`~momentkit.modeling.anchor_decoder.AnchorDecoder`
(DAB-DETR / QD-DETR) than every query attending to every other:

- *query selection* (MS-DETR's MTCD, DINO's two-stage): the decoder starts from content
  queries taken from the encoder, ``tgt`` ``(B, L, d)``;
- *denoising* (DN-DETR / DINO, :mod:`momentkit.modeling.denoising`): denoising groups and
  matching queries share the decoder but must not see each other, a ``(L, L)`` self-attention
  mask.

:class:`MaskedAnchorDecoder` is :class:`AnchorDecoder` (identical parameters and state-dict
layout; without ``tgt`` and mask it computes what ``AnchorDecoder`` computes, up to the anchor
width being clamped at ``MIN_ANCHOR_WIDTH`` in the width modulation, which noised denoising spans
can reach) taking the masks in the DETR convention (True = blocked) plus the valid queries, which
:func:`allowed_pairs` turns into the decoder's "may attend" mask.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from momentkit.modeling.anchor_decoder import AnchorDecoder

#: lower bound of the anchor width in the width modulation
MIN_ANCHOR_WIDTH = 1e-4


def allowed_pairs(self_attn_mask: Tensor | None, query_mask: Tensor | None) -> Tensor | None:
    """The ``(B or 1, 1, L, L)`` "may attend" mask of a decoder's query self-attention.

    Args:
        self_attn_mask: ``(L, L)`` bool, **True = blocked** (DETR / ``attn_mask`` convention).
        query_mask: ``(B, L)`` bool, True for queries that exist as keys (padding slots of
            denoising groups are False).

    Returns:
        ``None`` when nothing is masked. A query whose every key is blocked keeps itself, so no
        softmax row is empty.
    """
    if self_attn_mask is None and (query_mask is None or bool(query_mask.all())):
        return None
    allowed = None if self_attn_mask is None else ~self_attn_mask[None]  # (1, L, L)
    if query_mask is not None:
        keys = query_mask[:, None, :]  # (B, 1, L)
        allowed = keys if allowed is None else allowed & keys
    length = allowed.shape[-1]
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=allowed.device)
    return allowed[:, None]


class MaskedAnchorDecoder(AnchorDecoder):
    """:class:`AnchorDecoder` with initial content queries and a DETR-style self-attention mask.

    Same constructor arguments and parameters as :class:`AnchorDecoder` (``min_anchor_width`` is
    :data:`MIN_ANCHOR_WIDTH`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, min_anchor_width=MIN_ANCHOR_WIDTH, **kwargs)

    def forward(  # type: ignore[override]
        self,
        memory: Tensor,
        anchors: Tensor,
        memory_pos: Tensor,
        memory_mask: Tensor | None = None,
        tgt: Tensor | None = None,
        self_attn_mask: Tensor | None = None,
        query_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Decode ``L`` queries against ``memory``: :meth:`AnchorDecoder.forward` (same shapes
        and outputs) with the self-attention mask in the DETR convention.

        ``self_attn_mask`` ``(L, L)`` bool: True = query ``i`` may not attend to query ``j``;
        ``query_mask`` ``(B, L)`` bool: False for queries other queries must ignore (see
        :func:`allowed_pairs`).
        """
        allowed = allowed_pairs(self_attn_mask, query_mask)
        return super().forward(memory, anchors, memory_pos, memory_mask, tgt, allowed)


__all__ = ["MIN_ANCHOR_WIDTH", "MaskedAnchorDecoder", "allowed_pairs"]
