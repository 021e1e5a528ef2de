"""Scale-out: one Ray task per video on a Ray cluster (``momentkit extract ... --ray ADDRESS``).

Each Ray worker process builds the encoders once (from their spec strings) and reuses them for
every video it is given. Workers write the ``.npz`` files themselves, so ``out_dir`` must be
on a file system every node sees, and every node needs momentkit and its extraction
dependencies installed. Queries are encoded by the driver (they are cheap), and videos whose
files all exist are skipped before any task is sent.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from momentkit.extraction.pipeline import ExtractionConfig, ExtractionReport, VideoResult
from momentkit.extraction.runner import REPORT_NAME, Progress, build_extractor
from momentkit.utils.errors import MomentkitError
from momentkit.utils.io import write_json

# Per worker process: (specs, out_dir, config, build options) -> Extractor.
_WORKER_EXTRACTORS: dict[tuple, Any] = {}


def _extract_task(
    path: str,
    specs: tuple[str, ...],
    out_dir: str,
    config: ExtractionConfig,
    build_kwargs: tuple[tuple[str, Any], ...],
    threads: int,
) -> VideoResult:
    """Body of the Ray task: extract one video with this worker's (cached) encoders."""
    import torch

    torch.set_num_threads(threads)
    key = (specs, out_dir, config, build_kwargs)
    if key not in _WORKER_EXTRACTORS:
        _WORKER_EXTRACTORS[key] = build_extractor(specs, out_dir, config, **dict(build_kwargs))
    return _WORKER_EXTRACTORS[key].extract_video(Path(path))


def connect(address: str, num_cpus: int | None = None) -> bool:
    """Join the Ray cluster at ``address`` (``"local"`` starts one on this machine).

    Returns:
        Whether this call connected (and the caller should ``ray.shutdown()``); ``False`` when
        Ray was already initialised by the caller.
    """
    try:
        import ray
    except ImportError:
        raise MomentkitError("--ray needs Ray: pip install 'ray>=2.9'") from None
    if ray.is_initialized():
        return False
    common = {"include_dashboard": False, "log_to_driver": False}
    try:
        if address == "local":
            ray.init(num_cpus=num_cpus, **common)
        else:
            ray.init(address=address, **common)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise MomentkitError(
            f"cannot connect to the Ray cluster at '{address}': {e}. Give the address printed by "
            "`ray start --head` (e.g. 10.0.0.1:6379), 'auto', or 'local' to start one here"
        ) from None
    return True


def run_on_ray(
    specs: Sequence[str],
    videos: Sequence[Path],
    out_dir: str | Path,
    config: ExtractionConfig,
    *,
    address: str = "local",
    queries: str | Path | None = None,
    num_cpus: int | None = None,
    cpus_per_task: float = 1.0,
    progress: bool = True,
    **build_kwargs: Any,
) -> ExtractionReport:
    """Extract ``videos`` as Ray tasks (one per video), like :func:`runner.run_extraction`.

    Args:
        specs: encoder specs, e.g. ``("offline", "motion")``.
        videos: the video files (paths every node can read).
        out_dir: the feature directory (shared by every node).
        config: see :class:`ExtractionConfig`.
        address: the cluster address, or ``"local"`` to start Ray on this machine.
        queries: a JSONL file of queries, encoded by the driver.
        num_cpus: CPUs of a ``"local"`` instance (default: all).
        cpus_per_task: CPUs reserved by (and torch threads of) each video's task.
        progress: show a progress bar.
        **build_kwargs: options for :func:`momentkit.encoders.build_encoder` (device, ...).
    """
    driver = build_extractor(specs, out_dir, config, **build_kwargs)
    driver.refuse_stale_overwrite(videos, queries)  # before any work
    report = ExtractionReport()
    if queries is not None:
        report.queries_written, report.queries_skipped = driver.extract_queries(queries)
        report.queries_changed = driver.queries_changed
        report.queries_unrecorded = driver.queries_unrecorded
    if not driver.video_streams:  # only text streams selected
        videos = []
    states = {v: "missing" if config.overwrite else driver.video_state(v) for v in videos}
    todo = [v for v in videos if states[v] in ("missing", "changed")]
    report.videos.extend(
        VideoResult(v, "skipped", note="unrecorded" if states[v] == "unrecorded" else "")
        for v in videos
        if v not in set(todo)
    )
    start = time.perf_counter()
    if todo:
        started = connect(address, num_cpus)
        try:
            report.videos.extend(
                _run_tasks(todo, specs, out_dir, config, cpus_per_task, progress, build_kwargs)
            )
        finally:
            if started:
                import ray

                ray.shutdown()
    report.wall_seconds = time.perf_counter() - start
    write_json(Path(out_dir) / REPORT_NAME, report.to_json())
    return report


def _run_tasks(
    videos: Sequence[Path],
    specs: Sequence[str],
    out_dir: str | Path,
    config: ExtractionConfig,
    cpus_per_task: float,
    progress: bool,
    build_kwargs: dict[str, Any],
) -> list[VideoResult]:
    """One Ray task per video; results in completion order, a crashed task as a failure."""
    import ray

    task = ray.remote(num_cpus=cpus_per_task)(_extract_task)
    args = (
        tuple(specs),
        str(Path(out_dir).resolve()),
        config,
        tuple(sorted(build_kwargs.items())),
        max(1, int(cpus_per_task)),
    )
    refs = {task.remote(str(v.resolve()), *args): v for v in videos}
    results: list[VideoResult] = []
    bar = Progress(len(refs), progress)
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            path = refs[ready[0]]
            try:
                result = ray.get(ready[0])
                result.path = path
            except Exception as e:  # a crashed worker fails one video
                first = (str(e).strip().splitlines() or [""])[0]
                result = VideoResult(path, "failed", error=f"Ray task failed: {first}")
            results.append(result)
            bar.update(result)
    finally:
        bar.close()
    return results
