"""AdamW and the learning-rate schedules (step, warm-up multi-step, cosine) of the trainer.

The schedule is a pure function of the optimiser step, :func:`lr_factor`, wrapped in a
``LambdaLR`` stepped once per optimiser step. Epoch-based schedules read the epoch as
``step // steps_per_epoch``, so ``step`` with ``lr_drop=400`` behaves exactly like Moment-DETR's
``StepLR`` stepped once per epoch. Its state is a few numbers (JSON friendly, no pickle).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from momentkit.training.config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over every trainable parameter of ``model``.

    As in Moment-DETR and QD-DETR, weight decay applies to all parameters (biases and norms
    included).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    # the fused kernel does the whole update in one pass: 3-4x faster than the per-tensor loop
    # on CPU (the default there), same update rule
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(
        params,
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        fused=fused or None,
    )


def lr_factor(cfg: OptimConfig, step: int, steps_per_epoch: int, total_epochs: int) -> float:
    """Multiplier of ``cfg.lr`` for optimiser step ``step`` (0-based).

    Args:
        cfg: schedule settings (``scheduler``, ``lr_drop``, ``gamma``, ``milestones``,
            ``warmup_epochs``, ``warmup_factor``, ``min_lr_ratio``).
        step: optimiser steps taken so far.
        steps_per_epoch: optimiser steps in one epoch (>= 1).
        total_epochs: length of training, for ``cosine``.

    Returns:
        The factor in ``(0, 1]``: the schedule's value times the linear warm-up ramp.
    """
    steps_per_epoch = max(1, steps_per_epoch)
    epoch = step // steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    if cfg.scheduler == "constant":
        factor = 1.0
    elif cfg.scheduler == "step":
        factor = cfg.gamma ** (epoch // cfg.lr_drop)
    elif cfg.scheduler == "warmup_multistep":
        factor = cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
    elif cfg.scheduler == "cosine":
        total_epochs = getattr(cfg, "schedule_epochs", None) or total_epochs
        total_steps = max(1, total_epochs * steps_per_epoch - warmup_steps)
        progress = min(1.0, max(0.0, (step - warmup_steps) / total_steps))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        factor = cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine
    else:
        raise ValueError(f"unknown scheduler {cfg.scheduler!r}")
    if step < warmup_steps:
        alpha = step / warmup_steps
        factor *= cfg.warmup_factor * (1.0 - alpha) + alpha
    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int, total_epochs: int
) -> LambdaLR:
    """A ``LambdaLR`` following :func:`lr_factor`; call ``.step()`` after every optimiser step."""

    def factor(step: int) -> float:
        return lr_factor(cfg, step, steps_per_epoch, total_epochs)

    return LambdaLR(optimizer, factor)


def clip_gradients(model: nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm to ``max_norm`` (no-op if ``<= 0``); returns the norm."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    norms = torch.stack([p.grad.detach().norm(2) for p in params])
    return float(norms.norm(2))
