"""An anchor decoder with given content queries and a query self-attention mask.

:class:`~momentkit.modeling.anchor_decoder.AnchorDecoder` (DAB-DETR / QD-DETR) lets every query
attend to every other. Two later designs need more:

- *query selection* (MS-DETR's MTCD, DINO's two-stage): the decoder starts from content
  queries taken from the encoder, ``tgt`` ``(B, L, d)``;
- *denoising* (DN-DETR / DINO, :mod:`momentkit.modeling.denoising`): denoising groups and
  matching queries share the decoder but must not see each other, a ``(L, L)`` self-attention
  mask.

:class:`MaskedAnchorDecoder` is the same network as :class:`AnchorDecoder` (identical parameters
and state-dict layout; without ``tgt`` and mask it computes what ``AnchorDecoder`` computes, up
to the anchor width being clamped at 1e-4 in the width modulation, which noised denoising spans
can reach) with those two inputs added.
"""

from __future__ import annotations

import math

import torch
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

    Args:
        q: ``(B, H, L, Dk)``; k: ``(B, H, S, Dk)``; v: ``(B, H, S, Dv)``.
        allowed: ``(B or 1, 1, L, S)`` bool, True where query ``l`` may attend to key ``s``.
            Every row needs at least one allowed key.
        dropout: drop probability of the attention weights (only when ``training``).

    Returns:
        ``(B, H, L, Dv)``.
    """
    if not training or dropout == 0.0 or q.device.type != "cpu":
        p = dropout if training else 0.0
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=p
        )
    scores = torch.matmul(q * (1.0 / math.sqrt(q.shape[-1])), k.transpose(-2, -1))
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return torch.matmul(fast_dropout(weights, dropout, True), v)


class MaskedAnchorDecoderLayer(AnchorDecoderLayer):
    """:class:`AnchorDecoderLayer` whose query self-attention takes an ``allowed`` mask."""

    def _masked_self_attention(self, tgt: Tensor, query_pos: Tensor, allowed: Tensor) -> Tensor:
        h = self.nhead
        q = self.sa_qcontent_proj(tgt) + self.sa_qpos_proj(query_pos)
        k = self.sa_kcontent_proj(tgt) + self.sa_kpos_proj(query_pos)
        v = self.sa_v_proj(tgt)
        attn = self.self_attn
        out = masked_attention(
            split_heads(q, h), split_heads(k, h), split_heads(v, h),
            allowed, attn.dropout, self.training,
        )  # fmt: skip
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
        """One decoding step; ``allowed`` ``(B or 1, 1, L, L)`` (``None``: all pairs).

        The other arguments are those of :meth:`AnchorDecoderLayer.forward`.
        """
        if allowed is None:
            return super().forward(tgt, memory, memory_pos, memory_mask, query_pos, query_sine)
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
    """:class:`AnchorDecoder` with initial content queries and a self-attention mask.

    Same constructor arguments and parameters as :class:`AnchorDecoder`.
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
        modulate_width: bool = True,
    ) -> None:
        super().__init__(
            d_model, nhead, num_layers, dim_feedforward, dropout, activation, pre_norm,
            keep_query_pos, modulate_width,
        )  # fmt: skip
        self.layers = nn.ModuleList(
            MaskedAnchorDecoderLayer(
                d_model,
                nhead,
                dim_feedforward,
                dropout,
                activation,
                pre_norm,
                query_pos_proj=keep_query_pos or i == 0,
            )  # fmt: skip
            for i in range(num_layers)
        )
        xavier_init_(self.layers)

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
        """Decode ``L`` queries against ``memory``.

        Args:
            memory: ``(B, S, d)``; ``memory_pos`` ``(B, S, d)``; ``memory_mask`` ``(B, S)``.
            anchors: ``(L, 2)`` or ``(B, L, 2)`` anchors before the sigmoid.
            tgt: ``(B, L, d)`` initial content queries (``None``: zeros, as AnchorDecoder).
            self_attn_mask: ``(L, L)`` bool, True = query ``i`` may not attend to query ``j``.
            query_mask: ``(B, L)`` bool, False for queries other queries must ignore.

        Returns:
            ``hs`` ``(num_layers, B, L, d)`` and ``references`` ``(num_layers, B, L, 2)``, as
            :meth:`AnchorDecoder.forward`.
        """
        batch = memory.shape[0]
        if anchors.dim() == 2:
            anchors = anchors.unsqueeze(0).expand(batch, -1, -1)
        if tgt is None:
            tgt = memory.new_zeros(batch, anchors.shape[1], self.d_model)
        allowed = allowed_pairs(self_attn_mask, query_mask)
        ref = anchors.sigmoid()
        references, outputs = [ref], []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            sine = span_sine_encoding(ref, self.d_model)  # Phi(R): the positional query's source
            query_pos = self.ref_point_head(sine)
            if i > 0:
                sine = sine * self.query_scale(tgt)
            if self.ref_anchor_head is not None:
                ref_width = self.ref_anchor_head(tgt).sigmoid()  # (B, L, 1)
                sine = sine * (ref_width / ref[..., 1:2].clamp(min=1e-4))
            tgt = layer(tgt, memory, memory_pos, memory_mask, query_pos, sine, allowed)
            new_ref = (self.span_refine(tgt) + inverse_sigmoid(ref)).sigmoid()
            if i != last:
                references.append(new_ref)
            ref = new_ref.detach()
            outputs.append(self.norm(tgt))
        return torch.stack(outputs), torch.stack(references)
