"""Import the official UniMD code (yingsen1/UniMD) from a checkout, without its training extras.

Used by ``scripts/parity/unimd_fixtures.py``. The official model code needs three things this
machine lacks; each is stood in for, with just what the model's forward, loss and
post-processing use: ``timm.models.layers`` (``DropPath``, ``trunc_normal_``, same
stochastic-depth semantics; the fixtures switch it off, as momentkit's side),
``torchvision.ops.boxes.nms`` (imported by ``libs/modeling/BiFPN.py`` for a 2-D helper the 1-D
model never calls; raises if called), and the compiled 1-D NMS, built from the checkout's own
sources into a temporary folder (``build_nms``), so soft-NMS is the official C++ code. Where no
compiler is present the decoded-result fixtures cannot be made (``has_nms`` is False).
``libs.utils``'s ``__init__`` (the whole evaluation/training stack) is replaced by a namespace
holding only ``libs/utils/nms.py``.

The stand-ins live in :mod:`momentkit.benchmarks.official_env` (shared with ``momentkit bench
train/infer --official-dir``); this module keeps the names the fixture script imports.
"""

from __future__ import annotations

from momentkit.benchmarks.official_env import UniMDModules as OfficialEnv
from momentkit.benchmarks.official_env import build_nms, import_unimd
from momentkit.benchmarks.official_env import unimd_deterministic as deterministic

import_official = import_unimd

__all__ = ["OfficialEnv", "build_nms", "deterministic", "import_official"]
