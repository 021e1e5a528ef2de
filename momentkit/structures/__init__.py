"""Span structures: the temporal analogue of detectron2's boxes."""

from momentkit.structures.spans import (
    clip_ids_to_windows,
    generalized_temporal_iou,
    paired_generalized_temporal_iou,
    paired_temporal_iou,
    span_cxw_to_xx,
    span_xx_to_cxw,
    temporal_iou,
    window_to_clip_ids,
    windows_to_clip_ids,
)

__all__ = [
    "clip_ids_to_windows",
    "generalized_temporal_iou",
    "paired_generalized_temporal_iou",
    "paired_temporal_iou",
    "span_cxw_to_xx",
    "span_xx_to_cxw",
    "temporal_iou",
    "window_to_clip_ids",
    "windows_to_clip_ids",
]
