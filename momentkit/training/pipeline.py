"""Wiring for ``momentkit train`` / ``momentkit predict``: datasets, model, evaluator, trainer.

:func:`train` builds everything an :class:`~momentkit.training.config.ExperimentConfig`
describes and runs the :class:`~momentkit.training.trainer.Trainer`; :func:`predict` loads a
trained checkpoint and writes predictions in the official format.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from momentkit.data.loader import MomentDataset, collate
from momentkit.data.records import MomentAnnotation, MomentPrediction, load_annotations
from momentkit.training.checkpoint import (
    EXPERIMENT_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    load_weights,
)
from momentkit.training.config import ConfigError, ExperimentConfig, load_config
from momentkit.training.distributed import DistInfo, resolve_device
from momentkit.training.seed import configure_determinism, seed_everything
from momentkit.training.trainer import FitResult, Trainer, autocast_dtype, inference_loop

logger = logging.getLogger("momentkit.training")

#: metric selecting the best checkpoint when ``trainer.best_metric`` is ``auto``, by evaluator
DEFAULT_BEST_METRIC = {
    "qvhighlights": "MR-full-mAP",
    "grounding": "MR-R1@0.5",
    "charades_sta": "MR-R1@0.5",
    "tacos": "MR-R1@0.5",
    "activitynet": "MR-R1@0.5",
    "tvsum": "HL-mAP",
    "youtube_highlights": "HL-mAP",
}

#: model-config fields filled from the data (feature widths, sequence limits)
DERIVED_MODEL_KEYS = ("video_dim", "text_dim", "max_video_len", "max_text_len")
#: also filled from the data, for models that split the video streams (MS-DETR): the width of
#: each ``--video-features`` store
DERIVED_STREAM_KEYS = ("stream_dims",)


# ---------------------------------------------------------------------------------------- data
def open_dataset(
    annotations: Sequence[MomentAnnotation],
    cfg: ExperimentConfig,
    *,
    training: bool,
    video_features: Sequence[str] | None = None,
    text_features: str | None = None,
) -> MomentDataset:
    """A :class:`MomentDataset` with the ``data`` section's settings.

    Args:
        annotations: the split's records.
        cfg: the experiment config (``data`` section; ``trainer.seed`` seeds the labels).
        training: sample training labels per epoch and require ground truth.
        video_features: video stores (default ``data.video_features``).
        text_features: query store (default ``data.text_features``).
    """
    d = cfg.data
    video = list(video_features if video_features is not None else d.video_features)
    text = text_features if text_features is not None else d.text_features
    if not video or text is None:
        raise ConfigError(
            None, None, "data.video_features" if not video else "data.text_features",
            "missing", "Pass --video-features DIR [DIR ...] and --text-features DIR",
        )  # fmt: skip
    return MomentDataset(
        annotations,
        video,
        text,
        max_v_len=d.max_v_len,  # type: ignore[arg-type]
        max_q_len=d.max_q_len,
        clip_len=d.clip_len,
        use_tef=d.use_tef,
        normalize_video=d.normalize_video,
        normalize_text=d.normalize_text,
        training=training,
        seed=cfg.trainer.seed,
    )


def with_data_dims(cfg: ExperimentConfig, dataset: MomentDataset) -> ExperimentConfig:
    """``cfg`` with the model's input widths and length limits taken from ``dataset``/``data``."""
    values = {
        "video_dim": dataset.video_dim,
        "text_dim": dataset.text_dim,
        "max_video_len": cfg.data.max_v_len,
        "max_text_len": cfg.data.max_q_len,
        "stream_dims": video_stream_dims(dataset),
    }
    for key, value in values.items():
        if value is not None and hasattr(cfg.model, key):
            setattr(cfg.model, key, value)
    return cfg


def video_stream_dims(dataset: Any) -> list[int] | None:
    """Channels of each video feature store of ``dataset`` (unwrapping ``.base``), TEF
    excluded; ``None`` when the dataset does not expose its stores."""
    source = getattr(getattr(dataset, "base", dataset), "video", None)
    stores = getattr(source, "stores", None)
    return None if stores is None else [int(s.dim) for s in stores]


# ----------------------------------------------------------------------------------- evaluation
def evaluator_name(cfg: ExperimentConfig, annotations: Sequence[MomentAnnotation]) -> str:
    """The ``EVALUATORS`` name for ``data.evaluator`` (``auto``: from the dataset or the data)."""
    from momentkit.evaluation import EVALUATORS, detect_dataset

    name = cfg.data.evaluator
    if name == "auto":
        name = cfg.data.dataset if cfg.data.dataset in EVALUATORS else detect_dataset(annotations)
    if name not in EVALUATORS:
        raise ConfigError(
            None, None, "data.evaluator", f"unknown evaluator '{name}'",
            f"Known: auto, {', '.join(EVALUATORS.names())}",
        )  # fmt: skip
    return name


def best_metric_name(cfg: ExperimentConfig, evaluator: str) -> str:
    """``trainer.best_metric``, with ``auto`` resolved for ``evaluator``."""
    if cfg.trainer.best_metric != "auto":
        return cfg.trainer.best_metric
    return DEFAULT_BEST_METRIC.get(evaluator, "MR-full-mAP")


def make_evaluate_fn(
    name: str, annotations: Sequence[MomentAnnotation], cfg: ExperimentConfig
) -> Callable[[list[MomentPrediction], list[MomentAnnotation]], Mapping[str, Any]]:
    """``(predictions, annotations) -> metrics`` with evaluator ``name`` built once."""
    from momentkit.evaluation import build_evaluator

    kwargs = {"clip_len": cfg.data.clip_len} if name == "qvhighlights" else {}
    evaluator = build_evaluator(name, annotations, **kwargs)

    def evaluate(
        predictions: list[MomentPrediction], _annotations: list[MomentAnnotation]
    ) -> Mapping[str, Any]:
        evaluator.reset()
        evaluator.process(predictions)
        return evaluator.evaluate()

    return evaluate


# ------------------------------------------------------------------------------------- training
def train(
    cfg: ExperimentConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    init_from: str | Path | None = None,
    dist_info: DistInfo | None = None,
) -> FitResult:
    """Train the model ``cfg`` describes on ``data.train_path``, evaluating on ``data.val_path``.

    Args:
        cfg: the experiment (paths in the ``data`` section).
        run_dir: output directory (see :mod:`momentkit.training.trainer`).
        resume: continue from ``run_dir/last`` if it exists.
        init_from: a checkpoint (directory with ``model.safetensors``, or a run directory) whose
            matching weights initialise the model (ignored when resuming).
        dist_info: this process's place in a ``torchrun`` job.
    """
    from momentkit.modeling.postprocess import PostProcessor
    from momentkit.models import build_criterion, build_model

    dist_info = dist_info or DistInfo(device=resolve_device(cfg.trainer.device))
    if cfg.data.train_path is None:
        raise ConfigError(None, None, "data.train_path", "missing", "Pass --train TRAIN.jsonl")
    configure_determinism(cfg.trainer.deterministic)
    from momentkit.extraction.record import check_training_features

    check_training_features(cfg.data.video_features)  # one pipeline's streams only
    train_anns = load_annotations(cfg.data.train_path)
    train_set = open_dataset(train_anns, cfg, training=True)
    collate_fn = collate
    if cfg.data.corpus is not None:  # generated queries beside each training query (MS-DETR)
        from momentkit.data.augmented import AugmentedDataset, augmented_collate

        train_set = AugmentedDataset(
            train_set,
            cfg.data.corpus,
            cfg.data.corpus_text_features,
            per_query=cfg.data.corpus_per_query,
            seed=cfg.trainer.seed,
        )
        collate_fn = augmented_collate
    val_set, evaluate, metric = None, None, best_metric_name(cfg, "qvhighlights")
    if cfg.data.val_path is not None:
        val_anns = load_annotations(cfg.data.val_path)
        val_set = open_dataset(val_anns, cfg, training=False)
        name = evaluator_name(cfg, val_anns)
        evaluate = make_evaluate_fn(name, val_anns, cfg)
        metric = best_metric_name(cfg, name)
    cfg = with_data_dims(cfg, train_set)

    seed_everything(cfg.trainer.seed)  # identical initial weights on every process
    try:
        model = build_model(cfg.model)
        criterion = build_criterion(model.config)
    except (ValueError, TypeError) as e:
        hint = "Fix the model section (--set model.*)"
        raise ConfigError(None, None, "model", str(e), hint) from None
    if init_from is not None and not (resume and (Path(run_dir) / "last").exists()):
        source = checkpoint_dir(init_from)
        missing, unexpected = load_weights(model, source, strict=False)
        if dist_info.is_main:
            logger.info(
                "initialised from %s (%d missing, %d unexpected keys)",
                source,
                len(missing),
                len(unexpected),
            )
    trainer = Trainer(
        cfg,
        model,
        criterion,
        train_set,
        val_set,
        run_dir=run_dir,
        postprocess=PostProcessor(**getattr(model.config, "postprocess", {})),
        evaluator=evaluate,
        best_metric=metric,
        model_config=model.config.to_dict(),
        collate_fn=collate_fn,
        dist_info=dist_info,
    )
    if dist_info.is_main:
        logger.info(
            "%s: %d parameters, %d training / %d validation queries, %d steps per epoch",
            cfg.model_name,
            model.num_parameters(),
            len(train_set),
            len(val_set) if val_set is not None else 0,
            trainer.steps_per_epoch,
        )
    return trainer.fit(resume=resume)


def compare_configs(saved: ExperimentConfig, given: ExperimentConfig) -> list[str]:
    """Dotted keys whose values differ, ignoring run-neutral and data-derived keys."""
    neutral = {"trainer.progress", "data.num_workers", "data.eval_batch_size"}
    neutral |= {f"model.{k}" for k in DERIVED_MODEL_KEYS + DERIVED_STREAM_KEYS}
    a, b = _flatten(saved.to_dict()), _flatten(given.to_dict())
    return sorted(k for k in a.keys() | b.keys() if k not in neutral and a.get(k) != b.get(k))


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if isinstance(v, Mapping) and prefix.count(".") < 1:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


# ------------------------------------------------------------------------------------ inference
def checkpoint_dir(path: str | Path) -> Path:
    """The checkpoint directory of ``path``: itself, or ``path/best`` for a run directory."""
    path = Path(path)
    if (path / WEIGHTS_NAME).exists():
        return path
    if (path / "best" / WEIGHTS_NAME).exists():
        return path / "best"
    raise CheckpointError(
        f"{path}: neither a checkpoint (no {WEIGHTS_NAME}) nor a run directory (no best/). "
        "Pass the --out directory of `momentkit train`, or one of its best/ or last/ folders"
    )


def load_experiment(directory: str | Path) -> ExperimentConfig:
    """The experiment config saved beside a checkpoint (or in its run directory)."""
    directory = Path(directory)
    for candidate in (directory / EXPERIMENT_NAME, directory.parent / "config.json"):
        if candidate.exists():
            return load_config(candidate)
    raise CheckpointError(f"{directory}: no {EXPERIMENT_NAME} beside the weights")


def predict(
    checkpoint: str | Path,
    annotations: Sequence[MomentAnnotation],
    video_features: Sequence[str],
    text_features: str,
    *,
    batch_size: int | None = None,
    device: str = "auto",
    num_workers: int = 0,
) -> list[MomentPrediction]:
    """Predictions of a trained checkpoint for ``annotations``, in their order.

    Args:
        checkpoint: a run directory (its ``best/`` is used) or a checkpoint directory.
        annotations: the queries (ground truth not needed).
        video_features: video stores, the same streams in the same order as in training.
        text_features: the query store.
        batch_size: queries per batch (default: the run's ``data.eval_batch_size``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        num_workers: data-loading workers.

    Raises:
        CheckpointError: no checkpoint at ``checkpoint``.
        FeatureError: features missing, or of another width than the model was trained on.
    """
    from momentkit.modeling.postprocess import PostProcessor
    from momentkit.models import MomentModel
    from momentkit.utils.errors import FeatureError

    ckpt = checkpoint_dir(checkpoint)
    cfg = load_experiment(ckpt)
    dev = resolve_device(device)
    model = MomentModel.from_pretrained(ckpt, device=dev)
    dataset = open_dataset(
        annotations, cfg, training=False, video_features=video_features, text_features=text_features
    )
    for what, got, want in (
        ("video", dataset.video_dim, getattr(model.config, "video_dim", None)),
        ("query", dataset.text_dim, getattr(model.config, "text_dim", None)),
    ):
        if want is not None and got != want:
            raise FeatureError(
                f"the {what} features have {got} channels but {ckpt} was trained on {want}"
                + (" (TEF included)" if what == "video" and cfg.data.use_tef else "")
                + ". Pass the same feature streams, in the same order, as in training"
            )
    check_video_streams(cfg, ckpt, video_features, video_stream_dims(dataset), model.config)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size or cfg.data.eval_batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate,
    )
    predictions = inference_loop(
        model,
        loader,
        dev,
        PostProcessor(**getattr(model.config, "postprocess", {})),  # the model's own
        autocast_dtype(cfg.trainer.precision, dev),
    )
    check_finite_predictions(predictions, ckpt)
    return predictions


def check_video_streams(
    cfg: ExperimentConfig,
    ckpt: Path,
    video_features: Sequence[str],
    dims: Sequence[int] | None,
    model_config: Any = None,
) -> None:
    """Refuse video streams given in another order (or other streams) than in training.

    The run records its streams (``data.video_features``): the given stores must have the same
    names (folder names; a packed store's source folder) in the same order when they are the
    same streams, and the same channels per stream where training's are known (the model's
    ``stream_dims``, or the recorded stores when they are still there).

    Raises:
        FeatureError: naming both lists and saying which order to use.
    """
    from momentkit.features import open_feature_store
    from momentkit.inference.predictor import stream_name
    from momentkit.utils.errors import FeatureError, MomentkitError

    trained = [str(p) for p in cfg.data.video_features]
    given = [str(p) for p in video_features]
    names_t = [stream_name(p) for p in trained]
    names_g = [stream_name(p) for p in given]
    hint = (
        f". {ckpt} was trained on --video-features {' '.join(names_t)} (in this order); pass "
        "the same streams in the same order"
    )
    if (
        len(set(names_t)) == len(names_t)
        and sorted(names_t) == sorted(names_g)
        and names_t != names_g
    ):
        raise FeatureError(f"the video streams are in another order ({' '.join(names_g)})" + hint)
    want = getattr(model_config, "stream_dims", None)
    if not want and trained and len(trained) == len(given):
        try:  # the training stores, when they are still where the run read them
            want = [open_feature_store(p).dim for p in trained]
        except (MomentkitError, OSError):
            want = None
    if want and dims is not None and list(want) != list(dims):
        raise FeatureError(
            f"the video streams have {list(dims)} channels but the model was trained on "
            f"{list(want)}" + hint
        )


def check_finite_predictions(predictions: Sequence[MomentPrediction], ckpt: Path) -> None:
    """Refuse predictions holding NaN/Inf (never written as if they were results).

    Raises:
        TrainingError: naming the first query and what to do.
    """
    import math

    from momentkit.training.trainer import TrainingError

    for p in predictions:
        values = [x for w in p.pred_relevant_windows for x in w] + list(p.pred_saliency_scores)
        if not all(math.isfinite(float(x)) for x in values):
            raise TrainingError(
                f"{ckpt}: the model predicts NaN/Inf for query {p.qid!r} (video {p.vid!r}). "
                "Check the features of this video for extreme values, or use another checkpoint"
            )


def load_run_config(run_dir: str | Path) -> ExperimentConfig | None:
    """The config saved in ``run_dir/config.json``, or ``None`` for a new run directory."""
    path = Path(run_dir) / "config.json"
    return load_config(path) if path.exists() else None


__all__ = [
    "DEFAULT_BEST_METRIC",
    "best_metric_name",
    "checkpoint_dir",
    "compare_configs",
    "evaluator_name",
    "load_experiment",
    "load_run_config",
    "make_evaluate_fn",
    "open_dataset",
    "predict",
    "train",
    "with_data_dims",
]
