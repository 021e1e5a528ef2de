"""``momentkit bench cli``: what a user waits for, whole process, against an earlier version.

Times ``momentkit`` commands as fresh processes (interpreter start, imports, model loading,
file I/O: everything between pressing enter and the prompt coming back), each ``--repeat``
times. With ``--baseline-src DIR`` (a checkout of an earlier momentkit, e.g. ``git worktree add
/tmp/prev <commit>``) every command is also run from that checkout (``PYTHONPATH=DIR python -m
momentkit ...``), alternating the two (A B A B ...) so both see the same machine load, and the
table gives the ratio per command::

    git worktree add /tmp/prev 2be105b
    momentkit bench cli --videos videos/ --baseline-src /tmp/prev --repeat 3

Commands: ``version`` (``--version``), ``help`` (``--help``), ``evaluate`` on the official
QVHighlights sample, ``query`` on a library of ``--videos`` (built once, before timing) cold (an
empty momentkit cache: the class-name and reference-caption embeddings are computed) and warm
(cache filled), and ``search`` of the demo clip. Each run of the current version gets a fresh
empty cache directory for "cold" and a shared filled one for "warm"; the baseline has no cache,
so its cold and warm runs are the same work.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from momentkit.cli.common import at_least

HELP = "time momentkit commands as whole processes (vs an earlier checkout, alternating)"

_ROOT = Path(__file__).resolve().parents[2]
_SHARED = _ROOT.parent / "shared" / "data" / "qvhighlights"
DEMO = _ROOT / "momentkit" / "examples" / "charades_demo.mp4"
QUERY = "a person drinks from a cup"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--videos DIR [--baseline-src DIR] [--repeat N] [--only NAME ...] [--out JSON]``."""
    parser.add_argument("--videos", type=Path, help="folder of videos for the query library")
    parser.add_argument("--baseline-src", type=Path, help="an earlier momentkit checkout")
    parser.add_argument(
        "--repeat", type=at_least(1), default=3, help="runs of each command per side"
    )
    parser.add_argument(
        "--only", nargs="+", default=None, help="commands to time (default: all available)"
    )
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")


def _commands(work: Path, db: Path | None) -> dict[str, list[str]]:
    cmds: dict[str, list[str]] = {"version": ["--version"], "help": ["--help"]}
    pred, gt = _SHARED / "sample_val_preds.jsonl", _SHARED / "highlight_val_release.jsonl"
    if pred.exists() and gt.exists():
        cmds["evaluate"] = ["evaluate", str(pred), str(gt), "--out", str(work / "metrics.json")]
    if db is not None:
        cmds["query (cold)"] = ["query", QUERY, "--db", str(db)]
        cmds["query (warm)"] = ["query", QUERY, "--db", str(db)]
    cmds["search demo clip"] = ["search", str(DEMO), QUERY]
    return cmds


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "momentkit", *argv], env=env, cwd=cwd, capture_output=True
    )
    seconds = time.perf_counter() - start
    if done.returncode not in (0,):
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise RuntimeError(f"momentkit {' '.join(argv)} failed ({done.returncode}): {tail}")
    return seconds


def run(args: argparse.Namespace) -> int:
    """Build the library, time every command (alternating with the baseline), print."""
    from rich.console import Console
    from rich.table import Table

    from momentkit.benchmarks.guards import refuse_outputs_over_inputs
    from momentkit.utils.errors import MomentkitError
    from momentkit.utils.io import write_json

    refuse_outputs_over_inputs(
        [("--out", args.out)],
        folders=[("--videos", args.videos), ("--baseline-src", args.baseline_src)],
    )
    if args.baseline_src is not None and not (args.baseline_src / "momentkit").is_dir():
        raise MomentkitError(f"{args.baseline_src}: not a momentkit checkout (no momentkit/)")
    with tempfile.TemporaryDirectory(prefix="momentkit-bench-cli-") as tmp:
        work = Path(tmp)
        base_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        warm_cache = work / "cache-warm"
        db = None
        if args.videos is not None:
            db = work / "library.db"
            env = {**base_env, "MOMENTKIT_CACHE": str(warm_cache)}
            _run(["index", str(args.videos), "--db", str(db), "--no-progress"], env, work)
        commands = _commands(work, db)
        if args.only:
            commands = {k: v for k, v in commands.items() if k in args.only}
        sides = {"momentkit": None, "baseline": args.baseline_src}
        times: dict[str, dict[str, list[float]]] = {k: {} for k in commands}
        for name, argv in commands.items():
            for i in range(max(args.repeat, 1)):
                for side, src in sides.items():
                    if side == "baseline" and src is None:
                        continue
                    env = dict(base_env)
                    if src is not None:
                        env["PYTHONPATH"] = str(src)
                    cache = warm_cache if "cold" not in name else work / f"cache-cold-{side}-{i}"
                    env["MOMENTKIT_CACHE"] = str(cache)
                    times[name].setdefault(side, []).append(_run(argv, env, work))
    table = Table(title="whole-process time of momentkit commands (median of runs, seconds)")
    table.add_column("command")
    table.add_column("momentkit", justify="right")
    if args.baseline_src is not None:
        table.add_column(f"baseline ({args.baseline_src})", justify="right")
        table.add_column("speed-up", justify="right")
    report: dict[str, Any] = {"repeat": args.repeat, "baseline": str(args.baseline_src)}
    for name, sides_times in times.items():
        ours = statistics.median(sides_times["momentkit"])
        row = [
            name,
            f"{ours:.2f} ({min(sides_times['momentkit']):.2f}-{max(sides_times['momentkit']):.2f})",
        ]
        entry: dict[str, Any] = {"momentkit": sides_times["momentkit"], "median": ours}
        if "baseline" in sides_times:
            theirs = statistics.median(sides_times["baseline"])
            row += [f"{theirs:.2f}", f"x{theirs / ours:.1f}"]
            entry.update(baseline=sides_times["baseline"], baseline_median=theirs)
        table.add_row(*row)
        report[name] = entry
    Console().print(table)
    if args.out:
        write_json(args.out, report)
    return 0
