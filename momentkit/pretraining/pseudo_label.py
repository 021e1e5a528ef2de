"""Pseudo-labels for pretraining from captioned clips (SG-DETR section 4.3, the InterVid-MR
recipe).

A pretraining corpus such as InternVid gives captions, each with the interval of the video it was
written for. Those intervals are loose, so SG-DETR relabels them with an aligned video-text
encoder:

1. the cosine similarity ``s_t`` of every clip's feature with the caption's text feature;
2. a threshold ``theta``, a statistic of the similarities of the clips inside the caption's
   original interval (:func:`interval_threshold`; default their mean);
3. every clip of the video with ``s_t >= theta`` is positive, inside the interval or not
   (:func:`positive_clips`);
4. the new relevant windows are the runs of consecutive positive clips
   (:func:`positive_runs`; runs shorter than ``min_clips`` are dropped);
5. each positive clip is graded 1-4 from its similarity relative to the mean ``mu``, standard
   deviation ``sigma`` (population) and maximum ``m`` of the positive clips' similarities
   (:func:`grade_clips`)::

       grade = 1 + [s >= mu - sigma] + [s >= mu] + [s >= min(mu + sigma, m)]

   so the best clip always gets 4 and a single positive clip gets 4.

The output rows are in the QVHighlights schema (``relevant_windows``, ``relevant_clip_ids``,
``saliency_scores``), the grade repeated for ``annotators`` columns (default 3, as QVHighlights'
three annotators: the loader's mean over annotators is the grade and QD-DETR's rank thresholds on
the annotator sum see ``3 * grade``; use 1 for a single column), so ``momentkit train`` can
pretrain on them and fine-tune with ``--init-from``.

The choices of steps 2 and 5 (which statistic, which cut points) are ours: the paper describes
them in words only. Shapes: ``T`` clips, ``D`` channels.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from momentkit.data.records import MAX_DURATION, WINDOW_SLACK, MomentAnnotation
from momentkit.structures.spans import window_to_clip_ids
from momentkit.utils.errors import FeatureError, FormatError
from momentkit.utils.io import iter_jsonl

THRESHOLD_STATISTICS = ("mean", "median", "min", "max")


@dataclass
class PseudoLabelConfig:
    """How captions are relabelled.

    Attributes:
        clip_len: seconds per feature clip.
        threshold: statistic of the in-interval similarities used as the threshold: ``mean``,
            ``median``, ``min``, ``max`` or a quantile ``q0.25`` (``q`` then a number in
            ``[0, 1]``).
        annotators: columns of ``saliency_scores`` (the grade repeated).
        min_clips: shortest run of positive clips kept as a window.
    """

    clip_len: float = 2.0
    threshold: str = "mean"
    annotators: int = 3
    min_clips: int = 1

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        if not self.clip_len > 0:
            raise ValueError(f"clip_len must be > 0 seconds, got {self.clip_len}")
        parse_threshold(self.threshold)
        if self.annotators < 1:
            raise ValueError(f"annotators must be >= 1, got {self.annotators}")
        if self.min_clips < 1:
            raise ValueError(f"min_clips must be >= 1, got {self.min_clips}")


def parse_threshold(spec: str) -> Callable[[np.ndarray], float]:
    """The statistic named by ``spec`` (see :attr:`PseudoLabelConfig.threshold`)."""
    if spec in THRESHOLD_STATISTICS:
        fn = getattr(np, spec)
        return lambda x: float(fn(x))
    if spec.startswith("q"):
        try:
            q = float(spec[1:])
        except ValueError:
            q = math.nan
        if 0.0 <= q <= 1.0:
            return lambda x: float(np.quantile(x, q))
    raise ValueError(
        f"unknown threshold '{spec}'; use one of {', '.join(THRESHOLD_STATISTICS)} or a "
        "quantile such as q0.25"
    )


def clip_similarities(video: np.ndarray, text: np.ndarray) -> np.ndarray:
    """``(T,)`` cosine similarity of each clip ``(T, D)`` with a text vector ``(D,)``."""
    video = np.asarray(video, dtype=np.float64)
    text = np.asarray(text, dtype=np.float64).reshape(-1)
    if video.ndim != 2 or video.shape[1] != text.shape[0]:
        raise ValueError(
            f"clip features {video.shape} and text vector {text.shape} do not share a width"
        )
    norms = np.linalg.norm(video, axis=1) * np.linalg.norm(text)
    return np.divide(video @ text, norms, out=np.zeros(len(video)), where=norms > 0)


def interval_clips(start: float, end: float, clip_len: float, num_clips: int) -> np.ndarray:
    """Indices of the clips (of ``num_clips``) that the ``[start, end]`` seconds overlap."""
    end = min(end, max(num_clips * clip_len, start))  # never a list longer than the video
    ids = np.asarray(window_to_clip_ids([start, end], clip_len), dtype=np.int64)
    return ids[ids < num_clips]


def interval_threshold(sims: np.ndarray, inside: np.ndarray, statistic: str = "mean") -> float:
    """The threshold: ``statistic`` of the similarities of the clips ``inside`` the interval."""
    if len(inside) == 0:
        raise ValueError("the caption's interval covers no clip")
    return parse_threshold(statistic)(sims[inside])


def positive_clips(sims: np.ndarray, threshold: float) -> np.ndarray:
    """``(T,)`` bool: clips whose similarity reaches ``threshold``."""
    return np.asarray(sims) >= threshold


def positive_runs(positive: np.ndarray, min_clips: int = 1) -> list[tuple[int, int]]:
    """Maximal runs of consecutive True clips as ``(first, last + 1)``, at least ``min_clips``."""
    runs: list[tuple[int, int]] = []
    start = None
    for i, p in enumerate(list(np.asarray(positive, dtype=bool)) + [False]):
        if p and start is None:
            start = i
        elif not p and start is not None:
            if i - start >= min_clips:
                runs.append((start, i))
            start = None
    return runs


def grade_clips(scores: np.ndarray) -> np.ndarray:
    """Grades 1-4 of the positive clips' similarities (see the module docstring)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return np.zeros(0, dtype=np.int64)
    mu, sigma, top = scores.mean(), scores.std(), scores.max()
    cuts = (mu - sigma, mu, min(mu + sigma, top))
    return 1 + sum((scores >= c).astype(np.int64) for c in cuts)


@dataclass
class PseudoLabel:
    """The relabelled ground truth of one caption.

    Attributes:
        windows: ``[[start, end], ...]`` seconds, clamped to the duration.
        clip_ids: positive clips inside the kept windows, ascending.
        grades: grade 1-4 of each of ``clip_ids``.
        threshold: the similarity threshold used.
    """

    windows: list[list[float]]
    clip_ids: list[int]
    grades: list[int]
    threshold: float


def pseudo_label(
    sims: np.ndarray,
    start: float,
    end: float,
    duration: float,
    config: PseudoLabelConfig | None = None,
) -> PseudoLabel | None:
    """Relabel one caption from its clip similarities; ``None`` if no run survives.

    Args:
        sims: ``(T,)`` clip-caption similarities.
        start: start of the caption's original interval (seconds).
        end: its end.
        duration: video duration (windows are clamped to it).
        config: the settings.

    Raises:
        ValueError: the interval covers none of the ``T`` clips.
    """
    cfg = config or PseudoLabelConfig()
    inside = interval_clips(start, end, cfg.clip_len, len(sims))
    theta = interval_threshold(sims, inside, cfg.threshold)
    runs = positive_runs(positive_clips(sims, theta), cfg.min_clips)
    runs = [(a, b) for a, b in runs if a * cfg.clip_len < duration]  # clips past the video end
    if not runs:
        return None
    ids = [i for a, b in runs for i in range(a, b)]
    grades = grade_clips(np.asarray(sims)[ids]).tolist()
    windows = [
        [round(a * cfg.clip_len, 6), round(min(b * cfg.clip_len, duration), 6)] for a, b in runs
    ]
    return PseudoLabel(windows, ids, grades, theta)


# ----------------------------------------------------------------------------------- captions
@dataclass
class Caption:
    """One input row: a caption written for ``[start, end]`` of video ``vid``."""

    qid: int | str
    vid: str
    caption: str
    start: float
    end: float
    duration: float
    line: int = 0


def _number(obj: dict[str, Any], key: str, path: Path, line: int) -> float:
    if key not in obj:
        raise FormatError(path, line, key, "missing", "Give start, end and duration in seconds")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FormatError(path, line, key, f"expected a number of seconds, got {value!r}")
    return float(value)


def load_captions(path: str | Path) -> list[Caption]:
    """Read the caption JSONL: ``vid``, ``caption`` (or ``query``), ``start``, ``end``,
    ``duration`` and an optional ``qid`` (default: the row number).

    Raises:
        FormatError: naming the file, line and field of a bad row or a duplicate qid.
    """
    path = Path(path)
    out: list[Caption] = []
    seen: dict[int | str, int] = {}
    for row_number, (line, obj) in enumerate(iter_jsonl(path)):
        vid = obj.get("vid")
        if not isinstance(vid, str) or not vid:
            raise FormatError(path, line, "vid", f"expected a video id string, got {vid!r}")
        text = obj.get("caption", obj.get("query"))
        if not isinstance(text, str) or not text.strip():
            raise FormatError(path, line, "caption", "missing or empty", "Give the caption text")
        start, end = _number(obj, "start", path, line), _number(obj, "end", path, line)
        duration = _number(obj, "duration", path, line)
        if not 0 <= start < end:
            raise FormatError(path, line, "end", f"interval [{start}, {end}] is empty or negative")
        if not 0 < duration <= MAX_DURATION:
            raise FormatError(
                path, line, "duration", f"expected > 0 seconds, at most {MAX_DURATION:g}, got "
                f"{duration}", "Durations are in seconds; check the unit",
            )  # fmt: skip
        if end > duration + WINDOW_SLACK:
            raise FormatError(
                path, line, "end", f"interval [{start}, {end}] is outside the {duration} s video",
                "Give start and end in seconds within the duration",
            )  # fmt: skip
        qid = obj.get("qid", row_number)
        if isinstance(qid, bool) or not isinstance(qid, int | str):
            raise FormatError(path, line, "qid", f"expected an integer or string, got {qid!r}")
        if qid in seen:
            first = seen[qid]
            raise FormatError(path, line, "qid", f"duplicate qid {qid!r} (first on line {first})")
        seen[qid] = line
        out.append(Caption(qid, vid, text.strip(), start, end, duration, line))
    return out


# ------------------------------------------------------------------------------------ corpus
@dataclass
class PseudoLabelReport:
    """What happened to the captions of a corpus."""

    captions: int = 0
    labelled: int = 0
    skipped: Counter = field(default_factory=Counter)
    windows: int = 0
    positive_clips: int = 0
    clips: int = 0

    def summary(self) -> str:
        """One paragraph for the terminal."""
        text = f"{self.labelled} of {self.captions} captions labelled"
        if self.labelled:
            text += (
                f", {self.windows / self.labelled:.2f} windows per caption, "
                f"{100.0 * self.positive_clips / max(self.clips, 1):.1f}% of clips positive"
            )
        if self.skipped:
            reasons = "; ".join(f"{n} {why}" for why, n in self.skipped.most_common())
            text += f". Skipped: {reasons}"
        return text


VideoSource = Callable[[str], np.ndarray]
TextSource = Callable[[Caption], np.ndarray]


def label_corpus(
    captions: Iterable[Caption],
    video: VideoSource,
    text: TextSource,
    config: PseudoLabelConfig | None = None,
) -> tuple[list[MomentAnnotation], PseudoLabelReport]:
    """Pseudo-label every caption.

    Args:
        captions: the captions.
        video: ``vid -> (T, D)`` clip features (raises ``FeatureError`` for a missing video).
        text: ``caption -> (D,)`` text vector.
        config: the settings.

    Returns:
        The annotations (QVHighlights schema) of the labelled captions, in input order, and the
        report; captions of missing videos, with an interval beyond the features or without a
        surviving run are skipped and counted.
    """
    cfg = config or PseudoLabelConfig()
    cfg.validate()
    report = PseudoLabelReport()
    out: list[MomentAnnotation] = []
    for cap in captions:
        report.captions += 1
        try:
            feats = video(cap.vid)
        except (FeatureError, FileNotFoundError, KeyError):
            report.skipped["without video features"] += 1
            continue
        sims = clip_similarities(feats, text(cap))
        try:
            label = pseudo_label(sims, cap.start, cap.end, cap.duration, cfg)
        except ValueError:
            report.skipped["with an interval beyond the video features"] += 1
            continue
        if label is None or not label.windows:
            report.skipped["without a positive run"] += 1
            continue
        report.labelled += 1
        report.windows += len(label.windows)
        report.positive_clips += len(label.clip_ids)
        report.clips += len(sims)
        out.append(
            MomentAnnotation(
                qid=cap.qid,
                query=cap.caption,
                vid=cap.vid,
                duration=cap.duration,
                relevant_windows=label.windows,
                relevant_clip_ids=label.clip_ids,
                saliency_scores=[[g] * cfg.annotators for g in label.grades],
            )
        )
    return out, report


class StoreTextSource:
    """Caption vectors from a query feature store (``qid<qid>`` keys).

    The vector is the file's ``pooler_output`` when it has one (the sentence embedding of CLIP-
    like encoders), else the mean of its token rows (``last_hidden_state``, or a packed store's
    rows).
    """

    def __init__(self, path: str | Path) -> None:
        from momentkit.features import NpzFeatureStore, open_feature_store

        self.path = Path(path)
        self.tokens = open_feature_store(self.path)
        self.pooled = (  # a packed store holds one array per item: average its rows
            NpzFeatureStore(self.path, field="pooler_output")
            if isinstance(self.tokens, NpzFeatureStore)
            else None
        )

    @property
    def dim(self) -> int:
        """Channels of the vectors."""
        return self.tokens.dim

    def missing(self, captions: Iterable[Caption]) -> list[Caption]:
        """The captions without a feature file."""
        from momentkit.features import text_key

        return [c for c in captions if text_key(c.qid) not in self.tokens]

    def __call__(self, caption: Caption) -> np.ndarray:
        """``(D,)`` vector of ``caption``."""
        from momentkit.features import text_key

        key = text_key(caption.qid)
        if self.pooled is not None:
            try:
                return self.pooled.get(key)[0]
            except FeatureError:  # no pooler_output in this file
                pass
        return self.tokens.get(key).mean(0)
