"""Options and printing shared by ``momentkit search`` and ``momentkit query``: exports,
clips, plots, the relevance threshold, progress bars and timings."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from momentkit.cli.common import unit_interval
from momentkit.utils.errors import MomentkitError
from momentkit.utils.paths import same_file


def add_output_arguments(parser: argparse.ArgumentParser, plot_help: str) -> None:
    """``--min-score``, ``--export`` (repeatable), ``--plot``, ``--export-clips``,
    ``--fast-cut``."""
    from momentkit.export.registry import formats_help

    parser.add_argument(
        "--min-score",
        type=unit_interval,
        metavar="X",
        help="keep only moments whose calibrated relevance (0 to 1) is at least X; a query "
        "with none is reported as having no confident match",
    )
    parser.add_argument(
        "--export",
        action="append",
        default=[],
        metavar="FORMAT:PATH",
        help="also write the results in FORMAT to PATH (repeatable). Formats: "
        f"{formats_help()}. srt, vtt, ffmetadata and youtube write one file per video: with "
        'several videos put {video} in the file name ("srt:subs/{video}.srt")',
    )
    parser.add_argument("--plot", metavar="OUT.png", help=plot_help)
    parser.add_argument(
        "--export-clips",
        metavar="DIR",
        help="cut every listed moment into a file in DIR (frame-accurate, re-encoded to .mp4). "
        "An existing file is never replaced, except a clip momentkit cut from the same video "
        "before (running the same search again); a clip whose name is taken by any other file "
        "(a video being searched included) is written as NAME-2.mp4 and the output says so",
    )
    parser.add_argument(
        "--fast-cut",
        action="store_true",
        help="with --export-clips: copy the video stream instead of re-encoding (fast, lossless, "
        "but each clip starts at the keyframe before its moment, possibly seconds early; the "
        "file name and the output give the span it really covers)",
    )
    # frame-accurate cuts were opt-in before 0.2; the flag is kept so scripts keep working
    parser.add_argument("--reencode", action="store_true", help=argparse.SUPPRESS)


def check_min_score(value: float | None) -> None:
    """``--min-score`` must be a relevance in [0, 1]."""
    if value is not None and not 0.0 <= value <= 1.0:
        raise MomentkitError(f"--min-score must be a relevance between 0 and 1, got {value}")


def threshold_kwargs(func: Callable[..., Any], min_score: float | None) -> dict[str, Any]:
    """``{"min_relevance": min_score}`` when given (``{}`` otherwise).

    Raises:
        MomentkitError: ``--min-score`` was given but ``func`` takes no ``min_relevance``.
    """
    if min_score is None:
        return {}
    if "min_relevance" not in inspect.signature(func).parameters:
        raise MomentkitError(
            "--min-score needs calibrated relevance, which this predictor does not provide"
        )
    return {"min_relevance": min_score}


def relevance_text(value: float | None) -> str:
    """A relevance for a table: three decimals, or ``-`` when not calibrated."""
    return "-" if value is None else f"{value:.3f}"


def below_text(best: float, threshold: float | None) -> str:
    """``best`` to three decimals, with more digits when rounding would make it reach
    ``threshold`` (so ``0.9989 < 0.999`` is not shown as ``0.999 < 0.999``)."""
    text = f"{best:.3f}"
    if threshold is not None and float(text) >= threshold:
        text = f"{math.floor(best * 1000) / 1000:.3f}"
    if threshold is not None and float(text) >= threshold:
        text = f"{best:.6g}"
    return text


def no_match_line(query: str, where: str, best: float | None, threshold: float | None) -> str:
    """``no confident match for 'q' in VIDEO (best relevance 0.123 < 0.5)``."""
    if best is None:
        return f"no confident match for {query!r} in {where} (no calibrated relevance)"
    limit = "" if threshold is None else f" < {threshold:g}"
    return (
        f"no confident match for {query!r} in {where} "
        f"(best relevance {below_text(best, threshold)}{limit})"
    )


def seconds_text(seconds: float) -> str:
    """``12 ms`` under a second, else ``1.23 s``."""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``; ``None`` elsewhere)."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def clip_progress(
    console: Any, description: str, unit: str
) -> Iterator[Callable[[int, int], None]]:
    """A transient progress bar (``32/92 clips 0:00:06 elapsed, 0:00:09 left``) on ``console``;
    yields the ``progress(done, total)`` callback that moves it."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TextColumn("elapsed,"),
        TimeRemainingColumn(),
        TextColumn("left"),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


def refuse_duplicate_outputs(files: Sequence[tuple[str, str | Path]]) -> None:
    """Refuse, before any work, two outputs (``--export``, ``--plot``) naming one file: the
    second would silently replace the first.

    Args:
        files: ``(option, path)`` of every file the command will write.

    Raises:
        MomentkitError: naming both options and the file, and how to fix it.
    """
    seen: list[tuple[str, Path]] = []
    for option, path in files:
        path = Path(path)
        for first_option, first in seen:
            if same_file(first, path):
                raise MomentkitError(
                    f"{first_option} and {option} both write {path}: the second would replace "
                    "the first. Give each output its own file"
                )
        seen.append((option, path))


def report_kept_files(console: Any, answers: Sequence[Any]) -> None:
    """One line per exported clip written under another name because its own name was taken
    by a file momentkit does not replace."""
    for answer in answers:
        for moment in answer.moments:
            clip = moment.clip
            if clip is not None and getattr(clip, "instead_of", None) is not None:
                console.print(
                    f"{clip.instead_of} exists and is not a clip momentkit cut from "
                    f"{Path(answer.video).name}: kept it, wrote {clip.path.name} instead",
                    markup=False,
                    soft_wrap=True,
                    highlight=False,
                    style="yellow",
                )
