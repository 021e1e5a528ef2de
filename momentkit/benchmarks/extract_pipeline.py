"""``momentkit bench extract --encoder clip_slowfast-random [--official-dir DIR]``.

Times the ``clip_slowfast`` pipeline with random weights of the real sizes (CLIP ViT-B/32 from
``transformers``' ``CLIPConfig()`` defaults, SlowFast 8x8 R50 in the model zoo's Caffe2 format)
on one video; with ``--official-dir`` the same weights also go through Lighthouse's extractor
(``VisionEncoder("clip_slowfast").encode``), runs alternating momentkit / Lighthouse so both
see the same machine load. Lighthouse reads CLIP from OpenAI's TorchScript format, so the CLIP
weights are also written as such an archive by OpenAI's ``clip`` package (which the official
side needs anyway), from the very same tensors.
"""

from __future__ import annotations

import gzip
import statistics
import sys
import time
from pathlib import Path
from typing import Any

#: a few BPE merges (OpenAI's format), enough for a working tokenizer of the random CLIP
_MERGES = ["t h", "th e</w>", "a n", "i n", "e r", "o n", "r e", "e d</w>", "in g</w>"]


def save_random_clip(directory: Path) -> tuple[Path, Path]:
    """A random ``CLIPModel(CLIPConfig())`` (ViT-B/32 sizes) saved with ``save_pretrained``,
    and a BPE file whose vocabulary fits it; returns ``(model dir, bpe.txt.gz)``."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    directory.mkdir(parents=True, exist_ok=True)
    bpe = directory / "bpe.txt.gz"
    with gzip.GzipFile(bpe, "wb", mtime=0) as f:
        f.write("\n".join(["#version: 0.2", *_MERGES]).encode())
    vocab = 512 + len(_MERGES) + 2
    config = CLIPConfig(
        text_config={"vocab_size": vocab, "bos_token_id": vocab - 2, "eos_token_id": vocab - 1}
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(directory)
    return directory, bpe


def save_random_slowfast(path: Path) -> Path:
    """Random SlowFast 8x8 R50 weights in the model zoo's Caffe2 pickle format."""
    from momentkit.encoders.slowfast_weights import random_blobs, save_caffe2_blobs

    return save_caffe2_blobs(path, random_blobs(0))


def openai_archive_from_hf(model_dir: Path, out: Path) -> Path:
    """The same CLIP weights as OpenAI's TorchScript archive (needs OpenAI's ``clip`` package)."""
    import torch
    from clip.model import build_model
    from transformers import CLIPModel

    from momentkit.encoders.clip_openai import openai_state_from_hf

    hf = CLIPModel.from_pretrained(model_dir)
    model = build_model(openai_state_from_hf(hf.state_dict())).eval()  # fp16, as released
    img = torch.zeros(1, 3, 224, 224, dtype=torch.float16)
    txt = torch.zeros(1, 77, dtype=torch.long)
    traced = torch.jit.trace_module(model, {"encode_image": (img,), "encode_text": (txt,)})
    traced.save(str(out))
    return out


def run_pipeline_bench(
    video: Path, root: Path, *, repeat: int, mode: str, official_dir: str | None
) -> list[dict[str, Any]]:
    """Alternate momentkit and (optionally) Lighthouse ``repeat`` times; one row per run."""
    from momentkit.encoders.clip_slowfast import ClipSlowFastEncoder
    from momentkit.video.filtered import source_info

    model_dir, bpe = save_random_clip(root / "clip_b32")
    slowfast = save_random_slowfast(root / "SLOWFAST_8x8_R50.pkl")
    duration = float(source_info(video).duration or 0.0)
    ours = ClipSlowFastEncoder(str(model_dir), slowfast, mode=mode, tokenizer=str(bpe))
    official = None
    if official_dir is not None:
        official = _lighthouse_encoder(official_dir, model_dir, slowfast, root)
    rows: list[dict[str, Any]] = []
    for i in range(repeat):
        start = time.perf_counter()
        encoded = ours.encode_video(video)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "side": f"momentkit ({mode})",
                "run": i,
                "seconds": seconds,
                "x_real_time": duration / seconds,
                "clips": encoded.num_clips,
                "waited_for_frames_s": ours.last_stats.get("waited_for_frames_s", 0.0),
            }
        )
        if official is not None:
            start = time.perf_counter()
            feats, _ = official.encode(str(video))
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "side": "Lighthouse",
                    "run": i,
                    "seconds": seconds,
                    "x_real_time": duration / seconds,
                    "clips": len(feats),
                    "waited_for_frames_s": float("nan"),
                }
            )
    return rows


def _lighthouse_encoder(official_dir: str, model_dir: Path, slowfast: Path, root: Path) -> Any:
    parity = Path(__file__).resolve().parents[2] / "scripts" / "parity"
    if not (parity / "lighthouse_features_env.py").is_file():
        raise SystemExit("--official-dir needs momentkit's source checkout (scripts/parity/)")
    sys.path.insert(0, str(parity))
    from lighthouse_features_env import import_extractor, use_clip_archive

    lh = import_extractor(official_dir)
    use_clip_archive(openai_archive_from_hf(model_dir, root / "ViT-B-32.pt"))
    return lh.VisionEncoder("clip_slowfast", 2.0, 0.5, 224, "cpu", str(slowfast))


def summarize(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Median x real time per side."""
    sides: dict[str, list[float]] = {}
    for r in rows:
        sides.setdefault(r["side"], []).append(r["x_real_time"])
    return {side: statistics.median(v) for side, v in sides.items()}
