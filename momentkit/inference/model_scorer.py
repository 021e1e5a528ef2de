"""A trained moment model applied to encoded videos and queries (:class:`ModelScorer`).

The video's streams are prepared exactly as in training (L2-normalised per stream,
concatenated, TEF appended), the queries are encoded by the text stream the model was trained
on, and all queries go through the model in one batch (the video repeated). A video longer than
the model's training length is cut into overlapping windows whose results are merged
(:mod:`.windows`). Kept apart from :mod:`.predictor` so that zero-shot search never imports
PyTorch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from momentkit.encoders.base import Encoder
from momentkit.features.streams import l2_normalize
from momentkit.features.tef import temporal_endpoint_features
from momentkit.inference.results import Moment, QueryResult, VideoEncoding
from momentkit.inference.windows import merge_moments, merge_saliency, plan_windows, shift_moments

if TYPE_CHECKING:
    from momentkit.models.base import MomentModel


def pad_tokens(texts: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """``B`` arrays ``(N_i, D)`` -> zero-padded ``(B, max N_i, D)`` float32 and ``(B, N)`` mask."""
    longest = max(len(t) for t in texts)
    feats = torch.zeros(len(texts), longest, texts[0].shape[1])
    mask = torch.zeros(len(texts), longest, dtype=torch.bool)
    for i, t in enumerate(texts):
        feats[i, : len(t)] = torch.from_numpy(np.asarray(t, dtype=np.float32))
        mask[i, : len(t)] = True
    return feats, mask


@dataclass
class ModelScorer:
    """A trained moment model applied to encoded videos and queries.

    Args:
        model: the model (put in eval mode here).
        text_encoder: encodes queries into the text stream the model was trained on.
        streams: the video streams, in the training order (concatenated on channels).
        clip_len: seconds per clip.
        window: most clips per forward pass (the training ``max_v_len``); ``None``: no limit.
        overlap: fraction of a window shared with the next one.
        use_tef, normalize_video, normalize_text, max_q_len: the training input settings.
        nms_iou: moments overlapping a better one by this IoU or more are dropped (also merges
            the windows' duplicates); ``None`` keeps the model's raw output.
        device: where the model runs.
        batch_size: most queries per forward pass.
    """

    model: MomentModel
    text_encoder: Encoder
    streams: tuple[str, ...]
    clip_len: float
    window: int | None = 75
    overlap: float = 0.5
    use_tef: bool = True
    normalize_video: bool = True
    normalize_text: bool = True
    max_q_len: int | None = 32
    nms_iou: float | None = 0.5
    device: str = "cpu"
    batch_size: int = 128

    def __post_init__(self) -> None:
        self.model.eval()
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def video_streams(self) -> tuple[str, ...]:
        """The streams the model reads, in order."""
        return self.streams

    @property
    def description(self) -> str:
        """The model's registry name and input streams."""
        return f"{self.model.config.name} on {' + '.join(self.streams)}"

    def video_features(self, video: VideoEncoding) -> np.ndarray:
        """``(T, D)`` float32: the streams (L2-normalised) cut to the shortest and concatenated,
        without TEF (it is added per window)."""
        arrays = [np.asarray(video.streams[s], dtype=np.float32) for s in self.streams]
        num_clips = min(len(a) for a in arrays)
        if self.normalize_video:
            arrays = [l2_normalize(a[:num_clips]) for a in arrays]
        return np.concatenate([a[:num_clips] for a in arrays], axis=1)

    def text_features(self, queries: Sequence[str]) -> list[np.ndarray]:
        """``(N_i, Dt)`` float32 token features of each query, cut and normalised as in
        training."""
        tokens = [
            f.last_hidden_state[: self.max_q_len] for f in self.text_encoder.encode_text(queries)
        ]
        if self.normalize_text:
            tokens = [l2_normalize(np.asarray(t, dtype=np.float32)) for t in tokens]
        return [np.asarray(t, dtype=np.float32) for t in tokens]

    @torch.inference_mode()
    def forward_window(
        self, clips: np.ndarray, text: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the model on one window for ``B`` queries.

        Args:
            clips: ``(n, D)`` the window's features (without TEF).
            text: ``(B, N, Dt)`` padded query tokens; ``text_mask`` ``(B, N)``.

        Returns:
            ``pred_logits`` ``(B, Q, 2)``, ``pred_spans`` ``(B, Q, 2)`` cxw normalised by the
            window's ``n * clip_len`` seconds, ``saliency_scores`` ``(B, n)``, on the CPU.
        """
        if self.use_tef:
            clips = np.concatenate([clips, temporal_endpoint_features(len(clips))], axis=1)
        b, n = len(text), len(clips)
        video = torch.from_numpy(np.ascontiguousarray(clips, dtype=np.float32))
        batch: dict[str, Any] = {
            "video_feats": video.to(self.device).unsqueeze(0).repeat(b, 1, 1),
            "video_mask": torch.ones(b, n, dtype=torch.bool, device=self.device),
            "text_feats": text.to(self.device),
            "text_mask": text_mask.to(self.device),
            "duration": torch.full((b,), n * self.clip_len),
            "clip_len": self.clip_len,
            "qids": list(range(b)),
            "vids": ["video"] * b,
        }
        out = self.model(batch)
        saliency = out.get("saliency_scores")
        saliency = torch.zeros(b, n) if saliency is None else saliency.float().cpu()
        return out["pred_logits"].float().cpu(), out["pred_spans"].float().cpu(), saliency

    def predict(
        self, video: VideoEncoding, queries: Sequence[str], top_k: int | None = 10
    ) -> list[QueryResult]:
        """Moments and saliency of every query; long videos through sliding windows."""
        from momentkit.modeling.postprocess import PostProcessor

        feats = self.video_features(video)
        ranges = plan_windows(len(feats), self.window, self.overlap)
        tokens = self.text_features(queries)
        post = PostProcessor(top_k=None, nms_threshold=None, round_to_clip=True, decimals=6)
        moments: list[list[np.ndarray]] = [[] for _ in queries]
        saliency: list[list[np.ndarray]] = [[] for _ in queries]
        for first, last in ranges:
            span = (last - first) * self.clip_len
            for lo in range(0, len(queries), self.batch_size):
                text, mask = pad_tokens(tokens[lo : lo + self.batch_size])
                logits, spans, sal = self.forward_window(feats[first:last], text, mask)
                table = post.batch_windows(logits, spans, [span] * len(text), self.clip_len)
                for j, rows in enumerate(table):
                    moments[lo + j].append(
                        shift_moments(np.array(rows), first * self.clip_len, video.duration)
                    )
                    saliency[lo + j].append(sal[j].numpy())
        results = []
        for i, query in enumerate(queries):
            merged = merge_moments(moments[i], self.nms_iou, top_k)
            results.append(
                QueryResult(
                    query=query,
                    moments=[Moment(float(s), float(e), float(v)) for s, e, v in merged],
                    saliency=merge_saliency(len(feats), ranges, saliency[i]),
                    clip_len=video.clip_len,
                    duration=video.duration,
                )
            )
        return results


# --------------------------------------------------------------------------- checkpoint reading
