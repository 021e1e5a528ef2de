"""Annotation and prediction records, dataset loaders and the synthetic benchmark."""

from momentkit.data.records import (
    MomentAnnotation,
    MomentPrediction,
    load_annotations,
    load_predictions,
    save_annotations,
    save_predictions,
)

__all__ = [
    "MomentAnnotation",
    "MomentPrediction",
    "load_annotations",
    "load_predictions",
    "save_annotations",
    "save_predictions",
]
