"""``momentkit bench search``: how fast a library answers.

1. **Coarse retrieval at scale**: for each ``--dims`` value, a temporary library of
   ``--clips`` synthetic clip vectors (default 100 000; 50 clips per video) is written to
   SQLite, opened (the FAISS index is built from it), and ``--queries`` random queries go
   through stage 1 of :func:`~momentkit.library.search.search_library` (vector search, votes
   per video, candidate records). A dimension of 1000 is the ``offline`` bridge (clip vectors
   are ImageNet class probabilities, queries softmax class weights); any other is a CLIP-like
   joint space (unit vectors; 512 = CLIP ViT-B/32).
2. **End to end** on real videos: ``--video`` (default: the Charades demo clip) copied under
   ``--copies`` names is indexed with ``--encoder`` (zero-shot), then each query is timed
   for one video (decode + encode + localise, and localise only) and for the library (query
   embedding + coarse retrieval + localisation in the candidates).

Figures are medians and 95th percentiles over the queries, after one untimed warm-up query.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from momentkit.cli.common import at_least

if TYPE_CHECKING:
    import numpy as np


HELP = "time library search: coarse retrieval over 100k clips and end-to-end queries"

_DEMO = Path(__file__).resolve().parents[2].parent / "shared" / "media" / "charades_demo.mp4"
BRIDGE_DIM = 1000  # ImageNet classes: the offline encoder's retrieval vectors
QUERIES = (
    "a person drinks from a cup",
    "someone opens a door",
    "a person sits down on a chair",
    "a person holds a cup",
    "a person walks through a doorway",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``[--clips N] [--dims D ...] [--queries N] [--video PATH] [--copies N] ...``."""
    parser.add_argument(
        "--clips", type=at_least(1), default=100_000, help="synthetic clips (100000)"
    )
    parser.add_argument(
        "--dims",
        type=at_least(1),
        nargs="+",
        default=[512, BRIDGE_DIM],
        help="vector dimensions to test (default: 512 for CLIP, 1000 for the offline bridge)",
    )
    parser.add_argument("--queries", type=at_least(1), default=50, help="timed coarse queries (50)")
    parser.add_argument(
        "--clips-per-video", type=at_least(1), default=50, help="synthetic clips per video (50)"
    )
    parser.add_argument(
        "--n-clips", type=at_least(1), default=200, help="clips retrieved per query"
    )
    parser.add_argument(
        "--n-videos", type=at_least(1), default=5, help="candidate videos per query"
    )
    parser.add_argument("--video", type=Path, default=_DEMO, help="real video for end to end")
    parser.add_argument(
        "--copies", type=at_least(1), default=2, help="copies of --video indexed (2)"
    )
    parser.add_argument("--encoder", default="offline", help="encoder of the real library")
    parser.add_argument(
        "--e2e-repeat", type=at_least(1), default=2, help="passes over the end-to-end queries (2)"
    )
    parser.add_argument("--skip-e2e", action="store_true", help="only the synthetic benchmark")
    parser.add_argument("--seed", type=at_least(0), default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")


# ------------------------------------------------------------------------------ synthetic data
def synthetic_vectors(rng: np.random.Generator, num: int, dim: int) -> np.ndarray:
    """``(num, dim)`` float32 clip features: class probabilities (peaked softmax) for the
    1000-d bridge, Gaussian vectors otherwise."""
    import numpy as np

    x = rng.standard_normal((num, dim), dtype=np.float32)
    if dim != BRIDGE_DIM:
        return x
    x *= 3.0
    x -= x.max(axis=1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=1, keepdims=True)
    return x


def synthetic_spec(dim: int) -> str:
    """The encoder spec a synthetic library of dimension ``dim`` pretends to use."""
    return "offline" if dim == BRIDGE_DIM else f"clip:synthetic-{dim}d"


def build_synthetic_library(
    db: str | Path, num_clips: int, dim: int, clips_per_video: int = 50, seed: int = 0
) -> float:
    """Write a library of ``num_clips`` random clip vectors to ``db`` (one transaction).

    Returns:
        Seconds spent writing.
    """
    import numpy as np

    from momentkit.library.files import FileStat
    from momentkit.library.space import RetrievalSpace
    from momentkit.library.store import LibraryStore

    spec = synthetic_spec(dim)
    space = RetrievalSpace.for_spec(spec)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    with LibraryStore(db, create=True) as store:
        store.bind(spec, space.stream, 2.0)
        with store.transaction():
            for first in range(0, num_clips, clips_per_video):
                n = min(clips_per_video, num_clips - first)
                i = first // clips_per_video
                store.add_video(
                    FileStat(Path(f"/synthetic/video_{i:06d}.mp4"), n, i),
                    f"{i:064x}",
                    duration=2.0 * n,
                    clip_len=2.0,
                    streams={space.stream: synthetic_vectors(rng, n, dim)},
                    encode_seconds=0.0,
                )
    return time.perf_counter() - start


def synthetic_queries(rng: np.random.Generator, num: int, dim: int) -> np.ndarray:
    """``(num, dim)`` query vectors of the space a synthetic library of ``dim`` uses."""
    import numpy as np

    from momentkit.inference.zero_shot import class_weights

    if dim == BRIDGE_DIM:  # softmax of class-name similarities in about [-0.1, 0.6]
        sims = rng.uniform(-0.1, 0.6, size=(num, dim))
        return np.stack([class_weights(s, 0.05) for s in sims])
    q = rng.standard_normal((num, dim)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def time_coarse(
    library: Any, num_queries: int, seed: int = 0, n_clips: int = 200, n_videos: int = 5
) -> list[float]:
    """Seconds of stage 1 (vector search + votes + candidate records) for random queries,
    after one untimed warm-up query."""
    import numpy as np

    from momentkit.library.search import coarse_candidates

    index, _ = library.vector_index()
    dim = index.dim if index is not None else 1
    queries = synthetic_queries(np.random.default_rng(seed), num_queries + 1, dim)
    coarse_candidates(library, queries[0], n_clips, n_videos)
    times = []
    for q in queries[1:]:
        start = time.perf_counter()
        coarse_candidates(library, q, n_clips, n_videos)
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> dict[str, float]:
    """Median, 95th percentile and count of ``times`` (milliseconds)."""
    import numpy as np

    ms = np.asarray(times) * 1000.0
    return {
        "median_ms": float(np.median(ms)),
        "p95_ms": float(np.percentile(ms, 95)),
        "n": len(times),
    }


# -------------------------------------------------------------------------------- end to end
def time_end_to_end(
    video: Path, copies: int, spec: str, repeat: int, workdir: Path
) -> dict[str, Any]:
    """Index ``copies`` copies of ``video`` and time one-video and library queries."""
    from momentkit.library.engine import SearchEngine
    from momentkit.library.library import Library

    if not video.is_file():
        raise FileNotFoundError(f"{video}: no such video (give --video, or --skip-e2e)")
    folder = workdir / "videos"
    folder.mkdir(parents=True)
    for i in range(copies):
        shutil.copy(video, folder / f"copy_{i}{video.suffix}")
    db = workdir / "library.db"
    out: dict[str, Any] = {"video": str(video), "copies": copies, "encoder": spec}

    start = time.perf_counter()
    with Library.open(_index(db, folder, spec)) as library:
        out["index_s"] = time.perf_counter() - start
        start = time.perf_counter()
        engine = SearchEngine.load(library)
        out["load_models_s"] = time.perf_counter() - start
        predictor = engine.predictor
        start = time.perf_counter()
        engine.query("warm-up: a person", top_k=10)  # first query: class-name embeddings
        out["first_query_s"] = time.perf_counter() - start

        one_video, predict_only, whole = [], [], []
        path = folder / f"copy_0{video.suffix}"
        encoding = predictor.encode_video(path)
        for _ in range(max(repeat, 1)):
            for q in QUERIES:
                t = time.perf_counter()
                predictor.search(path, [q], top_k=10)
                one_video.append(time.perf_counter() - t)
                t = time.perf_counter()
                predictor.predict(encoding, [q], top_k=10)
                predict_only.append(time.perf_counter() - t)
                t = time.perf_counter()
                engine.query(q, top_k=10)
                whole.append(time.perf_counter() - t)
    out["one_video_search"] = summary(one_video)
    out["one_video_predict_only"] = summary(predict_only)
    out["library_query"] = summary(whole)
    out["video_duration_s"] = float(encoding.duration)
    return out


def _index(db: Path, folder: Path, spec: str) -> Path:
    from momentkit.inference.predictor import Predictor
    from momentkit.library.indexer import Indexer
    from momentkit.library.store import LibraryStore

    with LibraryStore(db, create=True) as store:
        Indexer(
            store, spec, 2.0, lambda: Predictor.zero_shot(spec, clip_len=2.0), progress=False
        ).run(folder)
    return db


# ------------------------------------------------------------------------------------------ run
def run(args: argparse.Namespace) -> int:
    """Run both parts and print a table; 1 if a coarse median is over 100 ms, else 0."""
    from rich.console import Console
    from rich.table import Table

    from momentkit.benchmarks.guards import refuse_outputs_over_inputs
    from momentkit.library.library import Library
    from momentkit.utils.io import write_json

    refuse_outputs_over_inputs([("--out", args.out)], [("--video", args.video)])
    console = Console()
    report: dict[str, Any] = {"clips": args.clips, "coarse": {}}
    ok = True
    table = Table(title=f"coarse retrieval over {args.clips:,} clips (stage 1)")
    for col in ("dim", "write s", "open s", "median ms", "p95 ms", "queries"):
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory(prefix="momentkit-bench-search-") as tmp:
        for dim in args.dims:
            db = Path(tmp) / f"synthetic_{dim}.db"
            write_s = build_synthetic_library(db, args.clips, dim, args.clips_per_video, args.seed)
            start = time.perf_counter()
            with Library.open(db) as library:
                library.vector_index()
                open_s = time.perf_counter() - start
                times = time_coarse(library, args.queries, args.seed, args.n_clips, args.n_videos)
            stats = summary(times)
            report["coarse"][str(dim)] = {"write_s": write_s, "open_s": open_s, **stats}
            ok &= stats["median_ms"] < 100
            table.add_row(
                str(dim),
                f"{write_s:.2f}",
                f"{open_s:.2f}",
                f"{stats['median_ms']:.1f}",
                f"{stats['p95_ms']:.1f}",
                str(stats["n"]),
            )
            db.unlink()
        console.print(table)
        if not args.skip_e2e:
            e2e = time_end_to_end(
                args.video, args.copies, args.encoder, args.e2e_repeat, Path(tmp) / "e2e"
            )
            report["end_to_end"] = e2e
            console.print(_e2e_table(e2e))
    if args.out:
        write_json(args.out, report)
    return 0 if ok else 1


def _e2e_table(e2e: dict[str, Any]) -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=Text(
            f"end to end: {Path(e2e['video']).name} ({e2e['video_duration_s']:.1f} s) x "
            f"{e2e['copies']}, encoder {e2e['encoder']}"
        )
    )
    table.add_column("query path")
    table.add_column("median ms", justify="right")
    table.add_column("p95 ms", justify="right")
    table.add_column("queries", justify="right")
    for key, label in (
        ("one_video_search", "one video: decode + encode + localise"),
        ("one_video_predict_only", "one video: localise (features cached)"),
        ("library_query", "library: embed + coarse + localise"),
    ):
        s = e2e[key]
        table.add_row(label, f"{s['median_ms']:.1f}", f"{s['p95_ms']:.1f}", str(s["n"]))
    table.caption = (
        f"indexing {e2e['index_s']:.1f} s, loading models {e2e['load_models_s']:.1f} s, first "
        f"query {e2e['first_query_s']:.1f} s (embeds the class names once); not in the figures"
    )
    return table
