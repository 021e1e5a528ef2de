"""UniMD's query-dependent decoders: one classification and one regression head for any query.

Both heads run a small convolution tower over every pyramid level and let the query's text
embedding ``G`` decide the last layer (Zeng et al., ECCV 2024, Sec. 3.2, Fig. 4):

- classification: ``conf_t = sigmoid(scale(G . conv(Z)_t))`` -- the embedding acts as the
  weights of a 1x1 classifier (an inner product per time step), ``scale`` a learned affine
  ``w x + b`` with scalar ``w`` and ``b``;
- regression: an MLP turns ``G`` into the weights and bias of a ``K``-wide convolution with
  ``CH`` input and 2 output channels (a *dynamic kernel*, ``2 x CH x K`` numbers + 2 biases),
  applied to ``conv(Z)``; ``relu(scale_l(.))`` gives the distances from each time step to the
  segment's start and end, in units of the level's stride.

The same weights serve action classes (TAD, ``G`` = "a video of [action]") and sentences (MR).
Tensors are channels-first ``(B, C, T_l)`` per level with ``(B, T_l)`` bool masks; queries are
``(B, Q, D)`` (several queries per video).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from momentkit.modeling.convnext_pyramid import (
    ChannelLayerNorm,
    MaskedConv1d,
    trimmed_length,
    valid_extent,
)
from momentkit.modeling.linear import Linear

_Part = TypeVar("_Part")


class ConvTower(nn.Module):
    """``num_convs`` masked convolutions shared by all levels, each followed by LN + ReLU.

    Args:
        in_dim, dim: input and hidden channels.
        num_convs: convolutions.
        kernel_size: their temporal extent.
        with_ln: LayerNorm after each convolution (then the convolutions have no bias).
        last_activation: apply LN + ReLU after the last convolution too (the regression tower
            does, the classification tower does not).
        keep_padding: keep the values LN + ReLU leave at padded steps (the official code: the
            next convolution reads them at a video's edges); by default they are zeroed.
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        num_convs: int,
        kernel_size: int = 3,
        with_ln: bool = True,
        last_activation: bool = True,
        keep_padding: bool = False,
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            MaskedConv1d(in_dim if i == 0 else dim, dim, kernel_size, bias=not with_ln)
            for i in range(num_convs)
        )
        self.norms = nn.ModuleList(
            ChannelLayerNorm(dim) if with_ln else nn.Identity() for _ in range(num_convs)
        )
        self.last_activation = last_activation
        self.keep_padding = keep_padding
        #: zero steps that keep concatenated levels apart for these convolutions
        self.gap = kernel_size // 2

    def forward(self, x: Tensor, mask: Tensor, inside: Tensor | None = None) -> Tensor:
        """``(B, C_in, T)``, ``(B, T)`` -> ``(B, C, T)`` (zero at padded steps unless
        ``keep_padding`` and the last convolution is followed by LN + ReLU).

        ``inside`` ``(T,)``: 0 at the separating steps of concatenated levels
        (:class:`LevelSequence`), zeroed there after every layer even with ``keep_padding``.
        """
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x, _ = conv(x, mask)
            if i < len(self.convs) - 1 or self.last_activation:
                x = F.relu(norm(x))
                if not self.keep_padding:
                    x = x * mask[:, None].to(x.dtype)
                elif inside is not None:
                    x = x * inside.to(x.dtype)
        return x


class LevelSequence:
    """Every pyramid level of a batch as one sequence, for layers shared by all levels.

    The levels ``(B, C, T_l)`` are concatenated along time with ``gap`` zero steps between
    two levels (masked out), so a convolution of extent ``2 * gap + 1`` or less reads zeros
    beyond each level's ends, as it does on the level alone, and every step sees the values
    it sees there. One call on the sequence replaces a call per level: UniMD's heads run two
    512 x 512 x 3 convolutions, a dynamic convolution or a query product on six levels of
    9-288 steps, where the short levels' calls cost far more than their arithmetic.

    A level's steps after the batch's last valid one are left out, but for ``gap`` of them
    (the convolutions read those, and at padded steps each layer's output is the same whatever
    it reads: zero, or its normalisation's value with padding kept), once as many trailing
    steps as :class:`~momentkit.modeling.convnext_pyramid.MaskedConv1d` trims are padding;
    :meth:`split` zero-fills them again (the heads' outputs are zero at padded steps).

    Args:
        levels: ``(B, C, T_l)`` per level; ``masks``: ``(B, T_l)`` bool per level.
        gap: zero steps between two levels (``kernel_size // 2``).
    """

    def __init__(self, levels: Sequence[Tensor], masks: Sequence[Tensor], gap: int) -> None:
        self.full = [x.shape[-1] for x in levels]
        self.lengths = [self._kept(m, gap) for m in masks]
        levels = [x[..., :t] for x, t in zip(levels, self.lengths)]
        masks = [m[:, :t] for m, t in zip(masks, self.lengths)]
        self.gap = gap
        x0, m0 = levels[0], masks[0]
        pad_x = x0.new_zeros(*x0.shape[:-1], gap)
        pad_m = m0.new_zeros(m0.shape[0], gap)
        self.x = torch.cat(self._interleave(list(levels), pad_x), dim=-1)
        self.mask = torch.cat(self._interleave(list(masks), pad_m), dim=-1)
        steps = [torch.ones(t, dtype=torch.bool, device=x0.device) for t in self.lengths]
        gaps = torch.zeros(gap, dtype=torch.bool, device=x0.device)
        self.inside = torch.cat(self._interleave(steps, gaps))  # (T,) True on level steps

    @staticmethod
    def _kept(mask: Tensor, gap: int) -> int:
        """Steps of a level kept in the sequence: up to ``gap`` past its last valid step."""
        steps = mask.shape[-1]
        return trimmed_length(steps, min(steps, valid_extent(mask) + gap))

    def _interleave(self, parts: list[_Part], separator: _Part) -> list[_Part]:
        """``parts`` with ``separator`` between two of them (none when ``gap`` is 0)."""
        out: list[_Part] = []
        for i, part in enumerate(parts):
            if i and self.gap:
                out.append(separator)
            out.append(part)
        return out

    def split(self, x: Tensor) -> list[Tensor]:
        """A ``(..., T)`` tensor over the sequence (time last) -> ``(..., T_l)`` per level: the
        level's steps, the steps left out zero-filled."""
        sizes = self._interleave(list(self.lengths), self.gap)
        pieces = x.split(sizes, dim=-1)[:: 2 if self.gap else 1]
        return [
            piece if t == full else F.pad(piece, (0, full - t))
            for piece, t, full in zip(pieces, self.lengths, self.full)
        ]


class QueryClassificationHead(nn.Module):
    """Query-dependent classification: ``logit = w * <conv(Z)_t, G_q> + b``.

    ``w`` (init 1) and ``b`` (init 0) are scalars shared by every level and query (the official
    ``QueryScaleClassifier``); the confidence is ``sigmoid(logit)``. Logits are zero at padded
    steps (as the official head's).

    Args:
        in_dim: channels of the pyramid levels.
        dim: channels of the tower output; must equal the query embedding width.
        num_layers: tower convolutions + the query classifier (3 in UniMD: 2 convolutions).
        kernel_size: tower kernel.
        with_ln: LayerNorm in the tower.
        keep_padding: see :class:`ConvTower`.
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        num_layers: int = 3,
        kernel_size: int = 3,
        with_ln: bool = True,
        keep_padding: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if num_layers == 1 and in_dim != dim:
            raise ValueError("without tower convolutions the head width must equal in_dim")
        self.tower = ConvTower(
            in_dim, dim, num_layers - 1, kernel_size, with_ln, False, keep_padding
        )
        self.scale = nn.Parameter(torch.ones(()))
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(
        self, levels: Sequence[Tensor], masks: Sequence[Tensor], queries: Tensor
    ) -> list[Tensor]:
        """Per level ``(B, C, T_l)``, ``(B, T_l)`` and queries ``(B, Q, C)`` -> ``(B, Q, T_l)``."""
        seq = LevelSequence(levels, masks, self.tower.gap)  # one call for every level
        z = self.tower(seq.x, seq.mask, seq.inside)
        logits = self.scale * torch.einsum("bqc,bct->bqt", queries, z) + self.bias
        return seq.split(logits * seq.mask[:, None].to(logits.dtype))


def dynamic_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Convolve each video with its own queries' kernels (one grouped convolution).

    Args:
        x: ``(B, C, T)`` features.
        weight: ``(B, Q, O, C, K)`` kernels, ``K`` odd (zero padding ``K // 2``: same length).
        bias: ``(B, Q, O)`` or ``None``.

    Returns:
        ``(B, Q, O, T)``: ``out[b, q, o, t] = bias[b, q, o] +
        sum_{c, k} weight[b, q, o, c, k] * x[b, c, t + k - K // 2]``.
    """
    b, c, t = x.shape
    _, q, o, c2, k = weight.shape
    if c2 != c or weight.shape[0] != b:
        raise ValueError(f"kernels {tuple(weight.shape)} do not fit features {tuple(x.shape)}")
    if k % 2 == 0:
        raise ValueError(f"dynamic kernels need an odd width, got {k}")
    out = F.conv1d(
        x.reshape(1, b * c, t),
        weight.reshape(b * q * o, c, k),
        bias.reshape(b * q * o) if bias is not None else None,
        padding=k // 2,
        groups=b,
    )
    return out.view(b, q, o, t)


class QueryKernelGenerator(nn.Module):
    """The MLP that turns a query embedding into a dynamic regression kernel (+ bias).

    ``num_layers`` blocks of dropout -> linear; all but the last are followed by LayerNorm and
    ReLU, the last by ReLU (as the official ``QueryRegressionLast_NEW``). The output,
    ``out_channels * (in_channels * K + 1)`` numbers, is resized into ``(O, C, K)`` weights and
    ``O`` biases.

    Args:
        query_dim: width of the query embedding.
        in_channels: ``C``, channels the kernel reads.
        out_channels: ``O`` (2: distances to start and end).
        kernel_size: ``K``.
        hidden_dim: width of the hidden layers.
        num_layers: linear layers (>= 1).
        dropout: dropout before each linear layer.
    """

    def __init__(
        self,
        query_dim: int,
        in_channels: int,
        out_channels: int = 2,
        kernel_size: int = 3,
        hidden_dim: int = 512,
        num_layers: int = 3,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.shape = (out_channels, in_channels, kernel_size)
        size = out_channels * (in_channels * kernel_size + 1)
        dims = [query_dim] + [hidden_dim] * (num_layers - 1) + [size]
        self.layers = nn.ModuleList(Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in dims[1:-1])
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, Q, D)`` -> weights ``(B, Q, O, C, K)`` and biases ``(B, Q, O)``."""
        h = queries
        for i, layer in enumerate(self.layers):
            h = layer(self.dropout(h))
            if i < len(self.norms):
                h = self.norms[i](h)
            h = F.relu(h)
        o, c, k = self.shape
        weight, bias = h.split([o * c * k, o], dim=-1)
        # the official layout: (C, O, K) per query, read as O kernels of C x K
        weight = weight.unflatten(-1, (c, o, k)).transpose(-3, -2)
        return weight, bias


class QueryRegressionHead(nn.Module):
    """Query-dependent regression: ``d = relu(scale_l(dynconv(conv(Z); MLP(G))))``.

    Args:
        in_dim: channels of the pyramid levels.
        dim: channels of the tower output (``CH``).
        query_dim: width of the query embedding.
        num_levels: pyramid levels (one learned ``scale_l`` each, init 1).
        num_layers: tower convolutions + the dynamic convolution (3 in UniMD).
        kernel_size: tower kernel and dynamic-kernel width ``K``.
        with_ln: LayerNorm in the tower.
        query_layers, query_hidden_dim, query_dropout: the kernel MLP
            (:class:`QueryKernelGenerator`).
        keep_padding: see :class:`ConvTower` (the dynamic convolution then reads the tower's
            values at padded steps, as the official code).
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        query_dim: int,
        num_levels: int,
        num_layers: int = 3,
        kernel_size: int = 3,
        with_ln: bool = True,
        query_layers: int = 3,
        query_hidden_dim: int = 512,
        query_dropout: float = 0.1,
        keep_padding: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if num_layers == 1 and in_dim != dim:
            raise ValueError("without tower convolutions the head width must equal in_dim")
        self.tower = ConvTower(
            in_dim, dim, num_layers - 1, kernel_size, with_ln, True, keep_padding
        )
        self.kernels = QueryKernelGenerator(
            query_dim, dim, 2, kernel_size, query_hidden_dim, query_layers, query_dropout
        )
        self.scales = nn.Parameter(torch.ones(num_levels))

    def forward(
        self, levels: Sequence[Tensor], masks: Sequence[Tensor], queries: Tensor
    ) -> list[Tensor]:
        """Per level ``(B, C, T_l)``, ``(B, T_l)`` and queries ``(B, Q, D)`` -> ``(B, Q, T_l, 2)``.

        Distances are non-negative and zero at padded steps.
        """
        weight, bias = self.kernels(queries)
        seq = LevelSequence(levels, masks, max(self.tower.gap, weight.shape[-1] // 2))
        z = self.tower(seq.x, seq.mask, seq.inside)
        d = dynamic_conv1d(z, weight, bias) * seq.mask[:, None, None].to(z.dtype)
        return [
            F.relu(self.scales[level] * d_l).transpose(-1, -2)
            for level, d_l in enumerate(seq.split(d))
        ]


__all__ = [
    "ConvTower",
    "LevelSequence",
    "QueryClassificationHead",
    "QueryKernelGenerator",
    "QueryRegressionHead",
    "dynamic_conv1d",
]
