"""Temporal endpoint features (TEF), as Moment-DETR appends them to video features.

Clip ``i`` of a ``T``-clip video gets ``(i / T, (i + 1) / T)``: where it starts and ends as a
fraction of the (possibly truncated) video. With QVHighlights' 2816 feature channels this gives
the 2818-channel input of Moment-DETR and its successors.
"""

from __future__ import annotations

import numpy as np

TEF_DIM = 2


def temporal_endpoint_features(num_clips: int) -> np.ndarray:
    """``(num_clips, 2)`` float32: column 0 is ``arange(T) / T``, column 1 adds ``1 / T``.

    Computed in float32 exactly as Moment-DETR's ``torch.arange(0, T, 1.0) / T`` does.
    """
    if num_clips < 0:
        raise ValueError(f"num_clips must be >= 0, got {num_clips}")
    out = np.empty((num_clips, TEF_DIM), np.float32)
    if num_clips:
        start = np.arange(num_clips, dtype=np.float32) / np.float32(num_clips)
        out[:, 0] = start
        out[:, 1] = start + np.float32(1.0 / num_clips)
    return out


def append_tef(features: np.ndarray) -> np.ndarray:
    """``(T, D)`` features -> ``(T, D + 2)`` with the TEF as the last two channels."""
    tef = temporal_endpoint_features(features.shape[0])
    return np.concatenate([features.astype(np.float32, copy=False), tef], axis=1)
