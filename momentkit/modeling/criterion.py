"""The set criterion: Hungarian matching + named, weighted losses (DETR's ``SetCriterion``).

``criterion(outputs, batch)`` returns every weighted loss term (``loss_span``, ``loss_giou``,
``loss_label``, ``loss_saliency_margin``, ...; auxiliary-layer terms get a ``_<layer>`` suffix,
``loss_span_0`` for the first decoder layer) plus their sum under ``loss``, the tensor to
back-propagate. Which losses run is ``LossConfig.losses``; each name is looked up in
:data:`momentkit.modeling.losses.LOSSES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

# registers the "distill_align" loss (term ``loss_align``) that the default weights name
from momentkit.modeling import distill_align as _distill_align  # noqa: F401
from momentkit.modeling.losses import LOSSES, LossSpec, span_targets
from momentkit.modeling.matcher import HungarianMatcher, Indices, MatcherConfig


def _default_losses() -> list[str]:
    return ["spans", "labels", "saliency_margin"]


def _default_weights() -> dict[str, float]:
    return {
        "loss_span": 10.0,
        "loss_giou": 1.0,
        "loss_label": 4.0,
        "loss_saliency_margin": 1.0,
        "loss_saliency_rank": 1.0,
        "loss_saliency_neg": 1.0,
        "loss_saliency_ce": 1.0,
        "loss_align": 0.6,
    }


@dataclass
class LossConfig:
    """Which losses to compute and how to weigh them (Moment-DETR defaults).

    Attributes:
        losses: names registered in :data:`~momentkit.modeling.losses.LOSSES`.
        weights: weight of each loss term; auxiliary-layer terms share their final-layer weight.
            A term with weight 0 is left out (and not computed when all terms of its loss are).
        aux_loss: also apply per-layer losses to every intermediate decoder layer.
        eos_coef: cross-entropy weight of the background ("no object") class.
        focal_gamma: focusing exponent of ``labels_focal``.
        saliency_margin: hinge margin of ``saliency_margin``.
        rank_tau: temperature of ``saliency_rank_contrastive``.
        rank_label_scale: factor from ``saliency_all_labels`` (annotator mean) to the label scale
            QD-DETR thresholds (annotator sum: 3 on QVHighlights).
        rank_num_thresholds: rank thresholds ``1 .. K`` of ``saliency_rank_contrastive``.
        neg_pair_form: how ``saliency_neg_pair`` computes ``-log(1 - sigmoid(s))``:
            ``softplus`` (``softplus(s)``, the same value without overflow) or ``log_sigmoid``
            (literally, as QD-DETR's released code: in float32 it loses precision for
            ``s`` above ~8 and is infinite from ~17).
    """

    losses: list[str] = field(default_factory=_default_losses)
    weights: dict[str, float] = field(default_factory=_default_weights)
    aux_loss: bool = True
    eos_coef: float = 0.1
    focal_gamma: float = 2.0
    saliency_margin: float = 0.2
    rank_tau: float = 0.5
    rank_label_scale: float = 3.0
    rank_num_thresholds: int = 11
    neg_pair_form: str = "softplus"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the offending ``loss.*`` field."""
        known = LOSSES.names()
        for name in self.losses:
            if name not in LOSSES:
                raise ValueError(f"loss.losses: unknown loss '{name}'; known: {', '.join(known)}")
        terms = {t for n in known for t in LOSSES.get(n).terms}
        unknown = sorted(set(self.weights) - terms)
        if unknown:
            raise ValueError(
                f"loss.weights: unknown loss term(s) {unknown}; known terms: {sorted(terms)}"
            )
        for name in self.losses:
            missing = [t for t in LOSSES.get(name).terms if t not in self.weights]
            if missing:
                raise ValueError(f"loss.weights: no weight for {missing} (needed by loss '{name}')")
        checks = {
            "eos_coef": self.eos_coef >= 0,
            "focal_gamma": self.focal_gamma >= 0,
            "saliency_margin": self.saliency_margin >= 0,
            "rank_tau": self.rank_tau > 0,
            "rank_label_scale": self.rank_label_scale > 0,
            "rank_num_thresholds": self.rank_num_thresholds >= 1,
            "neg_pair_form": self.neg_pair_form in ("softplus", "log_sigmoid"),
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"loss.{name}: out of range ({getattr(self, name)!r})")


def layer_suffix(layer: int | None) -> str:
    """Term-name suffix of decoder layer ``layer`` (``None``: the final layer, no suffix)."""
    return "" if layer is None else f"_{layer}"


class SetCriterion(nn.Module):
    """Computes the weighted training losses of a DETR-style moment model.

    Args:
        loss: which losses and weights.
        matcher: matching cost weights.
    """

    def __init__(
        self, loss: LossConfig | None = None, matcher: MatcherConfig | None = None
    ) -> None:
        super().__init__()
        self.config = loss or LossConfig()
        self.config.validate()
        self.matcher = HungarianMatcher(matcher)
        self.specs: dict[str, LossSpec] = {name: LOSSES.get(name) for name in self.config.losses}

    def _active(self, spec: LossSpec) -> bool:
        return any(self.config.weights[t] != 0 for t in spec.terms)

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, Tensor]:
        """Weighted loss terms and their total.

        Args:
            outputs: model outputs (``pred_logits``, ``pred_spans``, ``saliency_scores``,
                optional ``aux_outputs``, ...).
            batch: the batch dict; losses whose targets are absent are skipped.

        Returns:
            ``{term: weight * value}`` for every computed term, plus ``loss``: their sum.
        """
        specs = [s for s in self.specs.values() if self._active(s)]
        has_spans = "span_targets" in batch
        layers: list[tuple[int | None, dict[str, Any]]] = [(None, outputs)]
        if self.config.aux_loss:
            layers += list(enumerate(outputs.get("aux_outputs", [])))
        indices: list[Indices] = [[] for _ in layers]
        if has_spans and any(s.needs_matching for s in specs):
            indices = self.match(layers, span_targets(batch))

        weighted: dict[str, Tensor] = {}
        for spec in specs:
            if spec.needs_matching and not has_spans:
                continue
            targets = layers if spec.per_layer else layers[:1]
            for (layer, out), idx in zip(targets, indices):
                for term, value in spec.fn(out, batch, idx, self.config).items():
                    weight = self.config.weights[term]
                    if weight != 0:
                        weighted[term + layer_suffix(layer)] = weight * value
        if not weighted:
            raise ValueError(
                "no loss could be computed: the batch has none of the targets the configured "
                f"losses {self.config.losses} need (span_targets / saliency labels)"
            )
        weighted["loss"] = sum(weighted.values())  # type: ignore[assignment]
        return weighted

    def match(
        self, layers: list[tuple[int | None, dict[str, Any]]], targets: list[Tensor]
    ) -> list[Indices]:
        """Hungarian matching of every layer's predictions, costs computed in one batch."""
        logits = torch.stack([out["pred_logits"] for _, out in layers]).detach()
        spans = torch.stack([out["pred_spans"] for _, out in layers]).detach()
        return self.matcher.match_layers(logits, spans, targets)
