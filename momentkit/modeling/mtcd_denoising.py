"""MS-DETR's denoising queries as the official release builds them (snailma0229/MS-DETR).

:func:`momentkit.modeling.denoising.build_denoising_queries` draws the same noise (each edge of a
ground-truth span moved by ``sign * u * span_noise * w / 2``, ``u ~ U[0, 1)`` for positives and
``U[1, 2)`` for negatives) in its own order and always adds negatives. The release differs in
what it can be switched to (``MSDETRConfig.denoising_negatives`` / ``denoising_targets``):

- *positive-only groups* (``train.sh`` passes no ``--use_dn_neg``): ``G`` groups of ``M`` slots,
  query ``d = g * M + k`` the noised copy of target ``k``; with negatives the layout is the shared
  one, ``d = g * 2M + k`` (positive) and ``g * 2M + M + k`` (negative);
- the noise is drawn for the ground-truth spans of the whole batch concatenated (video by video),
  repeated group after group, ``(N, 2)`` with ``N = blocks * S`` (``blocks = G`` or ``2G``, ``S``
  targets in the batch): first the label noise (when on), then the signs, then the magnitudes.
  :func:`denoising_noise` draws them and is the one seam tests replace to feed the release's
  draws;
- noised edges are clamped to ``[0, 1]`` and not re-ordered;
- ``"last_video"`` targets: the release's ``get_dn_targets`` (``ms_detr/inference_cg.py``) builds
  one dict outside its loop, so every video of a batch reconstructs the *last* video's spans.

The result is a :class:`~momentkit.modeling.denoising.DenoisingQueries` (same fields, so the
shared decoder masks and ``denoising`` loss apply). Shapes: ``B`` videos, ``D`` denoising
queries, ``Q`` matching queries.
"""

from __future__ import annotations

import torch
from torch import Tensor

from momentkit.modeling.denoising import (
    NEGATIVE,
    POSITIVE,
    DenoisingConfig,
    DenoisingQueries,
    denoising_attn_mask,
)
from momentkit.structures.spans import span_cxw_to_xx, span_xx_to_cxw

#: which ground-truth spans the denoising groups reconstruct (see the module docstring)
TARGET_MODES = ("own", "last_video")


def denoising_noise(
    shape: tuple[int, int], generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """The release's box-noise draws for ``shape = (N, 2)`` edges: ``(sign, magnitude)``.

    ``sign`` is ``+-1`` (a ``{0, 1}`` integer draw mapped to ``2x - 1``), ``magnitude``
    ``U[0, 1)``, drawn in this order (the release's ``randint_like`` then ``rand_like``).
    """
    sign = torch.randint(0, 2, shape, generator=generator).float() * 2.0 - 1.0
    magnitude = torch.rand(shape, generator=generator)
    return sign, magnitude


def release_denoising_queries(
    targets: list[dict[str, Tensor]],
    cfg: DenoisingConfig,
    num_queries: int,
    *,
    negatives: bool,
    target_mode: str = "own",
    generator: torch.Generator | None = None,
) -> DenoisingQueries:
    """Denoising queries in the release's layout and noise order.

    Args:
        targets: per video ``{"spans": (n_i, 2) cxw in [0, 1]}`` (the batch's ``span_targets``).
        cfg: groups, box noise (``span_noise``), label noise, focal alpha.
        num_queries: ``Q``, matching queries that follow the denoising ones in the decoder.
        negatives: add a negative copy of every target to each group (``--use_dn_neg``).
        target_mode: ``"own"`` or ``"last_video"`` (:data:`TARGET_MODES`).
        generator: source of the noise (``None``: torch's default generator).

    Returns:
        :class:`DenoisingQueries` on the targets' device; ``D = 0`` when the batch has no
        target (the release then builds no denoising query either).
    """
    cfg.validate()
    if target_mode not in TARGET_MODES:
        raise ValueError(f"denoising target_mode must be one of {TARGET_MODES}, got {target_mode}")
    device = targets[0]["spans"].device if targets else torch.device("cpu")
    spans = [t["spans"].detach().float().cpu().reshape(-1, 2) for t in targets]
    if target_mode == "last_video" and spans:
        spans = [spans[-1]] * len(spans)
    b, g = len(spans), cfg.num_groups
    counts = [len(s) for s in spans]
    m, total = max(counts, default=0), sum(counts)
    per_group = 2 if negatives else 1
    blocks = g * per_group
    d = blocks * m
    boxes = torch.cat(spans) if total else torch.zeros(0, 2)  # (S, 2)
    video = torch.cat([torch.full((n,), i) for i, n in enumerate(counts)]) if total else boxes
    slot = torch.cat([torch.arange(n) for n in counts]) if total else boxes
    known = boxes.repeat(blocks, 1)  # (N, 2), block-major
    block = torch.arange(blocks).repeat_interleave(total)  # (N,)
    is_negative = (block % per_group == 1) if negatives else torch.zeros_like(block, dtype=bool)

    input_labels = torch.full((len(known),), POSITIVE, dtype=torch.long)
    if cfg.label_noise > 0:  # drawn before the box noise, as the release
        flip = torch.rand(len(known), generator=generator) < cfg.label_noise
        chosen = flip.nonzero().squeeze(1)
        input_labels[chosen] = torch.randint(0, 2, (len(chosen),), generator=generator)
    sign, magnitude = denoising_noise((len(known), 2), generator)
    magnitude = magnitude + is_negative[:, None].float()
    half_width = known[:, 1:2] / 2
    noised = span_cxw_to_xx(known) + sign * magnitude * half_width * cfg.span_noise
    noised = span_xx_to_cxw(noised.clamp(0.0, 1.0))  # edges not re-ordered (as the release)

    rows = video.repeat(blocks).long()
    cols = (block * m + slot.repeat(blocks)).long()
    out_spans = torch.zeros(b, d, 2)
    out_targets = torch.zeros(b, d, 2)
    labels = torch.full((b, d), POSITIVE, dtype=torch.long)
    valid = torch.zeros(b, d, dtype=torch.bool)
    group_targets = torch.full((b, d), -1, dtype=torch.long)
    in_labels = torch.full((b, d), POSITIVE, dtype=torch.long)
    out_spans[rows, cols] = noised
    out_targets[rows, cols] = known
    labels[rows, cols] = torch.where(is_negative, NEGATIVE, POSITIVE)
    valid[rows, cols] = True
    group_targets[rows, cols] = slot.repeat(blocks).long()
    in_labels[rows, cols] = input_labels
    return DenoisingQueries(
        spans=out_spans.to(device),
        labels=labels.to(device),
        valid=valid.to(device),
        attn_mask=denoising_attn_mask(g, per_group * m, num_queries).to(device),
        group_targets=group_targets.to(device),
        target_spans=out_targets.to(device),
        input_labels=in_labels.to(device),
        num_groups=g,
        max_targets=m,
        config=cfg,
    )


def repeat_rows(dn: DenoisingQueries, times: int) -> DenoisingQueries:
    """The same queries for ``times`` copies of the batch (rows ``[k B, (k + 1) B)``): the
    release decodes the negative video-text pairs with the matched pairs' denoising queries."""

    def rep(x: Tensor) -> Tensor:
        return x.repeat(times, *([1] * (x.dim() - 1)))

    return DenoisingQueries(
        spans=rep(dn.spans),
        labels=rep(dn.labels),
        valid=rep(dn.valid),
        attn_mask=dn.attn_mask,
        group_targets=rep(dn.group_targets),
        target_spans=rep(dn.target_spans),
        input_labels=rep(dn.input_labels),
        num_groups=dn.num_groups,
        max_targets=dn.max_targets,
        config=dn.config,
    )


def take_rows(dn: DenoisingQueries, rows: slice) -> DenoisingQueries:
    """The queries of batch rows ``rows`` (a slice of :func:`repeat_rows`' output)."""
    return DenoisingQueries(
        spans=dn.spans[rows],
        labels=dn.labels[rows],
        valid=dn.valid[rows],
        attn_mask=dn.attn_mask,
        group_targets=dn.group_targets[rows],
        target_spans=dn.target_spans[rows],
        input_labels=dn.input_labels[rows],
        num_groups=dn.num_groups,
        max_targets=dn.max_targets,
        config=dn.config,
    )
