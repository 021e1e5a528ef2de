"""An on-disk cache of arrays that take seconds to compute and never change for a given input.

The zero-shot bridge of the ``offline`` encoders embeds the 1000 ImageNet class names with the
text model on every start (~1 s on two cores); the result depends only on the text model's
files, the embedding code and the names, so it is computed once and kept here.

Where: ``$MOMENTKIT_CACHE``, else ``$XDG_CACHE_HOME/momentkit``, else ``~/.cache/momentkit``.

An entry is ``<name>-<key>.npy`` where ``key`` hashes everything the value depends on (the
caller passes the model's identity: package version, file size and modification time, the
code's version, the inputs). Writes go to a temporary file in the same directory renamed into
place, so concurrent writers never leave a torn file (both compute the same value; the last
rename wins) and a reader sees either no file or a complete one. A file that does not load or
has another shape is recomputed. A cache directory that cannot be written (read-only home) only
costs the recomputation: the value is returned all the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np


def cache_dir() -> Path:
    """The cache directory (not created here)."""
    root = os.environ.get("MOMENTKIT_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "momentkit"


def cache_key(parts: Mapping[str, Any]) -> str:
    """16 hex digits hashing ``parts`` (JSON, sorted keys)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def file_identity(path: str | Path) -> dict[str, Any]:
    """What identifies a model file without reading it: path, size, modification time."""
    st = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cached_array(
    name: str,
    parts: Mapping[str, Any],
    compute: Callable[[], np.ndarray],
    *,
    shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """The array cached as ``name`` for ``parts``, computed (and stored) when missing.

    Args:
        name: a short file-name-safe label, e.g. ``imagenet-class-embeddings``.
        parts: everything the value depends on (see the module doc).
        compute: makes the value.
        shape: the expected shape; a cached file of another shape is recomputed.
    """
    directory = cache_dir()
    path = directory / f"{name}-{cache_key(parts)}.npy"
    try:
        value = np.load(path, allow_pickle=False)
        if shape is None or value.shape == tuple(shape):
            return value
    except (OSError, ValueError, EOFError):
        pass
    value = np.ascontiguousarray(compute())
    if shape is not None and value.shape != tuple(shape):
        return value  # not what this entry holds: never store it
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, value, allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        pass  # read-only or full cache directory: keep the value in memory only
    return value
