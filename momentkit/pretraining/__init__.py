"""Pretraining data: pseudo-labelled moments from captioned clips (``momentkit pseudo-label``)."""

from momentkit.pretraining.pseudo_label import (
    Caption,
    PseudoLabel,
    PseudoLabelConfig,
    PseudoLabelReport,
    clip_similarities,
    grade_clips,
    interval_threshold,
    label_corpus,
    load_captions,
    positive_clips,
    positive_runs,
    pseudo_label,
)

__all__ = [
    "Caption",
    "PseudoLabel",
    "PseudoLabelConfig",
    "PseudoLabelReport",
    "clip_similarities",
    "grade_clips",
    "interval_threshold",
    "label_corpus",
    "load_captions",
    "positive_clips",
    "positive_runs",
    "pseudo_label",
]
