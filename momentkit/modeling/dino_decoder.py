"""DINO-style anchor decoder: given content queries and anchors, a masked query self-attention.

DINO (Zhang et al., ICLR 2023) decodes three kinds of queries in one pass: the matching queries
(anchors from query selection, learned content), contrastive denoising groups (noised ground-truth
anchors, label-embedding content) and, with Co-DETR (Zong et al., ICCV 2023), the auxiliary
head's positive anchors. They must not see each other: the query self-attention takes a
``(B, L, L)`` mask (True = may attend), e.g. from
:func:`momentkit.models.sg_detr.query_group_mask`.

:class:`DINODecoder` is the DAB-style :class:`~momentkit.modeling.anchor_decoder.AnchorDecoder`
(sinusoidal anchor embedding, conditional cross-attention with content and position concatenated
per head, per-layer anchor refinement), whose ``tgt`` and ``allowed`` inputs carry what DINO
adds: the initial query content and the self-attention mask. DINO has no width-modulated
attention, so the anchor width does not rescale the positional query here.
"""

from __future__ import annotations

from typing import Any

from momentkit.modeling.anchor_decoder import AnchorDecoder


class DINODecoder(AnchorDecoder):
    """:class:`AnchorDecoder` without width modulation.

    Takes the arguments of :class:`AnchorDecoder` but ``modulate_width`` (always off);
    ``forward(memory, anchors, memory_pos, memory_mask, tgt, allowed)`` as
    :meth:`AnchorDecoder.forward`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, modulate_width=False, **kwargs)


__all__ = ["DINODecoder"]
