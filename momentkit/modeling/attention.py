"""Multi-head attention, batch-first, with boolean key masks (True = valid).

:func:`scaled_dot_attention` is the one attention kernel of the package: every attention block
(self-, cross- and the anchor decoder's concatenated-position attention) calls it. Without
dropout it is PyTorch's fused ``scaled_dot_product_attention``; with dropout on CPU the softmax
weights are dropped with :func:`~momentkit.modeling.dropout.fast_dropout`, because the fused CPU
path draws its mask with the slow generic Bernoulli sampler.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from momentkit.modeling import row_blocks
from momentkit.modeling.dropout import fast_dropout
from momentkit.modeling.linear import Linear, linear
from momentkit.modeling.packing import Packing


def split_heads(x: Tensor, nhead: int) -> Tensor:
    """``(B, L, H * Dh)`` -> ``(B, H, L, Dh)``."""
    batch, length, dim = x.shape
    return x.view(batch, length, nhead, dim // nhead).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """``(B, H, L, Dh)`` -> ``(B, L, H * Dh)``."""
    batch, nhead, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, nhead * head_dim)


def attention_mask(key_mask: Tensor | None, allowed: Tensor | None) -> Tensor | None:
    """The boolean mask :func:`scaled_dot_attention` applies (True = may attend), or ``None``.

    Args:
        key_mask: ``(B, S)``, True for keys that may be attended to.
        allowed: ``(B or 1, 1, L, S)``, ``(B, L, S)`` or ``(L, S)``, True where query ``l`` may
            attend to key ``s`` (e.g. a decoder's denoising groups).

    Returns:
        A mask broadcastable to ``(B, H, L, S)``: both masks combined.
    """
    mask = key_mask[:, None, None, :] if key_mask is not None else None
    if allowed is not None:
        pairs = allowed if allowed.dim() == 4 else allowed.unsqueeze(-3)
        mask = pairs if mask is None else mask & pairs
    return mask


def scaled_dot_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_mask: Tensor | None = None,
    dropout: float = 0.0,
    training: bool = False,
    allowed: Tensor | None = None,
) -> Tensor:
    """``softmax(q k^T / sqrt(Dk) + mask) v`` with dropout on the attention weights.

    Args:
        q: ``(B, H, L, Dk)`` queries.
        k: ``(B, H, S, Dk)`` keys.
        v: ``(B, H, S, Dv)`` values.
        key_mask: ``(B, S)`` bool, True for keys that may be attended to.
        dropout: drop probability of the attention weights (only when ``training``).
        allowed: query-by-key bool mask, True where query ``l`` may attend to key ``s``
            (shapes in :func:`attention_mask`). Every row needs at least one valid key.

    Returns:
        ``(B, H, L, Dv)``.
    """
    mask = attention_mask(key_mask, allowed)
    if not training or dropout == 0.0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout if training else 0.0
        )
    scores = torch.matmul(q * (1.0 / math.sqrt(q.shape[-1])), k.transpose(-2, -1))
    if mask is not None:
        # an additive 0 / -inf bias at the mask's broadcast shape: the same scores as
        # ``masked_fill(~mask, -inf)``, forward and backward ~2x cheaper on CPU
        scores = scores + torch.zeros(mask.shape, dtype=scores.dtype).masked_fill_(~mask, -math.inf)
    weights = fast_dropout(scores.softmax(-1), dropout, True)
    return torch.matmul(weights, v)


#: most items whose packed self-attention runs item by item: each item is one attention call
#: (one parallel region), which on a busy machine costs more than one padded, masked call
#: for the batch (a query's latency, batch 1, gains the most: no padding, no mask)
PER_ITEM_MAX = 4


def packed_attention(q: Tensor, k: Tensor, v: Tensor, nhead: int, offsets: list[int]) -> Tensor:
    """Self-attention of each item over its own valid rows, on the packed layout.

    ``q``, ``k``, ``v`` ``(R, H * Dh)``: the valid rows of a padded batch, item ``b`` holding
    rows ``[offsets[b], offsets[b + 1])`` (:attr:`~momentkit.modeling.packing.Packing.offsets`).
    The same function as :func:`scaled_dot_attention` on the padded layout with the padding
    masked as keys (masked keys get weight exactly 0), without padding, masks or copies into
    the padded layout; no dropout. Returns ``(R, H * Dh)``.
    """
    d = q.shape[-1]
    outs = []
    for lo, hi in zip(offsets[:-1], offsets[1:]):
        if hi > lo:
            heads = [
                x[lo:hi].view(1, hi - lo, nhead, d // nhead).transpose(1, 2) for x in (q, k, v)
            ]
            outs.append(F.scaled_dot_product_attention(*heads).transpose(1, 2).reshape(hi - lo, d))
    return torch.cat(outs) if len(outs) != 1 else outs[0]


def grouped_attention(
    q: Tensor, k: Tensor, v: Tensor, nhead: int, packing: Packing, key_mask: Tensor, items: int
) -> Tensor:
    """Self-attention on the packed layout, ``items`` items at a time; no dropout.

    ``q``, ``k``, ``v`` ``(R, H * Dh)`` as in :func:`packed_attention`, ``key_mask`` ``(B, L)``
    (True = valid) the mask ``packing`` was made of. Each group of ``items`` consecutive items
    is padded, attended with its key mask and packed again: the same function as one padded call
    for the whole batch, with a padded copy of a few megabytes instead of one of the whole batch
    (a 100-query Moment-DETR batch: 22 MB of zeros, fresh pages on every call). Returns
    ``(R, H * Dh)``.
    """
    offsets, length = packing.offsets, packing.length
    outs = []
    for first in range(0, packing.batch, items):
        last = min(first + items, packing.batch)
        lo, hi = offsets[first], offsets[last]
        group = Packing(packing.rows[lo:hi] - first * length, last - first, length)
        heads = [split_heads(group.pad(x[lo:hi]), nhead) for x in (q, k, v)]
        out = F.scaled_dot_product_attention(
            *heads, attn_mask=attention_mask(key_mask[first:last], None)
        )
        outs.append(group.pack(merge_heads(out)))
    return torch.cat(outs)


class MultiheadAttention(nn.Module):
    """Standard multi-head attention with input and output projections.

    Parameters are laid out as in :class:`torch.nn.MultiheadAttention` (``in_proj_weight``
    ``(3d, d)``, ``in_proj_bias``, ``out_proj``) so published checkpoints map one to one. When
    ``query is key`` (self-attention with positions added to both) the query and key projections
    run as one matmul.

    A ``gate`` scales each query's attention weights (SG-DETR's saliency-guided cross-attention,
    :mod:`momentkit.modeling.saliency_guided`): ``out_l = W_o sum_heads(g_l softmax(q_l K^T /
    sqrt(d_h)) V)``, the weights of query ``l`` summing to ``g_l`` instead of 1.
    """

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"d_model {d_model} is not divisible by nhead {nhead}")
        self.d_model = d_model
        self.nhead = nhead
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_mask: Tensor | None = None,
        gate: Tensor | None = None,
        *,
        allowed: Tensor | None = None,
        packing: Packing | None = None,
        key_index: Tensor | None = None,
        query_index: Tensor | None = None,
    ) -> Tensor:
        """Attend from ``query`` ``(B, L, d)`` to ``key``/``value`` ``(B, S, d)``.

        ``key_mask`` ``(B, S)`` bool (True = valid); ``gate`` ``(B, L)`` scale of each query's
        attention weights (``None``: 1); ``allowed`` a query-by-key bool mask, True = may attend,
        ``(B, H, L, S)`` for a per-head mask (shapes in :func:`attention_mask`; ``None``: all).
        Returns ``(B, L, d)``.

        With ``packing`` (self-attention over one padded sequence, ``L == S``) ``query``,
        ``key`` and ``value`` are its valid rows ``(R, d)``
        (:class:`~momentkit.modeling.packing.Packing`): the projections run on those rows
        only, attention on the padded layout, and the result is ``(R, d)``.

        With ``key_index`` ``(B,)`` long, ``key`` and ``value`` hold ``B0`` distinct items
        ``(B0, S, d)`` and item ``b`` attends to item ``key_index[b]`` of them: their
        projections run once per distinct item (QD-DETR's negative pairs see every query twice),
        the same values as projecting ``key[key_index]``; ``key_mask`` and ``allowed`` are per
        item ``b``.

        ``query_index`` ``(B,)`` (cross-attention): ``query`` holds ``B0`` distinct items
        likewise, item ``b``'s query being the projection of ``query[query_index[b]]``.
        """
        d = self.d_model
        w, b = self.in_proj_weight, self.in_proj_bias
        qk = linear(query, w[: 2 * d], b[: 2 * d]) if query is key else None
        if qk is not None:
            q, k = qk.chunk(2, dim=-1)
        else:
            q = linear(query, w[:d], b[:d])
            k = linear(key, w[d : 2 * d], b[d : 2 * d])
        v = linear(value, w[2 * d :], b[2 * d :])
        if query_index is not None:
            if qk is not None:
                raise ValueError("query_index is for cross-attention (query is not key)")
            q = q.index_select(0, query_index)
        if key_index is not None:
            k, v = k.index_select(0, key_index), v.index_select(0, key_index)
        if packing is not None and self._per_item(gate, allowed, q, packing):
            return self.out_proj(packed_attention(q, k, v, self.nhead, packing.offsets))
        if packing is not None and key_mask is not None:
            items = self._group_items(gate, allowed, q, packing)
            if items < packing.batch:
                grouped = grouped_attention(q, k, v, self.nhead, packing, key_mask, items)
                return self.out_proj(grouped)
        if packing is not None:  # to the padded layout (q and k padded as one when they are)
            q, k = packing.pad(qk).chunk(2, dim=-1) if qk is not None else map(packing.pad, (q, k))
            v = packing.pad(v)
        out = scaled_dot_attention(
            split_heads(q, self.nhead),
            split_heads(k, self.nhead),
            split_heads(v, self.nhead),
            key_mask,
            self.dropout,
            self.training,
            allowed,
        )  # (B, H, L, Dh)
        if gate is not None:
            out = out * gate[:, None, :, None].to(out.dtype)
        merged = merge_heads(out)
        return self.out_proj(merged if packing is None else packing.pack(merged))

    def _group_items(
        self, gate: Tensor | None, allowed: Tensor | None, q: Tensor, packing: Packing
    ) -> int:
        """Items per call of packed self-attention without autograd (:func:`grouped_attention`):
        enough for a padded query-key-value copy of about
        :data:`~momentkit.modeling.row_blocks.BLOCK_BYTES`; the whole batch when autograd
        records, or without :meth:`_plain` attention."""
        if torch.is_grad_enabled() or not self._plain(gate, allowed):
            return packing.batch
        per_item = packing.length * 3 * q.shape[-1] * q.element_size()
        return max(1, row_blocks.BLOCK_BYTES // per_item)

    def _per_item(
        self, gate: Tensor | None, allowed: Tensor | None, q: Tensor, packing: Packing
    ) -> bool:
        """Whether packed self-attention runs item by item (:func:`packed_attention`): on the
        CPU, for at most :data:`PER_ITEM_MAX` items, with :meth:`_plain` attention."""
        few = packing.batch <= PER_ITEM_MAX
        return few and self._plain(gate, allowed) and q.device.type == "cpu"

    def _plain(self, gate: Tensor | None, allowed: Tensor | None) -> bool:
        """No attention dropout, gate or pair mask: what the packed paths compute (dropout
        draws its masks over the padded layout, so training keeps that path and its random
        stream)."""
        no_dropout = not self.training or self.dropout == 0.0
        return no_dropout and gate is None and allowed is None


class ProjectedAttention(nn.Module):
    """Multi-head attention over inputs that are already projected, plus an output projection.

    Conditional-/DAB-DETR decoders build queries and keys themselves (content and position parts
    projected separately, sometimes concatenated per head), so this block only splits heads,
    attends and applies ``out_proj``. Query/key width may differ from the value width.
    """

    def __init__(self, value_dim: int, nhead: int, dropout: float = 0.0) -> None:
        super().__init__()
        if value_dim % nhead:
            raise ValueError(f"value_dim {value_dim} is not divisible by nhead {nhead}")
        self.nhead = nhead
        self.dropout = dropout
        self.out_proj = Linear(value_dim, value_dim)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        key_mask: Tensor | None = None,
        allowed: Tensor | None = None,
    ) -> Tensor:
        """Attend: ``q`` ``(B, H, L, Dk)``, ``k`` ``(B, H, S, Dk)``, ``v`` ``(B, H, S, Dv)``.

        ``key_mask`` ``(B, S)`` bool, True = valid; ``allowed`` a query-by-key bool mask, True =
        may attend (see :func:`attention_mask`). Returns ``(B, L, H * Dv)`` after the output
        projection.
        """
        out = scaled_dot_attention(q, k, v, key_mask, self.dropout, self.training, allowed)
        return self.out_proj(merge_heads(out))
