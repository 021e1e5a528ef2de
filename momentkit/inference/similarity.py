"""The per-clip similarity baseline: zero-shot moment retrieval from CLIP-space cosines.

Saliency is the cosine between each clip's CLIP-stream feature and the query's pooled text
feature. Moments are the runs of consecutive clips whose saliency reaches one of several
per-video quantile thresholds, scored from their saliency, deduplicated by temporal NMS; the
best ``max_windows`` are returned. Two run scores are offered:

- ``"contrast"`` (default): ``(mean - median) * sqrt(length)``, the run's mean saliency above
  the video's median, weighted like a t-statistic so one noisy clip does not outrank a
  consistent run;
- ``"mean"``: the run's mean saliency, which favours the shortest, highest runs.
 Nothing is learned, and each clip is judged on its own,
so the baseline ignores the motion stream and temporal context: the floor a model must beat.

Example::

    baseline = SimilarityBaseline("synth/features")
    predictions = baseline.predict_all(load_annotations("synth/annotations/val.jsonl"))
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from momentkit.data.records import MomentAnnotation, MomentPrediction
from momentkit.evaluation.average_precision import cross_iou
from momentkit.utils.errors import FeatureError


def read_npz_array(path: str | Path, key: str) -> np.ndarray:
    """Array ``key`` of the ``.npz`` file ``path`` as float32 (the baseline's only file access).

    Raises:
        FileNotFoundError: no such file.
        FeatureError: unreadable file, missing key or non-finite values.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such feature file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if key not in npz.files:
                raise FeatureError(
                    f"{path}: no array named '{key}' (it holds: {', '.join(npz.files)}). "
                    "Re-extract the features in the standard layout"
                )
            array = npz[key].astype(np.float32, copy=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise FeatureError(f"{path}: cannot read the file ({e}); re-extract it") from None
    if not np.isfinite(array).all():
        raise FeatureError(f"{path}: array '{key}' holds NaN or infinite values")
    return array


def runs_above(values: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Maximal runs ``[start, end)`` of consecutive indices with ``values >= threshold``."""
    above = np.concatenate([[False], values >= threshold, [False]])
    edges = np.flatnonzero(np.diff(above.astype(np.int8)))
    return [(int(s), int(e)) for s, e in zip(edges[::2], edges[1::2])]


def temporal_nms(
    windows: np.ndarray, iou_threshold: float, containment: float | None = None
) -> list[int]:
    """Greedy NMS of ``(N, 3)`` ``[start, end, score]`` windows sorted best first.

    Args:
        windows: the windows, best first.
        iou_threshold: a window overlapping a better kept one with IoU at or above this is
            dropped.
        containment: also drop a window when the overlap covers at least this fraction of the
            shorter of the two (one nested in the other); ``None``: IoU only.

    Returns:
        The indices kept, in order.
    """
    if len(windows) == 0:
        return []
    spans = np.asarray(windows, dtype=np.float64)[:, :2]
    iou = np.nan_to_num(cross_iou(spans, spans), nan=1.0)
    if containment is not None:
        lengths = spans[:, 1] - spans[:, 0]
        inter = np.clip(
            np.minimum(spans[:, None, 1], spans[None, :, 1])
            - np.maximum(spans[:, None, 0], spans[None, :, 0]),
            0.0,
            None,
        )
        shorter = np.minimum(lengths[:, None], lengths[None, :])
        with np.errstate(divide="ignore", invalid="ignore"):
            cover = np.where(shorter > 0, inter / shorter, 1.0)
    keep: list[int] = []
    for i in range(len(windows)):
        if all(iou[i, j] < iou_threshold for j in keep) and (
            containment is None or all(cover[i, j] < containment for j in keep)
        ):
            keep.append(i)
    return keep


WINDOW_SCORES = ("contrast", "mean")


def propose_windows(
    saliency: np.ndarray,
    duration: float,
    clip_len: float,
    *,
    quantiles: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9),
    max_windows: int | None = 10,
    nms_iou: float = 0.7,
    window_score: str = "contrast",
) -> np.ndarray:
    """Moments from per-clip saliency: runs of clips above quantile thresholds, scored, NMS-ed.

    Args:
        saliency: ``(T,)`` score of each clip (clip ``i`` covers ``[i, i + 1) * clip_len``).
        duration: seconds of video; the last window is cut there.
        clip_len: seconds per clip.
        quantiles: per-video saliency quantiles used as thresholds for the runs.
        max_windows: windows returned (``None``: all that survive NMS).
        nms_iou: a window overlapping a better one by this IoU or more is dropped.
        window_score: ``"contrast"`` or ``"mean"`` (see the module docstring).

    Returns:
        ``(N, 3)`` float64 ``[start, end, score]`` rows in seconds, best first.
    """
    if window_score not in WINDOW_SCORES:
        raise ValueError(f"window_score must be 'contrast' or 'mean', got {window_score!r}")
    saliency = np.asarray(saliency, dtype=np.float64).reshape(-1)
    if len(saliency) == 0:
        return np.zeros((0, 3))
    median = float(np.median(saliency))
    candidates: dict[tuple[int, int], float] = {}
    for q in quantiles:
        for s, e in runs_above(saliency, float(np.quantile(saliency, q))):
            score = float(saliency[s:e].mean())
            if window_score == "contrast":
                score = (score - median) * math.sqrt(e - s)
            candidates[(s, e)] = score
    ranked = sorted(candidates.items(), key=lambda kv: (-kv[1], kv[0]))
    windows = np.array(
        [[s * clip_len, min(e * clip_len, duration), v] for (s, e), v in ranked],
        dtype=np.float64,
    ).reshape(-1, 3)
    keep = temporal_nms(windows, nms_iou)[:max_windows]
    return windows[keep].reshape(-1, 3)


@dataclass
class SimilarityBaseline:
    """Zero-shot per-clip similarity between video clips and the query.

    Args:
        feature_root: folder holding ``<video_stream>/<vid>.npz`` (key ``features``, ``(T, D)``)
            and ``<text_stream>/qid<qid>.npz`` (key ``text_key``, ``(D,)``).
        video_stream, text_stream, text_key: where the two features are.
        clip_len: seconds per clip.
        quantiles: per-video saliency quantiles used as thresholds for the runs.
        max_windows: windows returned per query.
        nms_iou: a window overlapping a better one by this IoU or more is dropped.
        window_score: ``"contrast"`` or ``"mean"`` (see the module docstring).
    """

    feature_root: str | Path
    video_stream: str = "clip"
    text_stream: str = "clip_text"
    text_key: str = "pooler_output"
    clip_len: float = 2.0
    quantiles: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9)
    max_windows: int = 10
    nms_iou: float = 0.7
    window_score: str = "contrast"

    def __post_init__(self) -> None:
        if self.window_score not in WINDOW_SCORES:
            raise ValueError(
                f"window_score must be 'contrast' or 'mean', got {self.window_score!r}"
            )
        if not self.quantiles or not all(0.0 <= q < 1.0 for q in self.quantiles):
            raise ValueError(f"quantiles must be in [0, 1), got {self.quantiles!r}")

    def read_features(self, annotation: MomentAnnotation) -> tuple[np.ndarray, np.ndarray]:
        """``(video (T, D), query (D,))`` features of one annotation."""
        root = Path(self.feature_root)
        video = read_npz_array(root / self.video_stream / f"{annotation.vid}.npz", "features")
        text = read_npz_array(
            root / self.text_stream / f"qid{annotation.qid}.npz", self.text_key
        ).reshape(-1)
        if video.ndim != 2 or len(video) == 0:
            raise FeatureError(
                f"{root / self.video_stream / annotation.vid}.npz: 'features' has shape "
                f"{video.shape}; expected (clips, dim) with at least one clip"
            )
        if video.shape[1] != text.shape[0]:
            raise FeatureError(
                f"{root}: video '{annotation.vid}' features have shape {video.shape} but query "
                f"{annotation.qid} has dimension {text.shape[0]}; the two streams must share "
                "one embedding space (e.g. CLIP image and CLIP text)"
            )
        return video, text

    @staticmethod
    def saliency(video: np.ndarray, text: np.ndarray) -> np.ndarray:
        """Cosine of each clip with the query: ``(T, D), (D,) -> (T,)``."""
        v = video / np.maximum(np.linalg.norm(video, axis=1, keepdims=True), 1e-12)
        t = text / max(float(np.linalg.norm(text)), 1e-12)
        return v @ t

    def propose(self, saliency: np.ndarray, duration: float) -> list[list[float]]:
        """Windows ``[[start, end, score], ...]`` in seconds, best first, from ``(T,)`` saliency."""
        windows = propose_windows(
            saliency,
            duration,
            self.clip_len,
            quantiles=self.quantiles,
            max_windows=self.max_windows,
            nms_iou=self.nms_iou,
            window_score=self.window_score,
        )
        return [[round(float(x), 4) for x in row] for row in windows]

    def predict(self, annotation: MomentAnnotation) -> MomentPrediction:
        """Windows and per-clip saliency for one query.

        ``pred_saliency_scores`` has one score per clip the duration covers (features beyond
        the duration are ignored).
        """
        video, text = self.read_features(annotation)
        num_clips = max(1, min(len(video), math.ceil(annotation.duration / self.clip_len - 1e-6)))
        saliency = self.saliency(video[:num_clips], text)
        return MomentPrediction(
            qid=annotation.qid,
            query=annotation.query,
            vid=annotation.vid,
            pred_relevant_windows=self.propose(saliency, float(annotation.duration)),
            pred_saliency_scores=[round(float(x), 4) for x in saliency],
        )

    def predict_all(
        self, annotations: Iterable[MomentAnnotation], progress: bool = False
    ) -> list[MomentPrediction]:
        """:meth:`predict` for every annotation, in order."""
        from tqdm.auto import tqdm

        return [self.predict(a) for a in tqdm(list(annotations), disable=not progress)]
