"""Cutting a moment out of a video as its own file, with PyAV.

By default the cut is frame-accurate: the video is decoded from the keyframe before the moment
and the frames shown during ``[start, end)`` are re-encoded (H.264, ``veryfast``), so the clip
covers the moment and at most one frame more at each end; audio packets are copied, shifted to
stay in sync. ``reencode=False`` is a remux (stream copy): packets are copied without
re-encoding, which is fast and lossless but can only start on a keyframe, so the clip starts at
the last keyframe at or before ``start``, possibly seconds early. :class:`Cut` reports the span
actually written either way, and :func:`cut_clip_into` names the file after it.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from momentkit.utils.io import default_file_mode
from momentkit.utils.paths import same_file
from momentkit.video.decode import (
    VideoError,
    declared_duration,
    ffmpeg_message,
    open_video,
    stream_start,
)


@dataclass(frozen=True)
class Cut:
    """A clip written by :func:`cut_clip`.

    Attributes:
        path: the new file.
        start, end: the span of the source video (seconds) the clip covers.
    """

    path: Path
    start: float
    end: float
    instead_of: Path | None = None


#: the ``comment`` tag of every clip momentkit cuts: ``momentkit clip <source id>``
CLIP_TAG = "momentkit clip"


def source_id(src: str | Path) -> str:
    """A short id of a source video (its resolved path, hashed: clips do not reveal it)."""
    import hashlib

    return hashlib.sha256(str(Path(src).resolve()).encode("utf-8", "surrogateescape")).hexdigest()[
        :16
    ]


def clip_source(path: Path) -> str | None:
    """The source id a clip momentkit cut records (``None``: not such a clip, or unreadable)."""
    import av

    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            tags = {str(k).lower(): str(v) for k, v in container.metadata.items()}
    except Exception:  # noqa: BLE001 - anything unreadable is not one of our clips
        return None
    comment = tags.get("comment", "")
    if not comment.startswith(CLIP_TAG + " "):
        return None
    return comment[len(CLIP_TAG) + 1 :].strip() or None


def free_name(
    directory: Path, filename: str, src: Path, keep: Sequence[str | Path] = ()
) -> tuple[Path, Path | None]:
    """Where the clip ``filename`` of ``src`` goes: ``(path, existing file left alone)``.

    A missing file is written; an existing one is replaced only when it is a clip momentkit cut
    from the same source before (a re-run of the same search) and is neither ``src`` nor one of
    ``keep`` (the command's inputs). Any other existing file is kept and the clip gets the
    first free name ``<stem>-2<ext>``, ``<stem>-3<ext>``, ...
    """
    wanted = directory / filename
    protected = [src, *map(Path, keep)]
    stem, suffix = Path(filename).stem, Path(filename).suffix
    candidate, n = wanted, 1
    while True:
        if not os.path.lexists(candidate):
            break
        if (
            candidate.is_file()
            and not candidate.is_symlink()
            and not any(same_file(candidate, p) for p in protected if p.exists())
            and clip_source(candidate) == source_id(src)
        ):
            break
        n += 1
        candidate = directory / f"{stem}-{n}{suffix}"
    return candidate, (None if candidate == wanted else wanted)


def cut_clip(
    src: str | Path,
    start: float,
    end: float,
    dst: str | Path,
    *,
    reencode: bool = True,
    codec: str = "libx264",
    preset: str | None = "veryfast",
) -> Cut:
    """Write seconds ``[start, end)`` of ``src`` to ``dst`` (format from ``dst``'s extension).

    Args:
        src: the source video.
        start, end: seconds from the start of the video; an ``end`` past the video's end
            stops there.
        dst: the output file, written atomically (a crash leaves no partial file).
        reencode: frame-accurate (default): re-encode the frames shown in ``[start, end)``, so
            the clip starts within one frame of ``start``; ``False``: copy packets, starting
            at the keyframe at or before ``start`` (fast, lossless, may start seconds early).
        codec: the video encoder used when re-encoding.
        preset: the encoder's speed preset (``libx264``/``libx265`` only; ``None``: the
            encoder's default).

    Returns:
        The written :class:`Cut` with the span it really covers: a re-encoded clip starts with
        the frame on screen at ``start`` and ends with the frame on screen just before ``end``
        (so it covers ``[start, end)`` and at most one frame more at each end); a stream copy
        starts on a keyframe and may end a few frames after ``end`` (B-frame reordering).

    Raises:
        ValueError: ``start``/``end`` do not give a non-empty span inside the video.
        VideoError: the source cannot be read, or the output cannot be written.
    """
    dst = Path(dst)
    return _cut(src, start, end, dst.parent, lambda s, e: dst.name, reencode, codec, preset)


def cut_clip_into(
    src: str | Path,
    start: float,
    end: float,
    directory: str | Path,
    name: Callable[[float, float], str],
    *,
    reencode: bool = True,
    codec: str = "libx264",
    preset: str | None = "veryfast",
    keep: Sequence[str | Path] = (),
) -> Cut:
    """:func:`cut_clip` into ``directory``, the file named by ``name(span_start, span_end)``.

    The name is chosen once the clip is written, from the span it really covers, so a stream
    copy that starts on an earlier keyframe says so in its name. It must be a plain file name
    (no folder, not hidden): the file cannot land outside ``directory``.

    An existing file of that name is never replaced, except a clip momentkit cut from the same
    source before that is not ``src`` nor one of ``keep`` (see :func:`free_name`): the clip
    then gets a free name and :attr:`Cut.instead_of` names the file kept.

    Raises:
        ValueError: a bad span, or ``name`` returned something that is not a plain file name.
        VideoError: as :func:`cut_clip`.
    """
    return _cut(
        src, start, end, Path(directory), name, reencode, codec, preset, check=True, keep=keep
    )


def _cut(
    src: str | Path,
    start: float,
    end: float,
    directory: Path,
    name: Callable[[float, float], str],
    reencode: bool,
    codec: str,
    preset: str | None,
    check: bool = False,
    keep: Sequence[str | Path] | None = None,
) -> Cut:
    import av

    src = Path(src)
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
        raise ValueError(f"need 0 <= start < end, got start={start}, end={end}")
    requested = name(start, end)  # the name of the requested span, until the real one is known
    if check:
        _check_name(requested, directory)
    inp, video = open_video(src)
    try:
        duration = declared_duration(video, src)
    except VideoError:
        inp.close()
        raise
    if duration is not None and start >= duration:
        inp.close()
        raise ValueError(f"{src}: start {start} s is past the end of the video ({duration:.2f} s)")
    intended = directory / requested
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=intended.suffix, dir=directory)
    lock = _hold_lock(fd)  # until the clip is renamed into place: the temporary file is live
    try:
        os.chmod(tmp, default_file_mode())
        origin = stream_start(video) or 0.0
        out = av.open(tmp, "w", format=_format_for(Path(tmp)))
        out.metadata["comment"] = f"{CLIP_TAG} {source_id(src)}"
        try:
            if reencode:
                span = _reencode(inp, video, out, origin + start, origin + end, codec, preset, src)
            else:
                span = _remux(inp, video, out, origin + start, origin + end, src)
        finally:
            out.close()
        first, last = span[0] - origin, span[1] - origin
        filename = name(first, last)
        if check:
            _check_name(filename, directory)
        dst, instead_of = directory / filename, None
        if keep is not None:  # never replace an input or a file momentkit did not cut from src
            dst, instead_of = free_name(directory, filename, src, keep)
        os.replace(tmp, dst)
    except av.FFmpegError as e:
        raise VideoError(intended, f"cannot write the clip ({ffmpeg_message(e)})") from None
    finally:
        inp.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if lock is not None:
            os.close(lock)  # releases the lock
    return Cut(dst, first, last, instead_of)


#: the prefix of the temporary file each clip is written to before it is renamed into place
TEMP_PREFIX = ".cut."
#: seconds a temporary clip file must be unmodified, besides unlocked, to count as left over
#: by a dead process (covers the instant between its creation and its lock)
STALE_TEMP_SECONDS = 10.0
#: the same where no lock can tell (no ``flock``, e.g. Windows, or a file system without it)
STALE_TEMP_SECONDS_UNLOCKABLE = 3600.0
#: ``.cut.`` + the 8 random characters of :func:`tempfile.mkstemp` + an extension
_TEMP_NAME = re.compile(r"\.cut\.[a-z0-9_]{8}(\.[A-Za-z0-9]{1,5})")


def _hold_lock(fd: int) -> int | None:
    """Lock the new temporary file open as ``fd`` (exclusive ``flock``) and keep it open: the
    lock tells :func:`remove_stale_temporaries` that a live process writes it, and the system
    drops it when the process dies. Returns the descriptor to close once the clip is in place,
    or ``None`` (closed already) where ``flock`` does not exist (Windows: an open file could
    not be renamed there)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        os.close(fd)
        return None
    with contextlib.suppress(OSError):  # a file system without locks: the age rule only
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _unlocked(fd: int) -> bool | None:
    """Whether an exclusive ``flock`` on ``fd`` could be taken (it is then held until ``fd`` is
    closed): True when no live process writes the file, False when one does, None when locks
    cannot tell (no ``flock``, or the file system refuses it)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def remove_stale_temporaries(
    directory: str | Path,
    older_than: float = STALE_TEMP_SECONDS,
    older_than_unlockable: float = STALE_TEMP_SECONDS_UNLOCKABLE,
) -> list[Path]:
    """Remove the temporary clip files that a killed run left in ``directory``.

    Each clip is written to a hidden temporary file ``.cut.XXXXXXXX<ext>`` (``XXXXXXXX``: the 8
    random characters of :func:`tempfile.mkstemp`, ``<ext>`` a video extension) and renamed to
    its name once complete; a process killed before the rename (``kill -9``, a crash, power
    loss) leaves that file behind. A file is removed only when all of these hold:

    - its name has exactly that pattern (nothing else in the folder is ever touched, not even
      other hidden files, and not the finished clips);
    - it is a regular file (not a link, a folder or a device);
    - no process holds its lock: the writer takes an exclusive ``flock`` on it from its
      creation until the rename, and the system releases it when the process dies, so a file
      still being written by a live run (in this or any other process) is kept however old;
    - it was last modified more than ``older_than`` seconds ago (default 10 s: the instant
      between the file's creation and its lock). Where locks cannot tell (no ``flock``, as on
      Windows, or a file system that refuses it) only a file unmodified for
      ``older_than_unlockable`` seconds (default 1 hour) is removed; on Windows a file still
      open by its writer cannot be deleted anyway.

    Files that cannot be inspected or removed are left alone (never an error).

    Returns:
        The files removed.
    """
    import time

    from momentkit.library.files import VIDEO_EXTENSIONS

    directory = Path(directory)
    try:
        entries = list(os.scandir(directory))
    except OSError:  # no folder yet (nothing to clean) or unreadable
        return []
    removed = []
    now = time.time()
    for entry in entries:
        match = _TEMP_NAME.fullmatch(entry.name)
        if match is None or match.group(1).lower() not in VIDEO_EXTENSIONS:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            age = now - entry.stat(follow_symlinks=False).st_mtime
            if age <= older_than:
                continue
            flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
            fd = os.open(entry.path, flags)
        except OSError:
            continue
        try:
            unlocked = _unlocked(fd)  # when True, held while the file is removed
            if unlocked or (unlocked is None and age > older_than_unlockable):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _check_name(filename: str, directory: Path) -> None:
    """``filename`` must be a plain, visible file name that stays inside ``directory``."""
    path = (directory / filename).resolve()
    if (
        not filename
        or filename != Path(filename).name
        or filename.startswith(".")
        or path.parent != directory.resolve()
    ):
        raise ValueError(f"clip file name {filename!r} is not a plain file name in {directory}")


def _format_for(dst: Path) -> str | None:
    """The muxer for ``dst``'s extension (None lets FFmpeg guess)."""
    return {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}.get(dst.suffix.lower())


def _seconds(ts: int, time_base: Fraction) -> float:
    return float(ts * time_base)


def _audio_streams(inp: Any, out: Any) -> dict[int, Any]:
    """Input audio stream index -> output stream copying it."""
    return {s.index: out.add_stream_from_template(s) for s in inp.streams.audio}


def _copy_packet(packet: Any, stream: Any, shift: float, out: Any) -> None:
    """Mux ``packet`` into ``stream`` with its timestamps moved ``shift`` seconds earlier."""
    offset = round(shift / packet.time_base)
    packet.pts -= offset
    if packet.dts is not None:
        packet.dts -= offset
    packet.stream = stream
    out.mux(packet)


def _remux(
    inp: Any, video: Any, out: Any, start: float, end: float, src: Path
) -> tuple[float, float]:
    """Stream-copy packets from the keyframe at or before ``start`` until ``end``."""
    v_out = out.add_stream_from_template(video)
    a_out = _audio_streams(inp, out)
    inp.seek(round(start / video.time_base), stream=video, backward=True, any_frame=False)
    first = last = None  # seconds of the first keyframe copied, end of the last video packet
    for packet in inp.demux(video, *inp.streams.audio):
        if packet.dts is None or packet.pts is None:  # flush packets
            continue
        t = _seconds(packet.pts, packet.time_base)
        if packet.stream.index == video.index:
            if first is None:
                if not packet.is_keyframe:
                    continue
                first = t
            if _seconds(packet.dts, packet.time_base) >= end:
                break
            last = max(last or t, t + _seconds(packet.duration or 0, packet.time_base))
            _copy_packet(packet, v_out, first, out)
        elif first is not None and first <= t < end:
            _copy_packet(packet, a_out[packet.stream.index], first, out)
    if first is None or last is None:
        raise VideoError(src, f"no video keyframe between {start:.2f} s and {end:.2f} s")
    return first, last


def _reencode(
    inp: Any,
    video: Any,
    out: Any,
    start: float,
    end: float,
    codec: str,
    preset: str | None,
    src: Path,
) -> tuple[float, float]:
    """Decode from the keyframe before ``start`` and encode the frames on screen during
    ``[start, end)``: from the one shown at ``start`` to the last one starting before ``end``.
    Audio packets from that first frame on are copied, shifted like the video."""
    import av

    rate = video.average_rate or video.guessed_rate or Fraction(30)
    v_out = out.add_stream(codec, rate=rate)
    if preset and codec in ("libx264", "libx265"):
        v_out.options = {"preset": preset}
    ctx = video.codec_context
    # 4:2:0 needs even sizes: an odd width or height is scaled to the even size below it.
    v_out.width, v_out.height = ctx.width - ctx.width % 2, ctx.height - ctx.height % 2
    v_out.pix_fmt = "yuv420p"
    v_out.time_base = video.time_base
    v_out.codec_context.time_base = video.time_base
    a_out = _audio_streams(inp, out)
    inp.seek(round(start / video.time_base), stream=video, backward=True, any_frame=False)
    first = last = None  # seconds: first frame encoded, end of the last one
    shift = 0  # pts of the first frame encoded
    pending: list[Any] = []  # audio packets seen before the first frame was known
    rotation = None
    done = False

    def copy_audio(packet: Any) -> None:
        t = _seconds(packet.pts, packet.time_base)
        if first is not None and first - 1e-6 <= t < end:
            _copy_packet(packet, a_out[packet.stream.index], first, out)

    for packet in inp.demux(video, *inp.streams.audio):
        if packet.stream.index != video.index:
            if packet.pts is None:
                continue
            if first is None:
                if _seconds(packet.pts, packet.time_base) < end:
                    pending.append(packet)
            else:
                copy_audio(packet)
            continue
        try:
            frames = packet.decode()
        except av.FFmpegError as e:
            raise VideoError(src, f"decoding failed ({ffmpeg_message(e)})") from None
        for frame in frames:
            if frame.pts is None:
                continue
            if rotation is None:
                rotation = getattr(frame, "rotation", 0) or 0
                if rotation:
                    v_out.set_display_rotation(rotation)
            t = float(frame.time)
            dur = _seconds(frame.duration, frame.time_base) if frame.duration else 1 / float(rate)
            if t >= end - 1e-6:
                done = True
                break
            if t + dur <= start + 1e-6:  # off screen before the moment starts
                continue
            if first is None:
                first, shift = t, frame.pts
                for held in pending:
                    copy_audio(held)
                pending.clear()
            last = t + dur
            image = frame.reformat(width=v_out.width, height=v_out.height, format="yuv420p")
            image.pts = frame.pts - shift
            image.time_base = video.time_base
            for out_packet in v_out.encode(image):
                out.mux(out_packet)
        if done:
            break
    if first is None or last is None:
        raise VideoError(src, f"no video frame between {start:.2f} s and {end:.2f} s")
    for out_packet in v_out.encode(None):
        out.mux(out_packet)
    return first, last
