"""`momentkit cotrain`: train UniMD on moment retrieval and temporal action detection together.

Example (the synthetic MR+TAD benchmark: ``momentkit synth DATA --mode tad``)::

    momentkit cotrain --model unimd --preset synth \\
        --mr-train DATA/annotations/train.jsonl --mr-val DATA/annotations/val.jsonl \\
        --tad-train DATA/annotations/tad.json --tad-val DATA/annotations/tad.json \\
        --tad-classes DATA/annotations/tad_classes.txt \\
        --tad-class-features DATA/features/tad_class_text.npz \\
        --video-features DATA/features/slowfast DATA/features/clip \\
        --text-features DATA/features/clip_text \\
        --strategy synchronized --out runs/unimd_sync

``--tasks mr`` / ``--tasks tad`` train one task; ``--strategy`` is ``synchronized``,
``selective``, ``random`` or ``sequential`` (with ``--first tad``: pre-train on TAD, then
fine-tune on MR). With ``model.cotrain_plan: official`` (the ``charades_sta``,
``activitynet`` and ``synth_official`` presets) the batches are those of the released
``train_sync.py`` / ``train_random.py``; ``selective`` is momentkit's own and refused then. See
docs/unimd.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from momentkit.cli.common import at_least, check_model_name

HELP = "co-train UniMD on moment retrieval and temporal action detection"

STRATEGIES = ("synchronized", "selective", "random", "sequential")
TASKS_OF = {"both": ("mr", "tad"), "mr": ("mr",), "tad": ("tad",)}
BRIEF = ("MR-R1@0.5", "MR-R1@0.7", "MR-R5@0.5", "MR-R5@0.7", "TAD-mAP")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``momentkit cotrain``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "Values come from the model's defaults (the official UniMD Charades config), then "
        "--preset (momentkit/configs/unimd/), then the flags, then --set."
    )
    parser.add_argument("--model", help="model name (default: unimd)")
    parser.add_argument("--preset", metavar="NAME", help="YAML preset (synth, charades, ...)")
    parser.add_argument("--mr-train", metavar="TRAIN.jsonl", help="MR training annotations")
    parser.add_argument("--mr-val", metavar="VAL.jsonl", help="MR validation annotations")
    parser.add_argument(
        "--tad-train", metavar="TAD.json", help="TAD annotations (ActivityNet layout)"
    )
    parser.add_argument("--tad-val", metavar="TAD.json", help="TAD validation annotations")
    parser.add_argument("--tad-train-subset", help="subset of --tad-train (default: training)")
    parser.add_argument("--tad-val-subset", help="subset of --tad-val (default: validation)")
    parser.add_argument("--tad-classes", metavar="FILE", help="class list (.txt one a line, .json)")
    parser.add_argument(
        "--tad-class-features",
        metavar="FILE.npz",
        help="class-query embeddings (names, pooler_output); else computed with --text-encoder",
    )
    parser.add_argument(
        "--text-encoder",
        metavar="SPEC",
        help="encoder of the MR query features, to embed the class prompts (e.g. clip:ID)",
    )
    parser.add_argument(
        "--video-features", nargs="+", metavar="DIR", help="video feature stores, one per stream"
    )
    parser.add_argument("--text-features", metavar="DIR", help="MR query feature store")
    parser.add_argument(
        "--tasks",
        choices=("both", "mr", "tad"),
        help="tasks to train (default: both)",
    )
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        help="task sampling (default: synchronized)",
    )
    parser.add_argument(
        "--first", choices=("mr", "tad"), help="sequential: the pre-training task (default: tad)"
    )
    parser.add_argument(
        "--pretrain-epochs", type=at_least(0), help="sequential: epochs of the first task"
    )
    parser.add_argument(
        "--tad-tiou",
        metavar="T",
        type=tiou_thresholds,
        help="TAD tIoU thresholds in (0, 1], start:step:stop or a,b,c (default by "
        "data.dataset: 0.5:0.05:0.95 ActivityNet, else 0.3:0.1:0.7)",
    )
    parser.add_argument("--mr-evaluator", help="MR evaluator (default: grounding)")
    parser.add_argument("--best-metric", help="metric selecting the best checkpoint")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    parser.add_argument("--epochs", type=at_least(0), help="training epochs (trainer.epochs)")
    parser.add_argument("--batch-size", type=at_least(1), help="(video, task) units per step")
    parser.add_argument(
        "--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
        help="config overrides, e.g. model.hidden_dim=256 optim.lr=2e-4",
    )  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR")
    parser.add_argument("--show-config", action="store_true", help="print the config and exit")


def tiou_thresholds(text: str) -> tuple[float, ...]:
    """An argparse ``type``: ``--tad-tiou`` parsed when the command line is read; a malformed
    list is a usage error saying the accepted forms (``argument --tad-tiou: 1.5 is outside
    (0, 1] ...``)."""
    from momentkit.evaluation.tad import parse_thresholds

    try:
        return parse_thresholds(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _overrides(args: argparse.Namespace) -> list[str]:
    out = []
    for key, value in (
        ("data.train_path", args.mr_train),
        ("data.val_path", args.mr_val),
        ("data.text_features", args.text_features),
        ("trainer.epochs", args.epochs),
        ("trainer.batch_size", args.batch_size),
    ):
        if value is not None:
            out.append(f"{key}={value}")
    if args.video_features is not None:
        out.append("data.video_features=" + json.dumps(list(args.video_features)))
    return out + list(args.set)


def _spec_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The co-training settings given on the command line (``CoTrainSpec`` field -> value)."""
    given = {
        "tasks": None if args.tasks is None else TASKS_OF[args.tasks],
        "strategy": args.strategy,
        "first_task": args.first,
        "pretrain_epochs": args.pretrain_epochs,
        "tad_train": args.tad_train,
        "tad_val": args.tad_val,
        "tad_train_subset": args.tad_train_subset,
        "tad_val_subset": args.tad_val_subset,
        "tad_classes": args.tad_classes,
        "tad_class_features": args.tad_class_features,
        "text_encoder": args.text_encoder,
        "tad_tiou": args.tad_tiou,
        "mr_evaluator": args.mr_evaluator,
        "best_metric": args.best_metric,
    }
    return {k: v for k, v in given.items() if v is not None}


def resolve(args: argparse.Namespace):  # noqa: ANN201 (ExperimentConfig, CoTrainSpec; lazy imports)
    """The experiment config and co-training spec of this invocation.

    A new run is built from the defaults, ``--preset``, the flags and ``--set``. With
    ``--resume`` in a run directory holding ``cotrain.json`` the saved settings are used; options
    given must agree with them (a differing value is an error naming it).
    """
    import dataclasses
    from pathlib import Path

    from momentkit.evaluation.tad import DEFAULT_TIOU, THUMOS_TIOU
    from momentkit.training import resume_paths as paths
    from momentkit.training.config import (
        ConfigError,
        ExperimentConfig,
        apply_overrides,
        build_config,
    )
    from momentkit.training.cotrain import CoTrainSpec
    from momentkit.training.pipeline import compare_configs

    check_model_name(args.model)
    fields = _spec_fields(args)
    saved_path = Path(args.out) / "cotrain.json"
    if not (args.resume and saved_path.exists()):
        cfg = build_config(args.model or "unimd", args.preset, _overrides(args))
        fields.setdefault("tad_tiou", DEFAULT_TIOU.get(cfg.data.dataset, THUMOS_TIOU))
        spec = CoTrainSpec(**fields)
        spec.validate()
        return cfg, spec
    from momentkit.utils.io import read_json

    saved = read_json(saved_path, "a cotrain run's settings")
    parts = ("spec", "experiment")
    if not (isinstance(saved, dict) and all(isinstance(saved.get(k), dict) for k in parts)):
        raise ConfigError(
            saved_path, None, None,
            'expected {"spec": {...}, "experiment": {...}} as `momentkit cotrain` writes it',
            "Resume from an intact run folder, or start a new run with another --out",
        )  # fmt: skip
    cfg = ExperimentConfig.from_dict(saved["experiment"], source=saved_path)
    spec = CoTrainSpec.from_dict(saved["spec"])
    if args.model is not None or args.preset is not None:
        given = build_config(args.model or "unimd", args.preset, _overrides(args))
    else:
        given = apply_overrides(cfg, _overrides(args))

    def setting(config: ExperimentConfig, dotted: str) -> object:
        section, _, key = dotted.partition(".")
        return getattr(getattr(config, section), key)

    diffs = compare_configs(cfg, given)
    moved = [
        k
        for k in diffs
        if k in paths.DATA_PATH_KEYS and paths.same_data(setting(cfg, k), setting(given, k))
    ]
    diffs = [k for k in diffs if k not in moved]
    spec_diffs = [
        k for k, v in fields.items() if getattr(spec, k) != (tuple(v) if isinstance(v, list) else v)
    ]
    moved_spec = [
        k for k in spec_diffs if k in SPEC_PATHS and paths.same_data(getattr(spec, k), fields[k])
    ]
    diffs += [k for k in spec_diffs if k not in moved_spec]
    if diffs:
        raise ConfigError(
            saved_path, None, None,
            f"--resume with different settings ({', '.join(diffs[:5])})",
            "Resume with the run's own settings (just `--out RUN_DIR --resume`), or start a new "
            "run in another --out directory",
        )  # fmt: skip
    named = [(k, setting(given, k)) for k in paths.DATA_PATH_KEYS]
    named += [(k, fields.get(k, getattr(spec, k))) for k in SPEC_PATHS]
    for key, value in named:  # relative to the folder the run was started in
        missing = paths.first_missing(value)
        if missing is not None:
            raise ConfigError(
                saved_path, None, key,
                f"{missing!r} does not exist from here ({Path.cwd()})",
                f"{paths.MISSING_HINT} (--mr-train, --tad-train, --video-features, ...)",
            )  # fmt: skip
    for key in moved:  # the same files named from here: saved as absolute paths from now on
        field = key.partition(".")[2]
        print(f"--resume: {key} given as {setting(given, key)!r} (saved {setting(cfg, key)!r})")
        cfg = dataclasses.replace(
            cfg, data=dataclasses.replace(cfg.data, **{field: paths.absolute(setting(given, key))})
        )
    for key in moved_spec:
        print(f"--resume: {key} given as {fields[key]!r} (saved {getattr(spec, key)!r})")
        spec = dataclasses.replace(spec, **{key: paths.absolute(fields[key])})
    progress = dataclasses.replace(cfg.trainer, progress=given.trainer.progress)
    return dataclasses.replace(cfg, trainer=progress), spec


#: the co-training settings that are paths (besides the experiment's data paths)
SPEC_PATHS = ("tad_train", "tad_val", "tad_classes", "tad_class_features")


def run(args: argparse.Namespace) -> int:
    """Co-train; print the selected checkpoint's MR and TAD metrics."""
    from pathlib import Path

    from momentkit.training.checkpoint import find_checkpoint
    from momentkit.training.config import ConfigError
    from momentkit.training.cotrain import cotrain
    from momentkit.training.distributed import cleanup_distributed, init_distributed

    cfg, spec = resolve(args)
    if args.show_config:
        print(json.dumps({"spec": spec.to_dict(), "experiment": cfg.to_dict()}, indent=2))
        return 0
    out = Path(args.out)
    started = [p for p in (out, *out.glob("pretrain_*"), *out.glob("finetune_*"))]
    if not args.resume and any(find_checkpoint(p / "last") for p in started):
        raise ConfigError(
            out, None, None, "already holds a training run",
            "Pass --resume to continue it, or choose another --out directory",
        )  # fmt: skip
    info = init_distributed(cfg.trainer.device)
    logging.basicConfig(
        level=logging.INFO if info.is_main else logging.WARNING,
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        result = cotrain(cfg, spec, out, resume=args.resume, dist_info=info)
    finally:
        cleanup_distributed()
    if info.is_main:
        fit = result.fit
        brief = (fit.metrics or {}).get("brief", {})
        shown = ", ".join(f"{k} {brief[k]:.2f}" for k in BRIEF if k in brief)
        if fit.best_value is not None:
            print(
                f"best {fit.best_metric} = {fit.best_value:.2f} at epoch {fit.best_epoch}"
                + (f" ({shown})" if shown else "")
                + f"; checkpoint: {result.run_dir / 'best'}"
            )
        else:
            print(f"trained {fit.epochs_done} epochs; checkpoint: {result.run_dir / 'best'}")
    return 0
