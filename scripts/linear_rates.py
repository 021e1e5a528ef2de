#!/usr/bin/env python3
"""float32 product rates of the BLAS (``F.linear``, ``mm``) and of oneDNN here (not run by CI).

For the linear layers of a QVHighlights-sized training step (Moment-DETR's encoder rows, its input
projection, UniMD's ConvNeXt MLP), times the forward product and the two backward products (input
gradient ``grad @ W``, weight gradient ``grad^T @ x``) both ways, alternating, and prints GFLOP/s
and the largest difference of the results against float64::

    python scripts/linear_rates.py --threads 2 --repeats 20

``momentkit.modeling.linear`` sends float32 products to oneDNN where it is faster (docs/models.md,
"oneDNN linear layers").
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from momentkit.modeling.linear import _onednn

Product = Callable[[], Tensor]

#: (rows, in, out): Moment-DETR's encoder FFN and projections (32 x 107 rows), its video input
#: projection (32 x 75 rows of 2818), UniMD's ConvNeXt MLP (180 valid steps), a 98-row query,
#: LD-DETR's Distill Align queue (32 features against 65536 queued ones)
SHAPES = [(3424, 256, 1024), (3424, 1024, 256), (3424, 256, 256), (2400, 2818, 256),
          (180, 512, 2048), (180, 2048, 512), (98, 256, 256), (32, 256, 65536)]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads; GFLOP/s, median of {args.repeats}")
    print("rows x in x out | forward BLAS / oneDNN | input grad | weight grad | max |error| vs f64")
    for rows, k, n in SHAPES:
        x, w = torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g)
        grad = torch.randn(rows, n, generator=g)
        cells = [rates(pair, 2 * rows * k * n, args.repeats) for pair in products(x, w, grad)]
        exact = F.linear(x.double(), w.double())
        blas = (F.linear(x, w).double() - exact).abs().max().item()
        onednn = (_onednn(x, w, None).double() - exact).abs().max().item()
        print(f"{rows} x {k} x {n} | " + " | ".join(cells) + f" | {blas:.1e} / {onednn:.1e}")


def products(x: Tensor, w: Tensor, grad: Tensor) -> list[tuple[Product, Product]]:
    """(BLAS, oneDNN) of the forward, input-gradient and weight-gradient products."""
    return [
        (lambda: F.linear(x, w), lambda: _onednn(x, w, None)),
        (lambda: grad.mm(w), lambda: _onednn(grad, w.t(), None)),
        (lambda: grad.t().mm(x), lambda: _onednn(grad.t(), x.t(), None)),
    ]


def rates(pair: tuple[Product, Product], flops: int, repeats: int) -> str:
    """``"BLAS / oneDNN"`` GFLOP/s, medians of ``repeats`` alternated calls after a warm-up."""
    times: list[list[float]] = [[], []]
    for fn in pair:
        fn()
    for _ in range(repeats):
        for side, fn in enumerate(pair):
            start = time.perf_counter()
            fn()
            times[side].append(time.perf_counter() - start)
    blas, onednn = (flops / statistics.median(t) / 1e9 for t in times)
    return f"{blas:.0f} / {onednn:.0f}"


if __name__ == "__main__":
    main()
