"""``momentkit search``: find the moments of videos that match natural-language queries.

Examples::

    momentkit search kitchen.mp4 "someone opens the fridge"                    # zero-shot
    momentkit search kitchen.mp4 "someone opens the fridge" "a man cuts onions" \\
        --checkpoint runs/qd_detr --plot curve.png --export-clips clips/
    momentkit search "videos/*.mp4" --queries-file queries.txt --export csv:moments.csv
    momentkit search a.mp4 --video b.mp4 "a dog" --export "srt:subs/{video}.srt"
    momentkit search "val/*.mp4" --queries-file val.jsonl --export qvh:preds.jsonl

The first argument is a video (a path or a quoted glob), every further one a query; ``--video``
adds videos and ``--queries-file`` adds queries (one per line, or QVHighlights JSON Lines whose
``vid`` pairs each query with its video). Each video is decoded and encoded once for all its
queries.

A clip-trimming checkpoint (``momentkit.models.trimming``) selects a few clips of a long video
per query and runs its MR model on those only (``--no-trim``: on every clip, in sliding
windows); any other checkpoint reads long videos through sliding windows. Without
``--checkpoint`` the zero-shot predictor scores clips by text-clip similarity (the
``offline`` encoder by default). The output is a table of moments per query (or JSON with
``--json``); ``--plot`` draws the highlight curves, ``--export`` writes other formats
(:mod:`momentkit.export`) and ``--export-clips`` cuts each listed moment out as its own file
(frame-accurate; ``--fast-cut``: a stream copy from the keyframe before the moment).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from momentkit.cli.common import add_max_clips_argument, at_least, positive_float
from momentkit.cli.index import DEFAULT_MAX_CLIPS
from momentkit.cli.output import add_output_arguments

if TYPE_CHECKING:
    from momentkit.export.model import Answer

HELP = "find the moments of videos matching text queries (trained checkpoint or zero-shot)"

SPARK = "▁▂▃▄▅▆▇█"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``momentkit search``."""
    parser.usage = (
        "%(prog)s VIDEO [QUERY ...] [--video VIDEO ...] [--queries-file FILE ...] [options]"
    )
    parser.add_argument(
        "video",
        metavar="VIDEO",
        help='the video file, or a quoted glob of several ("videos/*.mp4", "**" for sub-folders)',
    )
    queries = parser.add_argument(
        "queries",
        nargs="+",
        default=[],
        metavar="QUERY",
        help="text queries (none needed when --queries-file gives them)",
    )
    # "+" rather than "*": argparse then leaves the queries to a later group of words, so
    # options may still come between VIDEO and them (`search v.mp4 --top 3 "q"`); not required,
    # so --queries-file alone is enough (run() checks that some query was given)
    queries.required = False
    parser.add_argument(
        "--video",
        dest="videos",
        action="append",
        default=[],
        metavar="VIDEO",
        help="another video file or glob (repeatable)",
    )
    parser.add_argument(
        "--queries-file",
        action="append",
        default=[],
        metavar="FILE",
        help="queries, one per line (# starts a comment), or QVHighlights JSON Lines (.jsonl: "
        "'query', optional 'qid' and 'vid'; a 'vid' asks the query of that video only); "
        "repeatable",
    )
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
        "--top",
        type=at_least(1),
        default=5,
        metavar="K",
        help="moments listed per query (default: 5)",
    )
    parser.add_argument(
        "--clip-len",
        type=positive_float,
        default=2.0,
        metavar="SEC",
        help="seconds per clip of the zero-shot predictor (default: 2; a checkpoint uses its "
        "training clip length)",
    )
    add_max_clips_argument(
        parser,
        DEFAULT_MAX_CLIPS,
        "refuse a video",
        "A --clip-len shorter than the video's frame interval is refused too",
    )
    parser.add_argument(
        "--no-trim",
        action="store_true",
        help="with a clip-trimming checkpoint, run its MR model on every clip (sliding "
        "windows) instead of on the clips it selects",
    )
    add_output_arguments(
        parser,
        plot_help="write the highlight curves here (one panel per query); with several videos "
        "put {video} in the file name (curves/{video}.png)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the results as one JSON document (progress goes to stderr)",
    )
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


def results_table(answer: Answer) -> Any:
    """A rich ``Table`` of one query's moments in one video: rank, start, end, length, raw
    score, calibrated relevance, and the span the exported clip really covers."""
    from rich.table import Table
    from rich.text import Text

    from momentkit.cli.output import relevance_text

    table = Table(title=Text(answer.query, style="bold"), title_justify="left")
    table.add_column("#", justify="right")
    for name in ("start (s)", "end (s)", "length (s)", "score", "relevance"):
        table.add_column(name, justify="right")
    cut = any(m.clip is not None for m in answer.moments)
    if cut:
        table.add_column("clip covers (s)", justify="right")
    for m in answer.moments:
        row: list[Any] = [
            str(m.rank),
            f"{m.start:.2f}",
            f"{m.end:.2f}",
            f"{m.end - m.start:.2f}",
            f"{m.score:.4g}",
            relevance_text(m.relevance),
        ]
        if cut:
            row.append(f"{m.clip.start:.2f}-{m.clip.end:.2f}" if m.clip is not None else "")
        table.add_row(*row)
    table.caption = f"saliency {sparkline(answer.saliency)}"
    table.caption_justify = "left"
    return table


def answer_dict(answer: Answer) -> dict[str, Any]:
    """One result of the JSON document: the query, its video, moments (with the exported
    clip's real span), saliency and the threshold outcome; full float precision."""
    return {
        "qid": answer.qid,
        "query": answer.query,
        "video": answer.video,
        "vid": answer.vid,
        "moments": [m.to_dict() for m in answer.moments],
        "saliency": [float(x) for x in answer.saliency],
        "clip_len": float(answer.clip_len),
        "duration": float(answer.duration),
        "min_relevance": answer.min_relevance,
        "best_relevance": answer.best_relevance,
        "no_confident_match": answer.no_confident_match,
    }


def results_document(
    description: str,
    videos: Sequence[dict[str, Any]],
    answers: Sequence[Answer],
    failed: Sequence[dict[str, str]] = (),
) -> dict[str, Any]:
    """The JSON document ``--json`` prints: the predictor, the videos searched, every query's
    result in every video, and the videos that could not be read."""
    return {
        "predictor": description,
        "videos": list(videos),
        "results": [answer_dict(a) for a in answers],
        "failed": list(failed),
    }


def print_no_match(console: Any, answer: Answer) -> None:
    """The "no confident match" line of an answer."""
    from momentkit.cli.output import no_match_line

    line = no_match_line(
        answer.query, Path(answer.video).name, answer.best_relevance, answer.min_relevance
    )
    console.print(line, soft_wrap=True, markup=False, highlight=False, style="yellow")


def run(args: argparse.Namespace) -> int:
    """Encode each video once, answer its queries, print, plot and export."""
    from rich.console import Console

    from momentkit.cli.inputs import collect_queries, expand_videos, pair, reject_video_paths
    from momentkit.cli.output import (
        check_min_score,
        clip_progress,
        refuse_duplicate_outputs,
        report_kept_files,
        threshold_kwargs,
    )
    from momentkit.export import ExportTarget, export_clips, from_results, video_ids
    from momentkit.export.paths import fill, unique_slugs
    from momentkit.inference.predictor import ClipLengthError, TooManyClipsError, check_video_clips
    from momentkit.utils.errors import MomentkitError
    from momentkit.utils.paths import refuse_overwriting_inputs
    from momentkit.video.decode import VideoError

    if args.top < 1:
        raise MomentkitError(f"--top must be >= 1, got {args.top}")
    max_clips = getattr(args, "max_clips", DEFAULT_MAX_CLIPS)
    if max_clips < 0:
        raise MomentkitError(f"--max-clips must be >= 0 (0: no limit), got {max_clips}")
    check_min_score(args.min_score)
    targets = [ExportTarget.parse(spec) for spec in args.export]
    queries = collect_queries(args.queries, args.queries_file)
    reject_video_paths(queries)
    videos = expand_videos([args.video, *args.videos])
    vids = video_ids(videos)
    plan, unmatched = pair(videos, vids, queries)
    if not plan:
        raise MomentkitError(
            f"no query is for these videos: the 'vid' of every query ({unmatched[0].where}: "
            f"{unmatched[0].vid!r}, ...) names none of the {len(videos)} video(s) given; a video's "
            "vid is its file name without the extension"
        )
    for target in targets:
        target.check(len(plan))
    if args.plot and len(plan) > 1 and "{video}" not in args.plot:
        raise MomentkitError(
            f"--plot {args.plot}: several videos are searched; put {{video}} in the file name, "
            "e.g. --plot curves/{video}.png"
        )
    slugs = unique_slugs([vid for _, vid, _ in plan])
    outputs = output_files(targets, args.plot, [slugs[vid] for _, vid, _ in plan])
    refuse_duplicate_outputs(outputs)
    inputs = [("VIDEO", video) for video, _, _ in plan]
    inputs += [("--queries-file", name) for name in args.queries_file]
    refuse_overwriting_inputs(outputs, inputs)
    fast = args.fast_cut and not args.reencode

    # with --json, stdout holds only the JSON document; progress goes to stderr
    console = Console(stderr=args.json)
    if unmatched:
        console.print(
            f"skipped {len(unmatched)} queries whose vid names none of the videos given "
            f"(first: {unmatched[0].where}, vid {unmatched[0].vid!r})",
            soft_wrap=True,
            markup=False,
            style="yellow",
        )
    with console.status("loading the predictor"):
        predictor = build_predictor(args)
    kwargs = threshold_kwargs(predictor.predict, args.min_score)
    answers: list[Answer] = []
    video_rows: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    for index, (video, vid, video_queries) in enumerate(plan, start=1):
        counter = f"[{index}/{len(plan)}] " if len(plan) > 1 else ""
        start = time.perf_counter()
        try:
            # refused before decoding: a tiny file may declare years, a clip may be < 1 frame
            check_video_clips(video, predictor.clip_len, max_clips or None)
            with clip_progress(console, f"{counter}encoding {video.name}", "clips") as progress:
                # the clip limit was checked above, with this command's option names
                encoding = predictor.encode_video(video, progress=progress, max_clips=None)
        except (VideoError, TooManyClipsError, ClipLengthError) as e:
            if len(plan) == 1:
                raise
            console.print(f"error: {e}", markup=False, style="red", soft_wrap=True)
            failed.append({"video": str(video), "error": str(e)})
            continue
        encoded = time.perf_counter() - start
        results = predictor.predict(
            encoding, [q.text for q in video_queries], top_k=args.top, **kwargs
        )
        mine = from_results(str(video), vid, [q.qid for q in video_queries], results)
        if args.export_clips:
            with clip_progress(console, f"{counter}cutting {video.name}", "clips") as progress:
                export_clips(
                    mine,
                    args.export_clips,
                    fast=fast,
                    progress=progress,
                    keep=[path for _, path in inputs],
                )
        plot = None
        if args.plot:
            from momentkit.inference.plot import plot_highlights

            plot = fill(args.plot, "video", slugs[vid]) if "{video}" in args.plot else args.plot
            plot_highlights(results, plot, title=video.name)
        video_rows.append(
            {
                "video": str(video),
                "vid": vid,
                "duration": float(encoding.duration),
                "clip_len": float(encoding.clip_len),
                "num_clips": int(encoding.num_clips),
                "encode_seconds": encoded,
                "plot": None if plot is None else str(plot),
            }
        )
        answers += mine
        if not args.json:
            _print_video(console, video, encoding, predictor.description, encoded, mine, plot)
    document = results_document(predictor.description, video_rows, answers, failed)
    written = {t.spec: t.write(answers, document) for t in targets}
    if args.json:
        sys.stdout.write(json.dumps(document) + "\n")
    else:
        if args.export_clips:
            count = sum(1 for a in answers for m in a.moments if m.clip is not None)
            mode = "stream copies from the keyframe before" if fast else "frame-accurate"
            console.print(f"wrote {count} clips ({mode}) to {args.export_clips}", markup=False)
            report_kept_files(console, answers)
        for spec, paths in written.items():
            shown = ", ".join(str(p) for p in paths[:3]) + (" ..." if len(paths) > 3 else "")
            console.print(f"wrote {spec.split(':')[0]}: {shown}", markup=False, soft_wrap=True)
        if failed:
            console.print(
                f"{len(failed)} of {len(plan)} videos could not be read", style="red", markup=False
            )
    return 1 if failed else 0


def output_files(
    targets: Sequence[Any], plot: str | None, slugs: Sequence[str]
) -> list[tuple[str, Path]]:
    """``(option, path)`` of every file the exports and ``--plot`` will write, a ``{video}``
    template expanded for each video (``slugs``: the videos' file-name slugs)."""
    from momentkit.export.paths import fill

    def expand(template: str) -> list[Path]:
        if "{video}" not in template:
            return [Path(template)]
        return [fill(template, "video", slug) for slug in slugs]

    files = [(f"--export {t.spec}", p) for t in targets for p in expand(t.path)]
    if plot:
        files += [("--plot", p) for p in expand(plot)]
    return files


def _print_video(
    console: Any,
    video: Path,
    encoding: Any,
    description: str,
    seconds: float,
    answers: Sequence[Answer],
    plot: str | Path | None,
) -> None:
    console.print(
        f"{video}: {encoding.duration:.1f} s, {encoding.num_clips} clips of "
        f"{encoding.clip_len:g} s; {description} (encoded in {seconds:.1f} s)",
        soft_wrap=True,
        markup=False,
        highlight=False,
    )
    for answer in answers:
        if answer.no_confident_match:
            print_no_match(console, answer)
        else:
            console.print(results_table(answer))
    if plot is not None:
        console.print(f"wrote the highlight curves to {plot}", markup=False, soft_wrap=True)
