"""`momentkit train`: train a moment model on feature files, keeping the best checkpoint.

Example::

    momentkit train --model moment_detr --preset qvhighlights \\
        --train data/highlight_train_release.jsonl --val data/highlight_val_release.jsonl \\
        --video-features feats/slowfast feats/clip --text-features feats/clip_text \\
        --out runs/mdetr --set optim.lr=2e-4 trainer.eval_every=5

    # after an interruption: the same command with --resume (or just --out RUN_DIR --resume)
    momentkit train --out runs/mdetr --resume

    # several processes (DistributedDataParallel; gloo on CPU, NCCL on GPU)
    torchrun --nproc_per_node 2 -m momentkit train ...

RUN_DIR receives ``best/`` (model.safetensors + config.json + experiment.json), ``last/`` (the
resumable state), ``val_preds.jsonl``, ``val_metrics.json`` (best epoch), ``log.jsonl`` and
``config.json``. See docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from momentkit.cli.common import add_set_argument, at_least, check_model_name

HELP = "train a moment retrieval / highlight detection model on feature files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``momentkit train``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "Values come from the model's defaults (the paper settings), then --preset, then the "
        "flags, then --set.\nList every key with --show-config; presets live in "
        "momentkit/configs/<model>/<dataset>.yaml."
    )
    parser.add_argument("--model", help="model name (moment_detr, qd_detr, ...)")
    parser.add_argument("--train", metavar="TRAIN.jsonl", help="training annotations")
    parser.add_argument("--val", metavar="VAL.jsonl", help="validation annotations")
    parser.add_argument(
        "--video-features",
        nargs="+",
        metavar="DIR",
        help="video feature stores (.npz directories or packed stores), one per stream",
    )
    parser.add_argument("--text-features", metavar="DIR", help="query feature store")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    parser.add_argument("--epochs", type=at_least(0), help="training epochs (trainer.epochs)")
    parser.add_argument(
        "--batch-size",
        type=at_least(1),
        help="queries per step over all processes (trainer.batch_size)",
    )
    parser.add_argument(
        "--preset",
        metavar="NAME",
        help="YAML preset: a dataset name (qvhighlights, charades_sta, tacos, synth), "
        "MODEL/DATASET, or a path to a .yaml file",
    )
    add_set_argument(
        parser, "config overrides with dotted keys, e.g. model.hidden_dim=128 optim.lr=2e-4", "set"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in RUN_DIR from its last checkpoint"
    )
    parser.add_argument(
        "--init-from",
        metavar="CKPT",
        help="initialise the weights from a checkpoint or run directory (e.g. pre-training)",
    )
    parser.add_argument(
        "--show-config", action="store_true", help="print the resolved config as JSON and exit"
    )


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set`` equivalents of the convenience flags that were given."""
    out = []
    if args.train is not None:
        out.append(f"data.train_path={args.train}")
    if args.val is not None:
        out.append(f"data.val_path={args.val}")
    if args.video_features is not None:
        out.append("data.video_features=" + json.dumps(list(args.video_features)))
    if args.text_features is not None:
        out.append(f"data.text_features={args.text_features}")
    if args.epochs is not None:
        out.append(f"trainer.epochs={args.epochs}")
    if args.batch_size is not None:
        out.append(f"trainer.batch_size={args.batch_size}")
    return out


#: settings a resumed run may change: they extend or observe the run without changing what the
#: epochs already trained mean (``trainer.epochs``: the learning-rate schedule becomes the one of
#: a run planned for the new length, continued from the current step; docs/training.md)
RESUME_CHANGEABLE = frozenset(
    {"trainer.epochs", "trainer.patience", "trainer.eval_every", "trainer.checkpoint_every",
     "trainer.device"}
)  # fmt: skip


def resolve_config(args: argparse.Namespace):  # noqa: ANN201 (ExperimentConfig; lazy import)
    """The experiment config of this invocation.

    A new run is built from defaults, ``--preset``, the flags and ``--set``. With ``--resume``
    in a run directory holding ``config.json``, that config is used; the options given must
    agree with it (a differing value is an error naming the keys), except the settings of
    :data:`RESUME_CHANGEABLE` (e.g. ``--epochs`` to extend a finished run).
    """
    from momentkit.training.config import ConfigError, apply_overrides, build_config
    from momentkit.training.pipeline import compare_configs, load_run_config
    from momentkit.training.resume_paths import (
        DATA_PATH_KEYS,
        MISSING_HINT,
        absolute,
        first_missing,
        same_data,
    )

    check_model_name(args.model)
    overrides = _flag_overrides(args) + list(args.set)
    saved = load_run_config(args.out) if args.resume else None
    if saved is None:
        return build_config(args.model, args.preset, overrides)
    if args.model is not None or args.preset is not None:
        given = build_config(args.model, args.preset, overrides)
    else:
        given = apply_overrides(saved, overrides)
    a, b = saved.to_dict(), given.to_dict()
    diffs = [k for k in compare_configs(saved, given) if k not in RESUME_CHANGEABLE]
    moved = [k for k in diffs if k in DATA_PATH_KEYS and same_data(_get(a, k), _get(b, k))]
    diffs = [k for k in diffs if k not in moved]
    if diffs:
        shown = "; ".join(f"{k}: saved {_get(a, k)!r}, given {_get(b, k)!r}" for k in diffs[:5])
        raise ConfigError(
            f"{args.out}/config.json",
            None,
            None,
            f"--resume with a different config ({shown})",
            "Resume with the run's own settings (just `--out RUN_DIR --resume`), or start a new "
            "run in another --out directory",
        )
    for key in DATA_PATH_KEYS:  # paths relative to the folder the run was started in
        missing = first_missing(_get(b, key))
        if missing is not None:
            raise ConfigError(
                f"{args.out}/config.json",
                None,
                key,
                f"{missing!r} does not exist from here ({Path.cwd()})",
                f"{MISSING_HINT} (--train, --val, --video-features, --text-features, --set "
                "data....)",
            )
    changes = [f"trainer.progress={given.trainer.progress}"]
    changes += [f"{k}={_get(b, k)}" for k in sorted(RESUME_CHANGEABLE)]
    cfg = apply_overrides(saved, [c.replace("=None", "=null") for c in changes])
    for key in moved:  # the same data named from here: saved as absolute paths from now on
        value, now = _get(b, key), absolute(_get(b, key))
        print(f"--resume: {key} given as {value!r} (saved {_get(a, key)!r}); now {now!r}")
        setattr(cfg.data, key.partition(".")[2], now)
    return cfg


def _get(obj: dict, dotted: str) -> object:
    section, _, key = dotted.partition(".")
    return obj.get(section, {}).get(key)


def run(args: argparse.Namespace) -> int:
    """Train; print the best metric and where the checkpoint is."""

    from momentkit.training.checkpoint import find_checkpoint
    from momentkit.training.config import ConfigError
    from momentkit.training.distributed import cleanup_distributed, init_distributed
    from momentkit.training.pipeline import train

    if args.resume and not Path(args.out).is_dir():
        raise ConfigError(
            args.out,
            None,
            None,
            "--resume: no such run folder"
            if not Path(args.out).exists()
            else "--resume: not a run folder",
            "Check the --out path of the run to continue, or drop --resume to start a new run",
        )
    cfg = resolve_config(args)
    if args.show_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    for key, value in (
        ("--train", cfg.data.train_path),
        ("--text-features", cfg.data.text_features),
    ):
        if not value:
            raise ConfigError(None, None, key, "missing", "Say which files to train on")
    if not cfg.data.video_features:
        raise ConfigError(None, None, "--video-features", "missing", "Give the video streams")
    out = Path(args.out)
    if not args.resume and find_checkpoint(out / "last") is not None:
        raise ConfigError(
            out,
            None,
            None,
            "already holds a training run",
            "Pass --resume to continue it, or choose another --out directory",
        )
    info = init_distributed(cfg.trainer.device)
    logging.basicConfig(
        level=logging.INFO if info.is_main else logging.WARNING,
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        result = train(cfg, out, resume=args.resume, init_from=args.init_from, dist_info=info)
    finally:
        cleanup_distributed()
    if info.is_main:
        if result.best_value is not None:
            print(
                f"best {result.best_metric} = {result.best_value:.2f} at epoch "
                f"{result.best_epoch} ({result.epochs_done} epochs"
                + (", stopped early" if result.stopped_early else "")
                + f"); checkpoint: {out / 'best'}"
            )
        else:
            print(f"trained {result.epochs_done} epochs; checkpoint: {out / 'best'}")
    return 0
