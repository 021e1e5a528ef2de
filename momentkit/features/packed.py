"""The packed feature store: one memory-mapped file for a whole stream.

Layout of a packed store ``OUT/``::

    OUT/data.bin     every item's (L_i, D) rows back to back, C order, dtype float32 or float16
    OUT/index.json   {"format": "momentkit-packed-features", "version": 1, "dtype": "float32",
                      "dim": D, "rows": sum(L_i), "field": "features", "source": "...",
                      "items": {"<key>": [first_row, L_i], ...}}

Opening the store reads the index only; an epoch then touches no per-item files, and the
operating system's page cache serves repeated reads. Arrays are returned as float32.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from momentkit.features.base import FeatureStore, check_finite
from momentkit.utils.errors import FeatureError
from momentkit.utils.io import write_json

FORMAT = "momentkit-packed-features"
VERSION = 1
INDEX_NAME = "index.json"
DATA_NAME = "data.bin"
DTYPES = ("float32", "float16")


def is_packed_store(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding a packed store's index."""
    return (Path(path) / INDEX_NAME).is_file()


class PackedFeatureStore:
    """Read a store written by :func:`pack_features` (``momentkit pack``).

    The data file is memory-mapped on first use, and again in each DataLoader worker (the map is
    not pickled). Float32 stores return read-only views of the map, float16 stores fresh float32
    copies: treat returned arrays as read-only.

    Args:
        path: the store directory (holding ``index.json`` and ``data.bin``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        index_file = self.path / INDEX_NAME
        if not index_file.is_file():
            raise FeatureError(
                f"{self.path}: not a packed feature store (no {INDEX_NAME}). Create one with "
                "`momentkit pack SRC_DIR OUT_DIR`"
            )
        try:
            index = json.loads(index_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FeatureError(
                f"{index_file}: unreadable index ({e}). Re-run `momentkit pack`"
            ) from None
        self._check_index(index, index_file)
        self.dtype = np.dtype(index["dtype"])
        self._dim = int(index["dim"])
        self.rows = int(index["rows"])
        self.field: str | None = index.get("field")
        self.source: str | None = index.get("source")
        self._items: dict[str, tuple[int, int]] = {
            k: (int(v[0]), int(v[1])) for k, v in index["items"].items()
        }
        data_file = self.path / DATA_NAME
        expected = self.rows * self._dim * self.dtype.itemsize
        actual = data_file.stat().st_size if data_file.is_file() else -1
        if actual != expected:
            raise FeatureError(
                f"{data_file}: holds {max(actual, 0)} bytes but the index describes {expected}. "
                "The store is incomplete or was modified; re-run `momentkit pack`"
            )
        self._data: np.ndarray | None = None

    @staticmethod
    def _check_index(index: Any, index_file: Path) -> None:
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise FeatureError(f"{index_file}: not a momentkit packed-feature index")
        if index.get("version") != VERSION:
            raise FeatureError(
                f"{index_file}: format version {index.get('version')!r}, this momentkit reads "
                f"version {VERSION}. Re-run `momentkit pack` with this version"
            )
        if index.get("dtype") not in DTYPES:
            raise FeatureError(f"{index_file}: field 'dtype': expected one of {DTYPES}")
        for name in ("dim", "rows"):
            if not isinstance(index.get(name), int) or index[name] < 0:
                raise FeatureError(f"{index_file}: field '{name}': expected a count")
        if not isinstance(index.get("items"), dict):
            raise FeatureError(f"{index_file}: field 'items': expected an object")

    def __repr__(self) -> str:
        return f"PackedFeatureStore({str(self.path)!r}, items={len(self)}, dtype={self.dtype})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_data"] = None  # re-mapped lazily in the receiving process
        return state

    def _array(self) -> np.ndarray:
        if self._data is None:
            if self.rows == 0:
                self._data = np.empty((0, self._dim), self.dtype)
            else:
                self._data = np.memmap(
                    self.path / DATA_NAME, self.dtype, mode="r", shape=(self.rows, self._dim)
                )
        return self._data

    @property
    def dim(self) -> int:
        """Channels per row."""
        return self._dim

    def keys(self) -> list[str]:
        """Every key, sorted."""
        return sorted(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str, max_rows: int | None = None) -> np.ndarray:
        """``(L, D)`` float32 features of ``key``, the first ``max_rows`` rows if given.

        Raises:
            FeatureError: ``key`` is not in the store.
        """
        try:
            start, rows = self._items[key]
        except KeyError:
            what = "query" if key.startswith("qid") else "video"
            origin = f" (packed from {self.source})" if self.source else ""
            raise FeatureError(
                f"{self.path}: no features for {what} '{key}' in this packed store{origin}. "
                f"Check that the store holds this dataset split, or re-pack a directory that "
                f"contains {key}.npz"
            ) from None
        if max_rows is not None:
            rows = min(rows, max_rows)
        view = self._array()[start : start + rows]
        if self.dtype == np.float32:
            return view.view(np.ndarray)
        return view.astype(np.float32)


def _write_data(
    source: FeatureStore, keys: Iterable[str], data_file: Path, dtype: np.dtype
) -> tuple[dict[str, list[int]], int]:
    items: dict[str, list[int]] = {}
    row = 0
    with open(data_file, "wb") as f:
        for key in keys:
            with np.errstate(over="ignore"):  # reported below, with the item's name
                array = np.ascontiguousarray(source.get(key), dtype=dtype)
            if dtype != np.float32:
                check_finite(array, f"{source.path}: item '{key}' cast to {dtype}")
            f.write(memoryview(array).cast("B"))
            items[key] = [row, int(array.shape[0])]
            row += int(array.shape[0])
        f.flush()
        os.fsync(f.fileno())
    return items, row


def pack_features(
    source: FeatureStore,
    out: str | Path,
    *,
    dtype: str = "float32",
    overwrite: bool = False,
    progress: bool = True,
) -> PackedFeatureStore:
    """Write every item of ``source`` into a packed store at ``out``, atomically.

    The store is built in a temporary directory beside ``out`` and renamed into place, so an
    interrupted run leaves no half-written store.

    Args:
        source: the store to pack (usually an :class:`~momentkit.features.npz.NpzFeatureStore`).
        out: the directory to create.
        dtype: ``"float32"`` (exact) or ``"float16"`` (half the size).
        overwrite: replace an existing store at ``out``.
        progress: show a progress bar on a terminal.

    Returns:
        The new store, opened.

    Raises:
        FeatureError: ``out`` exists (without ``overwrite``), ``source`` is empty, an item is
            malformed, or a value does not fit in float16.
    """
    from tqdm import tqdm

    out = Path(out)
    if dtype not in DTYPES:
        raise FeatureError(f"unsupported dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    if out.exists() and not overwrite:
        raise FeatureError(f"{out}: already exists. Pass --overwrite to replace it")
    keys = source.keys()
    if not keys:
        raise FeatureError(f"{source.path}: no feature files to pack")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        bar = tqdm(keys, desc=f"pack {out.name}", unit="item", disable=None if progress else True)
        items, rows = _write_data(source, bar, tmp / DATA_NAME, np.dtype(dtype))
        bar.close()
        index = {
            "format": FORMAT,
            "version": VERSION,
            "dtype": dtype,
            "dim": source.dim,
            "rows": rows,
            "field": getattr(source, "field_used", None) or getattr(source, "field", None),
            "source": str(Path(source.path).resolve()),
            "items": items,
        }
        write_json(tmp / INDEX_NAME, index, indent=None)
        _replace_dir(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PackedFeatureStore(out)


def _replace_dir(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first and then deleted."""
    if not out.exists():
        os.replace(tmp, out)
        return
    if not overwrite:
        raise FeatureError(f"{out}: already exists. Pass --overwrite to replace it")
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.rmdir(old)
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.replace(old, out)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)
