"""The feature-store interface and the checks every store applies to what it reads.

A feature store maps a key (a video id, or ``qid<qid>`` for query features) to a float32 array
of shape ``(L, D)``: ``L`` clips (or tokens) by ``D`` channels. ``D`` is the same for every key
of a store. One-dimensional arrays (e.g. a query's ``pooler_output`` of shape ``(D,)``) are
returned as ``(1, D)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from momentkit.utils.errors import FeatureError

# Array names tried, in order, when a store is not told which one to read. Video files of
# Moment-DETR / Lighthouse hold ``features``; query files hold ``last_hidden_state`` (tokens)
# and ``pooler_output`` (one vector).
DEFAULT_FIELDS: tuple[str, ...] = ("features", "last_hidden_state", "pooler_output")

#: most bytes one feature array may take when read (1 GiB: 8 hours of 2304-d SlowFast features
#: at 2 s clips take 33 MiB); a file declaring more is refused before anything is allocated
MAX_ARRAY_BYTES = 1 << 30


@runtime_checkable
class FeatureStore(Protocol):
    """What the data loader and the CLIs need from a source of per-item features."""

    path: Path

    @property
    def dim(self) -> int:
        """``D``, the number of channels of every item."""
        ...

    def get(self, key: str, max_rows: int | None = None) -> np.ndarray:
        """The ``(L, D)`` float32 features of ``key`` (only the first ``max_rows`` rows if given).

        Raises:
            FeatureError: ``key`` is absent, or its features are malformed.
        """
        ...

    def keys(self) -> list[str]:
        """Every key, sorted."""
        ...

    def __contains__(self, key: object) -> bool: ...

    def __len__(self) -> int: ...


def text_key(qid: int | str) -> str:
    """The store key of a query's features: ``qid<qid>``, as Moment-DETR names the files."""
    return f"qid{qid}"


def as_2d(array: np.ndarray, source: str, field: str) -> np.ndarray:
    """``array`` as ``(L, D)``: ``(D,)`` becomes ``(1, D)``; other ranks raise.

    Args:
        array: the array read from ``source``.
        source: the file it came from, for the error message.
        field: the array name inside the file, for the error message.
    """
    if array.ndim == 1:
        return array[None, :]
    if array.ndim != 2:
        raise FeatureError(
            f"{source}: array '{field}' has shape {tuple(array.shape)}; expected (clips, dims) "
            "or (dims,). Re-extract the features with one row per clip or token"
        )
    if array.shape[1] == 0:
        raise FeatureError(f"{source}: array '{field}' has 0 channels (shape {array.shape})")
    return array


def check_dim(array: np.ndarray, expected: int, source: str, reference: str) -> None:
    """Raise a FeatureError when ``array`` has not ``expected`` channels.

    Args:
        array: ``(L, D)`` features read from ``source``.
        expected: the channel count of the store (taken from ``reference``).
        source: the offending file.
        reference: where ``expected`` comes from, for the message.
    """
    if array.shape[1] != expected:
        raise FeatureError(
            f"{source}: features have {array.shape[1]} channels but {reference} has {expected}. "
            "Every file of one stream must come from the same extractor; put streams of "
            "different extractors in separate directories"
        )


def check_finite(array: np.ndarray, source: str) -> None:
    """Raise a FeatureError naming ``source`` and the first bad row when ``array`` has NaN/Inf."""
    finite = np.isfinite(array)
    if finite.all():
        return
    rows = np.flatnonzero(~finite.all(axis=tuple(range(1, array.ndim))))
    kind = "NaN" if np.isnan(array).any() else "Inf"
    raise FeatureError(
        f"{source}: features contain {kind} values ({len(rows)} bad row(s), first at row "
        f"{int(rows[0])}). Re-extract this item's features, or drop it from the annotations"
    )
