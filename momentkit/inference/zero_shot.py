"""Zero-shot moment retrieval: text-clip similarity, nothing trained.

Each clip's saliency for a query comes from the encoder alone:

- image-text encoders (``clip:...``, ``siglip:...``): the cosine between the clip's image
  embedding (stream ``clip``) and the query's pooled text embedding (stream ``clip_text``); any
  encoder whose text stream ``X_text`` has a video stream ``X`` of the same width qualifies;
- the ``offline`` encoders, whose image and text models share no space: the ImageNet-class
  bridge of :mod:`momentkit.encoders.offline`, ``sum_c p(c | clip) * w_c(query)``, computed from
  the ``imagenet_probs`` stream. With ``temperature=None`` the weights are the cosine
  similarities of the query and the class names (``OfflineEncoder.relevance``); with a
  temperature they are their softmax, ``w = softmax(sim / temperature)``, which keeps the few
  classes that match the query instead of summing small similarities over all 1000 classes
  (those mostly measure how "indoor" or "person-like" a clip is, whatever the query).

Moments are the runs of consecutive clips above per-video saliency quantiles, scored by
contrast with the video's median and de-duplicated by temporal NMS
(:func:`momentkit.inference.similarity.propose_windows`). Clips are scored independently, so
videos of any length are handled in one pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from momentkit.encoders.base import Encoder, EncoderError
from momentkit.encoders.offline import zero_shot_relevance
from momentkit.inference.results import Moment, QueryResult, VideoEncoding
from momentkit.inference.similarity import propose_windows

#: the class-probability stream of the ``offline`` encoders
CLASS_PROBS_STREAM = "imagenet_probs"


@runtime_checkable
class ClassBridge(Protocol):
    """An encoder that scores a query against its image classifier's class names."""

    def class_similarity(self, query: str) -> np.ndarray:
        """``(C,)`` cosine similarity between ``query`` and every class name."""
        ...


def class_weights(similarity: np.ndarray, temperature: float | None) -> np.ndarray:
    """``(C,)`` weights of the classes for one query: the similarities themselves
    (``temperature=None``) or their softmax at ``temperature``."""
    similarity = np.asarray(similarity, dtype=np.float64)
    if temperature is None:
        return similarity.astype(np.float32)
    logits = (similarity - similarity.max()) / temperature
    weights = np.exp(logits)
    return (weights / weights.sum()).astype(np.float32)


def cosine_saliency(video: np.ndarray, text: np.ndarray) -> np.ndarray:
    """``(B, T)`` cosine of every clip ``(T, D)`` with every pooled query ``(B, D)``."""
    v = video / np.maximum(np.linalg.norm(video, axis=1, keepdims=True), 1e-12)
    t = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    return (t @ v.T).astype(np.float32)


def zero_shot_stream(encoder: Encoder) -> str:
    """The video stream the zero-shot saliency of ``encoder`` is computed from.

    Raises:
        EncoderError: ``encoder`` has no text tower, or no image stream shared with its text.
    """
    if isinstance(encoder, ClassBridge) and CLASS_PROBS_STREAM in encoder.video_streams:
        return CLASS_PROBS_STREAM
    paired = encoder.text_stream.removesuffix("_text") if encoder.text_stream else None
    if paired and encoder.video_streams.get(paired) == encoder.text_dim:
        return paired
    raise EncoderError(
        f"encoder '{encoder.name}' has no image-text space to compare clips with queries "
        f"(video streams: {', '.join(encoder.video_streams) or 'none'}; text stream: "
        f"{encoder.text_stream or 'none'}). Use offline, clip:<model> or siglip:<model> for "
        "zero-shot search, or give a trained checkpoint"
    )


@dataclass
class ZeroShotScorer:
    """Scores clips and proposes moments from an encoder's text-clip similarity.

    Args:
        encoder: ``offline``/``offline-glove`` or an image-text encoder (see the module doc).
        clip_len: seconds per clip.
        temperature: softmax temperature of the class weights of the ``offline`` bridge;
            ``None`` uses the raw similarities. Ignored by image-text encoders.
        quantiles, nms_iou, window_score: moment proposal settings (see
            :func:`~momentkit.inference.similarity.propose_windows`).
    """

    encoder: Encoder
    clip_len: float = 2.0
    temperature: float | None = 0.05
    quantiles: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9)
    nms_iou: float = 0.5
    window_score: str = "contrast"

    def __post_init__(self) -> None:
        self.stream = zero_shot_stream(self.encoder)
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 or None, got {self.temperature}")

    @property
    def video_streams(self) -> tuple[str, ...]:
        """The one stream read from a :class:`VideoEncoding`."""
        return (self.stream,)

    @property
    def window(self) -> None:
        """Clips are scored independently: no sliding window is needed."""
        return None

    @property
    def description(self) -> str:
        """One line naming the method, for terminals and JSON."""
        how = (
            "ImageNet-class bridge"
            if self.stream == CLASS_PROBS_STREAM
            else f"cosine of '{self.stream}' and '{self.encoder.text_stream}'"
        )
        return f"zero-shot ({self.encoder.name}: {how})"

    def saliency(self, video: VideoEncoding, queries: Sequence[str]) -> np.ndarray:
        """``(B, T)`` float32 saliency of every clip for every query."""
        clips = np.asarray(video.streams[self.stream], dtype=np.float32)
        if self.stream == CLASS_PROBS_STREAM:
            bridge = self.encoder
            assert isinstance(bridge, ClassBridge)
            batch = getattr(bridge, "class_similarities", None)
            similarities = (
                batch(list(queries))
                if batch is not None
                else np.stack([bridge.class_similarity(q) for q in queries])
            )
            rows = [
                zero_shot_relevance(clips, class_weights(sim, self.temperature))
                for sim in similarities
            ]
            return np.stack(rows).astype(np.float32)
        pooled = np.stack([f.pooler_output for f in self.encoder.encode_text(list(queries))])
        return cosine_saliency(clips, pooled)

    def predict(
        self, video: VideoEncoding, queries: Sequence[str], top_k: int | None = 10
    ) -> list[QueryResult]:
        """Moments and per-clip saliency of every query (see the module doc)."""
        saliency = self.saliency(video, queries)
        results = []
        for query, scores in zip(queries, saliency, strict=True):
            rows = propose_windows(
                scores,
                video.duration,
                video.clip_len,
                quantiles=self.quantiles,
                max_windows=top_k,
                nms_iou=self.nms_iou,
                window_score=self.window_score,
            )
            moments = [Moment(float(s), float(e), float(v)) for s, e, v in rows]
            results.append(QueryResult(query, moments, scores, video.clip_len, video.duration))
        return results
