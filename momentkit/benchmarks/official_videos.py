"""The synthetic QVHighlights-shaped batch the side-by-side benchmarks time.

:func:`make_videos` draws videos and queries in the official data conventions (streams
L2-normalised per clip, TEF, summed annotator saliency, 1-2 windows a video); :class:`Videos`
gives them in any stream order and as momentkit's batch dict, so the official code and momentkit
get the identical numbers (see :mod:`momentkit.benchmarks.official`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

#: QVHighlights' streams: SlowFast and CLIP clip features, CLIP query tokens
STREAM_DIMS = {"slowfast": 2304, "clip": 512}
TEXT_DIM = 512


@dataclass
class Videos:
    """Synthetic videos and queries in the official data conventions.

    Attributes:
        streams: name -> ``(B, T, D)`` clip features, each clip L2-normalised per stream
            (as the official datasets do), zeros past a video's end.
        tef: ``(B, T, 2)`` temporal endpoint features ``[t / L, (t + 1) / L]``, zeros past the end.
        video_mask: ``(B, T)`` bool, True for real clips.
        text: ``(B, N, Dt)`` query tokens (L2-normalised), zeros past a query's end.
        text_mask: ``(B, N)`` bool.
        windows: per video the relevant windows ``[[start, end], ...]`` in seconds.
        saliency: ``(B, T)`` the sum of 3 annotators' 0-4 scores on relevant clips, 0 elsewhere
            (the official QVHighlights label; momentkit's is their mean).
        pos, neg: ``(B, 2)`` long: high- and low-saliency clip indices.
        clip_len: seconds per clip.
        qids: query ids.
    """

    streams: dict[str, torch.Tensor]
    tef: torch.Tensor
    video_mask: torch.Tensor
    text: torch.Tensor
    text_mask: torch.Tensor
    windows: list[list[list[float]]]
    saliency: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor
    clip_len: float
    qids: list[int]

    def __len__(self) -> int:
        return len(self.video_mask)

    @property
    def lengths(self) -> list[int]:
        """Clips per video."""
        return [int(n) for n in self.video_mask.sum(1)]

    @property
    def duration(self) -> torch.Tensor:
        """``(B,)`` seconds."""
        return self.video_mask.sum(1).float() * self.clip_len

    def video(self, order: Sequence[str]) -> torch.Tensor:
        """``(B, T, sum(D) + 2)``: the streams in ``order``, then the TEF."""
        return torch.cat([*(self.streams[s] for s in order), self.tef], dim=-1)

    def spans(self) -> list[torch.Tensor]:
        """Per video ``(n, 2)`` ``(center, width)`` of its windows, normalised by its length
        (the official ``get_span_labels``)."""
        out = []
        for windows, length in zip(self.windows, self.lengths):
            xx = torch.tensor(windows, dtype=torch.float32) / (length * self.clip_len)
            xx = xx.clamp(0.0, 1.0)
            out.append(torch.stack([xx.mean(1), xx[:, 1] - xx[:, 0]], dim=1))
        return out

    def momentkit_batch(self, order: Sequence[str], label_scale: float = 3.0) -> dict[str, Any]:
        """momentkit's batch dict (``momentkit.data.loader.collate`` conventions) of the same
        tensors; ``label_scale`` divides the summed saliency into momentkit's mean."""
        return {
            "video_feats": self.video(order),
            "video_mask": self.video_mask,
            "text_feats": self.text,
            "text_mask": self.text_mask,
            "duration": self.duration,
            "clip_len": self.clip_len,
            "qids": list(self.qids),
            "vids": [f"v{q}" for q in self.qids],
            "span_targets": [{"spans": s} for s in self.spans()],
            "saliency_all_labels": self.saliency / label_scale,
            "saliency_pos_labels": self.pos,
            "saliency_neg_labels": self.neg,
        }


def _normalised(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def make_videos(
    batch: int,
    clips: int = 75,
    tokens: int = 32,
    seed: int = 0,
    *,
    clip_len: float = 2.0,
    short_every: int = 4,
    min_tokens: int = 8,
    qid_start: int = 0,
    stream_dims: dict[str, int] | None = None,
    text_dim: int = TEXT_DIM,
) -> Videos:
    """A batch shaped like QVHighlights training: ``batch`` videos of ``clips`` clips except
    every ``short_every``-th (the 4th, 8th, ...), which has ``clips - 15`` to ``clips - 1``;
    queries of ``min_tokens`` to ``tokens`` tokens; 1-2 relevant windows per video."""
    g = torch.Generator().manual_seed(seed)
    dims = stream_dims or STREAM_DIMS

    def randint(low: int, high: int) -> int:  # [low, high]
        return int(torch.randint(low, high + 1, (1,), generator=g))

    lengths = [
        randint(max(1, clips - 15), clips - 1) if short_every and i % short_every == 3 else clips
        for i in range(batch)
    ]
    words = [randint(min(min_tokens, tokens), tokens) for _ in range(batch)]
    video_mask = torch.arange(clips)[None] < torch.tensor(lengths)[:, None]
    text_mask = torch.arange(tokens)[None] < torch.tensor(words)[:, None]
    streams = {
        name: _normalised(torch.randn(batch, clips, d, generator=g)) * video_mask[..., None]
        for name, d in dims.items()
    }
    start = torch.arange(clips)[None].float() / torch.tensor(lengths)[:, None]
    tef = torch.stack([start, start + 1.0 / torch.tensor(lengths)[:, None]], -1)
    tef = tef * video_mask[..., None]
    text = _normalised(torch.randn(batch, tokens, text_dim, generator=g)) * text_mask[..., None]
    windows, saliency = [], torch.zeros(batch, clips)
    pos, neg = torch.zeros(batch, 2, dtype=torch.long), torch.zeros(batch, 2, dtype=torch.long)
    for i, length in enumerate(lengths):
        mine, relevant = [], torch.zeros(length, dtype=torch.bool)
        for _ in range(1 + (i % 3 == 0)):
            width = randint(1, max(1, min(12, length // 3)))
            first = randint(0, length - width)
            mine.append([first * clip_len, (first + width) * clip_len])
            relevant[first : first + width] = True
        windows.append(mine)
        scores = torch.randint(0, 5, (length, 3), generator=g).sum(1).float()
        saliency[i, :length] = scores * relevant
        order = (saliency[i, :length] + 0.5 * relevant).argsort(descending=True, stable=True)
        pos[i] = order[:2] if length > 1 else order[0]
        neg[i] = order[-2:] if length > 1 else order[0]
    return Videos(
        streams, tef, video_mask, text, text_mask, windows, saliency, pos, neg, clip_len,
        list(range(qid_start, qid_start + batch)),
    )  # fmt: skip
