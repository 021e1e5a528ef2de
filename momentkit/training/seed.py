"""Seeding, deterministic kernels, and capture/restore of every random generator's state.

``rng_state()`` returns plain Python/numpy/torch objects (no pickle needed): checkpoints store
the tensors and arrays in safetensors and the rest in JSON (see :mod:`.checkpoint`).
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_determinism(enabled: bool) -> None:
    """Ask torch for deterministic kernels (and disable cuDNN autotuning) when ``enabled``.

    Kernels without a deterministic version only warn. On CUDA this also sets
    ``CUBLAS_WORKSPACE_CONFIG`` when unset, which cuBLAS needs for reproducible matmuls.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled
    torch.use_deterministic_algorithms(enabled, warn_only=True)


def rng_state() -> dict[str, Any]:
    """The state of every global random generator.

    Returns:
        ``{"python": tuple, "numpy": tuple (with a uint32 array), "torch": uint8 tensor,
        "cuda": list of uint8 tensors (one per visible GPU, empty without CUDA)}``.
    """
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generators from :func:`rng_state` output (also after a JSON round trip)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in cuda])
