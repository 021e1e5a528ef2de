"""``momentkit convert OFFICIAL_CKPT --from SOURCE --out RUN_DIR``: official checkpoints in.

Examples::

    momentkit convert qd_detr_qvhighlights.ckpt --from lighthouse --out runs/qd_official
    momentkit convert ld_detr/results/.../model_best.ckpt --out runs/ld_official   # detected
    momentkit convert unimd/ckpt/epoch_010.pth.tar --from unimd --config unimd/config.yaml \\
        --out runs/unimd_official [--weights raw]

The file is read through an allow-list (tensors, arrays, numbers, strings, containers, the
official option holders): a file that names anything else is refused, nothing in it is run.
The options saved inside it rebuild the model's config (the ``official`` variant), every
tensor is mapped by an explicit table, and ``RUN_DIR`` receives a momentkit checkpoint
(``model.safetensors`` + ``config.json`` + ``experiment.json``) with ``conversion.json``, the
report of what was mapped and which official tensors the official forward never reads.
"""

from __future__ import annotations

import argparse

HELP = "convert an official checkpoint (Lighthouse, LD-DETR, MS-DETR, UniMD) to momentkit"

#: the names of momentkit.interop.convert.SOURCES (kept here so --help needs no import)
SOURCE_NAMES = ("lighthouse", "ld_detr", "ms_detr", "unimd")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``CKPT [--from SOURCE] --out RUN_DIR [--config YAML] [--weights W] [--overwrite]``."""
    parser.add_argument("checkpoint", metavar="OFFICIAL_CKPT", help="the official file")
    parser.add_argument(
        "--from",
        dest="source",
        choices=SOURCE_NAMES,
        default=None,
        help="the codebase that wrote it: lighthouse (Moment-DETR, QD-DETR), ld_detr, ms_detr, "
        "unimd (default: detected from the file)",
    )
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="momentkit checkpoint")
    parser.add_argument(
        "--config",
        metavar="YAML",
        default=None,
        help="unimd: the config.yaml its training wrote (default: the one beside the file)",
    )
    parser.add_argument(
        "--weights",
        choices=("ema", "raw"),
        default=None,
        help="unimd: ema (default: the moving average its eval.py evaluates) or raw (the "
        "optimised weights)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace RUN_DIR if it holds a checkpoint"
    )


def run(args: argparse.Namespace) -> int:
    """Convert, write, print the report's summary."""
    from pathlib import Path

    from momentkit.interop.convert import REPORT_NAME, convert_checkpoint, write_converted
    from momentkit.utils.errors import MomentkitError

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise MomentkitError(
            f"{out} exists and is not empty; choose another --out or pass --overwrite"
        )
    options: dict[str, str] = {"config": args.config} if args.config else {}
    if args.weights is not None:  # the other converters refuse it, naming the file
        options["weights"] = args.weights
    converted = convert_checkpoint(args.checkpoint, args.source, **options)
    write_converted(converted, out)
    print(converted.report.summary())
    print(f"wrote {out} (report: {out / REPORT_NAME})")
    return 0
