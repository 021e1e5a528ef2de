"""The tensors of a TorchScript archive (``torch.jit.save``), read without running its code.

OpenAI's CLIP weights (``ViT-B-32.pt``) are a TorchScript archive: a zip holding
``<name>/data.pkl`` (the module tree as a pickle whose classes are ``__torch__.*`` names),
``<name>/data/<key>`` (one raw storage per tensor) and ``<name>/code/`` (TorchScript source).
``torch.jit.load`` (and ``torch.load``, which dispatches to it) compiles and runs that code;
momentkit never calls either on such a file. Instead ``data.pkl`` is read with a restricted
unpickler: ``__torch__.*`` classes become inert :class:`ScriptObject` records of their
attributes, tensors are rebuilt from the raw storages with numpy (the only callables the
pickle may name are momentkit's own rebuild function and ``collections.OrderedDict``), and
storages are looked up by name inside the zip only (never on the file system).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from momentkit.interop.safe_pickle import UnreadableCheckpointError, UnsafeFileError

#: ``torch.<X>Storage`` -> numpy dtype of its raw bytes (little-endian)
_STORAGES: dict[str, str] = {
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "DoubleStorage": "<f8",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class ScriptObject:
    """An inert record of one pickled TorchScript object: its class name and attributes.

    The unpickler makes one subclass per ``__torch__`` class name (``NEWOBJ`` needs a type);
    nothing of the archive's code is imported or run.
    """

    type_name = ""

    def __new__(cls, *args: Any) -> ScriptObject:
        obj = super().__new__(cls)
        obj.attributes = {}
        return obj

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.attributes.update(state)

    def __repr__(self) -> str:
        return f"ScriptObject({self.type_name!r}, {len(self.attributes)} attributes)"


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name


class _Storage:
    def __init__(self, data: bytes, dtype: str) -> None:
        self.data, self.dtype = data, dtype


def _rebuild_tensor(
    storage: _Storage,
    offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    hooks: Any = None,
    metadata: Any = None,
) -> Any:
    """A tensor viewing ``storage`` like ``torch._utils._rebuild_tensor_v2``, copied."""
    import torch

    if not isinstance(storage, _Storage):
        raise UnsafeFileError("a tensor in the archive is not backed by a storage record")
    if storage.dtype == "bfloat16":
        raw = np.frombuffer(storage.data, dtype="<u2").astype(np.uint32) << 16
        flat = torch.from_numpy(raw.view(np.float32).copy()).to(torch.bfloat16)
    else:
        flat = torch.from_numpy(np.frombuffer(storage.data, dtype=storage.dtype).copy())
    return flat.as_strided(tuple(size), tuple(stride), int(offset)).clone()


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str, source: str) -> None:
        super().__init__(file)
        self.archive, self.prefix, self.source = archive, prefix, source
        self.names = set(archive.namelist())
        self.classes: dict[str, type[ScriptObject]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            full = f"{module}.{name}"
            if full not in self.classes:
                self.classes[full] = type("ScriptObject", (ScriptObject,), {"type_name": full})
            return self.classes[full]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name in _STORAGES:
            return _StorageType(name)
        raise UnsafeFileError(
            f"{self.source}: refused to load: the archive names '{module}.{name}', which is not "
            "a TorchScript module, a tensor or a container. It is not a plain weights archive"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafeFileError(f"{self.source}: unexpected storage reference {pid!r:.80}")
        _, kind, key, _location, _numel = pid
        if not isinstance(kind, _StorageType) or not re.fullmatch(r"\w+", str(key)):
            raise UnsafeFileError(f"{self.source}: unexpected storage reference {pid!r:.80}")
        member = f"{self.prefix}/data/{key}"
        if member not in self.names:
            raise UnreadableCheckpointError(
                f"{self.source}: the archive lacks tensor data '{member}'; it is truncated"
            )
        return _Storage(self.archive.read(member), _STORAGES[kind.name])


def _walk(obj: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    import torch

    if isinstance(obj, ScriptObject):
        for name, value in obj.attributes.items():
            yield from _walk(value, f"{prefix}{name}.")
    elif isinstance(obj, torch.Tensor):
        yield prefix[:-1], obj


def read_torchscript_tensors(path: str | Path) -> dict[str, Any]:
    """``{dotted attribute name: tensor}`` of every tensor in a TorchScript archive's module tree
    (parameters, buffers and tensor attributes), in the archive's own dtypes.

    Raises:
        FileNotFoundError: no such file.
        UnreadableCheckpointError: not a zip, no ``data.pkl``, truncated or damaged.
        UnsafeFileError: the pickle names anything but modules, tensors and containers.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise UnreadableCheckpointError(
            f"{path}: not a TorchScript archive (a zip file): {e}. It may be truncated; "
            "download it again"
        ) from None
    with archive:
        pkls = [n for n in archive.namelist() if re.fullmatch(r"[^/]+/data\.pkl", n)]
        if len(pkls) != 1:
            raise UnreadableCheckpointError(
                f"{path}: not a TorchScript archive (no <name>/data.pkl inside the zip)"
            )
        prefix = pkls[0].split("/")[0]
        try:
            with archive.open(pkls[0]) as f:
                root = _Unpickler(f, archive, prefix, str(path)).load()
        except (UnsafeFileError, UnreadableCheckpointError):
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, zipfile.BadZipFile) as e:
            raise UnreadableCheckpointError(
                f"{path}: the TorchScript archive is damaged ({type(e).__name__}: {e}"[:300]
                + "). Download it again"
            ) from None
    return dict(_walk(root, ""))
