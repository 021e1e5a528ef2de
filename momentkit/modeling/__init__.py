"""Shared building blocks of the DETR-style models.

One implementation each, reused by every model in :mod:`momentkit.models`:

- :mod:`~momentkit.modeling.dropout`: dropout with cheap exact Bernoulli masks on CPU;
- :mod:`~momentkit.modeling.attention`: multi-head attention (one attention kernel);
- :mod:`~momentkit.modeling.transformer`: encoder / cross-attention / decoder layers and stacks
  (pre- or post-norm);
- :mod:`~momentkit.modeling.anchor_decoder`: DAB-style anchor decoder (QD-DETR, LD-DETR; with
  given content queries and a query self-attention mask: MS-DETR, SG-DETR);
- :mod:`~momentkit.modeling.position_encoding`: sine and learned position encodings;
- :mod:`~momentkit.modeling.mlp`: MLP heads and input projections;
- :mod:`~momentkit.modeling.heads`: the span/class prediction head;
- :mod:`~momentkit.modeling.matcher`: Hungarian matcher;
- :mod:`~momentkit.modeling.losses`: named loss functions (registry ``LOSSES``);
- :mod:`~momentkit.modeling.criterion`: ``SetCriterion`` (matching + weighted losses);
- :mod:`~momentkit.modeling.postprocess`: outputs -> ``MomentPrediction`` in seconds.
"""

from momentkit.modeling.criterion import LossConfig, SetCriterion
from momentkit.modeling.losses import LOSSES, register_loss
from momentkit.modeling.matcher import HungarianMatcher, MatcherConfig
from momentkit.modeling.postprocess import PostProcessor, postprocess

__all__ = [
    "LOSSES",
    "HungarianMatcher",
    "LossConfig",
    "MatcherConfig",
    "PostProcessor",
    "SetCriterion",
    "postprocess",
    "register_loss",
]
