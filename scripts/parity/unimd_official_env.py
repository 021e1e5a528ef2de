"""Import the official UniMD code (yingsen1/UniMD) from a checkout, without its training extras.

Used by ``scripts/parity/unimd_fixtures.py`` only (not by the library or the tests).

The official model code needs three things this machine lacks; each is stood in for, with just
what the model's forward, loss and post-processing use:

- ``timm.models.layers`` (``DropPath``, ``trunc_normal_``): a small module of our own with the
  same stochastic-depth semantics (the fixtures switch it off, as momentkit's side);
- ``torchvision.ops.boxes.nms``: imported by ``libs/modeling/BiFPN.py`` for a 2-D helper the
  1-D model never calls; the stand-in raises if it is called;
- the compiled 1-D NMS (``nms_1d_cpu`` from ``libs/utils/csrc/nms_cpu.cpp``): built from the
  checkout's own sources with ``python setup.py build_ext --inplace`` into a temporary copy
  (``build_nms``), so soft-NMS is the official C++ code. Where no compiler is present the
  decoded-result fixtures cannot be made (``OfficialEnv.has_nms`` is False).

``libs.utils``'s package ``__init__`` pulls in the whole evaluation/training stack (pandas,
prettytable, ipdb, tensorboard); it is replaced by a namespace that holds only
``libs/utils/nms.py`` (``batched_nms``), which is all ``libs/modeling/meta_archs.py`` imports.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


class _DropPath(nn.Module):
    """Stochastic depth as timm's ``DropPath`` (per-sample, scaled by the keep probability)."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep if self.scale_by_keep else x * mask


def _trunc_normal_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0,
                   b: float = 2.0) -> torch.Tensor:  # fmt: skip
    with torch.no_grad():
        return nn.init.trunc_normal_(tensor, mean, std, a, b)


def _nms_unused(*args: object, **kwargs: object) -> None:
    raise RuntimeError("torchvision nms stand-in: the 1-D UniMD model should not call it")


def _install_stand_ins() -> None:
    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")
    layers.DropPath = _DropPath  # type: ignore[attr-defined]
    layers.trunc_normal_ = _trunc_normal_  # type: ignore[attr-defined]
    timm.models = models  # type: ignore[attr-defined]
    models.layers = layers  # type: ignore[attr-defined]
    tv = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    boxes = types.ModuleType("torchvision.ops.boxes")
    boxes.nms = _nms_unused  # type: ignore[attr-defined]
    tv.ops = ops  # type: ignore[attr-defined]
    ops.boxes = boxes  # type: ignore[attr-defined]
    for name, module in {
        "timm": timm,
        "timm.models": models,
        "timm.models.layers": layers,
        "torchvision": tv,
        "torchvision.ops": ops,
        "torchvision.ops.boxes": boxes,
    }.items():
        sys.modules.setdefault(name, module)


def build_nms(official_dir: Path, build_dir: Path) -> Path | None:
    """Compile ``libs/utils/csrc/nms_cpu.cpp`` of the checkout into ``build_dir``.

    Returns the directory holding ``nms_1d_cpu*.so``, or ``None`` when the build fails (no
    compiler / headers); an already-built module in ``build_dir`` is reused.
    """
    build_dir.mkdir(parents=True, exist_ok=True)
    if any(build_dir.glob("nms_1d_cpu*.so")):
        return build_dir
    src = official_dir / "libs" / "utils"
    if not (src / "csrc" / "nms_cpu.cpp").exists():
        print(
            f"{src / 'csrc' / 'nms_cpu.cpp'}: missing (not a full checkout); pass --nms-build "
            "with a directory holding a built nms_1d_cpu module",
            file=sys.stderr,
        )
        return None
    (build_dir / "csrc").mkdir(exist_ok=True)
    shutil.copy(src / "setup.py", build_dir / "setup.py")
    shutil.copy(src / "csrc" / "nms_cpu.cpp", build_dir / "csrc" / "nms_cpu.cpp")
    done = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=build_dir,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not any(build_dir.glob("nms_1d_cpu*.so")):
        print(f"building the official NMS failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return build_dir


@dataclass
class OfficialEnv:
    """The imported official modules."""

    root: Path
    meta_archs: types.ModuleType
    config: types.ModuleType
    has_nms: bool


def import_official(
    official_dir: str | Path, nms_build_dir: str | Path | None = None
) -> OfficialEnv:
    """Put the checkout on ``sys.path`` (with the stand-ins) and import its model code."""
    root = Path(official_dir).resolve()
    if not (root / "libs" / "modeling" / "meta_archs.py").exists():
        raise SystemExit(f"{root}: not a UniMD checkout (libs/modeling/meta_archs.py missing)")
    _install_stand_ins()
    build = Path(nms_build_dir) if nms_build_dir else Path(tempfile.mkdtemp(prefix="unimd_nms_"))
    nms_dir = build_nms(root, build)
    if nms_dir is not None:
        sys.path.insert(0, str(nms_dir))
    sys.path.insert(0, str(root))
    # libs.utils without its __init__ (evaluation/training imports): only nms.py
    libs = importlib.import_module("libs")
    utils = types.ModuleType("libs.utils")
    utils.__path__ = [str(root / "libs" / "utils")]  # type: ignore[attr-defined]
    sys.modules["libs.utils"] = utils
    libs.utils = utils  # type: ignore[attr-defined]
    if nms_dir is not None:
        nms = importlib.import_module("libs.utils.nms")
        utils.batched_nms = nms.batched_nms  # type: ignore[attr-defined]
    else:
        utils.batched_nms = _nms_unused  # type: ignore[attr-defined]
    meta_archs = importlib.import_module("libs.modeling.meta_archs")
    config = importlib.import_module("libs.core.config")
    return OfficialEnv(root, meta_archs, config, nms_dir is not None)


def deterministic(model: nn.Module) -> nn.Module:
    """Switch off stochastic depth and dropout (both sides of a fixture run without them)."""
    for m in model.modules():
        if isinstance(m, _DropPath):
            m.drop_prob = 0.0
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


__all__ = ["OfficialEnv", "build_nms", "deterministic", "import_official"]
