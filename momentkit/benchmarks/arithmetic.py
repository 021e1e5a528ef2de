"""How much arithmetic a step does, and the fastest it could run on this machine (``--flops``).

A speed ratio between two implementations of the same function is bounded by their arithmetic:
when both call the same matrix-multiplication library, momentkit's step cannot take less time
than its matmul / convolution / attention FLOPs at the machine's peak matmul rate. These helpers
give the three numbers that turn a measured ratio into "how far from the floor":

- :func:`count_flops`: FLOPs of one call (forward and, for a training step, backward), counted
  by ``torch.utils.flop_counter`` (matmuls, convolutions, attention; element-wise work is not
  counted: it is the overhead a faster implementation can remove);
- :func:`peak_matmul_rate`: FLOP/s of a large float32 matmul with the same threads and device
  (the faster of the BLAS and oneDNN), the rate no step's matmuls exceed;
- :func:`arithmetic_report`: per side GFLOP, achieved GFLOP/s, and the floor ratio
  ``momentkit FLOPs / peak / official time`` (no same-arithmetic implementation can beat it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

_clock = time.perf_counter  # the timer of :func:`peak_matmul_rate`


class _Totals:
    """Stand-in for ``FlopCounterMode``'s module tracker: files every count under
    ``"Global"``. The real tracker hooks each module's outputs for the backward pass, which
    fails on a forward run under ``torch.no_grad`` with tensors that require grad (the official
    evaluation code does that); only the total is needed here."""

    parents = frozenset({"Global"})
    is_bw = False

    def __enter__(self) -> _Totals:
        return self

    def __exit__(self, *exc: object) -> bool:
        return False


#: substrings of the names of operators that do matmul-sized work; one of these without a FLOP
#: formula (a fused kernel: ``_transformer_encoder_layer_fwd``, ``_native_multi_head_attention``)
#: is reported as uncounted, so that a count that misses work says so
_HEAVY = ("mm", "conv", "attention", "transformer", "rnn", "gru", "lstm", "linear", "matmul")


class FlopCount(NamedTuple):
    """FLOPs of one call, and the operators that did matmul-sized work without being counted."""

    flops: int
    uncounted: tuple[str, ...] = ()


def _cpu_flash_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _cpu_flash_attention_backward(grad, query, key, value, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad, query, key, value)


def _prod(shape: Any) -> int:
    return math.prod(int(n) for n in shape)


def _linear(input, weight, *args, out_shape=None, **kwargs) -> int:  # noqa: A002, ANN001
    """``aten.linear``: a ``(..., k) @ (k, n)`` product, ``2 k`` FLOPs per output element."""
    return 2 * _prod(out_shape) * int(input[-1])


def _matmul(a, b, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
    """``aten.matmul`` (any batch and broadcast): ``2 k`` FLOPs per output element."""
    return 2 * _prod(out_shape) * int(a[-1])


def _attention(query, key, value, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
    """``aten.scaled_dot_product_attention``, ``(..., L, E)`` queries against ``(..., S, E)``
    keys and ``(..., S, Ev)`` values: ``Q K^T`` and ``A V``."""
    batch, length, keys = _prod(query[:-2]), int(query[-2]), int(key[-2])
    return 2 * batch * length * keys * (int(query[-1]) + int(value[-1]))


def _conv1d(input, weight, *args, out_shape=None, **kwargs) -> int:  # noqa: A002, ANN001
    """``aten.conv1d``: each output element is a ``C_in / groups x kernel`` dot product."""
    return 2 * _prod(out_shape) * int(weight[1]) * int(weight[2])


def _gru(input: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:  # noqa: A002
    """``aten.gru`` (``.input`` and packed ``.data``): every time step of every sequence
    multiplies its input and hidden state by each layer's and direction's ``(3 H, in)`` and
    ``(3 H, H)`` weights, the 2-d entries of the parameter list (the gates' element-wise work
    is not counted)."""
    params = next(a for a in args if isinstance(a, (list, tuple)) and a and _is_shape(a[0]))
    steps = _prod(input[:-1])  # (T, B), (B, T), (T,) unbatched or the packed rows
    return 2 * steps * sum(_prod(shape) for shape in params if len(shape) == 2)


def _is_shape(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(n, int) for n in value)


def count_flops(fn: Callable[[], Any]) -> FlopCount:
    """FLOPs of the matmuls, convolutions and attention one call of ``fn`` runs (its forward
    and any backward it runs), by ``torch.utils.flop_counter``'s formulas (a ``(m, k) @ (k, n)``
    product counts ``2 m k n``; the CPU flash attention kernel, which PyTorch's table lacks,
    counts as its CUDA twin; ``linear``, ``matmul``, ``scaled_dot_product_attention``,
    ``conv1d`` and ``gru``, which arrive undecomposed under ``torch.inference_mode``, as their
    products), and the operators of matmul-sized work it could not count."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode, flop_registry

    aten = torch.ops.aten
    formulas = {
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_attention_backward,
        # composite operators reach the counter whole under torch.inference_mode (the
        # evaluation code paths): counted as the products they decompose into
        aten.linear: _linear,
        aten.matmul: _matmul,
        aten.scaled_dot_product_attention: _attention,
        aten.conv1d: _conv1d,
        aten.gru: _gru,
    }
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):  # momentkit.modeling.linear's kernel
        formulas[torch.ops.mkldnn._linear_pointwise] = _linear
    known = {str(op) for op in (*flop_registry, *formulas)}

    class Uncounted(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            name = str(func.overloadpacket)
            if name not in known and any(h in name.rsplit(".", 1)[-1] for h in _HEAVY):
                self.names.add(name)
            return func(*args, **(kwargs or {}))

    counter = FlopCounterMode(display=False, custom_mapping=formulas)
    counter.mod_tracker = _Totals()  # type: ignore[assignment]
    with counter, Uncounted() as seen:
        fn()
    return FlopCount(int(counter.get_total_flops()), tuple(sorted(seen.names)))


def peak_matmul_rate(
    device: Any = "cpu", size: int = 2048, repeats: int = 10, dtype: Any = None
) -> float:
    """FLOP/s of a ``size`` x ``size`` matmul in ``dtype`` (default float32) on ``device`` with
    the current torch threads: the best of ``repeats`` timed products after one warm-up (the
    rate the step's own, smaller matmuls stay below), by the faster of ``torch.mm`` (the BLAS)
    and :func:`momentkit.modeling.linear.linear` (oneDNN, where enabled: on AMD processors
    MKL's float32 ``sgemm`` runs its AVX2 code, about half of what oneDNN reaches)."""
    import torch

    from momentkit.benchmarks.official_timing import synchronize
    from momentkit.modeling.linear import linear

    device = torch.device(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for product in (torch.mm, linear):
        product(a, b)  # warms the library up, untimed
        for _ in range(repeats):
            synchronize(device)
            start = _clock()
            product(a, b)
            synchronize(device)
            best = min(best, _clock() - start)
    return 2 * size**3 / best


def side_figures(count: FlopCount, seconds: float, peak: float) -> dict[str, Any]:
    """One side's ``{"gflop", "gflop_s", "at_peak_s", "peak_share", "uncounted"}``: its FLOPs,
    the rate it achieved in ``seconds``, the time those FLOPs take at ``peak`` FLOP/s, that
    time's share of ``seconds`` (the rest is not matmul arithmetic at peak: overhead), and the
    operators whose work the count misses."""
    return {
        "gflop": round(count.flops / 1e9, 4),
        "gflop_s": round(count.flops / seconds / 1e9, 1),
        "at_peak_s": round(count.flops / peak, 4),
        "peak_share": round(count.flops / peak / seconds, 3),
        "uncounted": list(count.uncounted),
    }


def arithmetic_report(
    flops: dict[str, FlopCount], seconds: dict[str, float], peak: float
) -> dict[str, Any]:
    """The ``--flops`` figures of one or two sides.

    Args:
        flops: :func:`count_flops` of one step (or one prediction run) per side:
            ``"momentkit"`` and, when compared, ``"official"``.
        seconds: the median time of that step per side.
        peak: :func:`peak_matmul_rate` in FLOP/s.

    Returns:
        ``{"peak_gflop_s", <side>: side_figures(...)}``, and with an official side
        ``"flop_ratio"`` (momentkit / official FLOPs) and ``"floor_ratio"``: momentkit's FLOPs
        at the peak rate over the official time, the lowest time ratio an implementation with
        momentkit's arithmetic can reach on this machine.
    """
    report: dict[str, Any] = {"peak_gflop_s": round(peak / 1e9, 1)}
    for side, count in flops.items():
        report[side] = side_figures(count, seconds[side], peak)
    if "official" in flops:
        official, ours = flops["official"].flops, flops["momentkit"].flops
        report["flop_ratio"] = round(ours / official, 3) if official else None
        report["floor_ratio"] = round(ours / peak / seconds["official"], 3)
    return report


def describe(report: dict[str, Any], unit: str = "step") -> str:
    """One printed line of :func:`arithmetic_report`."""
    m = report["momentkit"]
    line = f"arithmetic per {unit} (matmul, convolution and attention FLOPs): "
    if "official" in report:
        o = report["official"]
        line += f"official {o['gflop']} GFLOP ({o['gflop_s']} GFLOP/s achieved), "
    line += (
        f"momentkit {m['gflop']} GFLOP ({m['gflop_s']} GFLOP/s); peak matmul rate "
        f"{report['peak_gflop_s']} GFLOP/s"
    )
    missed = sorted(
        {
            op
            for side in ("official", "momentkit")
            for op in report.get(side, {}).get("uncounted", [])
        }
    )
    if missed:
        line += f"; NOT counted (fused kernels without a FLOP formula): {', '.join(missed)}"
    if "official" in report:
        line += (
            f"; momentkit / official FLOPs {report['flop_ratio']}, so no implementation with "
            f"momentkit's arithmetic gets below {report['floor_ratio']} of the official time here"
        )
    else:
        line += f": momentkit's FLOPs at peak are {m['peak_share']:.0%} of its time"
    return line


__all__ = [
    "FlopCount",
    "arithmetic_report",
    "count_flops",
    "describe",
    "peak_matmul_rate",
    "side_figures",
]
