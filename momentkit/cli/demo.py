"""``momentkit demo``: moment search in a real video, end to end, in seconds on a laptop CPU.

By default it searches the Charades clip shipped with momentkit
(``momentkit/examples/charades_demo.mp4``) for three queries with the zero-shot predictor and
the ``offline`` encoder (no download, no training): it decodes and encodes the video, prints
the moments found for each query, and writes the highlight curves, the results as JSON and the
best moment of each query as a clip into ``--out`` (default ``./momentkit-demo``).

``momentkit demo --synthetic`` runs the earlier demo instead: it writes a small synthetic
benchmark, runs the zero-shot :class:`~momentkit.inference.similarity.SimilarityBaseline` on
its validation split and prints the official QVHighlights metrics (``--workdir`` keeps the
data, predictions and metrics).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from momentkit.cli.common import at_least

HELP = "search a real video with three queries (zero-shot); --synthetic: the synthetic benchmark"

#: the packaged example video and the queries the demo asks
EXAMPLE_VIDEO = "charades_demo.mp4"
DEMO_QUERIES = (
    "a person walks through the doorway",
    "a person drinks from a cup",
    "a person sits down",
)
#: what happens in the example video, by eye (for comparing with the moments found)
VIDEO_STORY = (
    "a person walks out through the doorway (about 0-4 s), comes back drinking from a cup "
    "(4-8 s), sits down (8-10 s) and stays seated holding the cup (10-31 s)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--out`` for the video demo; ``--synthetic`` with ``--workdir``, ``--seed`` and sizes."""
    parser.add_argument(
        "--out",
        metavar="DIR",
        default="momentkit-demo",
        help="where the video demo writes its plot, results and clips (default: ./momentkit-demo)",
    )
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="run the similarity baseline on a small synthetic benchmark instead",
    )
    synth = parser.add_argument_group("--synthetic options")
    synth.add_argument(
        "--workdir",
        metavar="DIR",
        help="keep the data (DIR/synth, replaced if an earlier demo or `momentkit synth` wrote "
        "it; other files there are refused), predictions and metrics here "
        "(default: a temporary folder, deleted afterwards)",
    )
    synth.add_argument(
        "--seed", type=at_least(0), default=0, help="seed of the synthetic data (default: 0)"
    )
    synth.add_argument(
        "--train",
        type=at_least(0),
        default=200,
        metavar="N",
        help="training queries (default: 200)",
    )
    synth.add_argument(
        "--val",
        type=at_least(1),
        default=100,
        metavar="N",
        help="validation queries (default: 100)",
    )


def run(args: argparse.Namespace) -> int:
    """The video demo, or the synthetic one with ``--synthetic``; returns the exit status."""
    if args.synthetic:
        return run_synthetic(args)
    return run_video(args)


# ------------------------------------------------------------------------------------ video demo
@contextlib.contextmanager
def example_video() -> Iterator[Path]:
    """The path of the packaged example video (extracted to a temporary file if zipped)."""
    from importlib import resources

    with resources.as_file(resources.files("momentkit").joinpath("examples", EXAMPLE_VIDEO)) as p:
        if not p.is_file():
            from momentkit.utils.errors import MomentkitError

            raise MomentkitError(
                f"{p}: the example video is missing from this installation; reinstall momentkit"
            )
        yield p


def run_video(args: argparse.Namespace) -> int:
    """Zero-shot search of the example video; writes the plot, JSON results and clips."""
    from rich.console import Console

    from momentkit.cli.output import clip_progress
    from momentkit.cli.search import print_no_match, results_document, results_table
    from momentkit.export import export_clips, from_results
    from momentkit.inference.plot import plot_highlights
    from momentkit.inference.predictor import Predictor
    from momentkit.utils.io import write_json

    console = Console()
    out = Path(args.out)
    start = time.perf_counter()
    with example_video() as video_path:
        console.print(
            f"[bold]momentkit demo[/bold]: zero-shot moment search in {video_path.name}, a real "
            "Charades clip (see momentkit/examples/README.txt)",
            soft_wrap=True,
        )
        with console.status("loading the offline encoder (EfficientNet-Lite0 + MiniLM)"):
            predictor = Predictor.zero_shot("offline")
        with clip_progress(console, "decoding and encoding the video", "clips") as progress:
            video = predictor.encode_video(video_path, progress=progress)
        console.print(
            f"encoded {video.duration:.1f} s of video as {video.num_clips} clips of "
            f"{video.clip_len:g} s ({time.perf_counter() - start:.1f} s so far)",
            markup=False,
        )
        with console.status("scoring the queries"):
            results = predictor.predict(video, list(DEMO_QUERIES), top_k=3)
        qids = range(1, len(results) + 1)
        answers = from_results(str(video_path), video_path.stem, qids, results)
        export_clips(answers, out / "clips", per_query=1)
        # the results name the video by its file name (the path may be a temporary copy)
        answers = [dataclasses.replace(a, video=video_path.name) for a in answers]
        plot = plot_highlights(results, out / "highlights.png", title=video_path.name)
        row = {
            "video": video_path.name,
            "vid": video_path.stem,
            "duration": float(video.duration),
            "clip_len": float(video.clip_len),
            "num_clips": int(video.num_clips),
            "plot": str(plot),
        }
        write_json(out / "results.json", results_document(predictor.description, [row], answers))
    for answer in answers:
        if answer.no_confident_match:
            print_no_match(console, answer)
        else:
            console.print(results_table(answer))
    console.print(f"what the video shows: {VIDEO_STORY}.", soft_wrap=True, markup=False)
    console.print(
        f"wrote {plot}, {out / 'results.json'} and the best moment of each query in "
        f"{out / 'clips'} ({time.perf_counter() - start:.1f} s in all). Search your own videos "
        'with `momentkit search VIDEO "query" --plot curve.png`, zero-shot or with a model '
        "you trained (`--checkpoint RUN_DIR`).",
        soft_wrap=True,
        markup=False,
    )
    return 0


# -------------------------------------------------------------------------------- synthetic demo
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


def _refuse_foreign_data(data: Path, workdir: str | None) -> None:
    """``--workdir`` whose ``synth`` folder holds files that are not a benchmark momentkit wrote:
    refused before anything is written (the demo replaces only its own benchmark; it has no
    ``--force``).

    Raises:
        MomentkitError: naming the folder and the files, and what to do.
    """
    from momentkit.data.synth import _outputs, check_overwrite
    from momentkit.utils.errors import MomentkitError

    existing = [rel for rel in _outputs() if (data / rel).exists()]
    try:
        check_overwrite(data, existing, overwrite=True)
    except MomentkitError:
        raise MomentkitError(
            f"--workdir {workdir}: {data} holds {', '.join(existing)} but is not a synthetic "
            "benchmark written by momentkit (no valid synth_config.json); the demo replaces "
            f"only its own benchmark there. Give another --workdir, or move {data} away"
        ) from None


def run_synthetic(args: argparse.Namespace) -> int:
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
        _refuse_foreign_data(data, args.workdir)
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
