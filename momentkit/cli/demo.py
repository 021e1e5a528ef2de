"""``momentkit demo``: the whole pipeline in seconds, on the synthetic benchmark.

It writes a small synthetic benchmark, runs the zero-shot :class:`SimilarityBaseline` on its
validation split, scores the predictions with the official QVHighlights metrics and prints
them. With ``--workdir`` the data, predictions and metrics are kept there.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HELP = "run the similarity baseline on a small synthetic benchmark and print its metrics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--workdir``, ``--seed`` and the split sizes."""
    parser.add_argument(
        "--workdir",
        metavar="DIR",
        help="keep the data (DIR/synth, replaced if present), predictions and metrics here "
        "(default: a temporary folder, deleted afterwards)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the synthetic data (default: 0)"
    )
    parser.add_argument(
        "--train", type=int, default=200, metavar="N", help="training queries (default: 200)"
    )
    parser.add_argument(
        "--val", type=int, default=100, metavar="N", help="validation queries (default: 100)"
    )


@contextlib.contextmanager
def _workdir(path: str | None) -> Iterator[Path]:
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="momentkit-demo-") as tmp:
        yield Path(tmp)


def metrics_table(brief: dict[str, float]) -> Any:
    """A rich ``Table`` of the official brief metrics, moment retrieval then highlights."""
    from rich.table import Table

    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    retrieval = [k for k in brief if k.startswith("MR-")]
    others = [k for k in brief if not k.startswith("MR-")]
    for i, key in enumerate(retrieval):
        last = i == len(retrieval) - 1 and bool(others)
        table.add_row(key, f"{brief[key]:.2f}", end_section=last)
    for key in others:
        table.add_row(key, f"{brief[key]:.2f}")
    return table


def run(args: argparse.Namespace) -> int:
    """Generate, predict, evaluate, print; returns the exit status."""
    from rich.console import Console

    from momentkit.data.records import load_annotations, save_predictions
    from momentkit.data.synth import SynthConfig, generate
    from momentkit.evaluation.qvhighlights import eval_submission
    from momentkit.inference.similarity import SimilarityBaseline
    from momentkit.utils.errors import MomentkitError
    from momentkit.utils.io import write_json

    if args.val < 1 or args.train < 0:
        raise MomentkitError("--val must be at least 1 and --train at least 0")
    console = Console()
    start = time.perf_counter()
    with _workdir(args.workdir) as workdir:
        config = SynthConfig(num_train=args.train, num_val=args.val, seed=args.seed)
        data = workdir / "synth"
        with console.status("writing the synthetic benchmark"):
            generate(config, data, overwrite=True, progress=False)
        val = load_annotations(data / "annotations" / "val.jsonl")
        console.print(
            f"wrote {args.train} train / {args.val} val queries to {data} "
            f"({time.perf_counter() - start:.1f} s)",
            soft_wrap=True,
            markup=False,
        )
        predictions = SimilarityBaseline(data / "features").predict_all(val)
        metrics = eval_submission(
            [p.to_dict() for p in predictions], [a.to_dict() for a in val], verbose=False
        )
        if args.workdir is not None:
            save_predictions(workdir / "val_predictions.jsonl", predictions)
            write_json(workdir / "val_metrics.json", metrics)
            saved = f"saved predictions and metrics in {workdir}"
            console.print(saved, soft_wrap=True, markup=False)
        console.print(
            f"[bold]similarity baseline, synthetic val ({len(val)} queries)[/bold]",
            soft_wrap=True,
        )
        console.print(metrics_table(metrics["brief"]))
    console.print(
        f"done in {time.perf_counter() - start:.1f} s. The baseline sees only the appearance "
        "(CLIP) stream, clip by clip; a model must also learn the motion stream and temporal "
        "context to do well (docs/synthetic_benchmark.md)."
    )
    return 0
