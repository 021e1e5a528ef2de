"""JSON: the command's own document, and QVHighlights prediction JSON Lines.

``qvh`` rows are what ``momentkit evaluate`` and
:func:`momentkit.data.records.load_predictions` read: ``qid``, ``query``, ``vid``,
``pred_relevant_windows`` (``[[start, end, score], ...]``, best first) and
``pred_saliency_scores`` (one per clip). Every number keeps full float precision.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from momentkit.export.model import Answer
from momentkit.utils.io import atomic_open


def write_document(path: Path, answers: Sequence[Answer], document: dict[str, Any]) -> None:
    """Write the command's JSON document (what ``--json`` prints) to ``path``."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(document, indent=2) + "\n")


def qvh_rows(answers: Sequence[Answer]) -> list[dict[str, Any]]:
    """One prediction row per answer.

    ``qid`` is the query's id; when a query was asked of several videos (so its id would repeat)
    every row's ``qid`` is ``"<vid>:<qid>"`` instead, keeping them unique.
    """
    qids = [a.qid for a in answers]
    composite = len(set(qids)) != len(qids)
    return [
        {
            "qid": f"{a.vid}:{a.qid}" if composite else a.qid,
            "query": a.query,
            "vid": a.vid,
            "pred_relevant_windows": [
                [float(m.start), float(m.end), float(m.score)] for m in a.moments
            ],
            "pred_saliency_scores": [float(x) for x in a.saliency],
        }
        for a in answers
    ]


def write_qvh(path: Path, answers: Sequence[Answer], document: dict[str, Any]) -> None:
    """Write QVHighlights prediction JSON Lines to ``path``."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        for row in qvh_rows(answers):
            f.write(json.dumps(row) + "\n")
