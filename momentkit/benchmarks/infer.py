"""``momentkit bench infer``: inference latency and throughput, optionally vs the official code.

Two figures, features cached in memory (no decoding, no encoders):

- latency: one query on one 150 s video (``--clips`` 75 clips of 2 s), forward + post-processing
  into prediction rows, median over ``--latency-repeat`` runs;
- throughput: predictions for ``--queries`` queries (QVHighlights val: 1550) in batches of
  ``--batch-size`` (default: the official evaluation's batch size, else 32), QVHighlights-shaped
  synthetic features (every 4th video shorter; a pool of 4 batches is reused, as cached features
  would be), queries per second, median over ``--repeat`` runs.

momentkit's side is ``momentkit predict``'s loop (``inference_loop``: eval mode, no gradients,
the model's own post-processing). With ``--official-dir DIR`` the official evaluation code
(Lighthouse's / LD-DETR's / MS-DETR's ``compute_mr_results``: forward, ranking,
``PostProcessorDETR``; UniMD's evaluation forward and soft-NMS, one video at a time) runs on
the same batches and the same weights (converted by ``momentkit.interop``), alternating
official and momentkit runs, and the ratio momentkit / official is printed per figure (median
and range over the rounds), with the largest difference of the two sides' outputs on the first
throughput batch. With ``--flops`` each figure also gets both sides' arithmetic and the
lowest ratio it allows (:mod:`momentkit.benchmarks.arithmetic`). For ``unimd`` the items are
Charades-STA videos, each with its sentences and the 157 action classes (``--queries`` counts
videos; :mod:`momentkit.benchmarks.official_unimd`).
Example::

    momentkit bench infer --model moment_detr --official-dir ~/src/lighthouse --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from momentkit.cli.common import at_least

HELP = "inference latency (1 query, 150 s video) and throughput (1550 queries), vs official"
#: the sizes where ``--queries`` / ``--clips`` / ``--tokens`` are not given (an official pair may
#: give its own: ``infer_defaults``)
SHAPE = {"queries": 1550, "clips": 75, "tokens": 32}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Model, sizes, repetitions and the official checkout."""
    from momentkit.benchmarks.train import add_compile_arguments, add_official_arguments

    parser.add_argument("--model", default="moment_detr", help="registered model name")
    parser.add_argument(
        "--queries",
        type=at_least(1),
        default=None,
        help="queries in the throughput run (default 1550; unimd: 32 videos)",
    )
    parser.add_argument(
        "--batch-size",
        type=at_least(1),
        default=None,
        help="default: the official eval batch size, or 32 (unimd: momentkit's evaluation "
        "batch of 16 videos; the release takes one video a call whatever the batch)",
    )
    parser.add_argument(
        "--clips", type=at_least(1), default=None, help="clips per video (default 75 of 2 s)"
    )
    parser.add_argument(
        "--tokens", type=at_least(1), default=None, help="tokens of the longest query (default 32)"
    )
    parser.add_argument("--repeat", type=at_least(1), default=3, help="throughput runs per side")
    parser.add_argument(
        "--latency-repeat", type=at_least(1), default=20, help="latency runs per side"
    )
    parser.add_argument("--warmup", type=at_least(0), default=1, help="untimed rounds first")
    parser.add_argument("--threads", type=at_least(1), default=2, help="torch intra-op threads")
    parser.add_argument("--json", dest="json_out", help="also write the figures to this file")
    add_official_arguments(parser)
    add_compile_arguments(parser)


def momentkit_only(model: str, device: str, precision: str) -> Any:
    """momentkit's side alone (no ``--official-dir``): the model's default config."""
    import torch

    from momentkit.benchmarks.official import STREAM_DIMS, TEXT_DIM, OfficialPair
    from momentkit.models import build_model

    config = {"name": model, "video_dim": sum(STREAM_DIMS.values()) + 2, "text_dim": TEXT_DIM}
    torch.manual_seed(0)
    pair = OfficialPair(None, model, torch.device(device), precision)
    pair.momentkit = build_model(config).to(pair.device).eval()
    return pair


def _batches(make_videos: Any, queries: int, batch_size: int, clips: int, tokens: int) -> list[Any]:
    """``ceil(queries / batch_size)`` momentkit (and official) batches from a pool of 4."""
    full, last = divmod(queries, batch_size)
    pool = [make_videos(batch_size, clips, tokens, seed=1 + i, qid_start=i * batch_size)
            for i in range(min(full, 4))]  # fmt: skip
    videos = [pool[i % len(pool)] for i in range(full)] if pool else []
    if last:
        videos.append(make_videos(last, clips, tokens, seed=99, qid_start=full * batch_size))
    return videos


def _arithmetic(
    runs: dict[str, dict[str, Any]],
    figures: dict[str, dict[str, list[Any]]],
    device: Any,
    precision: str,
) -> dict[str, dict[str, Any]]:
    """``--flops``: per figure, each side's FLOPs of one timed run (counted once more, after the
    timing) against its median time and the machine's peak matmul rate (in momentkit's
    ``precision``)."""
    from momentkit.benchmarks.arithmetic import arithmetic_report, count_flops, peak_matmul_rate
    from momentkit.training.trainer import autocast_dtype

    peak = peak_matmul_rate(device, dtype=autocast_dtype(precision, device))
    reports = {}
    for figure, calls in runs.items():
        flops = {side: count_flops(call) for side, call in calls.items()}
        seconds = {side: statistics.median(t.wall for t in figures[figure][side]) for side in calls}
        reports[figure] = arithmetic_report(flops, seconds, peak)
    return reports


def run(args: argparse.Namespace) -> int:
    """Measure and print the figures."""
    from rich.console import Console
    from rich.table import Table

    from momentkit.benchmarks.guards import refuse_outputs_over_inputs
    from momentkit.benchmarks.official import (
        Timing,
        alternate,
        build_pair,
        configure_device,
        device_name,
        load_average,
        ratio,
        threads,
        timed,
    )
    from momentkit.benchmarks.train import (
        compile_settings,
        fill_defaults,
        official_precision_note,
        refuse_official_precision_alone,
    )
    from momentkit.modeling.linear import onednn_linear_enabled

    refuse_outputs_over_inputs(
        [("--json", args.json_out)], folders=[("--official-dir", args.official_dir)]
    )
    refuse_official_precision_alone(args)
    configure_device(args.device, args.tf32)
    with threads(args.threads):
        if args.official_dir:
            pair = build_pair(
                args.model, args.official_dir, args.device, args.precision, args.official_precision
            )
        else:
            pair = momentkit_only(args.model, args.device, args.precision)
        pair.compile_settings = compile_settings(args)
        official = args.official_dir is not None
        # a pair may give its own sizes and synthetic videos (UniMD: Charades-STA videos)
        fill_defaults(args, pair.infer_defaults, SHAPE)
        make, unit = pair.make_videos, pair.query_unit
        batch_size = args.batch_size or (pair.eval_batch_size if official else 32)
        single = make(1, args.clips, args.tokens, seed=0, short_every=0, min_tokens=12)
        throughput = _batches(make, args.queries, batch_size, args.clips, args.tokens)
        differences = pair.max_differences(throughput[0]) if official else {}
        sides_inputs = {"momentkit": (pair.momentkit_predict, pair.momentkit_batch)}
        if official:
            theirs = (pair.guarded_official_predict, pair.official_batch)
            sides_inputs = {"official": theirs, **sides_inputs}
        load_before = load_average()
        figures: dict[str, dict[str, list[Timing]]] = {}
        runs: dict[str, dict[str, Any]] = {}  # figure -> side -> its timed call
        for figure, videos, repeats in (
            ("latency", [single], args.latency_repeat),
            ("throughput", throughput, args.repeat),
        ):
            calls = {}
            for side, (predict, to_batch) in sides_inputs.items():
                batches = [to_batch(v, training=False) for v in videos]
                calls[side] = timed(lambda p=predict, b=batches: p(b), pair.device)
            figures[figure] = alternate(calls, repeats=repeats, warmup=args.warmup)
            runs[figure] = calls
        load_after = load_average()
        arithmetic = _arithmetic(runs, figures, pair.device, args.precision) if args.flops else {}

    result: dict[str, Any] = {
        "model": args.model,
        "official_code": pair.describe() if official else None,
        "device": args.device,
        "device_name": device_name(pair.device),
        "precision": args.precision,
        "official_precision": (args.official_precision or args.precision) if official else None,
        "threads": args.threads,
        "onednn_linear": onednn_linear_enabled(),  # momentkit's float32 linear layers
        "queries": args.queries,
        "batch_size": batch_size,
        "load_average_before": load_before,
        "load_average_after": load_after,
    }
    if official:
        result["max_difference"] = differences
    for figure, report in arithmetic.items():
        result[f"{figure}_arithmetic"] = report
    table = Table(title=f"inference, {args.model} (features cached; {args.precision})")
    table.add_column("figure")
    for side in sides_inputs:
        table.add_column(side, justify="right")
    if official:
        table.add_column("momentkit / official: time", justify="right")
        table.add_column("CPU time", justify="right")
    for figure, times in figures.items():
        if figure == "throughput":
            label = f"throughput, {args.queries} {unit}, batches of {batch_size} ({unit}/s)"
        elif unit == "queries":
            label = "latency, 1 query, 150 s video (ms)"
        else:  # UniMD: one video with its queries
            label = f"latency, {pair.describe_batch(single)} (ms)"
        row = [label]
        for side, values in times.items():
            median = statistics.median(t.wall for t in values)
            value = median * 1000 if figure == "latency" else args.queries / median
            row.append(f"{value:.1f}" if value >= 10 else f"{value:.3g}")  # 0.0743 videos/s
            result[f"{figure}_{side}_s"] = [round(t.wall, 5) for t in values]
            result[f"{figure}_{side}_cpu_s"] = [round(t.cpu, 5) for t in values]
            result[f"{figure}_{side}_median_s"] = round(median, 5)
        if official:
            for kind in ("wall", "cpu"):
                r = ratio(
                    [getattr(t, kind) for t in times["momentkit"]],
                    [getattr(t, kind) for t in times["official"]],
                )
                row.append(str(r))
                name = f"{figure}_ratio" if kind == "wall" else f"{figure}_cpu_ratio"
                result[name] = {"median": r.median, "low": r.low, "high": r.high}
        table.add_row(*row)
    console = Console()
    console.print(table)
    console.print(
        f"{result['device_name']}; load average {load_before} -> {load_after}"
        + (f"; {pair.describe()}" if official else "")
        + (
            "; ratio = time momentkit / time official (median, range over A B rounds)"
            if official
            else ""
        )  # fmt: skip
    )
    if official:
        console.print(
            "same function: largest |official - momentkit| of the evaluation outputs on the "
            "first throughput batch: " + ", ".join(f"{k} {v:.1e}" for k, v in differences.items())
        )
    note = official_precision_note(args.precision, args.official_precision)
    if note:
        console.print(note)
    if arithmetic:
        from momentkit.benchmarks.arithmetic import describe

        for figure, report in arithmetic.items():
            console.print(f"{figure}: " + describe(report, unit="run"))
    if args.json_out:
        from momentkit.utils.io import write_json

        write_json(args.json_out, result)
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_s")}))
    return 0
