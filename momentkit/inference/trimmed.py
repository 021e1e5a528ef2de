"""Long-video inference with clip selection (a trimming model, ``momentkit.models.trimming``).

:class:`TrimmedScorer` answers queries on videos of any length with a trained
:class:`~momentkit.models.trimming.ClipTrimming` model, in one of two ways:

- ``trim=True`` (default): recursive clip selection keeps at most ``max_clips`` clips per
  query, and the model's MR head runs once on them; the spans come back on the video's
  timeline through the kept clips' timestamps. The MR cost does not grow with the video; the
  selection network's grows linearly, at a small cost per clip.
- ``trim=False``: the same MR head runs on *every* clip, through overlapping sliding windows of
  ``max_clips`` clips whose moments are shifted to the video's timeline and merged by NMS
  (:mod:`.windows`), as :class:`~momentkit.inference.predictor.ModelScorer` does for ordinary
  models. The reference the trimming is measured against (``momentkit bench long-video``).

:meth:`TrimmedScorer.score` works on feature arrays (benchmarks, precomputed features);
:meth:`TrimmedScorer.predict` is the :class:`~momentkit.inference.predictor.Scorer` protocol
used by :class:`~momentkit.inference.predictor.Predictor` and ``momentkit search``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from momentkit.features.streams import l2_normalize
from momentkit.features.tef import temporal_endpoint_features
from momentkit.inference.model_scorer import pad_tokens
from momentkit.inference.results import Moment, QueryResult, VideoEncoding
from momentkit.inference.windows import merge_moments, merge_saliency, plan_windows, shift_moments

if TYPE_CHECKING:
    from momentkit.encoders.base import Encoder
    from momentkit.models.trimming import ClipTrimming


@dataclass
class ScoredQuery:
    """The answer of :meth:`TrimmedScorer.score` to one query.

    Attributes:
        moments: ``(N, 3)`` float64 ``[start, end, score]`` seconds, best first.
        saliency: ``(T,)`` float32 per-clip score (trimmed clips below every kept one).
        kept: ``(T,)`` bool, the clips the MR head saw (all of them without trimming).
    """

    moments: np.ndarray
    saliency: np.ndarray
    kept: np.ndarray


@dataclass
class TrimmedScorer:
    """A trimming model applied to encoded videos (see the module docstring).

    Args:
        model: the trained :class:`~momentkit.models.trimming.ClipTrimming` (put in eval mode).
        text_encoder: encodes queries into the model's text stream (``None``: only
            :meth:`score` with ready token features).
        streams: the video streams in training order (the BAM stream last, when used).
        clip_len: seconds per clip.
        trim: select clips (``True``) or run the MR head on every clip in windows.
        overlap: overlap of the sliding windows (``trim=False``).
        use_tef, normalize_video, normalize_text, max_q_len: the training input settings.
        nms_iou: moments overlapping a better one by this IoU or more are dropped.
        device: where the model runs.
        batch_size: most queries per forward pass.
    """

    model: ClipTrimming
    text_encoder: Encoder | None
    streams: tuple[str, ...]
    clip_len: float
    trim: bool = True
    overlap: float = 0.5
    use_tef: bool = True
    normalize_video: bool = True
    normalize_text: bool = True
    max_q_len: int | None = 32
    nms_iou: float | None = 0.5
    device: str = "cpu"
    batch_size: int = 16

    def __post_init__(self) -> None:
        from momentkit.models.trimming import ClipTrimming

        if not isinstance(self.model, ClipTrimming):
            raise TypeError(f"TrimmedScorer needs a ClipTrimming model, got {type(self.model)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        self.model.eval()

    @property
    def video_streams(self) -> tuple[str, ...]:
        """The streams the model reads, in order."""
        return self.streams

    @property
    def window(self) -> int | None:
        """``None`` with trimming (the selection sees the whole video), else the MR window."""
        return None if self.trim else self.model.config.max_clips

    @property
    def description(self) -> str:
        """The MR model, how the clips reach it, and the input streams."""
        c = self.model.config
        how = (
            f"clip selection (<= {c.max_clips} clips)"
            if self.trim
            else f"every clip, windows of {c.max_clips}"
        )
        return f"trimming -> {self.model.mr.config.name}, {how}, on {' + '.join(self.streams)}"

    # -- inputs -------------------------------------------------------------------------------
    def video_features(self, video: VideoEncoding) -> np.ndarray:
        """``(T, D)`` float32: the streams (L2-normalised) cut to the shortest, concatenated."""
        arrays = [np.asarray(video.streams[s], dtype=np.float32) for s in self.streams]
        num_clips = min(len(a) for a in arrays)
        arrays = [a[:num_clips] for a in arrays]
        if self.normalize_video:
            arrays = [l2_normalize(a) for a in arrays]
        return np.concatenate(arrays, axis=1)

    def text_features(self, queries: Sequence[str]) -> list[np.ndarray]:
        """``(N_i, Dt)`` float32 token features of each query, cut and normalised as in
        training."""
        if self.text_encoder is None:
            raise ValueError("this TrimmedScorer has no text encoder; call score() with tokens")
        tokens = [
            np.asarray(f.last_hidden_state[: self.max_q_len], dtype=np.float32)
            for f in self.text_encoder.encode_text(queries)
        ]
        return [l2_normalize(t) for t in tokens] if self.normalize_text else tokens

    def _batch(self, feats: np.ndarray, text: torch.Tensor, text_mask: torch.Tensor) -> dict:
        """The model's batch: the video (+ TEF) shared by ``B`` queries (no copy)."""
        if self.use_tef:
            feats = np.concatenate([feats, temporal_endpoint_features(len(feats))], axis=1)
        b, n = len(text), len(feats)
        video = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)).to(self.device)
        return {
            "video_feats": video.unsqueeze(0).expand(b, -1, -1),
            "video_mask": torch.ones(b, n, dtype=torch.bool, device=self.device),
            "text_feats": text.to(self.device),
            "text_mask": text_mask.to(self.device),
            "duration": torch.full((b,), n * self.clip_len),
            "clip_len": self.clip_len,
            "qids": list(range(b)),
            "vids": ["video"] * b,
        }

    # -- scoring ------------------------------------------------------------------------------
    @torch.inference_mode()
    def score(
        self,
        feats: np.ndarray,
        tokens: Sequence[np.ndarray],
        duration: float,
        top_k: int | None = 10,
    ) -> list[ScoredQuery]:
        """Moments and saliency of each query on one video.

        Args:
            feats: ``(T, D)`` float32 video features as :meth:`video_features` returns them
                (normalised streams, no TEF).
            tokens: ``(N_i, Dt)`` float32 query tokens (as :meth:`text_features`).
            duration: seconds of video (moments are clamped to it).
            top_k: moments kept per query (``None``: all).
        """
        out: list[ScoredQuery] = []
        for lo in range(0, len(tokens), self.batch_size):
            text, mask = pad_tokens(tokens[lo : lo + self.batch_size])
            batch = self._batch(feats, text, mask)
            run = self._trimmed if self.trim else self._windows
            out.extend(run(batch, duration, top_k))
        return out

    def _trimmed(self, batch: dict[str, Any], duration: float, top_k: int | None) -> list:
        from momentkit.modeling.postprocess import PostProcessor

        outputs = self.model(batch)
        num_clips = batch["video_mask"].shape[1]
        post = PostProcessor(top_k=None, nms_threshold=None, round_to_clip=True, decimals=6)
        logits, spans = outputs["pred_logits"].float().cpu(), outputs["pred_spans"].float().cpu()
        saliency = outputs["saliency_scores"].float().cpu().numpy()
        kept = outputs["kept_mask"].cpu().numpy()
        n = len(logits)
        timeline = num_clips * self.clip_len
        table = post.batch_windows(logits, spans, [duration] * n, self.clip_len, [timeline] * n)
        results = []
        for j, rows in enumerate(table):
            moments = merge_moments([np.array(rows).reshape(-1, 3)], self.nms_iou, top_k)
            results.append(ScoredQuery(moments, saliency[j], kept[j]))
        return results

    def _windows(self, batch: dict[str, Any], duration: float, top_k: int | None) -> list:
        from momentkit.modeling.postprocess import PostProcessor

        b, num_clips = batch["video_mask"].shape
        ranges = plan_windows(num_clips, self.model.config.max_clips, self.overlap)
        post = PostProcessor(top_k=None, nms_threshold=None, round_to_clip=True, decimals=6)
        moments: list[list[np.ndarray]] = [[] for _ in range(b)]
        saliency: list[list[np.ndarray]] = [[] for _ in range(b)]
        for first, last in ranges:
            index = torch.arange(first, last, device=self.device).expand(b, -1)
            mask = torch.ones_like(index, dtype=torch.bool)
            out = self.model.mr(self.model.mr_batch(batch, index, mask))
            logits, spans = out["pred_logits"].float().cpu(), out["pred_spans"].float().cpu()
            sal = out["saliency_scores"].float().cpu().numpy()
            span = (last - first) * self.clip_len
            table = post.batch_windows(logits, spans, [span] * b, self.clip_len)
            for j, rows in enumerate(table):
                moments[j].append(shift_moments(np.array(rows), first * self.clip_len, duration))
                saliency[j].append(sal[j])
        kept = np.ones(num_clips, dtype=bool)
        return [
            ScoredQuery(
                merge_moments(moments[j], self.nms_iou, top_k),
                merge_saliency(num_clips, ranges, saliency[j]),
                kept,
            )
            for j in range(b)
        ]

    def predict(
        self, video: VideoEncoding, queries: Sequence[str], top_k: int | None = 10
    ) -> list[QueryResult]:
        """The :class:`~momentkit.inference.predictor.Scorer` protocol: one result per query."""
        feats = self.video_features(video)
        scored = self.score(feats, self.text_features(queries), video.duration, top_k)
        return [
            QueryResult(
                query=q,
                moments=[Moment(float(s), float(e), float(v)) for s, e, v in r.moments],
                saliency=r.saliency.astype(np.float32),
                clip_len=video.clip_len,
                duration=video.duration,
            )
            for q, r in zip(queries, scored, strict=True)
        ]


__all__ = ["ScoredQuery", "TrimmedScorer"]
