"""``momentkit evaluate PRED.jsonl GT.jsonl [--out METRICS.json] [--dataset NAME]``.

Scores a prediction file against a ground-truth file, prints the ``brief`` metrics as a table
and writes the full metrics dict as standard JSON (atomically): a metric that is undefined (a
QVHighlights length range without queries) is ``null``, and the file then also records the
number of queries behind each metric group (``"num_queries"``). The benchmark is detected from the
ground truth (see :mod:`momentkit.evaluation.detect`) unless ``--dataset`` names it.
"""

from __future__ import annotations

import argparse
import json
import math

from momentkit.cli.common import positive_float

HELP = "score predictions against ground truth (official QVHighlights metrics, R@k/mIoU, HD mAP)"

#: the names of ``momentkit.evaluation.EVALUATORS`` (kept here so --help needs no import)
DATASETS = (
    "qvhighlights",
    "charades_sta",
    "tacos",
    "activitynet",
    "grounding",
    "tvsum",
    "youtube_highlights",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``PRED.jsonl GT.jsonl [--out METRICS.json] [--dataset NAME] [--subset] [--clip-len S]``."""
    parser.add_argument("predictions", metavar="PRED.jsonl", help="predictions, one query a line")
    parser.add_argument("ground_truth", metavar="GT.jsonl", help="annotations, one query a line")
    parser.add_argument("--out", metavar="METRICS.json", help="write the full metrics here")
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        default=None,
        help="which benchmark's metrics (default: detected from GT.jsonl: per-clip labels -> "
        "tvsum/youtube_highlights, saliency_scores -> qvhighlights, windows only -> grounding)",
    )
    parser.add_argument(
        "--subset",
        action="store_true",
        help="score only the queries present in both files (default: the qids must match)",
    )
    parser.add_argument(
        "--clip-len",
        type=positive_float,
        default=2.0,
        metavar="SECONDS",
        help="qvhighlights: seconds per clip of pred_saliency_scores (default: 2)",
    )


def _format(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the brief table, write ``--out``."""
    from rich.console import Console
    from rich.table import Table

    from momentkit.data.records import check_clip_len, load_annotations, load_predictions
    from momentkit.evaluation import build_evaluator, detect_dataset, metrics_json
    from momentkit.utils.io import atomic_write_text, output_target
    from momentkit.utils.paths import refuse_overwriting_inputs

    check_clip_len(args.clip_len, "--clip-len")
    if args.out:
        output_target(args.out)  # refuse a folder or a device before the work, not after
        inputs = [("PRED.jsonl", args.predictions), ("GT.jsonl", args.ground_truth)]
        refuse_overwriting_inputs([("--out", args.out)], inputs)
    annotations = load_annotations(args.ground_truth)
    predictions = load_predictions(args.predictions)
    name = args.dataset or detect_dataset(annotations, args.ground_truth)
    kwargs: dict[str, object] = {"match_number": not args.subset, "gt_path": args.ground_truth}
    if name == "qvhighlights":
        kwargs["clip_len"] = args.clip_len
    evaluator = build_evaluator(name, annotations, **kwargs)
    evaluator.process(predictions, path=args.predictions)
    metrics = evaluator.evaluate()

    table = Table(title=f"{name} metrics", caption=f"{len(predictions)} predictions")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics["brief"].items():
        table.add_row(key, _format(value))
    console = Console()
    console.print(table)
    empty = [group for group, n in evaluator.num_queries.items() if n == 0]
    if empty:
        console.print(f"no queries in: {', '.join(empty)} (its metrics are n/a)")
    if args.out:
        # standard JSON: an undefined metric is null (not NaN), with the query counts beside
        document = metrics_json(metrics, evaluator.num_queries)
        atomic_write_text(args.out, json.dumps(document, indent=4, allow_nan=False) + "\n")
        console.print(f"wrote {args.out}")
    return 0
