"""Prediction heads turning decoder outputs into the DETR output dict."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from momentkit.modeling.anchor_decoder import inverse_sigmoid
from momentkit.modeling.linear import Linear
from momentkit.modeling.mlp import MLP


class SpanHead(nn.Module):
    """Foreground/background classifier + span regressor shared by all decoder layers.

    Produces ``pred_logits`` ``(B, Q, 2)`` (class 0 = foreground), ``pred_spans`` ``(B, Q, 2)``
    (normalised ``(center, width)`` after a sigmoid) and, for deep supervision, ``aux_outputs``
    with the same two keys for every earlier decoder layer.
    """

    def __init__(self, d_model: int, span_layers: int = 3) -> None:
        super().__init__()
        self.class_embed = Linear(d_model, 2)
        self.span_embed = MLP(d_model, d_model, 2, span_layers)

    def forward(
        self, hs: Tensor, references: Tensor | None = None, aux: bool = True
    ) -> dict[str, Any]:
        """Predict from decoder outputs.

        Args:
            hs: ``(num_layers, B, Q, d)`` decoder layer outputs.
            references: ``(num_layers, B, Q, 2)`` anchors in ``[0, 1]``; when given, the
                regressor predicts offsets to them in logit space (anchor decoders).
            aux: also return ``aux_outputs`` for the ``num_layers - 1`` earlier layers.

        Returns:
            ``{"pred_logits", "pred_spans"[, "aux_outputs"]}``.
        """
        if not aux:
            hs = hs[-1:]
            references = references[-1:] if references is not None else None
        logits = self.class_embed(hs)
        spans = self.span_embed(hs)
        if references is not None:
            spans = spans + inverse_sigmoid(references)
        spans = spans.sigmoid()
        out: dict[str, Any] = {"pred_logits": logits[-1], "pred_spans": spans[-1]}
        if aux:
            out["aux_outputs"] = [
                {"pred_logits": a, "pred_spans": b} for a, b in zip(logits[:-1], spans[:-1])
            ]
        return out
