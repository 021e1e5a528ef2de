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
    panel_titles: Sequence[str] | None = None,
    dpi: int = 110,
) -> Path:
    """Write the highlight curves of ``results`` (one panel per result) to the PNG ``path``.

    Each panel plots the saliency of every clip as a step curve over the seconds the clip
    covers, and shades the result's ``moments_per_query`` best moments, labelled by rank and
    calibrated relevance (the raw score when there is none). A result with no confident match
    (every moment below its relevance threshold) says so in its panel.

    Args:
        results: the results: the queries of one video, or one query in several videos.
        path: the PNG file to write (parents are created).
        moments_per_query: moments shaded per panel.
        title: figure title (default: none).
        panel_titles: one title per panel (default: each result's query).
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
    if panel_titles is not None and len(panel_titles) != len(results):
        raise ValueError(f"{len(panel_titles)} panel titles for {len(results)} results")
    path = Path(path)
    duration = max(r.duration for r in results)
    fig = Figure(figsize=(10, 1.0 + 1.8 * len(results)), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(results), 1, sharex=True, squeeze=False)[:, 0]
    titles = panel_titles if panel_titles is not None else [r.query for r in results]
    for ax, result, panel_title in zip(axes, results, titles):
        _panel(ax, result, moments_per_query, panel_title)
    axes[-1].set_xlabel("time (s)")
    axes[-1].set_xlim(0, duration if duration > 0 else 1)
    if title:
        fig.suptitle(title)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    return path


def moment_label(rank: int, score: float, relevance: float | None) -> str:
    """``#1 rel 0.62`` (calibrated) or ``#1 0.00191`` (raw score)."""
    return f"#{rank} {score:.3g}" if relevance is None else f"#{rank} rel {relevance:.2f}"


def _panel(ax: Axes, result: QueryResult, moments_per_query: int, title: str) -> None:
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
            moment_label(rank, moment.score, getattr(moment, "relevance", None)),
            xy=(moment.start, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, -2 - 10 * (rank - 1)),  # stacked: moments may share a start
            textcoords="offset points",
            va="top",
            fontsize=8,
            color=color,
        )
    if getattr(result, "no_confident_match", False):
        best = getattr(result, "best_relevance", None)
        note = "no confident match" + ("" if best is None else f" (best relevance {best:.2f})")
        ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center", fontsize=9)
    ax.set_title(title, loc="left", fontsize=10)
    ax.set_ylabel("saliency")
    ax.grid(axis="x", alpha=0.3)
