"""``momentkit bench probe``: how fast does a model's highlight saliency start to learn?

A full synth run takes an hour on two cores, and its early epochs say little: with a cosine
schedule the learning rate of a short run decays before a slow starter takes off, and
MR-full-mAP stays low for several epochs even in models that end up well. This probe isolates
the first sign of learning. It trains one model on the first ``--train`` training queries at
the preset's learning rate, held constant, and every ``--every`` steps reports the *pairwise
ranking accuracy* of its saliency scores on those queries and on the first ``--val`` validation
queries: the fraction of clip pairs of one query with different saliency labels whose scores
are ordered like the labels (0.5 = chance, 1 = perfect).

It found why LD-DETR's and MS-DETR's highlight detection stayed at chance on synth
(docs/ld_detr.md, docs/ms_detr.md)::

    momentkit bench probe --data data/synth --model ms_detr --steps 600 --train 400
    momentkit bench probe --data data/synth --model ms_detr --set model.fuse_dropout=0.5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import Tensor

from momentkit.cli.common import add_set_argument, at_least

HELP = "train a model briefly at a constant lr; saliency ranking accuracy every few steps"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Data, model, budget."""
    parser.add_argument("--data", required=True, help="a `momentkit synth` output folder")
    parser.add_argument("--model", required=True, help="model name (ms_detr, qd_detr, ...)")
    parser.add_argument("--preset", default="synth", help="preset of the model")
    parser.add_argument("--steps", type=at_least(1), default=600, help="training steps")
    parser.add_argument("--every", type=at_least(1), default=100, help="report every N steps")
    parser.add_argument("--train", type=at_least(1), default=400, help="training queries used")
    parser.add_argument("--val", type=at_least(1), default=200, help="validation queries scored")
    parser.add_argument("--seed", type=at_least(0), default=0)
    parser.add_argument("--json", help="also write the reports to this JSON file")
    add_set_argument(parser, "config overrides (--set model.fuse_dropout=0.1 ...)")


def pairwise_ranking_accuracy(scores: Tensor, labels: Tensor, mask: Tensor) -> tuple[int, int]:
    """Clip pairs ordered like their saliency labels: ``(correct, pairs)`` over a batch.

    Args:
        scores: ``(B, T)`` predicted saliency.
        labels: ``(B, T)`` ground-truth saliency.
        mask: ``(B, T)`` True = valid clip.

    Returns:
        ``pairs``: valid pairs ``(i, j)`` of one video with ``labels[i] > labels[j]``;
        ``correct``: those with ``scores[i] > scores[j]`` (a tie counts as wrong).
    """
    valid = mask[:, :, None] & mask[:, None, :]
    ordered = (labels[:, :, None] > labels[:, None, :]) & valid
    right = ordered & (scores[:, :, None] > scores[:, None, :])
    return int(right.sum()), int(ordered.sum())


def _accuracy(model: torch.nn.Module, dataset: Any, collate: Any, batch_size: int = 50) -> float:
    import torch

    model.eval()
    correct = pairs = 0
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            stop = min(start + batch_size, len(dataset))
            batch = collate([dataset[i] for i in range(start, stop)])
            scores = model(batch)["saliency_scores"]
            c, p = pairwise_ranking_accuracy(
                scores, batch["saliency_all_labels"], batch["video_mask"].bool()
            )
            correct, pairs = correct + c, pairs + p
    model.train()
    return correct / max(pairs, 1)


def run(args: argparse.Namespace) -> int:
    """Train ``--steps`` steps, report the saliency ranking accuracy every ``--every``."""
    import torch

    from momentkit.benchmarks.guards import refuse_outputs_over_inputs, synth_data_inputs
    from momentkit.benchmarks.learn import feature_overrides
    from momentkit.data.loader import collate
    from momentkit.data.records import load_annotations
    from momentkit.models import build_criterion, build_model
    from momentkit.training.config import build_config
    from momentkit.training.optim import build_optimizer, clip_gradients
    from momentkit.training.pipeline import open_dataset, with_data_dims
    from momentkit.training.seed import seed_everything
    from momentkit.utils.io import write_json

    data = Path(args.data)
    files, folders = synth_data_inputs("--data", data)
    refuse_outputs_over_inputs([("--json", args.json)], files, folders)
    overrides = [*feature_overrides(data), *args.overrides]
    cfg = build_config(args.model, args.preset, overrides)
    train_anns = load_annotations(data / "annotations" / "train.jsonl")[: args.train]
    val_anns = load_annotations(data / "annotations" / "val.jsonl")[: args.val]
    train_set = open_dataset(train_anns, cfg, training=True)
    val_set = open_dataset(val_anns, cfg, training=False)
    cfg = with_data_dims(cfg, train_set)
    seed_everything(args.seed)
    model = build_model(cfg.model).train()
    criterion = build_criterion(model.config)
    optimizer = build_optimizer(model, cfg.optim)  # constant lr: no scheduler
    generator = torch.Generator().manual_seed(args.seed)
    reports: list[dict[str, Any]] = []
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(train_set), (cfg.trainer.batch_size,), generator=generator)
        batch = collate([train_set[i] for i in idx.tolist()])
        losses = criterion(model(batch), batch)
        optimizer.zero_grad()
        losses["loss"].backward()
        clip_gradients(model, cfg.optim.grad_clip)
        optimizer.step()
        if step % args.every == 0 or step == args.steps:
            report = {
                "step": step,
                "train_accuracy": round(_accuracy(model, train_set, collate), 4),
                "val_accuracy": round(_accuracy(model, val_set, collate), 4),
                **{k: round(v.item(), 4) for k, v in losses.items() if "saliency" in k},
                "seconds": round(time.perf_counter() - start, 3),
            }
            reports.append(report)
            print(json.dumps(report), flush=True)
    if args.json:
        write_json(args.json, {"model": args.model, "overrides": overrides, "reports": reports})
    return 0
