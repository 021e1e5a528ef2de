"""SlowFast 8x8 ResNet-50 (Feichtenhofer et al., ICCV 2019) as a plain torch module.

The network of the public SlowFast model zoo's ``SLOWFAST_8x8_R50`` (Kinetics-400), whose pooled
features are the 2304-d ``slowfast`` stream of QVHighlights, Charades-STA and TACoS. Two
pathways read the same 2 s window: the *fast* one all ``T = 32`` frames with few channels
(beta = 1/8), the *slow* one every ``alpha = 4``-th frame (8 frames) with many; after the stem and
each of res2..res4 a time-strided convolution fuses fast into slow. The head averages each
pathway over time and space and concatenates them: ``2048 (slow) + 256 (fast) = 2304``.

Module names follow the Caffe2 blob names of the released weights one to one (see
:mod:`momentkit.encoders.slowfast_weights`).

No torchvision, no pytorchvideo: only ``torch.nn``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

#: SlowFast's input normalisation (Kinetics statistics, pixels in [0, 1])
SLOWFAST_MEAN = (0.45, 0.45, 0.45)
SLOWFAST_STD = (0.225, 0.225, 0.225)


@dataclass(frozen=True)
class SlowFastConfig:
    """Sizes of a SlowFast ResNet (defaults: 8x8 R50 of the model zoo).

    Attributes:
        width: channels of the slow stem (64); the fast pathway has ``width // beta_inv``.
        beta_inv: slow/fast channel ratio (8).
        alpha: slow/fast frame-rate ratio (4): the slow pathway reads every alpha-th frame.
        fusion_ratio: channels of a fast-to-slow fusion = ``fusion_ratio x`` the fast channels.
        fusion_kernel: temporal kernel of the fusion convolutions (7).
        blocks: bottleneck blocks of res2..res5 ((3, 4, 6, 3) for ResNet-50).
        slow_temporal: temporal kernels of the slow stem and res2..res5 ((1, 1, 1, 3, 3)).
        fast_temporal: the same for the fast pathway ((5, 3, 3, 3, 3)).
        num_classes: classes of the (unused for features) Kinetics classifier.
    """

    width: int = 64
    beta_inv: int = 8
    alpha: int = 4
    fusion_ratio: int = 2
    fusion_kernel: int = 7
    blocks: tuple[int, int, int, int] = (3, 4, 6, 3)
    slow_temporal: tuple[int, int, int, int, int] = (1, 1, 1, 3, 3)
    fast_temporal: tuple[int, int, int, int, int] = (5, 3, 3, 3, 3)
    num_classes: int = 400

    @property
    def feature_dim(self) -> int:
        """Channels of the pooled features: slow ``32 width`` + fast ``32 width / beta_inv``."""
        return 32 * self.width + 32 * self.width // self.beta_inv


class ConvBN(nn.Module):
    """Conv3d without bias, then BatchNorm3d (eps 1e-5)."""

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        kernel: tuple[int, int, int],
        stride: tuple[int, int, int] = (1, 1, 1),
        padding: tuple[int, int, int] = (0, 0, 0),
    ) -> None:
        super().__init__()
        self.conv = nn.Conv3d(dim_in, dim_out, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm3d(dim_out, eps=1e-5, momentum=0.1)
        self.direct = False  # set by fold_batch_norms: one oneDNN convolution, BN folded in

    def forward(
        self, x: torch.Tensor, relu: bool = False, add: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``relu(bn(conv(x)) + add)`` (ReLU and ``add`` optional)."""
        if self.direct and x.device.type == "cpu" and x.dtype == torch.float32:
            return _onednn(self.conv, x, relu, add)
        y = self.bn(self.conv(x))
        if add is not None:
            y += add
        return torch.relu_(y) if relu else y


def _onednn(conv: nn.Conv3d, x: torch.Tensor, relu: bool, add: torch.Tensor | None) -> Any:
    """``conv`` through oneDNN with the ReLU and residual ``add`` fused in (the same
    arithmetic; torch itself picks slow_conv3d, im2col, for the thin fast-pathway layers)."""
    args = ([*conv.padding], [*conv.stride], [*conv.dilation], conv.groups)
    fused = getattr(torch.ops.mkldnn, "_convolution_pointwise", None)
    if fused is not None:
        if add is not None:
            unary = "relu" if relu else "none"
            return fused.binary(x, add, conv.weight, conv.bias, *args, "add", 1.0, unary, [], "")
        return fused(x, conv.weight, conv.bias, *args, "relu" if relu else "none", [], "")
    y = torch.mkldnn_convolution(x, conv.weight, conv.bias, *args)
    if add is not None:
        y += add
    return torch.relu_(y) if relu else y


class Stem(nn.Module):
    """``(N, 3, T, H, W)`` -> conv (t x 7 x 7, stride 1,2,2) + BN + ReLU + max-pool 1x3x3/2."""

    def __init__(self, dim_out: int, temporal: int) -> None:
        super().__init__()
        self.conv = ConvBN(3, dim_out, (temporal, 7, 7), (1, 2, 2), (temporal // 2, 3, 3))
        self.pool = nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x, relu=True))


class Bottleneck(nn.Module):
    """ResNet bottleneck: t x 1 x 1 -> 1 x 3 x 3 (spatial stride) -> 1 x 1 x 1, plus shortcut."""

    def __init__(self, dim_in: int, dim_out: int, inner: int, temporal: int, stride: int) -> None:
        super().__init__()
        self.a = ConvBN(dim_in, inner, (temporal, 1, 1), padding=(temporal // 2, 0, 0))
        self.b = ConvBN(inner, inner, (1, 3, 3), (1, stride, stride), (0, 1, 1))
        self.c = ConvBN(inner, dim_out, (1, 1, 1))
        self.shortcut = (
            ConvBN(dim_in, dim_out, (1, 1, 1), (1, stride, stride))
            if dim_in != dim_out or stride != 1
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return self.c(self.b(self.a(x, relu=True), relu=True), relu=True, add=shortcut)


class Fuse(nn.Module):
    """Fast -> slow lateral connection: time-strided conv + BN + ReLU, concatenated to slow."""

    def __init__(self, fast_dim: int, cfg: SlowFastConfig) -> None:
        super().__init__()
        k = cfg.fusion_kernel
        self.conv = ConvBN(
            fast_dim, fast_dim * cfg.fusion_ratio, (k, 1, 1), (cfg.alpha, 1, 1), (k // 2, 0, 0)
        )

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
        return torch.cat([slow, self.conv(fast, relu=True)], 1)


class SlowFast(nn.Module):
    """SlowFast ResNet returning pooled features.

    ``forward(slow, fast)``: ``slow`` ``(N, 3, T / alpha, 224, 224)``, ``fast`` ``(N, 3, T, 224,
    224)`` normalised frames -> ``(N, feature_dim)`` (2304 for R50): the concatenated global
    averages of both pathways after res5 (the Kinetics classifier is not applied).
    :meth:`pathways` builds both inputs from one clip.
    """

    def __init__(self, config: SlowFastConfig | None = None) -> None:
        super().__init__()
        cfg = config or SlowFastConfig()
        self.config = cfg
        w, fw = cfg.width, cfg.width // cfg.beta_inv
        self.slow_stem = Stem(w, cfg.slow_temporal[0])
        self.fast_stem = Stem(fw, cfg.fast_temporal[0])
        self.fuse = nn.ModuleList([Fuse(fw, cfg)])
        slow_in, fast_in = w + fw * cfg.fusion_ratio, fw
        self.slow_stages = nn.ModuleList()
        self.fast_stages = nn.ModuleList()
        for stage, blocks in enumerate(cfg.blocks):
            mult = 2**stage
            slow_out, fast_out = 4 * w * mult, 4 * fw * mult
            stride = 1 if stage == 0 else 2
            self.slow_stages.append(
                _stage(slow_in, slow_out, w * mult, cfg.slow_temporal[stage + 1], stride, blocks)
            )
            self.fast_stages.append(
                _stage(fast_in, fast_out, fw * mult, cfg.fast_temporal[stage + 1], stride, blocks)
            )
            if stage < len(cfg.blocks) - 1:
                self.fuse.append(Fuse(fast_out, cfg))
            slow_in, fast_in = slow_out + fast_out * cfg.fusion_ratio, fast_out
        # the Kinetics classifier of the released weights (kept so they load; not applied)
        self.classifier = nn.Linear(cfg.feature_dim, cfg.num_classes)

    def pathways(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 3, T, H, W)`` -> ``(slow, fast)``: slow takes ``T / alpha`` frames at
        ``linspace(0, T - 1, T / alpha)`` (truncated to integers), fast all ``T``."""
        t = clips.shape[2]
        index = torch.linspace(0, t - 1, t // self.config.alpha).long().to(clips.device)
        return clips.index_select(2, index), clips

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
        slow, fast = self.slow_stem(slow), self.fast_stem(fast)
        slow = self.fuse[0](slow, fast)
        for i, (slow_stage, fast_stage) in enumerate(
            zip(self.slow_stages, self.fast_stages, strict=True)
        ):
            slow, fast = slow_stage(slow), fast_stage(fast)
            if i + 1 < len(self.fuse):
                slow = self.fuse[i + 1](slow, fast)
        pooled = [torch.nn.functional.avg_pool3d(x, x.shape[2:], stride=1) for x in (slow, fast)]
        return torch.cat(pooled, 1).flatten(1)


def _stage(
    dim_in: int, dim_out: int, inner: int, temporal: int, stride: int, blocks: int
) -> nn.Sequential:
    return nn.Sequential(
        *(
            Bottleneck(
                dim_in if i == 0 else dim_out, dim_out, inner, temporal, stride if i == 0 else 1
            )
            for i in range(blocks)
        )
    )


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Fold every :class:`ConvBN`'s BatchNorm (eval statistics) into its convolution, in place,
    and run the convolutions with oneDNN directly on the CPU.

    For inference in evaluation mode only: the result computes ``bn(conv(x))`` with one
    convolution (the same function up to float rounding, ~1e-6 relative).
    """
    for module in model.modules():
        if isinstance(module, ConvBN) and isinstance(module.bn, nn.BatchNorm3d):
            conv, bn = module.conv, module.bn
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            fused = nn.Conv3d(
                conv.in_channels,
                conv.out_channels,
                conv.kernel_size,
                conv.stride,
                conv.padding,
                bias=True,
            ).to(conv.weight.device, conv.weight.dtype)
            with torch.no_grad():
                fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1, 1))
                fused.bias.copy_(bn.bias - bn.running_mean * scale)
            module.conv = fused
            module.bn = nn.Identity()  # type: ignore[assignment]
            module.direct = True
    return model
