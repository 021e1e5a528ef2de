"""Reference fixtures of Lighthouse's feature extractor (``clip_slowfast``), not run by CI.

Runs line/lighthouse's ``frame_loaders`` and ``feature_extractor`` (as released, from
``--official-dir``) with random weights in the real file formats, on the demo clip and on
generated videos (odd sizes, variable frame rate, lengths that are not a multiple of 2 s, a
1.4 s video), and writes ``tests/fixtures/features/``:

- ``clip_tiny.pt``: a small CLIP (ViT, width 64, patch 16, one layer per tower) built by
  OpenAI's ``clip`` package with seeded weights, made fp16 by its ``convert_weights`` and saved
  as a TorchScript archive, the format of ``ViT-B-32.pt``;
- ``bpe_tiny.txt.gz``: the first 100 merges of OpenAI's BPE vocabulary (``clip.tokenize`` is
  pointed at it, so token ids fit the small CLIP);
- ``<video>.mp4``: the generated videos (the demo clip is ``momentkit/examples``');
- ``lighthouse_<video>.npz``: per CLIP frame and per SlowFast window the SHA-256 of the uint8
  pixels and of the preprocessed float32 tensor, the source timestamps of the CLIP frames (from
  the ffmpeg command line), the features of ``VisionEncoder("clip_slowfast").encode`` (CLIP
  float32, SlowFast float16 as Lighthouse stores them), Lighthouse's SlowFast network put in
  ``eval()`` on the first windows, and the end-to-end outputs of a random QD-DETR checkpoint
  in Lighthouse's layout fed with those features;
- ``lighthouse_text.npz``: ``clip.tokenize`` ids and ``CLIPText`` token features of queries;
- ``fixture.json``: seeds, versions, the QD-DETR options and tensor shapes (the test rebuilds
  the same checkpoint with ``momentkit.interop.parity.random_state``).

The SlowFast weights (SlowFast 8x8 R50, 34.6 M parameters, a Caffe2 pickle written with
Python-2 opcodes) are not stored: :func:`momentkit.encoders.slowfast_weights.random_blobs`
rebuilds them from the seed.

Requirements (for this script only): the ``ffmpeg`` binaries (``apt-get install -y ffmpeg``),
``pip install ffmpeg-python ftfy 'setuptools<81' pillow iopath`` and
``pip install --no-deps clip-anytorch fvcore``; ``lighthouse_features_env.py`` checks them::

    python scripts/parity/lighthouse_features_fixtures.py --official-dir /path/to/lighthouse \\
        --out tests/fixtures/features [--official-revision COMMIT]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # Lighthouse predates it

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lighthouse_env import EasyDict  # noqa: E402
from lighthouse_features_env import (  # noqa: E402
    import_extractor,
    import_predictors,
    use_bpe_vocabulary,
    use_clip_archive,
)

from momentkit.encoders.slowfast_weights import random_blobs, save_caffe2_blobs  # noqa: E402
from momentkit.interop.parity import random_state, state_shapes  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "momentkit" / "examples" / "charades_demo.mp4"
CLIP_SEED, SLOWFAST_SEED, MODEL_SEED = 11, 0, 3
MERGES = 100
QUERIES = [
    "A person walks through the doorway.",
    "  Someone   OPENS the fridge &amp; takes milk!!  ",
    "Café naïve résumé — the \u00e2\u0080\u009cquoted\u00e2\u0080\u009d text",
]
E2E_QUERY = "a person drinks from a cup"
#: videos whose first windows also go through Lighthouse's SlowFast in eval() mode
EVAL_WINDOWS = 2


def sha(array: Any) -> str:
    a = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


# ------------------------------------------------------------------------------ model files
def make_clip_archive(path: Path) -> None:
    """A small CLIP built and saved by OpenAI's own code (seeded weights, fp16 convert)."""
    from clip.model import CLIP, convert_weights

    model = CLIP(64, 224, 1, 64, 16, 77, 256 * 2 + MERGES + 2, 64, 1, 1).eval()
    rng = np.random.Generator(np.random.PCG64(CLIP_SEED))
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if not p.dtype.is_floating_point:
                continue
            u = torch.from_numpy(rng.random(p.numel(), dtype=np.float32)).view(p.shape)
            if name.endswith(("ln_pre.weight", "ln_post.weight", "ln_1.weight", "ln_2.weight")) or (
                name.endswith("ln_final.weight")
            ):
                value = 0.5 + u
            elif name.endswith("bias") or name == "logit_scale":
                value = 0.2 * (u - 0.5)
            else:
                fan_in = p.shape[-1] if p.dim() > 1 else p.shape[0]
                if name == "visual.conv1.weight":
                    fan_in = int(np.prod(p.shape[1:]))
                value = (2 * u - 1) * float(np.sqrt(3.0 / fan_in))
            p.copy_(value)
    convert_weights(model)
    img = torch.zeros(1, 3, 224, 224, dtype=torch.float16)
    txt = torch.zeros(1, 77, dtype=torch.long)
    txt[0, :3] = torch.tensor([512 + MERGES, 5, 513 + MERGES])
    traced = torch.jit.trace_module(
        model, {"forward": (img, txt), "encode_image": (img,), "encode_text": (txt,)}
    )
    traced.save(str(path))


def make_bpe(path: Path) -> None:
    import clip.simple_tokenizer as st

    full = Path(st.__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(full, "rt", encoding="utf-8").read().split("\n")
    with gzip.GzipFile(path, "wb", mtime=0) as f:  # no trailing newline: no empty merge
        f.write("\n".join(lines[: MERGES + 1]).encode("utf-8"))


# ------------------------------------------------------------------------------ videos
def frame_pattern(i: int, h: int, w: int) -> np.ndarray:
    """A distinct RGB frame per index: moving gradients plus a bright bar at a varying row."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = (x * 255 / max(w - 1, 1) + 7 * i) % 256
    g = (y * 255 / max(h - 1, 1) + 13 * i) % 256
    b = ((x + y) * 3 + 29 * i) % 256
    rgb = np.stack([r, g, b], -1).astype(np.uint8)
    rgb[(5 * i) % h] = 255
    return rgb


def make_videos(out: Path) -> dict[str, Path]:
    from momentkit.video.write import write_video

    rng = np.random.Generator(np.random.PCG64(5))
    gaps = rng.uniform(1 / 60, 1 / 8, 400)
    times = np.concatenate([[0.0], np.cumsum(gaps)])
    times = times[times < 7.3]
    vfr = write_video(
        out / "odd_vfr.mp4",
        [frame_pattern(i, 57, 101) for i in range(len(times))],
        times=list(times),
        fps=30,
    )
    tall = write_video(
        out / "tall_25fps.mp4", [frame_pattern(i, 161, 91) for i in range(int(5.1 * 25))], fps=25
    )
    short = write_video(out / "short_1s.mp4", [frame_pattern(i, 64, 96) for i in range(42)], fps=30)
    return {"odd_vfr": vfr, "tall_25fps": tall, "short_1s": short}


# ------------------------------------------------------------------------------ reference
def source_times(path: Path, frames: np.ndarray, width: int, height: int) -> list[float]:
    """Timestamp (ffmpeg's best-effort, start-shifted) of the decoded frame each of ``frames``
    shows, from the ffmpeg command line: every decoded frame scaled and cropped the same way,
    matched by pixel hash (``nan`` when no or several decoded frames match)."""
    x, y = int((width - 224) / 2.0), int((height - 224) / 2.0)
    raw = subprocess.run(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-i",
            str(path),
            "-vf",
            f"scale={width}:{height},crop=224:224:{x}:{y}",
            "-fps_mode",
            "passthrough",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "pipe:",
        ],
        check=True,
        capture_output=True,
    ).stdout
    decoded = np.frombuffer(raw, np.uint8).reshape(-1, 224, 224, 3)
    probe = subprocess.run(
        [
            "ffprobe",
            "-loglevel",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "frame=best_effort_timestamp_time",
            "-of",
            "csv=p=0",
            str(path),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    start = float(
        json.loads(
            subprocess.run(
                [
                    "ffprobe",
                    "-loglevel",
                    "error",
                    "-show_entries",
                    "format=start_time",
                    "-of",
                    "json",
                    str(path),
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )["format"].get("start_time", 0.0)
    )
    times = [float(t.strip(",")) - start for t in probe if t.strip(",")]
    by_hash: dict[str, list[float]] = {}
    for t, f in zip(times, decoded, strict=False):
        by_hash.setdefault(sha(f), []).append(t)
    out = []
    for f in frames:
        hits = by_hash.get(sha(f), [])
        out.append(hits[0] if len(hits) == 1 else float("nan"))
    return out


def eval_reference(sf_enc: Any, sf_path: Path, windows: torch.Tensor) -> torch.Tensor:
    """Lighthouse's SlowFast network freshly loaded (its train-mode calls update the running
    statistics) and put in ``eval()``, on the first windows, with its own preprocessing."""
    from lighthouse.feature_extractor.vision_encoders.slowfast_model.model_loader import (
        slowfast_model_loader,
    )

    network = slowfast_model_loader(str(sf_path), "cpu").eval()
    with torch.no_grad():
        x = windows[:EVAL_WINDOWS].float().permute(0, 4, 1, 2, 3) / 255.0
        return network(sf_enc._pack_pathway_output(sf_enc._slowfast_norm(x))).float()


def reference(lh: Any, predictor: Any, path: Path, sf_path: Path) -> dict[str, Any]:
    """Everything Lighthouse computes for one video."""
    from lighthouse.frame_loaders.base_loader import BaseLoader

    clip_loader = lh.CLIPLoader(2.0, 0.5, 224, "cpu")
    sf_loader = lh.SlowFastLoader(2.0, 30, 224, "cpu")
    info = BaseLoader(2.0, 30, 224, "cpu")._video_info(str(path))
    height, width = BaseLoader(2.0, 30, 224, "cpu")._output_dim(info["height"], info["width"])
    clip_frames = clip_loader(str(path))  # (n, 3, 224, 224) float 0..255
    windows = sf_loader(str(path))  # (n, 32, 224, 224, 3) uint8
    vision = predictor._vision_encoder
    clip_enc, sf_enc = vision._visual_encoders
    clip_pre = clip_enc._preprocess(clip_frames)
    clip_u8 = clip_frames.permute(0, 2, 3, 1).to(torch.uint8).numpy()
    sf_pre = [
        sf_enc._slowfast_norm(windows[i : i + 1].float().permute(0, 4, 1, 2, 3) / 255.0)
        for i in range(len(windows))
    ]
    feats, _ = vision.encode(str(path))  # (T, D_clip + 2304): the reference
    d_clip = clip_enc._clip_extractor.visual.output_dim
    eval_feats = eval_reference(sf_enc, sf_path, windows)
    return {
        "info": {k: float(v) for k, v in info.items()},
        "scaled": [width, height],
        "clip_sha": [sha(f) for f in clip_u8],
        "clip_pre_sha": [sha(p) for p in clip_pre],
        "clip_source_time": source_times(path, clip_u8, width, height),
        "sf_sha": [sha(w) for w in windows],
        "sf_pre_sha": [sha(p[0]) for p in sf_pre],
        "clip": feats[:, :d_clip].float().numpy(),
        "slowfast": feats[:, d_clip:].to(torch.float16).numpy(),
        "slowfast_eval": eval_feats.numpy(),
        "num_clip_frames": len(clip_frames),
        "num_windows": len(windows),
        "first_clip_frame_patch": clip_u8[0, 100:116, 100:116].copy(),
        "features": feats,
    }


def end_to_end(predictor: Any, feats: torch.Tensor, d_clip: int) -> dict[str, np.ndarray]:
    """The official model on Lighthouse's features, prepared as Lighthouse's training data is
    (each stream L2-normalised with eps 1e-5, then TEF); text from its own CLIPText."""
    clip, slowfast = feats[:, :d_clip].float(), feats[:, d_clip:].float()
    norm = [x / (x.norm(dim=-1, keepdim=True) + 1e-5) for x in (clip, slowfast)]
    n = len(clip)
    tef_st = torch.arange(0, n, 1.0) / n
    video = torch.cat([*norm, torch.stack([tef_st, tef_st + 1.0 / n], 1)], 1).unsqueeze(0)
    query, mask = predictor._encode_text(E2E_QUERY)
    inputs = predictor._prepare_batch(
        query, mask, {"video_feats": video, "video_mask": torch.ones(1, n), "audio_feats": None}
    )
    with torch.no_grad():
        out = predictor._model(**inputs)
    ranked, saliency = predictor._post_processing(inputs, out)
    return {
        "e2e_logits": out["pred_logits"][0].numpy(),
        "e2e_spans": out["pred_spans"][0].numpy(),
        "e2e_saliency": out["saliency_scores"][0].numpy(),
        "e2e_ranked": np.asarray(ranked, dtype=np.float64),
    }


def make_checkpoint(path: Path, d_clip: int, d_text: int) -> dict[str, Any]:
    """A random QD-DETR checkpoint in Lighthouse's layout for clip_slowfast features."""
    from lighthouse.common.qd_detr import build_model

    fixture = ROOT / "tests" / "fixtures" / "parity" / "lighthouse_qd_detr_qvhighlights"
    opt = json.loads((fixture / "fixture.json").read_text())["opt"]
    opt.update(v_feat_dim=d_clip + 2304 + 2, t_feat_dim=d_text, device="cpu")
    model, _ = build_model(EasyDict(opt))
    shapes = state_shapes(model.state_dict())
    state = random_state(shapes, MODEL_SEED)
    torch.save(
        {"model": state, "optimizer": {}, "lr_scheduler": {}, "epoch": 1, "opt": EasyDict(opt)},
        path,
    )
    return {
        "opt": opt,
        "state": {k: [list(s), str(d).removeprefix("torch.")] for k, (s, d) in shapes.items()},
    }


def write_text_fixture(lh: Any, out: Path) -> None:
    """``lighthouse_text.npz``: per query the ``clip.tokenize`` ids up to ``<eot>``, the
    ``CLIPText`` states at those positions, its mask (``ids != 0``: a ``!`` token, id 0, is
    masked like padding) and OpenAI's projected ``<eot>`` (``encode_text``)."""
    text = lh.CLIPText("cpu", "ViT-B/32")
    arrays: dict[str, np.ndarray] = {}
    for i, q in enumerate(QUERIES):
        ids = lh.clip.tokenize(q)
        n = int(ids[0].argmax()) + 1  # <eot> is the largest id
        with torch.no_grad():
            feats, mask = text(q)
            pooled = text._clip_extractor.encode_text(ids)[0].float()
        arrays[f"tokens_{i}"] = ids[0, :n].numpy()
        arrays[f"states_{i}"] = feats[0, :n].numpy()
        arrays[f"mask_{i}"] = mask[0, :n].numpy().astype(bool)
        arrays[f"pooled_{i}"] = pooled.numpy()
    np.savez_compressed(out / "lighthouse_text.npz", **arrays)


def rewrite_eval_references(lh: Any, out: Path) -> None:
    """Recompute the ``slowfast_eval`` arrays of existing fixtures."""
    meta = json.loads((out / "fixture.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        sf_path = save_caffe2_blobs(Path(tmp) / "sf.pkl", random_blobs(meta["seeds"]["slowfast"]))
        sf_enc = lh.SlowFast("cpu", str(sf_path))
        for name, m in meta["videos"].items():
            path = DEMO if name == "charades_demo" else out / m["file"]
            windows = lh.SlowFastLoader(2.0, 30, 224, "cpu")(str(path))
            file = out / f"lighthouse_{name}.npz"
            arrays = dict(np.load(file))
            arrays["slowfast_eval"] = eval_reference(sf_enc, sf_path, windows).numpy()
            np.savez_compressed(file, **arrays)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-dir", required=True, help="a line/lighthouse checkout")
    parser.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "features"))
    parser.add_argument("--official-revision", default="", help="recorded in fixture.json")
    parser.add_argument("--text-only", action="store_true", help="rewrite lighthouse_text.npz only")
    parser.add_argument("--eval-only", action="store_true", help="rewrite slowfast_eval only")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lh = import_extractor(args.official_dir)
    if args.text_only:
        use_clip_archive(out / "clip_tiny.pt")
        use_bpe_vocabulary(out / "bpe_tiny.txt.gz")
        write_text_fixture(lh, out)
        return 0
    if args.eval_only:
        rewrite_eval_references(lh, out)
        return 0
    predictors = import_predictors(args.official_dir)
    make_clip_archive(out / "clip_tiny.pt")
    make_bpe(out / "bpe_tiny.txt.gz")
    use_clip_archive(out / "clip_tiny.pt")
    use_bpe_vocabulary(out / "bpe_tiny.txt.gz")
    videos = {"charades_demo": DEMO, **make_videos(out)}
    meta: dict[str, Any] = {
        "official_revision": args.official_revision,
        "ffmpeg": subprocess.run(
            ["ffmpeg", "-version"], capture_output=True, text=True
        ).stdout.splitlines()[0],
        "torch": torch.__version__,
        "seeds": {"clip": CLIP_SEED, "slowfast": SLOWFAST_SEED, "model": MODEL_SEED},
        "queries": QUERIES,
        "e2e_query": E2E_QUERY,
        "videos": {},
    }
    with tempfile.TemporaryDirectory(prefix="lighthouse-features-") as tmp:
        sf_path = save_caffe2_blobs(Path(tmp) / "SLOWFAST_8x8_R50.pkl", random_blobs(SLOWFAST_SEED))
        clip_model = lh.CLIPText("cpu", "ViT-B/32")._clip_extractor
        d_clip, d_text = clip_model.visual.output_dim, clip_model.ln_final.weight.shape[0]
        ckpt = Path(tmp) / "qd_detr.ckpt"
        meta["checkpoint"] = make_checkpoint(ckpt, d_clip, d_text)
        predictor = predictors.QDDETRPredictor(
            str(ckpt), device="cpu", feature_name="clip_slowfast", slowfast_path=str(sf_path)
        )
        for name, path in videos.items():
            print(f"{name}: Lighthouse extractor ...", flush=True)
            ref = reference(lh, predictor, path, sf_path)
            e2e = end_to_end(predictor, ref.pop("features"), d_clip)
            arrays = {
                k: ref.pop(k)
                for k in ("clip", "slowfast", "slowfast_eval", "first_clip_frame_patch")
            }
            np.savez_compressed(out / f"lighthouse_{name}.npz", **arrays, **e2e)
            meta["videos"][name] = ref
            if path.parent == out:
                meta["videos"][name]["file"] = path.name
        write_text_fixture(lh, out)
    (out / "fixture.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    total = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"wrote {out} ({total / 1e6:.2f} MB)")
    shutil.rmtree(out / "__pycache__", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
