"""Transformer layers and stacks (DETR conventions, batch-first).

Every layer takes ``pre_norm``: ``False`` is the original post-norm transformer
(``x = norm(x + sublayer(x))``, the Moment-DETR/QD-DETR default), ``True`` the pre-norm variant
(``x = x + sublayer(norm(x))``); :func:`residual` applies either. Positions are added to queries
and keys, never to values. Masks are bool, True = valid. Shapes: ``B`` batch, ``L``/``S``
sequence lengths, ``d`` width.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from momentkit.modeling.attention import MultiheadAttention
from momentkit.modeling.dropout import Dropout
from momentkit.modeling.linear import Linear
from momentkit.modeling.packing import Packing, packing_of
from momentkit.modeling.prelu import PReLU
from momentkit.modeling.row_blocks import by_row_blocks

_ACTIVATIONS: dict[str, Callable[[], Callable[[Tensor], Tensor]]] = {
    "relu": lambda: F.relu,
    "gelu": lambda: F.gelu,
    "prelu": PReLU,  # one learnable slope (the official QD-/LD-/MS-DETR feed-forward activation)
}
ACTIVATIONS = tuple(_ACTIVATIONS)


def with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    """``x + pos``, or ``x`` when there is no position encoding."""
    return x if pos is None else x + pos


def residual(
    x: Tensor,
    sublayer: Callable[[Tensor], Tensor],
    norm: nn.Module,
    dropout: nn.Module,
    pre_norm: bool,
    source: Tensor | None = None,
) -> Tensor:
    """One residual sub-layer of a transformer layer: ``(..., d)`` -> ``(..., d)``.

    Pre-norm: ``x + dropout(sublayer(norm(x)))``; post-norm: ``norm(x + dropout(sublayer(x)))``.
    ``source``: what the sub-layer reads instead of ``x`` (default ``x``): the distinct rows
    ``x`` was expanded from, where the sub-layer does that expansion itself.
    """
    source = x if source is None else source
    if pre_norm:
        return x + dropout(sublayer(norm(source)))
    return norm(x + dropout(sublayer(source)))


def xavier_init_(module: nn.Module) -> None:
    """Xavier-uniform initialise every parameter of ``module`` with more than one dimension.

    DETR's (and Moment-DETR's / QD-DETR's) transformer initialisation.
    """
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class FeedForward(nn.Module):
    """``linear2(dropout(act(linear1(x))))``: ``(..., d)`` -> ``(..., d)``.

    ``act`` is ``relu``, ``gelu`` or ``prelu`` (a module with one learnable slope, initial 0.25).
    """

    def __init__(
        self, d_model: int, dim_feedforward: int, dropout: float = 0.1, activation: str = "relu"
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation '{activation}'; use one of {list(_ACTIVATIONS)}")
        self.linear1 = Linear(d_model, dim_feedforward)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model)
        self.activation = _ACTIVATIONS[activation]()

    def forward(self, x: Tensor) -> Tensor:
        """``(..., d)`` -> ``(..., d)`` (in evaluation mode without autograd, on blocks of rows:
        :func:`~momentkit.modeling.row_blocks.by_row_blocks`)."""
        return by_row_blocks(self._rows, x, self.linear1.out_features, self.training)

    def _rows(self, x: Tensor) -> Tensor:
        hidden = self.linear1(x)
        if self.activation is F.relu:  # in place: addmm's backward does not read its output
            hidden = F.relu_(hidden)
        else:
            hidden = self.activation(hidden)
        return self.linear2(self.dropout(hidden))


class TransformerEncoderLayer(nn.Module):
    """Self-attention + feed-forward."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        pre_norm: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout)
        self.ffn = FeedForward(d_model, dim_feedforward, dropout, activation)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(
        self,
        x: Tensor,
        pos: Tensor | None = None,
        mask: Tensor | None = None,
        packing: Packing | None = None,
    ) -> Tensor:
        """``x`` ``(B, L, d)``, ``pos`` ``(B, L, d)``, ``mask`` ``(B, L)`` -> ``(B, L, d)``.

        With ``packing`` (of ``mask``), ``x`` and ``pos`` are the valid rows ``(R, d)`` and so
        is the result (see :class:`~momentkit.modeling.packing.Packing`).
        """

        def attend(h: Tensor) -> Tensor:
            qk = with_pos(h, pos)
            return self.self_attn(qk, qk, h, mask, packing=packing)

        x = residual(x, attend, self.norm1, self.dropout1, self.pre_norm)
        return residual(x, self.ffn, self.norm2, self.dropout2, self.pre_norm)


class CrossAttentionLayer(nn.Module):
    """Queries attend to a separate context (e.g. video clips to query words) + feed-forward.

    Only the query sequence is updated; the context is read-only. With ``ffn_skip_norm`` (QD-DETR's
    text-to-video layer, post-norm only) the first LayerNorm feeds the feed-forward network but the
    feed-forward residual is added to the un-normalised attention sum:
    ``s = x + attn; x = norm2(s + ffn(norm1(s)))``. A ``gate`` scales each query's attention
    weights (see :class:`~momentkit.modeling.attention.MultiheadAttention`; SG-DETR's SGCA).
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        pre_norm: bool = False,
        ffn_skip_norm: bool = False,
    ) -> None:
        super().__init__()
        if pre_norm and ffn_skip_norm:
            raise ValueError(
                "ffn_skip_norm is a post-norm variant; it cannot be used with pre_norm"
            )
        self.cross_attn = MultiheadAttention(d_model, nhead, dropout)
        self.ffn = FeedForward(d_model, dim_feedforward, dropout, activation)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.pre_norm = pre_norm
        self.ffn_skip_norm = ffn_skip_norm

    def forward(
        self,
        x: Tensor,
        context: Tensor,
        pos: Tensor | None = None,
        context_pos: Tensor | None = None,
        context_mask: Tensor | None = None,
        gate: Tensor | None = None,
        *,
        allowed: Tensor | None = None,
        context_index: Tensor | None = None,
        query_index: Tensor | None = None,
    ) -> Tensor:
        """``x`` ``(B, L, d)`` attends to ``context`` ``(B, S, d)``; returns ``(B, L, d)``.

        ``pos`` ``(B, L, d)`` and ``context_pos`` ``(B, S, d)`` are added to queries and keys;
        ``context_mask`` ``(B, S)`` marks valid context tokens; ``gate`` ``(B, L)`` scales each
        query's attention weights (``None``: 1); ``allowed`` ``(B, H, L, S)`` (or a shape of
        :func:`~momentkit.modeling.attention.attention_mask`) bool, which query may attend to
        which context token, on top of ``context_mask`` (``None``: all). With
        ``context_index`` ``(B,)`` long, ``context`` and ``context_pos`` hold ``B0`` distinct
        items ``(B0, S, d)`` and item ``b`` attends to ``context[context_index[b]]`` (projected
        once per distinct item; ``context_mask`` stays per item ``b``). With ``query_index``
        ``(B,)`` long, ``x`` and ``pos`` likewise hold ``B0`` distinct items: item ``b`` is
        ``x[query_index[b]]``, whose attention query is projected once per distinct item.
        """
        key = with_pos(context, context_pos)
        rows = x  # the attention's input: the distinct items with query_index
        if query_index is not None:
            x = x.index_select(0, query_index)

        def attend(h: Tensor) -> Tensor:
            return self.cross_attn(
                with_pos(h, pos),
                key,
                context,
                context_mask,
                gate,
                allowed=allowed,
                key_index=context_index,
                query_index=query_index,
            )

        if self.ffn_skip_norm:
            s = x + self.dropout1(attend(rows))
            return self.norm2(s + self.dropout2(self.ffn(self.norm1(s))))
        x = residual(x, attend, self.norm1, self.dropout1, self.pre_norm, source=rows)
        return residual(x, self.ffn, self.norm2, self.dropout2, self.pre_norm)


class TransformerDecoderLayer(nn.Module):
    """DETR decoder layer: query self-attention, cross-attention to memory, feed-forward."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        pre_norm: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout)
        self.cross_attn = MultiheadAttention(d_model, nhead, dropout)
        self.ffn = FeedForward(d_model, dim_feedforward, dropout, activation)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.dropout3 = Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        query_pos: Tensor | None = None,
        memory_pos: Tensor | None = None,
        memory_mask: Tensor | None = None,
    ) -> Tensor:
        """``tgt`` ``(B, Q, d)`` queries, ``memory`` ``(B, S, d)``; returns ``(B, Q, d)``.

        ``query_pos`` ``(B or 1, Q, d)``, ``memory_pos`` ``(B, S, d)``, ``memory_mask`` ``(B, S)``.
        """
        key = with_pos(memory, memory_pos)

        def self_attend(h: Tensor) -> Tensor:
            qk = with_pos(h, query_pos)
            return self.self_attn(qk, qk, h)

        def cross_attend(h: Tensor) -> Tensor:
            return self.cross_attn(with_pos(h, query_pos), key, memory, memory_mask)

        tgt = residual(tgt, self_attend, self.norm1, self.dropout1, self.pre_norm)
        tgt = residual(tgt, cross_attend, self.norm2, self.dropout2, self.pre_norm)
        return residual(tgt, self.ffn, self.norm3, self.dropout3, self.pre_norm)


class TransformerEncoder(nn.Module):
    """A stack of :class:`TransformerEncoderLayer` (final LayerNorm only when pre-norm)."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        num_layers: int,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        pre_norm: bool = False,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation, pre_norm)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model) if pre_norm else None
        xavier_init_(self)

    def forward(
        self,
        x: Tensor,
        pos: Tensor | None = None,
        mask: Tensor | None = None,
        skip_padding: bool = False,
    ) -> Tensor:
        """``x`` ``(B, L, d)``, ``pos`` ``(B, L, d)``, ``mask`` ``(B, L)`` -> ``(B, L, d)``.

        ``skip_padding``: run every per-row step (projections, feed-forward, norms, dropout)
        on the valid rows only (:mod:`~momentkit.modeling.packing`); the valid outputs are the
        same, padded rows come out as zeros (the plain path's values there are not used by
        anything either, padding being masked as a key).
        """
        packing = packing_of(mask) if skip_padding else None
        if skip_padding and packing is None:
            mask = None  # no padding: nothing to mask either
        if packing is not None:
            x, pos = packing.pack(x), None if pos is None else packing.pack(pos)
        for layer in self.layers:
            x = layer(x, pos, mask, packing)
        x = self.norm(x) if self.norm is not None else x
        return packing.pad(x) if packing is not None else x


class CrossAttentionEncoder(nn.Module):
    """A stack of :class:`CrossAttentionLayer` (final LayerNorm only when pre-norm)."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        num_layers: int,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        pre_norm: bool = False,
        ffn_skip_norm: bool = False,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            CrossAttentionLayer(
                d_model, nhead, dim_feedforward, dropout, activation, pre_norm, ffn_skip_norm
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model) if pre_norm else None
        xavier_init_(self)

    def forward(
        self,
        x: Tensor,
        context: Tensor,
        pos: Tensor | None = None,
        context_pos: Tensor | None = None,
        context_mask: Tensor | None = None,
        gate: Tensor | None = None,
        *,
        allowed: Tensor | None = None,
        context_index: Tensor | None = None,
        query_index: Tensor | None = None,
    ) -> Tensor:
        """``x`` ``(B, L, d)`` attends to ``context`` ``(B, S, d)`` in each layer; ``(B, L, d)``.

        ``gate`` ``(B, L)``: the scale of each query's attention weights in every layer;
        ``allowed``: a query-by-context bool mask applied in every layer; ``context_index``:
        which of the distinct ``context`` items each ``x`` item attends to; ``query_index``:
        ``x`` and ``pos`` hold distinct items ``(B0, L, d)``, item ``b`` being
        ``x[query_index[b]]`` (the first layer projects its queries once per distinct item;
        see :meth:`CrossAttentionLayer.forward`).
        """
        every_pos = pos
        if query_index is not None:
            every_pos = None if pos is None else pos.index_select(0, query_index)
            if not self.layers:
                x = x.index_select(0, query_index)
        for i, layer in enumerate(self.layers):
            first = query_index is not None and i == 0
            x = layer(
                x,
                context,
                pos if first else every_pos,
                context_pos,
                context_mask,
                gate,
                allowed=allowed,
                context_index=context_index,
                query_index=query_index if first else None,
            )
        return self.norm(x) if self.norm is not None else x


class TransformerDecoder(nn.Module):
    """A stack of :class:`TransformerDecoderLayer` returning every layer's normalised output.

    The per-layer outputs feed the auxiliary (deep-supervision) losses.

    Args:
        loops: LD-DETR's Loop Decoder (Zhao et al. 2025, section 3.4): run the whole stack
            ``loops`` times, the final normalised output of one pass being the query content
            ``tgt`` of the next. No parameters are added; ``1`` is the plain DETR decoder.
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
        loops: int = 1,
    ) -> None:
        super().__init__()
        if loops < 1:
            raise ValueError(f"a decoder runs at least one loop, got loops={loops}")
        self.layers = nn.ModuleList(
            TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, activation, pre_norm)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.loops = loops
        xavier_init_(self)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        query_pos: Tensor | None = None,
        memory_pos: Tensor | None = None,
        memory_mask: Tensor | None = None,
    ) -> Tensor:
        """``tgt`` ``(B, Q, d)``, ``memory`` ``(B, S, d)`` -> ``(num_layers, B, Q, d)``.

        With ``loops > 1`` the returned layer outputs are those of the last loop.
        """
        for _ in range(self.loops):
            outputs = []
            for layer in self.layers:
                tgt = layer(tgt, memory, query_pos, memory_pos, memory_mask)
                outputs.append(self.norm(tgt))
            tgt = outputs[-1]
        return torch.stack(outputs)
