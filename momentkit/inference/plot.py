"""The highlight curve: each query's per-clip saliency over time, its best moments shaded.

Drawn with matplotlib's object API on an Agg canvas (no display, no global pyplot state), one
panel per query sharing the time axis, and written atomically as a PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from momentkit.inference.results import QueryResult
from momentkit.utils.io import atomic_open

if TYPE_CHECKING:
    from matplotlib.axes import Axes

#: colours of the shaded moments, best first (matplotlib's default cycle)
MOMENT_COLORS = ("tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def plot_highlights(
    results: Sequence[QueryResult],
    path: str | Path,
    *,
    moments_per_query: int = 3,
    title: str | None = None,
    dpi: int = 110,
) -> Path:
    """Write the highlight curves of ``results`` (one panel per query) to the PNG ``path``.

    Each panel plots the saliency of every clip as a step curve over the seconds the clip
    covers, and shades the query's ``moments_per_query`` best moments, labelled by rank and
    score.

    Args:
        results: the queries' results (all of one video).
        path: the PNG file to write (parents are created).
        moments_per_query: moments shaded per panel.
        title: figure title (default: none).
        dpi: resolution.

    Returns:
        ``path``.

    Raises:
        ValueError: no results.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("plot_highlights needs at least one result")
    path = Path(path)
    duration = max(r.duration for r in results)
    fig = Figure(figsize=(10, 1.0 + 1.8 * len(results)), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(results), 1, sharex=True, squeeze=False)[:, 0]
    for ax, result in zip(axes, results):
        _panel(ax, result, moments_per_query)
    axes[-1].set_xlabel("time (s)")
    axes[-1].set_xlim(0, duration if duration > 0 else 1)
    if title:
        fig.suptitle(title)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    return path


def _panel(ax: Axes, result: QueryResult, moments_per_query: int) -> None:
    """Draw one query's saliency steps and shaded moments on ``ax``."""
    saliency = np.asarray(result.saliency, dtype=np.float64)
    edges = np.minimum(np.arange(len(saliency) + 1) * result.clip_len, result.duration)
    if len(saliency):
        ax.stairs(saliency, edges, color="tab:blue", linewidth=1.6, label="saliency")
        low, high = float(saliency.min()), float(saliency.max())
        pad = 0.1 * (high - low) or 0.1 * abs(high) or 0.1
        ax.set_ylim(low - pad, high + 2 * pad)
    for rank, moment in enumerate(result.moments[:moments_per_query], start=1):
        color = MOMENT_COLORS[(rank - 1) % len(MOMENT_COLORS)]
        ax.axvspan(moment.start, moment.end, color=color, alpha=0.25 if rank == 1 else 0.15)
        ax.annotate(
            f"#{rank} {moment.score:.3g}",
            xy=(moment.start, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, -2 - 10 * (rank - 1)),  # stacked: moments may share a start
            textcoords="offset points",
            va="top",
            fontsize=8,
            color=color,
        )
    ax.set_title(result.query, loc="left", fontsize=10)
    ax.set_ylabel("saliency")
    ax.grid(axis="x", alpha=0.3)
