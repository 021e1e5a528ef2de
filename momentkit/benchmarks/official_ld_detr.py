"""LD-DETR: qingchen239/ld-detr's released code against momentkit.

The official model and criterion come from ``ld_detr/model.py``'s ``build_model`` with the
options of ``ld_detr/scripts/train_qvhighlight.sh`` read by the release's own option parser
(``ld_detr/config.py``; what its ``parse`` derives is applied without its side effects: result
folders, code zips): width 256, a Distill Align queue of 65536, 2 + 5 conv blocks + 2 encoder
layers, a 3-loop 2-layer decoder, 10 queries, a 2818-d video (SlowFast 2304 + CLIP 512 + 2 TEF,
the release's order) and 512-d query tokens. A training step is ``ld_detr/train.py``'s
(``model(..., epoch_i, batch_idx, train_loader_length, targets, is_training=True)``, the
weighted sum, ``backward``, ``clip_grad_norm_(0.1)``, AdamW; epoch 1 of 226 batches, past the
first epoch's ramp); inference is ``ld_detr/inference.py``'s ``compute_mr_results``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from momentkit.benchmarks.official import (
    OfficialPair,
    Videos,
    git_revision,
    silence_progress,
)
from momentkit.benchmarks.official_env import import_ld_detr, import_official
from momentkit.training.trainer import to_float32

#: ld_detr/scripts/train_qvhighlight.sh's options (feature folders are not read here)
TRAIN_QVHIGHLIGHT = [
    "--dset_name", "hl", "--ctx_mode", "video_tef", "--eval_split_name", "val",
    "--v_feat_dirs", "../features/qvhighlight/slowfast_features",
    "../features/qvhighlight/clip_features", "--v_feat_dim", "2816",
    "--t_feat_dir", "../features/qvhighlight/clip_text_features/", "--t_feat_dim", "512",
    "--results_root", "results_qvhighlight", "--exp_id", "exp",
]  # fmt: skip
#: QVHighlights train: 7218 queries in batches of 32
BATCHES_PER_EPOCH = 226


class LDDETRPair(OfficialPair):
    """LD-DETR from a qingchen239/ld-detr checkout, and momentkit's conversion."""

    source = "ld_detr"
    stream_order = ("slowfast", "clip")

    def __init__(self, root: Path, model: str, device: torch.device, precision: str) -> None:
        super().__init__(root, model, device, precision)
        import_ld_detr(root)
        path = Path(root).resolve()
        self.revision = git_revision(path)
        config = import_official(path, "ld_detr", "ld_detr.config")
        self.inference = import_official(path, "ld_detr", "ld_detr.inference")
        self.dataset = import_official(path, "ld_detr", "ld_detr.start_end_dataset")
        model_module = import_official(path, "ld_detr", "ld_detr.model")
        base = config.BaseOptions()
        base.initialize()
        opt = base.parser.parse_args(TRAIN_QVHIGHLIGHT)
        opt.device, opt.pin_memory = device, False
        opt.use_tef, opt.use_video = "tef" in opt.ctx_mode, "video" in opt.ctx_mode
        opt.v_feat_dim += 2 if opt.use_tef else 0
        self.options = opt
        self.eval_batch_size = int(opt.eval_bsz)
        self.lr, self.weight_decay, self.grad_clip = opt.lr, opt.wd, opt.grad_clip
        self.label_scale = 3.0  # summed annotators (hl); momentkit's labels are their mean
        self.official, self.criterion = model_module.build_model(opt)
        self.official.to(device)
        self.convert({k: v for k, v in vars(opt).items() if k != "device"}, layout="namespace")
        self.label_scale = float(self.momentkit.config.loss.rank_label_scale)
        silence_progress(self.root)  # progress bars are not the code under test
        self._batch_idx = 0

    def collated(self, videos: Videos) -> dict[str, Any]:
        """The shared collate dict plus the ``vid`` / ``qid`` lists LD-DETR's collate keeps."""
        return {**super().collated(videos), "vid": [f"v{q}" for q in videos.qids],
                "qid": list(videos.qids)}  # fmt: skip

    def prepare_training(self, batched: dict[str, Any]) -> Any:
        return self.dataset.prepare_batch_inputs(batched, self.device)

    def official_forward_loss(self, batch: Any) -> torch.Tensor:
        model_inputs, targets = batch
        self._batch_idx = (self._batch_idx + 1) % BATCHES_PER_EPOCH
        with self.official_autocast():
            outputs = self.official(
                **model_inputs,
                epoch_i=1,
                batch_idx=self._batch_idx,
                train_loader_length=BATCHES_PER_EPOCH,
                targets=targets,
                is_training=True,
            )
        self.criterion.train()
        loss_dict = self.criterion(to_float32(outputs), targets)
        return self.weighted_total(loss_dict)

    def official_predict(self, batches: Sequence[Any]) -> list[Any]:
        self.official.eval()
        with torch.no_grad(), self.official_autocast():
            rows, _ = self.inference.compute_mr_results(self.official, batches, self.options)
        return rows


PAIR = LDDETRPair
