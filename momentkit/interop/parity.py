"""Golden parity fixtures: identical random weights in the official code and in momentkit.

A fixture is written once by a script under ``scripts/parity/`` that imports an official
checkout (given on its command line) and is committed under ``tests/fixtures/parity/<name>/``;
tests then check momentkit against it without the official code. It holds no weights: both
sides draw them from :func:`random_state`, which is deterministic per tensor name, so a fixture
is a few hundred kilobytes:

``fixture.json``
    the official options (``opt``), the official state dict's names, shapes and dtypes, the
    seed, the names of tensors kept at the official model's own values (stored in
    ``kept.safetensors``), the official losses and free-form notes.
``inputs.safetensors``
    the official forward's inputs (tensor dict, official names).
``outputs.safetensors``
    the official outputs (tensor dict, official names).
``grads.json``
    :func:`grad_signature` of every parameter's gradient after one backward pass of the
    official total loss: per official tensor name ``[sum, sum of squares, projection on a
    fixed random direction, first values]``, which pins the gradient without storing it.

Every tensor is randomised, norms' scales and shifts and PReLU slopes included, so a
momentkit block that ignored one of them would be caught.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

FIXTURE_JSON = "fixture.json"
INPUTS = "inputs.safetensors"
OUTPUTS = "outputs.safetensors"
KEPT = "kept.safetensors"
GRADS = "grads.json"
FIRST_VALUES = 8


def _generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)


def random_tensor(name: str, shape: Iterable[int], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """The deterministic random value of tensor ``name``.

    Scales follow the role the name and shape suggest, so activations stay in a useful range:
    1-D ``weight`` (norm scales, PReLU slopes): ``U(0.5, 1.5)``; ``bias``: ``N(0, 0.1)``;
    ``running_var``: ``U(0.5, 1.5)``; ``running_mean``: ``N(0, 0.1)``; other floating tensors
    ``N(0, 1) / sqrt(fan_in)`` with ``fan_in`` the product of all but the first dimension;
    integer tensors (counters) 0.
    """
    shape = tuple(int(s) for s in shape)
    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    g = _generator(seed, name)
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("running_var",) or (leaf == "weight" and len(shape) == 1):
        value = 0.5 + torch.rand(shape, generator=g, dtype=torch.float64)
    elif leaf in ("bias", "running_mean"):
        value = 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)
    else:
        fan_in = 1
        for s in shape[1:]:
            fan_in *= s
        value = torch.randn(shape, generator=g, dtype=torch.float64) / max(fan_in, 1) ** 0.5
    return value.to(dtype)


def random_state(
    shapes: Mapping[str, tuple[Iterable[int], torch.dtype]],
    seed: int,
    kept: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """A state dict with every tensor of ``shapes`` randomised by :func:`random_tensor`,
    except those in ``kept`` (taken as given: constants the official code computes)."""
    kept = kept or {}
    return {
        name: kept[name].clone() if name in kept else random_tensor(name, shape, dtype, seed)
        for name, (shape, dtype) in shapes.items()
    }


def state_shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[list[int], torch.dtype]]:
    """``{name: (shape, dtype)}`` of a state dict (the input of :func:`random_state`)."""
    return {k: (list(v.shape), v.dtype) for k, v in state.items()}


def grad_signature(grads: Mapping[str, torch.Tensor], seed: int = 0) -> dict[str, list[float]]:
    """Per tensor: ``[sum, sum of squares, projection on a fixed random direction, first
    values...]`` in float64 (the random direction depends on the name only)."""
    out: dict[str, list[float]] = {}
    for name, g in grads.items():
        flat = g.detach().to(torch.float64).flatten()
        direction = torch.randn(
            flat.numel(), generator=_generator(seed + 7, name), dtype=torch.float64
        )
        out[name] = [
            float(flat.sum()),
            float((flat * flat).sum()),
            float(flat @ direction),
            *[float(x) for x in flat[:FIRST_VALUES]],
        ]
    return out


def compare_signatures(
    got: Mapping[str, list[float]],
    want: Mapping[str, list[float]],
    *,
    rtol: float = 1e-4,
    atol: float = 1e-6,
) -> dict[str, float]:
    """Largest absolute difference per tensor between two :func:`grad_signature` results,
    scaled so that ``<= 1`` means within ``atol + rtol * |want|``; raises ``KeyError`` naming
    tensors present on one side only."""
    if set(got) != set(want):
        raise KeyError(
            f"gradient tensors differ: only momentkit {sorted(set(got) - set(want))[:5]}, only "
            f"official {sorted(set(want) - set(got))[:5]}"
        )
    worst: dict[str, float] = {}
    for name in want:
        a = torch.tensor(got[name], dtype=torch.float64)
        b = torch.tensor(want[name], dtype=torch.float64)
        worst[name] = float(((a - b).abs() / (atol + rtol * b.abs())).max())
    return worst


# -------------------------------------------------------------------------------------- files
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def save_fixture(
    directory: str | Path,
    *,
    opt: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    seed: int,
    inputs: Mapping[str, torch.Tensor],
    outputs: Mapping[str, torch.Tensor],
    losses: Mapping[str, float],
    grads: Mapping[str, torch.Tensor] | None = None,
    kept: Mapping[str, torch.Tensor] | None = None,
    notes: Mapping[str, Any] | None = None,
) -> Path:
    """Write a fixture directory (see the module doc). ``opt`` must be JSON-serialisable."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "seed": seed,
        "opt": dict(opt),
        "state": {k: [list(v.shape), _dtype_name(v.dtype)] for k, v in state.items()},
        "kept": sorted(kept or {}),
        "losses": {k: float(v) for k, v in losses.items()},
        "notes": dict(notes or {}),
    }
    (directory / FIXTURE_JSON).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    save_file({k: v.detach().contiguous() for k, v in inputs.items()}, directory / INPUTS)
    save_file({k: v.detach().contiguous() for k, v in outputs.items()}, directory / OUTPUTS)
    if kept:
        save_file({k: v.detach().contiguous() for k, v in kept.items()}, directory / KEPT)
    if grads is not None:
        text = json.dumps(grad_signature(grads, seed))
        (directory / GRADS).write_text(text + "\n", encoding="utf-8")
    return directory


class Fixture:
    """A fixture directory read back (see the module doc)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        meta = json.loads((self.directory / FIXTURE_JSON).read_text(encoding="utf-8"))
        self.seed: int = meta["seed"]
        self.opt: dict[str, Any] = meta["opt"]
        self.losses: dict[str, float] = meta["losses"]
        self.notes: dict[str, Any] = meta["notes"]
        self.shapes = {
            k: (shape, getattr(torch, dtype)) for k, (shape, dtype) in meta["state"].items()
        }
        kept_path = self.directory / KEPT
        self.kept = load_file(kept_path) if kept_path.exists() else {}
        self.inputs = load_file(self.directory / INPUTS)
        self.outputs = load_file(self.directory / OUTPUTS)
        grads = self.directory / GRADS
        self.grads: dict[str, list[float]] | None = (
            json.loads(grads.read_text(encoding="utf-8")) if grads.exists() else None
        )

    def official_state(self) -> dict[str, torch.Tensor]:
        """The official state dict the fixture's outputs were computed with."""
        return random_state(self.shapes, self.seed, self.kept)


def write_official_checkpoint(
    path: str | Path,
    state: Mapping[str, torch.Tensor],
    opt: Mapping[str, Any],
    *,
    layout: str = "namespace",
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``state`` the way an official training script does, for round-trip tests.

    ``layout``: ``namespace`` (LD-DETR / MS-DETR ``train.py``: ``{"model", "optimizer",
    "lr_scheduler", "epoch", "opt": argparse.Namespace}``, ``opt.device`` a ``torch.device``),
    ``plain`` (options as a dict) or ``unimd`` (``{"epoch", "state_dict", "state_dict_ema",
    "scheduler", "optimizer", "best_map"}`` with ``module.``-prefixed keys, no options).
    """
    import argparse

    path = Path(path)
    if layout == "unimd":
        prefixed = {f"module.{k}": v for k, v in state.items()}
        obj: dict[str, Any] = {
            "epoch": 1,
            "state_dict": prefixed,
            "state_dict_ema": {k: v.clone() for k, v in prefixed.items()},
            "scheduler": {},
            "optimizer": {"state": {}, "param_groups": []},
            "best_map": 0.0,
        }
    else:
        options: Any = dict(opt)
        if layout == "namespace":
            options = argparse.Namespace(**{**options, "device": torch.device("cuda", 0)})
        obj = {
            "model": dict(state),
            "optimizer": {"state": {}, "param_groups": []},
            "lr_scheduler": {},
            "epoch": 1,
            "opt": options,
        }
    obj.update(extra or {})
    torch.save(obj, path)
    return path
