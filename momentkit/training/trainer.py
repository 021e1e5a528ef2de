"""The training loop: epochs of AdamW steps, periodic evaluation, best/last checkpoints, resume.

The trainer is model-agnostic. It needs:

- ``model``: an ``nn.Module``; ``forward(model, batch) -> outputs`` (default ``model(batch)``);
- ``criterion(outputs, batch) -> {"loss": scalar tensor, ...}``: the total ``loss`` is
  minimised, every other scalar entry is logged;
- ``postprocess(outputs, batch) -> list[MomentPrediction]`` and
  ``evaluator(predictions, annotations) -> metrics`` for evaluation (a nested dict such as the
  QVHighlights evaluator's ``{"brief": {"MR-full-mAP": ...}, ...}`` or a flat one).

Run directory::

    RUN_DIR/config.json        the experiment config
    RUN_DIR/log.jsonl          one line per epoch: losses, lr, metrics, time
    RUN_DIR/last/              resumable checkpoint (weights + optimiser/scheduler/RNG/counters)
    RUN_DIR/best/              best checkpoint by ``trainer.best_metric`` (+ metrics.json)
    RUN_DIR/val_preds.jsonl    validation predictions of the best epoch
    RUN_DIR/val_metrics.json   the evaluator's output for the best epoch

Resuming restores every piece of state the next step depends on (weights, AdamW moments,
schedule position, Python/numpy/torch RNGs, the position inside the epoch), and the data order
and labels are pure functions of ``(seed, epoch, index)``, so a resumed run ends with exactly
the weights and metrics of an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from momentkit.data.loader import EpochSampler, collate
from momentkit.data.records import MomentAnnotation, MomentPrediction, save_predictions
from momentkit.training.checkpoint import (
    CheckpointError,
    damaged_state,
    find_checkpoint,
    load_state,
    load_weights,
    save_checkpoint,
    unwrap_model,
)
from momentkit.training.compile import compile_model
from momentkit.training.config import ExperimentConfig
from momentkit.training.distributed import (
    DistInfo,
    ShardSampler,
    SkipSampler,
    all_gather_objects,
    all_reduce_mean,
    barrier,
    broadcast_object,
)
from momentkit.training.optim import build_optimizer, build_scheduler, clip_gradients
from momentkit.training.runlog import EpochLog
from momentkit.training.seed import rng_state, seed_everything, set_rng_state
from momentkit.utils.errors import MomentkitError
from momentkit.utils.io import write_json
from momentkit.utils.prefetch import prefetch

logger = logging.getLogger("momentkit.training")

Batch = dict[str, Any]
Outputs = dict[str, Any]
Criterion = Callable[[Outputs, Batch], Mapping[str, Tensor]]
PostProcess = Callable[[Outputs, Batch], list[MomentPrediction]]
Evaluator = Callable[[list[MomentPrediction], list[MomentAnnotation]], Mapping[str, Any]]
Forward = Callable[[nn.Module, Batch], Outputs]


class TrainingError(MomentkitError):
    """Training cannot go on (non-finite loss, a metric the evaluator does not report, ...)."""


@dataclass
class TrainState:
    """The counters a run resumes from (saved as JSON in the ``last`` checkpoint).

    Attributes:
        epoch: epochs completed.
        step_in_epoch: optimiser steps done inside epoch ``epoch`` (0 at an epoch boundary).
        global_step: optimiser steps done in total.
        best_value: best value of the selection metric so far (``None`` before any evaluation).
        best_epoch: epoch (1-based; 0 = untrained) of ``best_value``.
        evals_since_best: evaluations without improvement (for early stopping).
        stopped: early stopping ended the run.
        loss_sums: running sums of the logged losses over the current epoch.
        loss_count: steps summed in ``loss_sums``.
        epoch_time: seconds of training spent in the current epoch before a resume.
    """

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_value: float | None = None
    best_epoch: int | None = None
    evals_since_best: int = 0
    stopped: bool = False
    loss_sums: dict[str, float] = field(default_factory=dict)
    loss_count: int = 0
    epoch_time: float = 0.0


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` achieved.

    Attributes:
        best_metric: name of the selection metric.
        best_value: its best value (``None`` without a validation set).
        best_epoch: the epoch (1-based; 0 = untrained) of the best checkpoint.
        epochs_done: epochs trained in total (resumed parts included).
        stopped_early: early stopping ended training.
        metrics: the evaluator's output for the best epoch (main process only).
    """

    best_metric: str
    best_value: float | None
    best_epoch: int | None
    epochs_done: int
    stopped_early: bool
    metrics: Mapping[str, Any] | None


def default_forward(model: nn.Module, batch: Batch) -> Outputs:
    """``model(batch)``."""
    return model(batch)


def move_to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor (inside dicts, lists and tuples) moved to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: move_to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [move_to_device(v, device) for v in obj]
    if isinstance(obj, tuple):
        return tuple(move_to_device(v, device) for v in obj)
    return obj


def to_float32(obj: Any) -> Any:
    """``obj`` with every floating-point tensor cast to float32 (after bf16 autocast)."""
    if isinstance(obj, Tensor):
        return obj.float() if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: to_float32(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_float32(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_float32(v) for v in obj)
    return obj


def find_metric(metrics: Mapping[str, Any], name: str) -> float:
    """The value of metric ``name`` in an evaluator's output.

    Looks in ``metrics["brief"]`` (the official QVHighlights layout), then at the top level,
    then at dotted paths (``"MR-full.mAP"`` style keys are not needed but supported).

    Raises:
        TrainingError: the metric is absent; the message lists the available ones.
    """
    brief = metrics.get("brief")
    if isinstance(brief, Mapping) and name in brief:
        return float(brief[name])
    if name in metrics and isinstance(metrics[name], int | float):
        return float(metrics[name])
    node: Any = metrics
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            break
        node = node[part]
    else:
        if isinstance(node, int | float):
            return float(node)
    flat = brief if isinstance(brief, Mapping) else metrics
    names = [k for k, v in flat.items() if isinstance(v, int | float)]
    raise TrainingError(
        f"the evaluator reports no metric '{name}'. Set trainer.best_metric to one of: "
        f"{', '.join(names)}"
    )


def summarize_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The part of an evaluator's output worth a log line: ``brief`` or the flat numbers."""
    brief = metrics.get("brief")
    if isinstance(brief, Mapping):
        return dict(brief)
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)}


class Trainer:
    """Trains ``model`` on ``train_set``, evaluating on ``val_set`` (see the module docstring).

    Args:
        cfg: the experiment config (``optim`` and ``trainer`` sections drive the loop; ``data``
            gives ``num_workers`` and ``eval_batch_size``).
        model: the model (unwrapped; the trainer moves it to the device and wraps it in DDP).
        criterion: ``(outputs, batch) -> {"loss": ..., other scalars}``.
        train_set: items for :func:`momentkit.data.loader.collate`; indexable by
            ``(epoch, index)`` like :class:`momentkit.data.loader.MomentDataset`.
        val_set: evaluation items (with an ``annotations`` list), or ``None``.
        run_dir: where logs and checkpoints go.
        postprocess: ``(outputs, batch) -> predictions``; required with ``val_set``.
        evaluator: ``(predictions, annotations) -> metrics``; required with ``val_set``.
        best_metric: the metric selecting the best checkpoint (resolved, not ``auto``).
        model_config: written as ``config.json`` beside the weights.
        collate_fn: batch builder (default :func:`momentkit.data.loader.collate`).
        forward: ``(model, batch) -> outputs`` (default ``model(batch)``).
        dist_info: this process's place in a ``torchrun`` job (default: one process on the
            config's device).
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        model: nn.Module,
        criterion: Criterion,
        train_set: Dataset,
        val_set: Dataset | None = None,
        *,
        run_dir: str | Path,
        postprocess: PostProcess | None = None,
        evaluator: Evaluator | None = None,
        best_metric: str = "MR-full-mAP",
        model_config: Mapping[str, Any] | None = None,
        collate_fn: Callable[[Sequence[Any]], Batch] = collate,
        forward: Forward = default_forward,
        dist_info: DistInfo | None = None,
    ) -> None:
        if val_set is not None and (postprocess is None or evaluator is None):
            raise ValueError("evaluating a val_set needs both postprocess and evaluator")
        if len(train_set) == 0:  # type: ignore[arg-type]
            raise TrainingError("the training set is empty")
        self.cfg = cfg
        self.dist = dist_info or DistInfo(device=torch.device(_device_name(cfg.trainer.device)))
        self.device = self.dist.device
        self.model = model.to(self.device)
        self.criterion = (
            criterion.to(self.device) if isinstance(criterion, nn.Module) else criterion
        )
        self.train_set = train_set
        self.val_set = val_set
        self.run_dir = Path(run_dir)
        self.postprocess = postprocess
        self.evaluator = evaluator
        self.best_metric = best_metric
        self.model_config = dict(model_config or {"name": cfg.model_name})
        self.collate_fn = collate_fn
        self.forward = forward
        self.log = EpochLog(self.run_dir / "log.jsonl")
        self.state = TrainState()
        self.autocast_dtype = autocast_dtype(cfg.trainer.precision, self.device)

        tc = cfg.trainer
        if tc.batch_size % self.dist.world_size:
            raise TrainingError(
                f"trainer.batch_size={tc.batch_size} is not divisible by the "
                f"{self.dist.world_size} processes; pick a multiple of {self.dist.world_size}"
            )
        self.batch_size = tc.batch_size // self.dist.world_size
        self.sampler = EpochSampler(
            len(train_set),  # type: ignore[arg-type]
            shuffle=True,
            seed=tc.seed,
            num_replicas=self.dist.world_size,
            rank=self.dist.rank,
        )
        self.skip_sampler = SkipSampler(self.sampler)
        self.train_loader = DataLoader(
            train_set,
            batch_size=self.batch_size,
            sampler=self.skip_sampler,
            collate_fn=collate_fn,
            num_workers=cfg.data.num_workers,
            persistent_workers=cfg.data.num_workers > 0,
            pin_memory=self.device.type == "cuda",
            # its own generator: creating an iterator must not draw from the global RNG
            generator=torch.Generator().manual_seed(tc.seed),
        )
        self.steps_per_epoch = math.ceil(len(self.sampler) / self.batch_size)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.steps_per_epoch, tc.epochs)
        self.ddp_model: Any = self.model
        if self.dist.distributed:
            self.ddp_model = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=tc.ddp_find_unused_parameters,
            )
        if tc.compile:  # the training forward only; evaluation and checkpoints use the model
            self.ddp_model = compile_model(self.ddp_model, self.device)

    # ------------------------------------------------------------------------------ public API
    def fit(self, resume: bool = False) -> FitResult:
        """Train to ``trainer.epochs`` (or early stop), resuming from ``RUN_DIR/last`` if asked.

        Returns:
            The :class:`FitResult`; ``RUN_DIR/best`` holds the selected weights.
        """
        tc = self.cfg.trainer
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.run_dir / "config.json", self.cfg.to_dict())
        resumed = resume and self._resume()
        if not resumed:
            seed_everything(tc.seed + self.dist.rank)
            if self.dist.is_main and self.log.path.exists():
                self.log.trim(-1)  # rows of an earlier attempt that left no checkpoint
        best_metrics: Mapping[str, Any] | None = None
        if self.val_set is not None and tc.eval_before_training and self.state.global_step == 0:
            if self.state.best_epoch is None:
                best_metrics = self._evaluate_and_select(epoch=0, row={"epoch": 0})
        while self.state.epoch < tc.epochs and not self.state.stopped:
            epoch = self.state.epoch
            row = self._train_epoch(epoch)
            if self.val_set is not None and self._eval_due(epoch):
                metrics = self._evaluate_and_select(epoch + 1, row)
                best_metrics = metrics if metrics is not None else best_metrics
            elif self.dist.is_main:
                self.log.append(row)
            self.state.epoch = epoch + 1
            self.state.step_in_epoch = 0
            self.state.loss_sums, self.state.loss_count, self.state.epoch_time = {}, 0, 0.0
            self._save_last()
        if self.val_set is not None and self.state.best_epoch is None:
            # nothing evaluated yet (epochs=0): the current weights are the best
            best_metrics = self._evaluate_and_select(self.state.epoch, {"epoch": self.state.epoch})
        self._finish()
        if best_metrics is None and self.dist.is_main and self.val_set is not None:
            best_metrics = _read_json(self.run_dir / "val_metrics.json")
        return FitResult(
            self.best_metric,
            self.state.best_value,
            self.state.best_epoch,
            self.state.epoch,
            self.state.stopped,
            best_metrics,
        )

    def evaluate(self) -> tuple[Mapping[str, Any] | None, list[MomentPrediction]]:
        """Predict on the validation set (sharded over processes) and score on the main one.

        Returns:
            ``(metrics, predictions)`` on the main process, ``(None, [])`` on the others.
        """
        assert self.val_set is not None and self.postprocess and self.evaluator
        model = unwrap_model(self.model)  # not DDP: shards may differ in length
        sampler = ShardSampler(self.val_set, self.dist.rank, self.dist.world_size)  # type: ignore[arg-type]
        loader = DataLoader(
            self.val_set,
            batch_size=self.cfg.data.eval_batch_size,
            sampler=sampler,
            collate_fn=self.collate_fn,
            num_workers=self.cfg.data.num_workers,
            generator=torch.Generator().manual_seed(0),
        )
        preds = inference_loop(
            model,
            loader,
            self.device,
            self.postprocess,
            self.autocast_dtype,
            self.forward,
            progress=lambda it: self._progress(it, "eval", total=_length(loader)),
        )
        shards = all_gather_objects(list(zip(sampler.indices, preds)), self.dist)
        if not self.dist.is_main:
            return None, []
        ordered = sorted((pair for shard in shards for pair in shard), key=lambda p: p[0])
        predictions = [p for _, p in ordered]
        annotations = list(self.val_set.annotations)  # type: ignore[attr-defined]
        return self.evaluator(predictions, annotations), predictions

    # ------------------------------------------------------------------------------- training
    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        """Run (the rest of) epoch ``epoch``; returns its log row (losses, lr, time)."""
        tc, st = self.cfg.trainer, self.state
        self.model.train()
        self.sampler.set_epoch(epoch)
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)  # type: ignore[attr-defined]
        self.skip_sampler.skip = st.step_in_epoch * self.batch_size
        sums = {k: torch.tensor(v, dtype=torch.float64) for k, v in st.loss_sums.items()}
        start = time.perf_counter() - st.epoch_time
        # a background thread prepares the next batches while this one trains
        batches = prefetch(self.train_loader, depth=2)
        bar = self._progress(
            batches,
            f"epoch {epoch + 1}/{tc.epochs}",
            total=None if (n := _length(self.train_loader)) is None else n + st.step_in_epoch,
            initial=st.step_in_epoch,
        )
        for batch in bar:
            losses = self._train_step(batch, epoch)
            for k, v in losses.items():
                sums[k] = sums.get(k, torch.zeros((), dtype=torch.float64)) + v.cpu().double()
            st.loss_count += 1
            st.step_in_epoch += 1
            st.global_step += 1
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{float(losses['loss']):.4f}", refresh=False)
            if tc.checkpoint_every and st.global_step % tc.checkpoint_every == 0:
                if st.step_in_epoch < self.steps_per_epoch:
                    st.loss_sums = {k: float(v) for k, v in sums.items()}
                    st.epoch_time = time.perf_counter() - start
                    self._save_last()
        self.skip_sampler.skip = 0
        means = {k: float(v) / max(1, st.loss_count) for k, v in sums.items()}
        means = all_reduce_mean(means, self.dist)
        return {
            "epoch": epoch + 1,
            "step": st.global_step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train": means,
            "time": {"train": round(time.perf_counter() - start, 3)},
        }

    def _train_step(self, batch: Batch, epoch: int) -> dict[str, Tensor]:
        """One optimiser step; returns the detached scalar losses."""
        batch = move_to_device(batch, self.device)
        with self._autocast():
            outputs = self.forward(self.ddp_model, batch)
        try:
            losses = self.criterion(to_float32(outputs), batch)
        except (ValueError, RuntimeError):  # e.g. the matcher on NaN costs (scipy ValueError)
            bad = first_non_finite(outputs)
            if bad is None:
                raise
            raise TrainingError(
                self._diverged(epoch, f"the model output '{bad}' became NaN/Inf")
            ) from None
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise TrainingError(
                self._diverged(epoch, f"the loss became {float(loss.detach())}")
                + " (or check the features for extreme values)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(self.model, self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return {
            k: v.detach().float()
            for k, v in losses.items()
            if isinstance(v, Tensor) and v.numel() == 1
        }

    # ----------------------------------------------------------------------------- evaluation
    def _eval_due(self, epoch: int) -> bool:
        last = epoch + 1 == self.cfg.trainer.epochs
        return last or (epoch + 1) % self.cfg.trainer.eval_every == 0

    def _evaluate_and_select(self, epoch: int, row: dict[str, Any]) -> Mapping[str, Any] | None:
        """Evaluate, update best/early-stopping state, log ``row``; metrics if a new best."""
        start = time.perf_counter()
        self._check_weights()
        metrics, predictions = self.evaluate()
        decision: tuple[float, bool] | str | None = None
        if self.dist.is_main:
            assert metrics is not None
            try:
                value = find_metric(metrics, self.best_metric)
                decision = (value, self.state.best_value is None or value > self.state.best_value)
            except TrainingError as e:
                decision = str(e)
        decision = broadcast_object(decision, self.dist)
        if isinstance(decision, str):  # every process stops with the main one's error
            raise TrainingError(decision)
        assert decision is not None
        value, improved = decision
        st = self.state
        if improved:
            st.best_value, st.best_epoch, st.evals_since_best = value, epoch, 0
        elif epoch > 0:
            st.evals_since_best += 1
        patience = self.cfg.trainer.patience
        if patience is not None and st.evals_since_best >= patience:
            st.stopped = True
        if self.dist.is_main:
            assert metrics is not None
            if improved:
                self._save_best(metrics, predictions, epoch)
            row = dict(row)
            row.setdefault("time", {})["eval"] = round(time.perf_counter() - start, 3)
            row["metrics"] = summarize_metrics(metrics)
            row["best"] = {
                "metric": self.best_metric,
                "epoch": st.best_epoch,
                "value": st.best_value,
                "improved": improved,
            }
            if st.stopped:
                row["early_stop"] = True
            self.log.append(row)
            logger.info(
                "epoch %d: %s %.4f (best %.4f at epoch %s)%s",
                epoch,
                self.best_metric,
                value,
                st.best_value,
                st.best_epoch,
                "; early stop" if st.stopped else "",
            )
        barrier(self.dist)
        return metrics if improved else None

    # ---------------------------------------------------------------------------- checkpoints
    def _diverged(self, epoch: int, what: str) -> str:
        """The message of a run that diverged at the current step of ``epoch``."""
        return (
            f"{what} at epoch {epoch + 1}, step {self.state.step_in_epoch + 1} (global step "
            f"{self.state.global_step + 1}): training diverged. " + self._diverged_hint()
        )

    def _diverged_hint(self) -> str:
        last = self.run_dir / "last"
        if (last / "model.safetensors").exists():
            return (
                f"{last} keeps the last good checkpoint; train again with a lower optim.lr (and "
                "optim.grad_clip > 0), in a new --out or with --init-from on it"
            )
        return (
            "No checkpoint was saved yet; train again with a lower optim.lr (and "
            "optim.grad_clip > 0)"
        )

    def _check_weights(self) -> None:
        """Stop before evaluating or saving weights that hold NaN/Inf: a good checkpoint is
        never replaced by a diverged one."""
        bad = first_non_finite(dict(unwrap_model(self.model).named_parameters()))
        if bad is not None:
            raise TrainingError(
                f"the weight '{bad}' became NaN/Inf by global step {self.state.global_step} "
                f"(epoch {self.state.epoch + 1}): training diverged. " + self._diverged_hint()
            )

    def _save_best(
        self, metrics: Mapping[str, Any], predictions: list[MomentPrediction], epoch: int
    ) -> None:
        save_checkpoint(
            self.run_dir / "best",
            self.model,
            model_config=self.model_config,
            experiment=self.cfg.to_dict(),
            extra_files={"metrics.json": {"epoch": epoch, **dict(metrics)}},
        )
        save_predictions(self.run_dir / "val_preds.jsonl", predictions)
        write_json(self.run_dir / "val_metrics.json", dict(metrics))

    def _save_last(self) -> None:
        """Write the resumable checkpoint (every process contributes its RNG state)."""
        self._check_weights()
        rngs = all_gather_objects(rng_state(), self.dist)
        if self.dist.is_main:
            state = {
                "trainer": _state_dict(self.state),
                "world_size": self.dist.world_size,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rngs,
            }
            save_checkpoint(
                self.run_dir / "last",
                self.model,
                model_config=self.model_config,
                experiment=self.cfg.to_dict(),
                state=state,
            )
        barrier(self.dist)

    def _resume(self) -> bool:
        """Load ``RUN_DIR/last`` if present; returns whether a run was resumed."""
        last = find_checkpoint(self.run_dir / "last")
        if last is None:
            if self.dist.is_main:
                logger.info("no checkpoint in %s: starting a new run", self.run_dir / "last")
            return False
        state = load_state(last)
        train_state = check_resume_state(state, last)
        done = train_state.epoch
        if done > self.cfg.trainer.epochs:
            raise CheckpointError(
                f"{last}: the run has already trained {done} epochs; resume with "
                f"--epochs {done} or more (given {self.cfg.trainer.epochs})"
            )
        load_weights(self.model, last, strict=True)
        for name, target in (("optimizer", self.optimizer), ("scheduler", self.scheduler)):
            try:
                target.load_state_dict(state[name])
            except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as e:
                raise damaged_state(
                    last, name, f"cannot be loaded ({type(e).__name__}: {e})"
                ) from None
        self.state = train_state
        patience = self.cfg.trainer.patience
        if self.state.stopped and (patience is None or self.state.evals_since_best < patience):
            self.state.stopped = False  # resumed with a larger patience: training goes on
        rngs = state["rng"]
        if state["world_size"] == self.dist.world_size:
            try:
                set_rng_state(rngs[self.dist.rank])
            except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as e:
                where = f"rng.{self.dist.rank}"
                raise damaged_state(
                    last, where, f"not a random state ({type(e).__name__}: {e})"
                ) from None
        else:
            logger.warning(
                "resuming a %d-process run with %d processes: data order and random draws "
                "will differ from an uninterrupted run",
                state["world_size"],
                self.dist.world_size,
            )
            seed_everything(self.cfg.trainer.seed + 1000 * self.state.epoch + self.dist.rank)
        if self.dist.is_main:
            self.log.trim(self.state.epoch)
            logger.info(
                "resumed from %s: %d epoch(s) done%s",
                last,
                self.state.epoch,
                f", {self.state.step_in_epoch} step(s) into the next"
                if self.state.step_in_epoch
                else "",
            )
        return True

    def _finish(self) -> None:
        """Make sure ``RUN_DIR/best`` exists (no validation set: the final weights)."""
        if not self.dist.is_main:
            barrier(self.dist)
            return
        if find_checkpoint(self.run_dir / "best") is None:
            if self.val_set is None:
                save_checkpoint(
                    self.run_dir / "best",
                    self.model,
                    model_config=self.model_config,
                    experiment=self.cfg.to_dict(),
                )
        barrier(self.dist)

    # ---------------------------------------------------------------------------------- utils
    def _autocast(self) -> torch.autocast:
        dtype = self.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=bool(dtype))

    def _progress(
        self, iterable: Any, desc: str, total: int | None = None, initial: int = 0
    ) -> Any:
        """A progress bar with the total and the time left (tqdm), on the main process."""
        if not (self.cfg.trainer.progress and self.dist.is_main):
            return iterable
        from tqdm.auto import tqdm

        return tqdm(
            iterable,
            desc=desc,
            total=total,
            initial=initial if total is not None else 0,
            unit="batch",
            leave=False,
            dynamic_ncols=True,
        )


def first_non_finite(obj: Any, prefix: str = "") -> str | None:
    """The name of the first floating-point tensor holding NaN/Inf in a nested dict/list of
    outputs or parameters (``aux_outputs.0.pred_spans``), ``None`` when all are finite."""
    if isinstance(obj, Tensor):
        if obj.is_floating_point() and not bool(torch.isfinite(obj.detach()).all()):
            return prefix or "output"
        return None
    if isinstance(obj, Mapping):
        items: Iterable[tuple[Any, Any]] = obj.items()
    elif isinstance(obj, list | tuple):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        bad = first_non_finite(value, f"{prefix}.{key}" if prefix else str(key))
        if bad is not None:
            return bad
    return None


def _length(loader: Any) -> int | None:
    """Batches ``loader`` yields, or None when it cannot say."""
    try:
        return len(loader)
    except TypeError:
        return None


def any_training(model: nn.Module) -> bool:
    """Whether ``model`` or any module inside it is in training mode.

    ``any(m.training for m in model.modules())`` without ``named_modules``'s generators and
    prefix strings (a one-query prediction's check; shared modules are visited once).
    """
    stack: list[nn.Module | None] = [model]
    seen: set[int] = set()
    while stack:
        module = stack.pop()
        if module is None or id(module) in seen:
            continue
        if module.training:
            return True
        seen.add(id(module))
        stack.extend(module._modules.values())
    return False


def inference_loop(
    model: nn.Module,
    loader: Iterable[Batch],
    device: torch.device,
    postprocess: PostProcess,
    dtype: torch.dtype | None = None,
    forward: Forward = default_forward,
    progress: Callable[[Any], Any] | None = None,
) -> list[MomentPrediction]:
    """Predictions of ``model`` (in eval mode, no gradients) for every batch of ``loader``.

    Runs under ``torch.inference_mode``: models may skip outputs only losses read (QD-DETR's
    negative pairs).

    Args:
        dtype: autocast dtype (``torch.bfloat16``) or ``None`` for full precision.
        progress: wraps ``loader`` (e.g. in a progress bar).
    """
    # a model already in eval mode stays untouched: eval() and train() walk every module
    # (~0.5 ms a call for QD-DETR's ~300 modules), a tenth of a one-query prediction
    was_training = model.training
    switch = any_training(model)
    if switch:
        model.eval()
    preds: list[MomentPrediction] = []
    with torch.inference_mode():
        for batch in progress(loader) if progress else loader:
            batch = move_to_device(batch, device)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=bool(dtype)):
                outputs = forward(model, batch)
            preds.extend(postprocess(to_float32(outputs), batch))
    if switch:
        model.train(was_training)
    return preds


def _device_name(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 for ``bf16``, and for ``auto`` on CUDA devices supporting it; else ``None``."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


#: TrainState field -> (what it must be, check); ``best_value``/``best_epoch`` may be null
_STATE_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "epoch": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "step_in_epoch": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "global_step": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "best_value": ("a finite number or null", lambda v: v is None or _is_finite(v)),
    "best_epoch": ("an integer >= 0 or null", lambda v: v is None or (_is_int(v) and v >= 0)),
    "evals_since_best": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "stopped": ("true or false", lambda v: isinstance(v, bool)),
    "loss_sums": (
        "an object of loss name -> finite number",
        lambda v: (
            isinstance(v, dict) and all(isinstance(k, str) and _is_finite(x) for k, x in v.items())
        ),
    ),
    "loss_count": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "epoch_time": ("a finite number >= 0", lambda v: _is_finite(v) and v >= 0),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_resume_state(state: Any, directory: Path) -> TrainState:
    """The counters of a resume state read by :func:`load_state`, its layout checked first.

    ``state`` must be an object with ``trainer`` (the :class:`TrainState` fields; ``epoch``
    required, the others default), ``world_size`` (an integer >= 1), ``optimizer`` and
    ``scheduler`` (objects) and ``rng`` (one random state per process).

    Raises:
        CheckpointError: naming ``DIR/state.json`` and the malformed field, saying the
            checkpoint is damaged and what to do (:func:`damaged_state`).
    """
    if not isinstance(state, dict):
        raise damaged_state(directory, "<top level>", f"expected an object, got {_shown(state)}")
    if "trainer" not in state:
        raise damaged_state(directory, "trainer", "missing")
    if not isinstance(state["trainer"], dict):
        raise damaged_state(
            directory, "trainer", f"expected an object, got {_shown(state['trainer'])}"
        )
    counters = state["trainer"]
    unknown = sorted(set(counters) - set(_STATE_FIELDS))
    if unknown:
        raise damaged_state(directory, f"trainer.{unknown[0]}", "not a resume-state field")
    if "epoch" not in counters:
        raise damaged_state(directory, "trainer.epoch", "missing")
    for key, value in counters.items():
        wanted, ok = _STATE_FIELDS[key]
        if not ok(value):
            raise damaged_state(
                directory, f"trainer.{key}", f"expected {wanted}, got {_shown(value)}"
            )
    for key, kind in (("optimizer", dict), ("scheduler", dict), ("world_size", int),
                      ("rng", list)):  # fmt: skip
        if key not in state:
            raise damaged_state(directory, key, "missing")
        value = state[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            wanted = {dict: "an object", int: "an integer >= 1", list: "a list"}[kind]
            raise damaged_state(directory, key, f"expected {wanted}, got {_shown(value)}")
    if state["world_size"] < 1:
        raise damaged_state(
            directory, "world_size", f"expected an integer >= 1, got {state['world_size']}"
        )
    if len(state["rng"]) != state["world_size"] or not all(
        isinstance(r, dict) for r in state["rng"]
    ):
        raise damaged_state(
            directory, "rng", f"expected {state['world_size']} random states (one per process)"
        )
    return TrainState(**{**counters, "loss_sums": dict(counters.get("loss_sums", {}))})


def _state_dict(state: TrainState) -> dict[str, Any]:
    return {k: getattr(state, k) for k in TrainState.__dataclass_fields__}


def _read_json(path: Path) -> Mapping[str, Any] | None:
    import json

    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
