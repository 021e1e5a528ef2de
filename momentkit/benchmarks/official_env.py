"""Import the official code of each model from a checkout, on a machine without its extras.

The released repositories import packages their model path never calls (``pandas``,
``torchvision``, ``timm``, ``einops``, ``easydict``) and move tensors with ``.cuda()``. This
module stands in for exactly those, and nothing of the official code is copied: it is imported
from the checkout and runs as released. Used by ``momentkit bench train/infer --official-dir``
and by the parity fixture scripts (``scripts/parity/*_env.py`` re-export it).

- :func:`import_lighthouse` (line/lighthouse: Moment-DETR, QD-DETR): ``easydict.EasyDict``
  (a dict with attribute access) and empty ``pandas``, ``torchvision``, ``einops``;
- :func:`import_ld_detr` (qingchen239/ld-detr): ``torchvision.ops.focal_loss.
  sigmoid_focal_loss`` (:func:`sigmoid_focal_loss`, from its documented definition), empty
  ``pandas`` and ``torchtext.vocab`` (GloVe queries only);
- :func:`import_ms_detr` (snailma0229/MS-DETR): ``torchvision.__version__``, an empty
  ``util.box_ops`` (imported, never used) and ``pandas``;
- :func:`import_unimd` (yingsen1/UniMD): ``timm.models.layers`` (``DropPath``,
  ``trunc_normal_``), ``torchvision.ops.boxes.nms`` (raises if called) and its compiled 1-D NMS
  built from the checkout's own C++ source (:func:`build_nms`);
- :func:`cpu_only`: ``Tensor.cuda()`` and ``Tensor.to("cuda")`` keep tensors on the CPU where
  there is no CUDA (the LD-DETR and MS-DETR releases call them unconditionally).

A stand-in is installed only where the real package is not importable. Every failure is one
:class:`OfficialCodeError` line naming the checkout and, for a missing package, how to install
it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from momentkit.utils.errors import MomentkitError

#: codebase -> (its GitHub repository, a file every checkout has)
CHECKOUTS: dict[str, tuple[str, str]] = {
    "lighthouse": ("line/lighthouse", "lighthouse/common/qd_detr.py"),
    "ld_detr": ("qingchen239/ld-detr", "ld_detr/model.py"),
    "ms_detr": ("snailma0229/MS-DETR", "ms_detr/model.py"),
    "unimd": ("yingsen1/UniMD", "libs/modeling/meta_archs.py"),
}
#: import name -> pip package, where they differ
PIP_NAMES = {"yaml": "pyyaml", "sklearn": "scikit-learn", "cv2": "opencv-python", "PIL": "pillow"}


class OfficialCodeError(MomentkitError):
    """The official checkout is missing, is another repository, or its imports fail."""


def check_checkout(root: str | Path, codebase: str) -> Path:
    """``root`` resolved, or :class:`OfficialCodeError` if it is not a checkout of
    ``codebase`` (a key of :data:`CHECKOUTS`)."""
    repo, marker = CHECKOUTS[codebase]
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise OfficialCodeError(f"{path}: no such directory (expected a checkout of {repo})")
    if not (path / marker).is_file():
        raise OfficialCodeError(
            f"{path}: not a checkout of {repo} ({marker} missing); "
            f"git clone https://github.com/{repo} and pass its folder"
        )
    return path


def import_official(root: Path, codebase: str, name: str) -> types.ModuleType:
    """``importlib.import_module(name)``, its failures as one :class:`OfficialCodeError` line."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        missing = (e.name or str(e)).split(".")[0]
        hint = PIP_NAMES.get(missing, missing)
        raise OfficialCodeError(
            f"{root}: importing the official {CHECKOUTS[codebase][0]} code ({name}) failed: "
            f"no module named {missing!r}; install it (pip install {hint})"
        ) from None
    except Exception as e:  # noqa: BLE001 - any import-time failure of foreign code
        raise OfficialCodeError(
            f"{root}: importing the official {CHECKOUTS[codebase][0]} code ({name}) failed: "
            f"{type(e).__name__}: {e}"
        ) from None


def _importable(name: str) -> bool:
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def stand_in(name: str, **attrs: Any) -> types.ModuleType:
    """Install an (otherwise empty) module ``name`` holding ``attrs`` unless the real package
    is importable; returns the module in use (dotted names: the parents must exist)."""
    if _importable(name):
        return importlib.import_module(name)
    module = types.ModuleType(name)
    # a spec without an origin: ``find_spec`` (torch._dynamo asks it for pandas and others
    # when an optimizer is first built) must not fail on the stand-in
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package="__path__" in attrs)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


def _package_stand_in(name: str) -> types.ModuleType:
    """A stand-in package (``__path__`` empty), so stand-in submodules can hang under it."""
    return stand_in(name, __path__=[])


class EasyDict(dict):
    """Stand-in for ``easydict.EasyDict``: keys are attributes (what Lighthouse reads)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def sigmoid_focal_loss(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> torch.Tensor:
    """torchvision's sigmoid focal loss (Lin et al. 2017), as documented:
    ``alpha_t (1 - p_t) ** gamma BCE(x, t)``."""
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


def _is_cuda(device: Any) -> bool:
    return (isinstance(device, str) and device.startswith("cuda")) or (
        isinstance(device, torch.device) and device.type == "cuda"
    )


@contextlib.contextmanager
def cpu_only() -> Iterator[None]:
    """Inside the block, ``Tensor.cuda()`` and ``Tensor.to('cuda')`` keep tensors on the CPU
    when CUDA is unavailable (with CUDA: no change)."""
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


def _on_path(*paths: Path) -> None:
    for path in reversed(paths):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


# ------------------------------------------------------------------------------- Lighthouse
def install_lighthouse_stand_ins() -> None:
    """Empty modules for the packages the Moment-DETR/QD-DETR path imports but never calls,
    and ``easydict.EasyDict`` (:class:`EasyDict`, also so that pickles name it)."""
    if not _importable("easydict"):
        EasyDict.__module__ = "easydict"
        stand_in("easydict", EasyDict=EasyDict)
    stand_in("pandas")
    stand_in("torchvision")
    stand_in("einops", rearrange=None, repeat=None)


def import_lighthouse(root: str | Path) -> types.SimpleNamespace:
    """The official modules of a line/lighthouse checkout: ``moment_detr``, ``qd_detr`` (model
    and criterion builders), ``config`` (``BaseOptions``), ``dataset`` (labels, collate,
    ``prepare_batch_inputs``), ``evaluate`` (``compute_mr_results``) and ``easydict``."""
    path = check_checkout(root, "lighthouse")
    install_lighthouse_stand_ins()
    _on_path(path, path / "training")  # evaluate.py imports standalone_eval
    names = {
        "moment_detr": "lighthouse.common.moment_detr",
        "qd_detr": "lighthouse.common.qd_detr",
        "config": "training.config",
        "dataset": "training.dataset",
        "evaluate": "training.evaluate",
        "easydict": "easydict",
    }
    modules = {k: import_official(path, "lighthouse", v) for k, v in names.items()}
    return types.SimpleNamespace(root=path, **modules)


# ---------------------------------------------------------------------------------- LD-DETR
def import_ld_detr(root: str | Path) -> types.ModuleType:
    """The ``ld_detr`` package of a qingchen239/ld-detr checkout, ``ld_detr.model`` imported.

    Without CUDA ``Tensor.cuda`` returns the tensor itself (its forward creates the decoder
    queries with ``torch.zeros(...).cuda()``) for the rest of the process.
    """
    path = check_checkout(root, "ld_detr")
    if not _importable("torchvision"):
        _package_stand_in("torchvision")
        _package_stand_in("torchvision.ops")
        stand_in("torchvision.ops.focal_loss", sigmoid_focal_loss=sigmoid_focal_loss)
    stand_in("pandas")  # utils/basic_utils.py (options, inference) imports it, never calls it
    if not _importable("torchtext"):  # start_end_dataset.py: GloVe queries only
        _package_stand_in("torchtext")
        stand_in("torchtext.vocab")
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    _on_path(path)
    package = import_official(path, "ld_detr", "ld_detr")
    import_official(path, "ld_detr", "ld_detr.model")
    return package


# ---------------------------------------------------------------------------------- MS-DETR
def import_ms_detr(root: str | Path) -> dict[str, types.ModuleType]:
    """The modules of a snailma0229/MS-DETR checkout: ``config``, ``model``, ``inference_cg``,
    ``dn_components`` (run them inside :func:`cpu_only` on a machine without CUDA)."""
    path = check_checkout(root, "ms_detr")
    stand_in("torchvision", __version__="0.10.0")  # read by core/misc.py, nothing else
    if not _importable("util"):
        _package_stand_in("util")
        stand_in("util.box_ops")
    stand_in("pandas")
    _on_path(path)
    return {
        name: import_official(path, "ms_detr", f"ms_detr.{name}")
        for name in ("config", "model", "inference_cg", "dn_components")
    }


# ------------------------------------------------------------------------------------ UniMD
class DropPath(nn.Module):
    """Stochastic depth as timm's ``DropPath`` (per sample, scaled by the keep probability)."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, ...)`` -> ``(B, ...)``."""
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


def install_unimd_stand_ins() -> None:
    """``timm.models.layers`` and ``torchvision.ops.boxes.nms`` where they are missing."""
    if not _importable("timm"):
        _package_stand_in("timm")
        _package_stand_in("timm.models")
        stand_in("timm.models.layers", DropPath=DropPath, trunc_normal_=_trunc_normal_)
    if not _importable("torchvision"):
        _package_stand_in("torchvision")
        _package_stand_in("torchvision.ops")
        stand_in("torchvision.ops.boxes", nms=_nms_unused)


def build_nms(official_dir: Path, build_dir: Path) -> Path | None:
    """Compile ``libs/utils/csrc/nms_cpu.cpp`` of the checkout into ``build_dir``.

    Returns the directory holding ``nms_1d_cpu*.so``, or ``None`` when the build fails (no
    compiler or headers; the reason is printed to stderr); a module already built in
    ``build_dir`` is reused.
    """
    build_dir.mkdir(parents=True, exist_ok=True)
    if any(build_dir.glob("nms_1d_cpu*.so")):
        return build_dir
    src = official_dir / "libs" / "utils"
    if not (src / "csrc" / "nms_cpu.cpp").exists():
        print(f"{src / 'csrc' / 'nms_cpu.cpp'}: missing (not a full checkout)", file=sys.stderr)
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
class UniMDModules:
    """The imported official UniMD modules (``has_nms``: the compiled NMS was built)."""

    root: Path
    meta_archs: types.ModuleType
    config: types.ModuleType
    has_nms: bool


def import_unimd(root: str | Path, nms_build_dir: str | Path | None = None) -> UniMDModules:
    """Put a yingsen1/UniMD checkout on ``sys.path`` (with the stand-ins) and import its model
    code. ``libs.utils``'s ``__init__`` pulls in the whole evaluation/training stack; it is
    replaced by a namespace holding only ``nms.py`` (``batched_nms``), all the model imports."""
    path = check_checkout(root, "unimd")
    install_unimd_stand_ins()
    build = Path(nms_build_dir) if nms_build_dir else Path(tempfile.mkdtemp(prefix="unimd_nms_"))
    nms_dir = build_nms(path, build)
    paths = [path] if nms_dir is None else [path, nms_dir]
    _on_path(*paths)
    libs = import_official(path, "unimd", "libs")
    utils = types.ModuleType("libs.utils")
    utils.__path__ = [str(path / "libs" / "utils")]  # type: ignore[attr-defined]
    sys.modules["libs.utils"] = utils
    libs.utils = utils  # type: ignore[attr-defined]
    if nms_dir is not None:
        nms = import_official(path, "unimd", "libs.utils.nms")
        utils.batched_nms = nms.batched_nms  # type: ignore[attr-defined]
    else:
        utils.batched_nms = _nms_unused  # type: ignore[attr-defined]
    meta_archs = import_official(path, "unimd", "libs.modeling.meta_archs")
    config = import_official(path, "unimd", "libs.core.config")
    return UniMDModules(path, meta_archs, config, nms_dir is not None)


def unimd_deterministic(model: nn.Module) -> nn.Module:
    """Switch off the official UniMD's stochastic depth and dropout."""
    for m in model.modules():
        if isinstance(m, DropPath) or type(m).__name__ == "DropPath":
            m.drop_prob = 0.0
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model
