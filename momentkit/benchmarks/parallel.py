"""Several training runs at once: the ``--jobs`` / ``--threads`` options of the benchmarks.

A benchmark table is variants x seeds of independent runs. On a machine with more cores than
one run uses (or a GPU with room for several small models), they can train side by side, each
in its own spawned process with its own slice of the cores.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from momentkit.cli.common import at_least


def add_parallel_arguments(parser: argparse.ArgumentParser) -> None:
    """``--jobs`` and ``--threads``: how many runs train at once, with how many threads each."""
    parser.add_argument(
        "--jobs",
        type=at_least(1),
        default=1,
        help="runs trained at once, each in its own process (default 1: one after another)",
    )
    parser.add_argument(
        "--threads",
        type=at_least(1),
        help="torch threads of each run (default with --jobs > 1: the CPU count / --jobs)",
    )


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _timed(fn: Callable[..., Any], *job: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*job)
    return result, time.perf_counter() - start


def run_parallel(
    fn: Callable[..., Any],
    jobs: Sequence[tuple[Any, ...]],
    workers: int = 1,
    threads: int | None = None,
) -> Iterator[tuple[tuple[Any, ...], Any, float]]:
    """Yield ``(job, fn(*job), seconds)`` for every job, ``workers`` at a time.

    ``workers`` 1 runs the jobs in this process, in order, with ``threads`` torch threads if
    given (else torch's own setting, e.g. from ``OMP_NUM_THREADS``). More workers run them in
    spawned processes (``fn`` and the jobs must pickle) that each use ``threads`` threads
    (default: the CPU count divided by ``workers``, so the runs do not oversubscribe the
    cores); results come as the jobs finish. A job's exception is raised here.
    """
    if workers < 1:
        raise ValueError(f"--jobs must be >= 1, got {workers}")
    if workers == 1:
        if threads:
            _set_threads(threads)
        for job in jobs:
            yield (job, *_timed(fn, *job))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, context, _set_threads, (threads,)) as pool:
        futures = {pool.submit(_timed, fn, *job): job for job in jobs}
        for future in as_completed(futures):
            yield (futures[future], *future.result())
