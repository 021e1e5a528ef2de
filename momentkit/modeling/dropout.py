"""Dropout with cheap, exact Bernoulli masks on CPU.

``torch.nn.functional.dropout`` on CPU draws one Bernoulli sample per element through the
generic sampler and then multiplies twice (mask, then ``1 / (1 - p)``); on the Moment-DETR input
(32 x 75 x 2818 features, ``p = 0.5``) that alone costs ~100 ms a step. Here the mask is built
from raw random bits instead, with the scale baked in:

- ``p = k / 2**b`` for ``b`` in 1, 2, 4 (0.5, 0.25, 0.75, 0.0625, ...): every random byte
  holds ``8 / b`` independent ``b``-bit fields; a field ``>= k`` keeps its element, so each
  element is dropped with probability exactly ``k / 2**b = p``. A 256-row lookup table maps every
  byte to its ``8 / b`` mask values (``0`` or ``1 / (1 - p)``), so the mask is one table gather.
  For ``p = 0.5`` that is one random bit per element, ~25x cheaper than torch's mask.
- any other ``p`` (e.g. 0.1): an element is dropped iff a uniform 32-bit integer ``U`` is below
  ``T = round(p * 2**32)``, i.e. Bernoulli with ``p`` rounded to a multiple of ``2**-32`` (finer
  than the float32 ``p`` itself). ``U`` is drawn lazily: its top byte decides except when it
  equals ``T``'s top byte, which happens for 1 element in 256; only those draw the 24 remaining
  bits. One random byte per element instead of torch's float sample.

The bytes of the second case are compared and scaled with numpy: with one thread, torch's
``uint8`` comparisons and ``nonzero`` took ~0.3 and ~0.6 ms on the 77k bytes of a synth-sized
activation (8 x 75 x 128) where numpy takes tens of microseconds, so such a mask now costs
2-3x less than with torch ops (same bits, same masks).

Random bits come from the default (or a given) ``torch.Generator``, so ``torch.manual_seed``
makes runs reproducible. Off CPU, torch's fused dropout kernel is already fast and is used as is.
Inside ``torch.compile`` (``trainer.compile``) the mask is still drawn here, eagerly (a graph
break), so compiled steps draw the same masks as eager ones; inductor's own in-kernel dropout
was tried and made a compiled Moment-DETR step slower still (docs/models.md, "Speed").
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _packed_bits(p: float) -> tuple[int, int] | None:
    """``(bits, k)`` with ``p == k / 2**bits`` for ``bits`` in 1, 2, 4, else ``None``."""
    for bits in (1, 2, 4):
        k = p * (1 << bits)
        if k == math.floor(k):
            return bits, int(k)
    return None


def _numpy_dtype(dtype: torch.dtype) -> type[np.floating]:
    """Mask values are computed in float64 for float64, else in float32 (then cast)."""
    return np.float64 if dtype == torch.float64 else np.float32


def _scaled(keep: np.ndarray, scale: float, dtype: type[np.floating]) -> np.ndarray:
    """``scale`` (rounded to ``dtype``) where ``keep`` is True, ``0`` elsewhere."""
    return keep.astype(dtype) * dtype(scale)


_TABLES: dict[tuple[int, int, torch.dtype, torch.device], Tensor] = {}


def _packed_table(bits: int, k: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(256, 8 // bits)``: the mask values encoded by each byte, ``8 // bits`` fields a byte.

    Field ``j`` of a byte is its bits ``[j * bits, (j + 1) * bits)``; one row gather per byte
    beats unpacking the fields one by one.
    """
    key = (bits, k, dtype, device)
    table = _TABLES.get(key)
    if table is None:
        shifts = np.arange(0, 8, bits, dtype=np.uint8)
        fields = (np.arange(256, dtype=np.uint8)[:, None] >> shifts) & ((1 << bits) - 1)
        scale = 1.0 / (1.0 - k / (1 << bits))
        values = _scaled(fields >= k, scale, _numpy_dtype(dtype))
        table = _TABLES[key] = torch.from_numpy(values).to(dtype=dtype, device=device)
    return table


def random_bytes(
    n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> Tensor:
    """``(n,)`` uint8 tensor of independent uniform random bytes (8 random bits each)."""
    words = torch.empty((n + 7) // 8, dtype=torch.int64, device=device)
    words.random_(-(2**63), None, generator=generator)  # full 64-bit range: every bit uniform
    return words.view(torch.uint8)[:n]


def keep_mask(
    shape: torch.Size | tuple[int, ...],
    p: float,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """A dropout mask with the inverse-keep scale folded in.

    Args:
        shape: mask shape.
        p: drop probability, ``0 <= p < 1``.

    Returns:
        ``shape`` tensor whose elements are independently ``1 / (1 - p)`` with probability
        ``1 - p`` and ``0`` otherwise (see the module docstring for the exactness of ``p``);
        the scale is computed in float64 for float64 masks, else in float32 and then cast.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    device = torch.device(device)
    n = math.prod(shape)
    packed = _packed_bits(p)
    if packed is not None:
        bits, k = packed
        table = _packed_table(bits, k, dtype, device)
        codes = random_bytes(-(-n // (8 // bits)), device, generator)
        return table.index_select(0, codes.int()).view(-1)[:n].view(shape)
    # drop iff a uniform 32-bit U < T = round(p * 2**32). U's top byte decides unless it equals
    # T's top byte (probability 1/256); only those elements draw their 24 remaining bits.
    scale, np_dtype = 1.0 / (1.0 - p), _numpy_dtype(dtype)
    threshold = round(p * 2.0**32)
    top, rest = threshold >> 24, threshold & 0xFFFFFF
    codes = random_bytes(n, device, generator).cpu().numpy()
    mask = _scaled(codes > top if rest else codes >= top, scale, np_dtype)
    tied = np.flatnonzero(codes == top) if rest else ()
    if len(tied):
        low = torch.randint(0, 1 << 24, (len(tied),), device=device, generator=generator)
        mask[tied] = _scaled(low.cpu().numpy() >= rest, scale, np_dtype)
    return torch.from_numpy(mask).view(shape).to(device=device, dtype=dtype)


def fast_dropout(
    x: Tensor, p: float, training: bool = True, generator: torch.Generator | None = None
) -> Tensor:
    """Inverted dropout: zero each element with probability ``p``, scale the rest by ``1/(1-p)``.

    Same distribution and gradient as :func:`torch.nn.functional.dropout`; on CPU the mask comes
    from :func:`keep_mask`. ``x`` may have any shape.
    """
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    if torch.compiler.is_compiling():  # the mask is drawn eagerly: the same random numbers
        return x * _eager_keep_mask(x.shape, p, x.dtype, x.device, generator)
    return x * keep_mask(x.shape, p, x.dtype, x.device, generator)


_eager_keep_mask = torch.compiler.disable(keep_mask)


class Dropout(nn.Module):
    """Drop-in replacement for :class:`torch.nn.Dropout` using :func:`fast_dropout`."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        """``(*)`` -> ``(*)``."""
        return fast_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
