"""``momentkit bench train --official-dir DIR``: a training step, official code vs momentkit.

Both sides get the identical batch (:func:`~momentkit.benchmarks.official.make_videos`) and
start from the identical weights; the steps alternate (official, momentkit, official, ...)
after ``--warmup`` untimed rounds, so both see the same machine load, and the ratio is taken
per round. Printed: the median step by phase (forward + loss, backward, clip + AdamW), its CPU
time (all threads), the ratio momentkit / official (median and range over the rounds), the
batch and the machine's load averages before and after. With ``--flops``, after the timing, each
side's arithmetic per step and the lowest ratio it allows
(:mod:`momentkit.benchmarks.arithmetic`).
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from momentkit.benchmarks.official import (
    Phases,
    alternate,
    build_pair,
    configure_device,
    device_name,
    load_average,
    ratio,
    threads,
)


def _median(rows: list[Phases], field: str) -> float:
    return statistics.median(getattr(p, field) for p in rows)


def compare_training(args: argparse.Namespace) -> int:
    """Build both sides, alternate ``args.steps`` steps each, print and return 0."""
    from rich.console import Console
    from rich.table import Table

    from momentkit.modeling.linear import onednn_linear_enabled
    from momentkit.utils.errors import MomentkitError

    if args.overrides:
        raise MomentkitError(
            "--set cannot be combined with --official-dir: both sides use the official options"
        )
    from momentkit.benchmarks.train import (
        SHAPE,
        compile_settings,
        fill_defaults,
        official_precision_note,
    )

    configure_device(args.device, args.tf32)
    with threads(args.threads):
        pair = build_pair(
            args.model, args.official_dir, args.device, args.precision, args.official_precision
        )
        pair.compile_settings = compile_settings(args)
        # a pair may give its own batch shape and synthetic videos (UniMD: Charades-STA)
        fill_defaults(args, pair.train_defaults, SHAPE)
        videos = pair.make_videos(args.batch_size, args.clips, args.tokens, seed=0)
        differences = pair.max_differences(videos)
        official_batch = pair.official_batch(videos, training=True)
        momentkit_batch = pair.momentkit_batch(videos, training=True)
        load_before = load_average()
        times = alternate(
            {
                "official": lambda: pair.official_step(official_batch),
                "momentkit": lambda: pair.momentkit_step(momentkit_batch),
            },
            repeats=args.steps,
            warmup=args.warmup,
        )
        load_after = load_average()
        arithmetic = None
        if args.flops:  # after the timing: the counted steps do not change the timed ones
            from momentkit.benchmarks.arithmetic import (
                arithmetic_report,
                count_flops,
                peak_matmul_rate,
            )

            flops = {
                "official": count_flops(lambda: pair.official_step(official_batch)),
                "momentkit": count_flops(lambda: pair.momentkit_step(momentkit_batch)),
            }
            seconds = {side: _median(rows, "total") for side, rows in times.items()}
            from momentkit.training.trainer import autocast_dtype

            # the peak in momentkit's precision
            peak = peak_matmul_rate(pair.device, dtype=autocast_dtype(args.precision, pair.device))
            arithmetic = arithmetic_report(flops, seconds, peak)
    batch = pair.describe_batch(videos)
    result: dict[str, Any] = {
        "model": args.model,
        "official_code": pair.describe(),
        "device": args.device,
        "device_name": device_name(pair.device),
        "precision": args.precision,
        "official_precision": args.official_precision or args.precision,
        "threads": args.threads,
        "onednn_linear": onednn_linear_enabled(),  # momentkit's float32 linear layers
        "batch": batch,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "max_difference": differences,
    }
    for side, rows in times.items():
        result[side] = {
            "step_s": round(_median(rows, "total"), 4),
            "forward_loss_s": round(_median(rows, "forward"), 4),
            "backward_s": round(_median(rows, "backward"), 4),
            "clip_adamw_s": round(_median(rows, "optimizer"), 4),
            "step_cpu_s": round(_median(rows, "cpu"), 4),
            "steps_s": [round(p.total, 4) for p in rows],
        }
    step_ratio = ratio([p.total for p in times["momentkit"]], [p.total for p in times["official"]])
    cpu_ratio = ratio([p.cpu for p in times["momentkit"]], [p.cpu for p in times["official"]])
    result["ratio"] = {"median": step_ratio.median, "low": step_ratio.low, "high": step_ratio.high}
    result["cpu_ratio"] = {"median": cpu_ratio.median, "low": cpu_ratio.low, "high": cpu_ratio.high}
    if arithmetic is not None:
        result["arithmetic"] = arithmetic

    precisions = args.precision
    if result["official_precision"] != args.precision:
        precisions = f"official {result['official_precision']}, momentkit {args.precision}"
    title = f"training step, {args.model}: official vs momentkit ({result['batch']}; {precisions})"
    table = Table(title=title)
    for column in ("side", "step (s)", "forward+loss", "backward", "clip+AdamW", "CPU (s)"):
        table.add_column(column, justify="right" if column != "side" else "left")
    for side in ("official", "momentkit"):
        r = result[side]
        table.add_row(
            side,
            f"{r['step_s']:.3f}",
            f"{r['forward_loss_s']:.3f}",
            f"{r['backward_s']:.3f}",
            f"{r['clip_adamw_s']:.3f}",
            f"{r['step_cpu_s']:.3f}",
        )
    console = Console()
    console.print(table)
    console.print(
        f"momentkit / official step: {step_ratio} (median, range over {args.steps} A B rounds); "
        f"CPU time {cpu_ratio}; {result['device_name']}; load average {load_before} -> "
        f"{load_after}; {pair.describe()}"
    )
    console.print(
        "same function: largest |official - momentkit| of the evaluation outputs on this "
        "batch: " + ", ".join(f"{k} {v:.1e}" for k, v in differences.items())
    )
    note = official_precision_note(args.precision, args.official_precision)
    if note:
        console.print(note)
    if arithmetic is not None:
        from momentkit.benchmarks.arithmetic import describe

        console.print(describe(arithmetic))
    if args.json_out:
        from momentkit.utils.io import write_json

        write_json(args.json_out, result)
    print(json.dumps(result))
    return 0
