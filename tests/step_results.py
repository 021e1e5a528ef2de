"""One training step's results, for tests that compare two ways of computing a step (imported by
name: pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def step_results(
    forward: Callable[[dict[str, Any]], dict[str, Any]],
    model: torch.nn.Module,
    criterion: Callable[..., dict[str, torch.Tensor]],
    batch: dict[str, Any],
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``(pred_spans, loss, {parameter: gradient})`` of one forward + loss + backward of
    ``forward`` (``model`` or a wrapper of it) from a fresh gradient and random ``seed``."""
    model.zero_grad()
    torch.manual_seed(seed)
    out = forward(batch)
    loss = criterion(out, batch)["loss"]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out["pred_spans"].detach(), loss.detach(), grads
