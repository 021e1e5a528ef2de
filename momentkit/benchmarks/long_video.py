"""``momentkit bench long-video``: clip trimming vs every clip on long synthetic videos.

On synthetic long videos (``momentkit.data.synth_long``, the ``long`` mode with the ``bam``
index stream) of each ``--lengths`` (default 10, 30 and 60 minutes), one trained
:class:`~momentkit.models.trimming.ClipTrimming` model answers every query twice
(:class:`~momentkit.inference.trimmed.TrimmedScorer`):

- **trimmed**: recursive clip selection, then the MR model on the kept clips (at most
  ``max_clips``);
- **every clip**: the same MR model on every clip through sliding windows of ``max_clips``
  clips (50 % overlap), the way long videos are read without a trimming model.

Per length and mode it reports the latency per query (one query per forward pass, after a
warm-up query; median and mean), the accuracy (``MR-R1@0.5``, ``MR-R1@0.7``, ``MR-mIoU`` of
the grounding evaluator), the clips the MR model saw, the share of the moments' clips among
them and the selection steps; then, after every timing, the peak resident memory one query
adds (:class:`PeakMemory`); it draws latency against video length for both modes
(``latency_vs_length.png``) and writes everything to ``long_video.json``. ``--threads``
defaults to 1: on a shared machine, more threads than free cores make timings erratic.

Without ``--checkpoint`` it first trains the model (``--train-steps`` AdamW steps on freshly
generated videos of ``--train-minutes``, preset ``trimming/synth_long`` with ``--set``
overrides) and saves it under ``OUT/model`` (a checkpoint ``momentkit search`` and
``Predictor.from_checkpoint`` read). Training and evaluation videos come from different
seeds of the same synthetic world.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from momentkit.cli.common import at_least, positive_float

if TYPE_CHECKING:
    import numpy as np

    from momentkit.data.loader import MomentItem
    from momentkit.data.synth_long import LongFeatureConfig, LongSample, LongVideoGenerator
    from momentkit.inference.trimmed import TrimmedScorer
    from momentkit.models import MomentModel
    from momentkit.models.trimming import ClipTrimming
    from momentkit.training.config import ExperimentConfig

HELP = "long videos: latency, memory and accuracy of clip trimming vs every clip (synthetic)"

PRESET = "trimming/synth_long"
#: the video streams of the benchmark, in the model's channel order (BAM last)
STREAMS = ("slowfast", "clip", "bam")
MODES = ("trimmed", "every_clip")
EVAL_SEED_OFFSET = 1_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Data, training, measurement and output options."""
    parser.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="a trained trimming model (save_pretrained directory); default: train one first",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench_long_video"), metavar="DIR")
    parser.add_argument(
        "--lengths",
        type=positive_float,
        nargs="+",
        default=[10.0, 30.0, 60.0],
        metavar="MIN",
        help="video lengths to measure, in minutes (default: 10 30 60)",
    )
    parser.add_argument(
        "--queries", type=at_least(1), default=30, help="queries per length (default: 30)"
    )
    parser.add_argument("--seed", type=at_least(0), default=0, help="seed of the data (default: 0)")
    parser.add_argument(
        "--threads",
        type=at_least(1),
        default=1,
        help="torch CPU threads for training and measuring (default: 1: stable timings on a "
        "shared machine)",
    )
    parser.add_argument(
        "--train-steps", type=at_least(1), default=300, help="optimiser steps without --checkpoint"
    )
    parser.add_argument(
        "--train-minutes",
        type=positive_float,
        nargs=2,
        default=[10.0, 20.0],
        metavar=("MIN", "MAX"),
        help="length range of the training videos in minutes (default: 10 20)",
    )
    parser.add_argument(
        "--batch-size", type=at_least(1), default=8, help="training videos per step"
    )
    parser.add_argument(
        "--mr-checkpoint",
        metavar="DIR",
        help="a DETR model trained on ordinary short videos of the same features (e.g. "
        "`momentkit train --model qd_detr --preset synth` on `momentkit synth` data, with "
        "--slowfast-dim 2304) to use as the MR model; it is frozen (only the selection is "
        "trained) unless --finetune-mr",
    )
    parser.add_argument(
        "--finetune-mr", action="store_true", help="also train the --mr-checkpoint model"
    )
    parser.add_argument(
        "--selection-lr",
        type=positive_float,
        help="learning rate of the selection network (default: the preset's optim.lr, 2e-4; "
        "measured: at 1e-3 the selection logits collapse to a constant within 150 steps)",
    )
    parser.add_argument(
        "--slowfast-dim",
        type=at_least(1),
        default=256,
        help="width of the SlowFast-like stream (default: 256; the standard benchmark: 2304)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help=f"override the preset {PRESET}, e.g. model.max_clips=64 optim.lr=3e-4",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


# --------------------------------------------------------------------------------------- data
@dataclass
class Query:
    """One evaluation query, featurised as the model reads it.

    Attributes:
        sample: the generated sample (annotation, streams, text).
        feats: ``(T, D)`` float32, the L2-normalised streams concatenated (no TEF).
        tokens: ``(N, 512)`` float32, the L2-normalised query tokens.
    """

    sample: LongSample
    feats: np.ndarray
    tokens: np.ndarray


def featurize(sample: LongSample, max_q_len: int) -> Query:
    """The model inputs of a sample, normalised like ``MomentDataset`` does."""
    import numpy as np

    from momentkit.features.streams import l2_normalize

    streams = [np.asarray(sample.streams[s], dtype=np.float32) for s in STREAMS]
    feats = np.concatenate([l2_normalize(s) for s in streams], axis=1)
    tokens = l2_normalize(np.asarray(sample.text["last_hidden_state"][:max_q_len], np.float32))
    return Query(sample, feats, tokens)


def training_item(query: Query, clip_len: float, rng: np.random.Generator) -> MomentItem:
    """A :class:`~momentkit.data.loader.MomentItem` with TEF and sampled targets."""
    from momentkit.data.loader import MomentItem, saliency_labels, span_targets
    from momentkit.features.tef import append_tef

    ann = query.sample.annotation
    num_clips = len(query.feats)
    item = MomentItem(ann, append_tef(query.feats), query.tokens, clip_len)
    item.spans = span_targets(ann.relevant_windows, num_clips, clip_len, rng)
    item.saliency_all, item.saliency_pos, item.saliency_neg = saliency_labels(
        ann, num_clips, clip_len, rng
    )
    return item


def training_batches(
    generator: LongVideoGenerator, batch_size: int, steps: int, cfg: ExperimentConfig
) -> Iterator[dict[str, Any]]:
    """``steps`` batches of fresh training videos (query ``step * batch_size + i``)."""
    import numpy as np

    from momentkit.data.loader import collate

    for step in range(steps):
        rng = np.random.default_rng((cfg.trainer.seed, step))
        items = [
            training_item(
                featurize(generator.sample("train", step * batch_size + i), cfg.data.max_q_len),
                cfg.data.clip_len,
                rng,
            )
            for i in range(batch_size)
        ]
        yield collate(items)


# ----------------------------------------------------------------------------------- training
def train_model(
    cfg: ExperimentConfig,
    generator: LongVideoGenerator,
    steps: int,
    batch_size: int,
    progress: bool = True,
    mr_init: MomentModel | None = None,
    freeze_mr: bool = False,
    selection_lr: float | None = None,
) -> tuple[ClipTrimming, list[dict[str, float]]]:
    """Train a trimming model on generated videos; returns it and the per-step losses.

    AdamW at a constant learning rate, in two parameter groups: the MR model at
    ``cfg.optim.lr`` and the selection network at ``selection_lr`` (default: the same); each
    group's gradient norm is clipped to ``cfg.optim.grad_clip`` on its own, so the MR model's
    large early gradients do not throttle the selection network's.

    ``mr_init`` (a model of ``cfg.model.mr``'s kind and size) initialises the MR model;
    ``freeze_mr`` keeps it fixed (only the selection network is trained).
    """
    import torch
    from tqdm.auto import tqdm

    from momentkit.models import build_criterion, build_model
    from momentkit.models.trimming import ClipTrimming
    from momentkit.training.seed import seed_everything
    from momentkit.utils.prefetch import prefetch

    seed_everything(cfg.trainer.seed)
    model = build_model(cfg.model)
    assert isinstance(model, ClipTrimming)
    if mr_init is not None:
        model.mr.load_state_dict(mr_init.state_dict())
    if freeze_mr:
        model.mr.requires_grad_(False)
    criterion = build_criterion(model.config)
    mr_ids = {id(p) for p in model.mr.parameters()}
    groups = [
        [p for p in model.parameters() if p.requires_grad and id(p) not in mr_ids],
        [p for p in model.mr.parameters() if p.requires_grad],
    ]
    lrs = [selection_lr or cfg.optim.lr, cfg.optim.lr]
    optim = torch.optim.AdamW(
        [{"params": g, "lr": lr} for g, lr in zip(groups, lrs) if g],
        weight_decay=cfg.optim.weight_decay,
    )
    model.train()
    log: list[dict[str, float]] = []
    batches = prefetch(training_batches(generator, batch_size, steps, cfg), depth=2)
    bar = tqdm(batches, total=steps, desc="train trimming", disable=not progress)
    for batch in bar:
        losses = criterion(model(batch), batch)
        optim.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if cfg.optim.grad_clip > 0:
            for group in groups:
                if group:
                    torch.nn.utils.clip_grad_norm_(group, cfg.optim.grad_clip)
        optim.step()
        row = {k: float(v.detach()) for k, v in losses.items()}
        log.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}")
    return model.eval(), log  # type: ignore[return-value]


# -------------------------------------------------------------------------------- measurement
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


class PeakMemory:
    """The peak resident memory a piece of work adds to the process.

    On Linux with glibc, allocations of 64 KiB or more are served by ``mmap`` (a fixed
    ``M_MMAP_THRESHOLD``), so freed tensors leave the process at once, and the kernel's peak
    (``VmHWM``) is reset through ``/proc/self/clear_refs`` before the work: the peak minus the
    resident memory before it is what the work needed. Elsewhere the process's lifetime peak
    is reported (``exact`` is then ``False``). The allocator setting changes timings, so
    measure memory after latency.
    """

    def __init__(self) -> None:
        self.libc: Any = None
        try:
            libc = ctypes.CDLL("libc.so.6")
            if libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024) == 1:
                self.libc = libc
        except (OSError, AttributeError):
            self.libc = None
        self.exact = self.libc is not None and self._reset()

    @staticmethod
    def _reset() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def measure(self, work: Callable[..., Any], *args: Any) -> float:
        """MB of resident memory ``work(*args)`` added at its peak."""
        gc.collect()
        if self.libc is not None:
            self.libc.malloc_trim(0)
        if self.exact:
            self._reset()
        base = rss_mb()
        work(*args)
        peak = rss_mb("VmHWM")
        return max(peak - base, 0.0) if self.exact else peak


def rss_mb(field: str = "VmRSS") -> float:
    """Current (``VmRSS``) or peak (``VmHWM``) resident memory in MB; the process peak from
    ``getrusage`` where ``/proc`` is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0)


@dataclass
class ModeResult:
    """What one mode measured on one video length: per-query latency (ms), predictions, clips
    seen by the MR model and the fraction of each query's moment clips among them."""

    latencies_ms: list[float]
    predictions: list[Any]
    kept_clips: list[int]
    moment_clips_kept: list[float]


def measure_mode(scorer: TrimmedScorer, queries: Sequence[Query]) -> ModeResult:
    """Answer every query alone (one forward pass each) after one warm-up query."""
    from momentkit.data.records import MomentPrediction

    first = queries[0]
    scorer.score(first.feats, [first.tokens], first.sample.annotation.duration)  # warm-up
    latencies, predictions, kept, recall = [], [], [], []
    for q in queries:
        ann = q.sample.annotation
        start = time.perf_counter()
        (result,) = scorer.score(q.feats, [q.tokens], ann.duration, top_k=10)
        latencies.append((time.perf_counter() - start) * 1000.0)
        windows = [[float(s), float(e), float(v)] for s, e, v in result.moments]
        predictions.append(MomentPrediction(ann.qid, ann.query, ann.vid, windows))
        kept.append(int(result.kept.sum()))
        recall.append(moment_clips_kept(result.kept, ann.relevant_windows, scorer.clip_len))
    return ModeResult(latencies, predictions, kept, recall)


def moment_clips_kept(
    kept: np.ndarray, windows: Sequence[Sequence[float]], clip_len: float
) -> float:
    """Fraction of the clips inside ``windows`` (seconds) that ``kept`` ``(T,)`` holds."""
    import numpy as np

    from momentkit.structures.spans import windows_to_clip_ids

    ids = [i for i in windows_to_clip_ids(windows, clip_len) if i < len(kept)]
    return float(np.mean(kept[ids])) if ids else 1.0


def accuracy(predictions: Sequence[Any], queries: Sequence[Query]) -> dict[str, float]:
    """``MR-R1@0.5``, ``MR-R1@0.7`` and ``MR-mIoU`` (grounding evaluator, percent)."""
    from momentkit.evaluation.grounding import GroundingEvaluator

    evaluator = GroundingEvaluator([q.sample.annotation for q in queries])
    evaluator.process(list(predictions))
    brief = evaluator.evaluate()["brief"]
    return {k: float(brief[k]) for k in ("MR-R1@0.5", "MR-R1@0.7", "MR-mIoU")}


def selection_steps(model: ClipTrimming, query: Query) -> int:
    """Selection steps the model runs on one query's video."""
    import torch

    from momentkit.features.tef import append_tef

    video = torch.from_numpy(append_tef(query.feats))[None]
    text = torch.from_numpy(query.tokens)[None]
    batch = {
        "video_feats": video,
        "video_mask": torch.ones(video.shape[:2], dtype=torch.bool),
        "text_feats": text,
        "text_mask": torch.ones(text.shape[:2], dtype=torch.bool),
    }
    with torch.inference_mode():
        return len(model.select(batch).steps)


# ------------------------------------------------------------------------------------- report
def plot_latency(report: dict[str, Any], path: Path) -> Path:
    """Latency per query (median) against video length for both modes, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["lengths"]
    minutes = [r["minutes"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    labels = {"trimmed": "clip trimming (selected clips)", "every_clip": "every clip (windows)"}
    for mode, marker in zip(MODES, ("o", "s")):
        ax.plot(
            minutes,
            [r[mode]["latency_ms_median"] for r in rows],
            marker=marker,
            label=labels[mode],
        )
    for r in rows:
        ax.annotate(
            f"x{r['speedup']:.1f}",
            (r["minutes"], r["trimmed"]["latency_ms_median"]),
            textcoords="offset points",
            xytext=(0, 8),
            ha="center",
            fontsize=8,
        )
    ax.set_xlabel("video length (minutes)")
    ax.set_ylabel("latency per query (ms, median)")
    ax.set_title("Long videos: moment retrieval latency")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def print_report(report: dict[str, Any]) -> None:
    """A table of every length and mode."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Long videos: clip trimming vs every clip")
    columns = ("length", "mode", "ms/query", "peak MB", "R1@0.5", "R1@0.7", "mIoU", "clips")
    for name in (*columns, "moment kept"):
        table.add_column(name, justify="right", no_wrap=True)
    for r in report["lengths"]:
        for mode in MODES:
            m = r[mode]
            table.add_row(
                f"{r['minutes']:g} min" if mode == MODES[0] else "",
                mode.replace("_", " "),
                f"{m['latency_ms_median']:.1f}",
                f"{m['peak_extra_mb']:.0f}",
                f"{m['MR-R1@0.5']:.2f}",
                f"{m['MR-R1@0.7']:.2f}",
                f"{m['MR-mIoU']:.2f}",
                f"{m['kept_clips_mean']:.0f}/{r['clips']}",
                f"{100 * m['moment_clips_kept']:.0f} %",
            )
        table.add_row("", "speed-up", f"x{r['speedup']:.1f}", *[""] * 6)
    Console(width=max(Console().width, 110)).print(table)


# ------------------------------------------------------------------------------------------ run
def run(args: argparse.Namespace) -> int:
    """Train (or load) a trimming model, measure both modes per length, write JSON + PNG."""
    import torch

    from momentkit.benchmarks.guards import refuse_outputs_over_inputs
    from momentkit.data.synth_long import LongFeatureConfig
    from momentkit.utils.errors import MomentkitError
    from momentkit.utils.io import write_json

    if args.queries < 1 or any(m <= 0 for m in args.lengths):
        raise MomentkitError("--queries must be >= 1 and --lengths positive minutes")
    refuse_outputs_over_inputs(
        [("--out", p) for p in output_files(args)],
        folders=[("--checkpoint", args.checkpoint), ("--mr-checkpoint", args.mr_checkpoint)],
    )
    torch.set_num_threads(max(1, args.threads))
    features = LongFeatureConfig(slowfast_dim=args.slowfast_dim, float16=True)
    cfg = benchmark_config(features, args.overrides)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "features": {"slowfast_dim": features.slowfast_dim, "bam": features.bam_dim},
        "threads": torch.get_num_threads(),
    }
    model = obtain_model(args, cfg, features, report)
    report["model"] = model.config.to_dict()
    rows = []
    for minutes in args.lengths:
        queries = evaluation_queries(features, minutes, args.queries, args.seed, cfg)
        rows.append(measure_length(model, queries, minutes, cfg.data.clip_len))
    # memory last: the allocator setting it needs changes timings
    memory = PeakMemory()
    for row in rows:
        (query,) = evaluation_queries(features, row["minutes"], 1, args.seed, cfg)
        for mode in MODES:
            scorer = mode_scorer(model, mode, cfg.data.clip_len)
            row[mode]["peak_extra_mb"] = memory.measure(
                scorer.score, query.feats, [query.tokens], query.sample.annotation.duration
            )
            row[mode]["peak_is_per_query"] = memory.exact
    report["lengths"] = rows
    report["arguments"] = {
        k: str(v) if isinstance(v, Path) else v
        for k, v in vars(args).items()
        if not k.startswith("_") and k not in ("command", "benchmark")
    }
    report["plot"] = str(plot_latency(report, out / "latency_vs_length.png"))
    write_json(out / "long_video.json", report)
    print_report(report)
    print(f"wrote {out / 'long_video.json'} and {report['plot']}")
    return 0


def output_files(args: argparse.Namespace) -> list[Path]:
    """The files the benchmark writes under ``--out``: the report, the plot and, when it
    trains (no ``--checkpoint``), the model's files under ``OUT/model``."""
    out = Path(args.out)
    files = [out / "long_video.json", out / "latency_vs_length.png"]
    if not args.checkpoint:
        model = out / "model"
        files += [model / name for name in ("config.json", "model.safetensors", "experiment.json")]
    return files


def benchmark_config(features: LongFeatureConfig, overrides: Sequence[str]) -> ExperimentConfig:
    """The preset with the model's input widths set from ``features`` and ``overrides``."""
    from momentkit.data.synth import CLIP_DIM, TEXT_DIM
    from momentkit.features.tef import TEF_DIM
    from momentkit.training.config import build_config

    video_dim = features.slowfast_dim + CLIP_DIM + features.bam_dim + TEF_DIM
    dims = [f"model.index_dim={features.bam_dim}", f"model.video_dim={video_dim}"]
    return build_config("trimming", PRESET, [*dims, f"model.text_dim={TEXT_DIM}", *overrides])


def obtain_model(
    args: argparse.Namespace,
    cfg: ExperimentConfig,
    features: LongFeatureConfig,
    report: dict[str, Any],
) -> ClipTrimming:
    """``--checkpoint``'s model, or a model trained as the arguments say (saved under
    ``OUT/model``, its training summary added to ``report``)."""
    from momentkit.data.synth import SynthConfig
    from momentkit.data.synth_long import LongVideoGenerator
    from momentkit.models import MomentModel
    from momentkit.models.trimming import ClipTrimming
    from momentkit.utils.errors import MomentkitError
    from momentkit.utils.io import write_json

    if args.checkpoint:
        model = MomentModel.from_pretrained(args.checkpoint)
        if not isinstance(model, ClipTrimming):
            raise MomentkitError(
                f"{args.checkpoint}: holds a '{model.config.name}' model, not a trimming model"
            )
        report["checkpoint"] = str(args.checkpoint)
        return model.eval()  # type: ignore[return-value]
    lo, hi = (60.0 * m for m in args.train_minutes)
    synth = SynthConfig(
        num_train=0, num_val=0, seed=args.seed, mode="long", min_duration=lo, max_duration=hi
    )
    mr_init = plug_in_mr(cfg, args.mr_checkpoint, args.finetune_mr) if args.mr_checkpoint else None
    start = time.perf_counter()
    model, log = train_model(
        cfg,
        LongVideoGenerator(synth, features),
        args.train_steps,
        args.batch_size,
        progress=not args.no_progress,
        mr_init=mr_init,
        freeze_mr=mr_init is not None and not args.finetune_mr,
        selection_lr=args.selection_lr,
    )
    model.save_pretrained(args.out / "model")
    write_json(args.out / "model" / "experiment.json", training_experiment(cfg))
    report["training"] = {
        "steps": args.train_steps,
        "batch_size": args.batch_size,
        "selection_lr": args.selection_lr,
        "minutes": list(args.train_minutes),
        "mr_checkpoint": args.mr_checkpoint,
        "seconds": time.perf_counter() - start,
        "first_loss": log[0] if log else None,
        "last_loss": log[-1] if log else None,
    }
    return model


def evaluation_queries(
    features: LongFeatureConfig, minutes: float, count: int, seed: int, cfg: ExperimentConfig
) -> list[Query]:
    """The first ``count`` evaluation queries on videos of exactly ``minutes`` minutes."""
    from momentkit.data.synth import SynthConfig
    from momentkit.data.synth_long import LongVideoGenerator

    seconds = 60.0 * minutes
    synth = SynthConfig(
        num_train=0,
        num_val=0,
        seed=seed + EVAL_SEED_OFFSET,
        mode="long",
        min_duration=seconds,
        max_duration=seconds,
    )
    generator = LongVideoGenerator(synth, features)
    return [featurize(generator.sample("val", i), cfg.data.max_q_len) for i in range(count)]


def mode_scorer(model: ClipTrimming, mode: str, clip_len: float) -> TrimmedScorer:
    """The scorer of ``mode`` (one query per forward pass)."""
    from momentkit.inference.trimmed import TrimmedScorer

    return TrimmedScorer(model, None, STREAMS, clip_len, trim=mode == "trimmed", batch_size=1)


def measure_length(
    model: ClipTrimming, queries: Sequence[Query], minutes: float, clip_len: float
) -> dict[str, Any]:
    """Latency, accuracy and clips seen of both modes on one video length."""
    import numpy as np

    row: dict[str, Any] = {
        "minutes": minutes,
        "clips": len(queries[0].feats),
        "queries": len(queries),
        "moment_share": float(np.mean([moment_share_of(q) for q in queries])),
    }
    for mode in MODES:
        result = measure_mode(mode_scorer(model, mode, clip_len), queries)
        row[mode] = {
            "latency_ms_median": statistics.median(result.latencies_ms),
            "latency_ms_mean": statistics.fmean(result.latencies_ms),
            "kept_clips_mean": statistics.fmean(result.kept_clips),
            "moment_clips_kept": statistics.fmean(result.moment_clips_kept),
            **accuracy(result.predictions, queries),
        }
    row["trimmed"]["selection_steps_mean"] = statistics.fmean(
        selection_steps(model, q) for q in queries
    )
    every, trimmed = row["every_clip"], row["trimmed"]
    row["speedup"] = every["latency_ms_median"] / trimmed["latency_ms_median"]
    row["r1_at_0.5_gap"] = trimmed["MR-R1@0.5"] - every["MR-R1@0.5"]
    return row


def plug_in_mr(cfg: ExperimentConfig, checkpoint: str | Path, finetune: bool) -> MomentModel:
    """Load a pretrained MR model and set ``cfg.model`` to use it as the trimming model's MR
    model: its config, fed the clip features + TEF of the kept clips only; unless
    ``finetune``, its loss weight and training windows are turned off (it stays frozen).

    Raises:
        MomentkitError: the checkpoint's input width differs from the benchmark's features.
    """
    from momentkit.data.synth import CLIP_DIM
    from momentkit.models import MomentModel
    from momentkit.training.pipeline import DERIVED_MODEL_KEYS
    from momentkit.utils.errors import MomentkitError

    mr = MomentModel.from_pretrained(checkpoint)
    model = cfg.model
    model.mr = {k: v for k, v in mr.config.to_dict().items() if k not in DERIVED_MODEL_KEYS}
    model.mr_reads_index = False
    model.use_cut_channels = False
    if not finetune:
        model.loss.weights["loss_mr"] = 0.0
        model.window_prob = 0.0
    want = model.mr_config().video_dim
    got = getattr(mr.config, "video_dim", want)
    if got != want:
        slowfast = got - model.tef_dim - CLIP_DIM
        raise MomentkitError(
            f"{checkpoint}: the MR model takes {got} video channels but the benchmark's clip "
            f"features + TEF give {want}; pass --slowfast-dim {slowfast} (2304 for models "
            "trained on `momentkit synth` data)"
        )
    model.validate()
    return mr


def moment_share_of(query: Query) -> float:
    """Fraction of the query's video inside its relevant windows."""
    from momentkit.data.synth_long import moment_share

    return moment_share(query.sample.annotation)


def training_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
    """``experiment.json`` of the trained model: the config, with the synthetic streams as
    its feature folders (so ``Predictor.from_checkpoint`` knows the stream order)."""
    obj = cfg.to_dict()
    obj["data"]["video_features"] = [f"features/{s}" for s in STREAMS]
    obj["data"]["text_features"] = "features/clip_text"
    return json.loads(json.dumps(obj))


__all__ = [
    "HELP",
    "Query",
    "add_arguments",
    "featurize",
    "PeakMemory",
    "measure_length",
    "measure_mode",
    "plot_latency",
    "run",
    "train_model",
]
