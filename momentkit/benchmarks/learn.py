"""``momentkit bench learn``: do the models learn? Variants x seeds on the synthetic benchmark.

Trains every ``--variant`` once per ``--seed`` on a ``momentkit synth`` benchmark, evaluates the
best epoch on its validation split with the official metrics, adds the per-clip similarity
baseline, and prints a mean +- std table (markdown, ready for the README). Finished runs are
reused, so an interrupted benchmark continues where it stopped.

A variant is ``"LABEL=MODEL [key=value ...]"``; the overrides use the ``--set`` syntax of
``momentkit train``. Models that train on a generated query corpus (MS-DETR) get the
benchmark's, made once by :func:`~momentkit.text_augment.synth_text.make_synth_corpus` (what
``momentkit augment --synth`` writes: ``corpus/train.jsonl``, ``features/aug_text``);
``model.use_corpus=false`` trains without it. Example::

    momentkit bench learn --data data/synth --out runs/learn --seeds 0 1 2 \\
        --variant "Moment-DETR=moment_detr" --variant "QD-DETR=qd_detr" \\
        --variant "QD-DETR + loop decoder=qd_detr model.decoder_loops=3"
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from momentkit.benchmarks.parallel import add_parallel_arguments, run_parallel
from momentkit.cli.common import add_set_argument, at_least

HELP = "train model variants over several seeds on the synthetic benchmark; mean +- std table"

METRICS = (
    ("MR-full-mAP", "mAP"),
    ("MR-full-R1@0.5", "R1@0.5"),
    ("MR-full-R1@0.7", "R1@0.7"),
    ("HL-min-VeryGood-mAP", "HL mAP"),
    ("HL-min-VeryGood-Hit1", "HL Hit1"),
)
STREAMS = ("slowfast", "clip")
TEXT_STREAM = "clip_text"
DONE_MARKER = "bench_learn_done"


@dataclass(frozen=True)
class Variant:
    """One row of the table: a model and its config overrides."""

    label: str
    model: str
    overrides: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Variant:
        """``"LABEL=MODEL key=value ..."`` -> Variant."""
        label, sep, rest = text.partition("=")
        parts = rest.split()
        if not sep or not label.strip() or not parts:
            raise ValueError(f"--variant {text!r}: expected 'LABEL=MODEL [key=value ...]'")
        return cls(label.strip(), parts[0], tuple(parts[1:]))

    @property
    def slug(self) -> str:
        """A folder name for the variant's runs."""
        return "".join(c if c.isalnum() else "_" for c in self.label).strip("_").lower()


def add_data_arguments(parser: argparse.ArgumentParser, data_help: str) -> None:
    """``--data`` (described by ``data_help``), ``--make-data`` and ``--out``: the benchmark
    folder, how to generate it when missing, and where the runs go."""
    parser.add_argument("--data", required=True, help=data_help)
    parser.add_argument(
        "--make-data",
        nargs=3,
        type=at_least(0),
        metavar=("TRAIN", "VAL", "SEED"),
        help="generate the benchmark into --data first if it is missing",
    )
    parser.add_argument("--out", required=True, help="folder for the runs and the table")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Data, variants, seeds, epochs."""
    add_data_arguments(parser, "a `momentkit synth` output folder")
    parser.add_argument(
        "--variant", action="append", required=True, help="'LABEL=MODEL [key=value ...]'"
    )
    parser.add_argument("--seeds", type=at_least(0), nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=at_least(1), help="override every preset's epoch count")
    parser.add_argument("--preset", default="synth", help="preset of every variant's model")
    add_set_argument(parser, "overrides applied to every variant (before the variant's own)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the similarity row")
    parser.add_argument(
        "--report",
        action="store_true",
        help="train and write nothing: the table of the finished runs, the progress of the others",
    )
    add_parallel_arguments(parser)


def _ensure_data(root: Path, make: list[int] | None) -> None:
    if (root / "annotations" / "train.jsonl").exists():
        return
    if not make:
        raise FileNotFoundError(f"{root}: no benchmark here; pass --make-data TRAIN VAL SEED")
    from momentkit.data.synth import SynthConfig, generate

    generate(SynthConfig(num_train=make[0], num_val=make[1], seed=make[2]), root)


def _feature_root(data: Path) -> Path:
    """``data/packed`` when every stream is packed there (``momentkit pack``), else ``features``."""
    packed = data / "packed"
    if all((packed / s).is_dir() for s in (*STREAMS, TEXT_STREAM)):
        return packed
    return data / "features"


def feature_overrides(data: Path) -> list[str]:
    """The ``data.video_features`` / ``data.text_features`` overrides of benchmark ``data``."""
    feats = _feature_root(data)
    return [
        f"data.video_features=[{','.join(str(feats / s) for s in STREAMS)}]",
        f"data.text_features={feats / TEXT_STREAM}",
    ]


def _overrides(
    data: Path, variant: Variant, seed: int, args: argparse.Namespace, corpus: bool
) -> list[str]:
    """The ``--set`` overrides of one run: the benchmark's data, the seed, the generated corpus
    when ``corpus`` (before the user's overrides, which may replace it), then ``--set`` and the
    variant's own."""
    corpus_overrides = []
    if corpus:
        from momentkit.text_augment.synth_text import SYNTH_CORPUS, SYNTH_CORPUS_FEATURES

        corpus_overrides = [
            f"data.corpus={data / SYNTH_CORPUS}",
            f"data.corpus_text_features={data / SYNTH_CORPUS_FEATURES}",
        ]
    return [
        f"data.train_path={data / 'annotations' / 'train.jsonl'}",
        f"data.val_path={data / 'annotations' / 'val.jsonl'}",
        *feature_overrides(data),
        *corpus_overrides,
        f"trainer.seed={seed}",
        "trainer.progress=false",
        *([f"trainer.epochs={args.epochs}"] if args.epochs else []),
        *args.overrides,
        *variant.overrides,
    ]


def wants_corpus(data: Path, variant: Variant, args: argparse.Namespace) -> bool:
    """Whether ``variant`` trains on the benchmark's generated corpus: its model uses one
    (MS-DETR unless ``model.use_corpus=false``) and its overrides do not name another."""
    from momentkit.training.config import build_config

    cfg = build_config(variant.model, args.preset, _overrides(data, variant, 0, args, False))
    return cfg.model.uses_corpus and cfg.data.corpus is None


def ensure_corpus(data: Path) -> None:
    """Generate the benchmark's corpus (``momentkit augment --synth``) unless it exists."""
    from momentkit.text_augment.synth_text import SYNTH_CORPUS, make_synth_corpus

    if not (data / SYNTH_CORPUS).exists():
        print(f"generating the query corpus of {data} (momentkit augment --synth)", flush=True)
        make_synth_corpus(data)


def _train_one(
    data: Path, variant: Variant, seed: int, args: argparse.Namespace, run: Path
) -> dict:
    """Train one (variant, seed) into ``run`` unless done; returns its ``brief`` metrics.

    ``val_metrics.json`` is rewritten at every new best epoch, so a run counts as finished only
    once ``DONE_MARKER`` exists (written after training returns); otherwise it is resumed.
    """
    metrics_file, done = run / "val_metrics.json", run / DONE_MARKER
    if not done.exists():
        from momentkit.training.config import build_config
        from momentkit.training.pipeline import train

        corpus = wants_corpus(data, variant, args)
        cfg = build_config(
            variant.model, args.preset, _overrides(data, variant, seed, args, corpus)
        )
        if (run / "last").exists():  # an interrupted run: continue it
            train(cfg, run, resume=True)
        else:
            train(cfg, run)
        done.write_text("finished\n")
    return json.loads(metrics_file.read_text())["brief"]


def _epochs(run: Path) -> list[dict[str, Any]]:
    """The complete lines of the run's ``log.jsonl`` (read by the trainer's own
    :class:`EpochLog`, so a line being written is skipped), one per epoch: an epoch logged twice
    counts once, with its last line."""
    from momentkit.training.runlog import EpochLog

    entries = {entry["epoch"]: entry for entry in EpochLog(run / "log.jsonl").read()}
    return [entries[e] for e in sorted(entries)]


def run_progress(run: Path, metric: str = "MR-full-mAP") -> str:
    """Where the run ``run`` stands: epochs done of planned, best ``metric`` so far and the
    training time, e.g. ``"epoch 13 of 30, best MR-full-mAP 25.91 (epoch 12), 24 min"``."""
    epochs = _epochs(run)
    if not epochs:
        return "not started"
    config = run / "config.json"
    planned = json.loads(config.read_text())["trainer"]["epochs"] if config.exists() else "?"
    text = f"epoch {epochs[-1]['epoch']} of {planned}"
    scored = [e for e in epochs if metric in e.get("metrics", {})]
    if scored:
        best = max(scored, key=lambda e: e["metrics"][metric])
        text += f", best {metric} {best['metrics'][metric]:.2f} (epoch {best['epoch']})"
    return f"{text}, {_minutes(epochs):.0f} min"


def _minutes(epochs: list[dict[str, Any]]) -> float:
    return sum(sum(e.get("time", {}).values()) for e in epochs) / 60


def _baseline(data: Path) -> dict:
    from momentkit.data.records import load_annotations
    from momentkit.evaluation.qvhighlights import eval_submission
    from momentkit.inference.similarity import SimilarityBaseline

    val = load_annotations(data / "annotations" / "val.jsonl")
    preds = SimilarityBaseline(data / "features").predict_all(val)
    return eval_submission([p.to_dict() for p in preds], [a.to_dict() for a in val])["brief"]


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def format_table(
    rows: dict[str, list[dict[str, Any]]], metrics: tuple[tuple[str, str], ...] = METRICS
) -> str:
    """Markdown table: one row per variant, mean ± std of each metric over its runs (``-``
    where no run reports the metric). ``metrics``: (key in a run's dict, column title)."""
    header = "| variant | runs | " + " | ".join(short for _, short in metrics) + " |"
    lines = [header, "|" + " --- |" * (len(metrics) + 2)]
    for label, runs in rows.items():
        cells = [_cell([float(r[key]) for r in runs if key in r]) for key, _ in metrics]
        lines.append(f"| {label} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Train what is missing (``--jobs`` runs at once), then print the table and write it to
    ``table.md`` / ``results.json``; with ``--report``, train and write nothing: print the table
    of the finished runs and where each unfinished one stands."""
    from momentkit.benchmarks.guards import refuse_outputs_over_inputs, synth_data_inputs
    from momentkit.utils.io import atomic_write_text, write_json

    data, out = Path(args.data), Path(args.out)
    files, folders = synth_data_inputs("--data", data)
    refuse_outputs_over_inputs(
        [("--out", out / "table.md"), ("--out", out / "results.json")], files, folders
    )
    _ensure_data(data, args.make_data)
    variants = [Variant.parse(v) for v in args.variant]
    if not args.report and any(wants_corpus(data, v, args) for v in variants):
        ensure_corpus(data)  # once, before the runs start (MS-DETR trains on it)
    rows: dict[str, list[dict[str, Any]]] = {}
    if not args.no_baseline:
        rows["per-clip similarity baseline"] = [_baseline(data)]
    jobs = [
        (data, v, seed, args, out / v.slug / f"seed{seed}") for v in variants for seed in args.seeds
    ]
    if args.report:
        missing = [job for job in jobs if not (job[4] / DONE_MARKER).exists()]
        for job in missing:
            print(f"not finished: {job[1].label} seed {job[2]} ({job[4]}): {run_progress(job[4])}")
        jobs = [job for job in jobs if job not in missing]
    briefs: dict[tuple[str, int], dict] = {}
    for job, brief, _ in run_parallel(_train_one, jobs, args.jobs, args.threads):
        variant, seed = job[1], job[2]
        briefs[variant.label, seed] = brief
        print(
            f"{variant.label} seed {seed}: mAP {brief['MR-full-mAP']:.2f}, "
            f"R1@0.5 {brief['MR-full-R1@0.5']:.2f} ({_minutes(_epochs(job[4])):.0f} min trained)",
            flush=True,
        )
    for variant in variants:
        rows[variant.label] = [
            briefs[variant.label, seed] for seed in args.seeds if (variant.label, seed) in briefs
        ]
    table = format_table(rows)
    print(table)
    if not args.report:  # a report reads the runs and writes nothing
        atomic_write_text(out / "table.md", table + "\n")
        write_json(out / "results.json", rows)
    return 0
