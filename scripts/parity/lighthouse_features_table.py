"""Print the parity table of momentkit's ``clip_slowfast`` (``lighthouse`` mode) vs Lighthouse.

Per video: frames, their source timestamps, preprocessed tensors, CLIP and SlowFast features,
and the outputs of the fixtures' random QD-DETR checkpoint (converted; Lighthouse's layout)
searching the video through ``Predictor`` vs the official model on Lighthouse's features.

Reads the fixtures of ``lighthouse_features_fixtures.py`` and runs momentkit on every fixture
video with the same random weights (full-size SlowFast: minutes on 2 cores; not run by CI)::

    python scripts/parity/lighthouse_features_table.py [--threads 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "features"
DEMO = ROOT / "momentkit" / "examples" / "charades_demo.mp4"


def sha(a: np.ndarray | torch.Tensor) -> str:
    a = a.numpy() if isinstance(a, torch.Tensor) else a
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def main() -> int:
    from momentkit.encoders.clip_slowfast import ClipSlowFastEncoder, FrameSource
    from momentkit.encoders.slowfast_weights import random_blobs, save_caffe2_blobs
    from momentkit.inference import Predictor
    from momentkit.inference.model_scorer import pad_tokens
    from momentkit.video.filtered import FilteredFrames

    sys.path.insert(0, str(ROOT / "tests"))
    from test_clip_slowfast import converted_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    meta = json.loads((FIXTURES / "fixture.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        sf = save_caffe2_blobs(
            Path(tmp) / "SLOWFAST_8x8_R50.pkl", random_blobs(meta["seeds"]["slowfast"])
        )
        enc = ClipSlowFastEncoder(
            str(FIXTURES / "clip_tiny.pt"),
            sf,
            mode="lighthouse",
            tokenizer=str(FIXTURES / "bpe_tiny.txt.gz"),
        )
        predictor = Predictor.from_checkpoint(
            converted_checkpoint(Path(tmp)), encoder=enc, nms_iou=None
        )
    print(
        "| video | size, fps, s | CLIP frames (pixels equal) | frame times max diff | "
        "SlowFast clips (pixels equal) | preprocessed tensors equal | CLIP max abs diff | "
        "SlowFast max abs diff (float16 steps) | QD-DETR outputs max abs diff |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, m in meta["videos"].items():
        path = DEMO if name == "charades_demo" else FIXTURES / m["file"]
        ref = dict(np.load(FIXTURES / f"lighthouse_{name}.npz"))
        source = FrameSource(path, 2.0, "lighthouse", slowfast=True)
        frames = [i for k, i in source if k == "clip"]
        windows = [i for k, i in FrameSource(path, 2.0, "lighthouse", True) if k == "slowfast"]
        branch = {"clip": source.frames.branches["clip"]}
        times = [s.source_time for s in FilteredFrames(path, branch)]
        dt = [
            abs(a - b)
            for a, b in zip(times, m["clip_source_time"], strict=True)
            if not math.isnan(b)
        ]
        px_clip = sum(sha(f) == r for f, r in zip(frames, m["clip_sha"], strict=False))
        px_sf = sum(sha(w) == r for w, r in zip(windows, m["sf_sha"], strict=False))
        pre = [sha(p) for p in enc.clip_pixels(np.stack(frames))] == m["clip_pre_sha"] and [
            sha(enc.slowfast_pixels(w[None])[0]) for w in windows
        ] == m["sf_pre_sha"]
        video = predictor.encode_video(path)
        c, s = video.streams["clip"], video.streams["slowfast"]
        scorer = predictor.scorer
        text, mask = pad_tokens(scorer.text_features([meta["e2e_query"]]))
        outputs = scorer.forward_window(scorer.video_features(video), text, mask)
        e2e = max(
            float(np.abs(o[0].numpy() - ref[k]).max())
            for o, k in zip(outputs, ("e2e_logits", "e2e_spans", "e2e_saliency"), strict=True)
        )
        rs = ref["slowfast"].astype(np.float32)
        step = np.maximum(np.abs(rs), 6.1e-5) * 2.0**-10
        info = m["info"]
        print(
            f"| {name} | {int(info['width'])}x{int(info['height'])}, "
            f"{info['fps']:.0f} (floor), {info['duration']:.2f} | "
            f"{len(frames)}/{m['num_clip_frames']} ({px_clip}) | "
            f"{max(dt) if dt else float('nan'):.1e} s ({len(dt)} located) | "
            f"{len(windows)}/{m['num_windows']} ({px_sf}) | {'yes' if pre else 'NO'} | "
            f"{np.abs(c - ref['clip']).max():.1e} | "
            f"{np.abs(s - rs).max():.1e} ({(np.abs(s - rs) / step).max():.1f}) | {e2e:.1e} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
