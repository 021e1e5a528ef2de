"""Incremental indexing of a folder of videos into a library (``momentkit index``).

A run scans the folder, compares it with the library (:func:`plan_changes`) and does only what
changed: deleted files are removed, moved and touched files re-pointed, and only new and
changed files are encoded, each committed in its own transaction as soon as it is encoded. An
interrupted run therefore keeps what it finished, and the next run picks up the rest. A file
that cannot be decoded is recorded as failed and not retried until it changes (or with
``retry_failed``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from momentkit.data.records import check_clip_len
from momentkit.inference.predictor import TooManyClipsError, check_video_clips
from momentkit.library.files import FileStat, file_sha256, plan_changes, scan_videos, stat_file
from momentkit.library.protocols import EncodingPredictor
from momentkit.library.space import RetrievalSpace
from momentkit.library.store import LibraryError, LibraryStore
from momentkit.utils.errors import MomentkitError


@dataclass
class IndexReport:
    """What one run did.

    Attributes:
        root: the folder indexed.
        added, changed: files encoded in this run.
        moved: ``(old, new)`` paths of files re-pointed without re-encoding.
        touched: files whose modification time changed but content did not.
        removed: files deleted from the library.
        unchanged: videos that needed nothing.
        failed: ``(path, error)`` of files that could not be encoded now.
        skipped_failed: files that failed before and have not changed since (not retried).
        capped: files refused (and counted in ``failed``) for holding more clips than
            ``max_clips``.
        seconds: wall-clock seconds of the run.
        video_seconds: seconds of video encoded.
    """

    root: Path
    added: list[Path] = field(default_factory=list)
    changed: list[Path] = field(default_factory=list)
    moved: list[tuple[Path, Path]] = field(default_factory=list)
    touched: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    unchanged: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    skipped_failed: list[Path] = field(default_factory=list)
    capped: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    video_seconds: float = 0.0

    @property
    def encoded(self) -> int:
        """Videos encoded in this run (added + changed)."""
        return len(self.added) + len(self.changed)

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = [
            f"{self.root}: {len(self.added)} added, {len(self.changed)} changed, "
            f"{len(self.moved)} moved, {len(self.touched)} touched, {len(self.removed)} removed, "
            f"{self.unchanged} unchanged, {len(self.failed)} failed",
            f"encoded {self.video_seconds:.1f} s of video in {self.seconds:.1f} s",
        ]
        if self.skipped_failed:
            lines.append(
                f"{len(self.skipped_failed)} file(s) failed before and did not change "
                "(not retried; use --retry-failed)"
            )
        for path, err in self.failed:  # momentkit errors name the file already
            lines.append(f"failed: {err}" if str(path) in err else f"failed: {path}: {err}")
        if self.capped:
            lines.append(
                f"{len(self.capped)} file(s) over the clip limit were skipped (the rest were "
                "indexed); raise --max-clips and run with --retry-failed to index them"
            )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready record of the run."""
        return {
            "root": str(self.root),
            "added": [str(p) for p in self.added],
            "changed": [str(p) for p in self.changed],
            "moved": [[str(a), str(b)] for a, b in self.moved],
            "touched": [str(p) for p in self.touched],
            "removed": [str(p) for p in self.removed],
            "unchanged": self.unchanged,
            "failed": [{"path": str(p), "error": e} for p, e in self.failed],
            "skipped_failed": [str(p) for p in self.skipped_failed],
            "capped": [str(p) for p in self.capped],
            "seconds": round(self.seconds, 3),
            "video_seconds": round(self.video_seconds, 3),
        }


def _error_text(error: BaseException) -> str:
    if isinstance(error, MomentkitError):
        return str(error)
    return f"{type(error).__name__}: {error}"


class Indexer:
    """Brings a library in line with a folder of videos.

    Args:
        store: the library database.
        spec: the encoder spec (must be the library's, if it has one).
        clip_len: seconds per clip (must be the library's, if it has one, and the predictor's).
        predictor: the predictor that encodes videos, or a factory called once, only when some
            video must be encoded (so a run with nothing to do loads no model).
        progress: show a progress bar over the videos to encode.
        retry_failed: encode files that failed before even if they did not change.
        max_clips: refuse (record as failed, and go on) a video of more clips than this,
            before decoding it: a file of a few frames may declare a duration of years.
            ``None``: no limit. A video whose frame interval is longer than ``clip_len`` is
            refused the same way.

    Raises:
        LibraryError: the library was indexed with another encoder or clip length.
        EncoderError: ``spec`` gives no space shared by clips and queries.
        FormatError: ``clip_len`` is not a positive number of seconds.
    """

    def __init__(
        self,
        store: LibraryStore,
        spec: str,
        clip_len: float,
        predictor: EncodingPredictor | Callable[[], EncodingPredictor],
        *,
        progress: bool = True,
        retry_failed: bool = False,
        max_clips: int | None = None,
    ) -> None:
        self.store = store
        self.max_clips = max_clips
        self.space = RetrievalSpace.for_spec(spec)
        self._predictor = predictor
        self.progress = progress
        self.retry_failed = retry_failed
        self.clip_len = check_clip_len(clip_len, "clip_len")  # 0, negative, NaN: refused
        store.bind(spec, self.space.stream, self.clip_len)

    def predictor(self) -> EncodingPredictor:
        """The predictor (built by the factory on first use)."""
        if not hasattr(self._predictor, "encode_video"):
            self._predictor = self._predictor()  # type: ignore[operator]
        return self._predictor  # type: ignore[return-value]

    def run(self, root: str | Path) -> IndexReport:
        """Index ``root`` (recursively); see the module doc.

        Raises:
            FileNotFoundError: ``root`` is not a directory.
            IndexLockedError: another indexing run holds the library (one at a time).
        """
        with self.store.index_lock():
            return self._run(root)

    def _run(self, root: str | Path) -> IndexReport:
        start = time.perf_counter()
        started_at = time.time()
        root = Path(root).resolve()
        found = scan_videos(root)
        self.store.add_root(root)
        known = [v.known() for v in self.store.videos(under=root)]
        plan = plan_changes(known, found)
        report = IndexReport(root, unchanged=len(plan.unchanged))

        for row in plan.removed:
            self.store.remove_video(row.id)
            report.removed.append(row.path)
        for row, stat in plan.moved:
            self.store.update_file(row.id, stat)
            report.moved.append((row.path, stat.path))
        for row, stat in plan.touched:
            self.store.update_file(row.id, stat)
            report.touched.append(stat.path)
        found_paths = {f.path for f in found}
        failures = self.store.failures()
        self.store.forget_failures(
            [p for p in failures if p.is_relative_to(root) and p not in found_paths]
        )

        replace = {stat.path: row.id for row, stat in plan.changed}
        todo: list[FileStat] = []
        for stat in plan.to_encode:
            old = failures.get(stat.path)
            if old and not self.retry_failed and old[:2] == (stat.size, stat.mtime_ns):
                report.skipped_failed.append(stat.path)
            else:
                todo.append(stat)
        try:
            self._encode_all(todo, replace, report)
        finally:
            report.seconds = time.perf_counter() - start
            self.store.record_run(
                root,
                started_at,
                report.seconds,
                added=len(report.added),
                changed=len(report.changed),
                moved=len(report.moved),
                touched=len(report.touched),
                removed=len(report.removed),
                unchanged=report.unchanged,
                failed=len(report.failed),
            )
        return report

    def _encode_all(
        self, todo: list[FileStat], replace: dict[Path, int], report: IndexReport
    ) -> None:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="video", disable=not self.progress or not todo)
        try:
            for stat in todo:
                bar.set_postfix_str(stat.path.name, refresh=False)
                self._encode_one(stat, replace.get(stat.path), report)
                bar.update(1)
        finally:
            bar.close()

    def _encode_one(self, stat: FileStat, replace: int | None, report: IndexReport) -> None:
        start = time.perf_counter()
        try:
            stat = stat_file(stat.path)  # the fingerprint of the bytes about to be encoded
            self._check_clips(stat.path)
            # max_clips: checked above against the index's own limit (_check_clips)
            encoding = self.predictor().encode_video(stat.path, max_clips=None)
            streams = {k: np.asarray(v, dtype=np.float32) for k, v in encoding.streams.items()}
            if self.space.stream not in streams:
                raise LibraryError(
                    f"{stat.path}: the encoding has no '{self.space.stream}' stream (it has "
                    f"{', '.join(streams) or 'none'}); the predictor must use the library's "
                    f"encoder '{self.space.spec}'"
                )
            if abs(float(encoding.clip_len) - self.clip_len) > 1e-9:
                raise LibraryError(
                    f"{stat.path}: encoded with {encoding.clip_len:g} s clips but the library "
                    f"uses {self.clip_len:g} s clips"
                )
            num = min(len(v) for v in streams.values())
            streams = {k: v[:num] for k, v in streams.items()}
            digest = file_sha256(stat.path)
        except Exception as e:  # one bad video must not stop the run
            if replace is not None:  # its old features describe other bytes
                self.store.remove_video(replace)
            error = _error_text(e)
            self.store.record_failure(stat, error)
            report.failed.append((stat.path, error))
            if isinstance(e, TooManyClipsError):
                report.capped.append(stat.path)
            return
        self.store.add_video(
            stat,
            digest,
            encoding.duration,
            encoding.clip_len,
            streams,
            time.perf_counter() - start,
            replace=replace,
        )
        (report.changed if replace is not None else report.added).append(stat.path)
        report.video_seconds += float(encoding.duration)

    def _check_clips(self, path: Path) -> None:
        """Refuse ``path`` before decoding it when the clip length is shorter than its frame
        interval (ClipLengthError) or it declares more clips than ``max_clips``
        (TooManyClipsError); see :func:`~momentkit.inference.predictor.check_video_clips`."""
        check_video_clips(path, self.clip_len, self.max_clips)
