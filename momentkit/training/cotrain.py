"""Co-training one UniMD model on moment retrieval (MR) and temporal action detection (TAD).

UniMD (Zeng et al., ECCV 2024, Sec. 3.3) fuses the two tasks in training in two ways:

- **co-training**, with a *task-sampling* strategy deciding what each optimiser step sees:

  ``synchronized``  a video carries both tasks' queries: the videos annotated for both tasks
                    form batches in which every video is trained on its sentences and on every
                    action class at once (videos with one task form batches of their own);
  ``selective``     one task per step: each batch holds (video, MR) or (video, TAD) units of a
                    single task; MR and TAD batches are interleaved in random order;
  ``random``        (video, task) units of both tasks are shuffled together, so a batch mixes
                    tasks and a video's two tasks usually land in different steps;

  with ``model.cotrain_plan = "official"`` the batches are those of the released code instead
  (:func:`official_epoch_plan`): ``synchronized`` (``train_sync.py``) subsamples the larger of
  the TAD-only and MR-only video sets to the smaller one each epoch and pairs one TAD-only and
  one MR-only batch into one step (twice the batch size), besides batches of videos annotated
  for both tasks (each with both); ``random`` (``train_random.py``) shuffles the videos, each
  carrying every task it has; both drop the last incomplete batch. ``selective`` has no
  official counterpart (it is momentkit's own);

- **sequential** pre-training (the paper's ablation b): train on one task, then fine-tune the
  same weights on the other (two runs, ``RUN_DIR/pretrain_<task>`` and
  ``RUN_DIR/finetune_<task>``).

Training with one task (``tasks=("mr",)`` or ``("tad",)``) gives the single-task baselines.

The loop is :class:`~momentkit.training.trainer.Trainer`'s (checkpoints, exact resume, logs,
best-checkpoint selection, DDP). Each epoch's batches are planned ahead from ``(seed, epoch)``
(:func:`epoch_plan`) and handed to the trainer as items of a :class:`PlannedBatches` dataset,
so the trainer's own batch size is the number of processes; :class:`CoTrainer` replaces its
evaluation with one that scores both tasks (:class:`CoEvaluation`): the MR evaluator's metrics
(``MR-R1@0.5``, ...), ``TAD-mAP`` (+ per threshold) and, when both are scored, ``MR-TAD-mean``
(the mean of ``MR-R1@0.5`` and ``TAD-mAP``, the default selection metric of co-training).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from momentkit.data.multitask import TASKS, MultiTaskSource, VideoItem, collate_videos
from momentkit.data.records import MomentAnnotation, MomentPrediction, load_annotations
from momentkit.data.tad import (
    TADVideo,
    check_classes,
    classes_of,
    encode_class_queries,
    load_class_features,
    load_class_list,
    load_tad_json,
    save_class_features,
    to_moment_annotations,
)
from momentkit.training.checkpoint import load_weights, unwrap_model
from momentkit.training.config import ConfigError, ExperimentConfig
from momentkit.training.distributed import DistInfo, resolve_device
from momentkit.training.seed import configure_determinism, seed_everything
from momentkit.training.trainer import Batch, FitResult, Trainer, move_to_device, to_float32
from momentkit.utils.io import write_json

if TYPE_CHECKING:
    from momentkit.evaluation.tad import TADEvaluator
    from momentkit.models.unimd import UniMDConfig

logger = logging.getLogger("momentkit.training")

STRATEGIES = ("synchronized", "selective", "random", "sequential")
Unit = tuple[str, tuple[str, ...]]  # (video id, tasks trained on it)


# ------------------------------------------------------------------------------------ settings
@dataclass
class CoTrainSpec:
    """What to co-train on and how (the ``momentkit cotrain`` options beyond the experiment).

    Attributes:
        tasks: ``("mr", "tad")``, or one task for a single-task baseline.
        strategy: ``synchronized``, ``selective``, ``random`` or ``sequential``.
        first_task: ``sequential``: the pre-training task (the other one is fine-tuned).
        pretrain_epochs: ``sequential``: epochs of the first stage (default ``trainer.epochs``).
        tad_train, tad_val: TAD annotation files (ActivityNet layout).
        tad_train_subset, tad_val_subset: their subsets (``None``: every video of the file).
        tad_classes: class list file (default: the classes with instances in the TAD files).
        tad_class_features: ``.npz`` of class-query embeddings (:func:`save_class_features`).
        text_encoder: encoder spec that embeds the class prompts when ``tad_class_features``
            is not given (the encoder of the MR query features).
        tad_tiou: TAD tIoU thresholds.
        mr_evaluator: ``EVALUATORS`` name scoring MR (``grounding``, ``qvhighlights``, ...).
        best_metric: selection metric (default: ``MR-TAD-mean`` for both tasks, else
            ``MR-R1@0.5`` or ``TAD-mAP``; ``trainer.best_metric`` other than ``auto`` wins).
    """

    tasks: tuple[str, ...] = TASKS
    strategy: str = "synchronized"
    first_task: str = "tad"
    pretrain_epochs: int | None = None
    tad_train: str | None = None
    tad_val: str | None = None
    tad_train_subset: str | None = "training"
    tad_val_subset: str | None = "validation"
    tad_classes: str | None = None
    tad_class_features: str | None = None
    text_encoder: str | None = None
    tad_tiou: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
    mr_evaluator: str = "grounding"
    best_metric: str | None = None

    def validate(self) -> None:
        """Raise a :class:`ConfigError` naming the offending option."""
        if not self.tasks or any(t not in TASKS for t in self.tasks):
            raise ConfigError(None, None, "--tasks", f"expected mr, tad or both, got {self.tasks}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                None, None, "--strategy", f"unknown strategy '{self.strategy}'",
                f"Use one of: {', '.join(STRATEGIES)}",
            )  # fmt: skip
        if self.first_task not in TASKS:
            raise ConfigError(None, None, "--first", f"expected mr or tad, got {self.first_task}")
        if self.pretrain_epochs is not None and self.pretrain_epochs < 0:
            raise ConfigError(None, None, "--pretrain-epochs", "must be >= 0")
        if "tad" in self.tasks and self.tad_train is None:
            raise ConfigError(None, None, "--tad-train", "missing", "Give the TAD annotations")
        if self.strategy == "sequential" and len(self.tasks) != 2:
            raise ConfigError(None, None, "--strategy", "sequential training needs both tasks")
        tiou = self.tad_tiou
        if (
            not isinstance(tiou, tuple | list)
            or not tiou
            or not all(
                isinstance(t, int | float) and not isinstance(t, bool) and 0 < t <= 1 for t in tiou
            )
        ):  # NaN fails 0 < t too
            raise ConfigError(
                None, None, "--tad-tiou", f"expected tIoU thresholds in (0, 1], got {tiou!r}",
                "Give start:step:stop (e.g. 0.5:0.05:0.95) or a list (e.g. 0.3,0.5,0.7)",
            )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> CoTrainSpec:
        """Inverse of :meth:`to_dict`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(obj) - names)
        if unknown:
            raise ConfigError(None, None, None, f"unknown co-training settings {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in obj.items()})


# -------------------------------------------------------------------------------- batch plans
PLANS = ("momentkit", "official")


def _chunks(units: Sequence[Unit], size: int, drop_last: bool = False) -> list[list[Unit]]:
    end = len(units) - len(units) % size if drop_last else len(units)
    return [list(units[i : i + size]) for i in range(0, end, size)]


def official_epoch_plan(
    strategy: str,
    vids_by_task: Mapping[str, Sequence[str]],
    batch_size: int,
    seed: int,
    epoch: int,
) -> list[list[Unit]]:
    """The batches of one epoch as the released UniMD code forms them (drop-last loaders).

    - one task: its videos shuffled (``train_random.py --data_type mr|tad``);
    - ``random``: every video, with all the tasks it has, shuffled (``train_random.py``);
    - ``synchronized`` (``train_sync.py``): ``n = min(#TAD-only, #MR-only)`` videos drawn from
      each single-task set; the i-th batch of TAD-only and the i-th batch of MR-only videos form
      one step of ``2 * batch_size`` units; the videos with both tasks form batches of their
      own (each video with both tasks); the steps are shuffled together.

    Raises:
        ValueError: ``selective`` (no official counterpart) or an unknown strategy.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = np.random.default_rng((seed, epoch, 0x0FF1))
    tasks = [t for t in TASKS if vids_by_task.get(t)]

    def shuffled(items: list[Any]) -> list[Any]:
        return [items[i] for i in rng.permutation(len(items))]

    if len(tasks) == 1:
        units = [(v, (tasks[0],)) for v in sorted(vids_by_task[tasks[0]])]
        return _chunks(shuffled(units), batch_size, drop_last=True)
    mr, tad = set(vids_by_task["mr"]), set(vids_by_task["tad"])
    if strategy == "random":
        units = [(v, tuple(t for t in TASKS if v in (mr, tad)[TASKS.index(t)]))
                 for v in sorted(mr | tad)]  # fmt: skip
        return _chunks(shuffled(units), batch_size, drop_last=True)
    if strategy != "synchronized":
        raise ValueError(
            f"strategy '{strategy}' has no official counterpart (the released code has "
            "synchronized and random co-training); use model.cotrain_plan=momentkit"
        )
    both = sorted(mr & tad)
    only = {"tad": sorted(tad - mr), "mr": sorted(mr - tad)}
    n = min(len(only["tad"]), len(only["mr"]))
    drawn = {t: shuffled(only[t])[:n] for t in ("tad", "mr")}
    tad_batches = _chunks([(v, ("tad",)) for v in drawn["tad"]], batch_size, drop_last=True)
    mr_batches = _chunks([(v, ("mr",)) for v in drawn["mr"]], batch_size, drop_last=True)
    joint = _chunks(shuffled([(v, TASKS) for v in both]), batch_size, drop_last=True)
    batches = joint + [a + b for a, b in zip(tad_batches, mr_batches)]
    return [batches[i] for i in rng.permutation(len(batches))]


def epoch_plan(
    strategy: str,
    vids_by_task: Mapping[str, Sequence[str]],
    batch_size: int,
    seed: int,
    epoch: int,
) -> list[list[Unit]]:
    """The batches of one epoch, a pure function of its arguments.

    Args:
        strategy: ``synchronized``, ``selective`` or ``random`` (with one task, every strategy
            is that task's plain shuffled batches).
        vids_by_task: task -> video ids with queries of it.
        batch_size: units per batch.
        seed, epoch: the randomness.

    Returns:
        Batches of ``(video id, tasks)`` units (see the module docstring). Their number depends
        only on the strategy, the set sizes and ``batch_size``, not on ``epoch``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = np.random.default_rng((seed, epoch, 0xC07A))
    tasks = [t for t in TASKS if vids_by_task.get(t)]

    def shuffled(units: list[Unit]) -> list[Unit]:
        return [units[i] for i in rng.permutation(len(units))]

    singles = {t: [(v, (t,)) for v in sorted(vids_by_task[t])] for t in tasks}
    if len(tasks) == 1:
        return _chunks(shuffled(singles[tasks[0]]), batch_size)
    if strategy == "synchronized":
        both = set(vids_by_task["mr"]) & set(vids_by_task["tad"])
        joint = [(v, tuple(tasks)) for v in sorted(both)]
        rest = [u for t in tasks for u in singles[t] if u[0] not in both]
        batches = _chunks(shuffled(joint), batch_size) + _chunks(shuffled(rest), batch_size)
    elif strategy == "selective":
        batches = [b for t in tasks for b in _chunks(shuffled(singles[t]), batch_size)]
    elif strategy == "random":
        return _chunks(shuffled([u for t in tasks for u in singles[t]]), batch_size)
    else:
        raise ValueError(f"unknown task-sampling strategy '{strategy}'")
    return [batches[i] for i in rng.permutation(len(batches))]


class PlannedBatches(Dataset):
    """An epoch's planned batches as dataset items: item ``(epoch, i)`` is batch ``i``.

    Args:
        source: the training videos.
        strategy: the task-sampling strategy.
        tasks: the tasks trained.
        batch_size: units per batch.
        seed: seed of the plans.
    """

    def __init__(
        self,
        source: MultiTaskSource,
        strategy: str,
        tasks: Sequence[str],
        batch_size: int,
        seed: int,
        plan: str = "momentkit",
    ) -> None:
        if plan not in PLANS:
            raise ConfigError(None, None, "model.cotrain_plan", f"unknown plan '{plan}'",
                              f"Use one of: {', '.join(PLANS)}")  # fmt: skip
        self.source = source
        self.strategy = strategy
        self.plan_kind = plan
        self.vids_by_task = {t: source.vids(t) for t in tasks}
        if not any(self.vids_by_task.values()):
            raise ConfigError(
                None, None, "--tasks", f"no training video has {'/'.join(tasks)} queries"
            )
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self._plans: dict[int, list[list[Unit]]] = {}
        self._length = len(self.plan(0))

    def plan(self, epoch: int) -> list[list[Unit]]:
        """The batches of ``epoch`` (cached)."""
        if epoch not in self._plans:
            make = official_epoch_plan if self.plan_kind == "official" else epoch_plan
            self._plans = {
                epoch: make(self.strategy, self.vids_by_task, self.batch_size, self.seed, epoch)
            }
        return self._plans[epoch]

    def set_epoch(self, epoch: int) -> None:
        """The epoch of integer indices."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int | tuple[int, int]) -> list[VideoItem]:
        epoch, i = index if isinstance(index, tuple) else (self.epoch, index)
        return [self.source.item(vid, tasks) for vid, tasks in self.plan(epoch)[i]]


def collate_planned(batches: Sequence[list[VideoItem]]) -> Batch:
    """The trainer's collate: its items are whole planned batches (one per process)."""
    return collate_videos([item for batch in batches for item in batch])


# --------------------------------------------------------------------------------- evaluation
class EvalVideos(Dataset):
    """Validation videos, each with every query it has; ``annotations`` are the MR records."""

    def __init__(self, source: MultiTaskSource) -> None:
        self.source = source
        self.vids = source.vids()
        self.annotations = [a for v in source.vids("mr") for a in source.mr[v]]

    def __len__(self) -> int:
        return len(self.vids)

    def __getitem__(self, index: int) -> VideoItem:
        return self.source.item(self.vids[index])


def batch_predictions(
    outputs: dict[str, Any], batch: Batch, config: UniMDConfig, mr_top_k: int = 10
) -> list[MomentPrediction]:
    """MR predictions (one per sentence) and TAD predictions (one per video) of a batch.

    TAD rows have ``qid = vid`` and ``extra = {"task": "tad", "pred_labels": [...]}``.
    """
    from momentkit.models.unimd import decode_detections

    detections = decode_detections(outputs, batch["duration"], float(batch["clip_len"]), config)
    preds: list[MomentPrediction] = []
    for b, (keys, texts) in enumerate(zip(batch["query_keys"], batch["query_texts"])):
        vid = batch["vids"][b]
        tad_rows: list[tuple[list[float], str]] = []
        for (task, key), text, (segs, scores) in zip(keys, texts, detections[b]):
            rows = [
                [round(float(s), 4), round(float(e), 4), round(float(c), 4)]
                for (s, e), c in zip(segs.tolist(), scores.tolist())
            ]
            if task == "mr":
                preds.append(MomentPrediction(key, text, vid, rows[:mr_top_k]))
            else:
                tad_rows += [(row, str(key)) for row in rows]
        if any(task == "tad" for task, _ in keys):
            tad_rows.sort(key=lambda r: -r[0][2])
            preds.append(
                MomentPrediction(
                    vid,
                    "",
                    vid,
                    [r for r, _ in tad_rows],
                    extra={"task": "tad", "pred_labels": [lab for _, lab in tad_rows]},
                )
            )
    return preds


@dataclass
class CoEvaluation:
    """Scores a model on the validation videos of both tasks.

    Attributes:
        videos: the validation videos.
        mr_evaluate: ``(predictions, annotations) -> metrics`` of MR, or ``None``.
        tad_evaluator: the ``tad`` evaluator, or ``None``.
        config: the model config (inference settings).
        batch_size: videos per forward pass.
    """

    videos: EvalVideos
    mr_evaluate: (
        Callable[[list[MomentPrediction], list[MomentAnnotation]], Mapping[str, Any]] | None
    )
    tad_evaluator: TADEvaluator | None
    config: UniMDConfig
    batch_size: int = 8

    def predict(
        self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None
    ) -> list[MomentPrediction]:
        """Predictions of ``model`` for every validation video (eval mode, no gradients)."""
        loader = DataLoader(self.videos, batch_size=self.batch_size, collate_fn=collate_videos)
        was_training = model.training
        model.eval()
        preds: list[MomentPrediction] = []
        with torch.no_grad():
            for batch in loader:
                batch = move_to_device(batch, device)
                with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=bool(dtype)):
                    outputs = model(batch)
                preds += batch_predictions(to_float32(outputs), batch, self.config)
        model.train(was_training)
        return preds

    def score(self, predictions: list[MomentPrediction]) -> dict[str, Any]:
        """``{"brief": {...}, "mr": ..., "tad": ...}`` of both tasks' predictions."""
        metrics: dict[str, Any] = {"brief": {}}
        mr = [p for p in predictions if p.extra.get("task") != "tad"]
        tad = [p for p in predictions if p.extra.get("task") == "tad"]
        if self.mr_evaluate is not None and mr:
            metrics["mr"] = dict(self.mr_evaluate(mr, self.videos.annotations))
            metrics["brief"].update(metrics["mr"].get("brief", {}))
        if self.tad_evaluator is not None and tad:
            self.tad_evaluator.reset()
            self.tad_evaluator.process(tad)
            metrics["tad"] = self.tad_evaluator.evaluate()
            metrics["brief"].update(metrics["tad"]["brief"])
        brief = metrics["brief"]
        if "MR-R1@0.5" in brief and "TAD-mAP" in brief:
            brief["MR-TAD-mean"] = round((brief["MR-R1@0.5"] + brief["TAD-mAP"]) / 2, 2)
        return metrics


class CoTrainer(Trainer):
    """The trainer with :class:`CoEvaluation` as its evaluation (main process only)."""

    def __init__(self, *args: Any, evaluation: CoEvaluation, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.evaluation = evaluation

    def evaluate(self) -> tuple[Mapping[str, Any] | None, list[MomentPrediction]]:
        """Predict and score both tasks on the main process; ``(None, [])`` on the others."""
        if not self.dist.is_main:
            return None, []
        model = unwrap_model(self.model)
        preds = self.evaluation.predict(model, self.device, self.autocast_dtype)
        return self.evaluation.score(preds), preds


# ------------------------------------------------------------------------------------- sources
@dataclass
class CoTrainData:
    """The training and validation videos of a co-training run."""

    train: MultiTaskSource
    val: MultiTaskSource | None
    classes: list[str] = field(default_factory=list)
    tad_val: list[TADVideo] = field(default_factory=list)
    mr_val: list[MomentAnnotation] = field(default_factory=list)


def _class_features(
    spec: CoTrainSpec, classes: list[str], prompt: str, run_dir: Path
) -> np.ndarray:
    if spec.tad_class_features is not None:
        return load_class_features(spec.tad_class_features, classes)[1]
    cached = run_dir / "tad_class_text.npz"
    if cached.exists():
        return load_class_features(cached, classes)[1]
    if spec.text_encoder is None:
        raise ConfigError(
            None, None, "--tad-class-features", "missing",
            "Give the class-query embeddings (.npz), or --text-encoder to compute them with the "
            "encoder of the MR query features",
        )  # fmt: skip
    features = encode_class_queries(classes, spec.text_encoder, prompt)
    save_class_features(cached, classes, features)
    return features


def load_cotrain_data(cfg: ExperimentConfig, spec: CoTrainSpec, run_dir: str | Path) -> CoTrainData:
    """Read the annotations of both tasks and open the features (see :class:`CoTrainSpec`)."""
    d = cfg.data
    run_dir = Path(run_dir)
    if not d.video_features:
        raise ConfigError(None, None, "--video-features", "missing", "Give the video streams")
    if "mr" in spec.tasks and d.train_path is None:
        raise ConfigError(None, None, "--mr-train", "missing", "Give the MR annotations")
    if ("mr" in spec.tasks or d.val_path) and d.text_features is None:
        raise ConfigError(None, None, "--text-features", "missing", "Give the MR query features")
    mr_train = load_annotations(d.train_path) if "mr" in spec.tasks and d.train_path else []
    mr_val = load_annotations(d.val_path) if d.val_path else []
    tad_train: list[TADVideo] = []
    tad_val: list[TADVideo] = []
    if "tad" in spec.tasks:
        tad_train = load_tad_json(spec.tad_train, spec.tad_train_subset)  # type: ignore[arg-type]
    if spec.tad_val is not None:
        tad_val = load_tad_json(spec.tad_val, spec.tad_val_subset)
    classes: list[str] = []
    features = None
    if tad_train or tad_val:
        classes = (
            load_class_list(spec.tad_classes)
            if spec.tad_classes
            else classes_of(tad_train + tad_val)
        )
        for videos, path in ((tad_train, spec.tad_train), (tad_val, spec.tad_val)):
            check_classes(videos, classes, path or "")
        features = _class_features(spec, classes, cfg.model.class_prompt, run_dir)
    common = dict(
        clip_len=d.clip_len,
        mr_text_store=d.text_features,
        class_names=classes,
        class_features=features,
        class_prompt=cfg.model.class_prompt,
        max_v_len=d.max_v_len,
        use_tef=d.use_tef,
        normalize_video=d.normalize_video,
        normalize_text=d.normalize_text,
        normalize_mr_queries=getattr(cfg.model, "normalize_mr_queries", True),
        grid_offset=getattr(cfg.model, "grid_offset", 0.5),
        window_clipping=getattr(cfg.model, "window_clipping", "seconds"),
    )
    train = MultiTaskSource(
        d.video_features, mr_annotations=mr_train, tad_videos=tad_train, **common
    )
    val = None
    if mr_val or tad_val:
        val = MultiTaskSource(d.video_features, mr_annotations=mr_val, tad_videos=tad_val, **common)
    return CoTrainData(train, val, classes, tad_val, mr_val)


# ------------------------------------------------------------------------------------ training
def default_best_metric(tasks: Sequence[str], has_mr_val: bool, has_tad_val: bool) -> str:
    """``MR-TAD-mean`` when both tasks are trained and scored, else the trained task's metric."""
    if "mr" in tasks and "tad" in tasks and has_mr_val and has_tad_val:
        return "MR-TAD-mean"
    if "mr" in tasks and has_mr_val:
        return "MR-R1@0.5"
    return "TAD-mAP" if has_tad_val else "MR-R1@0.5"


@dataclass
class CoTrainResult:
    """What :func:`cotrain` achieved: the final stage's fit and where its run lives."""

    fit: FitResult
    run_dir: Path
    stages: list[Path]


def _stage(
    cfg: ExperimentConfig,
    spec: CoTrainSpec,
    data: CoTrainData,
    run_dir: Path,
    tasks: tuple[str, ...],
    strategy: str,
    epochs: int,
    dist_info: DistInfo,
    resume: bool,
    init_from: Path | None,
) -> FitResult:
    """Train ``tasks`` with ``strategy`` for ``epochs`` epochs in ``run_dir``."""
    from momentkit.models import build_model
    from momentkit.models.unimd import UniMDCriterion

    seed_everything(cfg.trainer.seed)
    model = build_model(cfg.model)
    if init_from is not None and not (resume and (run_dir / "last").exists()):
        load_weights(model, init_from, strict=True)
        logger.info("initialised from %s", init_from)
    world = dist_info.world_size
    per_process = math.ceil(cfg.trainer.batch_size / world)
    plan = getattr(cfg.model, "cotrain_plan", "momentkit")
    train_set = PlannedBatches(data.train, strategy, tasks, per_process, cfg.trainer.seed, plan)
    stage_cfg = dataclasses.replace(
        cfg, trainer=dataclasses.replace(cfg.trainer, batch_size=world, epochs=epochs)
    )
    evaluation = val_set = None
    metric = "MR-R1@0.5"
    if data.val is not None:
        from momentkit.evaluation.tad import TADEvaluator
        from momentkit.training.pipeline import make_evaluate_fn

        mr_eval = make_evaluate_fn(spec.mr_evaluator, data.mr_val, cfg) if data.mr_val else None
        tad_eval = (
            TADEvaluator(to_moment_annotations(data.tad_val), tiou_thresholds=spec.tad_tiou)
            if data.tad_val
            else None
        )
        val_set = EvalVideos(data.val)
        evaluation = CoEvaluation(val_set, mr_eval, tad_eval, cfg.model, cfg.data.eval_batch_size)
        metric = spec.best_metric or (
            cfg.trainer.best_metric
            if cfg.trainer.best_metric != "auto"
            else default_best_metric(tasks, bool(data.mr_val), bool(data.tad_val))
        )
    trainer = CoTrainer(
        stage_cfg,
        model,
        UniMDCriterion(model.config),
        train_set,
        val_set,
        run_dir=run_dir,
        postprocess=_unused_postprocess if evaluation is not None else None,
        evaluator=_unused_evaluator if evaluation is not None else None,
        best_metric=metric,
        model_config=model.config.to_dict(),
        collate_fn=collate_planned,
        dist_info=dist_info,
        evaluation=evaluation,  # type: ignore[arg-type]
    )
    if dist_info.is_main:
        logger.info(
            "unimd %s on %s: %d parameters, %d steps per epoch, %d epochs, selecting by %s",
            strategy if len(tasks) > 1 else "single-task",
            "+".join(tasks),
            model.num_parameters(),
            trainer.steps_per_epoch,
            epochs,
            metric,
        )
    return trainer.fit(resume=resume)


def _unused_postprocess(outputs: dict[str, Any], batch: Batch) -> list[MomentPrediction]:
    raise RuntimeError("CoTrainer evaluates with CoEvaluation")


def _unused_evaluator(
    preds: list[MomentPrediction], anns: list[MomentAnnotation]
) -> Mapping[str, Any]:
    raise RuntimeError("CoTrainer evaluates with CoEvaluation")


def cotrain(
    cfg: ExperimentConfig,
    spec: CoTrainSpec,
    run_dir: str | Path,
    *,
    resume: bool = False,
    dist_info: DistInfo | None = None,
) -> CoTrainResult:
    """Train a UniMD model as ``spec`` says (see the module docstring).

    Args:
        cfg: the experiment (``data.train_path``/``val_path`` are the MR annotations,
            ``trainer.batch_size`` counts (video, task) units per step over all processes).
        spec: tasks, strategy and the TAD data.
        run_dir: output directory; ``sequential`` writes one sub-directory per stage.
        resume: continue from the ``last`` checkpoint(s).
        dist_info: this process's place in a ``torchrun`` job.
    """
    spec.validate()
    if cfg.model_name != "unimd":
        raise ConfigError(
            None, None, "model.name", f"co-training needs unimd, got {cfg.model_name}"
        )
    if (
        getattr(cfg.model, "cotrain_plan", "momentkit") == "official"
        and spec.strategy == "selective"
    ):
        raise ConfigError(
            None, None, "--strategy",
            "selective has no official counterpart (the released code co-trains synchronized "
            "or random); it is momentkit's own",
            "Use --strategy synchronized/random, or --set model.cotrain_plan=momentkit",
        )  # fmt: skip
    run_dir = Path(run_dir)
    dist_info = dist_info or DistInfo(device=resolve_device(cfg.trainer.device))
    configure_determinism(cfg.trainer.deterministic)
    data = load_cotrain_data(cfg, spec, run_dir)
    for key, value in (
        ("video_dim", data.train.video_dim),
        ("text_dim", data.train.text_dim),
        ("max_video_len", cfg.data.max_v_len),
    ):
        if value is not None:
            setattr(cfg.model, key, value)
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "cotrain.json", {"spec": spec.to_dict(), "experiment": cfg.to_dict()})
    if spec.strategy != "sequential" or len(spec.tasks) == 1:
        fit = _stage(cfg, spec, data, run_dir, spec.tasks, spec.strategy, cfg.trainer.epochs,
                     dist_info, resume, None)  # fmt: skip
        return CoTrainResult(fit, run_dir, [run_dir])
    first = spec.first_task
    second = next(t for t in TASKS if t != first)
    pre_dir, fine_dir = run_dir / f"pretrain_{first}", run_dir / f"finetune_{second}"
    pre_epochs = spec.pretrain_epochs if spec.pretrain_epochs is not None else cfg.trainer.epochs
    _stage(cfg, spec, data, pre_dir, (first,), "synchronized", pre_epochs, dist_info, resume, None)
    init = pre_dir / "best" if (pre_dir / "best").exists() else pre_dir / "last"
    fit = _stage(cfg, spec, data, fine_dir, (second,), "synchronized", cfg.trainer.epochs,
                 dist_info, resume, init)  # fmt: skip
    return CoTrainResult(fit, fine_dir, [pre_dir, fine_dir])


__all__ = [
    "PLANS",
    "STRATEGIES",
    "CoEvaluation",
    "CoTrainData",
    "CoTrainResult",
    "CoTrainSpec",
    "CoTrainer",
    "EvalVideos",
    "PlannedBatches",
    "batch_predictions",
    "collate_planned",
    "cotrain",
    "default_best_metric",
    "epoch_plan",
    "load_cotrain_data",
    "official_epoch_plan",
]
