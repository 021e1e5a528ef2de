"""``momentkit bench evaluate``: time the QVHighlights evaluator (optionally vs the official one).

Times :func:`momentkit.evaluation.eval_submission` on already-loaded rows (median of
``--repeat`` runs), checks the result against ``--expected`` (the official metrics of the sample
predictions) and, with ``--official-dir`` pointing at a checkout of Moment-DETR's
``standalone_eval`` directory (``eval.py`` + ``utils.py``; needs scikit-learn), times the
official ``eval_submission`` on the same rows in the same process and checks that both return
the same dict.

``--whole-process`` times what a user waits for instead: ``momentkit evaluate PRED GT --out X``
and the official ``python standalone_eval/eval.py --submission_path PRED --gt_path GT
--save_path Y`` as fresh processes (interpreter start, imports, JSON reading and writing
included), alternating the two (A B A B ...) so that both see the same machine load, and checks
that both written files hold the same metrics::

    momentkit bench evaluate --official-dir /path/to/moment_detr/standalone_eval --whole-process
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from momentkit.cli.common import at_least

HELP = "time the QVHighlights evaluator on the official sample predictions (vs the official one)"

_SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "qvhighlights"
_DEFAULT_PRED = _SHARED / "sample_val_preds.jsonl"
_DEFAULT_GT = _SHARED / "highlight_val_release.jsonl"
_DEFAULT_EXPECTED = _SHARED / "sample_val_preds_metrics_raw.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``[--pred P] [--gt G] [--expected E] [--repeat N] [--official-dir DIR] [--out JSON]``."""
    parser.add_argument("--pred", type=Path, default=_DEFAULT_PRED, help="prediction JSONL")
    parser.add_argument("--gt", type=Path, default=_DEFAULT_GT, help="ground-truth JSONL")
    parser.add_argument(
        "--expected",
        type=Path,
        default=_DEFAULT_EXPECTED,
        help="metrics JSON the result must equal (skipped if the file does not exist)",
    )
    parser.add_argument("--repeat", type=at_least(1), default=5, help="timed runs of ours (median)")
    parser.add_argument(
        "--official-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="a checkout of the official standalone_eval directory, timed side by side",
    )
    parser.add_argument(
        "--official-repeat", type=at_least(1), default=1, help="timed official runs"
    )
    parser.add_argument(
        "--whole-process",
        action="store_true",
        help="time both evaluators as whole processes (start-up, imports, file I/O), "
        "alternating, --repeat pairs; needs --official-dir",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")


def _time(fn: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(max(repeat, 1)):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def _load_official(directory: Path) -> Callable[..., Any]:
    """The official ``eval_submission`` from a ``standalone_eval`` checkout."""
    from momentkit.utils.errors import MomentkitError

    directory = directory.resolve()
    if not (directory / "eval.py").is_file() or directory.name != "standalone_eval":
        raise MomentkitError(
            f"{directory}: expected the official 'standalone_eval' directory holding eval.py "
            "and utils.py (from github.com/jayleicn/moment_detr)"
        )
    sys.path.insert(0, str(directory.parent))
    try:
        module = importlib.import_module("standalone_eval.eval")
    except ImportError as e:
        raise MomentkitError(
            f"cannot import the official evaluator from {directory}: {e} "
            "(it needs numpy and scikit-learn: pip install scikit-learn)"
        ) from None
    finally:
        sys.path.remove(str(directory.parent))
    return module.eval_submission


def read_expected(path: Path) -> dict[str, Any]:
    """The metrics JSON of ``--expected``: an object of metric names to values.

    Raises:
        FormatError: naming the file (and the line of invalid JSON) and the shape expected.
    """
    from momentkit.utils.errors import FormatError
    from momentkit.utils.io import read_json

    expected = read_json(path, "a metrics JSON file")
    if not isinstance(expected, dict):
        raise FormatError(
            path,
            None,
            None,
            f"--expected: expected a JSON object of metrics, got {type(expected).__name__}",
            'Give the metrics file `momentkit evaluate --out` writes ({"brief": ..., ...})',
        )
    return expected


def _diff_keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print a table; returns 1 if a result differs from the reference."""
    import copy

    from rich.console import Console
    from rich.table import Table

    from momentkit.benchmarks.guards import refuse_outputs_over_inputs
    from momentkit.evaluation import eval_submission
    from momentkit.utils.io import read_jsonl, write_json

    refuse_outputs_over_inputs(
        [("--out", args.out)],
        [("--pred", args.pred), ("--gt", args.gt), ("--expected", args.expected)],
        [("--official-dir", args.official_dir)],
    )
    console = Console()
    if args.whole_process:
        return _run_whole_process(args, console)
    # --expected read (and checked) before the timing, not after it
    expected = read_expected(args.expected) if args.expected and args.expected.is_file() else None
    official_fn = _load_official(args.official_dir) if args.official_dir is not None else None
    load_start = time.perf_counter()
    submission = read_jsonl(args.pred)
    ground_truth = read_jsonl(args.gt)
    load_s = time.perf_counter() - load_start

    ours_times, ours = _time(lambda: eval_submission(submission, ground_truth), args.repeat)
    ours = json.loads(json.dumps(ours))
    report: dict[str, Any] = {
        "pred": str(args.pred),
        "gt": str(args.gt),
        "num_queries": len(submission),
        "load_s": load_s,
        "ours_s": ours_times,
        "ours_median_s": statistics.median(ours_times),
    }
    ok = True
    if expected is not None:
        report["ours_equals_expected"] = ours == expected
        if ours != expected:
            ok = False
            console.print(f"[red]differs from {args.expected}: {_diff_keys(ours, expected)}")

    if official_fn is not None:

        def official() -> Any:
            with contextlib.redirect_stdout(io.StringIO()):
                return official_fn(
                    copy.deepcopy(submission), copy.deepcopy(ground_truth), verbose=False
                )

        official_times, official_result = _time(official, args.official_repeat)
        official_result = json.loads(json.dumps(official_result))
        report["official_s"] = official_times
        report["official_median_s"] = statistics.median(official_times)
        report["ours_equals_official"] = ours == official_result
        if ours != official_result:
            ok = False
            console.print(f"[red]differs from the official: {_diff_keys(ours, official_result)}")

    table = Table(title=f"QVHighlights evaluation, {len(submission)} queries")
    table.add_column("evaluator")
    table.add_column("median s", justify="right")
    table.add_column("runs", justify="right")
    table.add_column("same metrics", justify="center")
    same = report.get("ours_equals_official", report.get("ours_equals_expected"))
    table.add_row("momentkit", f"{report['ours_median_s']:.3f}", str(len(ours_times)), _mark(same))
    if "official_s" in report:
        table.add_row(
            "official standalone_eval",
            f"{report['official_median_s']:.3f}",
            str(len(report["official_s"])),
            "reference",
        )
        speedup = report["official_median_s"] / report["ours_median_s"]
        table.caption = f"speed-up x{speedup:.1f}; JSON loading {load_s:.3f} s (not timed)"
    else:
        table.caption = f"JSON loading {load_s:.3f} s (not timed)"
    console.print(table)
    if args.out:
        write_json(args.out, report)
    return 0 if ok else 1


def _mark(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


def _run_whole_process(args: argparse.Namespace, console: Any) -> int:
    """``--whole-process``: both evaluators as fresh processes, alternating A B A B."""
    import subprocess
    import tempfile

    from rich.table import Table

    from momentkit.utils.errors import MomentkitError
    from momentkit.utils.io import write_json

    if args.official_dir is None:
        raise MomentkitError(
            "--whole-process compares against the official evaluator: "
            "give --official-dir /path/to/moment_detr/standalone_eval"
        )
    official_dir = args.official_dir.resolve()
    _load_official(official_dir)  # same checks and import error as in-process
    pred, gt = args.pred.resolve(), args.gt.resolve()
    with tempfile.TemporaryDirectory(prefix="momentkit-bench-") as tmp:
        outs = {"momentkit": Path(tmp) / "ours.json", "official": Path(tmp) / "official.json"}
        commands = {
            "momentkit": [
                sys.executable,
                "-m",
                "momentkit",
                "evaluate",
                str(pred),
                str(gt),
                "--out",
                str(outs["momentkit"]),
            ],
            "official": [
                sys.executable,
                str(official_dir / "eval.py"),
                "--submission_path",
                str(pred),
                "--gt_path",
                str(gt),
                "--save_path",
                str(outs["official"]),
                "--not_verbose",
            ],
        }
        env = {**__import__("os").environ, "PYTHONPATH": str(official_dir.parent)}
        times: dict[str, list[float]] = {"momentkit": [], "official": []}
        for _ in range(max(args.repeat, 1)):
            for name in ("official", "momentkit"):
                start = time.perf_counter()
                done = subprocess.run(
                    commands[name],
                    capture_output=True,
                    text=True,
                    env=env,
                    cwd=str(official_dir.parent),
                )
                times[name].append(time.perf_counter() - start)
                if done.returncode != 0:
                    raise MomentkitError(
                        f"{name} evaluator failed (exit {done.returncode}): "
                        f"{done.stderr.strip().splitlines()[-1:]}"
                    )
        ours = json.loads(outs["momentkit"].read_text(encoding="utf-8"))
        official = json.loads(outs["official"].read_text(encoding="utf-8"))
    same = ours == official
    if not same:
        console.print(f"[red]differs from the official: {_diff_keys(ours, official)}")
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [o / m for o, m in zip(times["official"], times["momentkit"], strict=True)]
    report = {
        "pred": str(pred),
        "gt": str(gt),
        "mode": "whole-process",
        "times_s": times,
        "median_s": med,
        "speedup_median": med["official"] / med["momentkit"],
        "speedup_per_pair": ratios,
        "same_metrics": same,
    }
    table = Table(title="QVHighlights evaluation as whole processes, alternating")
    table.add_column("evaluator")
    table.add_column("median s", justify="right")
    table.add_column("min-max s", justify="right")
    table.add_column("same metrics", justify="center")
    for name in ("momentkit", "official"):
        t = times[name]
        table.add_row(
            name,
            f"{med[name]:.3f}",
            f"{min(t):.3f}-{max(t):.3f}",
            _mark(same) if name == "momentkit" else "reference",
        )
    table.caption = (
        f"speed-up x{report['speedup_median']:.1f} (per pair "
        f"x{min(ratios):.1f}-x{max(ratios):.1f}), {len(ratios)} pairs"
    )
    console.print(table)
    if args.out:
        write_json(args.out, report)
    return 0 if same else 1
