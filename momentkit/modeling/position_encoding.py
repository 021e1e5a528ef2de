"""Position encodings: sinusoidal (fixed) and learned.

All sinusoidal encodings share :func:`sine_encoding`, the DETR convention: channel pairs
``(sin(x / t_i), cos(x / t_i))`` with ``t_i = temperature ** (2 * i / num_feats)``, interleaved
as ``[sin_0, cos_0, sin_1, cos_1, ...]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sine_encoding(values: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """Sinusoidal features of scalar positions.

    Args:
        values: ``(...)`` positions (already scaled, e.g. to ``[0, 2*pi]``).
        num_feats: output channels (even).
        temperature: wavelength base.

    Returns:
        ``(..., num_feats)``: channel ``2i`` is ``sin(v / T**(2i/num_feats))`` and ``2i + 1`` the
        cosine of the same argument.
    """
    if num_feats % 2:
        raise ValueError(f"num_feats must be even, got {num_feats}")
    half = torch.arange(num_feats // 2, dtype=torch.float32, device=values.device)
    inv_freq = temperature ** (-2.0 * half / num_feats)  # (num_feats / 2,)
    angles = values.float()[..., None] * inv_freq  # (..., num_feats / 2)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)


def span_sine_encoding(spans: Tensor, d_model: int, temperature: float = 10000.0) -> Tensor:
    """Sinusoidal encoding of normalised ``(center, width)`` anchors (DAB-DETR / QD-DETR).

    Args:
        spans: ``(..., 2)`` anchors in ``[0, 1]``.
        d_model: output channels; each coordinate gets ``d_model / 2``.

    Returns:
        ``(..., d_model)``: ``[enc(2*pi*center), enc(2*pi*width)]``.
    """
    scaled = spans * (2 * math.pi)
    return torch.cat(
        [
            sine_encoding(scaled[..., 0], d_model // 2, temperature),
            sine_encoding(scaled[..., 1], d_model // 2, temperature),
        ],
        dim=-1,
    )


class PositionEmbeddingSine(nn.Module):
    """Fixed sinusoidal encoding of clip positions (Moment-DETR's video encoding).

    Positions are the running count of valid clips; with ``normalize`` they are divided by the
    number of valid clips and scaled to ``(0, 2*pi]``, so the encoding spans the video whatever
    its length. Padded clips repeat the last valid position.
    """

    def __init__(
        self,
        num_feats: int,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float = 2 * math.pi,
    ) -> None:
        super().__init__()
        self.num_feats = num_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, mask: Tensor) -> Tensor:
        """``mask`` ``(B, T)`` bool (True = valid) -> ``(B, T, num_feats)``."""
        positions = mask.cumsum(1, dtype=torch.float32)  # (B, T), 1-based
        if self.normalize:
            positions = positions / (positions[:, -1:] + 1e-6) * self.scale
        return sine_encoding(positions, self.num_feats, self.temperature)


class PositionEmbeddingLearned(nn.Module):
    """A learned table of absolute positions ``0 .. max_len - 1``."""

    def __init__(self, max_len: int, num_feats: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(max_len, num_feats)
        nn.init.uniform_(self.embed.weight)

    def forward(self, mask: Tensor) -> Tensor:
        """``mask`` ``(B, T)`` -> ``(B, T, num_feats)`` (the same rows for every item)."""
        batch, length = mask.shape
        if length > self.embed.num_embeddings:
            raise ValueError(
                f"sequence of {length} positions but the learned table holds "
                f"{self.embed.num_embeddings}; raise max_len in the model config"
            )
        return self.embed.weight[:length].unsqueeze(0).expand(batch, -1, -1)


def build_position_encoding(kind: str, num_feats: int, max_len: int) -> nn.Module:
    """The video position encoding ``kind``: ``"sine"`` or ``"learned"``."""
    if kind == "sine":
        return PositionEmbeddingSine(num_feats, normalize=True)
    if kind == "learned":
        return PositionEmbeddingLearned(max_len, num_feats)
    raise ValueError(f"unknown position encoding '{kind}'; use 'sine' or 'learned'")
