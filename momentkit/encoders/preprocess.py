"""Image preprocessing in torch: resize, centre crop, normalise (no PIL, no torchvision)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ImageTransform:
    """Resize then centre-crop then normalise ``uint8`` RGB images for a vision model.

    Attributes:
        resize: an ``int`` resizes the shorter side to it (aspect ratio kept); a pair
            ``(height, width)`` resizes to exactly that size.
        crop: side of the centre square crop, or ``None`` for no crop.
        mean, std: per-channel normalisation of pixels scaled to ``[0, 1]``.
    """

    resize: int | tuple[int, int]
    crop: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def short_side(self) -> int:
        """The shorter side the decoder should deliver so that no detail is thrown away."""
        return self.resize if isinstance(self.resize, int) else min(self.resize)

    def __call__(self, images: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
        """``(B, H, W, 3)`` uint8 -> ``(B, 3, h, w)`` float32 model input on ``device``."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        h, w = x.shape[-2:]
        if isinstance(self.resize, int):
            scale = self.resize / min(h, w)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
        else:
            size = self.resize
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
            x = x.clamp_(0.0, 1.0)
        if self.crop is not None:
            x = center_crop(x, self.crop)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The centre ``size x size`` window of ``(B, C, H, W)`` images (zero-padded if smaller)."""
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def as_triple(values: Sequence[float] | float) -> tuple[float, float, float]:
    """A per-channel triple from a list of 3 values or one value for every channel."""
    if isinstance(values, int | float):
        return (float(values),) * 3
    v = [float(x) for x in values]
    if len(v) != 3:
        raise ValueError(f"expected 3 per-channel values, got {v}")
    return (v[0], v[1], v[2])
