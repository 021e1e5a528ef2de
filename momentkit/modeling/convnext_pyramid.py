"""A convolutional temporal feature pyramid: 1-D ConvNeXt blocks, strided stages, FPN/BiFPN neck.

UniMD's video encoder (Zeng et al., ECCV 2024, Sec. 3.1; official ``convnext_stage`` backbone and
``bifpn_convnext`` neck) has no attention and never sees the text:

- an embedding of ``num_embed_convs`` masked convolutions (+ LayerNorm + ReLU) maps the input
  features to ``dim`` channels, followed by ``num_stem_blocks`` ConvNeXt blocks;
- ``len(depths)`` stages, each ``depths[i]`` ConvNeXt blocks then a strided downsampling
  (LayerNorm + convolution of kernel 2 and stride 2), giving ``1 + len(depths)`` levels of
  strides ``1, 2, 4, ...``;
- a neck that mixes the levels: :class:`BiFPN` (EfficientDet's bidirectional pyramid with fast
  normalised fusion weights, ConvNeXt blocks as its convolutions) or :class:`FPN` (top-down
  pyramid, as ActionFormer).

Tensors inside this module are channels-first, ``(B, C, T)``, with a ``(B, T)`` bool mask
(True = real step). By default (``keep_padding=False``) padded steps are zero after every block
and normalisation, so valid outputs do not depend on how much padding a batch has. With
``keep_padding=True`` the values a normalisation (or LayerNorm + ReLU) leaves at padded steps
are kept, as in the official UniMD code: convolutions then read them at the edges of a video,
and the output depends on the padded length (the official code always pads to
``max_seq_len``). A level of stride ``s`` keeps the steps ``0, s, 2s, ...`` of the input mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from momentkit.modeling.linear import Linear
from momentkit.modeling.mlp import PACK_MIN_PADDING
from momentkit.modeling.packing import packing_of

Levels = list[Tensor]
Masks = list[Tensor]

#: fewest trailing padded output steps (and share of the steps) from which
#: :class:`MaskedConv1d` convolves only up to the last valid step (UniMD pads every
#: Charades-STA video to 288 steps: 37-43 % of each level is padding for videos of 165-180)
TRIM_MIN_STEPS = 8
TRIM_MIN_SHARE = 0.1


def valid_extent(mask: Tensor) -> int:
    """One past the last step valid in any item of a ``(B, T)`` bool mask (0: none)."""
    steps = mask.any(0).nonzero()
    return int(steps[-1]) + 1 if len(steps) else 0


def trimmed_length(steps: int, needed: int) -> int:
    """``needed`` when the ``steps - needed`` trailing steps are worth leaving out
    (:data:`TRIM_MIN_STEPS` and :data:`TRIM_MIN_SHARE`), else ``steps``."""
    trailing = steps - needed
    return needed if trailing >= max(TRIM_MIN_STEPS, TRIM_MIN_SHARE * steps) else steps


class MaskedConv1d(nn.Module):
    """A 1-D convolution whose output is zero at padded steps.

    Args:
        in_channels, out_channels: channels.
        kernel_size: temporal extent.
        stride: temporal stride; the output mask is ``mask[:, ::stride]`` (nearest
            downsampling, as ActionFormer's ``MaskedConv1D``).
        padding: zero padding on each side (default ``kernel_size // 2``).
        groups: convolution groups (``in_channels`` for a depthwise convolution).
        bias: learn an additive bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        padding = kernel_size // 2 if padding is None else padding
        self.stride = stride
        self.conv = nn.Conv1d(
            in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias
        )

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, C_in, T)``, ``(B, T)`` -> ``(B, C_out, T // stride)``, ``(B, T // stride)``.

        Output steps after the batch's last valid one are zero whatever they read, so once
        :data:`TRIM_MIN_STEPS` and :data:`TRIM_MIN_SHARE` of them are, the convolution reads
        only the input the valid outputs read (its padded values included) and the rest is
        zero-filled: the same outputs and gradients, without the padding's products.
        """
        conv = self.conv
        (k,), (p,), s = conv.kernel_size, conv.padding, self.stride  # type: ignore[misc]
        steps = (x.shape[-1] + 2 * p - k) // s + 1
        out_mask = mask[:, ::s][:, :steps] if s > 1 else mask
        extent = valid_extent(out_mask)
        need = (extent - 1) * s + k - p  # input steps the valid outputs read
        if extent > 0 and need > 0 and trimmed_length(steps, extent) < steps:
            out = F.pad(conv(x[..., :need])[..., :extent], (0, steps - extent))
        else:
            out = conv(x)
        return out * out_mask[:, None].to(out.dtype), out_mask


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a ``(B, C, T)`` tensor."""

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, T)`` -> ``(B, C, T)``."""
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability ``p``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        """``(B, ...)`` -> ``(B, ...)``: identity in eval mode or with ``p = 0``."""
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class ConvNeXtBlock1d(nn.Module):
    """A ConvNeXt block on a temporal sequence (Liu et al., 2022, adapted to 1-D).

    ``x + drop_path(gamma * W2 GELU(W1 LN(dwconv(x))))``, then masked. ``gamma`` (layer scale)
    starts at ``layer_scale_init``.

    Args:
        dim: channels.
        kernel_size: extent of the depthwise convolution.
        drop_path: stochastic-depth probability of the residual branch.
        layer_scale_init: initial value of ``gamma`` (``<= 0`` disables layer scale).
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 7,
        drop_path: float = 0.0,
        layer_scale_init: float = 1e-6,
    ) -> None:
        super().__init__()
        self.dwconv = MaskedConv1d(dim, dim, kernel_size, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = Linear(4 * dim, dim)
        self.gamma = (
            nn.Parameter(torch.full((dim,), layer_scale_init)) if layer_scale_init > 0 else None
        )
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, C, T)``, ``(B, T)`` -> same shapes.

        The output is zero at padded steps, so the per-step branch (LayerNorm, MLP, layer
        scale) runs on the valid steps alone once :data:`PACK_MIN_PADDING` of the steps are
        padding (UniMD pads every video to 288 steps: Charades-STA's 165-180 leave 37-43 %).
        """
        out, _ = self.dwconv(x, mask)
        out = out.transpose(1, 2)  # (B, T, C)
        packing = packing_of(mask, min_padding=PACK_MIN_PADDING)
        out = self._branch(out if packing is None else packing.pack(out))
        if packing is not None:
            out = packing.pad(out)
        out = x + self.drop_path(out.transpose(1, 2))
        return out * mask[:, None].to(out.dtype), mask

    def _branch(self, x: Tensor) -> Tensor:
        """``(..., C)`` -> ``(..., C)``: ``gamma * W2 GELU(W1 LN(x))``, each step alone."""
        out = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        return out if self.gamma is None else out * self.gamma


class Downsample(nn.Module):
    """LayerNorm then a kernel-2, stride-2 convolution: halves the temporal resolution.

    Args:
        dim: channels.
        keep_padding: keep LayerNorm's output (its bias) at padded steps, as the official code;
            by default it is zeroed again.
    """

    def __init__(self, dim: int, keep_padding: bool = False) -> None:
        super().__init__()
        self.norm = ChannelLayerNorm(dim, eps=1e-6)
        self.conv = MaskedConv1d(dim, dim, kernel_size=2, stride=2, padding=0)
        self.keep_padding = keep_padding

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, C, T)``, ``(B, T)`` with even ``T`` -> ``(B, C, T / 2)``, ``(B, T / 2)``.

        By default the normalised padding is zeroed again, so the last valid step of an
        odd-length video sees zeros (not LayerNorm's bias) as its neighbour.
        """
        x = self.norm(x)
        if not self.keep_padding:
            x = x * mask[:, None].to(x.dtype)
        return self.conv(x, mask)


class ConvNeXtPyramid(nn.Module):
    """Embedding convolutions, stem blocks and strided ConvNeXt stages (UniMD's backbone).

    Args:
        in_dim: input channels (all video streams).
        dim: channels of every level.
        depths: blocks per stage; ``len(depths)`` downsamplings, ``1 + len(depths)`` levels.
        num_embed_convs: embedding convolutions (each + LayerNorm + ReLU).
        num_stem_blocks: ConvNeXt blocks at full resolution before the stages.
        embed_kernel_size: kernel of the embedding convolutions.
        block_kernel_size: depthwise kernel of the stem and stage blocks.
        drop_path_rate: stochastic depth rising linearly from 0 to this over the stage blocks.
        layer_scale_init: initial layer scale of every block.
        keep_padding: keep the values LayerNorm + ReLU of the embedding and the downsamplings'
            LayerNorm leave at padded steps (the official code); by default they are zeroed.
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        depths: Sequence[int] = (1, 1, 1, 1, 1),
        num_embed_convs: int = 2,
        num_stem_blocks: int = 2,
        embed_kernel_size: int = 3,
        block_kernel_size: int = 3,
        drop_path_rate: float = 0.0,
        layer_scale_init: float = 1e-6,
        keep_padding: bool = False,
    ) -> None:
        super().__init__()
        self.keep_padding = keep_padding
        self.embed = nn.ModuleList(
            MaskedConv1d(in_dim if i == 0 else dim, dim, embed_kernel_size, bias=False)
            for i in range(num_embed_convs)
        )
        self.embed_norm = nn.ModuleList(ChannelLayerNorm(dim) for _ in range(num_embed_convs))
        self.stem = nn.ModuleList(
            ConvNeXtBlock1d(dim, block_kernel_size, 0.0, layer_scale_init)
            for _ in range(num_stem_blocks)
        )
        rates = torch.linspace(0.0, drop_path_rate, max(1, sum(depths))).tolist()
        self.stages = nn.ModuleList()
        self.downsample = nn.ModuleList()
        start = 0
        for depth in depths:
            self.stages.append(
                nn.ModuleList(
                    ConvNeXtBlock1d(dim, block_kernel_size, rates[start + j], layer_scale_init)
                    for j in range(depth)
                )
            )
            self.downsample.append(Downsample(dim, keep_padding))
            start += depth
        self.num_levels = 1 + len(depths)
        for m in self.modules():  # as the official backbone: zero biases
            if isinstance(m, nn.Linear | nn.Conv1d) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Levels, Masks]:
        """``(B, C_in, T)``, ``(B, T)`` -> levels ``(B, dim, T / 2^l)`` and their masks.

        ``T`` must be a multiple of ``2^len(depths)`` (pad the input first).
        """
        for conv, norm in zip(self.embed, self.embed_norm):
            x, mask = conv(x, mask)
            x = F.relu(norm(x))
            if not self.keep_padding:
                x = x * mask[:, None].to(x.dtype)
        for block in self.stem:
            x, mask = block(x, mask)
        levels, masks = [x], [mask]
        for blocks, down in zip(self.stages, self.downsample):
            for block in blocks:
                x, mask = block(x, mask)
            x, mask = down(x, mask)
            levels.append(x)
            masks.append(mask)
        return levels, masks


def masked_max_pool(
    x: Tensor, mask: Tensor, kernel_size: int, ignore_padding: bool = True
) -> tuple[Tensor, Tensor]:
    """Stride-2 max pooling: ``(B, C, T)`` -> ``(B, C, T / 2)``, zero at padded outputs.

    ``ignore_padding``: padded input steps never win (momentkit); ``False`` pools over their
    values as they are (zeros after a masked block), as the official ``MaskMaxPool1d``.
    """
    filled = x.masked_fill(~mask[:, None], float("-inf")) if ignore_padding else x
    out = F.max_pool1d(filled, kernel_size, stride=2, padding=kernel_size // 2)
    out_mask = mask[:, ::2][:, : out.shape[-1]]
    return out.masked_fill(~out_mask[:, None], 0.0), out_mask


def upsample(x: Tensor, length: int) -> Tensor:
    """Nearest-neighbour ``x2`` upsampling of ``(B, C, T)`` to ``(B, C, length)``."""
    return F.interpolate(x, size=length, mode="nearest")


class FusionWeights(nn.Module):
    """EfficientDet's fast normalised fusion: ``relu(w_i) / (sum_j relu(w_j) + eps)``."""

    def __init__(self, num_inputs: int, eps: float = 1e-4) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_inputs))
        self.eps = eps

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """Weighted sum of same-shaped tensors."""
        w = F.relu(self.weight)
        w = w / (w.sum() + self.eps)
        return sum(wi * x for wi, x in zip(w, inputs))  # type: ignore[return-value]


@dataclass(frozen=True)
class BiFPNOptions:
    """How a :class:`BiFPNLayer` treats its inputs, padding and the second-coarsest level.

    Attributes:
        input_norm: normalisation after the first layer's input projections: ``layer``
            (LayerNorm, momentkit) or ``batch`` (BatchNorm1d with momentum 0.01 and eps 1e-3,
            the official code; batch statistics over every step, padded ones included, in
            training).
        keep_padding: keep the projections' normalised values at padded steps (the official
            code); by default they are zeroed.
        pool_ignores_padding: the bottom-up max pooling ignores padded steps (momentkit) or
            pools over their (zero) values (``False``, the official ``MaskMaxPool1d``).
        second_top_inputs: inputs of the second-coarsest level's bottom-up node: 3 (its input,
            its top-down node and the pooled finer output, like every middle level) or 2 (the
            official code leaves out the top-down node).
    """

    input_norm: str = "layer"
    keep_padding: bool = False
    pool_ignores_padding: bool = True
    second_top_inputs: int = 3

    def __post_init__(self) -> None:
        if self.input_norm not in ("layer", "batch"):
            raise ValueError(
                f"BiFPN input_norm must be 'layer' or 'batch', got {self.input_norm!r}"
            )
        if self.second_top_inputs not in (2, 3):
            raise ValueError(
                f"BiFPN second_top_inputs must be 2 or 3, got {self.second_top_inputs}"
            )


def _projection(dim: int, norm: str) -> nn.ModuleList:
    """``[1x1 masked convolution, normalisation]`` (``layer`` or ``batch``); a list, so that the
    tensor names (``<i>.0.conv.weight``, ``<i>.1.weight``) stay those of earlier checkpoints."""
    norm_layer: nn.Module = (
        ChannelLayerNorm(dim) if norm == "layer" else nn.BatchNorm1d(dim, eps=1e-3, momentum=0.01)
    )
    return nn.ModuleList([MaskedConv1d(dim, dim, 1), norm_layer])


class BiFPNLayer(nn.Module):
    """One bidirectional pyramid layer (EfficientDet; UniMD's ``BiFPN1D_ConvNeXt``).

    Top-down, from the coarsest level: ``up_l = block(swish(fuse(in_l, upsample(up_{l+1}))))``
    (``up_top = in_top``; the finest level's result is its output). Bottom-up:
    ``out_l = block(swish(fuse(in_l, up_l, maxpool(out_{l-1}))))`` and
    ``out_top = block(swish(fuse(in_top, maxpool(out_{top-1}))))``; with
    ``options.second_top_inputs == 2`` the second-coarsest level also leaves out ``up_l``.

    Args:
        dim: channels.
        num_levels: pyramid levels (>= 2).
        kernel_size: depthwise kernel of the blocks and extent of the max pooling.
        project_inputs: the first layer of a stack maps each input level with a 1x1 convolution
            (+ normalisation), and the bottom-up inputs of the middle levels with a second one.
        options: input normalisation, padding and fusion choices (:class:`BiFPNOptions`).
    """

    def __init__(
        self,
        dim: int,
        num_levels: int,
        kernel_size: int = 7,
        project_inputs: bool = False,
        options: BiFPNOptions | None = None,
    ) -> None:
        super().__init__()
        if num_levels < 2:
            raise ValueError(f"a BiFPN needs at least 2 levels, got {num_levels}")
        self.options = options or BiFPNOptions()
        self.num_levels = num_levels
        self.kernel_size = kernel_size
        n = num_levels

        def proj(count: int) -> nn.ModuleList:
            return nn.ModuleList(_projection(dim, self.options.input_norm) for _ in range(count))

        # first layer: every level's input, and (separately) the middle levels' bottom-up input
        self.lateral = proj(n) if project_inputs else None
        self.lateral_bottom_up = proj(n - 2) if project_inputs else None
        self.up_blocks = nn.ModuleList(ConvNeXtBlock1d(dim, kernel_size) for _ in range(n - 1))
        self.down_blocks = nn.ModuleList(ConvNeXtBlock1d(dim, kernel_size) for _ in range(n - 1))
        self.up_weights = nn.ModuleList(FusionWeights(2) for _ in range(n - 1))
        self.down_weights = nn.ModuleList(
            FusionWeights(3 if self._with_up(level) else 2) for level in range(1, n)
        )

    def _with_up(self, level: int) -> bool:
        """Whether the bottom-up node of ``level`` (1..n-1) fuses the top-down node."""
        n = self.num_levels
        if level == n - 1:
            return False
        return not (level == n - 2 and self.options.second_top_inputs == 2)

    def _project(self, layers: nn.ModuleList, level: int, x: Tensor, mask: Tensor) -> Tensor:
        """``(B, C, T)`` -> ``(B, C, T)``: convolution, normalisation, padding re-zeroed unless
        ``options.keep_padding``."""
        conv, norm = layers[level]
        out, _ = conv(x, mask)
        out = norm(out)
        return out if self.options.keep_padding else out * mask[:, None].to(out.dtype)

    def forward(self, levels: Levels, masks: Masks) -> tuple[Levels, Masks]:
        """Levels ``(B, C, T_l)`` and masks ``(B, T_l)`` -> the same shapes."""
        n = self.num_levels
        inputs = list(levels)
        if self.lateral is not None:
            inputs = [
                self._project(self.lateral, i, x, m) for i, (x, m) in enumerate(zip(levels, masks))
            ]
        up: list[Tensor | None] = [None] * n
        up[n - 1] = inputs[n - 1]
        for level in range(n - 2, -1, -1):
            coarse = upsample(up[level + 1], inputs[level].shape[-1])  # type: ignore[arg-type]
            fused = F.silu(self.up_weights[level]([inputs[level], coarse]))
            up[level], _ = self.up_blocks[level](fused, masks[level])
        outs: list[Tensor] = [up[0]]  # type: ignore[list-item]
        for level in range(1, n):
            below, _ = masked_max_pool(
                outs[-1], masks[level - 1], self.kernel_size, self.options.pool_ignores_padding
            )
            below = below[..., : inputs[level].shape[-1]]
            x_in = inputs[level]
            if self.lateral_bottom_up is not None and level < n - 1:
                x_in = self._project(self.lateral_bottom_up, level - 1, levels[level], masks[level])
            parts = [x_in, up[level], below] if self._with_up(level) else [x_in, below]
            fused = F.silu(self.down_weights[level - 1](parts))
            out, _ = self.down_blocks[level - 1](fused, masks[level])
            outs.append(out)
        return outs, list(masks)


class BiFPN(nn.Module):
    """A stack of :class:`BiFPNLayer` (the first one projects its inputs)."""

    def __init__(
        self,
        dim: int,
        num_levels: int,
        num_layers: int = 3,
        kernel_size: int = 7,
        options: BiFPNOptions | None = None,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"a BiFPN needs at least one layer, got {num_layers}")
        self.layers = nn.ModuleList(
            BiFPNLayer(dim, num_levels, kernel_size, project_inputs=i == 0, options=options)
            for i in range(num_layers)
        )

    def forward(self, levels: Levels, masks: Masks) -> tuple[Levels, Masks]:
        """Levels ``(B, C, T_l)`` and masks ``(B, T_l)`` -> the same shapes."""
        for layer in self.layers:
            levels, masks = layer(levels, masks)
        return levels, masks


class FPN(nn.Module):
    """A top-down feature pyramid (ActionFormer's ``FPN1D``).

    ``lat_l = conv1x1(x_l) + upsample(lat_{l+1})``; ``out_l = LN(dwconv3(lat_l))``.
    """

    def __init__(self, dim: int, num_levels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(
            MaskedConv1d(dim, dim, 1, bias=False) for _ in range(num_levels)
        )
        self.smooth = nn.ModuleList(
            MaskedConv1d(dim, dim, 3, groups=dim, bias=False) for _ in range(num_levels)
        )
        self.norm = nn.ModuleList(ChannelLayerNorm(dim) for _ in range(num_levels))

    def forward(self, levels: Levels, masks: Masks) -> tuple[Levels, Masks]:
        """Levels ``(B, C, T_l)`` and masks ``(B, T_l)`` -> the same shapes."""
        lat = [conv(x, m)[0] for conv, x, m in zip(self.lateral, levels, masks)]
        for level in range(len(lat) - 1, 0, -1):
            lat[level - 1] = lat[level - 1] + upsample(lat[level], lat[level - 1].shape[-1])
        outs = []
        for x, m, conv, norm in zip(lat, masks, self.smooth, self.norm):
            x, _ = conv(x * m[:, None].to(x.dtype), m)
            outs.append(norm(x) * m[:, None].to(x.dtype))
        return outs, list(masks)


def build_neck(
    kind: str,
    dim: int,
    num_levels: int,
    num_layers: int,
    kernel_size: int,
    options: BiFPNOptions | None = None,
) -> nn.Module:
    """``bifpn`` (:class:`BiFPN`, with ``options``) or ``fpn`` (:class:`FPN`)."""
    if kind == "bifpn":
        return BiFPN(dim, num_levels, num_layers, kernel_size, options)
    if kind == "fpn":
        return FPN(dim, num_levels)
    raise ValueError(f"unknown neck '{kind}'; use 'bifpn' or 'fpn'")


__all__ = [
    "BiFPN",
    "BiFPNLayer",
    "BiFPNOptions",
    "ChannelLayerNorm",
    "ConvNeXtBlock1d",
    "ConvNeXtPyramid",
    "Downsample",
    "DropPath",
    "FPN",
    "FusionWeights",
    "MaskedConv1d",
    "build_neck",
    "masked_max_pool",
    "trimmed_length",
    "upsample",
    "valid_extent",
]
