"""Predictors: search videos with queries (trained checkpoints, zero-shot), and baselines."""

from momentkit.inference.predictor import ModelScorer, Predictor, PredictorError, Scorer
from momentkit.inference.results import Moment, QueryResult, VideoEncoding
from momentkit.inference.similarity import SimilarityBaseline
from momentkit.inference.zero_shot import ZeroShotScorer

__all__ = [
    "ModelScorer",
    "Moment",
    "Predictor",
    "PredictorError",
    "QueryResult",
    "Scorer",
    "SimilarityBaseline",
    "VideoEncoding",
    "ZeroShotScorer",
]
