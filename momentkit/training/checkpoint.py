"""Checkpoints without pickle: weights in safetensors, everything else in JSON, written atomically.

A checkpoint is a directory::

    model.safetensors         model weights (state_dict)
    config.json               the model's config (what ``from_pretrained`` reads)
    experiment.json           the whole experiment config (data, optim, trainer sections)
    state.json                resume state: epoch/step counters, best metric, optimiser and
    state.safetensors           scheduler state, every RNG state (tensors in the .safetensors)

It is written to a temporary sibling directory that is renamed into place only when complete,
so an interrupted save (even ``kill -9``) leaves the previous checkpoint usable.

Nested states (``optimizer.state_dict()``, RNG tuples) are split by :func:`pack_state` into a
JSON tree and a flat ``{name: tensor}`` dict; :func:`unpack_state` rebuilds them exactly
(integer dict keys and tuples included).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from momentkit.utils.errors import MomentkitError
from momentkit.utils.io import atomic_write_bytes, read_text, write_json
from momentkit.utils.paths import safe_child
from momentkit.utils.weights import check_finite_weights, read_safetensors

WEIGHTS_NAME = "model.safetensors"
MODEL_CONFIG_NAME = "config.json"
EXPERIMENT_NAME = "experiment.json"
STATE_JSON = "state.json"
STATE_TENSORS = "state.safetensors"


class CheckpointError(MomentkitError):
    """A missing or unreadable checkpoint."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint (or one of its files) at the path given. Also a ``FileNotFoundError``, so
    code that caught the bare one ``MomentModel.from_pretrained`` used to raise still does."""

    def __init__(self, message: str) -> None:
        CheckpointError.__init__(self, message)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# ----------------------------------------------------------------------------------------------
# nested state <-> JSON + tensors


def pack_state(obj: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state into a JSON-ready tree and a flat dict of CPU tensors.

    Tensors become ``{"__tensor__": name}``, numpy arrays ``{"__ndarray__": list, "dtype": s}``,
    tuples ``{"__tuple__": [...]}`` and dicts with non-string keys ``{"__items__": [[k, v]]}``.

    Raises:
        TypeError: naming the path of a value that is none of the above nor a JSON scalar.
    """
    tensors: dict[str, torch.Tensor] = {}

    def enc(x: Any, path: str) -> Any:
        if isinstance(x, torch.Tensor):
            name = f"{len(tensors)}:{path}"
            tensors[name] = x.detach().cpu().contiguous().clone()
            return {"__tensor__": name}
        if isinstance(x, np.ndarray):
            return {"__ndarray__": x.tolist(), "dtype": str(x.dtype)}
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, tuple):
            return {"__tuple__": [enc(v, f"{path}.{i}") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [enc(v, f"{path}.{i}") for i, v in enumerate(x)]
        if isinstance(x, Mapping):
            if all(isinstance(k, str) for k in x):
                return {k: enc(v, f"{path}.{k}") for k, v in x.items()}
            return {"__items__": [[k, enc(v, f"{path}.{k}")] for k, v in x.items()]}
        if x is None or isinstance(x, bool | int | float | str):
            return x
        raise TypeError(f"cannot store {type(x).__name__} at '{path}' in a checkpoint")

    return enc(obj, "state"), tensors


def unpack_state(tree: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`pack_state`."""

    def dec(x: Any) -> Any:
        if isinstance(x, list):
            return [dec(v) for v in x]
        if isinstance(x, dict):
            if "__tensor__" in x:
                return tensors[x["__tensor__"]]
            if "__ndarray__" in x:
                return np.asarray(x["__ndarray__"], dtype=x["dtype"])
            if "__tuple__" in x:
                return tuple(dec(v) for v in x["__tuple__"])
            if "__items__" in x:
                return {k: dec(v) for k, v in x["__items__"]}
            return {k: dec(v) for k, v in x.items()}
        return x

    return dec(tree)


def save_state(directory: str | Path, state: Any) -> None:
    """Write ``state`` as ``state.json`` + ``state.safetensors`` inside ``directory``."""
    directory = Path(directory)
    tree, tensors = pack_state(state)
    atomic_write_bytes(directory / STATE_TENSORS, st_save(tensors))
    write_json(directory / STATE_JSON, tree, indent=None)


def load_state(directory: str | Path) -> Any:
    """Read a state written by :func:`save_state`."""
    directory = Path(directory)
    try:
        tree = json.loads(read_text(directory / STATE_JSON, "a resume state"))
        tensors = st_load((directory / STATE_TENSORS).read_bytes())
        return unpack_state(tree, tensors)
    except (OSError, ValueError, KeyError, TypeError, RecursionError, SafetensorError) as e:
        raise CheckpointError(
            f"{directory}: unreadable resume state ({type(e).__name__}: {e}). The checkpoint is "
            "damaged; resume from a copy, or start a new run in another --out"
        ) from None


def damaged_state(directory: str | Path, field: str, problem: str) -> CheckpointError:
    """The error of a resume state whose ``field`` is malformed (``problem`` says how).

    Reads ``DIR/state.json: field 'trainer.epoch': expected an integer >= 0, got 'x'. The
    checkpoint is damaged; ...``: the file, the field, and what to do instead.
    """
    return CheckpointError(
        f"{Path(directory) / STATE_JSON}: field '{field}': {problem}. The checkpoint is "
        "damaged: resume from another checkpoint (a copy of the run folder), or start a new "
        "run in another --out"
    )


# ----------------------------------------------------------------------------------------------
# weights


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel / DataParallel wrappers."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def save_weights(model: nn.Module, directory: str | Path, model_config: Mapping[str, Any]) -> None:
    """Write ``model.safetensors`` (every state_dict entry) and ``config.json``.

    Models with a ``save_pretrained`` method (every momentkit model) write both themselves;
    ``model_config`` is used for other modules.
    """
    directory = Path(directory)
    model = unwrap_model(model)
    save_pretrained = getattr(model, "save_pretrained", None)
    if callable(save_pretrained):  # momentkit models: the format from_pretrained reads
        save_pretrained(directory)
        return
    # clone: safetensors refuses tensors sharing storage (tied weights)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write_bytes(directory / WEIGHTS_NAME, st_save(tensors, metadata={"format": "pt"}))
    write_json(directory / MODEL_CONFIG_NAME, dict(model_config))


def load_weights(
    model: nn.Module, directory: str | Path, strict: bool = True
) -> tuple[list[str], list[str]]:
    """Load ``directory/model.safetensors`` into ``model``.

    Args:
        strict: require exactly the model's keys; else load the matching ones.

    Returns:
        ``(missing_keys, unexpected_keys)``.

    Raises:
        CheckpointError: no weights file, or a tensor whose shape differs from the model's.
        FormatError: the file is not readable safetensors, or holds NaN/Inf weights.
    """
    path = Path(directory) / WEIGHTS_NAME
    if not path.exists():
        raise CheckpointError(f"{path}: no such weights file")
    state = read_safetensors(path)
    check_finite_weights(state, path)
    model = unwrap_model(model)
    own = model.state_dict()
    bad = [k for k, v in own.items() if k in state and state[k].shape != v.shape]
    if bad:
        k = bad[0]
        raise CheckpointError(
            f"{path}: '{k}' has shape {tuple(state[k].shape)} but the model's is "
            f"{tuple(own[k].shape)} ({len(bad)} mismatched tensor(s)). Build the model with the "
            "config the checkpoint was trained with"
        )
    result = model.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{path}: weights do not match the model (missing: {missing[:5]}, unexpected: "
            f"{unexpected[:5]}). Build the model with the config the checkpoint was trained with"
        )
    return missing, unexpected


# ----------------------------------------------------------------------------------------------
# checkpoint directories


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    *,
    model_config: Mapping[str, Any],
    experiment: Mapping[str, Any],
    state: Any = None,
    extra_files: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically.

    Args:
        directory: final location (e.g. ``RUN_DIR/last``); replaced as a whole.
        model: the (possibly DDP-wrapped) model.
        model_config: written as ``config.json``.
        experiment: the experiment config dict, written as ``experiment.json``.
        state: optional resume state (see :func:`save_state`).
        extra_files: ``{file name: JSON object}`` written beside the weights.

    Returns:
        ``directory``.
    """
    directory = Path(directory)
    parent = directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    _recover(directory)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=parent))
    try:
        save_weights(model, tmp, model_config)
        write_json(tmp / EXPERIMENT_NAME, dict(experiment))
        if state is not None:
            save_state(tmp, state)
        for name, obj in (extra_files or {}).items():
            write_json(safe_child(tmp, name, "extra_files"), obj)
        _write_features_record(tmp, experiment, extra_files)
        _commit_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _write_features_record(
    directory: Path, experiment: Mapping[str, Any], extra_files: Mapping[str, Any] | None
) -> None:
    """``features.json``: the pipeline record of the training video features (written by
    ``momentkit extract``), unless the caller (a converter) wrote one."""
    from momentkit.extraction.record import CHECKPOINT_RECORD, checkpoint_record

    if CHECKPOINT_RECORD in (extra_files or {}):
        return
    record = checkpoint_record(experiment)
    if record is not None:
        write_json(directory / CHECKPOINT_RECORD, record)


def find_checkpoint(directory: str | Path) -> Path | None:
    """``directory`` if it holds a complete checkpoint, else None (finishes interrupted swaps)."""
    directory = Path(directory)
    _recover(directory)
    return directory if (directory / WEIGHTS_NAME).exists() else None


def _old(directory: Path) -> Path:
    return directory.with_name(directory.name + ".old")


def _recover(directory: Path) -> None:
    """Finish a swap interrupted between its two renames."""
    old = _old(directory)
    if not directory.exists() and old.exists():
        os.replace(old, directory)


def _commit_dir(tmp: Path, final: Path) -> None:
    """Move the complete directory ``tmp`` to ``final``, replacing it."""
    old = _old(final)
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
