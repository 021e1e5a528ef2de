"""MS-DETR's losses on the negative video-text pairs' decoding (the official release).

In training every video is also paired with the next video's query (QD-DETR's negative pair).
Beyond the saliency of those pairs (``saliency_neg_pair``), the release decodes them too and
calls every prediction "no moment":

- ``decoder_negatives`` (``loss_label_neg``, per decoder layer; the release's
  ``--use_decoder_neg``, added to its ``loss_label``): cross-entropy of every matching query of
  a negative pair against the background class (``eos_coef`` weighting, mean over queries);
- ``query_selection_negatives`` (``loss_enc_label_neg``; ``--interm_neg``, weight
  ``loss_label_interm_neg`` = the selection's label weight): the same on the class logits of the
  ``K`` proposals selected from a negative pair.

A model puts ``pred_logits_neg`` ``(B, Q, 2)`` into its output and every ``aux_outputs`` entry,
and ``enc_outputs_neg = {"pred_logits": (B, K, 2)}`` into its output; the losses are skipped
without them (evaluation, switches off).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from momentkit.modeling.losses import BACKGROUND, register_loss
from momentkit.modeling.matcher import Indices

if TYPE_CHECKING:
    from momentkit.modeling.criterion import LossConfig


def background_cross_entropy(logits: Tensor, eos_coef: float) -> Tensor:
    """Mean over ``(B, Q)`` of the cross-entropy of ``logits`` ``(B, Q, 2)`` against the
    background class, the class weighted ``eos_coef`` (as Moment-DETR's label loss)."""
    weight = logits.new_ones(2)
    weight[BACKGROUND] = eos_coef
    target = torch.full(logits.shape[:2], BACKGROUND, dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.transpose(1, 2), target, weight, reduction="none").mean()


@register_loss("decoder_negatives", ("loss_label_neg",), per_layer=True)
def loss_decoder_negatives(
    outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
) -> dict[str, Tensor]:
    """Background cross-entropy of the negative pairs' decoded queries (``pred_logits_neg``)."""
    if "pred_logits_neg" not in outputs:
        return {}
    return {"loss_label_neg": background_cross_entropy(outputs["pred_logits_neg"], config.eos_coef)}


@register_loss("query_selection_negatives", ("loss_enc_label_neg",))
def loss_query_selection_negatives(
    outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
) -> dict[str, Tensor]:
    """Background cross-entropy of the negative pairs' selected proposals
    (``enc_outputs_neg["pred_logits"]``)."""
    enc = outputs.get("enc_outputs_neg")
    if enc is None:
        return {}
    return {"loss_enc_label_neg": background_cross_entropy(enc["pred_logits"], config.eos_coef)}
