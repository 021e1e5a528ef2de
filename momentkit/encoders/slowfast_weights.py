"""The SlowFast model zoo's Caffe2 weight file (``SLOWFAST_8x8_R50.pkl``), read without code.

The file is a Python-2 pickle of ``{"blobs": {name: numpy array}}``: one blob per parameter
(``conv1_w``, ``res_conv1_bn_s``/``_b``/``_rm``/``_riv``, ``res2_0_branch2a_w``, ... for the
slow pathway, the same names prefixed ``t_`` for the fast one, ``t_pool1_subsample_*`` and
``t_resN_M_branch2c_bn_subsample_*`` for the fusions, ``pred_w``/``pred_b`` for the Kinetics
classifier), plus ``<name>_momentum`` optimiser state, ``lr`` and ``model_iter``. It is read with
:func:`momentkit.interop.safe_pickle.load_numpy_pickle` (numpy arrays and plain containers only)
and checked blob by blob: a missing blob, a blob of another shape, or a blob no rule names is
refused (the reference loader silently keeps the random initialisation for a blob whose shape
does not match).

:func:`save_caffe2_blobs` writes the same layout with Python-2 opcodes (for random-weight test
and benchmark files); :func:`random_blobs` makes seeded weights of the right shapes.
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from momentkit.encoders.base import EncoderError

#: blobs of the file that are not weights (optimiser state, bookkeeping)
NOT_WEIGHTS = re.compile(r".*_momentum|lr|model_iter")

_BN = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}


class SlowFastWeightsError(EncoderError):
    """A SlowFast weight file that is not the model zoo's Caffe2 pickle of this network."""


def _convbn(prefix: str, rest: str) -> str | None:
    """``conv.weight`` / ``bn.<p>`` of a ConvBN whose Caffe2 base name is ``prefix``."""
    if rest == "conv.weight":
        return f"{prefix}_w"
    if rest.startswith("bn."):
        p = rest[3:]
        return None if p not in _BN else f"{prefix}_bn_{_BN[p]}"
    return None


def caffe2_name(key: str, blocks: tuple[int, ...] = (3, 4, 6, 3)) -> str | None:
    """The Caffe2 blob of a :class:`~momentkit.encoders.slowfast.SlowFast` state-dict key
    (``None`` for keys the file does not hold, e.g. ``num_batches_tracked``)."""
    if key.endswith("num_batches_tracked"):
        return None
    if key in ("classifier.weight", "classifier.bias"):
        return "pred_w" if key.endswith("weight") else "pred_b"
    m = re.fullmatch(r"(slow|fast)_stem\.conv\.(.+)", key)
    if m:
        t = "t_" if m[1] == "fast" else ""
        if m[2] == "conv.weight":
            return f"{t}conv1_w"
        p = m[2][3:]
        return f"{t}res_conv1_bn_{_BN[p]}" if p in _BN else None
    m = re.fullmatch(r"fuse\.(\d+)\.conv\.(.+)", key)
    if m:
        i = int(m[1])
        base = (
            "t_pool1_subsample"
            if i == 0
            else f"t_res{i + 1}_{blocks[i - 1] - 1}_branch2c_bn_subsample"
        )
        if m[2] == "conv.weight":
            return f"{base}_w"
        p = m[2][3:]
        return f"{base}_bn_{_BN[p]}" if p in _BN else None
    m = re.fullmatch(r"(slow|fast)_stages\.(\d+)\.(\d+)\.(a|b|c|shortcut)\.(.+)", key)
    if m:
        t = "t_" if m[1] == "fast" else ""
        branch = "branch1" if m[4] == "shortcut" else f"branch2{m[4]}"
        return _convbn(f"{t}res{int(m[2]) + 2}_{m[3]}_{branch}", m[5])
    return None


def read_blobs(path: str | Path) -> dict[str, np.ndarray]:
    """The weight blobs of a model-zoo file (optimiser state dropped), read without code.

    Raises:
        SlowFastWeightsError: not a pickle of ``{"blobs": {name: array}}`` (naming the file);
        FileNotFoundError / UnsafeFileError / UnreadableCheckpointError from the safe reader.
    """
    from momentkit.interop.safe_pickle import load_numpy_pickle

    data = load_numpy_pickle(path)
    blobs = data.get("blobs") if isinstance(data, Mapping) else None
    if not isinstance(blobs, Mapping):
        what = (
            f"a dict with keys {', '.join(map(str, list(data)[:6]))}"
            if isinstance(data, Mapping)
            else type(data).__name__
        )
        raise SlowFastWeightsError(
            f"{path}: not a SlowFast weights dict (expected the model zoo's Caffe2 pickle "
            f"{{'blobs': {{name: array}}}}, found {what}). Give SLOWFAST_8x8_R50.pkl from the "
            "SlowFast model zoo"
        )
    out: dict[str, np.ndarray] = {}
    for name, value in blobs.items():
        if NOT_WEIGHTS.fullmatch(str(name)):
            continue
        if not isinstance(value, np.ndarray):
            raise SlowFastWeightsError(
                f"{path}: blob '{name}' is a {type(value).__name__}, not an array; the file is "
                "not a SlowFast weights dict"
            )
        out[str(name)] = value
    return out


def state_dict_from_blobs(
    blobs: Mapping[str, np.ndarray], model: Any, source: str | Path
) -> dict[str, Any]:
    """Map Caffe2 blobs onto ``model``'s state dict, refusing anything that does not fit.

    Raises:
        SlowFastWeightsError: a blob no rule names, a missing blob, or a shape that differs.
    """
    import torch

    expected = model.state_dict()
    blocks = tuple(model.config.blocks)
    wanted = {caffe2_name(k, blocks): k for k in expected}
    wanted.pop(None, None)
    unknown = sorted(set(blobs) - set(wanted))
    if unknown:
        raise SlowFastWeightsError(
            f"{source}: blob(s) {', '.join(unknown[:6])}{' ...' if len(unknown) > 6 else ''} "
            "belong to no layer of SlowFast 8x8 R50: the file holds another network "
            "(give SLOWFAST_8x8_R50.pkl)"
        )
    missing = sorted(set(wanted) - set(blobs))
    if missing:
        raise SlowFastWeightsError(
            f"{source}: the file lacks {len(missing)} weight blob(s) of SlowFast 8x8 R50 "
            f"({', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}); it is incomplete "
            "or holds another network"
        )
    state: dict[str, Any] = {}
    for name, key in wanted.items():
        value = np.asarray(blobs[name])
        if tuple(value.shape) != tuple(expected[key].shape):
            raise SlowFastWeightsError(
                f"{source}: blob '{name}' has shape {tuple(value.shape)}, SlowFast 8x8 R50 needs "
                f"{tuple(expected[key].shape)} for it; the file holds another network"
            )
        state[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    for key, value in expected.items():
        if key not in state:  # num_batches_tracked
            state[key] = value
    return state


def config_from_blobs(blobs: Mapping[str, np.ndarray]) -> Any:
    """The :class:`~momentkit.encoders.slowfast.SlowFastConfig` whose widths and depths the
    blobs have (the model zoo's R50 gives the defaults); other sizes are for tests and
    benchmarks."""
    from momentkit.encoders.slowfast import SlowFastConfig

    try:
        width = int(blobs["conv1_w"].shape[0])
        fast = int(blobs["t_conv1_w"].shape[0])
        classes = int(blobs["pred_w"].shape[0])
    except KeyError as e:
        raise SlowFastWeightsError(f"not SlowFast weights: blob {e} is missing") from None
    blocks = []
    for stage in range(2, 6):
        found = {int(m[1]) for k in blobs if (m := re.fullmatch(rf"res{stage}_(\d+)_.*", k))}
        blocks.append(max(found) + 1 if found else 0)
    return SlowFastConfig(
        width=width,
        beta_inv=max(1, width // max(fast, 1)),
        blocks=tuple(blocks),  # type: ignore[arg-type]
        num_classes=classes,
    )


def load_slowfast(path: str | Path, config: Any = None) -> Any:
    """A :class:`~momentkit.encoders.slowfast.SlowFast` with the weights of ``path`` (its sizes
    read from the blobs unless ``config`` is given).

    Raises:
        SlowFastWeightsError and the safe reader's errors (see :func:`read_blobs`).
    """
    from momentkit.encoders.slowfast import SlowFast

    blobs = read_blobs(path)
    try:
        inferred = config or config_from_blobs(blobs)
    except SlowFastWeightsError as e:
        raise SlowFastWeightsError(f"{path}: {e}; give SLOWFAST_8x8_R50.pkl") from None
    model = SlowFast(inferred)
    model.load_state_dict(state_dict_from_blobs(blobs, model, path))
    return model


# ------------------------------------------------------------------------------ writing files
class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined,misc]
    """Protocol 2 with Python-2 opcodes: ``bytes`` and ASCII ``str`` as ``BINSTRING`` (the
    ``str`` of Python 2), numpy globals under their ``numpy.core`` names."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def _string(self, data: bytes) -> None:
        n = len(data)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + data)
        else:
            self.write(pickle.BINSTRING + n.to_bytes(4, "little") + data)

    def save_bytes(self, obj: bytes) -> None:
        self._string(obj)

    def save_str(self, obj: str) -> None:
        if obj.isascii():
            self._string(obj.encode("latin-1"))
        else:
            super().save_str(obj)

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = getattr(obj, "__module__", "")
        qual = name or getattr(obj, "__qualname__", None) or obj.__name__
        if module.startswith("numpy._core"):
            module = "numpy.core" + module[len("numpy._core") :]
        self.write(pickle.GLOBAL + f"{module}\n{qual}\n".encode())
        self.memoize(obj)

    dispatch[type] = save_global


def save_caffe2_blobs(path: str | Path, blobs: Mapping[str, Any]) -> Path:
    """Write ``{"blobs": blobs}`` as the model zoo does (Python-2 pickle, protocol 2)."""
    path = Path(path)
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump({"blobs": dict(blobs)})
    path.write_bytes(buffer.getvalue())
    return path


def random_blobs(seed: int = 0, config: Any = None, momentum: bool = True) -> dict[str, Any]:
    """Seeded random weights of SlowFast 8x8 R50 as Caffe2 blobs (the real file's layout).

    Convolutions are He-uniform, BatchNorm scales near 1, shifts and running means near 0,
    running variances near 1, so features stay finite in evaluation mode. Values come from
    ``numpy.random.Generator(PCG64(seed)).random`` (stable across numpy versions).
    """
    from momentkit.encoders.slowfast import SlowFast

    model = SlowFast(config)
    rng = np.random.Generator(np.random.PCG64(seed))
    blocks = tuple(model.config.blocks)
    blobs: dict[str, Any] = {}
    for key, tensor in model.state_dict().items():
        name = caffe2_name(key, blocks)
        if name is None:
            continue
        shape = tuple(tensor.shape)
        u = rng.random(int(np.prod(shape)), dtype=np.float32).reshape(shape)  # [0, 1)
        if name.endswith("_w") or key.endswith("conv.weight"):
            fan_in = int(np.prod(shape[1:]))
            value = (2 * u - 1) * np.float32(np.sqrt(6.0 / fan_in))
        elif name.endswith("_s"):
            value = 0.5 + u
        elif name.endswith("_riv"):
            value = 0.5 + u
        else:  # _b, _rm, pred_b
            value = 0.2 * (u - 0.5)
        blobs[name] = value.astype(np.float32)
        if momentum and not name.endswith(("_rm", "_riv")):
            blobs[f"{name}_momentum"] = np.zeros(shape, np.float32)
    if momentum:
        blobs["lr"] = np.asarray([0.1], np.float32)
        blobs["model_iter"] = np.asarray([196000], np.int64)
    return blobs
