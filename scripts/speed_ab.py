#!/usr/bin/env python3
"""Time two later speed changes against the code before them, in one process (not run by CI).

The first same-run tables (docs/speed.md) were taken at commit 56c9bbb; two model changes
came after:

- ``InputProjection`` projects every row and zeroes the padded ones below 10 % padding
  (``momentkit.modeling.mlp.PACK_MIN_PADDING``; before: it always gathered the valid rows);
- under bf16 autocast the saliency heads run in float32 (``momentkit.modeling.precision``;
  before: in bf16).

"before" restores the old behaviour (threshold 0, the model module's ``in_float32`` made a plain
call), "after" is the code as it is. ``--change onednn-linear`` times the float32 linear layers
through oneDNN (``momentkit.modeling.linear``; before: ``MOMENTKIT_ONEDNN_LINEAR=0``, after:
``1``). ``--change row-blocks`` times evaluation with and without row blocks and grouped
attention (``momentkit.modeling.row_blocks``; before: ``BLOCK_BYTES`` so large that every call
takes the whole batch). ``--change prelu-bf16`` times PReLU's slope gradient in bf16 against
float32 sums (``momentkit.modeling.prelu``; before: ``torch.dot`` in the activation's dtype);
use it with ``--precision bf16``. ``--change level-sequence`` times UniMD's heads on all pyramid
levels as one sequence (``momentkit.modeling.query_heads.LevelSequence``; before: the towers,
query products and dynamic convolutions level by level); ``--change padding-trim`` times
UniMD's masked convolutions and head levels without the steps after a batch's last valid one
(``momentkit.modeling.convnext_pyramid.trimmed_length``; before: ``TRIM_MIN_STEPS`` so large
that nothing is left out); ``--change decoding`` times UniMD's decoding with the pre-NMS top-k by
``top_indices`` and soft-NMS in length buckets (before: a stable sort of every candidate and
one padded array of all classes); ``--change nms-total-max`` times UniMD's soft-NMS stopping a
query once none of its further picks can be among the task's ``max_seg_num`` best
(``soft_nms_groups(total_max=...)``; before: every query runs to its end); give
``--official-dir`` (a yingsen1/UniMD checkout) for the release's Charades-STA model and batches.
``--change dropout-cost`` is not a speed change but a bound:
"after" runs every dropout as the identity (a different function), so after / before is the
least share of the training step any faster dropout could leave. The two sides alternate
(before, after, before, ...) on the same inputs and the same weights: ``predict`` over
QVHighlights-shaped batches (1550 queries, batches of 100, every 4th video shorter) and a
training step (32 videos, forward + loss + backward + AdamW). With ``--official-dir DIR`` the
model, its weights and the batch shapes are those of ``momentkit bench ... --official-dir DIR``
(momentkit's side only is timed); ``--latency R`` adds R rounds of 20 one-video predictions::

    python scripts/speed_ab.py --model moment_detr --precision fp32 --rounds 4
    python scripts/speed_ab.py --model moment_detr --precision bf16 --rounds 4
    python scripts/speed_ab.py --model qd_detr --change onednn-linear --rounds 2 --steps 6
    python scripts/speed_ab.py --model moment_detr --change row-blocks --rounds 6 --steps 0
    python scripts/speed_ab.py --model qd_detr --precision bf16 --change prelu-bf16 --rounds 0
    python scripts/speed_ab.py --model moment_detr --change dropout-cost --rounds 0 --steps 10
    python scripts/speed_ab.py --model unimd --official-dir /path/to/UniMD \
        --change level-sequence --rounds 4 --latency 6 --steps 10
    python scripts/speed_ab.py --model unimd --official-dir /path/to/UniMD \
        --change padding-trim --rounds 4 --latency 6 --steps 10
    python scripts/speed_ab.py --model unimd --official-dir /path/to/UniMD \
        --change decoding --rounds 4 --latency 6 --steps 0
    python scripts/speed_ab.py --model unimd --official-dir /path/to/UniMD \
        --change nms-total-max --rounds 4 --latency 6 --steps 0

Prints the medians and the ratio after / before (median and range over the rounds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from momentkit.benchmarks.infer import SHAPE, _batches, momentkit_only
from momentkit.benchmarks.official import (
    alternate,
    build_pair,
    load_average,
    ratio,
    threads,
    timed,
)
from momentkit.benchmarks.train import SHAPE as TRAIN_SHAPE
from momentkit.benchmarks.train import _step
from momentkit.modeling import (
    attention,
    convnext_pyramid,
    dropout,
    mlp,
    prelu,
    query_heads,
    row_blocks,
    soft_nms,
)
from momentkit.models import build_criterion
from momentkit.models import unimd as unimd_model
from momentkit.training.trainer import autocast_dtype


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="moment_detr")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--rounds", type=int, default=4, help="predict rounds per side (0: none)")
    parser.add_argument(
        "--steps", type=int, default=10, help="training-step rounds per side (0: none)"
    )
    parser.add_argument(
        "--latency", type=int, default=0, help="rounds of 20 one-video predictions (0: none)"
    )
    parser.add_argument("--official-dir", default=None, help="the pair's model and shapes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--change",
        choices=[
            "packing-and-saliency",
            "onednn-linear",
            "row-blocks",
            "prelu-bf16",
            "dropout-cost",
            "level-sequence",
            "padding-trim",
            "decoding",
            "nms-total-max",
        ],
        default="packing-and-saliency",
    )
    args = parser.parse_args()
    if args.official_dir:
        pair = build_pair(args.model, args.official_dir, "cpu", args.precision)
        pair.compile_settings = None  # eager, as bench without --compile
    else:
        pair = momentkit_only(args.model, "cpu", args.precision)
    infer = {**SHAPE, "batch_size": 100, **pair.infer_defaults}
    train = {**TRAIN_SHAPE, **pair.train_defaults}
    module = sys.modules[type(pair.momentkit).__module__]  # where the model calls in_float32
    current = getattr(module, "in_float32", None)
    blocks, blas = row_blocks.BLOCK_BYTES, prelu._BLAS_DTYPES
    dropout_fn = dropout.fast_dropout
    heads = {h: h.forward for h in (query_heads.QueryClassificationHead,
                                    query_heads.QueryRegressionHead)}  # fmt: skip

    trim_steps = convnext_pyramid.TRIM_MIN_STEPS
    top, buckets = unimd_model.top_indices, soft_nms.BUCKET_MIN_GROUPS
    groups_nms = unimd_model.soft_nms_groups

    def every_pick(*a: Any, total_max: int | None = None, **k: Any) -> Any:
        return groups_nms(*a, **k)

    def sort_all(scores: torch.Tensor, k: int) -> torch.Tensor:
        return scores.argsort(descending=True, stable=True)[:k]

    def code(before: bool) -> None:
        if args.change == "nms-total-max":
            unimd_model.soft_nms_groups = every_pick if before else groups_nms
            return
        if args.change == "decoding":
            unimd_model.top_indices = sort_all if before else top
            soft_nms.BUCKET_MIN_GROUPS = 1 << 30 if before else buckets
            return
        if args.change == "padding-trim":
            convnext_pyramid.TRIM_MIN_STEPS = 1 << 30 if before else trim_steps
            return
        if args.change == "level-sequence":
            cls, reg = heads
            cls.forward = _classify_by_level if before else heads[cls]  # type: ignore[method-assign]
            reg.forward = _regress_by_level if before else heads[reg]  # type: ignore[method-assign]
            return
        if args.change == "dropout-cost":
            drop = dropout_fn if before else (lambda x, *a, **k: x)
            dropout.fast_dropout = attention.fast_dropout = drop
            return
        if args.change == "prelu-bf16":
            halves = (torch.bfloat16, torch.float16)
            prelu._BLAS_DTYPES = blas + halves if before else blas
            return
        if args.change == "row-blocks":
            row_blocks.BLOCK_BYTES = 1 << 62 if before else blocks
            return
        if args.change == "onednn-linear":
            os.environ["MOMENTKIT_ONEDNN_LINEAR"] = "0" if before else "1"
            return
        mlp.PACK_MIN_PADDING = 0.0 if before else 0.1
        if current is not None:
            module.in_float32 = (lambda fn, *a, **k: fn(*a, **k)) if before else current

    def report(name: str, results: dict[str, list[Any]]) -> None:
        before = [t.wall for t in results["before"]]
        after = [t.wall for t in results["after"]]
        print(
            f"{args.model} {args.precision} {args.change} {name}: "
            f"before {statistics.median(before):.3f} s, "
            f"after {statistics.median(after):.3f} s, after / before {ratio(after, before)}"
        )

    dtype = autocast_dtype(args.precision, torch.device("cpu"))
    with threads(args.threads):
        batches = [
            pair.momentkit_batch(v, training=False)
            for v in _batches(pair.make_videos, infer["queries"], infer["batch_size"],
                              infer["clips"], infer["tokens"])
        ]  # fmt: skip
        print("load average before", load_average())

        def predict(before: bool) -> Callable[[], Any]:
            return timed(lambda: (code(before), pair.momentkit_predict(batches)), pair.device)

        if args.rounds:
            sides = {"before": predict(True), "after": predict(False)}
            what = f"predict, {infer['queries']} {pair.query_unit} in batches of "
            report(what + str(infer["batch_size"]), alternate(sides, repeats=args.rounds, warmup=1))

        one = pair.make_videos(1, infer["clips"], infer["tokens"], seed=0, short_every=0,
                               min_tokens=12)  # fmt: skip
        single = [pair.momentkit_batch(one, training=False)]

        def latency(before: bool) -> Callable[[], Any]:
            return timed(
                lambda: (code(before), [pair.momentkit_predict(single) for _ in range(20)]),
                pair.device,
            )

        if args.latency:
            sides = {"before": latency(True), "after": latency(False)}
            report("20 one-video predictions", alternate(sides, repeats=args.latency, warmup=1))

        model = pair.momentkit.train()
        videos = pair.make_videos(train["batch_size"], train["clips"], train["tokens"], seed=1)
        batch = pair.momentkit_batch(videos, training=True)
        if args.official_dir:  # the pair's criterion, optimiser and schedule

            def one_step() -> Any:
                return pair.momentkit_step(batch)
        else:
            criterion = build_criterion(model.config)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)

            def one_step() -> Any:
                return _step(model, criterion, optimizer, batch, dtype)

        def step(before: bool) -> Callable[[], Any]:
            return timed(lambda: (code(before), one_step()), pair.device)

        if args.steps:
            sides = {"before": step(True), "after": step(False)}
            report("training step", alternate(sides, repeats=args.steps, warmup=3))
        print("load average after", load_average())
    code(False)


def _classify_by_level(self: Any, levels: Any, masks: Any, queries: torch.Tensor) -> list[Any]:
    """UniMD's classification head before ``LevelSequence``: every level alone."""
    out = []
    for x, mask in zip(levels, masks):
        z = self.tower(x, mask)
        logits = self.scale * torch.einsum("bqc,bct->bqt", queries, z) + self.bias
        out.append(logits * mask[:, None].to(logits.dtype))
    return out


def _regress_by_level(self: Any, levels: Any, masks: Any, queries: torch.Tensor) -> list[Any]:
    """UniMD's regression head before ``LevelSequence``: every level alone."""
    weight, bias = self.kernels(queries)
    out = []
    for level, (x, mask) in enumerate(zip(levels, masks)):
        z = self.tower(x, mask)
        d = query_heads.dynamic_conv1d(z, weight, bias) * mask[:, None, None].to(z.dtype)
        out.append(F.relu(self.scales[level] * d).transpose(-1, -2))
    return out


if __name__ == "__main__":
    main()
