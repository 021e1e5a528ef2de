"""Linear layers through oneDNN where it multiplies float32 matrices faster than the BLAS.

PyTorch's CPU ``F.linear`` / ``addmm`` call MKL's ``sgemm``; on AMD processors MKL takes its
AVX2 code path, so on this project's AMD EPYC (AVX-512) a float32 product ran at 185-215
GFLOP/s with 2 threads, while the same product through oneDNN (``torch.ops.mkldnn.
_linear_pointwise``, the kernel ``torch.compile``'s CPU backend emits) ran at 400-480 GFLOP/s,
and its two backward products at 430-460 (input gradient) and 240-350 (weight gradient)
against MKL's 175-210 (``docs/models.md``, "oneDNN linear layers"). Both are IEEE float32
products; they differ in summation order only (here 1e-4 absolute on outputs of magnitude
~50, MKL's own error against float64 being 4e-5).

:func:`linear` is ``F.linear`` with that kernel in the forward and backward when

- the tensors are float32 on the CPU and autocast is off there (bf16 autocast already runs its
  products through oneDNN),
- the product has at least :data:`MIN_MACS` multiply-adds (oneDNN's ~12 us per call costs more
  than it saves on the decoder's 10-query products),
- and :func:`onednn_linear_enabled`: ``MOMENTKIT_ONEDNN_LINEAR`` is ``1`` (on) or ``0`` (off),
  or unset (``auto``): on where one timed 256 x 512 x 512 product (forward and weight gradient
  together) is at least 1.2x faster through oneDNN than through ``F.linear``, decided once per
  process. On CPUs where MKL takes its AVX-512 path the two are close and ``F.linear`` stays.

:class:`Linear` is ``nn.Linear`` with that forward (same parameters and state-dict names).
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import _disable_current_modes

#: fewest multiply-adds (rows x in x out) of a product sent to oneDNN (see the module doc)
MIN_MACS = 1 << 20

_ENV = "MOMENTKIT_ONEDNN_LINEAR"
_decision: bool | None = None


def _onednn(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ weight^T + bias`` by oneDNN (strided inputs are read in place)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _measure() -> bool:
    """Whether oneDNN ran a forward + weight-gradient product 1.2x faster than ``F.linear``
    and ``mm``: the fastest of 7 alternated timings each, after a warm-up (alternating and
    taking minima keeps a busy machine from deciding: load slows both sides alike)."""
    if not _available():
        return False
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(256, 512, generator=g), torch.randn(512, 512, generator=g)
    grad = torch.randn(256, 512, generator=g)
    sides = {
        "onednn": lambda: (_onednn(x, w, None), _onednn(grad.t(), x.t(), None)),
        "blas": lambda: (F.linear(x, w), grad.t().mm(x)),
    }
    best = dict.fromkeys(sides, float("inf"))
    # outside any dispatch mode a caller may be in (a FLOP counter must not count these)
    with torch.no_grad(), _disable_current_modes():
        try:
            for round_ in range(8):  # the first round warms up, untimed
                for name, fn in sides.items():
                    start = time.perf_counter()
                    fn()
                    elapsed = time.perf_counter() - start
                    if round_:
                        best[name] = min(best[name], elapsed)
        except RuntimeError:  # a build whose kernel refuses these tensors
            return False
    return best["blas"] >= 1.2 * best["onednn"]


def onednn_linear_enabled() -> bool:
    """Whether :func:`linear` may use oneDNN (``MOMENTKIT_ONEDNN_LINEAR``: ``1`` / ``0`` /
    unset = measured once, see the module doc)."""
    global _decision
    setting = os.environ.get(_ENV, "auto").strip().lower()
    if setting in ("0", "off", "false", "no"):
        return False
    if setting in ("1", "on", "true", "yes"):
        return _available()
    if _decision is None:
        _decision = _measure()
    return _decision


def _eligible(x: Tensor, weight: Tensor) -> bool:
    # the process-wide decision right after the attribute checks: where oneDNN is off (CPUs on
    # which MKL is as fast) every call stops there instead of querying autocast and the
    # compiler (~6 us a call; a one-query QD-DETR prediction makes 77)
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and onednn_linear_enabled()
        and weight.dtype == torch.float32
        and weight.dim() == 2
        and x.dim() >= 2
        and x.numel() // max(1, x.shape[-1]) * weight.numel() >= MIN_MACS
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    )


class _OneDNNLinear(torch.autograd.Function):
    """``F.linear`` of ``(N, in)`` rows whose forward and backward products run through
    oneDNN."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.with_bias = bias is not None
        return _onednn(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors  # (N, in), (out, in); grad (N, out)
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn(grad, weight.t(), None)  # (N, in)
        if ctx.needs_input_grad[1]:
            # both operands transposed, read in place; rows of x strided in memory (a token
            # picked from each sequence) are copied first: oneDNN took 49 ms for a 64 x 256 x
            # 256 product with a row stride of 19456. The product's narrower side goes second
            # (measured faster on the step's shapes, docs/models.md)
            x = x.contiguous()
            if x.shape[1] < grad.shape[1]:
                grad_w = _onednn(x.t(), grad.t(), None).t()  # (in, out) -> (out, in)
            else:
                grad_w = _onednn(grad.t(), x.t(), None)  # (out, in)
        if ctx.with_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``: ``(..., in)`` -> ``(..., out)``, through oneDNN where
    that is faster (module doc)."""
    if _eligible(x, weight):  # 2-d inside the Function: its output must not be a view
        out = _OneDNNLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
        return out.view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` computed by :func:`linear`."""

    def forward(self, x: Tensor) -> Tensor:
        """``(..., in_features)`` -> ``(..., out_features)``."""
        return linear(x, self.weight, self.bias)


__all__ = ["MIN_MACS", "Linear", "linear", "onednn_linear_enabled"]
