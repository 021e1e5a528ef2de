"""``momentkit bench calibration``: does a relevance threshold reject queries with no match?

On the synthetic benchmark the truth is known (``latent/val.jsonl``: every video's events), so
every validation query is asked twice:

- on its own video (a *positive*: it has relevant moments);
- on another validation video that has no event the query asks for (a *negative*: the right
  answer is "no confident match"; chosen with the generator's own matching rule).

Each predictor answers with calibrated relevance (:mod:`momentkit.inference.calibration`),
the reference texts being unrelated training queries (the synthetic text space has no
English captions). For every threshold the table reports the negatives rejected (no moment at or
above it), the positives kept (some moment at or above it), and R1@0.5 of the positives (the
first moment left has IoU >= 0.5 with a ground-truth window; a rejected positive counts as a
miss), plus the ROC AUC of the best relevance for telling positives from negatives::

    momentkit bench calibration --data data/synth --checkpoint runs/learn/qd_detr/seed0
    momentkit bench calibration --data data/synth                    # zero-shot only

Predictors: ``zero-shot`` (cosine of the CLIP-like clip stream and the query, no training) and,
with ``--checkpoint``, the trained model on the slowfast + clip streams.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from momentkit.cli.common import at_least, unit_interval

if TYPE_CHECKING:
    import numpy as np

    from momentkit.inference.results import QueryResult

HELP = "synthetic benchmark: queries with no match rejected by a relevance threshold, recall cost"

THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data DIR [--checkpoint RUN] [--bank N] [--queries N] [--thresholds ...]``."""
    parser.add_argument("--data", required=True, type=Path, help="a `momentkit synth` folder")
    parser.add_argument("--checkpoint", type=Path, help="a model trained on that benchmark")
    parser.add_argument(
        "--bank", type=at_least(1), default=122, help="reference (unrelated) queries (default 122)"
    )
    parser.add_argument("--queries", type=at_least(2), default=None, help="validation queries used")
    parser.add_argument("--thresholds", type=unit_interval, nargs="+", default=list(THRESHOLDS))
    parser.add_argument(
        "--seed", type=at_least(0), default=0, help="draws of negatives and the bank"
    )
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")


def _matches(latent: dict[str, Any], events: Sequence[Sequence[Any]]) -> bool:
    """Whether a video with ``events`` has an event the query of ``latent`` asks for."""
    from types import SimpleNamespace

    from momentkit.data.synth import QuerySpec, match_events

    def pair(names: Sequence[str] | None) -> tuple[str, str] | None:
        return None if names is None else (names[0], names[1])

    spec = QuerySpec(latent["relation"], pair(latent["target"]), pair(latent["context"]))  # type: ignore[arg-type]
    evs = [SimpleNamespace(pair=(e[2], e[3])) for e in events]
    return bool(match_events(evs, spec))  # type: ignore[arg-type]


def _iou_hit(result: QueryResult, windows: Sequence[Sequence[float]]) -> bool:
    if not result.moments:
        return False
    m = result.moments[0]
    for s, e in windows:
        inter = max(0.0, min(m.end, e) - max(m.start, s))
        union = max(m.end, e) - min(m.start, s)
        if union > 0 and inter / union >= 0.5:
            return True
    return False


def roc_auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    import numpy as np

    p = np.asarray(positives, dtype=np.float64)[:, None]
    n = np.asarray(negatives, dtype=np.float64)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / max(p.size * n.size, 1))


class _SynthText:
    """The synthetic benchmark's text "encoder": a query's stored ``clip_text`` features."""

    def __init__(
        self, stores: tuple[Any, Any], qids: dict[str, Any], video_streams: dict[str, int]
    ) -> None:
        from momentkit.encoders.base import TextFeatures

        self._tokens, self._pooled = stores
        self._qids, self._cls = qids, TextFeatures
        self.name = "synth"
        self.frame_request = None
        self.video_streams = video_streams
        self.text_stream = "clip_text"
        self.text_dim = 512

    def encode_text(self, queries: Sequence[str]) -> list[Any]:
        from momentkit.features import text_key

        out = []
        for q in queries:
            key = text_key(self._qids[q])
            out.append(self._cls(self._tokens.get(key), self._pooled.get(key)[0]))
        return out

    def encode_clips(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError("synthetic features are read from the benchmark's stores")


def run(args: argparse.Namespace) -> int:
    """Score positives and negatives with each predictor, print the threshold table."""
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from momentkit.benchmarks.guards import refuse_outputs_over_inputs, synth_data_inputs
    from momentkit.data.records import load_annotations
    from momentkit.features import open_feature_store
    from momentkit.inference.predictor import Predictor
    from momentkit.inference.results import VideoEncoding
    from momentkit.inference.zero_shot import ZeroShotScorer
    from momentkit.utils.io import read_jsonl, write_json

    data = args.data
    files, folders = synth_data_inputs("--data", data)
    folders.append(("--checkpoint", args.checkpoint))
    refuse_outputs_over_inputs([("--out", args.out)], files, folders)
    feats = data / "features"
    val = load_annotations(data / "annotations" / "val.jsonl")[: args.queries]
    train = load_annotations(data / "annotations" / "train.jsonl")
    latent = {row["qid"]: row for row in read_jsonl(data / "latent" / "val.jsonl")}
    stores = {s: open_feature_store(feats / s) for s in ("slowfast", "clip")}
    text_stores = (
        open_feature_store(feats / "clip_text", field="last_hidden_state"),
        open_feature_store(feats / "clip_text", field="pooler_output"),
    )
    rng = np.random.default_rng(args.seed)

    # negatives: another validation video without a matching event
    events_of = {latent[a.qid]["vid"]: latent[a.qid]["events"] for a in val}
    vids = sorted(events_of)
    negative_vid = {}
    for a in val:
        for _ in range(100):
            vid = vids[int(rng.integers(len(vids)))]
            if vid != a.vid and not _matches(latent[a.qid], events_of[vid]):
                negative_vid[a.qid] = vid
                break
    bank_rows = [train[i] for i in rng.permutation(len(train))]
    bank, seen = [], set()
    for a in bank_rows:
        if a.query not in seen:
            seen.add(a.query)
            bank.append(a)
        if len(bank) == args.bank:
            break
    qids = {a.query: a.qid for a in [*val, *bank]}
    durations = {a.vid: a.duration for a in val}

    def encoding(vid: str) -> VideoEncoding:
        streams = {s: np.asarray(st.get(vid), dtype=np.float32) for s, st in stores.items()}
        return VideoEncoding(vid, durations[vid], 2.0, streams)

    predictors: dict[str, Predictor] = {}
    zs_text = _SynthText(text_stores, qids, {"clip": 512})
    predictors["zero-shot (clip cosine)"] = Predictor(
        ZeroShotScorer(zs_text, clip_len=2.0),
        [zs_text],
        clip_len=2.0,  # type: ignore[arg-type]
    )
    if args.checkpoint is not None:
        enc = _SynthText(text_stores, qids, {"slowfast": 2304, "clip": 512})
        predictors[f"trained ({args.checkpoint})"] = Predictor.from_checkpoint(
            args.checkpoint,
            encoder=[enc],  # type: ignore[list-item]
        )
    for p in predictors.values():
        p.reference_texts = [a.query for a in bank]

    by_video: dict[str, list[tuple[Any, bool]]] = {}
    for a in val:
        by_video.setdefault(a.vid, []).append((a, True))
        if a.qid in negative_vid:
            by_video.setdefault(negative_vid[a.qid], []).append((a, False))

    report: dict[str, Any] = {
        "data": str(data),
        "queries": len(val),
        "bank": len(bank),
        "negatives": len(negative_vid),
        "predictors": {},
    }
    for name, predictor in predictors.items():
        start = time.perf_counter()
        pos: list[tuple[QueryResult, Any]] = []
        neg: list[QueryResult] = []
        for vid, items in by_video.items():
            video = encoding(vid)
            results = predictor.predict(video, [a.query for a, _ in items], top_k=10)
            for (a, positive), r in zip(items, results, strict=True):
                (pos if positive else neg).append((r, a) if positive else r)  # type: ignore[arg-type]
        rows = []
        base_r1 = float(np.mean([_iou_hit(r, a.relevant_windows) for r, a in pos]))
        for t in [None, *args.thresholds]:

            def kept(r: QueryResult, t: float | None = t) -> QueryResult:
                from dataclasses import replace

                if t is None:
                    return r
                return replace(r, moments=[m for m in r.moments if (m.relevance or 0) >= t])

            rows.append(
                {
                    "threshold": t,
                    "negatives_rejected": float(np.mean([not kept(r).moments for r in neg])),
                    "positives_kept": float(np.mean([bool(kept(r).moments) for r, _ in pos])),
                    "positives_r1@0.5": float(
                        np.mean([_iou_hit(kept(r), a.relevant_windows) for r, a in pos])
                    ),
                }
            )
        auc = roc_auc([r.best_relevance or 0 for r, _ in pos], [r.best_relevance or 0 for r in neg])
        report["predictors"][name] = {
            "rows": rows,
            "auc": auc,
            "r1@0.5": base_r1,
            "seconds": time.perf_counter() - start,
        }
        table = Table(title=f"{name}: {len(pos)} positives, {len(neg)} negatives")
        for col in ("min relevance", "negatives rejected", "positives kept", "R1@0.5 (positives)"):
            table.add_column(col, justify="right")
        for row in rows:
            t = row["threshold"]
            table.add_row(
                "none" if t is None else f"{t:.2f}",
                f"{100 * row['negatives_rejected']:.1f} %",
                f"{100 * row['positives_kept']:.1f} %",
                f"{100 * row['positives_r1@0.5']:.1f}",
            )
        table.caption = f"ROC AUC of the best relevance, positives vs negatives: {auc:.3f}"
        Console().print(table)
    if args.out:
        write_json(args.out, report)
    return 0
