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
from momentkit.utils.errors import FeatureError, MomentkitError
from momentkit.utils.io import output_error, write_json

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
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise FeatureError(
                f"{index_file}: unreadable index ({e}). Re-run `momentkit pack`"
            ) from None
        self._check_index(index, index_file)
        self.dtype = np.dtype(index["dtype"])
        self._dim = int(index["dim"])
        self.rows = int(index["rows"])
        self.field: str | None = _optional_str(index, "field", index_file)
        self.source: str | None = _optional_str(index, "source", index_file)
        self._items: dict[str, tuple[int, int]] = _check_items(index, index_file)
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
            if not _is_count(index.get(name)):
                raise FeatureError(
                    f"{index_file}: field '{name}': expected a non-negative integer, got "
                    f"{index.get(name)!r}"
                )
        if index["dim"] < 1:
            raise FeatureError(f"{index_file}: field 'dim': expected at least 1 channel")
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


def _optional_str(index: dict[str, Any], name: str, index_file: Path) -> str | None:
    value = index.get(name)
    if value is not None and not isinstance(value, str):
        raise FeatureError(f"{index_file}: field '{name}': expected a string, got {value!r}")
    return value


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_items(index: dict[str, Any], index_file: Path) -> dict[str, tuple[int, int]]:
    """``key -> (first row, rows)`` of a read index, each inside the ``rows`` of ``data.bin``.

    Raises:
        FeatureError: naming the item whose entry is not two non-negative integers or
            reaches past the data.
    """
    rows = index["rows"]
    items: dict[str, tuple[int, int]] = {}
    for key, value in index["items"].items():
        if not (isinstance(value, list) and len(value) == 2 and all(_is_count(v) for v in value)):
            raise FeatureError(
                f"{index_file}: field 'items.{key}': expected [first_row, rows] as two "
                f"non-negative integers, got {value!r}. The index was modified; re-run "
                "`momentkit pack`"
            )
        first, count = value
        if first + count > rows:
            raise FeatureError(
                f"{index_file}: field 'items.{key}': rows {first}..{first + count} reach past "
                f"the {rows} rows of {DATA_NAME}. The index was modified; re-run `momentkit pack`"
            )
        items[key] = (first, count)
    return items


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
            if array.size:  # an item of zero rows (as the npz store allows) adds no bytes
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
    _check_output(Path(source.path), out, overwrite)
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
    except OSError as e:  # disk full, read-only, ...: name the store, leave nothing behind
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, MomentkitError):
            raise
        raise output_error(out, e, "write the packed store") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PackedFeatureStore(out)


def _check_output(src: Path, out: Path, overwrite: bool) -> None:
    """Refuse an output that is, holds or lies inside the source, and any existing output that
    is not a packed store this tool wrote (``--overwrite`` deletes only those).

    Raises:
        FeatureError: naming the path and what to do instead.
    """
    a, b = src.resolve(), out.resolve()
    if a == b:
        raise FeatureError(
            f"{out}: is the source folder itself. Give another OUT_DIR (packing never "
            "replaces its source)"
        )
    if b.is_relative_to(a) or a.is_relative_to(b):
        inside = "inside the source" if b.is_relative_to(a) else "a folder holding the source"
        raise FeatureError(f"{out}: is {inside} {src}. Give an OUT_DIR outside the source folder")
    _check_replaceable(out, overwrite)


def _check_replaceable(out: Path, overwrite: bool) -> None:
    """Refuse an existing ``out`` unless ``overwrite`` and it is empty or a packed store."""
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise FeatureError(f"{out}: already exists. Pass --overwrite to replace it")
    if out.is_symlink() or not out.is_dir():
        raise FeatureError(
            f"{out}: is not a packed feature store (it is a "
            f"{'symbolic link' if out.is_symlink() else 'file'}); --overwrite replaces only a "
            "store written by `momentkit pack`. Remove it yourself or choose another OUT_DIR"
        )
    names = {e.name for e in os.scandir(out)}
    if not names:
        return  # an empty folder: nothing to lose
    if not is_packed_store(out) or not _is_our_index(out / INDEX_NAME):
        raise FeatureError(
            f"{out}: is not a packed feature store (no momentkit {INDEX_NAME}); --overwrite "
            "replaces only a store written by `momentkit pack`. Remove it yourself or choose "
            "another OUT_DIR"
        )
    others = sorted(names - {INDEX_NAME, DATA_NAME})
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise FeatureError(
            f"{out}: holds files that are not part of a packed store ({shown}); --overwrite "
            "would delete them. Move them away or choose another OUT_DIR"
        )


def _is_our_index(index_file: Path) -> bool:
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(index, dict) and index.get("format") == FORMAT


def _replace_dir(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first and then deleted.

    ``out`` is checked again right before (:func:`_check_replaceable`): only an empty folder
    or a store written by :func:`pack_features` is ever deleted.
    """
    if not out.exists():
        os.replace(tmp, out)
        return
    _check_replaceable(out, overwrite)
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
