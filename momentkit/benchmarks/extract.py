"""``momentkit bench extract``: feature-extraction speed in multiples of real time.

Extracts the packaged example video (or ``--video``) with each encoder, ``--repeat`` times into
fresh folders, and reports seconds of video per wall-clock second (the video phase: decoding
overlapped with encoding). Encoders:

- ``offline``: EfficientNet-Lite0 + MiniLM, the default that needs no download;
- ``clip-b32``: a CLIP ViT-B/32-shaped model with random weights (built here and saved to a
  temporary folder, then loaded through the ``clip:<dir>`` path; random weights time the same as
  trained ones), standing in for ``clip:openai/clip-vit-base-patch32``;
- ``clip_slowfast-random``: the QVHighlights pipeline (CLIP ViT-B/32 + SlowFast 8x8 R50) with
  random weights of the real sizes and formats; ``--official-dir DIR`` times Lighthouse's
  extractor on the same weights too, runs alternating (:mod:`.extract_pipeline`);
- any other encoder spec (``motion``, ``clip:/path``, ...).

Example::

    momentkit bench extract --encoder offline --encoder clip-b32 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from momentkit.cli.common import at_least, positive_float

HELP = "feature-extraction speed (x real time) for the offline and a CLIP ViT-B/32 encoder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Encoders, video, repetitions."""
    parser.add_argument(
        "--encoder",
        action="append",
        help="'offline', 'clip-b32' or any encoder spec (default: offline and clip-b32)",
    )
    parser.add_argument("--video", help="video to extract (default: the packaged example)")
    parser.add_argument("--repeat", type=at_least(1), default=3, help="runs per encoder (median)")
    parser.add_argument("--threads", type=at_least(1), default=2, help="torch intra-op threads")
    parser.add_argument("--clip-len", type=positive_float, default=2.0, help="seconds per clip")
    parser.add_argument(
        "--official-dir",
        metavar="DIR",
        help="with --encoder clip_slowfast-random: also time Lighthouse's extractor from this "
        "line/lighthouse checkout on the same weights, runs alternating (needs ffmpeg, "
        "ffmpeg-python and OpenAI's clip package; see scripts/parity/lighthouse_features_env.py)",
    )
    parser.add_argument(
        "--mode",
        default="default",
        choices=("default", "lighthouse"),
        help="clip_slowfast mode (default: what the benchmark features intend)",
    )


def save_word_tokenizer(directory: Path, words: list[str]) -> dict[str, int]:
    """Save a word-level fast tokenizer (``<bos> words <eos>``) that loads with no download."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "<bos>": 2, "<eos>": 3}
    vocab |= {w: i + 4 for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="<bos>",
        eos_token="<eos>",
    )
    fast.save_pretrained(directory)
    return vocab


def save_clip_b32(directory: Path) -> Path:
    """A randomly initialised CLIP with ViT-B/32 sizes (transformers' defaults), saved."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    vocab = save_word_tokenizer(directory, ["a", "person", "walks"])
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "bos_token_id": 2, "eos_token_id": 3},
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(directory)
    return directory


def run(args: argparse.Namespace) -> int:
    """Time each encoder and print the table."""
    import importlib.resources

    import torch
    from rich.console import Console
    from rich.table import Table

    from momentkit.extraction import ExtractionConfig, build_extractor, run_extraction

    torch.set_num_threads(args.threads)
    video = Path(args.video) if args.video else None
    encoders = args.encoder or ["offline", "clip-b32"]
    table = Table(title=f"momentkit bench extract ({args.threads} threads)")
    for column in ("encoder", "video s", "median x real time", "runs"):
        table.add_column(column, justify="left" if column == "encoder" else "right")
    with tempfile.TemporaryDirectory(prefix="momentkit-bench-extract-") as tmp:
        root = Path(tmp)
        if video is None:
            with importlib.resources.as_file(
                importlib.resources.files("momentkit") / "examples" / "charades_demo.mp4"
            ) as path:
                video = root / "charades_demo.mp4"
                video.write_bytes(path.read_bytes())
        if "clip_slowfast-random" in encoders:
            from momentkit.benchmarks.extract_pipeline import run_pipeline_bench, summarize

            rows = run_pipeline_bench(
                video, root, repeat=args.repeat, mode=args.mode, official_dir=args.official_dir
            )
            runs = Table(title=f"clip_slowfast, random weights ({args.threads} threads), {video}")
            for column in ("run", "side", "seconds", "x real time", "clips", "waited for frames"):
                runs.add_column(column, justify="right")
            for r in rows:
                runs.add_row(
                    str(r["run"]),
                    r["side"],
                    f"{r['seconds']:.1f}",
                    f"{r['x_real_time']:.3f}x",
                    str(r["clips"]),
                    f"{r['waited_for_frames_s']:.1f} s",
                )
            Console().print(runs)
            medians = summarize(rows)
            for side, speed in medians.items():
                table.add_row(f"clip_slowfast-random: {side}", "", f"{speed:.3f}x", "")
            encoders = [e for e in encoders if e != "clip_slowfast-random"]
        for name in encoders:
            spec = name
            if name == "clip-b32":
                spec = f"clip:{save_clip_b32(root / 'clip_b32')}"
            speeds, seconds = [], 0.0
            for i in range(args.repeat):
                config = ExtractionConfig(clip_len=args.clip_len)
                extractor = build_extractor([spec], root / f"out_{len(speeds)}_{i}", config)
                report = run_extraction(extractor, [video], progress=False)
                if not report.video_seconds:
                    raise RuntimeError(f"{video}: extraction with {spec} failed: {report.videos}")
                speeds.append(report.speed)
                seconds = report.video_seconds
            table.add_row(
                name, f"{seconds:.1f}", f"{statistics.median(speeds):.1f}x", str(len(speeds))
            )
    Console().print(table)
    return 0
