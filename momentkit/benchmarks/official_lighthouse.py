"""Moment-DETR and QD-DETR: line/lighthouse's released code against momentkit.

The official model and criterion come from Lighthouse's ``build_model`` with its own option
files for QVHighlights and CLIP + SlowFast features (``configs/base.yml`` +
``feature/clip_slowfast.yml`` + ``model/<model>.yml`` + ``dataset/qvhighlight.yml``, read by
its ``BaseOptions``): width 256, 2 + 2 layers, FFN 1024, 10 queries, input dropout 0.5, a
2818-d video (CLIP 512 + SlowFast 2304 + 2 TEF, Lighthouse's order) and 512-d query tokens.
A training step is ``training/train.py``'s: ``model(**model_inputs)``, the criterion's
weighted sum, ``backward``, ``clip_grad_norm_(0.1)``, AdamW; inference is
``training/evaluate.py``'s ``compute_mr_results`` (forward, ranking, ``PostProcessorDETR``),
its progress bar off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from momentkit.benchmarks.official import (
    OfficialPair,
    git_revision,
    silence_progress,
)
from momentkit.benchmarks.official_env import import_lighthouse
from momentkit.training.trainer import to_float32


class LighthousePair(OfficialPair):
    """Moment-DETR or QD-DETR from a line/lighthouse checkout, and momentkit's conversion."""

    source = "lighthouse"
    label_scale = 3.0  # Lighthouse sums the 3 annotators' scores, momentkit takes the mean
    stream_order = ("clip", "slowfast")

    def __init__(self, root: Path, model: str, device: torch.device, precision: str) -> None:
        super().__init__(root, model, device, precision)
        self.lh = import_lighthouse(root)
        self.revision = git_revision(self.lh.root)
        options = self.lh.config.BaseOptions(model, "qvhighlight", "clip_slowfast", None, None)
        with contextlib.chdir(self.lh.root):  # it reads configs/ relative to the checkout
            options.parse()
        opt = options.option
        opt.device = str(device)
        self.options = opt
        self.eval_batch_size = int(opt.eval_bsz)
        self.lr, self.weight_decay, self.grad_clip = opt.lr, opt.wd, opt.grad_clip
        build = getattr(self.lh, model).build_model
        self.official, self.criterion = build(opt)
        self.official.to(device)
        plain = {k: v for k, v in dict(opt).items() if not callable(v)}
        self.convert(plain, layout="plain")
        silence_progress(self.root)  # progress bars are not the code under test

    def prepare_training(self, batched: dict[str, Any]) -> Any:
        return self.lh.dataset.prepare_batch_inputs(batched, self.device)

    def official_forward_loss(self, batch: Any) -> torch.Tensor:
        model_inputs, targets = batch
        with self.official_autocast():
            outputs = self.official(**model_inputs)
        loss_dict = self.criterion(to_float32(outputs), targets)
        return self.weighted_total(loss_dict)

    def official_predict(self, batches: Sequence[Any]) -> list[Any]:
        self.official.eval()
        with torch.no_grad(), self.official_autocast():
            rows, _ = self.lh.evaluate.compute_mr_results(
                None, self.official, batches, self.options, None
            )
        return rows


PAIR = LighthousePair
