"""``momentkit search``: find the moments of a video that match natural-language queries.

Examples::

    momentkit search kitchen.mp4 "someone opens the fridge"                    # zero-shot
    momentkit search kitchen.mp4 "someone opens the fridge" "a man cuts onions" \\
        --checkpoint runs/qd_detr --plot curve.png --export-clips clips/
    momentkit search talk.mp4 "a chart on the slide" --encoder clip:openai/clip-vit-base-patch32

A clip-trimming checkpoint (``momentkit.models.trimming``) selects a few clips of a long video
per query and runs its MR model on those only (``--no-trim``: on every clip, in sliding
windows); any other checkpoint reads long videos through sliding windows. Without
``--checkpoint`` the zero-shot predictor scores clips by text-clip similarity (the
``offline`` encoder by default). The video is decoded and encoded once for all queries. The
output is a table of moments per query (or JSON with ``--json``); ``--plot`` draws the
highlight curves and ``--export-clips`` cuts each listed moment out as its own file (a stream
copy starting at the keyframe before the moment, or frame-accurate with ``--reencode``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from momentkit.inference.results import QueryResult
    from momentkit.video.cut import Cut

HELP = "find the moments of a video matching text queries (trained checkpoint or zero-shot)"

SPARK = "▁▂▃▄▅▆▇█"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``momentkit search``."""
    parser.add_argument("video", metavar="VIDEO", help="the video file")
    parser.add_argument("queries", nargs="+", metavar="QUERY", help="one or more text queries")
    parser.add_argument(
        "--checkpoint",
        metavar="RUN_DIR",
        help="a trained run (`momentkit train --out`) or checkpoint directory "
        "(default: zero-shot text-clip similarity)",
    )
    parser.add_argument(
        "--encoder",
        action="append",
        metavar="SPEC",
        help="encoder: for zero-shot, offline (default), clip:<model> or siglip:<model>; with "
        "--checkpoint, the encoder(s) that made its training features (repeatable; default: "
        "inferred from the checkpoint's stream names)",
    )
    parser.add_argument(
        "--top", type=int, default=5, metavar="K", help="moments listed per query (default: 5)"
    )
    parser.add_argument(
        "--clip-len",
        type=float,
        default=2.0,
        metavar="SEC",
        help="seconds per clip of the zero-shot predictor (default: 2; a checkpoint uses its "
        "training clip length)",
    )
    parser.add_argument(
        "--no-trim",
        action="store_true",
        help="with a clip-trimming checkpoint, run its MR model on every clip (sliding "
        "windows) instead of on the clips it selects",
    )
    parser.add_argument("--plot", metavar="OUT.png", help="write the highlight curves here")
    parser.add_argument(
        "--export-clips", metavar="DIR", help="cut every listed moment into a file in DIR"
    )
    parser.add_argument(
        "--reencode",
        action="store_true",
        help="re-encode exported clips so they start exactly on the moment (slower)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")


def build_predictor(args: argparse.Namespace) -> Any:
    """The :class:`~momentkit.inference.predictor.Predictor` the arguments describe."""
    from momentkit.inference.predictor import Predictor
    from momentkit.training.distributed import resolve_device
    from momentkit.utils.errors import MomentkitError

    device = str(resolve_device(args.device))
    if args.checkpoint is not None:
        return Predictor.from_checkpoint(
            args.checkpoint,
            device=device,
            encoder=args.encoder,
            trim=not getattr(args, "no_trim", False),
        )
    encoders = args.encoder or ["offline"]
    if len(encoders) > 1:
        raise MomentkitError(
            "zero-shot search takes one --encoder (offline, clip:<model> or siglip:<model>); "
            "several encoders need a trained --checkpoint"
        )
    if args.clip_len <= 0:
        raise MomentkitError(f"--clip-len must be > 0 seconds, got {args.clip_len}")
    return Predictor.zero_shot(encoders[0], clip_len=args.clip_len, device=device)


def slugify(text: str, max_len: int = 40) -> str:
    """A file-name-safe version of ``text``: lower case, ``-`` between words, at most
    ``max_len`` characters."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "query"


def export_moments(
    video: str | Path,
    results: Sequence[QueryResult],
    out_dir: str | Path,
    *,
    per_query: int | None = None,
    reencode: bool = False,
) -> list[list[Cut]]:
    """Cut the moments of every result out of ``video`` into ``out_dir``.

    Files are named ``q<query number>_<query slug>_<rank>_<start>-<end><ext>``; a stream copy
    keeps the video's container, a re-encode writes ``.mp4``.

    Args:
        video: the source video.
        results: the queries' results.
        out_dir: the folder (created).
        per_query: moments cut per query, best first (``None``: all).
        reencode: frame-accurate cuts (see :func:`momentkit.video.cut_clip`).

    Returns:
        Per result, the written :class:`~momentkit.video.cut.Cut` of each moment, in order.
    """
    from momentkit.video.cut import cut_clip

    out_dir = Path(out_dir)
    suffix = ".mp4" if reencode else (Path(video).suffix or ".mp4")
    cuts: list[list[Cut]] = []
    for qi, result in enumerate(results, start=1):
        row = []
        for rank, m in enumerate(result.moments[:per_query], start=1):
            name = f"q{qi}_{slugify(result.query)}_{rank}_{m.start:.1f}-{m.end:.1f}{suffix}"
            row.append(cut_clip(video, m.start, m.end, out_dir / name, reencode=reencode))
        cuts.append(row)
    return cuts


def sparkline(values: Sequence[float], width: int = 60) -> str:
    """``values`` as a line of block characters, resampled to at most ``width`` characters."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return ""
    if len(v) > width:
        v = np.array([chunk.mean() for chunk in np.array_split(v, width)])
    low, high = v.min(), v.max()
    levels = np.zeros(len(v), int) if high == low else ((v - low) / (high - low) * 7).round()
    return "".join(SPARK[int(i)] for i in levels)


def results_table(result: QueryResult, cuts: Sequence[Cut] | None = None) -> Any:
    """A rich ``Table`` of one query's moments (rank, start, end, length, score, clip file)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"[bold]{escape(result.query)}[/bold]", title_justify="left")
    table.add_column("#", justify="right")
    for name in ("start (s)", "end (s)", "length (s)", "score"):
        table.add_column(name, justify="right")
    if cuts:
        table.add_column("clip", overflow="fold")
    for rank, m in enumerate(result.moments, start=1):
        row = [str(rank), f"{m.start:.1f}", f"{m.end:.1f}", f"{m.length:.1f}", f"{m.score:.4g}"]
        if cuts:
            row.append(cuts[rank - 1].path.name if rank <= len(cuts) else "")
        table.add_row(*row)
    table.caption = f"saliency {sparkline(result.saliency)}"
    table.caption_justify = "left"
    return table


def results_json(
    video: str | Path,
    description: str,
    results: Sequence[QueryResult],
    cuts: Sequence[Sequence[Cut]] | None = None,
    plot: str | Path | None = None,
) -> dict[str, Any]:
    """The JSON document ``--json`` prints: the video, the predictor and every query's moments
    (with the exported clip, when cut) and saliency."""
    rows = []
    for i, result in enumerate(results):
        row = result.to_dict()
        for j, moment in enumerate(row["moments"]):
            if cuts and j < len(cuts[i]):
                cut = cuts[i][j]
                moment["clip"] = {
                    "path": str(cut.path),
                    "start": round(cut.start, 4),
                    "end": round(cut.end, 4),
                }
        rows.append(row)
    first = results[0]
    return {
        "video": str(video),
        "duration": round(first.duration, 4),
        "clip_len": first.clip_len,
        "predictor": description,
        "plot": str(plot) if plot is not None else None,
        "results": rows,
    }


def run(args: argparse.Namespace) -> int:
    """Encode the video, answer the queries, print, plot and export."""
    from rich.console import Console

    from momentkit.utils.errors import MomentkitError

    if args.top < 1:
        raise MomentkitError(f"--top must be >= 1, got {args.top}")
    # with --json, stdout holds only the JSON document; progress goes to stderr
    console = Console(stderr=args.json)
    start = time.perf_counter()
    with console.status("loading the predictor"):
        predictor = build_predictor(args)
    with console.status(f"encoding {args.video}"):
        video = predictor.encode_video(args.video)
    encoded = time.perf_counter()
    with console.status(f"scoring {len(args.queries)} queries"):
        results = predictor.predict(video, args.queries, top_k=args.top)
    cuts = None
    if args.export_clips:
        cuts = export_moments(args.video, results, args.export_clips, reencode=args.reencode)
    if args.plot:
        from momentkit.inference.plot import plot_highlights

        plot_highlights(results, args.plot, title=Path(args.video).name)
    if args.json:
        doc = results_json(args.video, predictor.description, results, cuts, args.plot)
        sys.stdout.write(json.dumps(doc) + "\n")
        return 0
    console.print(
        f"{args.video}: {video.duration:.1f} s, {video.num_clips} clips of {video.clip_len:g} s; "
        f"{predictor.description} (encoded in {encoded - start:.1f} s)",
        soft_wrap=True,
        markup=False,
        highlight=False,
    )
    for i, result in enumerate(results):
        console.print(results_table(result, cuts[i] if cuts else None))
    if cuts:
        count = sum(len(c) for c in cuts)
        console.print(f"wrote {count} clips to {args.export_clips}", markup=False)
    if args.plot:
        console.print(f"wrote the highlight curves to {args.plot}", markup=False)
    return 0
