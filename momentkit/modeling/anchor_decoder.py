"""Anchor (DAB-DETR style) decoder: ``(center, width)`` anchors refined layer by layer.

Each layer turns the current anchors into a sinusoidal embedding, derives the query position from
it, attends to the memory with conditional cross-attention (content and position parts
concatenated per head) and predicts an anchor offset in logit space. The next layer sees the
refined anchors (gradient-detached, as in DAB-DETR).

One :class:`AnchorDecoder` serves every anchor-decoding model through its options:

- QD-DETR / LD-DETR: learned anchors, zero initial content, width-modulated attention
  (``modulate_width``) and LD-DETR's Loop Decoder (``loops``);
- query selection (MS-DETR's MTCD, DINO's two-stage): the initial content queries ``tgt`` are an
  input;
- denoising (DN-DETR / DINO, :mod:`momentkit.modeling.denoising`) and Co-DETR's auxiliary
  positive queries: query groups that must not see each other share the decoder through a query
  self-attention mask ``allowed`` (True = may attend);
- :class:`~momentkit.modeling.dino_decoder.DINODecoder` (SG-DETR) has no width modulation;
  :class:`~momentkit.modeling.masked_anchor_decoder.MaskedAnchorDecoder` (MS-DETR) clamps the
  anchor width of the modulation (``min_anchor_width``: noised denoising spans can reach ~0) and
  takes DETR-style masks.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from momentkit.modeling.attention import ProjectedAttention, split_heads
from momentkit.modeling.dropout import Dropout
from momentkit.modeling.linear import Linear
from momentkit.modeling.mlp import MLP
from momentkit.modeling.position_encoding import span_sine_encoding
from momentkit.modeling.transformer import FeedForward, residual, xavier_init_


def inverse_sigmoid(x: Tensor, eps: float = 1e-3) -> Tensor:
    """``logit(x)`` with ``x`` clamped to ``[0, 1]`` and both ``x`` and ``1 - x`` to ``>= eps``."""
    x = x.clamp(0.0, 1.0)
    return torch.log(x.clamp(min=eps) / (1.0 - x).clamp(min=eps))


class AnchorDecoderLayer(nn.Module):
    """Conditional-DETR decoder layer: self-attention, position-concatenated cross-attention, FFN.

    Args:
        query_pos_proj: add the projected query position to the cross-attention content query
            (DAB-DETR does this in the first layer only).
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        pre_norm: bool = False,
        query_pos_proj: bool = False,
    ) -> None:
        super().__init__()
        self.nhead = nhead
        self.pre_norm = pre_norm
        # self-attention projections
        self.sa_qcontent_proj = Linear(d_model, d_model)
        self.sa_qpos_proj = Linear(d_model, d_model)
        self.sa_kcontent_proj = Linear(d_model, d_model)
        self.sa_kpos_proj = Linear(d_model, d_model)
        self.sa_v_proj = Linear(d_model, d_model)
        self.self_attn = ProjectedAttention(d_model, nhead, dropout)
        # cross-attention projections
        self.ca_qcontent_proj = Linear(d_model, d_model)
        self.ca_qpos_proj = Linear(d_model, d_model) if query_pos_proj else None
        self.ca_kcontent_proj = Linear(d_model, d_model)
        self.ca_kpos_proj = Linear(d_model, d_model)
        self.ca_v_proj = Linear(d_model, d_model)
        self.ca_qpos_sine_proj = Linear(d_model, d_model)
        self.cross_attn = ProjectedAttention(d_model, nhead, dropout)
        self.ffn = FeedForward(d_model, dim_feedforward, dropout, activation)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.dropout3 = Dropout(dropout)

    def _self_attention(self, tgt: Tensor, query_pos: Tensor, allowed: Tensor | None) -> Tensor:
        h = self.nhead
        q = self.sa_qcontent_proj(tgt) + self.sa_qpos_proj(query_pos)
        k = self.sa_kcontent_proj(tgt) + self.sa_kpos_proj(query_pos)
        v = self.sa_v_proj(tgt)
        return self.self_attn(
            split_heads(q, h), split_heads(k, h), split_heads(v, h), allowed=allowed
        )

    def _cross_attention(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_pos: Tensor,
        memory_mask: Tensor | None,
        query_pos: Tensor,
        query_sine: Tensor,
    ) -> Tensor:
        h = self.nhead
        q = self.ca_qcontent_proj(tgt)
        k = self.ca_kcontent_proj(memory)
        k_pos = self.ca_kpos_proj(memory_pos)
        if self.ca_qpos_proj is not None:
            q = q + self.ca_qpos_proj(query_pos)
            k = k + k_pos
        q = torch.cat([split_heads(q, h), split_heads(self.ca_qpos_sine_proj(query_sine), h)], -1)
        k = torch.cat([split_heads(k, h), split_heads(k_pos, h)], -1)
        v = split_heads(self.ca_v_proj(memory), h)
        return self.cross_attn(q, k, v, memory_mask)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_pos: Tensor,
        memory_mask: Tensor | None,
        query_pos: Tensor,
        query_sine: Tensor,
        allowed: Tensor | None = None,
    ) -> Tensor:
        """One decoding step.

        Args:
            tgt: ``(B, Q, d)`` query content.
            memory: ``(B, S, d)`` encoder output; ``memory_pos`` its ``(B, S, d)`` positions and
                ``memory_mask`` ``(B, S)`` its valid tokens.
            query_pos: ``(B, Q, d)`` query positions (from the anchors).
            query_sine: ``(B, Q, d)`` (scaled) sinusoidal anchor embedding.
            allowed: ``(B or 1, 1, Q, Q)``, ``(B, Q, Q)`` or ``(Q, Q)`` bool, which queries each
                query may attend to in the self-attention (``None``: all).

        Returns:
            ``(B, Q, d)``.
        """

        def self_attend(x: Tensor) -> Tensor:
            return self._self_attention(x, query_pos, allowed)

        def cross_attend(x: Tensor) -> Tensor:
            return self._cross_attention(x, memory, memory_pos, memory_mask, query_pos, query_sine)

        tgt = residual(tgt, self_attend, self.norm1, self.dropout1, self.pre_norm)
        tgt = residual(tgt, cross_attend, self.norm2, self.dropout2, self.pre_norm)
        return residual(tgt, self.ffn, self.norm3, self.dropout3, self.pre_norm)


class AnchorDecoder(nn.Module):
    """A stack of :class:`AnchorDecoderLayer` with per-layer anchor refinement.

    Args:
        keep_query_pos: give every layer (not only the first) the projected query position.
        modulate_width: scale the anchor embedding by a predicted reference width over the anchor
            width (DAB-DETR's width-modulated attention; QD-DETR uses it, DINO does not).
        loops: LD-DETR's Loop Decoder (Zhao et al. 2025, section 3.4): run the whole stack
            ``loops`` times from the same learned anchors, the final normalised output of one
            pass being the query content of the next. No parameters are added; ``1`` is the
            plain anchor decoder.
        min_anchor_width: lower bound of the anchor width the width modulation divides by
            (``0``: none; noised denoising anchors can be ~0 wide).
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
        loops: int = 1,
        min_anchor_width: float = 0.0,
    ) -> None:
        super().__init__()
        if loops < 1:
            raise ValueError(f"a decoder runs at least one loop, got loops={loops}")
        self.d_model = d_model
        self.loops = loops
        self.min_anchor_width = min_anchor_width
        self.layers = nn.ModuleList(
            AnchorDecoderLayer(
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
        self.norm = nn.LayerNorm(d_model)
        self.query_scale = MLP(d_model, d_model, d_model, 2)
        self.ref_point_head = MLP(d_model, d_model, d_model, 2)
        self.ref_anchor_head = MLP(d_model, d_model, 1, 2) if modulate_width else None
        self.span_refine = MLP(d_model, d_model, 2, 3)
        xavier_init_(self)
        nn.init.zeros_(self.span_refine.layers[-1].bias)

    def forward(
        self,
        memory: Tensor,
        anchors: Tensor,
        memory_pos: Tensor,
        memory_mask: Tensor | None = None,
        tgt: Tensor | None = None,
        allowed: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Decode ``Q`` anchors against ``memory``.

        Args:
            memory: ``(B, S, d)``; ``memory_pos`` ``(B, S, d)``; ``memory_mask`` ``(B, S)``.
            anchors: ``(Q, 2)`` or ``(B, Q, 2)`` anchors before the sigmoid (``center, width``).
            tgt: ``(B, Q, d)`` initial query content (default zeros, as DAB-DETR).
            allowed: ``(B or 1, 1, Q, Q)``, ``(B, Q, Q)`` or ``(Q, Q)`` bool query self-attention
                mask, True = may attend (``None``: every query sees every other).

        Returns:
            ``hs`` ``(num_layers, B, Q, d)`` normalised layer outputs and ``references``
            ``(num_layers, B, Q, 2)``: the anchors each layer's output refines (the initial
            anchors for layer 0, then each layer's refined anchors, not detached). With
            ``loops > 1``, those of the last loop.
        """
        batch = memory.shape[0]
        if anchors.dim() == 2:
            anchors = anchors.unsqueeze(0).expand(batch, -1, -1)
        if tgt is None:
            tgt = memory.new_zeros(batch, anchors.shape[1], self.d_model)
        for _ in range(self.loops):
            hs, references = self._decode(memory, anchors, memory_pos, memory_mask, tgt, allowed)
            tgt = hs[-1]
        return hs, references

    def _decode(
        self,
        memory: Tensor,
        anchors: Tensor,
        memory_pos: Tensor,
        memory_mask: Tensor | None,
        tgt: Tensor,
        allowed: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """One pass through the stack (see :meth:`forward`); ``anchors`` ``(B, Q, 2)``."""
        ref = anchors.sigmoid()
        references, outputs = [ref], []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            sine = span_sine_encoding(ref, self.d_model)  # Phi(R): the positional query's source
            query_pos = self.ref_point_head(sine)
            if i > 0:
                sine = sine * self.query_scale(tgt)
            if self.ref_anchor_head is not None:
                ref_width = self.ref_anchor_head(tgt).sigmoid()  # (B, Q, 1)
                sine = sine * (ref_width / self._anchor_width(ref))
            tgt = layer(tgt, memory, memory_pos, memory_mask, query_pos, sine, allowed)
            new_ref = (self.span_refine(tgt) + inverse_sigmoid(ref)).sigmoid()
            if i != last:
                references.append(new_ref)
            ref = new_ref.detach()
            outputs.append(self.norm(tgt))
        return torch.stack(outputs), torch.stack(references)

    def _anchor_width(self, ref: Tensor) -> Tensor:
        """``(B, Q, 1)`` width of the ``(B, Q, 2)`` anchors, at least ``min_anchor_width``."""
        width = ref[..., 1:2]
        return width.clamp(min=self.min_anchor_width) if self.min_anchor_width > 0 else width
