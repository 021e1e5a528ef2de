"""Measure what each divergence of Lighthouse's extractor from the benchmark's intent changes.

momentkit's ``lighthouse`` mode equals Lighthouse's extractor (tested); ``default`` mode differs
from it on purpose. This script takes the divergences one at a time on one video, with the
SlowFast 8x8 R50 random weights of the fixtures (the real sizes; trained weights would give
other magnitudes, the same kinds of change) and prints, per divergence, the largest absolute
change over the largest absolute feature value and the mean cosine similarity per clip:

1. BatchNorm with each batch's statistics (Lighthouse never calls ``eval()``) vs the stored
   running statistics, on the same frames;
2. a clip's features depending on its batch neighbours in Lighthouse: the same clips batched
   all together vs in two halves;
3. the window sampling: the first ``64 floor(fps) / 30`` frames of each window (Lighthouse) vs
   the whole window (default), both in ``eval()``;
4. float16 storage of the SlowFast features.

Not run by CI (several minutes on 2 cores)::

    python scripts/parity/lighthouse_features_divergences.py [--video V] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "features"


def compare(a: np.ndarray, b: np.ndarray) -> str:
    rel = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return f"max |diff| / max |value| = {rel:.3g}, mean cosine = {cos.mean():.4f}"


def main() -> int:
    from momentkit.encoders.clip_slowfast import ClipSlowFastEncoder, FrameSource
    from momentkit.encoders.slowfast_weights import random_blobs, save_caffe2_blobs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--video", default=str(ROOT / "momentkit" / "examples" / "charades_demo.mp4")
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clip, bpe = str(FIXTURES / "clip_tiny.pt"), str(FIXTURES / "bpe_tiny.txt.gz")
    with tempfile.TemporaryDirectory() as tmp:
        sf = save_caffe2_blobs(Path(tmp) / "SLOWFAST_8x8_R50.pkl", random_blobs(0))
        light = ClipSlowFastEncoder(clip, sf, mode="lighthouse", tokenizer=bpe)
        default = ClipSlowFastEncoder(clip, sf, tokenizer=bpe)
    windows = {}
    for mode in ("lighthouse", "default"):
        source = FrameSource(args.video, 2.0, mode, slowfast=True)
        windows[mode] = np.stack([item for kind, item in source if kind == "slowfast"])
    lw, dw = windows["lighthouse"], windows["default"]
    with torch.inference_mode():
        x = light.slowfast_pixels(lw)
        train_all = light.slowfast(*light.slowfast.pathways(x)).float().numpy()
        half = len(lw) // 2
        train_halves = np.concatenate(
            [
                light.slowfast(*light.slowfast.pathways(x[s])).float().numpy()
                for s in (slice(0, half), slice(half, None))
            ]
        )
    eval_light = default.encode_windows(lw)
    eval_default = default.encode_windows(dw)
    print(f"{args.video}: {len(lw)} SlowFast clips")
    print("1. batch statistics vs running statistics:", compare(train_all, eval_light))
    print("2. batched all together vs in two halves: ", compare(train_halves, train_all))
    print("3. window sampling (lighthouse vs whole):  ", compare(eval_light, eval_default))
    fp16 = train_all.astype(np.float16).astype(np.float32)
    print("4. float16 storage:                        ", compare(fp16, train_all))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
