"""Row-wise layers run on blocks of rows when no gradient is recorded.

A row-wise function (LayerNorm, linear layers, activations: each output row depends on its own
input row only) gives the same rows whether it sees the whole ``(R, d)`` matrix or slices of it.
On a large evaluation batch the whole-matrix form writes wide intermediates that leave the CPU
caches: Moment-DETR's input projection of 100 QVHighlights videos normalises a 100 x 75 x 2818
float32 tensor (85 MB) before its product, and each feed-forward layer writes a ~9500 x 1024
hidden activation (39 MB). Allocations above glibc's largest mmap threshold (32 MB) are fresh
pages every call, so writing them costs page faults as well. Run on blocks whose widest
intermediate is about :data:`BLOCK_BYTES` (with packed self-attention in groups of items,
:func:`~momentkit.modeling.attention.grouped_attention`), predicting 1550 QVHighlights-shaped
queries in batches of 100 took 0.90x the time for Moment-DETR and 0.96x for QD-DETR
(``scripts/speed_ab.py --change row-blocks``; ``docs/models.md``, "Row blocks").

With autograd recording, every intermediate is kept for the backward pass anyway, so blocks
would only add calls: :func:`by_row_blocks` then calls the function once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: bytes of the widest per-row intermediate of one block (8 MiB: 2048 rows of a 1024-wide
#: feed-forward hidden layer, 744 rows of a 2818-d feature)
BLOCK_BYTES = 8 << 20
#: fewest rows of a block: below this, per-call costs of the products outweigh cache reuse
MIN_BLOCK_ROWS = 256


def block_rows(width: int, element_size: int = 4) -> int:
    """Rows of one block when the widest intermediate of a row has ``width`` elements."""
    return max(MIN_BLOCK_ROWS, BLOCK_BYTES // max(1, width * element_size))


def by_row_blocks(
    fn: Callable[[Tensor], Tensor], x: Tensor, width: int, training: bool = False
) -> Tensor:
    """``fn(x)`` for a row-wise ``fn``: ``(..., d)`` -> ``(..., d_out)``.

    ``width``: elements of the widest intermediate ``fn`` writes per row (e.g. a feed-forward
    layer's hidden width). In evaluation mode (``training`` False: dropout in ``fn`` draws no
    mask, so splitting cannot change its random stream), without autograd recording
    (``torch.no_grad`` / ``inference_mode``) and with more than two blocks' rows, ``fn`` runs on
    consecutive blocks of the flattened rows (:func:`block_rows`) and the results are
    concatenated; otherwise it runs once on ``x``.
    """
    if training or torch.is_grad_enabled() or x.dim() < 2:
        return fn(x)
    rows = x.numel() // max(1, x.shape[-1])
    block = block_rows(width, x.element_size())
    if rows <= 2 * block:
        return fn(x)
    flat = x.reshape(rows, x.shape[-1])
    out = torch.cat([fn(flat[i : i + block]) for i in range(0, rows, block)])
    return out.view(*x.shape[:-1], out.shape[-1])


__all__ = ["BLOCK_BYTES", "MIN_BLOCK_ROWS", "block_rows", "by_row_blocks"]
