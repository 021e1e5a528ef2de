"""``momentkit synth OUTDIR``: write the synthetic moment-retrieval benchmark.

Example::

    momentkit synth data/synth --train 2000 --val 500 --seed 0

See docs/synthetic_benchmark.md for what the data holds and why it is hard.
"""

from __future__ import annotations

import argparse
from typing import Any

from momentkit.cli.common import add_set_argument, at_least

HELP = "write the synthetic benchmark (annotations + features in the standard layout)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``OUTDIR``, split sizes, seeds and output options."""
    parser.add_argument("outdir", metavar="OUTDIR", help="folder to write the benchmark into")
    parser.add_argument(
        "--train",
        type=at_least(0),
        default=2000,
        metavar="N",
        help="training queries (default: 2000)",
    )
    parser.add_argument(
        "--val",
        type=at_least(0),
        default=500,
        metavar="N",
        help="validation queries (default: 500)",
    )
    parser.add_argument(
        "--seed", type=at_least(0), default=0, help="seed of the videos and queries (default: 0)"
    )
    parser.add_argument(
        "--world-seed",
        type=at_least(0),
        default=0,
        help="seed of the concept directions (default: 0); keep it to generate more data of "
        "the same world",
    )
    parser.add_argument(
        "--mode",
        default="moments",
        help="query planner (a registered synth mode; default: moments)",
    )
    add_set_argument(
        parser,
        "override any SynthConfig field, e.g. --set min_duration=600 max_duration=3600 "
        "negatives=[3,6] (values are checked against the field's type and range; a key that "
        "is also an option, e.g. seed, overrides the option)",
    )
    parser.add_argument("--compress", action="store_true", help="write deflated .npz files")
    parser.add_argument("--force", action="store_true", help="replace a benchmark in OUTDIR")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Generate the benchmark and print a summary; returns the exit status."""
    from momentkit.data.synth import SynthConfig, generate

    values: dict[str, Any] = {
        "num_train": args.train,
        "num_val": args.val,
        "seed": args.seed,
        "world_seed": args.world_seed,
        "mode": args.mode,
        "compress": args.compress,
    }
    values.update(parse_overrides(args.overrides))  # --set wins over the options
    config = SynthConfig(**values)
    summary = generate(config, args.outdir, overwrite=args.force, progress=not args.no_progress)
    if config.mode == "tad":  # the temporal action detection labels beside the MR annotations
        from momentkit.data.synth_tad import write_synth_tad

        files = write_synth_tad(args.outdir)
        print(f"TAD: {files.num_instances} instances in {files.annotations}")
    for split, n in summary.num_queries.items():
        relations = ", ".join(f"{k} {v}" for k, v in summary.relations[split].items())
        print(f"{split}: {n} queries, {summary.num_windows[split]} windows ({relations})")
    print(f"wrote {summary.outdir} in {summary.seconds:.1f} s")
    return 0


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> SynthConfig keyword arguments.

    Each value is parsed by the field's type as ``train --set`` parses its values
    (:func:`momentkit.training.config.parse_field_overrides`: ``6e2`` is a number, ``[3, 6]``
    or ``3,6`` a pair, NaN and infinities are refused); unknown keys and values of the wrong
    type are a ``ConfigError`` naming the key. The ranges are checked by ``SynthConfig``.
    """
    from momentkit.data.synth import SynthConfig
    from momentkit.training.config import parse_field_overrides

    return parse_field_overrides(SynthConfig, items, source="--set")
