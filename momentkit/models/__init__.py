"""The papers' models, each a short composition of :mod:`momentkit.modeling` blocks.

Importing this package registers every model in :data:`MODELS`.
"""

from momentkit.models.base import (
    MODELS,
    DETRConfig,
    ModelConfig,
    MomentModel,
    build_criterion,
    build_model,
    config_from_dict,
)
from momentkit.models.moment_detr import MomentDETR, MomentDETRConfig
from momentkit.models.qd_detr import QDDETR, QDDETRConfig

__all__ = [
    "MODELS",
    "DETRConfig",
    "ModelConfig",
    "MomentModel",
    "MomentDETR",
    "MomentDETRConfig",
    "QDDETR",
    "QDDETRConfig",
    "build_criterion",
    "build_model",
    "config_from_dict",
]
