"""``momentkit pack SRC_DIR OUT_DIR``: pack a feature directory into one memory-mapped store.

Example::

    momentkit pack features/slowfast_features features/slowfast.packed
    momentkit pack features/clip_text_features features/clip_text.packed --dtype float16

Every command that reads features accepts either the original directory or the packed store.
"""

from __future__ import annotations

import argparse

HELP = "pack a directory of per-item .npz features into one memory-mapped store"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``SRC_DIR OUT_DIR [--dtype] [--field] [--overwrite] [--no-progress]``."""
    parser.add_argument("src", metavar="SRC_DIR", help="folder of <vid>.npz or qid<qid>.npz files")
    parser.add_argument(
        "out", metavar="OUT_DIR", help="store to create (a folder with data.bin + index.json)"
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default="float32",
        help="storage precision (default: float32, exact; float16 halves the size)",
    )
    parser.add_argument(
        "--field",
        default=None,
        help="array to read from each .npz (default: features, else last_hidden_state, "
        "else pooler_output)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Pack ``args.src`` into ``args.out`` and print a one-line summary."""
    from momentkit.features import open_feature_store, pack_features

    source = open_feature_store(args.src, field=args.field)
    store = pack_features(
        source, args.out, dtype=args.dtype, overwrite=args.overwrite, progress=not args.no_progress
    )
    size_mb = store.rows * store.dim * store.dtype.itemsize / 2**20
    print(
        f"packed {len(store)} items ({store.rows} rows x {store.dim} channels, {store.dtype}, "
        f"{size_mb:.1f} MiB, array '{store.field}') into {store.path}"
    )
    return 0
