"""Finding the videos of a folder and telling which changed since they were indexed.

A file is identified by its resolved absolute path. It is *unchanged* when its size and
modification time (nanoseconds) equal the stored ones; when only the modification time moved
(a ``touch``, a copy that kept the bytes), its SHA-256 decides. A new path whose content equals
that of a video that disappeared is a *move*: its row is re-pointed, nothing is re-encoded.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

# Containers FFmpeg reads that browsers and cameras commonly produce.
VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".wmv", ".ogv"}
)


def is_video_name(name: str | Path) -> bool:
    """Whether the file name has one of :data:`VIDEO_EXTENSIONS` (case-insensitive)."""
    return Path(name).suffix.lower() in VIDEO_EXTENSIONS


@dataclass(frozen=True)
class FileStat:
    """A video file as found on disk.

    Attributes:
        path: resolved absolute path.
        size: bytes.
        mtime_ns: modification time in nanoseconds.
    """

    path: Path
    size: int
    mtime_ns: int


def stat_file(path: str | Path) -> FileStat:
    """The :class:`FileStat` of ``path`` (resolved)."""
    path = Path(path).resolve()
    st = path.stat()
    return FileStat(path, st.st_size, st.st_mtime_ns)


def scan_videos(root: str | Path) -> list[FileStat]:
    """Every video file under ``root``, recursively, sorted by path.

    Hidden files and folders (name starting with ``.``, e.g. partial downloads and atomic-write
    temporaries) are skipped; folder links are not followed, and a file link counts only when
    its target lies inside ``root``, so everything indexed can be served from ``root``.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory")
    found: dict[Path, FileStat] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith(".") or not is_video_name(name):
                continue
            path = Path(folder, name).resolve()
            if not path.is_relative_to(root) or not path.is_file():
                continue
            found[path] = stat_file(path)
    return [found[p] for p in sorted(found)]


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of the file's bytes, read ``chunk_size`` bytes at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class KnownVideo:
    """What the library remembers of an indexed file (the fields change detection needs)."""

    id: int
    path: Path
    size: int
    mtime_ns: int
    sha256: str


@dataclass
class ChangePlan:
    """What must be done to bring the library in line with a folder.

    Attributes:
        new: files never indexed (encode and insert).
        changed: ``(row, file)`` whose content changed (re-encode, replace).
        moved: ``(row, file)``: same content at a new path (re-point the row only).
        touched: ``(row, file)``: modification time changed, content did not (update the stat).
        removed: rows whose file is gone (delete).
        unchanged: rows that need nothing.
    """

    new: list[FileStat] = field(default_factory=list)
    changed: list[tuple[KnownVideo, FileStat]] = field(default_factory=list)
    moved: list[tuple[KnownVideo, FileStat]] = field(default_factory=list)
    touched: list[tuple[KnownVideo, FileStat]] = field(default_factory=list)
    removed: list[KnownVideo] = field(default_factory=list)
    unchanged: list[KnownVideo] = field(default_factory=list)

    @property
    def to_encode(self) -> list[FileStat]:
        """Files whose features must be computed: new and changed ones."""
        return self.new + [f for _, f in self.changed]

    def is_empty(self) -> bool:
        """Whether the library already matches the folder."""
        return not (self.new or self.changed or self.moved or self.touched or self.removed)


def plan_changes(
    known: Iterable[KnownVideo],
    found: Iterable[FileStat],
    hash_file: Callable[[Path], str] = file_sha256,
) -> ChangePlan:
    """Compare the indexed rows under a folder with the files found there now.

    Hashes only the files whose size matches but whose time does not, and new files whose size
    equals that of a vanished one (move candidates), so an unchanged library costs one ``stat``
    per file.

    Args:
        known: the library's rows for the folder.
        found: :func:`scan_videos` of the folder.
        hash_file: content digest of a path (injected for tests).
    """
    plan = ChangePlan()
    by_path = {k.path: k for k in known}
    fresh: list[FileStat] = []
    for f in found:
        row = by_path.pop(f.path, None)
        if row is None:
            fresh.append(f)
        elif row.size != f.size:
            plan.changed.append((row, f))
        elif row.mtime_ns == f.mtime_ns:
            plan.unchanged.append(row)
        elif hash_file(f.path) == row.sha256:
            plan.touched.append((row, f))
        else:
            plan.changed.append((row, f))
    vanished = list(by_path.values())
    by_size: dict[int, list[KnownVideo]] = {}
    for row in vanished:
        by_size.setdefault(row.size, []).append(row)
    for f in fresh:
        candidates = by_size.get(f.size, [])
        digest = hash_file(f.path) if candidates else None
        match = next((r for r in candidates if r.sha256 == digest), None)
        if match is None:
            plan.new.append(f)
        else:
            candidates.remove(match)
            plan.moved.append((match, f))
    moved_ids = {row.id for row, _ in plan.moved}
    plan.removed = [row for row in vanished if row.id not in moved_ids]
    return plan
