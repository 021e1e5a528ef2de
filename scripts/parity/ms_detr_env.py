"""Import the official MS-DETR code (snailma0229/MS-DETR) on a CPU-only machine.

What stands between the release and this machine is stood in; the release's code itself is
run unchanged: ``torchvision`` (``core/misc.py`` reads its version only: ``"0.10.0"``, the
release's pinned version, so no ``torchvision.ops`` import follows), ``util.box_ops`` (imported
by ``ms_detr/dn_components.py``, never used), ``pandas`` (never used on this path), and
``.cuda()`` / ``.to('cuda')``, which keep tensors on the CPU inside :func:`cpu_only`.

The stand-ins live in :mod:`momentkit.benchmarks.official_env` (shared with ``momentkit bench
train/infer --official-dir``); this module keeps the names the fixture script imports.
"""

from __future__ import annotations

from momentkit.benchmarks.official_env import cpu_only, import_ms_detr

__all__ = ["cpu_only", "import_ms_detr"]
