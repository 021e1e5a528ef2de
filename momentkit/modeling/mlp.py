"""Small feed-forward blocks: prediction heads and input projections."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from momentkit.modeling.dropout import Dropout
from momentkit.modeling.linear import Linear
from momentkit.modeling.packing import packing_of
from momentkit.modeling.row_blocks import by_row_blocks


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (DETR's box/span head).

    ``(..., in_dim)`` -> ``(..., out_dim)``.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"an MLP needs at least one layer, got {num_layers}")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        """``(..., in_dim)`` -> ``(..., out_dim)``."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return x


class LinearLayer(nn.Module):
    """LayerNorm -> dropout -> linear -> optional ReLU (Moment-DETR's input projection layer)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        layer_norm: bool = True,
        dropout: float = 0.1,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim) if layer_norm else nn.Identity()
        self.dropout = Dropout(dropout)
        self.linear = Linear(in_dim, out_dim)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        """``(..., in_dim)`` -> ``(..., out_dim)``."""
        x = self.linear(self.dropout(self.norm(x)))
        return F.relu(x) if self.relu else x


#: the padded share of a batch from which :class:`InputProjection` gathers the valid rows
#: instead of projecting every row and zeroing the padded ones. Gathering copies every valid
#: row once (a 2818-wide feature row costs about a sixth of its projection); with 2 % padding
#: (a QVHighlights batch) the gather cost more than the skipped rows saved: 100 x 75 x 2818
#: evaluation batches projected 1.2x (float32) and 1.4x (bf16) faster without it, while from
#: 10-15 % padding on, gathering wins (docs/models.md, "Speed")
PACK_MIN_PADDING = 0.1


class InputProjection(nn.Module):
    """``num_layers`` :class:`LinearLayer` s mapping input features to the model width.

    Every layer but the last has a ReLU. Padded rows (``mask`` False) come out as zeros and the
    valid rows do not depend on them. From :data:`PACK_MIN_PADDING` of padding on, only the
    valid rows are projected: on QVHighlights-sized inputs the first layer (LayerNorm + dropout
    + a 2818 x 256 matmul) is one of the most expensive steps of a training iteration; below
    it, every row is projected and the padded ones zeroed (cheaper than gathering the rows).
    """

    def __init__(
        self, in_dim: int, out_dim: int, num_layers: int = 2, dropout: float = 0.5
    ) -> None:
        super().__init__()
        if not 1 <= num_layers <= 3:
            raise ValueError(f"input projection takes 1 to 3 layers, got {num_layers}")
        dims = [in_dim] + [out_dim] * num_layers
        self.layers = nn.Sequential(
            *(
                LinearLayer(dims[i], dims[i + 1], dropout=dropout, relu=i < num_layers - 1)
                for i in range(num_layers)
            )
        )
        self.out_dim = out_dim

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x`` ``(B, L, in_dim)``, ``mask`` ``(B, L)`` (True = valid) -> ``(B, L, out_dim)``."""
        if mask is None:
            return self._rows(x)
        packing = packing_of(mask, min_padding=PACK_MIN_PADDING)
        if packing is not None:
            return packing.pad(self._rows(packing.pack(x)))
        out = self._rows(x)
        if bool(mask.all()):
            return out
        return out.masked_fill(~mask.unsqueeze(-1), 0.0)  # NaN padding ends as 0 too

    def _rows(self, x: Tensor) -> Tensor:
        """The layers on ``(..., in_dim)`` rows (in evaluation mode without autograd, on blocks
        of rows: :func:`~momentkit.modeling.row_blocks.by_row_blocks`)."""
        width = max(self.layers[0].linear.in_features, self.out_dim)
        return by_row_blocks(self.layers, x, width, self.training)
