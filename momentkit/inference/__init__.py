"""Predictors: turn features (and later videos) into moment predictions."""

from momentkit.inference.similarity import SimilarityBaseline

__all__ = ["SimilarityBaseline"]
