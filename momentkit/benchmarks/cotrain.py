"""``momentkit bench cotrain``: UniMD's task ablation on the synthetic MR+TAD benchmark.

Trains UniMD (``momentkit cotrain``, preset ``synth``) once per row and ``--seed`` on a
``momentkit synth --mode tad`` benchmark and prints a mean +- std table of MR R1/R5 at tIoU 0.5
and 0.7 and TAD mAP, from the selected checkpoint of each run. The rows are the paper's
ablation: MR only, TAD only, the three co-training strategies, and sequential training (TAD
first, then MR). Finished runs are reused and interrupted ones resumed, so the table can be
filled a few runs at a time::

    momentkit bench cotrain --data data/synth_tad --make-data 2000 500 0 \\
        --out runs/unimd --seeds 0 1 2

``--preset synth_official`` trains the same budget with every switch at the released code's
value (and its batch plans, which have no ``selective`` row).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from momentkit.benchmarks.learn import add_data_arguments, format_table
from momentkit.benchmarks.parallel import add_parallel_arguments, run_parallel
from momentkit.cli.common import add_set_argument, at_least

HELP = "UniMD: MR only, TAD only and the co-training strategies over seeds; mean +- std table"

#: row name -> (label, ``momentkit cotrain`` arguments)
ROWS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mr": ("MR only", ("--tasks", "mr")),
    "tad": ("TAD only", ("--tasks", "tad")),
    "synchronized": ("co-training, synchronized", ("--strategy", "synchronized")),
    "selective": ("co-training, selective", ("--strategy", "selective")),
    "random": ("co-training, random", ("--strategy", "random")),
    "sequential": ("sequential: TAD, then MR", ("--strategy", "sequential", "--first", "tad")),
}
METRICS = (
    ("MR-R1@0.5", "R1@0.5"),
    ("MR-R1@0.7", "R1@0.7"),
    ("MR-R5@0.5", "R5@0.5"),
    ("MR-R5@0.7", "R5@0.7"),
    ("TAD-mAP", "TAD mAP"),
)
DONE_MARKER = "bench_cotrain_done"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Data, rows, seeds."""
    add_data_arguments(parser, "a `momentkit synth --mode tad` folder")
    parser.add_argument(
        "--rows", nargs="+", choices=list(ROWS), default=list(ROWS), help="rows of the table"
    )
    parser.add_argument("--seeds", type=at_least(0), nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=at_least(1), help="override the preset's epoch count")
    parser.add_argument("--preset", default="synth", help="UniMD preset")
    add_set_argument(parser, "config overrides applied to every run")
    add_parallel_arguments(parser)


def _ensure_data(root: Path, make: list[int] | None) -> None:
    if (root / "annotations" / "tad.json").exists():
        return
    if not make:
        raise FileNotFoundError(
            f"{root}: no MR+TAD benchmark here; pass --make-data TRAIN VAL SEED "
            "(or run `momentkit synth DIR --mode tad`)"
        )
    from momentkit.data.synth import SynthConfig, generate
    from momentkit.data.synth_tad import write_synth_tad

    generate(SynthConfig(num_train=make[0], num_val=make[1], seed=make[2], mode="tad"), root)
    write_synth_tad(root)


def cotrain_argv(data: Path, row: str, seed: int, run: Path, args: argparse.Namespace) -> list[str]:
    """The ``momentkit cotrain`` arguments of one (row, seed)."""
    ann, feats = data / "annotations", data / "features"
    argv = [
        "--model", "unimd", "--preset", args.preset,
        "--mr-train", str(ann / "train.jsonl"), "--mr-val", str(ann / "val.jsonl"),
        "--tad-train", str(ann / "tad.json"), "--tad-val", str(ann / "tad.json"),
        "--tad-classes", str(ann / "tad_classes.txt"),
        "--tad-class-features", str(feats / "tad_class_text.npz"),
        "--video-features", str(feats / "slowfast"), str(feats / "clip"),
        "--text-features", str(feats / "clip_text"),
        "--out", str(run),
        *ROWS[row][1],
        *(["--epochs", str(args.epochs)] if args.epochs else []),
        "--set", f"trainer.seed={seed}", "trainer.progress=false", *args.overrides,
    ]  # fmt: skip
    return argv


def run_metrics(run: Path) -> dict[str, Any]:
    """``brief`` metrics of a finished run (sequential runs: of their last stage)."""
    stages = sorted(run.glob("finetune_*/val_metrics.json"))
    path = stages[-1] if stages else run / "val_metrics.json"
    return json.loads(path.read_text(encoding="utf-8"))["brief"]


def _train_one(data: Path, row: str, seed: int, args: argparse.Namespace, run: Path) -> dict:
    """Train one (row, seed) into ``run`` unless finished; returns its ``brief`` metrics."""
    if not (run / DONE_MARKER).exists():
        from momentkit.cli import cotrain as cli

        parser = argparse.ArgumentParser()
        cli.add_arguments(parser)
        argv = cotrain_argv(data, row, seed, run, args)
        resume = (run / "cotrain.json").exists()
        cli.run(parser.parse_args([*argv, *(["--resume"] if resume else [])]))
        (run / DONE_MARKER).write_text("finished\n")
    return run_metrics(run)


def _check_rows(args: argparse.Namespace) -> None:
    """The official batch plans (``synth_official``) have no ``selective`` row."""
    from momentkit.training.config import build_config
    from momentkit.utils.errors import MomentkitError

    cfg = build_config("unimd", args.preset, list(args.overrides))
    if getattr(cfg.model, "cotrain_plan", "momentkit") == "official" and "selective" in args.rows:
        raise MomentkitError(
            f"preset {args.preset}: selective co-training has no official counterpart (the "
            "released code co-trains synchronized or random); leave it out: --rows mr tad "
            "synchronized random sequential"
        )


def run(args: argparse.Namespace) -> int:
    """Train what is missing (``--jobs`` runs at once), then print and write the table."""
    from momentkit.benchmarks.guards import refuse_outputs_over_inputs, synth_data_inputs
    from momentkit.utils.io import atomic_write_text, write_json

    data, out = Path(args.data), Path(args.out)
    files, folders = synth_data_inputs("--data", data)
    refuse_outputs_over_inputs(
        [("--out", out / "table.md"), ("--out", out / "results.json")], files, folders
    )
    _check_rows(args)
    _ensure_data(data, args.make_data)
    jobs = [
        (data, row, seed, args, out / row / f"seed{seed}")
        for row in args.rows
        for seed in args.seeds
    ]
    briefs: dict[tuple[str, int], dict] = {}
    for job, brief, seconds in run_parallel(_train_one, jobs, args.jobs, args.threads):
        row, seed = job[1], job[2]
        briefs[row, seed] = brief
        shown = ", ".join(f"{short} {brief[k]:.2f}" for k, short in METRICS if k in brief)
        print(f"{ROWS[row][0]} seed {seed}: {shown} ({seconds:.0f} s)", flush=True)
    rows = {ROWS[row][0]: [briefs[row, seed] for seed in args.seeds] for row in args.rows}
    table = format_table(rows, METRICS)
    print(table)
    atomic_write_text(out / "table.md", table + "\n")
    write_json(out / "results.json", rows)
    return 0
