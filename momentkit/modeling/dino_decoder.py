"""DINO-style anchor decoder: given content queries and anchors, a masked query self-attention.

DINO (Zhang et al., ICLR 2023) decodes three kinds of queries in one pass: the matching queries
(anchors from query selection, learned content), contrastive denoising groups (noised ground-truth
anchors, label-embedding content) and, with Co-DETR (Zong et al., ICCV 2023), the auxiliary
head's positive anchors. They must not see each other: the query self-attention takes a
``(B, L, L)`` mask (True = may attend), e.g. from
:attr:`momentkit.modeling.denoising.DenoisingQueries.attn_mask`.

:class:`DINODecoder` is the DAB-style :class:`~momentkit.modeling.anchor_decoder.AnchorDecoder`
(sinusoidal anchor embedding, conditional cross-attention with content and position concatenated
per head, per-layer anchor refinement) with the two things DINO adds: the initial query content is
an input instead of zeros, and the self-attention is masked. DINO has no width-modulated
attention, so the anchor width does not rescale the positional query here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from momentkit.modeling.anchor_decoder import AnchorDecoder, AnchorDecoderLayer, inverse_sigmoid
from momentkit.modeling.attention import merge_heads, split_heads
from momentkit.modeling.dropout import fast_dropout
from momentkit.modeling.position_encoding import span_sine_encoding
from momentkit.modeling.transformer import xavier_init_


def masked_attention(
    q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, dropout: float = 0.0, training: bool = False
) -> Tensor:
    """``softmax(q k^T / sqrt(Dk))`` restricted to ``allowed`` pairs, times ``v``.

    The same kernel as :func:`~momentkit.modeling.attention.scaled_dot_attention` with a full
    query-by-key mask instead of a key mask.

    Args:
        q: ``(B, H, L, Dk)``; ``k``: ``(B, H, S, Dk)``; ``v``: ``(B, H, S, Dv)``.
        allowed: ``(B, L, S)`` or ``(L, S)`` bool, True where query ``l`` may attend to key
            ``s``. Every row needs at least one True.
        dropout: drop probability of the attention weights (only when ``training``).

    Returns:
        ``(B, H, L, Dv)``.
    """
    mask = allowed.unsqueeze(-3)  # (B or 1, 1, L, S)
    if not training or dropout == 0.0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout if training else 0.0
        )
    scores = torch.matmul(q * (1.0 / math.sqrt(q.shape[-1])), k.transpose(-2, -1))
    weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    return torch.matmul(fast_dropout(weights, dropout, True), v)


class MaskedAnchorDecoderLayer(AnchorDecoderLayer):
    """:class:`AnchorDecoderLayer` whose query self-attention takes an attention mask."""

    def _masked_self_attention(
        self, tgt: Tensor, query_pos: Tensor, allowed: Tensor | None
    ) -> Tensor:
        if allowed is None:
            return self._self_attention(tgt, query_pos)
        h = self.nhead
        q = self.sa_qcontent_proj(tgt) + self.sa_qpos_proj(query_pos)
        k = self.sa_kcontent_proj(tgt) + self.sa_kpos_proj(query_pos)
        v = self.sa_v_proj(tgt)
        attn = self.self_attn
        out = masked_attention(
            split_heads(q, h),
            split_heads(k, h),
            split_heads(v, h),
            allowed,
            attn.dropout,
            self.training,
        )
        return attn.out_proj(merge_heads(out))

    def forward(  # type: ignore[override]
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_pos: Tensor,
        memory_mask: Tensor | None,
        query_pos: Tensor,
        query_sine: Tensor,
        allowed: Tensor | None = None,
    ) -> Tensor:
        """One decoding step; see :meth:`AnchorDecoderLayer.forward`.

        ``allowed`` ``(B, Q, Q)`` bool: which queries each query may attend to (``None``: all).
        """
        if self.pre_norm:
            x = self.norm1(tgt)
            tgt = tgt + self.dropout1(self._masked_self_attention(x, query_pos, allowed))
            x = self.norm2(tgt)
            ca = self._cross_attention(x, memory, memory_pos, memory_mask, query_pos, query_sine)
            tgt = tgt + self.dropout2(ca)
            return tgt + self.dropout3(self.ffn(self.norm3(tgt)))
        sa = self._masked_self_attention(tgt, query_pos, allowed)
        tgt = self.norm1(tgt + self.dropout1(sa))
        ca = self._cross_attention(tgt, memory, memory_pos, memory_mask, query_pos, query_sine)
        tgt = self.norm2(tgt + self.dropout2(ca))
        return self.norm3(tgt + self.dropout3(self.ffn(tgt)))


class DINODecoder(AnchorDecoder):
    """A stack of :class:`MaskedAnchorDecoderLayer` refining per-query anchors layer by layer.

    Args: as :class:`AnchorDecoder` (``modulate_width`` is off: DINO has no width modulation).
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        num_layers: int,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        pre_norm: bool = False,
        keep_query_pos: bool = False,
    ) -> None:
        super().__init__(
            d_model,
            nhead,
            num_layers,
            dim_feedforward,
            dropout,
            activation,
            pre_norm,
            keep_query_pos,
            modulate_width=False,
        )
        self.layers = nn.ModuleList(
            MaskedAnchorDecoderLayer(
                d_model,
                nhead,
                dim_feedforward,
                dropout,
                activation,
                pre_norm,
                query_pos_proj=keep_query_pos or i == 0,
            )
            for i in range(num_layers)
        )
        xavier_init_(self)
        nn.init.zeros_(self.span_refine.layers[-1].bias)

    def forward(  # type: ignore[override]
        self,
        memory: Tensor,
        anchors: Tensor,
        memory_pos: Tensor,
        memory_mask: Tensor | None = None,
        tgt: Tensor | None = None,
        allowed: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Decode ``Q`` queries against ``memory``.

        Args:
            memory: ``(B, S, d)``; ``memory_pos`` ``(B, S, d)``; ``memory_mask`` ``(B, S)``.
            anchors: ``(B, Q, 2)`` (or ``(Q, 2)``) anchors before the sigmoid (center, width).
            tgt: ``(B, Q, d)`` initial query content (``None``: zeros, as DAB-DETR).
            allowed: ``(B, Q, Q)`` or ``(Q, Q)`` bool self-attention mask, True = may attend.

        Returns:
            ``hs`` ``(num_layers, B, Q, d)`` and ``references`` ``(num_layers, B, Q, 2)`` as
            :meth:`AnchorDecoder.forward`.
        """
        batch = memory.shape[0]
        if anchors.dim() == 2:
            anchors = anchors.unsqueeze(0).expand(batch, -1, -1)
        ref = anchors.sigmoid()
        if tgt is None:
            tgt = memory.new_zeros(batch, anchors.shape[1], self.d_model)
        references, outputs = [ref], []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            sine = span_sine_encoding(ref, self.d_model)
            query_pos = self.ref_point_head(sine)
            if i > 0:
                sine = sine * self.query_scale(tgt)
            tgt = layer(tgt, memory, memory_pos, memory_mask, query_pos, sine, allowed)
            new_ref = (self.span_refine(tgt) + inverse_sigmoid(ref)).sigmoid()
            if i != last:
                references.append(new_ref)
            ref = new_ref.detach()
            outputs.append(self.norm(tgt))
        return torch.stack(outputs), torch.stack(references)
