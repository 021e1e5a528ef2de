"""The data paths of a run resumed from another folder.

A run saves its data paths as given, relative to the folder it was started in. Resumed from
elsewhere, those paths name nothing (or other files): :func:`first_missing` finds the first
such path for a clear error, and :func:`same_data` accepts the same files named anew from here
(each the same file as the saved one, or the saved one missing here and the given one present),
which :func:`absolute` then saves as absolute paths so the run resumes from anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

#: the experiment config's data paths (dotted keys)
DATA_PATH_KEYS = (
    "data.train_path",
    "data.val_path",
    "data.video_features",
    "data.text_features",
    "data.corpus",
    "data.corpus_text_features",
)

#: what to do when a saved path does not exist from here
MISSING_HINT = (
    "The run was probably started in another folder: resume from that folder, or give the "
    "data paths again with --resume"
)


def as_paths(value: object) -> list[str]:
    """A path setting (``None``, one path or a list of paths) as a list of strings."""
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]


def same_data(saved: object, given: object) -> bool:
    """Whether the ``given`` paths name the ``saved`` ones' files from this folder."""
    old, new = as_paths(saved), as_paths(given)
    if len(old) != len(new) or not new:
        return False
    for o, n in zip(old, new):
        here, there = Path(n), Path(o)
        if not here.exists():
            return False
        if there.exists() and not here.samefile(there):
            return False
    return True


def first_missing(value: object) -> str | None:
    """The first path of a setting that does not exist from here, else ``None``."""
    return next((p for p in as_paths(value) if not Path(p).exists()), None)


def absolute(value: object) -> str | list[str]:
    """A path setting with every path made absolute (from the current folder)."""
    if isinstance(value, list | tuple):
        return [os.path.abspath(v) for v in value]
    return os.path.abspath(str(value))


__all__ = ["DATA_PATH_KEYS", "MISSING_HINT", "absolute", "as_paths", "first_missing", "same_data"]
