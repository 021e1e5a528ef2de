"""Predictors: search videos with queries (trained checkpoints, zero-shot), and baselines.

Names are imported on first use (PEP 562), so that ``from momentkit.inference import
QueryResult`` or zero-shot search does not import PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "ModelScorer": "momentkit.inference.model_scorer",
    "Moment": "momentkit.inference.results",
    "Predictor": "momentkit.inference.predictor",
    "PredictorError": "momentkit.inference.predictor",
    "QueryResult": "momentkit.inference.results",
    "Scorer": "momentkit.inference.predictor",
    "SimilarityBaseline": "momentkit.inference.similarity",
    "VideoEncoding": "momentkit.inference.results",
    "ZeroShotScorer": "momentkit.inference.zero_shot",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'momentkit.inference' has no attribute '{name}'")
    return getattr(importlib.import_module(_NAMES[name]), name)
