"""MS-DETR: snailma0229/MS-DETR's released code against momentkit.

The official model and criterion come from ``ms_detr/model.py``'s ``build_model`` with the
options of ``ms_detr/scripts/train.sh`` (QVHighlights: ``--use_dn --use_tgt --use_sf
--use_decoder_neg --interm_neg --use_interm --num_queries 20``, SlowFast 2304 + CLIP 512 + 2 TEF,
512-d CLIP query tokens) read by the release's own option parser (what its ``parse`` derives is
applied without its side effects): width 256, 2 cross-modal + 2 encoder + 2 decoder layers, FFN
1024. A training step is ``ms_detr/train.py``'s (denoising targets from ``get_dn_targets``,
``model(**model_inputs)``, ``criterion(outputs, targets, mask_dict, opt, "train")``, the weighted
sum, ``backward``, ``clip_grad_norm_(0.1)``, AdamW); inference is ``ms_detr/inference_cg.py``'s
``compute_mr_results``. Without CUDA the release's ``.cuda()`` calls keep tensors on the CPU
(:func:`~momentkit.benchmarks.official_env.cpu_only`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from momentkit.benchmarks.official import (
    OfficialPair,
    git_revision,
    silence_progress,
)
from momentkit.benchmarks.official_env import cpu_only, import_ms_detr, import_official
from momentkit.training.trainer import to_float32

#: ms_detr/scripts/train.sh's options (feature folders are not read here)
TRAIN_SH = [
    "--dset_name", "hl", "--ctx_mode", "video_tef", "--eval_split_name", "val",
    "--v_feat_dim", "2816", "--t_feat_dim", "512", "--exp_id", "exp",
    "--use_dn", "--use_tgt", "--use_sf", "--use_decoder_neg", "--interm_neg", "--use_interm",
    "--eval_epoch", "1", "--num_queries", "20",
]  # fmt: skip


class MSDETRPair(OfficialPair):
    """MS-DETR from a snailma0229/MS-DETR checkout, and momentkit's conversion."""

    source = "ms_detr"
    stream_order = ("slowfast", "clip")
    label_scale = 3.0  # summed annotators (hl); momentkit's labels are their mean

    def __init__(self, root: Path, model: str, device: torch.device, precision: str) -> None:
        super().__init__(root, model, device, precision)
        self.modules = import_ms_detr(root)
        path = Path(root).resolve()
        self.revision = git_revision(path)
        self.dataset = import_official(path, "ms_detr", "ms_detr.start_end_dataset_cg")
        base = self.modules["config"].BaseOptions()
        base.initialize()
        opt = base.parser.parse_args(TRAIN_SH)
        opt.use_tef, opt.use_video = "tef" in opt.ctx_mode, "video" in opt.ctx_mode
        opt.v_feat_dim += 2 if opt.use_tef else 0
        opt.device, opt.pin_memory = device, False
        self.options = opt
        self.eval_batch_size = int(opt.eval_bsz)
        self.lr, self.weight_decay, self.grad_clip = opt.lr, opt.wd, opt.grad_clip
        with cpu_only():
            self.official, self.criterion = self.modules["model"].build_model(opt)
        self.official.to(device)
        options = {k: (str(v) if isinstance(v, torch.device) else v) for k, v in vars(opt).items()}
        self.convert(options, layout="namespace")
        silence_progress(self.root)  # progress bars are not the code under test

    def prepare_training(self, batched: dict[str, Any]) -> Any:
        """``prepare_batch_inputs(..., mode="train")`` (MS-DETR's takes the negative-caption
        switch and a mode)."""
        opt = self.options
        return self.dataset.prepare_batch_inputs(
            batched, self.device, opt.use_neg_captions, mode="train"
        )

    def _inputs(self, batch: Any, mode: str) -> dict[str, Any]:
        """The model's keyword arguments as ``train.py`` / ``compute_mr_results`` pass them
        (denoising targets from ``get_dn_targets`` with ``--use_dn``, in evaluation too)."""
        model_inputs, targets = batch
        opt = self.options
        inputs = dict(model_inputs, opt=opt, mode=mode)
        if opt.use_dn:
            dn_targets = self.modules["inference_cg"].get_dn_targets(targets)
            inputs["dn_args"] = (dn_targets, opt.scalar, opt.label_noise_scale,
                                 opt.box_noise_scale, opt.num_patterns)  # fmt: skip
        return inputs

    def official_outputs(self, batch: Any) -> dict[str, Any]:
        with cpu_only():
            outputs, _ = self.official(**self._inputs(batch, "val"))
        return outputs

    def official_forward_loss(self, batch: Any) -> torch.Tensor:
        _, targets = batch
        opt = self.options
        with cpu_only():
            inputs = self._inputs(batch, "train")
            with self.official_autocast():
                outputs, mask_dict = self.official(**inputs)
            loss_dict = self.criterion(to_float32(outputs), targets, mask_dict, opt, "train")
        return self.weighted_total(loss_dict)

    def official_predict(self, batches: Sequence[Any]) -> list[Any]:
        self.official.eval()
        with torch.no_grad(), self.official_autocast(), cpu_only():
            rows, _ = self.modules["inference_cg"].compute_mr_results(
                self.official, batches, self.options
            )
        return rows


PAIR = MSDETRPair
