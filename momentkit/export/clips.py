"""Exported clips: every listed moment cut out of its video into a folder.

Files are named ``<video>_q<qid>_<query>_<rank>_<start>-<end><ext>``, every part built from
data made file-safe (:func:`~momentkit.export.paths.slugify`) and the result checked to stay in
the folder. An existing file is never replaced unless it is a clip momentkit cut from the same
video before (a re-run of the same search): a clip whose name is taken by any other file (a
video being searched included) is written as ``<name>-2<ext>`` instead. ``<start>-<end>``
is the span the file really covers (two decimals): by default the cut is frame-accurate
(re-encoded to H.264 ``.mp4``), so it is the moment to within a frame; with ``fast=True`` it
is a stream copy starting at the keyframe at or before the moment (in the video's own
container), and the name says how early it starts. Each clip is written to a hidden temporary
file and renamed into place; those a killed run left behind are removed by the next export to
the folder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from momentkit.export.model import Answer, ExportMoment
from momentkit.export.paths import slugify, unique_slugs


def clip_suffix(video: str, fast: bool) -> str:
    """``.mp4`` for a re-encoded clip; a stream copy keeps a known video extension of the
    source (else ``.mkv``, which holds any codec)."""
    from momentkit.library.files import VIDEO_EXTENSIONS

    if not fast:
        return ".mp4"
    suffix = Path(video).suffix.lower()
    return suffix if suffix in VIDEO_EXTENSIONS else ".mkv"


def clip_name(
    video_slug: str, answer: Answer, moment: ExportMoment, suffix: str
) -> Callable[[float, float], str]:
    """The name of a moment's clip as a function of the span it really covers."""
    stem = (
        f"{video_slug}_q{slugify(str(answer.qid), 24, 'x')}_{slugify(answer.query)}_{moment.rank}"
    )
    return lambda start, end: f"{stem}_{start:.2f}-{end:.2f}{suffix}"


def export_clips(
    answers: Sequence[Answer],
    out_dir: str | Path,
    *,
    per_query: int | None = None,
    fast: bool = False,
    progress: Callable[[int, int], None] | None = None,
    keep: Sequence[str | Path] = (),
) -> int:
    """Cut the moments of ``answers`` into ``out_dir``; sets each moment's ``clip``.

    Args:
        answers: the answers (their ``video`` files are read).
        out_dir: the folder (created).
        per_query: moments cut per answer, best first (``None``: all).
        fast: stream copy from the keyframe at or before each moment instead of a
            frame-accurate re-encode.
        progress: called as ``progress(done, total)`` after each clip.
        keep: files never replaced (the command's inputs; each answer's video always is).
            An existing file of a clip's name is replaced only when it is a clip momentkit
            cut from the same video before; otherwise the clip gets a free name
            (``<name>-2.mp4``) and its ``clip.instead_of`` names the file kept.

    Returns:
        The number of clips written.

    Temporary files that an earlier, killed run left in ``out_dir`` (hidden
    ``.cut.XXXXXXXX<ext>`` files, see :func:`~momentkit.video.cut.remove_stale_temporaries`:
    not locked by a live writer and unmodified for 10 s) are removed first.
    """
    from momentkit.video.cut import cut_clip_into, remove_stale_temporaries

    out_dir = Path(out_dir)
    remove_stale_temporaries(out_dir)
    slugs = unique_slugs([a.vid for a in answers])
    todo = [(a, m) for a in answers for m in a.moments[:per_query]]
    for done, (answer, moment) in enumerate(todo, start=1):
        suffix = clip_suffix(answer.video, fast)
        moment.clip = cut_clip_into(
            answer.video,
            moment.start,
            moment.end,
            out_dir,
            clip_name(slugs[answer.vid], answer, moment, suffix),
            reencode=not fast,
            keep=keep,
        )
        if progress is not None:
            progress(done, len(todo))
    return len(todo)
