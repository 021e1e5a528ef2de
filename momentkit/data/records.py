"""Typed records in the QVHighlights JSONL schema, the common format of the field.

Annotation rows (one JSON object a line)::

    {"qid": 2579, "query": "...", "vid": "NUsG9BgSes0_210.0_360.0", "duration": 150,
     "relevant_windows": [[82, 150]], "relevant_clip_ids": [41, 42, ...],
     "saliency_scores": [[1, 1, 2], ...]}   # one row per relevant clip, one column per annotator

Prediction rows::

    {"qid": 2579, "query": "...", "vid": "...",
     "pred_relevant_windows": [[0.0, 70.0, 0.9986], ...],   # [start, end, score], best first
     "pred_saliency_scores": [-0.24, ...]}                    # one score per clip

Highlight-only datasets (TVSum, YouTube Highlights) store per-clip ``label`` rows; their
loaders (:mod:`momentkit.data.datasets`) map those onto ``relevant_clip_ids`` (every clip) and
``saliency_scores`` (clips x annotators) so one record type serves every benchmark. Unknown
fields are kept in ``extra`` and written back unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from momentkit.utils.errors import FormatError
from momentkit.utils.io import iter_jsonl, write_jsonl

Qid = int | str

#: longest video accepted, in seconds (11.6 days): a larger ``duration`` is a unit mistake (ms?)
#: and would size per-clip arrays of terabytes
MAX_DURATION = 1e6
#: how far a ground-truth window may end past ``duration`` (releases round the two differently;
#: ActivityNet Captions ends 5 windows 0.01 s past the video)
WINDOW_SLACK = 1.0

_ANNOTATION_KEYS = (
    "qid",
    "query",
    "vid",
    "duration",
    "relevant_windows",
    "relevant_clip_ids",
    "saliency_scores",
)
_PREDICTION_KEYS = ("qid", "query", "vid", "pred_relevant_windows", "pred_saliency_scores")


class _Where:
    """The file and line a record comes from, for error messages."""

    def __init__(self, path: str | Path | None, line: int | None) -> None:
        self.path, self.line = path, line

    def error(self, field_name: str | None, problem: str, hint: str = "") -> FormatError:
        return FormatError(self.path, self.line, field_name, problem, hint)


def _is_number(x: Any) -> bool:
    """A finite int or float (not a bool); ints beyond the float range are not numbers here."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an int too large for a float
        return False


_PLAIN_NUMBER_TYPES = frozenset((int, float))


def _all_numbers(values: list[Any] | tuple[Any, ...]) -> bool:
    """``all(map(_is_number, values))``, fast for the common case of plain finite floats.

    Plain ``int``/``float`` types whose sum is finite are all finite (an inf or nan makes the
    sum non-finite); anything else (bools, subclasses, huge ints, a sum that overflows) takes
    the element-wise check.
    """
    if all(type(x) in _PLAIN_NUMBER_TYPES for x in values):
        try:
            if math.isfinite(sum(values)):
                return True
        except OverflowError:
            pass
    return all(map(_is_number, values))


def _qid(obj: dict[str, Any], where: _Where) -> Qid:
    if "qid" not in obj:
        raise where.error("qid", "missing", "Every row needs a unique query id")
    qid = obj["qid"]
    if isinstance(qid, bool) or not isinstance(qid, int | str):
        raise where.error("qid", f"expected an integer or string, got {qid!r}")
    return qid


def _str(obj: dict[str, Any], key: str, where: _Where, required: bool = True) -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise where.error(key, "missing")
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise where.error(key, f"expected a string, got {type(value).__name__}")
    return value


def _windows(value: Any, key: str, where: _Where, with_score: bool) -> list[list[float]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise where.error(key, f"expected a list of windows, got {type(value).__name__}")
    width = 3 if with_score else 2
    shape = "[start, end, score]" if with_score else "[start, end]"
    out: list[list[float]] = []
    for i, w in enumerate(value):
        if not isinstance(w, list | tuple) or len(w) != width or not _all_numbers(w):
            raise where.error(f"{key}[{i}]", f"expected {shape} numbers, got {w!r}")
        if w[1] < w[0]:
            raise where.error(
                f"{key}[{i}]", f"end {w[1]} is before start {w[0]}", "Swap the two values"
            )
        out.append([float(x) if isinstance(x, float) else x for x in w])
    return out


@dataclass
class MomentAnnotation:
    """One query on one video: its relevant windows and per-clip saliency.

    Attributes:
        qid: query id, unique within a split.
        query: the natural-language query.
        vid: video id (also the feature file stem).
        duration: video duration in seconds.
        relevant_windows: ``[[start, end], ...]`` in seconds; empty for highlight-only data.
        relevant_clip_ids: indices of clips with saliency annotations.
        saliency_scores: ``len(relevant_clip_ids)`` rows of per-annotator scores.
        domain: category (TVSum, YouTube Highlights), else ``None``.
        extra: every other field of the row, preserved on save.
    """

    qid: Qid
    query: str
    vid: str
    duration: float
    relevant_windows: list[list[float]] = field(default_factory=list)
    relevant_clip_ids: list[int] = field(default_factory=list)
    saliency_scores: list[list[float]] = field(default_factory=list)
    domain: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: ``(file, line)`` the record was read from (for error messages; not part of the row)
    source: tuple[str | None, int | None] = field(default=(None, None), compare=False, repr=False)

    @classmethod
    def from_dict(
        cls, obj: dict[str, Any], path: str | Path | None = None, line: int | None = None
    ) -> MomentAnnotation:
        """Validate and convert one JSON row; errors name ``path``, ``line`` and the field."""
        where = _Where(path, line)
        qid = _qid(obj, where)
        query = _str(obj, "query", where)
        vid = _str(obj, "vid", where)
        if "duration" not in obj:
            raise where.error("duration", "missing", "Give the video length in seconds")
        duration = obj["duration"]
        if not _is_number(duration) or duration <= 0:
            raise where.error("duration", f"expected a positive number, got {duration!r}")
        if duration > MAX_DURATION:
            raise where.error(
                "duration",
                f"{duration!r} seconds is more than {MAX_DURATION:g} s ({MAX_DURATION / 86400:.1f} "
                "days)",
                "Durations are in seconds; check the unit",
            )
        windows = _windows(obj.get("relevant_windows"), "relevant_windows", where, False)
        for i, (start, end) in enumerate(windows):
            if start < 0 or start > duration or end > duration + WINDOW_SLACK:
                raise where.error(
                    f"relevant_windows[{i}]",
                    f"[{start}, {end}] is outside the {duration} s video",
                    "Windows are [start, end] seconds within 0 and duration; fix the window or "
                    "the duration",
                )
        clip_ids = obj.get("relevant_clip_ids") or []
        if not isinstance(clip_ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in clip_ids
        ):
            raise where.error("relevant_clip_ids", "expected a list of non-negative integers")
        scores = obj.get("saliency_scores") or []
        if not isinstance(scores, list) or not all(
            isinstance(r, list) and _all_numbers(r) for r in scores
        ):
            raise where.error(
                "saliency_scores", "expected a list of per-annotator score lists, e.g. [[1, 2, 3]]"
            )
        if len(scores) != len(clip_ids):
            raise where.error(
                "saliency_scores",
                f"has {len(scores)} rows but relevant_clip_ids has {len(clip_ids)} entries",
                "Give one row of scores per relevant clip",
            )
        domain = obj.get("domain")
        extra = {k: v for k, v in obj.items() if k not in _ANNOTATION_KEYS and k != "domain"}
        record = cls(qid, query, vid, duration, windows, clip_ids, scores, domain, extra)
        record.source = (str(path) if path is not None else None, line)
        return record

    def to_dict(self) -> dict[str, Any]:
        """The JSON row (QVHighlights schema), with ``extra`` fields restored."""
        row: dict[str, Any] = {
            "qid": self.qid,
            "query": self.query,
            "duration": self.duration,
            "vid": self.vid,
            "relevant_windows": self.relevant_windows,
        }
        if self.relevant_clip_ids:
            row["relevant_clip_ids"] = self.relevant_clip_ids
            row["saliency_scores"] = self.saliency_scores
        if self.domain is not None:
            row["domain"] = self.domain
        row.update(self.extra)
        return row

    def mean_saliency(self, num_clips: int) -> list[float]:
        """Per-clip saliency averaged over annotators, zero for unannotated clips."""
        out = [0.0] * num_clips
        for cid, row in zip(self.relevant_clip_ids, self.saliency_scores):
            if cid < num_clips and row:
                out[cid] = sum(row) / len(row)
        return out


@dataclass
class MomentPrediction:
    """A model's answer to one query.

    Attributes:
        pred_relevant_windows: ``[[start, end, score], ...]`` in seconds, best first.
        pred_saliency_scores: one score per clip of the video (may be empty for MR-only models).
    """

    qid: Qid
    query: str
    vid: str
    pred_relevant_windows: list[list[float]] = field(default_factory=list)
    pred_saliency_scores: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(
        cls, obj: dict[str, Any], path: str | Path | None = None, line: int | None = None
    ) -> MomentPrediction:
        """Validate and convert one JSON row; errors name ``path``, ``line`` and the field."""
        where = _Where(path, line)
        qid = _qid(obj, where)
        windows = _windows(obj.get("pred_relevant_windows"), "pred_relevant_windows", where, True)
        sal = obj.get("pred_saliency_scores") or []
        if not isinstance(sal, list) or not _all_numbers(sal):
            raise where.error("pred_saliency_scores", "expected a list of finite numbers")
        extra = {k: v for k, v in obj.items() if k not in _PREDICTION_KEYS}
        return cls(
            qid,
            _str(obj, "query", where, required=False),
            _str(obj, "vid", where, required=False),
            windows,
            sal,
            extra,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON row in the official prediction format."""
        row: dict[str, Any] = {
            "qid": self.qid,
            "query": self.query,
            "vid": self.vid,
            "pred_relevant_windows": self.pred_relevant_windows,
        }
        if self.pred_saliency_scores:
            row["pred_saliency_scores"] = self.pred_saliency_scores
        row.update(self.extra)
        return row


def check_clip_len(clip_len: Any, what: str = "clip_len") -> float:
    """``clip_len`` as a float when it is a finite number of seconds > 0.

    Raises:
        FormatError: naming ``what`` (e.g. ``--clip-len``), for 0, negatives, NaN, inf.
    """
    if not _is_number(clip_len) or clip_len <= 0:
        raise FormatError(
            what,
            None,
            None,
            f"expected a positive number of seconds per clip, got {clip_len!r}",
            "QVHighlights, TACoS and ActivityNet features use 2, Charades-STA 1",
        )
    return float(clip_len)


def num_clips(duration: float, clip_len: float, partial_last: bool = False) -> int:
    """Clips of a ``duration`` s video cut in ``clip_len`` s clips.

    Args:
        partial_last: count a last clip that the video ends inside of (``ceil``: the clips of
            TVSum and YouTube Highlights' per-clip labels); ``False``: the official QVHighlights
            rule ``int(duration / clip_len)`` (its evaluator's arrays have that many columns).
    """
    if partial_last:
        return max(1, math.ceil(duration / clip_len - 1e-9))
    return int(duration / clip_len)


def check_clip_ids(
    annotations: Iterable[MomentAnnotation],
    clip_len: float,
    path: str | Path | None = None,
    *,
    partial_last: bool = True,
) -> None:
    """Refuse ``relevant_clip_ids`` beyond the clips of the video (see :func:`num_clips`).

    The one check of clip ids against durations: the training data use it on moment rows (a
    last partial clip counted: a clip must start inside the video), the QVHighlights evaluator
    with the official count. Highlight-only rows (TVSum, YouTube Highlights) number their clips
    by their labels, not by the duration.

    Raises:
        FormatError: naming the file and line of the record (``path`` when the record does not
            know its own), the qid and the clip count.
    """
    clip_len = check_clip_len(clip_len)
    for a in annotations:
        if not a.relevant_clip_ids:
            continue
        n, top = num_clips(a.duration, clip_len, partial_last), max(a.relevant_clip_ids)
        if top >= n:
            file, line = a.source
            raise FormatError(
                file or path,
                line,
                "relevant_clip_ids",
                f"qid {a.qid!r}: clip id {top} is beyond the {n} clips of a {a.duration} s "
                f"video cut in {clip_len} s clips",
                "Check duration and the clip length",
            )


def _check_unique(qids: Sequence[Qid], lines: Sequence[int], path: str | Path) -> None:
    seen: dict[Qid, int] = {}
    for qid, line in zip(qids, lines):
        if qid in seen:
            raise FormatError(
                path, line, "qid", f"duplicate qid {qid!r} (first on line {seen[qid]})"
            )
        seen[qid] = line


RecordTransform = Callable[[MomentAnnotation, Path, int], MomentAnnotation]


def load_annotations(
    path: str | Path, transform: RecordTransform | None = None
) -> list[MomentAnnotation]:
    """Read a QVHighlights-schema annotation JSONL file, validating every row.

    Args:
        path: the JSONL file.
        transform: optional ``f(record, path, line) -> record`` applied to each row (dataset
            loaders use it to map benchmark-specific fields; it may raise FormatError).
    """
    out, lines = [], []
    for line, obj in iter_jsonl(path):
        record = MomentAnnotation.from_dict(obj, path, line)
        out.append(transform(record, Path(path), line) if transform else record)
        lines.append(line)
    _check_unique([a.qid for a in out], lines, path)
    return out


def load_predictions(path: str | Path) -> list[MomentPrediction]:
    """Read a prediction JSONL file in the official format, validating every row."""
    out, lines = [], []
    for line, obj in iter_jsonl(path):
        out.append(MomentPrediction.from_dict(obj, path, line))
        lines.append(line)
    _check_unique([p.qid for p in out], lines, path)
    return out


def save_annotations(path: str | Path, annotations: Iterable[MomentAnnotation]) -> None:
    """Write annotations as JSONL (atomically)."""
    write_jsonl(path, (a.to_dict() for a in annotations))


def save_predictions(path: str | Path, predictions: Iterable[MomentPrediction]) -> None:
    """Write predictions as JSONL in the official format (atomically)."""
    write_jsonl(path, (p.to_dict() for p in predictions))
