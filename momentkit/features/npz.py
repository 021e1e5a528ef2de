"""A directory of per-item ``.npz`` files, the layout of Moment-DETR, QD-DETR and Lighthouse.

Video streams: ``<dir>/<vid>.npz`` holding ``features`` of shape ``(clips, D)``.
Query features: ``<dir>/qid<qid>.npz`` holding ``last_hidden_state`` ``(tokens, D)`` and
``pooler_output`` ``(D,)``.
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from momentkit.features.base import (
    DEFAULT_FIELDS,
    MAX_ARRAY_BYTES,
    as_2d,
    check_dim,
    check_finite,
)
from momentkit.utils.errors import FeatureError
from momentkit.utils.paths import unsafe_name_reason


def select_field(names: list[str], field: str | None, source: str) -> str:
    """The array to read among ``names`` (those stored in ``source``).

    With ``field=None`` the first of :data:`DEFAULT_FIELDS` present is used, else the only array.
    """
    if field is not None:
        if field in names:
            return field
        raise FeatureError(
            f"{source}: no array named '{field}' (it holds: {', '.join(names) or 'nothing'}). "
            "Pick one of those with the field option (--field on the command line)"
        )
    for name in DEFAULT_FIELDS:
        if name in names:
            return name
    if len(names) == 1:
        return names[0]
    raise FeatureError(
        f"{source}: cannot tell which array holds the features (it holds: "
        f"{', '.join(names) or 'nothing'}). Name it with the field option (--field)"
    )


class _Header(NamedTuple):
    """A member's ``.npy`` header: the array's shape, order and dtype, and the header's length
    in bytes (where the data starts in the member)."""

    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype
    length: int


def _check_member(archive: zipfile.ZipFile, name: str, file: Path) -> _Header | None:
    """Refuse array ``name`` of ``archive`` when it would take more than
    :data:`~momentkit.features.base.MAX_ARRAY_BYTES` once read; returns its header.

    Reads the sizes the archive declares before anything is decompressed in full: the zip
    entry's uncompressed size (a zip bomb declares a huge one, or decompresses past a small one,
    which zipfile stops at) and the shape and dtype of the ``.npy`` header (numpy allocates that
    much before reading the data).
    """
    try:
        info = archive.getinfo(f"{name}.npy")
    except KeyError:
        return None  # an array numpy stores otherwise: np.load reports it
    limit = MAX_ARRAY_BYTES
    if info.file_size > limit + 65536:
        raise FeatureError(
            f"{file}: array '{name}' declares {info.file_size / 2**20:.0f} MiB once "
            f"decompressed, more than the {limit / 2**20:.0f} MiB a feature array may take. "
            "The file is damaged or not a feature file; re-extract it"
        )
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        header = f.tell()
    count = math.prod(shape)
    size = count * dtype.itemsize
    if size > limit or size > max(info.file_size - header, 0):
        raise FeatureError(
            f"{file}: array '{name}' declares shape {tuple(shape)} of {dtype} "
            f"({size / 2**20:.1f} MiB) but "
            + (
                f"a feature array may take at most {limit / 2**20:.0f} MiB"
                if size > limit
                else f"the archive holds {max(info.file_size - header, 0)} bytes of data"
            )
            + ". The file is damaged or not a feature file; re-extract it"
        )
    return _Header(tuple(shape), bool(fortran), dtype, header)


def _read_stored(
    archive: zipfile.ZipFile, file: Path, info: zipfile.ZipInfo, header: _Header
) -> np.ndarray | None:
    """The array of an uncompressed (``numpy.savez``) member read straight into its buffer,
    the member's CRC-32 checked; ``None`` where the standard reader must do it (compressed,
    encrypted, Fortran-ordered, object or sizes that do not add up).

    ``zipfile`` + ``read_array`` copy the data twice (into 256 KiB ``bytes``, then into the
    array); one ``readinto`` halves the copying, the larger part of reading a batch of features
    (a QVHighlights training batch: 96 files of 0.06-0.7 MB).
    """
    dtype = header.dtype
    if (
        info.compress_type != zipfile.ZIP_STORED
        or info.flag_bits & 0x1  # encrypted
        or header.fortran
        or dtype.hasobject
    ):
        return None
    array = np.empty(header.shape, dtype)
    if info.file_size != header.length + array.nbytes:
        return None
    f = archive.fp  # the archive's own file handle (no member is open): no second open
    if f is None:
        return None
    f.seek(info.header_offset)
    local = f.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        return None
    name_length, extra_length = struct.unpack("<HH", local[26:30])
    f.seek(info.header_offset + 30 + name_length + extra_length)
    npy_header = f.read(header.length)
    data = memoryview(array.reshape(-1)).cast("B") if array.size else memoryview(b"")
    read = f.readinto(data) if array.size else 0
    if len(npy_header) != header.length or read != array.nbytes:
        return None
    if zlib.crc32(data, zlib.crc32(npy_header)) != info.CRC:
        raise FeatureError(
            f"{file}: array '{info.filename[:-4]}' fails its CRC-32 check. The file is damaged; "
            "re-extract it"
        )
    return array


def read_npz(file: Path, field: str | None) -> tuple[np.ndarray, str]:
    """Read one feature array from ``file``; returns ``(array (L, D) float32, field name)``.

    The sizes the file declares are checked before its array is read (:func:`_check_member`),
    so a crafted file cannot make the reader allocate or decompress without bound.

    Raises:
        FeatureError: the file is unreadable, too large, or the array is not numeric, (L, D)
            or (D,), finite.
    """
    try:
        if not zipfile.is_zipfile(file):
            if not file.exists():
                raise FileNotFoundError(file)
            raise FeatureError(
                f"{file}: cannot read the file (not a zip archive). It is damaged or not written "
                "by numpy.savez; re-extract or re-download it"
            )
        with zipfile.ZipFile(file) as archive:
            names = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
            name = select_field(names, field, str(file))
            header = _check_member(archive, name, file)
            info = archive.getinfo(f"{name}.npy")
            array = None if header is None else _read_stored(archive, file, info, header)
            if array is None:  # as np.load reads it, from the archive already open
                with archive.open(info) as member:
                    array = np.lib.format.read_array(member, allow_pickle=False)
    except (FeatureError, FileNotFoundError):
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, NotImplementedError) as e:
        raise FeatureError(
            f"{file}: cannot read the file ({type(e).__name__}: {e}). It is damaged or not "
            "written by numpy.savez; re-extract or re-download it"
        ) from None
    if array.dtype.kind not in "fiu":
        raise FeatureError(f"{file}: array '{name}' has dtype {array.dtype}; expected numbers")
    array = as_2d(array.astype(np.float32, copy=False), str(file), name)
    check_finite(array, str(file))
    return array, name


class NpzFeatureStore:
    """Features in ``<root>/<key>.npz`` files, read on demand.

    Args:
        root: the directory.
        field: the array to read from each file; ``None`` picks ``features``, else
            ``last_hidden_state``, else ``pooler_output``, else a file's only array.
        cache: keep every array read in memory, so later epochs open no files. Each
            DataLoader worker holds its own cache.

    Arrays returned by :meth:`get` may be shared with the cache: treat them as read-only.
    """

    def __init__(self, root: str | Path, field: str | None = None, *, cache: bool = False) -> None:
        self.path = Path(root)
        if not self.path.is_dir():
            raise FeatureError(
                f"{self.path}: no such feature directory. Give the folder holding the "
                "<vid>.npz (or qid<qid>.npz) files"
            )
        self.field = field
        self.cache = cache
        self._cache: dict[str, np.ndarray] = {}
        self._keys: list[str] | None = None
        self._keyset: frozenset[str] | None = None
        self._dim: int | None = None
        self._dim_source = ""
        self.field_used: str | None = field  # the array name read, once a file has been read

    def __repr__(self) -> str:
        return f"NpzFeatureStore({str(self.path)!r}, field={self.field!r}, cache={self.cache})"

    def _scan(self) -> None:
        with os.scandir(self.path) as it:
            keys = [e.name[:-4] for e in it if e.name.endswith(".npz") and not e.is_dir()]
        self._keys = sorted(keys)
        self._keyset = frozenset(keys)

    def keys(self) -> list[str]:
        """Every file stem, sorted (the directory is listed once)."""
        if self._keys is None:
            self._scan()
        assert self._keys is not None
        return list(self._keys)

    def __contains__(self, key: object) -> bool:
        if self._keyset is None:
            self._scan()
        assert self._keyset is not None
        return key in self._keyset

    def __len__(self) -> int:
        return len(self.keys())

    @property
    def dim(self) -> int:
        """Channels per row, read from the first file when no file has been read yet."""
        if self._dim is None:
            keys = self.keys()
            if not keys:
                raise FeatureError(
                    f"{self.path}: no .npz files. Point at the folder holding the feature files"
                )
            self.get(keys[0])
        assert self._dim is not None
        return self._dim

    def file(self, key: str) -> Path:
        """The file holding ``key``'s features.

        Raises:
            FeatureError: ``key`` is not a plain file name (a path separator, ``..``, NUL): a
                key from an annotation file never reads outside the directory.
        """
        reason = unsafe_name_reason(f"{key}.npz")
        if reason is not None:
            what = "query" if key.startswith("qid") else "video"
            raise FeatureError(
                f"{self.path}: the {what} id {key!r} cannot name a feature file ({reason}). "
                "Ids must be plain names; fix the annotation"
            )
        return self.path / f"{key}.npz"

    def get(self, key: str, max_rows: int | None = None) -> np.ndarray:
        """``(L, D)`` float32 features of ``key``, the first ``max_rows`` rows if given.

        Raises:
            FeatureError: the file is missing, unreadable, misshapen, has a channel count
                different from the other files of the directory, or holds NaN/Inf.
        """
        array = self._cache.get(key) if self.cache else None
        if array is None:
            array = self._load(key)
            if self.cache:
                array.flags.writeable = False
                self._cache[key] = array
        return array if max_rows is None else array[:max_rows]

    def _load(self, key: str) -> np.ndarray:
        file = self.file(key)
        try:
            # the first file read fixes the array name, so every file must hold the same one
            array, self.field_used = read_npz(file, self.field_used)
        except FileNotFoundError:
            what = "query" if key.startswith("qid") else "video"
            raise FeatureError(
                f"{self.path}: no features for {what} '{key}' (missing file {file}). Check that "
                "this directory holds the features of this dataset split, or drop the "
                "annotations that use it"
            ) from None
        if self._dim is None:
            self._dim, self._dim_source = array.shape[1], str(file)
        else:
            check_dim(array, self._dim, str(file), self._dim_source)
        return array
