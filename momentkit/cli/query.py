"""``momentkit query``: the best moments for text queries across an indexed library.

Examples::

    momentkit query "a person drinks from a cup" --db library.db
    momentkit query "someone opens a door" "a dog jumps" --db library.db --top 5 --json
    momentkit query --queries-file queries.txt --db library.db --export csv:moments.csv
    momentkit query "a man cuts onions" --db library.db --checkpoint runs/qd_detr --min-score 0.9

Two stages per query: coarse retrieval of candidate videos from the library's vector index,
then localisation of the moments in each candidate with the zero-shot predictor (or the trained
checkpoint's), ranked across videos (docs/library_and_server.md). The models are loaded once
for all queries. The footer accounts for the whole run: the process's start-up, opening the
library, every stage the search engine measured (loading the models included) and the output.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from momentkit.cli.common import at_least
from momentkit.cli.output import add_output_arguments

if TYPE_CHECKING:
    from momentkit.cli.inputs import Query
    from momentkit.export.model import Answer
    from momentkit.library.search import LibraryResult

HELP = "search an indexed library for the moments matching text queries"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``TEXT [TEXT ...] --db FILE [--queries-file F] [--top K] [--export FORMAT:PATH] ...``."""
    parser.add_argument(
        "text", nargs="*", metavar="TEXT", help="queries, e.g. 'a dog catches a frisbee'"
    )
    parser.add_argument("--db", required=True, metavar="FILE", help="library database")
    parser.add_argument(
        "--queries-file",
        action="append",
        default=[],
        metavar="FILE",
        help="queries, one per line (# starts a comment), or QVHighlights JSON Lines (.jsonl: "
        "'query', optional 'qid'); repeatable",
    )
    parser.add_argument(
        "--top", type=at_least(1), default=10, metavar="K", help="moments (default 10)"
    )
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
        type=at_least(1),
        default=5,
        metavar="N",
        help="candidate videos localised after coarse retrieval (default 5)",
    )
    parser.add_argument(
        "--clips",
        type=at_least(1),
        default=200,
        metavar="N",
        help="clips taken from the vector index to choose the candidates (default 200)",
    )
    add_output_arguments(
        parser,
        plot_help="write the highlight curves of the candidate videos here (one panel each); "
        "with several queries put {query} in the file name (curves/{query}.png)",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per query, one per line (JSON Lines)",
    )


def result_document(result: LibraryResult, qid: Any, answers: Sequence[Answer]) -> dict[str, Any]:
    """The JSON object of one query: the library's answer (``LibraryResult.to_dict()``) with
    ``qid``, full-precision times and the exported clip of each moment."""
    doc = {"qid": qid, **result.to_dict()}
    clips = {(a.video, m.rank): m.clip for a in answers for m in a.moments if m.clip is not None}
    for rank, (row, moment) in enumerate(zip(doc["moments"], result.moments), start=1):
        row["start"], row["end"] = float(moment.start), float(moment.end)
        clip = clips.get((str(moment.video.path), rank))
        if clip is not None:
            row["clip"] = {
                "path": str(clip.path),
                "start": float(clip.start),
                "end": float(clip.end),
            }
    return doc


def run(args: argparse.Namespace) -> int:
    """Print the moments of every query (a table each, or JSON Lines with ``--json``), then
    the exports and the timing footer."""
    import json

    from rich.console import Console

    from momentkit.cli.inputs import collect_queries
    from momentkit.cli.output import (
        check_min_score,
        process_age,
        refuse_duplicate_outputs,
        report_kept_files,
        threshold_kwargs,
    )
    from momentkit.export import ExportTarget, export_clips, from_library
    from momentkit.library.engine import SearchEngine
    from momentkit.library.library import Library
    from momentkit.utils.errors import MomentkitError
    from momentkit.utils.paths import refuse_overwriting_inputs

    started = time.perf_counter()
    startup = process_age()
    if args.top < 1 or args.videos < 1 or args.clips < 1:
        raise MomentkitError("--top, --videos and --clips must be at least 1")
    check_min_score(args.min_score)
    queries = collect_queries(args.text, args.queries_file)
    targets = [ExportTarget.parse(spec) for spec in args.export]
    for target in targets:
        target.check(1 if args.videos == 1 else None)
    if args.plot and len(queries) > 1 and "{query}" not in args.plot:
        raise MomentkitError(
            f"--plot {args.plot}: several queries are asked; put {{query}} in the file name, "
            "e.g. --plot curves/{query}.png"
        )
    inputs: list[tuple[str, Any]] = [("--db", args.db)]
    inputs += [("--queries-file", name) for name in args.queries_file]
    outputs = _output_files(targets, args.plot, queries)
    templates = [(f"--export {t.spec}", Path(t.path)) for t in targets if "{video}" in t.path]
    refuse_duplicate_outputs(outputs + templates)  # before the library is opened
    refuse_overwriting_inputs(outputs, inputs)
    fast = args.fast_cut and not args.reencode
    console = Console(stderr=args.json)
    stages: dict[str, float] = {}
    answers: list[Answer] = []
    documents: list[dict[str, Any]] = []
    opening = time.perf_counter()
    with Library.open(args.db) as library:
        vids = _library_vids(library)
        videos = [("library video", path) for path in vids]
        refuse_overwriting_inputs(outputs, videos)  # the other inputs were checked above
        inputs += videos
        stages["open library"] = time.perf_counter() - opening
        loading = time.perf_counter()
        engine = SearchEngine.load(
            library,
            checkpoint=args.checkpoint,
            checkpoint_encoders=args.checkpoint_encoder,
            device=args.device,
        )
        if getattr(engine, "load_seconds", None) is None:  # not reported by the first query
            stages["load"] = time.perf_counter() - loading
        kwargs = threshold_kwargs(engine.query, args.min_score)
        for query in queries:
            result = engine.query(
                query.text, top_k=args.top, n_clips=args.clips, n_videos=args.videos, **kwargs
            )
            for key, seconds in result.timings.items():
                if key != "total":
                    stages[key] = stages.get(key, 0.0) + seconds
            out_start = time.perf_counter()
            mine = from_library(result, query.qid, vids)
            if args.export_clips:
                export_clips(mine, args.export_clips, fast=fast, keep=[p for _, p in inputs if p])
            if args.plot:
                _plot(args.plot, query, result)
            answers += mine
            documents.append(result_document(result, query.qid, mine))
            if args.json:
                print(json.dumps(documents[-1]), flush=True)
            else:
                _print_result(console, result, mine)
            stages["output"] = stages.get("output", 0.0) + time.perf_counter() - out_start
    out_start = time.perf_counter()
    expanded = _output_files(targets, None, [], answers)
    refuse_duplicate_outputs(outputs + expanded)  # {video} templates now known
    refuse_overwriting_inputs(expanded, inputs)
    written = {t.spec: t.write(answers, {"results": documents}) for t in targets}
    if not args.json:
        for spec, paths in written.items():
            shown = ", ".join(str(p) for p in paths[:3]) + (" ..." if len(paths) > 3 else "")
            console.print(f"wrote {spec.split(':')[0]}: {shown}", markup=False, soft_wrap=True)
        if args.export_clips:
            count = sum(1 for a in answers for m in a.moments if m.clip is not None)
            mode = "stream copies from the keyframe before" if fast else "frame-accurate"
            console.print(f"wrote {count} clips ({mode}) to {args.export_clips}", markup=False)
            report_kept_files(console, answers)
    stages["output"] = stages.get("output", 0.0) + time.perf_counter() - out_start
    if not args.json:
        console.print(timing_footer(startup, stages, time.perf_counter() - started), markup=False)
    return 0


def timing_footer(startup: float | None, stages: dict[str, float], run_seconds: float) -> str:
    """``start-up 0.91 s · open library 3 ms · load 2.31 s · ... · other 2 ms · total 3.40 s``.

    ``stages`` are the seconds measured inside the run (summed over queries); ``other`` is what
    they leave of the run, so the parts add up to the total (the process's wall time when its
    start-up is known)."""
    from momentkit.cli.output import seconds_text

    parts = [] if startup is None else [("start-up", startup)]
    parts += list(stages.items())
    parts.append(("other", max(0.0, run_seconds - sum(stages.values()))))
    total = run_seconds + (startup or 0.0)
    text = " · ".join(f"{name} {seconds_text(s)}" for name, s in parts)
    return f"{text} · total {seconds_text(total)}" + (
        "" if startup is not None else " (the process's start-up was not measured)"
    )


def _library_vids(library: Any) -> dict[str, str]:
    """Video path -> vid, over the whole library (so ids do not change between queries)."""
    from pathlib import Path

    from momentkit.export import video_ids

    paths = [Path(r.path) for r in library.store.videos()]
    return {str(p): vid for p, vid in zip(paths, video_ids(paths))} if paths else {}


def _plot_path(template: str, query: Query) -> str | Path:
    """The ``--plot`` file of ``query`` (``{query}`` filled in)."""
    from momentkit.export.paths import fill, slugify

    if "{query}" not in template:
        return template
    return fill(template, "query", f"q{slugify(str(query.qid), 24, 'x')}-{slugify(query.text)}")


def _output_files(
    targets: Sequence[Any],
    plot: str | None,
    queries: Sequence[Query],
    answers: Sequence[Answer] | None = None,
) -> list[tuple[str, Path]]:
    """``(option, path)`` of the files the exports and ``--plot`` will write.

    Without ``answers`` an export whose path has ``{video}`` is left out (its files are known
    once the videos are found); with them, only those exports, expanded as
    :meth:`~momentkit.export.registry.ExportTarget.write` expands them.
    """
    from momentkit.export import by_video, unique_slugs
    from momentkit.export.paths import fill

    files: list[tuple[str, Path]] = []
    for t in targets:
        templated = "{video}" in t.path
        if answers is None and not templated:
            files.append((f"--export {t.spec}", Path(t.path)))
        elif answers is not None and templated:
            slugs = unique_slugs(list(by_video(answers)))
            files += [(f"--export {t.spec}", fill(t.path, "video", s)) for s in slugs.values()]
    if plot:
        files += [("--plot", Path(_plot_path(plot, q))) for q in queries]
    return files


def _plot(template: str, query: Query, result: LibraryResult) -> None:
    from momentkit.inference.plot import plot_highlights

    if not result.videos:
        return
    path = _plot_path(template, query)
    plot_highlights(
        [r for _, r in result.videos],
        path,
        title=query.text,
        panel_titles=[c.video.name for c, _ in result.videos],
    )


def _print_result(console: Any, result: LibraryResult, answers: Sequence[Answer]) -> None:
    from rich.table import Table
    from rich.text import Text

    from momentkit.cli.output import no_match_line, relevance_text, seconds_text

    if getattr(result, "no_confident_match", False):
        line = no_match_line(
            result.query,
            "the library",
            getattr(result, "best_relevance", None),
            getattr(result, "min_relevance", None),
        )
        console.print(line, soft_wrap=True, markup=False, highlight=False, style="yellow")
        return
    clips = {(a.video, m.rank): m.clip for a in answers for m in a.moments if m.clip}
    # file names and queries are shown as plain text, never as rich markup
    table = Table(title=Text(f"“{result.query}”"))
    table.add_column("#", justify="right")
    table.add_column("video", overflow="fold")
    table.add_column("span (s)", justify="right", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("relevance", justify="right", no_wrap=True)
    table.add_column("moment score", justify="right")
    if clips:
        table.add_column("clip covers (s)", justify="right")
    for rank, m in enumerate(result.moments, start=1):
        row = [
            str(rank),
            Text(m.video.name),
            f"{m.start:.2f}-{m.end:.2f}",
            f"{m.score:.4g}",
            relevance_text(getattr(m, "relevance", None)),
            f"{m.moment_score:.4g}",
        ]
        if clips:
            clip = clips.get((str(m.video.path), rank))
            row.append("" if clip is None else f"{clip.start:.2f}-{clip.end:.2f}")
        table.add_row(*row)
    t = result.timings
    stages = " · ".join(f"{k} {seconds_text(v)}" for k, v in t.items() if k != "total")
    table.caption = f"{len(result.videos)} candidate video(s); {stages}"
    console.print(table)
