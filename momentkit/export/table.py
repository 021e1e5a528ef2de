"""CSV: one row per moment, for spreadsheets and data frames.

Columns: ``qid, query, video, vid, rank, start, end, score, relevance`` (empty when not
calibrated), ``clip, clip_start, clip_end`` (the exported clip and the span it really covers;
empty when no clip was cut), then any further numbers of the moments (``momentkit query``:
``moment_score, video_score``). Numbers are written with full float precision (``repr``).
A query with no moment in a video has no row there. Rows are grouped by query, in order; within
a query they follow the rank, video by video when each video has its own ranks (``search``).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from momentkit.export.model import Answer
from momentkit.utils.io import atomic_open

BASE_COLUMNS = (
    "qid", "query", "video", "vid", "rank", "start", "end", "score", "relevance",
    "clip", "clip_start", "clip_end",
)  # fmt: skip


def columns(answers: Sequence[Answer]) -> list[str]:
    """The header: :data:`BASE_COLUMNS` then the moments' extra numbers, in first-seen order."""
    extra: dict[str, None] = {}
    for a in answers:
        for m in a.moments:
            extra.update(dict.fromkeys(m.extra))
    return [*BASE_COLUMNS, *extra]


def _sort_keys(answers: Sequence[Answer]) -> list[tuple[int, int]]:
    """Per answer: (its query's order, its video's order within the query, or 0 when the
    query's ranks run across videos)."""
    queries: dict[object, int] = {}
    ranks: dict[object, list[int]] = {}
    for a in answers:
        queries.setdefault(a.qid, len(queries))
        ranks.setdefault(a.qid, []).extend(m.rank for m in a.moments)
    across = {q: len(set(r)) == len(r) for q, r in ranks.items()}
    keys: list[tuple[int, int]] = []
    videos: dict[object, dict[str, int]] = {}
    for a in answers:
        seen = videos.setdefault(a.qid, {})
        order = 0 if across[a.qid] else seen.setdefault(a.vid, len(seen))
        keys.append((queries[a.qid], order))
    return keys


def rows(answers: Sequence[Answer]) -> list[dict[str, Any]]:
    """The CSV rows as dicts (``None`` for empty cells), in order (see the module doc)."""
    keyed = []
    for key, a in zip(_sort_keys(answers), answers):
        for m in a.moments:
            keyed.append(
                (
                    (*key, m.rank),
                    {
                        "qid": a.qid,
                        "query": a.query,
                        "video": a.video,
                        "vid": a.vid,
                        "rank": m.rank,
                        "start": float(m.start),
                        "end": float(m.end),
                        "score": float(m.score),
                        "relevance": m.relevance,
                        "clip": str(m.clip.path) if m.clip else None,
                        "clip_start": m.clip.start if m.clip else None,
                        "clip_end": m.clip.end if m.clip else None,
                        **m.extra,
                    },
                )
            )
    keyed.sort(key=lambda item: item[0])
    return [row for _, row in keyed]


def write_csv(path: Path, answers: Sequence[Answer], document: dict[str, Any]) -> None:
    """Write the moments of ``answers`` as CSV (RFC 4180 quoting, UTF-8, ``\\r\\n`` lines)."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns(answers))
        writer.writeheader()
        writer.writerows(rows(answers))
