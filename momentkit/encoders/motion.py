"""A cheap motion stream for two-stream models: ``motion`` or ``motion:K``.

Not a learned model: frame-difference statistics. Each clip is sampled at ``K`` instants
(default 8), converted to grey at a 64-pixel shorter side, and the absolute differences of
consecutive samples ``|f[j+1] - f[j]|`` (values in [0, 1]) are summarised on a ``G x G`` grid
(default 4 x 4) of cells. Per cell, over the ``K - 1`` differences:

* ``mean``: the mean absolute difference (how much the cell changes on average);
* ``peak``: the largest per-difference cell mean (the strongest burst of motion);
* ``moving``: the fraction of pixels whose difference exceeds ``threshold`` (how much of the
  cell moves).

The ``motion`` stream is these ``3 * G * G`` values per clip, in that order (48 by default).
It stands where SlowFast features stand in two-stream models (QVHighlights' ``slowfast``),
at a tiny fraction of the cost.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from momentkit.encoders.base import Encoder, EncoderError
from momentkit.video.decode import FrameRequest

# ITU-R BT.601 luma weights.
_LUMA = (0.299, 0.587, 0.114)


class MotionEncoder(Encoder):
    """Frame-difference statistics per clip (see the module doc).

    Args:
        frames_per_clip: ``K >= 2`` samples per clip.
        grid: ``G``, cells per side.
        short_side: decoding size (shorter side, pixels).
        threshold: absolute grey-level difference above which a pixel counts as moving.
        device: torch device.
    """

    def __init__(
        self,
        frames_per_clip: int = 8,
        *,
        grid: int = 4,
        short_side: int = 64,
        threshold: float = 0.05,
        device: str = "cpu",
    ) -> None:
        if frames_per_clip < 2:
            raise EncoderError(f"motion needs at least 2 frames per clip, got {frames_per_clip}")
        if grid < 1 or short_side < grid:
            raise EncoderError(f"need 1 <= grid <= short_side, got grid={grid}, {short_side=}")
        self.name = f"motion:{frames_per_clip}"
        self.grid, self.threshold, self.device = grid, threshold, device
        self.frame_request = FrameRequest(frames_per_clip, short_side)
        self.video_streams = {"motion": 3 * grid * grid}

    @torch.inference_mode()
    def encode_clips(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """``(T, K, H, W, 3)`` uint8 -> ``{"motion": (T, 3 * G * G)}`` float32."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).float() / 255.0
        luma = torch.tensor(_LUMA, device=x.device)
        grey = x @ luma  # (T, K, H, W)
        diff = (grey[:, 1:] - grey[:, :-1]).abs()  # (T, K-1, H, W)
        t, d = diff.shape[:2]
        g = self.grid
        cells = F.adaptive_avg_pool2d(diff.reshape(t * d, 1, *diff.shape[2:]), g)
        cells = cells.reshape(t, d, g * g)
        moving = (diff > self.threshold).float().reshape(t * d, 1, *diff.shape[2:])
        moving = F.adaptive_avg_pool2d(moving, g).reshape(t, d, g * g)
        features = torch.cat([cells.mean(1), cells.amax(1), moving.mean(1)], dim=1)
        return {"motion": features.cpu().numpy().astype(np.float32)}
