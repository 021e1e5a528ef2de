"""Reading foreign pickled files without executing code from them.

Official checkpoints (``torch.save`` of ``{"model", "optimizer", "opt", ...}``) and the public
SlowFast weights (a Caffe2 pickle of numpy arrays) are pickles. Unpickling runs whatever
callable the file names, so momentkit never uses a plain ``pickle.load`` or
``torch.load(weights_only=False)`` on them. Instead a restricted unpickler resolves only the
names on an explicit allow-list: tensor and storage rebuilders, numpy array rebuilders, plain
containers and the option holders the official training scripts save (``argparse.Namespace``,
``easydict.EasyDict``, ``torch.device``). Anything else (``os.system``, ``builtins.eval``,
any class of the official code) is refused with :class:`UnsafeFileError` before it is
imported, let alone called.

``easydict.EasyDict`` is read as :class:`OptionDict` (a dict with attribute access) without
importing easydict: the file only names the class, momentkit decides what builds it.
"""

from __future__ import annotations

import argparse
import collections
import io
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from momentkit.utils.errors import MomentkitError


class UnsafeFileError(MomentkitError):
    """A pickled file that names a callable or class outside the allow-list."""


class UnreadableCheckpointError(MomentkitError):
    """A file that is not a complete pickle / torch checkpoint (empty, truncated, other)."""


class OptionDict(dict):
    """Stand-in for ``easydict.EasyDict``: a dict whose keys are also attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setstate__(self, state: Mapping[str, Any]) -> None:  # BUILD: attributes = keys
        self.update(state)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    import numpy as np

    out: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    try:
        from numpy._core import multiarray as ma

        reconstruct, scalar = ma._reconstruct, ma.scalar
    except ImportError:  # numpy < 2
        from numpy.core import multiarray as ma  # type: ignore[no-redef]

        reconstruct, scalar = ma._reconstruct, ma.scalar
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(module, "_reconstruct")] = reconstruct
        out[(module, "scalar")] = scalar
    # dtype classes named by numpy >= 1.25 pickles of dtypes (numpy.dtypes.Float32DType, ...)
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in dir(dtypes):
            if name.endswith("DType"):
                out[("numpy.dtypes", name)] = getattr(dtypes, name)
    return out


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 pickles of ``bytes`` use it (protocol 2), text only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise UnsafeFileError(f"unexpected _codecs.encode arguments ({type(text).__name__})")
    return text.encode(encoding)


#: plain containers and values any of our readers accepts
_PLAIN: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("__builtin__", "set"): set,  # Python-2 pickles
    ("__builtin__", "frozenset"): frozenset,
    ("_codecs", "encode"): _codecs_encode,
}


def _torch_globals() -> dict[tuple[str, str], Any]:
    import torch
    import torch._utils as tu

    out: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor"): tu._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): tu._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): tu._rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): tu._rebuild_parameter_with_state,
        ("torch", "device"): torch.device,
        ("torch", "Size"): torch.Size,
        ("torch", "float32"): torch.float32,
        ("torch", "float16"): torch.float16,
        ("torch", "bfloat16"): torch.bfloat16,
        ("torch", "float64"): torch.float64,
        ("torch", "int64"): torch.int64,
        ("torch", "int32"): torch.int32,
        ("torch", "uint8"): torch.uint8,
        ("torch", "bool"): torch.bool,
        ("torch", "strided"): torch.strided,
    }
    return out


def checkpoint_globals() -> dict[tuple[str, str], Any]:
    """The allow-list for official training checkpoints: tensors, numpy values, containers,
    ``argparse.Namespace``, ``easydict.EasyDict`` (as :class:`OptionDict`) and ``torch.device``."""
    allowed = dict(_PLAIN)
    allowed.update(_numpy_globals())
    allowed.update(_torch_globals())
    allowed[("argparse", "Namespace")] = argparse.Namespace
    allowed[("easydict", "EasyDict")] = OptionDict
    allowed[("pathlib", "PosixPath")] = Path
    allowed[("pathlib", "Path")] = Path
    return allowed


def numpy_globals() -> dict[tuple[str, str], Any]:
    """The allow-list for pickles of numpy arrays in plain containers (Caffe2 / Detectron
    weight files): numpy array and scalar rebuilders, dicts, lists, tuples, strings, numbers."""
    allowed = dict(_PLAIN)
    allowed.update(_numpy_globals())
    return allowed


def _make_unpickler(allowed: Mapping[tuple[str, str], Any], source: str) -> type[pickle.Unpickler]:
    class RestrictedUnpickler(pickle.Unpickler):
        """Resolves only the allow-listed globals."""

        def find_class(self, module: str, name: str) -> Any:
            try:
                return allowed[(module, name)]
            except KeyError:
                raise UnsafeFileError(
                    f"{source}: refused to load: the file names '{module}.{name}', which is "
                    "not on momentkit's allow-list of plain data (tensors, arrays, numbers, "
                    "strings, containers, option namespaces). Loading it could run code from "
                    "the file. Convert only checkpoints written by the official training "
                    "scripts; if this one is, report the name so it can be reviewed"
                ) from None

    return RestrictedUnpickler


def restricted_pickle_module(
    allowed: Mapping[tuple[str, str], Any], source: str
) -> Any:  # a module-like namespace for torch.load(pickle_module=...)
    """An object with ``Unpickler``/``load``/``loads`` attributes whose unpickler resolves only
    ``allowed``; usable as ``torch.load(..., pickle_module=...)``."""
    unpickler = _make_unpickler(allowed, source)

    class _Module:
        Unpickler = unpickler
        UnpicklingError = pickle.UnpicklingError
        __name__ = "momentkit_restricted_pickle"

        @staticmethod
        def load(f: Any, **kwargs: Any) -> Any:
            return unpickler(f, **kwargs).load()

        @staticmethod
        def loads(data: bytes, **kwargs: Any) -> Any:
            return unpickler(io.BytesIO(data), **kwargs).load()

    return _Module


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise UnreadableCheckpointError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise UnreadableCheckpointError(f"{path}: the file is empty. Download or copy it again")


def load_torch_checkpoint(path: str | Path) -> Any:
    """Read an official ``torch.save`` checkpoint on the CPU without executing code from it.

    Tensors saved on ``cuda:N`` are mapped to the CPU; ``argparse.Namespace`` options come
    back as they were, ``easydict.EasyDict`` options as :class:`OptionDict`.

    Raises:
        FileNotFoundError: no such file.
        UnsafeFileError: the file names a callable or class outside the allow-list.
        UnreadableCheckpointError: an empty, truncated or non-checkpoint file.
    """
    import torch

    path = Path(path)
    _check_readable(path)
    module = restricted_pickle_module(checkpoint_globals(), str(path))
    try:
        return torch.load(path, map_location="cpu", pickle_module=module, weights_only=False)
    except UnsafeFileError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        zipfile.BadZipFile,
        RuntimeError,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        IndexError,
        OSError,
    ) as e:
        raise UnreadableCheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else 'no detail'}). It may be truncated "
            "(compare its size with the published one and download it again) or of another format"
        ) from None


def load_numpy_pickle(path: str | Path, encoding: str = "latin1") -> Any:
    """Read a pickle of numpy arrays in plain containers (e.g. a Caffe2 weights file written by
    Python 2) without executing code from it.

    Raises:
        FileNotFoundError, UnsafeFileError, UnreadableCheckpointError: as
        :func:`load_torch_checkpoint`.
    """
    path = Path(path)
    _check_readable(path)
    unpickler = _make_unpickler(numpy_globals(), str(path))
    try:
        with path.open("rb") as f:
            return unpickler(f, encoding=encoding).load()
    except UnsafeFileError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError) as e:
        raise UnreadableCheckpointError(
            f"{path}: not a readable pickle of arrays ({type(e).__name__}: {str(e)[:200]}). It "
            "may be truncated; download it again"
        ) from None


def options_to_dict(opt: Any) -> dict[str, Any]:
    """The saved training options as a plain dict (``Namespace``, ``OptionDict`` or dict)."""
    if isinstance(opt, argparse.Namespace):
        return dict(vars(opt))
    if isinstance(opt, Mapping):
        return dict(opt)
    raise UnreadableCheckpointError(
        f"expected the saved training options as a Namespace or dict, got {type(opt).__name__}"
    )


__all__: list[str] = [
    "OptionDict",
    "UnreadableCheckpointError",
    "UnsafeFileError",
    "checkpoint_globals",
    "load_numpy_pickle",
    "load_torch_checkpoint",
    "numpy_globals",
    "options_to_dict",
    "restricted_pickle_module",
]
