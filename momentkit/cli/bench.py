"""``momentkit bench NAME``: measured benchmarks, one module per benchmark.

Each benchmark lives in ``momentkit.benchmarks.<module>`` with the same protocol as a CLI
command (``HELP``, ``add_arguments``, ``run``).
"""

from __future__ import annotations

import argparse
import importlib

HELP = "run a benchmark (evaluate, train, ...) and print measured figures"

# benchmark name -> module under momentkit.benchmarks
BENCHMARKS: dict[str, str] = {
    "evaluate": "evaluate",
    "train": "train",
    "infer": "infer",
    "search": "search",
    "learn": "learn",
    "cotrain": "cotrain",
    "long-video": "long_video",
    "extract": "extract",
    "probe": "probe",
    "calibration": "calibration",
    "cli": "cli",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One sub-parser per benchmark."""
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, module_name in BENCHMARKS.items():
        try:
            module = importlib.import_module(f"momentkit.benchmarks.{module_name}")
        except ModuleNotFoundError:
            continue
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_bench_run=module.run)


def run(args: argparse.Namespace) -> int:
    """Check ``--device`` (where the benchmark has one), then run the chosen benchmark."""
    if getattr(args, "device", None) is not None:
        from momentkit.benchmarks.guards import check_device

        args.device = check_device(args.device)
    return int(args._bench_run(args) or 0)
