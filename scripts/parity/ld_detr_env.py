"""Import the official LD-DETR code (qingchen239/ld-detr) on a CPU-only machine.

Two things stand between the release and this machine, and both are stood in, nothing else is
changed: ``torchvision`` (imported for ``torchvision.ops.focal_loss.sigmoid_focal_loss`` only;
no CPU build here) by a function written from its documented definition, and ``Tensor.cuda``
(``LD_DETR.forward`` creates its decoder queries with ``torch.zeros(...).cuda()``), which
returns the tensor itself without CUDA.

The stand-ins live in :mod:`momentkit.benchmarks.official_env` (shared with ``momentkit bench
train/infer --official-dir``); this module keeps the names the fixture script imports.
"""

from __future__ import annotations

from momentkit.benchmarks.official_env import import_ld_detr, sigmoid_focal_loss

__all__ = ["import_ld_detr", "sigmoid_focal_loss"]
