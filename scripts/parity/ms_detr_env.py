"""Import the official MS-DETR code (snailma0229/MS-DETR) on a CPU-only machine.

What stands between the release and this machine is stood in here; the release's code itself is
run unchanged:

- ``core/misc.py`` imports ``torchvision`` only to read its version (no CPU build here): a module
  of our own holding ``__version__`` (``"0.10.0"``, the release's pinned version, so no
  ``torchvision.ops`` import follows);
- ``ms_detr/dn_components.py`` imports ``util.box_ops`` (no such package in the release, never
  used): an empty module;
- ``utils/basic_utils.py`` imports ``pandas`` (absent here, never used on this path): an empty
  module;
- the release moves tensors with ``.cuda()`` and ``.to('cuda')``: on a machine without CUDA both
  return the tensor on the CPU (:func:`cpu_only`, a context manager).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


def _stand_in(name: str, **attrs: Any) -> None:
    if name in sys.modules:
        return
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    sys.modules[name] = module


def _is_cuda(device: Any) -> bool:
    return (isinstance(device, str) and device.startswith("cuda")) or (
        isinstance(device, torch.device) and device.type == "cuda"
    )


@contextlib.contextmanager
def cpu_only() -> Iterator[None]:
    """``Tensor.cuda()`` and ``Tensor.to('cuda')`` keep tensors on the CPU inside the block."""
    if torch.cuda.is_available():
        yield
        return
    cuda, to = torch.Tensor.cuda, torch.Tensor.to

    def to_cpu(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        args = tuple("cpu" if _is_cuda(a) else a for a in args)
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return to(self, *args, **kwargs)

    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.Tensor.to = to_cpu  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.Tensor.to = cuda, to  # type: ignore[method-assign]


def import_ms_detr(root: Path) -> dict[str, Any]:
    """The release's modules from checkout ``root``: ``config``, ``model``, ``inference_cg``."""
    root = Path(root).resolve()
    if not (root / "ms_detr" / "model.py").is_file():
        raise SystemExit(f"{root}: not an MS-DETR checkout (no ms_detr/model.py)")
    _stand_in("torchvision", __version__="0.10.0")
    _stand_in("util", __path__=[])
    _stand_in("util.box_ops")
    sys.modules["util"].box_ops = sys.modules["util.box_ops"]  # type: ignore[attr-defined]
    _stand_in("pandas")
    sys.path.insert(0, str(root))
    return {
        name: importlib.import_module(f"ms_detr.{name}")
        for name in ("config", "model", "inference_cg", "dn_components")
    }
