"""PReLU with one learnable slope and a fast CPU backward.

``torch.nn.PReLU``'s CPU backward (``_prelu_kernel_backward``) takes ~10x its forward: on a
QD-DETR feed-forward activation (4864 x 1024) 38 ms against 4 ms, 8 % of a training step. With
one shared slope ``a`` the gradients are, exactly as PyTorch defines them,

- input: ``g`` where ``x > 0``, ``a * g`` elsewhere;
- slope: ``sum(x * g over x <= 0)``;

computed here from two fast elementwise kernels and one dot product: the input gradient is
one pass of ``leaky_relu_backward`` with the slope as a scalar, bit-identical to PyTorch's
(``g`` or ``g * a``; three passes, ``k + (g - k) * a`` with ``k = threshold_backward(g, x, 0)``,
until issue 33's backward work: 2.1 ms instead of 6.4 ms on a 64 x 75 x 1024 activation, one
thread); the slope gradient ``dot(min(x, 0), g)`` differs only by the order of the float
additions (in bf16 / fp16 it is summed in float32: closer to the exact sum than PyTorch's).
The forward is ``F.prelu`` itself. Off the CPU (fused kernels), and with one slope per channel,
:class:`PReLU` is ``torch.nn.PReLU``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

#: dtypes whose ``torch.dot`` is a BLAS call; a bf16 / fp16 dot on the CPU is a scalar loop
#: (49 ms on a 4864 x 1024 QD-DETR activation under bf16 autocast, 6 a step: 0.3 s of a 0.68 s
#: step), so those products are converted and summed in float32 (two vectorised casts + sdot)
_BLAS_DTYPES = (torch.float32, torch.float64)


class _SharedSlopePReLU(torch.autograd.Function):
    """``F.prelu(x, weight)`` for a one-element ``weight``, with the fast backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return F.prelu(x, weight.to(x.dtype))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:  # g where x > 0, else g * a (a rounded to g's dtype)
            slope = float(weight.to(grad.dtype))
            grad_x = torch.ops.aten.leaky_relu_backward(grad, x, slope, False)
        if ctx.needs_input_grad[1]:
            negative, flat = x.clamp(max=0).reshape(-1), grad.reshape(-1)
            if negative.dtype not in _BLAS_DTYPES:  # bf16 / fp16: summed in float32
                negative, flat = negative.float(), flat.float()
            grad_w = torch.dot(negative, flat).reshape(weight.shape).to(weight.dtype)
        return grad_x, grad_w


def prelu(x: Tensor, weight: Tensor) -> Tensor:
    """``F.prelu`` (any shape ``(*)``), with the fast CPU backward for one shared slope."""
    if weight.numel() == 1 and x.device.type == "cpu" and torch.is_grad_enabled():
        return _SharedSlopePReLU.apply(x, weight)
    return F.prelu(x, weight.to(x.dtype))


class PReLU(nn.PReLU):
    """``torch.nn.PReLU`` (same parameter, same state dict) using :func:`prelu`."""

    def forward(self, x: Tensor) -> Tensor:
        """``(*)`` -> ``(*)``."""
        return prelu(x, self.weight)
