"""Extracting features of videos and queries into the standard ``.npz`` layout.

::

    FEAT_DIR/<video stream>/<vid>.npz      features          (T, D) float32
    FEAT_DIR/<text stream>/qid<qid>.npz    last_hidden_state (N, D), pooler_output (D,)

the layout Moment-DETR, QD-DETR, Lighthouse and :class:`momentkit.features.npz.NpzFeatureStore`
read. ``<vid>`` is the video's file name without extension. Every file is written atomically,
and a video whose files all exist is skipped, so an interrupted run resumes where it stopped.

Each file also holds a small ``momentkit_source`` array (a JSON string, see
:func:`source_of_video` and :func:`source_of_query`) recording what it was made from: the
video's resolved path, size and modification time, or the query text, with the encoder and clip
length. A file whose record differs from what this run would make (another video of the same
name, an edited video, a changed query text) is re-extracted; a file without the record
(written before momentkit recorded it) is kept, and counted in the report. Readers of the
standard layout read ``features`` / ``last_hidden_state`` / ``pooler_output`` by name and are
not affected.

Each video is decoded once for all encoders, on a background thread that runs ahead of the
encoders.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from momentkit.encoders.base import Encoder, EncoderError, PipelineEncoder, Progress
from momentkit.extraction.record import STREAM_RECORD, make_record
from momentkit.features.base import text_key
from momentkit.utils.errors import FormatError, MomentkitError
from momentkit.utils.io import atomic_open, iter_jsonl, write_json
from momentkit.utils.paths import safe_child, unsafe_name_reason
from momentkit.utils.prefetch import prefetch
from momentkit.video.decode import ClipReader


@dataclass(frozen=True)
class ExtractionConfig:
    """How videos are cut and encoded.

    Attributes:
        clip_len: seconds per clip (2 for QVHighlights-style features, 1 for Charades-STA).
        streams: the streams to write (``None``: every stream of the encoders).
        overwrite: re-extract videos and queries whose files already exist.
        clips_per_batch: clips handed to an encoder at once.
        prefetch: decoded clips buffered ahead of the encoders.
        decode_threads: FFmpeg decoder threads per video (0: FFmpeg chooses).
        max_clips: refuse (as failed, before decoding) a video of more clips than this
            (``None``: no limit); a clip length shorter than a video's frame interval is
            refused the same way.
    """

    clip_len: float = 2.0
    streams: tuple[str, ...] | None = None
    overwrite: bool = False
    clips_per_batch: int = 16
    prefetch: int = 32
    decode_threads: int = 1
    max_clips: int | None = None


@dataclass
class VideoResult:
    """The outcome for one video.

    Attributes:
        path: the video file.
        status: ``"done"``, ``"skipped"`` (its files already existed) or ``"failed"``.
        duration: seconds of video (0 unless done).
        num_clips: rows written per stream (0 unless done).
        seconds: wall-clock seconds spent on it.
        error: why it failed (``""`` otherwise).
        note: ``"changed"`` (done: its old files were made from another video or settings, see
            :meth:`Extractor.video_state`), ``"unrecorded"`` (skipped: its files hold no
            source record) or ``""``.
    """

    path: Path
    status: str
    duration: float = 0.0
    num_clips: int = 0
    seconds: float = 0.0
    error: str = ""
    note: str = ""

    @property
    def vid(self) -> str:
        """The video id: the file name without extension."""
        return video_id(self.path)


@dataclass
class ExtractionReport:
    """What a run did: per-video results, query counts and the wall-clock time of the videos."""

    videos: list[VideoResult] = field(default_factory=list)
    queries_written: int = 0
    queries_skipped: int = 0
    queries_changed: int = 0
    queries_unrecorded: int = 0
    wall_seconds: float = 0.0

    def by_status(self, status: str) -> list[VideoResult]:
        """The results with ``status``."""
        return [r for r in self.videos if r.status == status]

    def by_note(self, note: str) -> list[VideoResult]:
        """The results with ``note`` (``"changed"``, ``"unrecorded"``)."""
        return [r for r in self.videos if r.note == note]

    @property
    def video_seconds(self) -> float:
        """Seconds of video extracted in this run (skipped videos excluded)."""
        return sum(r.duration for r in self.videos if r.status == "done")

    @property
    def speed(self) -> float:
        """Throughput in multiples of real time: seconds of video per wall-clock second."""
        return self.video_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def exit_status(self, strict: bool = False) -> int:
        """1 when every video failed (none extracted now or before), or (``strict``) when any
        failed; else 0."""
        failed = self.by_status("failed")
        return int(bool(failed) and (strict or len(failed) == len(self.videos)))

    def summary(self) -> str:
        """A few lines for the terminal: counts, throughput, then every failure and its cause."""
        done, skipped, failed = (self.by_status(s) for s in ("done", "skipped", "failed"))
        lines = [
            f"videos: {len(done)} extracted, {len(skipped)} skipped (already done), "
            f"{len(failed)} failed; queries: {self.queries_written} extracted, "
            f"{self.queries_skipped} skipped",
            f"{self.video_seconds:.1f} s of video in {self.wall_seconds:.1f} s "
            f"({self.speed:.1f}x real time)",
        ]
        changed = self.by_note("changed")
        redone = [f"{len(changed)} video(s)"] if changed else []
        redone += [f"{self.queries_changed} query file(s)"] if self.queries_changed else []
        if redone:
            names = ", ".join(str(r.path) for r in changed[:3])
            lines.append(
                f"re-extracted {' and '.join(redone)} whose existing files were made from "
                "another video file, query text, encoder or clip length"
                + (f": {names}" if names else "")
                + (" ..." if len(changed) > 3 else "")
            )
        unrecorded = len(self.by_note("unrecorded")) + self.queries_unrecorded
        if unrecorded:
            lines.append(
                f"kept {unrecorded} existing file set(s) that do not record what they were made "
                "from (written by an older momentkit), as before; --overwrite re-extracts them"
            )
        if failed:
            lines.append(f"failed ({len(failed)}):")
            # errors from momentkit name the file already
            lines.extend(
                f"  {r.error}" if str(r.path) in r.error else f"  {r.path}: {r.error}"
                for r in failed
            )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable record of the run."""
        return {
            "done": len(self.by_status("done")),
            "skipped": len(self.by_status("skipped")),
            "failed": [{"path": str(r.path), "error": r.error} for r in self.by_status("failed")],
            "queries_written": self.queries_written,
            "queries_skipped": self.queries_skipped,
            "changed": [str(r.path) for r in self.by_note("changed")],
            "unrecorded": len(self.by_note("unrecorded")),
            "queries_changed": self.queries_changed,
            "queries_unrecorded": self.queries_unrecorded,
            "video_seconds": round(self.video_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "speed_x_real_time": round(self.speed, 3),
        }


def stream_record_of(encoder: Encoder, clip_len: float) -> dict[str, Any]:
    """The pipeline record of ``encoder``'s streams (see :mod:`momentkit.extraction.record`)."""
    if isinstance(encoder, PipelineEncoder):
        return dict(encoder.pipeline_record())
    return make_record(
        encoder.name,
        mode="default",
        clip_len=clip_len,
        video_streams=encoder.video_streams,
        text_stream=encoder.text_stream,
        text_dim=encoder.text_dim if encoder.text_stream else None,
    )


def video_id(path: str | Path) -> str:
    """The id of a video in feature files: its file name without the extension."""
    return Path(path).stem


def feature_file(out_dir: str | Path, stream: str, key: str) -> Path:
    """``out_dir/stream/key.npz``; a key that would resolve outside ``out_dir/stream`` (an
    absolute path, ``..``, a separator) is refused (:func:`momentkit.utils.paths.safe_child`)."""
    return safe_child(
        Path(out_dir) / stream, f"{key}.npz", "qid" if key.startswith("qid") else "vid"
    )


#: the array of a feature file recording what it was made from (a JSON string)
SOURCE_KEY = "momentkit_source"


def save_npz(path: Path, source: dict[str, Any] | None = None, **arrays: np.ndarray) -> None:
    """Write ``arrays`` (as float32) to ``path`` atomically, with ``source`` (what they were
    made from) as the ``momentkit_source`` array when given."""
    data = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
    if source is not None:
        data[SOURCE_KEY] = np.array(json.dumps(source, sort_keys=True))
    with atomic_open(path, "wb") as f:
        np.savez(f, **data)


def read_source(path: Path) -> dict[str, Any] | None:
    """The source record of a feature file; ``None`` when it has none (an older file).

    Raises:
        ValueError: the file or its record cannot be read (a damaged file: re-extract it).
    """
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as npz:
            if SOURCE_KEY not in npz.files:
                return None
            record = json.loads(str(npz[SOURCE_KEY][()]))
    except (OSError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: {e}") from e
    if not isinstance(record, dict):
        raise ValueError(f"{path}: the source record is not an object")
    return record


def source_of_video(path: Path, encoder: Encoder, clip_len: float) -> dict[str, Any]:
    """What a video's feature file is made from: the file (resolved path, size, modification
    time), the encoder and the clip length."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return {
        "video": str(resolved),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "encoder": encoder.name,
        "clip_len": clip_len,
    }


def source_of_query(query: str, encoder: Encoder) -> dict[str, Any]:
    """What a query's feature file is made from: its text and the encoder."""
    return {"query": query, "encoder": encoder.name}


def file_state(path: Path, source: dict[str, Any]) -> str:
    """``"missing"``, ``"current"`` (made from ``source``), ``"changed"`` (made from something
    else, or unreadable) or ``"unrecorded"`` (no record: an older file)."""
    if not path.is_file():
        return "missing"
    try:
        old = read_source(path)
    except ValueError:
        return "changed"
    if old is None:
        return "unrecorded"
    return "current" if old == json.loads(json.dumps(source, sort_keys=True)) else "changed"


_STATE_ORDER = ("missing", "changed", "unrecorded", "current")


def worst_state(states: Sequence[str]) -> str:
    """The state of a set of files: missing before changed before unrecorded before current."""
    return min(states, key=_STATE_ORDER.index, default="current")


def describe_error(error: BaseException) -> str:
    """One line saying why a video failed: the message of a momentkit error, else type + message
    + the innermost frame (an unexpected error is a bug worth locating)."""
    if isinstance(error, MomentkitError):
        return str(error)
    where = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
    at = f" (at {Path(where[0].filename).name}:{where[0].lineno})" if where else ""
    return f"{type(error).__name__}: {error}{at}"


def read_queries(path: str | Path) -> list[tuple[int | str, str]]:
    """``(qid, query)`` of every row of a QVHighlights-style JSONL file.

    Raises:
        FormatError: naming the line of a row without a valid ``qid`` or ``query``, or of a
            repeated ``qid``.
    """
    rows: list[tuple[int | str, str]] = []
    seen: dict[int | str, int] = {}
    for line, obj in iter_jsonl(path):
        qid, query = obj.get("qid"), obj.get("query")
        if isinstance(qid, bool) or not isinstance(qid, int | str):
            raise FormatError(path, line, "qid", f"expected an integer or string, got {qid!r}")
        if not isinstance(query, str) or not query.strip():
            raise FormatError(path, line, "query", f"expected a non-empty string, got {query!r}")
        if qid in seen:
            raise FormatError(
                path, line, "qid", f"{qid!r} already used on line {seen[qid]}", "qids are unique"
            )
        reason = unsafe_name_reason(f"{text_key(qid)}.npz")
        if reason is not None:
            raise FormatError(
                path, line, "qid", f"{qid!r} cannot name a feature file: {reason}",
                "qids become file names (qid<qid>.npz); use letters, digits, '-' and '_'",
            )  # fmt: skip
        seen[qid] = line
        rows.append((qid, query))
    return rows


class Extractor:
    """Writes the selected streams of ``encoders`` for videos and queries into ``out_dir``.

    Args:
        encoders: the encoders; their stream names must be distinct.
        out_dir: the feature directory (``FEAT_DIR``).
        config: see :class:`ExtractionConfig`.

    Raises:
        EncoderError: two encoders share a stream name, or ``config.streams`` names a stream
            none of them produces.
    """

    def __init__(
        self, encoders: Sequence[Encoder], out_dir: str | Path, config: ExtractionConfig
    ) -> None:
        self.out_dir = Path(out_dir)
        self.config = config
        available: dict[str, Encoder] = {}
        for enc in encoders:
            names = list(enc.video_streams) + ([enc.text_stream] if enc.text_stream else [])
            for name in names:
                if name in available:
                    raise EncoderError(
                        f"encoders '{available[name].name}' and '{enc.name}' both write stream "
                        f"'{name}'; use one of them"
                    )
                available[name] = enc
        wanted = config.streams or tuple(available)
        unknown = [s for s in wanted if s not in available]
        if unknown:
            raise EncoderError(
                f"no encoder writes stream(s) {', '.join(unknown)}; the encoders "
                f"({', '.join(e.name for e in encoders)}) write: {', '.join(available)}. "
                "Add the encoder that writes it (e.g. --encoder motion for 'motion')"
            )
        self.video_streams = {s: available[s] for s in wanted if s in available[s].video_streams}
        self.text_streams = {s: available[s] for s in wanted if s == available[s].text_stream}
        self.video_encoders = [e for e in encoders if e in self.video_streams.values()]
        #: encoders that decode the video themselves (benchmark pipelines)
        self.pipeline_encoders = [e for e in self.video_encoders if isinstance(e, PipelineEncoder)]
        self.clip_encoders = [e for e in self.video_encoders if not isinstance(e, PipelineEncoder)]
        for enc in self.pipeline_encoders:
            own = float(getattr(enc, "clip_len", config.clip_len))
            if abs(own - config.clip_len) > 1e-9:
                raise EncoderError(
                    f"encoder '{enc.name}' makes {own:g} s clips but --clip-len is "
                    f"{config.clip_len:g}; add clip_len={config.clip_len:g} to its spec (or "
                    "change --clip-len)"
                )
        self.records = {s: stream_record_of(e, config.clip_len) for s, e in available.items()}
        self._check_records([*self.video_streams, *self.text_streams])
        self._records_written: set[str] = set()
        #: query files of the last :meth:`extract_queries` re-extracted because their text or
        #: encoder changed, and kept because they record no source
        self.queries_changed = 0
        self.queries_unrecorded = 0

    def _check_records(self, streams: Sequence[str]) -> None:
        """Refuse to add features of one pipeline to a folder holding another's."""
        from momentkit.extraction.record import RecordError, describe, read_record

        if self.config.overwrite:
            return
        for stream in streams:
            file = self.out_dir / stream / STREAM_RECORD
            if not file.is_file():
                continue
            old, new = read_record(file), self.records[stream]
            keys = ("pipeline", "mode", "clip_len")
            if any(old.get(k) != new.get(k) for k in keys):
                raise RecordError(
                    f"{self.out_dir / stream} holds features of {describe(old)}; this run makes "
                    f"{describe(new)}. Mixing them in one folder gives a model inconsistent "
                    "inputs: use another --out, or --overwrite with every video (and query "
                    "file) of the folder to replace them all"
                )

    def refuse_stale_overwrite(
        self, videos: Sequence[str | Path], queries: str | Path | None = None
    ) -> None:
        """With ``overwrite``, refuse before any work a run that changes a stream folder's
        pipeline, mode or clip length but leaves files of other videos (or queries) in it:
        the folder would hold features of two settings under one ``pipeline.json``.

        Raises:
            RecordError: naming the folder, the files left behind and how to fix it.
        """
        from momentkit.extraction.record import RecordError, describe, read_record

        if not self.config.overwrite:
            return
        vids = {video_id(v) for v in videos} if self.video_streams else set()
        keys = set()
        if queries is not None and self.text_streams:
            keys = {text_key(qid) for qid, _ in read_queries(queries)}
        for stream in [*self.video_streams, *self.text_streams]:
            folder = self.out_dir / stream
            file = folder / STREAM_RECORD
            if not file.is_file():
                continue
            old, new = read_record(file), self.records[stream]
            text = stream in self.text_streams
            # a query's features do not depend on the clip length
            compared = ("pipeline", "mode") if text else ("pipeline", "mode", "clip_len")
            if all(old.get(k) == new.get(k) for k in compared):
                continue
            kept = keys if text else vids
            stale = sorted(f.name for f in folder.glob("*.npz") if f.stem not in kept)
            if not stale:
                continue
            what = "queries" if text else "videos"
            shown = ", ".join(stale[:3]) + (f" and {len(stale) - 3} more" if len(stale) > 3 else "")
            raise RecordError(
                f"{folder} holds features of {describe(old)}; this run makes {describe(new)} "
                f"but only for the {what} given, so {len(stale)} file(s) of other {what} "
                f"({shown}) would stay in the old setting under the new pipeline.json. "
                f"--overwrite replaces a folder's features only with all of its {what}: give "
                f"them too (e.g. the whole video folder), use another --out, or delete {folder} "
                "first. Nothing was changed"
            )

    def _write_record(self, stream: str) -> None:
        if stream in self._records_written:
            return
        write_json(self.out_dir / stream / STREAM_RECORD, self.records[stream])
        self._records_written.add(stream)

    # -- videos ---------------------------------------------------------------------------------

    def video_state(self, path: str | Path) -> str:
        """The state of ``path``'s files over the selected video streams (see
        :func:`file_state`): ``"missing"``, ``"changed"``, ``"unrecorded"`` or ``"current"``."""
        path = Path(path)
        vid = video_id(path)
        try:
            sources = {
                s: source_of_video(path, e, self.config.clip_len)
                for s, e in self.video_streams.items()
            }
        except OSError:  # the video is gone: extracting it reports why
            return "missing"
        return worst_state(
            [file_state(feature_file(self.out_dir, s, vid), sources[s]) for s in sources]
        )

    def is_done(self, path: str | Path) -> bool:
        """Whether every selected video stream of ``path`` already has its file, made from this
        video file (same path, size and modification time) with these settings, or holding no
        record of what it was made from (an older file)."""
        return self.video_state(path) in ("current", "unrecorded")

    def extract_video(self, path: str | Path, progress: Progress | None = None) -> VideoResult:
        """Extract (or skip) one video; failures are returned in the result, never raised.

        ``progress(clips_done, clips_total)`` is called while a pipeline encoder runs."""
        path = Path(path)
        start = time.perf_counter()
        state = "missing" if self.config.overwrite else self.video_state(path)
        if state in ("current", "unrecorded"):
            return VideoResult(path, "skipped", note="unrecorded" if state == "unrecorded" else "")
        note = "changed" if state == "changed" else ""
        try:
            duration, num_clips = self._extract(path, progress)
        except Exception as e:  # one bad video must not stop a batch
            return VideoResult(
                path, "failed", seconds=time.perf_counter() - start, error=describe_error(e)
            )
        return VideoResult(
            path, "done", duration, num_clips, time.perf_counter() - start, note=note
        )

    def _extract(self, path: Path, progress: Progress | None = None) -> tuple[float, int]:
        from momentkit.inference.predictor import check_video_clips

        cfg = self.config
        # before decoding: a clip shorter than a frame, or a file declaring years of video
        check_video_clips(path, cfg.clip_len, cfg.max_clips)
        sources = {s: source_of_video(path, e, cfg.clip_len) for s, e in self.video_streams.items()}
        results: dict[str, np.ndarray] = {}
        duration, num_clips = 0.0, 0
        for enc in self.pipeline_encoders:  # each decodes the video the way its reference does
            encoded = enc.encode_video(path, threads=cfg.decode_threads, progress=progress)
            for stream, features in encoded.streams.items():
                if stream in self.video_streams:
                    expected = (encoded.num_clips, enc.video_streams[stream])
                    if features.shape != expected:  # an encoder bug, not a user error
                        raise RuntimeError(
                            f"stream '{stream}': got {features.shape}, expected {expected}"
                        )
                    results[stream] = features
            duration, num_clips = encoded.duration, max(num_clips, encoded.num_clips)
        if self.clip_encoders:
            requests = {e.name: e.frame_request for e in self.clip_encoders}
            reader = ClipReader(path, cfg.clip_len, requests, threads=cfg.decode_threads)
            outputs: dict[str, list[np.ndarray]] = {
                s: [] for s, e in self.video_streams.items() if e in self.clip_encoders
            }
            batch: list[dict[str, np.ndarray]] = []
            for clip in prefetch(reader, cfg.prefetch):
                batch.append(clip)
                if len(batch) == cfg.clips_per_batch:
                    self._encode(batch, outputs)
                    batch = []
            if batch:
                self._encode(batch, outputs)
            for stream, parts in outputs.items():
                features = np.concatenate(parts)
                expected = (reader.num_clips, self.video_streams[stream].video_streams[stream])
                if features.shape != expected:  # an encoder bug, not a user error
                    raise RuntimeError(
                        f"stream '{stream}': got {features.shape}, expected {expected}"
                    )
                results[stream] = features
            duration, num_clips = reader.info.duration, max(num_clips, reader.num_clips)
        vid = video_id(path)
        for stream, features in results.items():
            save_npz(feature_file(self.out_dir, stream, vid), sources[stream], features=features)
            self._write_record(stream)
        return duration, num_clips

    def _encode(
        self, clips: list[dict[str, np.ndarray]], outputs: dict[str, list[np.ndarray]]
    ) -> None:
        for enc in self.clip_encoders:
            feats = enc.encode_clips(np.stack([c[enc.name] for c in clips]))
            for stream, array in feats.items():
                if stream in outputs:
                    outputs[stream].append(array)

    # -- queries --------------------------------------------------------------------------------

    def extract_queries(self, path: str | Path, batch_size: int = 64) -> tuple[int, int]:
        """Write the selected text streams of every query of a JSONL file.

        A query whose file was made from another text (or encoder) is re-extracted; one whose
        file has no record (an older file) is kept. Their counts are left in
        :attr:`queries_changed` and :attr:`queries_unrecorded`.

        Returns:
            ``(written, skipped)`` query files (counted over text streams).

        Raises:
            FormatError: a row lacks a valid ``qid``/``query`` (checked before any work).
        """
        rows = read_queries(path)
        written = skipped = 0
        self.queries_changed = self.queries_unrecorded = 0
        for stream, enc in self.text_streams.items():
            todo = []
            for qid, q in rows:
                file = feature_file(self.out_dir, stream, text_key(qid))
                state = (
                    "missing"
                    if self.config.overwrite
                    else file_state(file, source_of_query(q, enc))
                )
                self.queries_changed += state == "changed"
                self.queries_unrecorded += state == "unrecorded"
                if state in ("missing", "changed"):
                    todo.append((qid, q))
            skipped += len(rows) - len(todo)
            for i in range(0, len(todo), batch_size):
                chunk = todo[i : i + batch_size]
                feats = enc.encode_text([q for _, q in chunk])
                for (qid, q), f in zip(chunk, feats, strict=True):
                    save_npz(
                        feature_file(self.out_dir, stream, text_key(qid)),
                        source_of_query(q, enc),
                        last_hidden_state=f.last_hidden_state,
                        pooler_output=f.pooler_output,
                    )
                written += len(chunk)
                self._write_record(stream)
        return written, skipped
