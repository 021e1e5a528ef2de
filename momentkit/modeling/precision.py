"""Scores in float32 under bf16 autocast.

bf16 keeps 8 bits of mantissa: a saliency score of 2.37 is stored to within ~0.01, so clips whose
scores differ by less tie, and highlight detection, a ranking of clips, loses to the ties
(QD-DETR trained on the synthetic benchmark with ``trainer.precision: bf16``: HL mAP 31.3 with
its saliency head in bf16, 36.5 with the same weights in float32; docs/models.md, "Speed").
The heads that produce ranked scores are a few small products, so they run in float32 whatever
the autocast; outside autocast nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


def in_float32(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` with autocast off and floating-point tensor arguments in float32
    when autocast is on for their device; ``fn(*args, **kwargs)`` unchanged otherwise."""
    device = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
    if not torch.is_autocast_enabled(device):
        return fn(*args, **kwargs)
    args = tuple(a.float() if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)
    with torch.autocast(device, enabled=False):
        return fn(*args, **kwargs)


__all__ = ["in_float32"]
