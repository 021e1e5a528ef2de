"""Open whichever kind of feature store a path holds."""

from __future__ import annotations

import os
from pathlib import Path

from momentkit.features.base import FeatureStore
from momentkit.features.npz import NpzFeatureStore
from momentkit.features.packed import PackedFeatureStore, is_packed_store
from momentkit.utils.errors import FeatureError


def _has_npz(path: Path) -> bool:
    with os.scandir(path) as it:
        return any(e.name.endswith(".npz") for e in it)


def open_feature_store(
    path: str | Path | FeatureStore, *, field: str | None = None, cache: bool = False
) -> FeatureStore:
    """Open ``path`` as a packed store (it holds ``index.json``) or a directory of ``.npz`` files.

    Args:
        path: a store directory, or an already opened store (returned unchanged).
        field: for ``.npz`` directories, the array to read (see :class:`NpzFeatureStore`).
            Ignored by packed stores, which hold one array per item.
        cache: for ``.npz`` directories, keep arrays in memory after the first read.

    Raises:
        FeatureError: ``path`` is not a directory, or holds neither kind of store.
    """
    if not isinstance(path, str | Path):
        return path
    path = Path(path)
    if not path.is_dir():
        raise FeatureError(
            f"{path}: no such feature directory. Give a folder of <key>.npz files or a store "
            "written by `momentkit pack`"
        )
    if is_packed_store(path):
        return PackedFeatureStore(path)
    if not _has_npz(path):
        raise FeatureError(
            f"{path}: holds neither .npz feature files nor a packed store (index.json). Point "
            "at the folder of <vid>.npz / qid<qid>.npz files, or at `momentkit pack` output"
        )
    return NpzFeatureStore(path, field, cache=cache)
