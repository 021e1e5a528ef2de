"""``torch.compile`` for momentkit's models, with a fallback to eager execution.

Opt-in (``trainer.compile``, ``momentkit bench train|infer --compile``): on this project's CPU
machine compiled steps were measured slower than eager ones (docs/models.md, "The backward pass
and torch.compile"). :func:`compile_model` probes once per device whether inductor can build and
run a kernel (a C++ compiler for the CPU, Triton for CUDA) and otherwise logs one line and keeps
the model eager.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

#: inductor options of compiled models (its defaults; dropout masks are drawn eagerly between
#: the compiled graphs, see :func:`momentkit.modeling.dropout.fast_dropout`)
COMPILE_OPTIONS: dict[str, Any] = {}
#: the ``torch.compile`` backend (tests use ``aot_eager``: the same tracing, no C++ build)
COMPILE_BACKEND = "inductor"
COMPILE_SCOPES = ("model", "layers")
_COMPILE_PROBES: dict[str, str | None] = {}


def _compile_probe(x: Tensor) -> Tensor:
    return x * 2.0 + 1.0


def compile_unavailable(device: torch.device | str = "cpu") -> str | None:
    """Why ``torch.compile`` cannot build and run a kernel on ``device`` here (no C++ compiler
    for the CPU, no Triton for CUDA, ...), or ``None`` when it can. Tried once per device type
    (seconds the first time on a machine, then served from inductor's cache)."""
    device = torch.device(device)
    key = f"{device.type}:{COMPILE_BACKEND}"
    if key not in _COMPILE_PROBES:
        try:
            probe = _torch_compile(_compile_probe, dynamic=False)
            out = probe(torch.ones(4, device=device))
            _COMPILE_PROBES[key] = (
                None if bool((out == 3.0).all()) else "a compiled probe computed a wrong value"
            )
        except Exception as e:  # any failure means: run eager
            first = (str(e).strip().splitlines() or [""])[0][:200]
            _COMPILE_PROBES[key] = f"{type(e).__name__}: {first}"
    return _COMPILE_PROBES[key]


def _torch_compile(fn: Any, dynamic: bool | None) -> Any:
    if COMPILE_BACKEND == "inductor":
        return torch.compile(fn, options=COMPILE_OPTIONS, dynamic=dynamic)
    return torch.compile(fn, backend=COMPILE_BACKEND, dynamic=dynamic)


class CompiledModel:
    """``model`` with its forward run through ``torch.compile`` (see :func:`compile_model`).

    Called like the model; every other attribute (``train``, ``eval``, ``config``,
    ``parameters``, ``state_dict``) is the model's own, so checkpoints and optimisers keep
    using the plain model. A graph that fails to compile runs eager (dynamo's
    ``suppress_errors`` for the duration of the call), the rest stays compiled.
    """

    def __init__(self, model: nn.Module, compiled: Callable[..., Any]) -> None:
        self.model = model
        self.compiled = compiled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch._dynamo

        with torch._dynamo.config.patch(suppress_errors=True):
            return self.compiled(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def transformer_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer layers of ``model`` (encoder, cross-attention and decoder layers): what
    ``compile_model(scope="layers")`` compiles."""
    from momentkit.modeling.anchor_decoder import AnchorDecoderLayer
    from momentkit.modeling.transformer import (
        CrossAttentionLayer,
        TransformerDecoderLayer,
        TransformerEncoderLayer,
    )

    kinds = (TransformerEncoderLayer, CrossAttentionLayer, TransformerDecoderLayer)
    return [m for m in model.modules() if isinstance(m, (*kinds, AnchorDecoderLayer))]


def compile_model(
    model: nn.Module,
    device: torch.device | str = "cpu",
    *,
    scope: str = "model",
    dynamic: bool | None = None,
    log: logging.Logger | None = None,
) -> Any:
    """``model`` compiled with ``torch.compile`` (inductor), or ``model`` itself (eager) where
    compiling cannot work on this machine, after one log line saying why.

    Args:
        model: the module; its parameters, state dict and training mode stay its own.
        device: where it runs (the probe of :func:`compile_unavailable` runs there).
        scope: ``model``: the whole forward (data-dependent steps such as padding packing and
            ``.item()`` calls split it into several graphs); ``layers``: only each transformer
            layer's forward (:func:`transformer_layers`; the model is changed in place, its
            state dict is not).
        dynamic: ``torch.compile``'s ``dynamic`` (``None``: static shapes first, then dynamic
            ones for the sizes that changed, PyTorch's default).

    Returns:
        A :class:`CompiledModel` (``scope="model"``), ``model`` with compiled layers
        (``scope="layers"``), or ``model`` unchanged after the fallback.
    """
    if scope not in COMPILE_SCOPES:
        raise ValueError(f"compile scope must be one of {', '.join(COMPILE_SCOPES)}, got {scope!r}")
    log = log or logger
    reason = compile_unavailable(device)
    if reason is not None:
        log.warning("torch.compile is not usable here (%s): running eager", reason)
        return model
    if scope == "layers":
        for layer in transformer_layers(model):
            layer.forward = _torch_compile(layer.forward, dynamic)
        return model
    return CompiledModel(model, _torch_compile(model, dynamic))
