"""Import the official LD-DETR code (qingchen239/ld-detr) on a CPU-only machine.

Two things stand between the release and this machine, and both are stood in here, nothing
else is changed:

- ``ld_detr/model.py`` imports ``torchvision`` for ``torchvision.ops.focal_loss.
  sigmoid_focal_loss`` only. torchvision has no CPU build in this environment, so a module of
  our own provides that one function, written from its documented definition
  (``alpha_t (1 - p_t)**gamma BCE(x, t)``, ``reduction="none"``).
- ``LD_DETR.forward`` creates its decoder queries with ``torch.zeros(...).cuda()``; on a machine
  without CUDA ``Tensor.cuda`` is made to return the tensor itself (CPU).
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


def sigmoid_focal_loss(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> torch.Tensor:
    """torchvision's sigmoid focal loss (Lin et al. 2017), as documented."""
    prob = inputs.sigmoid()
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _stand_in_torchvision() -> None:
    if "torchvision" in sys.modules:
        return
    tv = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    focal = types.ModuleType("torchvision.ops.focal_loss")
    focal.sigmoid_focal_loss = sigmoid_focal_loss  # type: ignore[attr-defined]
    ops.focal_loss = focal  # type: ignore[attr-defined]
    tv.ops = ops  # type: ignore[attr-defined]
    sys.modules.update(
        {"torchvision": tv, "torchvision.ops": ops, "torchvision.ops.focal_loss": focal}
    )


def import_ld_detr(root: Path) -> Any:
    """The release's ``ld_detr`` package (with ``ld_detr.model`` imported) from checkout
    ``root``."""
    root = Path(root).resolve()
    if not (root / "ld_detr" / "model.py").is_file():
        raise SystemExit(f"{root}: not an ld-detr checkout (no ld_detr/model.py)")
    _stand_in_torchvision()
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    sys.path.insert(0, str(root))
    package = importlib.import_module("ld_detr")
    importlib.import_module("ld_detr.model")
    return package
