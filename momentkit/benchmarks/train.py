"""``momentkit bench train``: training-step speed and whether data loading keeps up.

At the QVHighlights shape (batch 32, 75 clips of SlowFast 2304 + CLIP 512 + 2 TEF channels,
32 query tokens of 512) it reports:

- the step time (forward + loss + backward + AdamW; median over ``--steps`` after warm-up) and
  samples per second, on one fixed in-memory batch ("pure compute"), and the CPU time of a step
  (all threads; the figure to compare on a machine that other jobs keep busy, where wall time
  also counts the waits for a core);
- the time of an epoch over ``--items`` feature files read through the real input pipeline
  (``MomentDataset`` + ``collate`` + the trainer's background prefetch), once from a ``.npz``
  directory and once from the packed memory-mapped store, as a ratio to an epoch of pure
  compute (the same steps on the fixed batch), the three alternating for ``--epoch-rounds``
  rounds (median ratio and range).

With ``--official-dir DIR`` it instead times the model's official implementation, imported
from a checkout of its repository (line/lighthouse for ``moment_detr`` and ``qd_detr``,
qingchen239/ld-detr, snailma0229/MS-DETR, yingsen1/UniMD), against momentkit on the identical
batch and the identical weights (the official model's, converted by ``momentkit.interop``:
momentkit's ``official`` variant), alternating one official and one momentkit step, and prints
both step times by phase and the ratio (median and range over the rounds); see
:mod:`momentkit.benchmarks.official`. The batch is QVHighlights-shaped: every 4th video has
``--clips`` - 15 to ``--clips`` - 1 clips, queries have 8 to ``--tokens`` tokens (``unimd``:
the release's Charades-STA batch instead, 2 videos with both tasks' queries; see
:mod:`momentkit.benchmarks.official_unimd`).

With ``--compile`` (and no ``--official-dir``) it times ``torch.compile`` instead: the
compiled model against an eager copy with the same weights, alternating on the same batch, the
compilation (first compiled step), graph breaks and the recompilations a batch of other lengths
causes reported apart (:func:`compare_compiled`); with ``--official-dir`` it compiles momentkit's
side of the comparison.

Example::

    momentkit bench train --model qd_detr --threads 2
    momentkit bench train --model qd_detr --official-dir ~/src/lighthouse --items 0
    momentkit bench train --model moment_detr --compile --threads 1 --steps 6 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from momentkit.cli.common import add_set_argument, at_least

HELP = "training step time and data-loading overhead at the QVHighlights shape"

STREAMS = {"slowfast": 2304, "clip": 512}
TEXT_DIM = 512
#: the batch shape where ``--batch-size`` / ``--clips`` / ``--tokens`` are not given (an
#: official pair may give its own: ``train_defaults``)
SHAPE = {"batch_size": 32, "clips": 75, "tokens": 32}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Model, sizes and repetitions."""
    parser.add_argument("--model", default="moment_detr", help="registered model name")
    parser.add_argument(
        "--batch-size", type=at_least(1), default=None, help="default 32 (unimd: 2)"
    )
    parser.add_argument(
        "--clips",
        type=at_least(1),
        default=None,
        help="clips per video (default 75; unimd: 180 steps)",
    )
    parser.add_argument(
        "--tokens", type=at_least(1), default=None, help="tokens per query (default 32)"
    )
    parser.add_argument(
        "--steps", type=at_least(1), default=15, help="timed steps (median reported)"
    )
    parser.add_argument("--warmup", type=at_least(0), default=3, help="untimed steps first")
    parser.add_argument(
        "--items",
        type=at_least(0),
        default=320,
        help="feature files in the epoch test (0 skips it)",
    )
    parser.add_argument(
        "--epoch-rounds",
        type=at_least(1),
        default=3,
        help="rounds of the epoch test (compute, npz, packed epochs alternating; median ratio)",
    )
    parser.add_argument("--threads", type=at_least(1), default=2, help="torch intra-op threads")
    add_set_argument(parser, "model config overrides, e.g. --set hidden_dim=128")
    parser.add_argument("--json", dest="json_out", help="also write the figures to this file")
    add_official_arguments(parser)
    add_compile_arguments(parser)


def add_compile_arguments(parser: argparse.ArgumentParser) -> None:
    """``--compile``, ``--compile-scope``, ``--compile-dynamic`` (shared with ``infer``)."""
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile momentkit's model (eager where compiling fails); bench train "
        "without --official-dir times compiled against eager steps, alternating, same batch",
    )
    parser.add_argument(
        "--compile-scope",
        choices=("model", "layers"),
        default="model",
        help="compile the whole forward (default) or only each transformer layer",
    )
    parser.add_argument(
        "--compile-dynamic",
        action="store_true",
        help="compile with dynamic shapes from the start (torch.compile(dynamic=True))",
    )


def add_official_arguments(parser: argparse.ArgumentParser) -> None:
    """``--official-dir``, ``--device``, ``--precision``, ``--tf32`` (shared with ``infer``)."""
    parser.add_argument(
        "--official-dir",
        metavar="DIR",
        help="checkout of the model's official repository: time it against momentkit, "
        "alternating, on the same batch and weights",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: both sides' forward under bf16 autocast (losses in float32)",
    )
    parser.add_argument(
        "--official-precision",
        choices=("fp32", "bf16"),
        default=None,
        help="the official side's precision when it should differ from --precision (e.g. "
        "momentkit in bf16 against the release as it runs, fp32): different arithmetic, "
        "said in the output",
    )
    parser.add_argument(
        "--tf32", action="store_true", help="allow TF32 matmuls and convolutions (CUDA only)"
    )
    parser.add_argument(
        "--flops",
        action="store_true",
        help="also count each side's matmul/convolution/attention FLOPs and time this "
        "machine's peak matmul rate: the lowest ratio the same arithmetic can reach",
    )


def fill_defaults(args: argparse.Namespace, *defaults: dict[str, Any]) -> None:
    """Set each option left ``None`` to its value in the first of ``defaults`` holding it."""
    for key in {k for table in defaults for k in table}:
        if getattr(args, key, None) is None:
            setattr(args, key, next(table[key] for table in defaults if key in table))


def _model_and_criterion(name: str, overrides: list[str], video_dim: int) -> tuple[Any, Any]:
    import yaml

    from momentkit.models import build_criterion, build_model

    config: dict[str, Any] = {"name": name, "video_dim": video_dim, "text_dim": TEXT_DIM}
    for item in overrides:
        key, _, text = item.partition("=")
        config[key] = yaml.safe_load(text)
    model = build_model(config).train()
    return model, build_criterion(model.config)


def _step(
    model: Any, criterion: Any, optimizer: Any, batch: dict[str, Any], dtype: Any = None
) -> None:
    """One training step as the trainer takes it: the batch moved to the model's device, the
    forward under ``dtype`` autocast (``None``: float32), the loss in float32; returns when
    the device is done."""
    import torch

    from momentkit.benchmarks.official_timing import synchronize
    from momentkit.training.trainer import move_to_device, to_float32

    device = next(model.parameters()).device
    batch = move_to_device(batch, device)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        outputs = model(batch)
    loss = criterion(to_float32(outputs), batch)["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    synchronize(device)


def _write_features(root: Path, items: int, clips: int, tokens: int) -> list[Any]:
    """``items`` videos of every stream + one query each, in the ``.npz`` layout."""
    import numpy as np

    from momentkit.data.records import MomentAnnotation

    rng = np.random.default_rng(0)
    annotations = []
    for stream in [*STREAMS, "text"]:
        (root / stream).mkdir(parents=True)
    for i in range(items):
        vid = f"v{i:05d}"
        for stream, dim in STREAMS.items():
            np.savez(
                root / stream / f"{vid}.npz", features=rng.standard_normal((clips, dim), np.float32)
            )
        np.savez(
            root / "text" / f"qid{i}.npz",
            last_hidden_state=rng.standard_normal((tokens, TEXT_DIM), np.float32),
            pooler_output=rng.standard_normal(TEXT_DIM, np.float32),
        )
        span = min(10, clips)  # a 20 s moment, or the whole of a shorter video
        start = int(rng.integers(0, clips - span + 1))
        ids = list(range(start, start + span))
        annotations.append(
            MomentAnnotation(
                i, "query", vid, clips * 2.0, [[start * 2.0, (start + span) * 2.0]], ids,
                [[int(x) for x in rng.integers(0, 5, 3)] for _ in ids],
            )
        )  # fmt: skip
    return annotations


def _epoch_seconds(
    model: Any, criterion: Any, optimizer: Any, dataset: Any, batch_size: int, dtype: Any
) -> tuple[float, int]:
    from torch.utils.data import DataLoader

    from momentkit.data.loader import collate
    from momentkit.utils.prefetch import prefetch

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    start, steps = time.perf_counter(), 0
    for batch in prefetch(loader, depth=2):
        _step(model, criterion, optimizer, batch, dtype)
        steps += 1
    return time.perf_counter() - start, steps


def _compute_epoch_seconds(
    model: Any, criterion: Any, optimizer: Any, batch: dict[str, Any], steps: int, dtype: Any
) -> float:
    """``steps`` steps on the fixed in-memory ``batch``: an epoch of pure compute."""
    start = time.perf_counter()
    for _ in range(steps):
        _step(model, criterion, optimizer, batch, dtype)
    return time.perf_counter() - start


def _epoch_figures(
    model: Any,
    criterion: Any,
    optimizer: Any,
    datasets: dict[str, Any],
    fixed: dict[str, Any],
    batch_size: int,
    dtype: Any,
    rounds: int,
) -> dict[str, Any]:
    """Epochs through each store's input pipeline and epochs of pure compute (the same number
    of steps on the fixed batch), alternating compute, npz, packed, compute, ... for
    ``rounds`` rounds: ``epoch_<store>_ratio`` is the median over the rounds of the store's
    epoch over that round's compute epoch (``_range``: lowest and highest), so a machine whose
    speed drifts affects both sides of each ratio alike."""
    from momentkit.benchmarks.official_timing import ratio

    times: dict[str, list[float]] = {"compute": [], **{label: [] for label in datasets}}
    for _ in range(rounds):
        steps = 0
        for label, dataset in datasets.items():
            seconds, steps = _epoch_seconds(model, criterion, optimizer, dataset, batch_size, dtype)
            times[label].append(seconds)
        times["compute"].append(
            _compute_epoch_seconds(model, criterion, optimizer, fixed, steps, dtype)
        )
    figures: dict[str, Any] = {
        "epoch_rounds": rounds,
        "epoch_compute_s": round(statistics.median(times["compute"]), 2),
    }
    for label in datasets:
        r = ratio(times[label], times["compute"])
        figures[f"epoch_{label}_s"] = round(statistics.median(times[label]), 2)
        figures[f"epoch_{label}_ratio"] = round(r.median, 3)
        figures[f"epoch_{label}_ratio_range"] = [round(r.low, 3), round(r.high, 3)]
    return figures


def run(args: argparse.Namespace) -> int:
    """Measure and print the figures."""
    from momentkit.benchmarks.guards import refuse_outputs_over_inputs

    refuse_outputs_over_inputs(
        [("--json", args.json_out)], folders=[("--official-dir", args.official_dir)]
    )
    if args.official_dir:
        from momentkit.benchmarks.official_train import compare_training

        return compare_training(args)
    refuse_official_precision_alone(args)
    fill_defaults(args, SHAPE)
    if args.compile:
        return compare_compiled(args)
    import torch
    from rich.console import Console
    from rich.table import Table

    from momentkit.benchmarks.official import benchmark_device
    from momentkit.benchmarks.official_timing import device_name
    from momentkit.data.loader import MomentDataset, collate
    from momentkit.features import open_feature_store, pack_features
    from momentkit.modeling.linear import onednn_linear_enabled
    from momentkit.training.trainer import autocast_dtype, move_to_device

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = benchmark_device(args.device)
    dtype = autocast_dtype(args.precision, device)
    video_dim = sum(STREAMS.values()) + 2
    model, criterion = _model_and_criterion(args.model, args.overrides, video_dim)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    results: dict[str, Any] = {
        "model": args.model,
        "device": str(device),
        "device_name": device_name(device),
        "precision": args.precision,
        "threads": args.threads,
        "onednn_linear": onednn_linear_enabled(),  # momentkit's float32 linear layers
        "batch_size": args.batch_size,
        "shape": f"{args.clips} clips x {video_dim}, {args.tokens} tokens x {TEXT_DIM}",
    }
    with tempfile.TemporaryDirectory(prefix="momentkit-bench-train-") as tmp:
        root = Path(tmp)
        items = max(args.items, args.batch_size)
        annotations = _write_features(root / "npz", items, args.clips, args.tokens)
        sizes = {"max_v_len": args.clips, "max_q_len": args.tokens}
        npz_streams = [root / "npz" / s for s in STREAMS]
        npz_set = MomentDataset(annotations, npz_streams, root / "npz" / "text", **sizes)
        fixed = move_to_device(collate([npz_set[i] for i in range(args.batch_size)]), device)

        times, cpu_times = [], []
        for i in range(args.warmup + args.steps):
            start, cpu_start = time.perf_counter(), time.process_time()
            _step(model, criterion, optimizer, fixed, dtype)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
        step = statistics.median(times)
        results.update(
            step_s=round(step, 4),
            step_cpu_s=round(statistics.median(cpu_times), 4),
            samples_per_s=round(args.batch_size / step, 1),
        )
        if args.flops:
            from momentkit.benchmarks.arithmetic import (
                arithmetic_report,
                count_flops,
                peak_matmul_rate,
            )

            flops = count_flops(lambda: _step(model, criterion, optimizer, fixed, dtype))
            peak = peak_matmul_rate(device, dtype=dtype)
            results["arithmetic"] = arithmetic_report(
                {"momentkit": flops}, {"momentkit": step}, peak
            )

        if args.items:
            for stream in [*STREAMS, "text"]:
                source = open_feature_store(root / "npz" / stream)
                pack_features(source, root / "packed" / stream, progress=False)
            packed_streams = [root / "packed" / s for s in STREAMS]
            packed_set = MomentDataset(
                annotations, packed_streams, root / "packed" / "text", **sizes
            )
            results.update(
                _epoch_figures(
                    model, criterion, optimizer, {"npz": npz_set, "packed": packed_set},
                    fixed, args.batch_size, dtype, args.epoch_rounds,
                )
            )  # fmt: skip

    title = f"momentkit bench train: {args.model} ({results['shape']}; {device}, {args.precision})"
    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("step (median, s)", f"{results['step_s']:.3f}")
    table.add_row("step CPU time (median, s)", f"{results['step_cpu_s']:.3f}")
    table.add_row("samples / s", f"{results['samples_per_s']:.1f}")
    if args.items:
        table.add_row("epoch, pure compute (s)", f"{results['epoch_compute_s']:.2f}")
        for label in ("npz", "packed"):
            low, high = results[f"epoch_{label}_ratio_range"]
            table.add_row(
                f"epoch from {label} (s, x compute)",
                f"{results[f'epoch_{label}_s']:.2f} ({results[f'epoch_{label}_ratio']:.2f}x, "
                f"{low:.2f}-{high:.2f} over {results['epoch_rounds']} rounds)",
            )
    Console().print(table)
    if "arithmetic" in results:
        from momentkit.benchmarks.arithmetic import describe

        print(describe(results["arithmetic"]))
    if args.json_out:
        from momentkit.utils.io import write_json

        write_json(args.json_out, results)
    print(json.dumps(results))
    return 0


def refuse_official_precision_alone(args: argparse.Namespace) -> None:
    """``--official-precision`` sets the official side: without ``--official-dir`` a usage
    error (it would be ignored)."""
    if getattr(args, "official_precision", None) and not args.official_dir:
        from momentkit.utils.errors import MomentkitError

        raise MomentkitError(
            "--official-precision needs --official-dir (it sets the official side's precision; "
            "momentkit's is --precision)"
        )


def official_precision_note(precision: str, official_precision: str | None) -> str | None:
    """The printed warning when the two sides run at different precisions, else ``None``."""
    if official_precision is None or official_precision == precision:
        return None
    return (
        f"different arithmetic: momentkit in {precision}, the official code in "
        f"{official_precision}; the ratio mixes the precision's gain with the implementation's "
        "(run both at one --precision for the implementation alone)"
    )


def compile_settings(args: argparse.Namespace) -> dict[str, Any] | None:
    """The :func:`~momentkit.training.compile.compile_model` keywords of ``--compile``
    (``None`` without it)."""
    if not getattr(args, "compile", False):
        return None
    return {"scope": args.compile_scope, "dynamic": True if args.compile_dynamic else None}


def _dynamo_counts() -> dict[str, int]:
    """Graphs compiled, graph breaks and recompilations so far (dynamo's counters)."""
    from torch._dynamo.utils import counters

    return {
        "graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "recompiles": int(sum(counters["recompiles"].values())),
    }


def compare_compiled(args: argparse.Namespace) -> int:
    """``--compile`` without ``--official-dir``: the compiled model against the eager one.

    Two copies of the model with identical weights and optimisers take the same steps on the
    same QVHighlights-shaped batch (:func:`~momentkit.benchmarks.official.make_videos`: every
    4th video shorter, queries of 8 to ``--tokens`` tokens), each step seeded alike so both
    draw the same dropout masks; eager and compiled alternate (A B) after the first compiled
    step, which is timed apart (the compilation). A second batch of other lengths is then
    stepped once, compiled, to count the recompilations new sizes cause.
    """
    import copy

    import torch
    from rich.console import Console
    from rich.table import Table

    from momentkit.benchmarks.official import load_average, make_videos, ratio, threads
    from momentkit.training.compile import compile_model, compile_unavailable
    from momentkit.training.config import OptimConfig
    from momentkit.training.optim import build_optimizer, clip_gradients

    if args.device != "cpu" or args.precision != "fp32":
        from momentkit.utils.errors import MomentkitError

        raise MomentkitError(
            "--compile without --official-dir compares compiled and eager steps on the CPU in "
            "fp32: drop --device/--precision, or add --official-dir to time the compiled model "
            "there against the official code"
        )
    settings = compile_settings(args) or {}
    video_dim = sum(STREAMS.values()) + 2
    order = tuple(STREAMS)
    with threads(args.threads):
        torch.manual_seed(0)
        model, criterion = _model_and_criterion(args.model, args.overrides, video_dim)
        twin = copy.deepcopy(model)
        batch = make_videos(args.batch_size, args.clips, args.tokens, seed=0).momentkit_batch(order)
        other = make_videos(args.batch_size, args.clips, args.tokens, seed=1).momentkit_batch(order)
        compiled = compile_model(twin, "cpu", **settings)
        fallback = compile_unavailable("cpu") is not None

        def stepper(module: Any, forward: Any) -> Any:
            optimizer = build_optimizer(module, OptimConfig())

            def step(b: dict[str, Any], seed: int) -> tuple[float, float, float]:
                torch.manual_seed(seed)  # the same dropout masks on both sides
                cpu, start = time.process_time(), time.perf_counter()
                loss = criterion(forward(b), b)["loss"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                clip_gradients(module, OptimConfig().grad_clip)
                optimizer.step()
                return time.perf_counter() - start, time.process_time() - cpu, float(loss.detach())

            return step

        eager_step, compiled_step = stepper(model, model), stepper(twin, compiled)
        before = _dynamo_counts()
        first = compiled_step(batch, 0)  # compiles
        compiled_counts = {k: v - before[k] for k, v in _dynamo_counts().items()}
        losses = [(eager_step(batch, 0)[2], first[2])]
        load_before = load_average()
        times: dict[str, list[tuple[float, float, float]]] = {"eager": [], "compiled": []}
        for i in range(1, 1 + args.warmup + args.steps):
            pair = {"eager": eager_step(batch, i), "compiled": compiled_step(batch, i)}
            losses.append((pair["eager"][2], pair["compiled"][2]))
            if i > args.warmup:
                for side, result in pair.items():
                    times[side].append(result)
        load_after = load_average()
        seed = 1 + args.warmup + args.steps
        before = _dynamo_counts()
        new_shape = compiled_step(other, seed)
        new_shape_counts = {k: v - before[k] for k, v in _dynamo_counts().items()}
        losses.append((eager_step(other, seed)[2], new_shape[2]))

    def median(side: str, j: int) -> float:
        return statistics.median(t[j] for t in times[side])

    wall = ratio([t[0] for t in times["compiled"]], [t[0] for t in times["eager"]])
    cpu = ratio([t[1] for t in times["compiled"]], [t[1] for t in times["eager"]])
    relative = [abs(a - b) / max(abs(a), 1e-12) for a, b in losses]
    loss_diff = max(relative)
    result: dict[str, Any] = {
        "model": args.model,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "compile": settings,
        "fallback_to_eager": fallback,
        "compile_step_s": round(first[0], 2),
        "compile_step_cpu_s": round(first[1], 2),
        "compiled": compiled_counts,
        "eager_step_s": round(median("eager", 0), 4),
        "compiled_step_s": round(median("compiled", 0), 4),
        "eager_step_cpu_s": round(median("eager", 1), 4),
        "compiled_step_cpu_s": round(median("compiled", 1), 4),
        "ratio": {"median": wall.median, "low": wall.low, "high": wall.high},
        "cpu_ratio": {"median": cpu.median, "low": cpu.low, "high": cpu.high},
        "new_lengths_step_s": round(new_shape[0], 2),
        "new_lengths": new_shape_counts,
        "first_step_relative_loss_difference": relative[0],
        "max_relative_loss_difference": loss_diff,
        "load_average_before": load_before,
        "load_average_after": load_after,
    }
    table = Table(title=f"momentkit bench train --compile: {args.model}, {settings}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("first compiled step (compilation, s)", f"{first[0]:.1f}")
    table.add_row(
        "graphs / graph breaks / recompiles",
        "{graphs} / {graph_breaks} / {recompiles}".format(**compiled_counts),
    )
    table.add_row("eager step (median, s)", f"{result['eager_step_s']:.3f}")
    table.add_row("compiled step (median, s)", f"{result['compiled_step_s']:.3f}")
    table.add_row("compiled / eager: time", str(wall))
    table.add_row("compiled / eager: CPU time", str(cpu))
    table.add_row(
        "a batch of other lengths: s, new graphs / recompiles",
        f"{new_shape[0]:.1f}, {new_shape_counts['graphs']} / {new_shape_counts['recompiles']}",
    )
    table.add_row(
        "relative loss difference: first step, largest",
        f"{relative[0]:.1e}, {loss_diff:.1e}",
    )
    console = Console()
    console.print(table)
    console.print(
        f"{'compilation failed: both sides ran eager; ' if fallback else ''}"
        f"{args.steps} A B rounds after {args.warmup} warm-up rounds; "
        f"load average {load_before} -> {load_after}"
    )
    if args.json_out:
        from momentkit.utils.io import write_json

        write_json(args.json_out, result)
    print(json.dumps(result))
    return 0
