"""Side-by-side timing of momentkit against the official code: the shared machinery.

``momentkit bench train --official-dir DIR`` and ``momentkit bench infer --official-dir DIR``
time a model's official implementation, imported at run time from a checkout of its repository
(:mod:`momentkit.benchmarks.official_env`), and momentkit on the identical batch and the
identical weights: the official model is built with its release's options for QVHighlights,
its own initial weights are written as the official training script saves them and converted
with :mod:`momentkit.interop` (the parity machinery), so both sides compute the same function
(momentkit's ``official`` variant). Each codebase has an :class:`OfficialPair` subclass in
``momentkit/benchmarks/official_<codebase>.py``; :data:`PAIRS` maps a model name to it.

This module holds what they share: the base class with momentkit's side of a training step and
of inference, and :func:`build_pair`; the synthetic batch is in
:mod:`~momentkit.benchmarks.official_videos`, the A B timing and ratios in
:mod:`~momentkit.benchmarks.official_timing` (both re-exported here).
"""

from __future__ import annotations

import contextlib
import importlib
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from momentkit.benchmarks.official_timing import (
    Phases,
    Ratio,
    Timing,
    alternate,
    device_name,
    load_average,
    ratio,
    synchronize,
    threads,
    timed,
)
from momentkit.benchmarks.official_videos import STREAM_DIMS, TEXT_DIM, Videos, make_videos
from momentkit.training.trainer import move_to_device, to_float32
from momentkit.utils.errors import MomentkitError

#: model name -> module under momentkit.benchmarks holding its OfficialPair subclass
PAIRS: dict[str, str] = {
    "moment_detr": "official_lighthouse",
    "qd_detr": "official_lighthouse",
    "ld_detr": "official_ld_detr",
    "ms_detr": "official_ms_detr",
    "unimd": "official_unimd",
}
PRECISIONS = ("fp32", "bf16")


# ------------------------------------------------------------------------------ the two sides
class OfficialPair:
    """One model's official implementation and momentkit's, on identical weights.

    Subclasses (one per codebase) set in ``__init__``: ``self.official`` (the official model),
    ``self.criterion`` (its criterion), ``self.options`` (its options), ``self.momentkit`` (the
    converted momentkit model), ``self.stream_order`` (the official video channel order),
    ``self.eval_batch_size`` (the release's), ``self.revision`` (the checkout's commit), and
    implement :meth:`official_forward_loss` and :meth:`official_predict`.
    """

    #: the codebase (``momentkit.interop`` source name) and the momentkit label scale
    source: str = ""
    label_scale: float = 3.0
    grad_clip: float = 0.1
    lr: float = 1e-4
    weight_decay: float = 1e-4

    official: torch.nn.Module
    criterion: Any
    options: Any
    momentkit: Any
    stream_order: tuple[str, ...] = ("slowfast", "clip")
    eval_batch_size: int = 32
    revision: str = "unknown"
    #: the synthetic batch's sizes for the ``bench train`` / ``bench infer`` options left unset
    #: (``batch_size``, ``clips``, ``queries``...; the QVHighlights shape where absent), and
    #: what one ``bench infer`` query is (UniMD times videos)
    train_defaults: ClassVar[dict[str, int]] = {}
    infer_defaults: ClassVar[dict[str, int]] = {}
    query_unit: str = "queries"
    #: :func:`~momentkit.training.compile.compile_model` keywords momentkit's side runs with
    #: (``--compile``; ``None``: eager); the official side is never compiled
    compile_settings: dict[str, Any] | None = None
    #: the official side's precision when it differs from momentkit's (``--official-precision``;
    #: ``None``: the same as :attr:`precision`)
    official_precision: str | None = None
    _momentkit_call: Any = None  # momentkit's model as called, once built
    _first_call: bool = False  # the next momentkit call is the first compiled one

    def __init__(self, root: Path | None, model: str, device: torch.device, precision: str) -> None:
        self.root, self.model_name, self.device, self.precision = root, model, device, precision

    # ----------------------------------------------------------------------------- set-up
    def convert(self, options: Any, layout: str) -> None:
        """``self.momentkit``: the official model's weights written as its training script
        saves them and converted by :func:`momentkit.interop.convert.convert_checkpoint`."""
        from momentkit.interop.convert import convert_checkpoint
        from momentkit.interop.parity import write_official_checkpoint
        from momentkit.models import build_criterion
        from momentkit.training.config import OptimConfig
        from momentkit.training.optim import build_optimizer

        state = {k: v.detach().cpu() for k, v in self.official.state_dict().items()}
        with tempfile.TemporaryDirectory(prefix="momentkit-bench-official-") as tmp:
            path = Path(tmp) / "model.ckpt"
            write_official_checkpoint(path, state, options, layout=layout)
            converted = convert_checkpoint(path, self.source)
        self.momentkit = converted.model.to(self.device)
        self.momentkit_criterion = build_criterion(self.momentkit.config)
        cfg = OptimConfig(lr=self.lr, weight_decay=self.weight_decay, grad_clip=self.grad_clip)
        self.momentkit_optimizer = build_optimizer(self.momentkit, cfg)

    def official_optimizer(self) -> torch.optim.Optimizer:
        """AdamW as the release's ``setup_model`` builds it (PyTorch defaults otherwise)."""
        params = [p for p in self.official.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """momentkit's side: bf16 autocast on the device for ``--precision bf16``, else
        nothing."""
        return _autocast(self.precision, self.device)

    def official_autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The official side: as :meth:`autocast`, at ``--official-precision`` when given."""
        return _autocast(self.official_precision or self.precision, self.device)

    # --------------------------------------------------------------------------- batches
    def make_videos(self, batch: int, clips: int, tokens: int, seed: int = 0, **kwargs: Any) -> Any:
        """The synthetic videos this pair is timed on (default: QVHighlights-shaped)."""
        return make_videos(batch, clips, tokens, seed=seed, **kwargs)

    def describe_batch(self, videos: Videos) -> str:
        """``"32 videos: 24 of 75 clips + 8 of 60-74; queries of 8-32 tokens"``-like summary."""
        lengths, words = videos.lengths, [int(n) for n in videos.text_mask.sum(1)]
        longest = max(lengths)
        short = [n for n in lengths if n < longest]
        text = f"{len(lengths)} videos: {len(lengths) - len(short)} of {longest} clips"
        if short:
            text += f" + {len(short)} of {min(short)}-{max(short)}"
        return text + f"; queries of {min(words)}-{max(words)} tokens"

    def official_batch(self, videos: Videos, training: bool) -> Any:
        """The official model's inputs of ``videos``: ``(metas, batched)`` as the official
        ``start_end_collate`` returns them; for training, what :meth:`prepare_training` makes
        of ``batched`` (the ``(model_inputs, targets)`` on the device)."""
        batched = self.collated(videos)
        if training:
            return self.prepare_training(batched)
        metas = [
            {"qid": q, "query": f"query {q}", "vid": f"v{q}", "duration": float(d),
             "relevant_windows": w}
            for q, d, w in zip(videos.qids, videos.duration, videos.windows)
        ]  # fmt: skip
        return metas, batched

    def collated(self, videos: Videos) -> dict[str, Any]:
        """The batch dict of the QD-DETR-lineage ``start_end_collate``."""
        return {
            "query_feat": (videos.text, videos.text_mask.float()),
            "video_feat": (videos.video(self.stream_order), videos.video_mask.float()),
            "span_labels": [{"spans": s} for s in videos.spans()],
            "saliency_pos_labels": videos.pos,
            "saliency_neg_labels": videos.neg,
            "saliency_all_labels": videos.saliency,
        }

    def prepare_training(self, batched: dict[str, Any]) -> Any:
        """The official ``prepare_batch_inputs`` of a training batch (on the device)."""
        raise NotImplementedError

    def momentkit_batch(self, videos: Videos, training: bool) -> dict[str, Any]:
        """momentkit's batch of the same tensors: on the device for training, on the CPU for
        inference (``inference_loop`` moves each batch, as the official evaluation does)."""
        batch = videos.momentkit_batch(self.stream_order, self.label_scale)
        return move_to_device(batch, self.device) if training else batch

    # ---------------------------------------------------------------------------- training
    def official_forward_loss(self, batch: Any) -> torch.Tensor:
        """The official weighted total loss of one training forward (as its ``train.py``)."""
        raise NotImplementedError

    def weighted_total(self, loss_dict: dict[str, torch.Tensor]) -> torch.Tensor:
        """``sum(loss * weight_dict[name])`` over the official criterion's weighted losses,
        as every official ``train.py`` forms the loss it backpropagates."""
        weights = self.criterion.weight_dict
        return sum(loss_dict[k] * weights[k] for k in loss_dict if k in weights)

    def official_step(self, batch: Any) -> Phases:
        """One official training step: forward + loss, backward, clip + AdamW."""
        if not hasattr(self, "_official_optimizer"):
            self._official_optimizer = self.official_optimizer()
        self.official.train()
        params = list(self.official.parameters())
        with self.official_failures("a training step"):
            return self._timed_step(
                self._official_optimizer,
                lambda: self.official_forward_loss(batch),
                lambda: torch.nn.utils.clip_grad_norm_(params, self.grad_clip),
            )

    def guarded_official_predict(self, batches: Sequence[Any]) -> list[Any]:
        """:meth:`official_predict`, its failures one :class:`OfficialCodeError` line."""
        with self.official_failures("inference"):
            return self.official_predict(batches)

    @contextlib.contextmanager
    def official_failures(self, doing: str) -> Any:
        """An exception raised inside the official code becomes one
        :class:`~momentkit.benchmarks.official_env.OfficialCodeError` line naming the official
        file and line it came from, the error and (under bf16 autocast) the way round it."""
        from momentkit.benchmarks.official_env import OfficialCodeError

        try:
            yield
        except MomentkitError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of foreign code, reported
            where = official_frame(exc, self.root)
            message = (str(exc).strip().splitlines() or [""])[0]
            hint = ""
            if (self.official_precision or self.precision) == "bf16":
                hint = (
                    "; it ran under bf16 autocast, which the release may not support: time it "
                    "in fp32 with --official-precision fp32 (momentkit stays at --precision)"
                )
            raise OfficialCodeError(
                f"the official code ({self.root}) failed during {doing}{where}: "
                f"{type(exc).__name__}: {message}{hint}"
            ) from exc

    def momentkit_model(self) -> Any:
        """momentkit's model as its steps and predictions call it: compiled with
        :attr:`compile_settings` (``--compile``), else the model itself."""
        if self._momentkit_call is None:
            from momentkit.training.compile import compile_model

            settings = self.compile_settings
            self._momentkit_call = (
                self.momentkit
                if settings is None
                else compile_model(self.momentkit, self.device, **settings)
            )
            self._first_call = settings is not None
        return self._momentkit_call

    def momentkit_step(self, batch: dict[str, Any]) -> Phases:
        """One momentkit training step, as ``momentkit.training.trainer`` takes it."""
        from momentkit.training.optim import clip_gradients

        model, criterion = self.momentkit, self.momentkit_criterion
        call = self.momentkit_model()
        model.train()

        def forward_loss() -> torch.Tensor:
            with self.autocast():
                outputs = call(batch)
            return criterion(to_float32(outputs), batch)["loss"]

        phases = self._timed_step(
            self.momentkit_optimizer, forward_loss, lambda: clip_gradients(model, self.grad_clip)
        )
        self._report_compilation(phases.total)
        return phases

    def _report_compilation(self, seconds: float) -> None:
        """After the first compiled call (a warm-up round): print what it took."""
        if self._first_call:
            self._first_call = False
            print(f"torch.compile: momentkit's first compiled call took {seconds:.1f} s")

    def _timed_step(
        self,
        optimizer: Any,
        forward_loss: Callable[[], torch.Tensor],
        clip: Callable[[], Any],
    ) -> Phases:
        synchronize(self.device)
        c0, t0 = time.process_time(), time.perf_counter()
        loss = forward_loss()
        synchronize(self.device)
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        synchronize(self.device)
        t2 = time.perf_counter()
        clip()
        optimizer.step()
        synchronize(self.device)
        t3 = time.perf_counter()
        return Phases(t1 - t0, t2 - t1, t3 - t2, time.process_time() - c0)

    # ---------------------------------------------------------------------- the same function
    def official_outputs(self, batch: Any) -> dict[str, Any]:
        """The official model's evaluation-mode outputs of a training-form batch (default:
        the model called on the batch's inputs, as Lighthouse's and LD-DETR's code do)."""
        model_inputs, _ = batch
        return self.official(**model_inputs)

    def max_differences(self, videos: Videos) -> dict[str, float]:
        """Largest ``|official - momentkit|`` of the evaluation outputs (``pred_logits``,
        ``pred_spans``, ``saliency_scores`` on valid clips) on ``videos``: both sides must
        compute the same function (float rounding) for their times to compare."""
        self.official.eval()
        self.momentkit.eval()
        with torch.no_grad():
            with self.official_failures("the same-function check"):
                theirs = self.official_outputs(self.official_batch(videos, training=True))
            ours = self.momentkit(self.momentkit_batch(videos, training=True))
        valid = videos.video_mask.float()
        diffs = {}
        for key in ("pred_logits", "pred_spans", "saliency_scores"):
            a, b = ours[key].detach().float().cpu(), theirs[key].detach().float().cpu()
            if key == "saliency_scores":
                a, b = a * valid, b * valid
            diffs[key] = float((a - b).abs().max())
        return diffs

    # --------------------------------------------------------------------------- inference
    def official_predict(self, batches: Sequence[Any]) -> list[Any]:
        """The release's prediction rows (evaluation code path, no gradients) of ``batches``."""
        raise NotImplementedError

    def momentkit_predict(self, batches: Sequence[dict[str, Any]]) -> list[Any]:
        """momentkit's predictions (``momentkit predict``'s ``inference_loop``) of ``batches``."""
        from momentkit.modeling.postprocess import PostProcessor
        from momentkit.training.trainer import autocast_dtype, inference_loop

        post = PostProcessor(**getattr(self.momentkit.config, "postprocess", {}))
        dtype = autocast_dtype(self.precision, self.device)
        start = time.perf_counter()
        rows = inference_loop(self.momentkit_model(), batches, self.device, post, dtype)
        self._report_compilation(time.perf_counter() - start)
        return rows

    def describe(self) -> str:
        """One line: the official code and its revision (:func:`git_revision`: a commit,
        shortened to 10 digits and keeping ``+modified``, or a digest of its files)."""
        revision = self.revision
        if not revision.startswith("sha256:") and revision != "unknown":
            commit, modified, _ = revision.partition("+modified")
            revision = commit[:10] + modified
        return f"{self.source} checkout {self.root} @ {revision}"


def _no_progress(iterable: Any, *args: Any, **kwargs: Any) -> Any:
    return iterable


def silence_progress(root: Path) -> None:
    """The official modules' ``tqdm`` progress bars off (every imported module of the checkout
    ``root`` that uses one): a progress bar is not the code under test."""
    import sys

    prefix = str(Path(root).resolve())
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None) or ""
        if path.startswith(prefix) and hasattr(module, "tqdm"):
            module.tqdm = _no_progress


def git_revision(root: Path) -> str:
    """Which official code a run used: the checkout's commit, ``+modified`` appended when its
    tracked files differ from it; where ``root`` is not the top of a git work tree (a copy from
    ``git archive`` or a release tarball, or a folder inside another repository, whose commit
    would be that repository's), ``sha256:`` and the first 16 hex digits of a digest of its
    Python files (relative paths and contents, in path order), so two runs can still tell
    whether they timed the same code."""
    import subprocess

    root = Path(root).resolve()

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    commit = git("rev-parse", "HEAD") if top and Path(top).resolve() == root else None
    if commit:
        changed = git("status", "--porcelain", "--untracked-files=no")
        return commit + ("+modified" if changed else "")
    return python_files_digest(root)


def python_files_digest(root: Path) -> str:
    """``sha256:<16 hex>`` of the ``.py`` files under ``root`` (relative paths and contents,
    in path order; ``unknown`` when there are none)."""
    import hashlib

    digest = hashlib.sha256()
    files = sorted(p for p in Path(root).rglob("*.py") if p.is_file())
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return f"sha256:{digest.hexdigest()[:16]}" if files else "unknown"


def official_frame(exc: BaseException, root: Path | None) -> str:
    """``" at ld_detr/methods.py:242"``: the innermost frame of ``exc``'s traceback inside
    the checkout ``root`` (``""`` when none is)."""
    import traceback

    if root is None:
        return ""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = Path(frame.filename).resolve()
        if path.is_relative_to(root):
            return f" at {path.relative_to(root)}:{frame.lineno}"
    return ""


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` for ``"bf16"``, else nothing."""
    from momentkit.training.trainer import autocast_dtype

    dtype = autocast_dtype(precision, device)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def benchmark_device(device: str) -> torch.device:
    """``--device`` as a :class:`torch.device`; an unknown device or a CUDA device this machine
    does not have is refused (:func:`momentkit.benchmarks.guards.check_device`)."""
    from momentkit.benchmarks.guards import check_device

    return torch.device(check_device(device))


def build_pair(
    model: str,
    official_dir: str | Path,
    device: str = "cpu",
    precision: str = "fp32",
    official_precision: str | None = None,
) -> OfficialPair:
    """The :class:`OfficialPair` of ``model`` with the official code from ``official_dir``;
    the official side at ``official_precision`` (``None``: ``precision``, the same arithmetic
    on both sides)."""
    if model not in PAIRS:
        raise MomentkitError(
            f"--official-dir: no official code is wired for model '{model}'; "
            f"choose one of {', '.join(PAIRS)}"
        )
    for option, value in (("--precision", precision), ("--official-precision", official_precision)):
        if value is not None and value not in PRECISIONS:
            raise MomentkitError(f"{option} must be one of {', '.join(PRECISIONS)}")
    dev = benchmark_device(device)
    module = importlib.import_module(f"momentkit.benchmarks.{PAIRS[model]}")
    root = Path(official_dir).expanduser().resolve()
    torch.manual_seed(0)
    pair = module.PAIR(root, model, dev, precision)
    pair.official_precision = official_precision
    return pair


def configure_device(device: str, tf32: bool) -> None:
    """TF32 matmuls and convolutions on CUDA for ``--tf32`` (no effect on CPU)."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


__all__ = [
    "PAIRS", "PRECISIONS", "STREAM_DIMS", "TEXT_DIM", "OfficialPair", "Phases", "Ratio",
    "Timing", "Videos", "alternate", "benchmark_device", "build_pair", "configure_device",
    "device_name", "git_revision", "load_average", "make_videos", "python_files_digest", "ratio",
    "silence_progress", "synchronize", "threads", "timed",
]  # fmt: skip
