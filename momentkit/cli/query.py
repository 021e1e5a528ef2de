"""``momentkit query``: the best moments for a text query across an indexed library.

Examples::

    momentkit query "a person drinks from a cup" --db library.db
    momentkit query "someone opens a door" --db library.db --top 5 --json
    momentkit query "a man cuts onions" --db library.db --checkpoint runs/qd_detr

Two stages: coarse retrieval of candidate videos from the library's vector index, then
localisation of the moments in each candidate with the zero-shot predictor (or the trained
checkpoint's), ranked across videos (docs/library_and_server.md).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from momentkit.library.search import LibraryResult

HELP = "search an indexed library for the moments matching a text query"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``TEXT --db FILE [--top K] [--checkpoint RUN_DIR] [--json] ...``."""
    parser.add_argument("text", metavar="TEXT", help="the query, e.g. 'a dog catches a frisbee'")
    parser.add_argument("--db", required=True, metavar="FILE", help="library database")
    parser.add_argument("--top", type=int, default=10, metavar="K", help="moments (default 10)")
    parser.add_argument(
        "--checkpoint",
        metavar="RUN_DIR",
        help="localise with this trained model (default: zero-shot with the library's encoder)",
    )
    parser.add_argument(
        "--checkpoint-encoder",
        action="append",
        metavar="SPEC",
        help="encoder(s) that made the checkpoint's training features, when their stream "
        "names do not say (e.g. clip:openai/clip-vit-base-patch32); repeatable",
    )
    parser.add_argument(
        "--videos",
        type=int,
        default=5,
        metavar="N",
        help="candidate videos localised after coarse retrieval (default 5)",
    )
    parser.add_argument(
        "--clips",
        type=int,
        default=200,
        metavar="N",
        help="clips taken from the vector index to choose the candidates (default 200)",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    """Print the moments (a table, or JSON with ``--json``)."""
    import json

    from momentkit.library.engine import SearchEngine
    from momentkit.library.library import Library
    from momentkit.utils.errors import MomentkitError

    if args.top < 1 or args.videos < 1 or args.clips < 1:
        raise MomentkitError("--top, --videos and --clips must be at least 1")
    if not args.text.strip():
        raise MomentkitError("the query is empty; give some text, e.g. 'a person opens a door'")
    with Library.open(args.db) as library:
        engine = SearchEngine.load(
            library,
            checkpoint=args.checkpoint,
            checkpoint_encoders=args.checkpoint_encoder,
            device=args.device,
        )
        result = engine.query(args.text, top_k=args.top, n_clips=args.clips, n_videos=args.videos)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    _print_table(result)
    return 0


def _print_table(result: LibraryResult) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # file names and queries are shown as plain text, never as rich markup
    table = Table(title=Text(f"“{result.query}”"))
    table.add_column("#", justify="right")
    table.add_column("video")
    table.add_column("start", justify="right")
    table.add_column("end", justify="right")
    table.add_column("relevance", justify="right")
    table.add_column("moment score", justify="right")
    for rank, m in enumerate(result.moments, start=1):
        table.add_row(
            str(rank),
            Text(m.video.name),
            f"{m.start:.1f}",
            f"{m.end:.1f}",
            f"{m.score:.4g}",
            f"{m.moment_score:.4g}",
        )
    t = result.timings
    table.caption = (
        f"{len(result.videos)} candidate video(s); coarse {t.get('coarse', 0) * 1000:.1f} ms, "
        f"localisation {t.get('localise', 0) * 1000:.0f} ms, total {t.get('total', 0):.2f} s"
    )
    Console().print(table)
