"""Feature stores: per-item ``.npz`` directories, the packed memory-mapped store, TEF.

Every store maps a key (video id, or ``qid<qid>`` for queries) to ``(L, D)`` float32 features;
:func:`open_feature_store` opens either kind, so every command accepts both.
"""

from momentkit.features.base import DEFAULT_FIELDS, FeatureStore, text_key
from momentkit.features.loading import open_feature_store
from momentkit.features.npz import NpzFeatureStore
from momentkit.features.packed import PackedFeatureStore, is_packed_store, pack_features
from momentkit.features.streams import TextFeatureSource, VideoFeatureSource, l2_normalize
from momentkit.features.tef import TEF_DIM, append_tef, temporal_endpoint_features

__all__ = [
    "DEFAULT_FIELDS",
    "TEF_DIM",
    "FeatureStore",
    "NpzFeatureStore",
    "PackedFeatureStore",
    "TextFeatureSource",
    "VideoFeatureSource",
    "append_tef",
    "is_packed_store",
    "l2_normalize",
    "open_feature_store",
    "pack_features",
    "temporal_endpoint_features",
    "text_key",
]
