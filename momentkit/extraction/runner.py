"""Running an extraction over many videos on this machine, with progress and a final report."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from momentkit.extraction.pipeline import (
    ExtractionConfig,
    ExtractionReport,
    Extractor,
    VideoResult,
    video_id,
)
from momentkit.utils.errors import MomentkitError
from momentkit.utils.io import write_json

# Extensions picked up when a directory is given (files named explicitly are always taken).
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ts"}
)

REPORT_NAME = "extract_report.json"


def find_videos(inputs: Iterable[str | Path]) -> list[Path]:
    """The videos named by ``inputs``: files as given, directories searched recursively.

    Raises:
        MomentkitError: an input does not exist, or two videos share a file stem (their
            features would overwrite each other).
    """
    videos: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = (f for f in p.rglob("*") if f.suffix.lower() in VIDEO_EXTENSIONS)
            videos.extend(sorted(f for f in found if f.is_file()))
        elif p.is_file():
            videos.append(p)
        else:
            raise MomentkitError(f"{p}: no such file or directory")
    seen: dict[str, Path] = {}
    unique: list[Path] = []
    for v in videos:
        vid = video_id(v)
        if vid in seen:
            if seen[vid].resolve() == v.resolve():
                continue
            raise MomentkitError(
                f"{v} and {seen[vid]} have the same video id '{vid}' (file name without "
                "extension), so their features would overwrite each other. Rename one"
            )
        seen[vid] = v
        unique.append(v)
    return unique


def build_extractor(
    specs: Sequence[str], out_dir: str | Path, config: ExtractionConfig, **build_kwargs: Any
) -> Extractor:
    """An :class:`Extractor` for the encoders named by ``specs`` (see ``build_encoder``).

    Args:
        specs: encoder specs, e.g. ``("offline", "motion:8")``.
        out_dir: the feature directory.
        config: see :class:`ExtractionConfig`.
        **build_kwargs: ``device``, ``batch_size``, ``frames_per_clip`` for ``build_encoder``.
    """
    from momentkit.encoders import build_encoder

    return Extractor([build_encoder(s, **build_kwargs) for s in specs], out_dir, config)


class Progress:
    """A progress bar over videos showing throughput in multiples of real time, and, while a
    long video is being extracted, its clips done out of its total and the time it has left."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="video", disable=not enabled, dynamic_ncols=True)
        self.start = time.perf_counter()
        self.video_seconds = 0.0
        self.failed = 0
        self._video_start = self.start

    def _postfix(self) -> str:
        speed = self.video_seconds / max(time.perf_counter() - self.start, 1e-9)
        postfix = f"{speed:.1f}x real time"
        if self.failed:
            postfix += f", {self.failed} failed"
        return postfix

    def clips(self, done: int, total: int) -> None:
        """Within-video progress: ``done`` of ``total`` clips, with the time left."""
        if done == 0:
            self._video_start = time.perf_counter()
        elapsed = time.perf_counter() - self._video_start
        text = f"clips {done}/{total}"
        if 0 < done < total:
            text += f", {format_seconds(elapsed * (total - done) / done)} left in this video"
        self.bar.set_postfix_str(f"{self._postfix()}, {text}", refresh=True)

    def update(self, result: VideoResult) -> None:
        """Count one finished video."""
        self.video_seconds += result.duration
        self.failed += result.status == "failed"
        self.bar.set_postfix_str(self._postfix(), refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()


def format_seconds(seconds: float) -> str:
    """``75`` -> ``1:15``, ``3725`` -> ``1:02:05``."""
    s = int(round(seconds))
    h, m, sec = s // 3600, s % 3600 // 60, s % 60
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def run_extraction(
    extractor: Extractor,
    videos: Sequence[Path],
    queries: str | Path | None = None,
    progress: bool = True,
) -> ExtractionReport:
    """Extract ``queries`` (if given) then every video, one after the other, on this machine.

    Videos are ignored when only text streams are selected.

    A video that fails is recorded in the report and the run goes on. The report (whose
    ``wall_seconds`` time the videos only) is also written to ``<out_dir>/extract_report.json``.
    """
    extractor.refuse_stale_overwrite(videos, queries)  # before any work
    report = ExtractionReport()
    if queries is not None:
        report.queries_written, report.queries_skipped = extractor.extract_queries(queries)
        report.queries_changed = extractor.queries_changed
        report.queries_unrecorded = extractor.queries_unrecorded
    if not extractor.video_streams:  # only text streams selected
        videos = []
    start = time.perf_counter()
    bar = Progress(len(videos), progress)
    try:
        for path in videos:
            result = extractor.extract_video(path, progress=bar.clips)
            report.videos.append(result)
            bar.update(result)
    finally:
        bar.close()
    report.wall_seconds = time.perf_counter() - start
    write_json(extractor.out_dir / REPORT_NAME, report.to_json())
    return report
