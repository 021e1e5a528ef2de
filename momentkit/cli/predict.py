"""`momentkit predict`: run a trained checkpoint on feature files, writing official predictions.

Example::

    momentkit predict --checkpoint runs/mdetr --annotations data/highlight_test_release.jsonl \\
        --video-features feats/slowfast feats/clip --text-features feats/clip_text \\
        --out test_preds.jsonl

Each output line is ``{"qid", "query", "vid", "pred_relevant_windows": [[start, end, score],
...], "pred_saliency_scores": [...]}``, the format ``momentkit evaluate`` and the QVHighlights
server read. The annotations need no ground truth.
"""

from __future__ import annotations

import argparse

from momentkit.cli.common import at_least

HELP = "predict moments and highlights with a trained checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``momentkit predict``."""
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="RUN_DIR",
        help="run directory of `momentkit train` (uses its best/), or a checkpoint directory",
    )
    parser.add_argument(
        "--annotations", required=True, metavar="X.jsonl", help="queries to answer (JSONL)"
    )
    parser.add_argument(
        "--video-features",
        required=True,
        nargs="+",
        metavar="DIR",
        help="video feature stores, the same streams in the same order as in training",
    )
    parser.add_argument("--text-features", required=True, metavar="DIR", help="query store")
    parser.add_argument("--out", required=True, metavar="PRED.jsonl", help="predictions file")
    parser.add_argument(
        "--batch-size", type=at_least(1), help="queries per batch (default: the run's)"
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")


def run(args: argparse.Namespace) -> int:
    """Predict and write ``--out``."""
    from momentkit.data.records import load_annotations, save_predictions
    from momentkit.training.pipeline import predict
    from momentkit.utils.io import output_target
    from momentkit.utils.paths import refuse_overwriting_inputs

    output_target(args.out)  # refuse a folder or a device before the work, not after
    inputs = [("--annotations", args.annotations), ("--text-features", args.text_features)]
    inputs += [("--video-features", store) for store in args.video_features]
    refuse_overwriting_inputs([("--out", args.out)], [*inputs, ("--checkpoint", args.checkpoint)])
    annotations = load_annotations(args.annotations)
    if not annotations:
        from momentkit.utils.errors import FormatError

        raise FormatError(
            args.annotations, None, None, "holds no queries", "Give one JSON row per query"
        )
    predictions = predict(
        args.checkpoint,
        annotations,
        args.video_features,
        args.text_features,
        batch_size=args.batch_size,
        device=args.device,
    )
    save_predictions(args.out, predictions)
    print(f"wrote {len(predictions)} predictions to {args.out}")
    return 0
