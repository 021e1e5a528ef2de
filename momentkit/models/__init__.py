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
from momentkit.models.ld_detr import LDDETR, LDDETRConfig
from momentkit.models.moment_detr import MomentDETR, MomentDETRConfig
from momentkit.models.ms_detr import MSDETR, MSDETRConfig
from momentkit.models.qd_detr import QDDETR, QDDETRConfig
from momentkit.models.sg_detr import SGDETR, SGDETRConfig
from momentkit.models.trimming import ClipTrimming, ClipTrimmingConfig  # noqa: F401
from momentkit.models.unimd import UniMD, UniMDConfig

__all__ = [
    "MODELS",
    "DETRConfig",
    "LDDETR",
    "LDDETRConfig",
    "ModelConfig",
    "MomentModel",
    "MomentDETR",
    "MomentDETRConfig",
    "MSDETR",
    "MSDETRConfig",
    "QDDETR",
    "QDDETRConfig",
    "SGDETR",
    "SGDETRConfig",
    "UniMD",
    "UniMDConfig",
    "build_criterion",
    "build_model",
    "config_from_dict",
]
