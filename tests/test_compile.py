"""``trainer.compile``: the training forward through ``torch.compile``, with a fallback to eager.

The trainer tests trace the model with dynamo and AOT autograd as inductor would
(``COMPILE_BACKEND = "aot_eager"``) but skip inductor's C++ build, which takes minutes on the
development machine; ``MOMENTKIT_TEST_INDUCTOR=1`` also runs one step through inductor itself.
Compiled steps draw the same dropout masks as eager ones (the masks are drawn eagerly), so the
compiled loss equals the eager one to float rounding with dropout on.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from step_results import step_results

from momentkit.training import compile as compile_module
from momentkit.training.compile import CompiledModel, compile_model
from momentkit.training.config import ExperimentConfig
from momentkit.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def aot_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trace with dynamo + AOT autograd, no C++ build."""
    monkeypatch.setattr(compile_module, "COMPILE_BACKEND", "aot_eager")


def _tiny_moment_detr() -> dict[str, Any]:
    from tiny_configs import TINY_DETR

    return {"name": "moment_detr", **TINY_DETR}


class _Items:
    """Three items indexed by ``(epoch, index)`` (the trainer's sampler); the collate function
    builds the batch."""

    def __len__(self) -> int:
        return 3

    def __getitem__(self, key: Any) -> Any:
        return key


def _fit(tmp_path: Path, make_batch: Any, compile: bool) -> tuple[float, Trainer]:
    """One optimiser step of a tiny Moment-DETR (dropout on) through the trainer; its loss."""
    from momentkit.models import build_criterion, build_model

    cfg = ExperimentConfig.from_dict(
        {
            "model": _tiny_moment_detr(),
            "trainer": {"epochs": 1, "batch_size": 3, "device": "cpu", "progress": False,
                        "compile": compile, "seed": 7},
        }
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg.model)
    run = tmp_path / ("compiled" if compile else "eager")
    trainer = Trainer(
        cfg,
        model,
        build_criterion(model.config),
        _Items(),
        run_dir=run,
        collate_fn=lambda items: make_batch(),
    )
    trainer.fit()
    row = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    return row["train"]["loss"], trainer


@pytest.mark.usefixtures("aot_eager")
def test_a_compiled_training_step_gives_the_eager_loss(tmp_path: Path, make_batch) -> None:
    eager, _ = _fit(tmp_path, make_batch, compile=False)
    compiled, trainer = _fit(tmp_path, make_batch, compile=True)
    assert isinstance(trainer.ddp_model, CompiledModel)
    assert trainer.ddp_model.model is trainer.model  # checkpoints and optimiser: the model
    assert compiled == pytest.approx(eager, rel=1e-5)
    saved = trainer.model.state_dict()
    assert not any(k.startswith("_orig_mod") for k in saved)


@pytest.mark.usefixtures("aot_eager")
def test_compiled_outputs_and_gradients_equal_eager(make_batch) -> None:
    """The same model, compiled and eager: outputs and parameter gradients of a training
    forward (the same dropout masks: same seed) agree to float rounding."""
    from momentkit.models import build_criterion, build_model

    torch.manual_seed(0)
    model = build_model(_tiny_moment_detr()).train()
    criterion = build_criterion(model.config)
    compiled = compile_model(model)
    assert isinstance(compiled, CompiledModel)
    batch = make_batch()
    results = [
        step_results(forward, model, criterion, batch, seed=1) for forward in (model, compiled)
    ]
    (spans, loss, grads), (c_spans, c_loss, c_grads) = results
    torch.testing.assert_close(c_spans, spans, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c_loss, loss, rtol=1e-5, atol=1e-6)
    assert set(c_grads) == set(grads)
    for name, g in grads.items():
        torch.testing.assert_close(c_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_compiling_falls_back_to_eager_with_one_log_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where compiling cannot work (here: a C++ compiler that does not exist), the model runs
    eager after one clear log line."""

    def no_compiler(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("Compiler: /nonexistent/g++ not found\nmore detail")

    monkeypatch.setattr(compile_module, "_COMPILE_PROBES", {})
    monkeypatch.setattr(compile_module, "_torch_compile", no_compiler)
    model = torch.nn.Linear(2, 2)
    with caplog.at_level(logging.WARNING, logger="momentkit.training"):
        assert compile_model(model) is model
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "running eager" in lines[0] and "/nonexistent/g++ not found" in lines[0]
    assert "more detail" not in lines[0]


def test_compile_scope_is_checked() -> None:
    with pytest.raises(ValueError, match="compile scope"):
        compile_model(torch.nn.Linear(2, 2), scope="everything")


@pytest.mark.skipif(
    os.environ.get("MOMENTKIT_TEST_INDUCTOR") != "1",
    reason="inductor's C++ build of a model takes minutes on the 2-core development machine "
    "(288 s for Moment-DETR); set MOMENTKIT_TEST_INDUCTOR=1 to run it",
)
def test_inductor_step_gives_the_eager_loss(make_batch) -> None:
    from momentkit.models import build_criterion, build_model

    torch.manual_seed(0)
    model = build_model(_tiny_moment_detr()).train()
    criterion = build_criterion(model.config)
    compiled = compile_model(model)
    if compiled is model:
        pytest.skip(f"torch.compile is not usable here: {compile_module.compile_unavailable()}")
    batch = make_batch()
    losses = []
    for forward in (model, compiled):
        torch.manual_seed(1)
        start = time.perf_counter()
        losses.append(float(criterion(forward(batch), batch)["loss"]))
        if forward is compiled and time.perf_counter() - start > 600:
            pytest.skip("inductor took over 10 minutes to compile the tiny model")
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
