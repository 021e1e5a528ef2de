"""UniMD: yingsen1/UniMD's released code against momentkit.

The official model is built as ``train_sync.py`` builds it, from the release's Charades-STA
preset ``configs/charades/charades_i3d_convnext_bs2_70e_stop20e.yaml`` read by its own
``load_config`` (``LocPointTransformerSyntheses``: 2048-d I3D features, width 512, ConvNeXt
stages + a 3-layer BiFPN, dot-product classification and class-wise dynamic regression heads,
``max_seq_len`` 288, 157 TAD classes; ~92 M parameters). Its initial weights are saved as
the training script saves them (``state_dict`` + ``state_dict_ema``, ``module.`` names, the
run's ``config.yaml`` beside the file) and converted by
:func:`momentkit.interop.convert.convert_checkpoint` (``--from unimd``): momentkit's
``official`` UniMD variant, the same machinery as the parity fixtures
(``scripts/parity/unimd_fixtures.py``).

**The batch.** One step of ``train_sync.py`` (``cotrain_synchronized_one_epoch``) takes one
batch of the loader (``loader.batch_size`` 2) of either the videos annotated for both tasks or,
paired, one TAD-only and one MR-only batch (4 videos; both sets subsampled to the smaller).
Charades-STA's sentences are on Charades videos, so the MR-only set is empty, and with it the
paired batches: every step is a "both" batch, 2 videos, each
with its TAD query set (the 157 class embeddings) and its MR sentences, both tasks' losses
summed (``tad_loss_weight`` 3 x TAD + 1 x MR). That is what is timed: 2 videos of
``--clips`` 2048-d feature steps (default 180, a 30 s Charades video at 24 fps, stride 4; the
second one 15 steps shorter or so), each with 3-8 action instances of random classes and 1-4
sentences (Charades-STA: 2.3 a video) with one window each; the training forward pads to
``max_seq_len`` 288 on both sides. ``--tokens`` is not used (a UniMD query is one pooled 512-d
embedding).

**A training step** is ``cotrain_synchronized_one_epoch``'s: ``zero_grad``, ``model(video_list,
tasks, epoch, max_epoch)`` (forward and both tasks' losses inside the model), the weighted sum,
``backward``, ``clip_grad_norm_(1.0)``, the official ``make_optimizer`` AdamW (lr 1e-4, weight
decay 0.05 off biases, norms and scales), ``LinearWarmupCosineAnnealingLR.step()`` and the
``ModelEma`` update (decay 0.999: a copy of all 92 M weights every step). momentkit's step is
its trainer's: ``model(batch)``, ``UniMDCriterion``, ``backward``, ``clip_gradients(1.0)``,
fused AdamW, the ``LambdaLR`` step; momentkit keeps no weight average, so the official
"clip + AdamW" phase also holds the EMA update. Left out on the official side: the data
loader's random crop (the batch is given), ``nn.DataParallel`` (with one device it calls the
model itself) and the logging every ``print_freq`` steps.

**Inference** is ``valid_one_epoch_charades``'s model call: one video at a time (its loader
has batch size 1; the model refuses more), ``model([video], [["tad", "mr"]])`` without
gradients: forward, per-level decoding and the compiled soft-NMS (``libs/utils/csrc``, built
once from the checkout into momentkit's cache), the metrics bookkeeping left out. momentkit's
side is its co-training evaluation (:class:`momentkit.training.cotrain.CoEvaluation`): the
model on the collated batch and ``batch_predictions`` (decoding + soft-NMS into prediction
rows), batches of ``--batch-size`` videos (default 16, the Charades-STA preset's
``data.eval_batch_size``, which ``momentkit cotrain`` evaluates with; the official side takes
the same videos one at a time, as its loader does, whatever the batch). ``bench infer`` counts
videos, not queries (``--queries`` default 32, two batches): each carries its sentences and the
157 classes; the latency figure is one such video of ``--clips`` steps (a batch of one on both
sides).

The largest difference reported is that of the per-level classification logits and regression
offsets of both tasks (evaluation mode, every video of the batch; the official code pads each
video to 288 steps, as momentkit's ``official`` variant; relative to ``max(1, |official|)``)
and, where the NMS was built, of the decoded scores and segments (seconds).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from momentkit.benchmarks.official import OfficialPair, git_revision, silence_progress
from momentkit.benchmarks.official_env import (
    OfficialCodeError,
    import_official,
    import_unimd,
    stand_in,
)
from momentkit.training.trainer import move_to_device, to_float32

#: the release's Charades-STA preset and its dataset section
CONFIG = "configs/charades/charades_i3d_convnext_bs2_70e_stop20e.yaml"
SECTION = "charades"
#: the released Charades I3D features are at 24 fps (the loader reads the fps per video)
FPS = 24.0
#: Charades-STA train: 5338 videos, all with TAD too, in "both" batches of 2
ITERS_PER_EPOCH = 2669
#: the epoch handed to the model (the release trains 20 of a 70-epoch schedule)
EPOCH = 1
CLASS_DIM = 512


@dataclass
class UniMDVideos:
    """Synthetic Charades-STA videos in the official data conventions.

    Attributes:
        feats: per video ``(T_i, C)`` features, each step L2-normalised (as the loader).
        class_feats: ``(K, 512)`` L2-normalised TAD class embeddings (every video's TAD queries).
        tad_windows: per video ``(n, 2)`` action instances in seconds.
        tad_labels: per video ``(n,)`` their classes.
        mr_feats: per video ``(S_i, 512)`` sentence embeddings (not normalised, as the loader).
        mr_windows: per video ``(S_i, 2)`` each sentence's window in seconds.
        vids: video ids.
        fps, feat_stride, num_frames: the feature grid (step ``g`` is frame ``g * stride``).
    """

    feats: list[torch.Tensor]
    class_feats: torch.Tensor
    tad_windows: list[torch.Tensor]
    tad_labels: list[torch.Tensor]
    mr_feats: list[torch.Tensor]
    mr_windows: list[torch.Tensor]
    vids: list[str]
    fps: float = FPS
    feat_stride: int = 4
    num_frames: int = 16

    def __len__(self) -> int:
        return len(self.feats)

    @property
    def lengths(self) -> list[int]:
        """Feature steps per video."""
        return [len(f) for f in self.feats]

    @property
    def duration(self) -> torch.Tensor:
        """``(B,)`` seconds (``(T * stride + num_frames) / fps``)."""
        return torch.tensor(
            [(n * self.feat_stride + self.num_frames) / self.fps for n in self.lengths]
        )

    @property
    def clip_len(self) -> float:
        """Seconds per feature step."""
        return self.feat_stride / self.fps

    def grid(self, seconds: torch.Tensor) -> torch.Tensor:
        """Seconds -> the official feature grid (``s * fps / stride - 0.5 * frames / stride``,
        float32 as the official loader)."""
        offset = 0.5 * self.num_frames / self.feat_stride
        return seconds.float() * self.fps / self.feat_stride - offset


def make_unimd_videos(
    batch: int,
    clips: int = 180,
    seed: int = 0,
    *,
    short_every: int = 2,
    classes: int = 157,
    input_dim: int = 2048,
    qid_start: int = 0,
) -> UniMDVideos:
    """``batch`` Charades-STA-shaped videos of ``clips`` steps (every ``short_every``-th one 1-15
    shorter); 3-8 action instances of random classes and 1-4 sentences each. Windows are on a
    quarter-second grid, so both sides map them to the same feature-grid numbers."""
    g = torch.Generator().manual_seed(seed)

    def randint(low: int, high: int) -> int:  # [low, high]
        return int(torch.randint(low, high + 1, (1,), generator=g))

    def windows(count: int, seconds: float, shortest: int, longest: int) -> torch.Tensor:
        quarters = int(seconds * 4)
        out = []
        for _ in range(count):
            width = randint(min(shortest, quarters - 1), min(longest, quarters - 1))
            start = randint(0, quarters - width)
            out.append([start / 4, (start + width) / 4])
        return torch.tensor(out)

    class_feats = torch.randn(classes, CLASS_DIM, generator=g)
    class_feats = class_feats / class_feats.norm(dim=-1, keepdim=True)
    feats, tad_w, tad_l, mr_f, mr_w = [], [], [], [], []
    for i in range(batch):
        short = short_every and i % short_every == short_every - 1
        n = randint(max(1, clips - 15), clips - 1) if short else clips
        x = torch.randn(n, input_dim, generator=g)
        feats.append(x / x.norm(dim=-1, keepdim=True))
        seconds = (n * 4 + 16) / FPS
        actions = randint(3, 8)
        tad_w.append(windows(actions, seconds, 8, 60))  # 2-15 s
        tad_l.append(torch.randint(0, classes, (actions,), generator=g))
        sentences = randint(1, 4)
        mr_f.append(torch.randn(sentences, CLASS_DIM, generator=g) * 0.5)
        mr_w.append(windows(sentences, seconds, 8, 48))  # 2-12 s
    vids = [f"v{qid_start + i}" for i in range(batch)]
    return UniMDVideos(feats, class_feats, tad_w, tad_l, mr_f, mr_w, vids)


def nms_build_dir(root: Path) -> Path:
    """Where the checkout's compiled NMS is kept: momentkit's cache, keyed by the C++ source,
    torch and Python (built once; compiling takes a minute or two)."""
    from momentkit.utils.cache import cache_dir

    source = root / "libs" / "utils" / "csrc" / "nms_cpu.cpp"
    text = source.read_bytes() if source.is_file() else b""
    key = hashlib.sha256(
        text + f"{torch.__version__} {sys.version} {sys.platform}".encode()
    ).hexdigest()[:16]
    return cache_dir() / f"unimd-nms-{key}"


def import_unimd_training(root: Path) -> Any:
    """``libs.utils.train_utils`` of the checkout (``make_optimizer``, ``make_scheduler``,
    ``ModelEma``): the evaluation-only packages it imports at the top (``ipdb``,
    ``prettytable``, ``pandas``, ``terminaltables``) stood in for where missing."""
    stand_in("ipdb")
    stand_in("prettytable", PrettyTable=None)
    stand_in("pandas")
    stand_in("terminaltables")
    return import_official(root, "unimd", "libs.utils.train_utils")


class _Stepper:
    """An optimiser whose ``step`` is followed by the rest of the training script's step
    (scheduler, weight average): what the shared timing calls "clip + AdamW"."""

    def __init__(self, optimizer: torch.optim.Optimizer, *after: Callable[[], Any]) -> None:
        self.optimizer, self.after = optimizer, after

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.optimizer.step()
        for fn in self.after:
            fn()


def preset_eval_batch_size() -> int:
    """Videos per evaluation batch of ``momentkit cotrain`` with the Charades-STA preset."""
    import yaml

    from momentkit.training.config import resolve_preset

    text = resolve_preset("charades_sta", "unimd").read_text(encoding="utf-8")
    return int(yaml.safe_load(text)["data"]["eval_batch_size"])


class UniMDPair(OfficialPair):
    """UniMD from a yingsen1/UniMD checkout, and momentkit's conversion."""

    source = "unimd"
    eval_batch_size = 1  # valid_one_epoch_charades: a loader of batch size 1
    #: ``bench train`` / ``bench infer`` defaults (see the module docstring); the inference
    #: batch is momentkit's (the Charades-STA preset's ``data.eval_batch_size``), the official
    #: side runs those videos one at a time whatever the batch
    train_defaults = {"batch_size": 2, "clips": 180}
    infer_defaults = {"queries": 32, "clips": 180, "batch_size": preset_eval_batch_size()}
    query_unit = "videos"

    def __init__(self, root: Path, model: str, device: torch.device, precision: str) -> None:
        super().__init__(root, model, device, precision)
        path = Path(root).expanduser().resolve()
        self.modules = import_unimd(path, nms_build_dir(path))
        self.revision = git_revision(path)
        self.train_utils = import_unimd_training(path)
        self.cfg = cfg = self.release_config(path)
        self.options = cfg
        train = cfg["train_cfg"]
        self.weights = {"tad": train.get("tad_loss_weight", 1.0),
                        "mr": train.get("mr_loss_weight", 1.0)}  # fmt: skip
        self.grad_clip = float(train["clip_grad_l2norm"])
        self.lr, self.weight_decay = cfg["opt"]["learning_rate"], cfg["opt"]["weight_decay"]
        self.max_epoch = cfg["opt"].get("early_stop_epochs", cfg["opt"]["epochs"])
        section = cfg[SECTION]
        self.feat_stride, self.num_frames = int(section["feat_stride"]), int(section["num_frames"])
        self.input_dim, self.classes = int(section["input_dim"]), int(section["num_classes"])
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its strides and task
            model_cls = self.modules.meta_archs.PtTransformerSyntheses
            self.official = model_cls(**copy.deepcopy(cfg["model"]))
        self.official.to(device)
        self.criterion = None  # the official losses are computed inside the model
        self.convert(cfg, layout="unimd")
        silence_progress(path)

    # ----------------------------------------------------------------------------- set-up
    def release_config(self, root: Path) -> dict[str, Any]:
        """The Charades-STA preset read by the release's ``load_config`` and completed as
        ``train_sync.py`` does (learning rate x devices, the dataset's empty-class list)."""
        config = self.modules.config
        cfg = config.load_config(str(root / CONFIG), copy.deepcopy(config.DEFAULTS))
        cfg["opt"]["learning_rate"] *= len(cfg["devices"])
        cfg["model"]["train_cfg"]["head_empty_cls"] = []
        return cfg

    def convert(self, options: Any, layout: str) -> None:
        """The official weights saved as ``train_sync.py`` saves them (the run's
        ``config.yaml`` beside the checkpoint), converted with ``--from unimd``; momentkit's
        criterion, AdamW and schedule from the converted experiment."""
        import yaml

        from momentkit.interop.convert import convert_checkpoint
        from momentkit.interop.parity import write_official_checkpoint
        from momentkit.models.unimd import UniMDCriterion
        from momentkit.training.config import OptimConfig
        from momentkit.training.optim import build_optimizer, build_scheduler

        state = {k: v.detach().cpu() for k, v in self.official.state_dict().items()}
        with tempfile.TemporaryDirectory(prefix="momentkit-bench-unimd-") as tmp:
            folder = Path(tmp)
            (folder / "config.yaml").write_text(yaml.safe_dump(options), encoding="utf-8")
            path = write_official_checkpoint(folder / "epoch_001.pth.tar", state, {}, layout=layout)
            converted = convert_checkpoint(path, self.source)
        self.momentkit = converted.model.to(self.device)
        self.momentkit_criterion = UniMDCriterion(self.momentkit.config)
        self.optim_config = OptimConfig(**converted.experiment["optim"])
        self.epochs = int(converted.experiment["trainer"]["epochs"])
        optimizer = build_optimizer(self.momentkit, self.optim_config)
        scheduler = build_scheduler(optimizer, self.optim_config, ITERS_PER_EPOCH, self.epochs)
        self.momentkit_optimizer = _Stepper(optimizer, scheduler.step)

    def official_optimizer(self) -> Any:
        """The official ``make_optimizer`` + ``make_scheduler`` + ``ModelEma``, stepped
        together (see :class:`_Stepper`)."""
        tu = self.train_utils
        optimizer = tu.make_optimizer(self.official, self.cfg["opt"])
        scheduler = tu.make_scheduler(optimizer, self.cfg["opt"], ITERS_PER_EPOCH)
        ema = tu.ModelEma(self.official)
        return _Stepper(optimizer, scheduler.step, lambda: ema.update(self.official))

    def make_videos(
        self, batch: int, clips: int, tokens: int = 1, seed: int = 0, *,
        short_every: int = 2, qid_start: int = 0, **_: Any,
    ) -> UniMDVideos:  # fmt: skip
        """The synthetic videos (``tokens`` unused; see :func:`make_unimd_videos`)."""
        return make_unimd_videos(
            batch, clips, seed, short_every=short_every, classes=self.classes,
            input_dim=self.input_dim, qid_start=qid_start,
        )  # fmt: skip

    def describe_batch(self, videos: UniMDVideos) -> str:
        """``"2 videos of 165-180 steps; 157 TAD classes + 1-4 MR sentences each"``-like."""
        lengths = videos.lengths
        sentences = [len(w) for w in videos.mr_windows]
        steps = f"{min(lengths)}-{max(lengths)}" if min(lengths) != max(lengths) else lengths[0]
        mr = f"{min(sentences)}-{max(sentences)}" if len(set(sentences)) > 1 else sentences[0]
        text = f"{len(videos.class_feats)} TAD classes + {mr} MR sentences"
        if len(videos) == 1:
            return f"1 video of {steps} steps x {self.input_dim}; {text}"
        return f"{len(videos)} videos of {steps} steps x {self.input_dim}; {text} each"

    # --------------------------------------------------------------------------- batches
    def official_items(self, videos: UniMDVideos) -> list[dict[str, dict[str, Any]]]:
        """Per video the ``{"tad": ..., "mr": ...}`` item of the official Charades dataset
        (features ``(C, T)``, windows on the feature grid)."""
        items = []
        for i, vid in enumerate(videos.vids):
            meta = {
                "video_id": vid,
                "fps": videos.fps,
                "duration": float(videos.duration[i]),
                "feat_stride": videos.feat_stride,
                "feat_num_frames": videos.num_frames,
                "feats": videos.feats[i].T.contiguous(),
            }
            sentences = len(videos.mr_windows[i])
            tad = {
                **meta,
                "segments": videos.grid(videos.tad_windows[i]),
                "labels": videos.tad_labels[i].clone(),
                "q_feats": videos.class_feats,
            }
            mr = {
                **meta,
                "segments": videos.grid(videos.mr_windows[i]),
                "labels": torch.arange(sentences),
                "q_feats": videos.mr_feats[i],
                "queries": [f"sentence {j}" for j in range(sentences)],
            }
            items.append({"tad": tad, "mr": mr})
        return items

    def official_batch(self, videos: Any, training: bool) -> Any:
        """``(video_list, tasks)`` as ``cotrain_synchronized_one_epoch`` forms them (every
        video with both tasks; on the device for training)."""
        items = self.official_items(videos)
        if training:
            items = move_to_device(items, self.device)
        return items, [["tad", "mr"] for _ in items]

    def momentkit_items(self, videos: UniMDVideos) -> list[Any]:
        """momentkit's :class:`~momentkit.data.multitask.VideoItem` of each video."""
        from momentkit.data.multitask import QueryGroup, VideoItem

        c = self.momentkit.config
        items = []
        for i, vid in enumerate(videos.vids):
            classes = list(range(len(videos.class_feats)))
            tad_windows = [videos.tad_windows[i][videos.tad_labels[i] == k].tolist()
                           for k in classes]  # fmt: skip
            sentences = list(range(len(videos.mr_windows[i])))
            groups = [
                QueryGroup("mr", [f"{vid}-{j}" for j in sentences],
                           [f"sentence {j}" for j in sentences], videos.mr_feats[i].numpy(),
                           [[videos.mr_windows[i][j].tolist()] for j in sentences]),
                QueryGroup("tad", classes, [f"class {k}" for k in classes],
                           videos.class_feats.numpy(), tad_windows),
            ]  # fmt: skip
            items.append(
                VideoItem(vid, float(videos.duration[i]), videos.clip_len,
                          videos.feats[i].numpy().astype(np.float32), groups, [],
                          c.grid_offset, c.window_clipping)
            )  # fmt: skip
        return items

    def momentkit_batch(self, videos: Any, training: bool) -> dict[str, Any]:
        """``collate_videos`` of the same videos (momentkit's co-training batch)."""
        from momentkit.data.multitask import collate_videos

        batch = collate_videos(self.momentkit_items(videos))
        return move_to_device(batch, self.device) if training else batch

    # ---------------------------------------------------------------------------- training
    def official_forward_loss(self, batch: Any) -> torch.Tensor:
        video_list, tasks = batch
        with self.official_autocast():
            losses = self.official(video_list, tasks, EPOCH, self.max_epoch)[0]
        total = 0
        for task in ("tad", "mr"):
            if losses[task]:
                total = total + losses[task]["final_loss"] * self.weights[task]
        return total  # type: ignore[return-value]

    # ---------------------------------------------------------------------- the same function
    def max_differences(self, videos: Any) -> dict[str, float]:
        """Largest ``|official - momentkit|`` in evaluation mode: per-level logits and offsets
        of both tasks (valid steps of every video) and, with the official NMS, the decoded
        scores and segments (seconds; ``inf`` where the numbers of detections differ).

        Logits and offsets are compared relative to ``max(1, |official|)`` (absolutely where
        below 1): at the release's initialisation the offsets reach ~120 strides, where the
        float32 spacing is 7.6e-6."""
        from momentkit.models.unimd import decode_detections

        self.official.eval()
        self.momentkit.eval()
        items, _ = self.official_batch(videos, training=True)
        batch = self.momentkit_batch(videos, training=True)
        with torch.no_grad():
            ours = self.momentkit(batch)
            dets = decode_detections(
                ours, batch["duration"], batch["clip_len"], self.momentkit.config
            )
        levels = torch.log2(ours["points"][:, 3]).round().long()
        task_of = batch["query_task"].cpu()
        diffs = {"cls_logits_rel": 0.0, "reg_offsets_rel": 0.0}
        if self.modules.has_nms:
            diffs.update(scores=0.0, segments_s=0.0)
        for i, item in enumerate(items):
            with torch.no_grad():
                res = self.official([item], [["tad", "mr"]], save_mid_file=True)
            for task, task_id in (("tad", 1), ("mr", 0)):
                rows = torch.nonzero(batch["query_mask"][i].cpu() & (task_of[i] == task_id))
                rows = rows.flatten()
                mid = res[f"{task}_mid_file"][item[task]["video_id"]]
                for lv, (cls, off) in enumerate(zip(mid["out_cls_logits"], mid["offsets_per_vid"])):
                    steps = -(-videos.lengths[i] // 2**lv)
                    cols = torch.nonzero(levels == lv).flatten()[:steps]
                    got_c = ours["cls_logits"][i][rows][:, cols].T.float().cpu()
                    got_r = ours["reg_offsets"][i][rows][:, cols].permute(1, 0, 2).float().cpu()
                    want_c, want_r = cls[:steps].float().cpu(), off[:steps].float().cpu()
                    d_cls = float(((got_c - want_c).abs() / want_c.abs().clamp(min=1.0)).max())
                    d_reg = float(((got_r - want_r).abs() / want_r.abs().clamp(min=1.0)).max())
                    diffs["cls_logits_rel"] = max(diffs["cls_logits_rel"], d_cls)
                    diffs["reg_offsets_rel"] = max(diffs["reg_offsets_rel"], d_reg)
                if self.modules.has_nms:
                    self._decoded_difference(diffs, res[task][0], dets[i], rows)
        return diffs

    @staticmethod
    def _decoded_difference(
        diffs: dict[str, float], official: dict[str, Any], ours: list[Any], rows: torch.Tensor
    ) -> None:
        scores = torch.cat([ours[int(q)][1] for q in rows])
        segs = torch.cat([ours[int(q)][0] for q in rows])
        order = scores.argsort(descending=True, stable=True)
        want_s, want_g = official["scores"].float(), official["segments"].float()
        if len(order) != len(want_s):
            diffs["scores"] = diffs["segments_s"] = float("inf")
            return
        if len(order):
            diffs["scores"] = max(diffs["scores"], float((scores[order] - want_s).abs().max()))
            diffs["segments_s"] = max(
                diffs["segments_s"], float((segs[order] - want_g).abs().max())
            )

    # --------------------------------------------------------------------------- inference
    def official_predict(self, batches: Sequence[Any]) -> list[Any]:
        """``valid_one_epoch_charades``'s model calls: one video at a time, no gradients, the
        loader's CPU tensors (the model moves the features itself)."""
        if not self.modules.has_nms:
            raise OfficialCodeError(
                f"{self.root}: the official NMS (libs/utils/csrc) could not be built (a C++ "
                "compiler and the torch headers are needed): no official inference"
            )
        self.official.eval()
        out = []
        with torch.no_grad(), self.official_autocast():
            for items, tasks in batches:
                for item, task in zip(items, tasks):
                    out.append(self.official([item], [task]))
        return out

    def momentkit_predict(self, batches: Sequence[dict[str, Any]]) -> list[Any]:
        """:class:`~momentkit.training.cotrain.CoEvaluation`'s loop: the model and
        ``batch_predictions`` (MR rows per sentence, TAD rows per video)."""
        from momentkit.training.cotrain import batch_predictions

        model, call = self.momentkit, self.momentkit_model()  # compiled under --compile
        model.eval()
        preds: list[Any] = []
        with torch.no_grad():
            for batch in batches:
                batch = move_to_device(batch, self.device)
                with self.autocast():
                    outputs = call(batch)
                preds += batch_predictions(to_float32(outputs), batch, model.config)
        return preds


PAIR = UniMDPair
