"""The QVHighlights feature pipeline: ``clip_slowfast`` (CLIP + SlowFast) and ``clip`` alone.

The features Moment-DETR, QD-DETR, Lighthouse and most moment-retrieval papers train on::

    clip       (T, 512)   CLIP ViT-B/32 image embedding of one frame per 2 s clip
    slowfast   (T, 2304)  SlowFast 8x8 R50 (Kinetics-400) pooled features of each 2 s window
    clip_text  (N, 512)   CLIP text tokens after ln_final (<sot> ... <eot>), pooled (512,)

Spec: ``clip_slowfast:clip=<CLIP>,slowfast=<SLOWFAST_8x8_R50.pkl>[,mode=lighthouse]
[,tokenizer=<T>][,clip_len=1]``; ``slowfast=none`` gives the ``clip`` pipeline (left out:
``$MOMENTKIT_SLOWFAST`` or ``~/.cache/momentkit/SLOWFAST_8x8_R50.pkl``); ``clip_len=1`` for
Charades-STA-style 1 s clips.

- ``clip``: OpenAI's ``ViT-B-32.pt`` (TorchScript archive, read without running it), a
  ``CLIPModel`` directory, or a hub id (default ``ViT-B/32``: ``~/.cache/clip/ViT-B-32.pt``
  when OpenAI's ``clip`` package downloaded it there, else ``openai/clip-vit-base-patch32``).
- ``slowfast``: the model zoo's Caffe2 pickle (read without running code).
- ``tokenizer``: where the BPE vocabulary comes from when ``clip`` is an OpenAI archive (a hub
  id, a tokenizer directory, or ``bpe_simple_vocab_16e6.txt.gz``; default
  ``openai/clip-vit-base-patch32``).
- ``mode``: ``default`` (what the benchmark features intend) or ``lighthouse`` (Lighthouse's
  extractor exactly, for parity); :mod:`.clip_slowfast_frames` and ``docs/extraction.md`` list
  the differences.

The video is decoded once; frames come from libav's ``fps``/``scale``/``crop`` filters
(:mod:`momentkit.video.filtered`) on a background thread while the models run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from momentkit.encoders.base import (
    EncodedVideo,
    EncoderError,
    PipelineEncoder,
    Progress,
    TextFeatures,
)
from momentkit.encoders.clip import CLIP_MEAN, CLIP_STD
from momentkit.encoders.clip_slowfast_frames import (
    MODES,
    SLOWFAST_FPS,
    WindowAssembler,
    clip_fps,
    num_clips,
)
from momentkit.encoders.slowfast import SLOWFAST_MEAN, SLOWFAST_STD

DEFAULT_CLIP = "ViT-B/32"
DEFAULT_TOKENIZER = "openai/clip-vit-base-patch32"
#: clips per SlowFast forward pass in lighthouse mode (its batch statistics depend on it)
LIGHTHOUSE_SLOWFAST_BATCH = 45
LIGHTHOUSE_CLIP_BATCH = 60
EPS = 1e-8  # the reference divides by (std + 1e-8)


def default_slowfast_path() -> Path | None:
    """``$MOMENTKIT_SLOWFAST`` or ``~/.cache/momentkit/SLOWFAST_8x8_R50.pkl``, if it exists."""
    env = os.environ.get("MOMENTKIT_SLOWFAST")
    candidates = [Path(env)] if env else []
    candidates.append(Path.home() / ".cache" / "momentkit" / "SLOWFAST_8x8_R50.pkl")
    return next((p for p in candidates if p.is_file()), None)


def parse_args(arg: str | None) -> dict[str, str]:
    """``"clip=a,slowfast=b"`` -> ``{"clip": "a", "slowfast": "b"}`` (known keys only)."""
    out: dict[str, str] = {}
    for part in (arg or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in ("clip", "slowfast", "mode", "tokenizer", "clip_len"):
            raise EncoderError(
                f"clip_slowfast: cannot read '{part}'; use key=value with keys clip, slowfast, "
                "mode, tokenizer, clip_len, e.g. "
                "clip_slowfast:clip=ViT-B/32,slowfast=SLOWFAST_8x8_R50.pkl"
            )
        out[key] = value.strip()
    return out


def load_clip(source: str, tokenizer: str | None) -> tuple[Any, Any, str]:
    """``(CLIPModel fp32 eval, CLIPTokenizerFast, description)`` from an OpenAI archive, a
    ``CLIPModel`` directory or a hub id (see the module doc)."""
    from momentkit.encoders.clip_openai import HUB_IDS, is_torchscript_archive, load_openai_archive
    from momentkit.encoders.clip_text import load_clip_tokenizer
    from momentkit.encoders.hf import quiet_transformers

    path = Path(source).expanduser()
    if source in HUB_IDS:
        cached = Path.home() / ".cache" / "clip" / (source.replace("/", "-") + ".pt")
        path = cached if cached.is_file() else Path(HUB_IDS[source])
        source = str(path) if cached.is_file() else HUB_IDS[source]
    if path.is_file():
        if not is_torchscript_archive(path):
            raise EncoderError(
                f"{path}: not a CLIP model file (expected OpenAI's TorchScript archive, e.g. "
                "ViT-B-32.pt, or a CLIPModel directory / hub id)"
            )
        model = load_openai_archive(path)
        return model, load_clip_tokenizer(tokenizer or DEFAULT_TOKENIZER), f"openai:{path.name}"
    from transformers import CLIPModel

    try:
        with quiet_transformers():
            model = CLIPModel.from_pretrained(source, local_files_only=path.is_dir())
    except (OSError, ValueError) as e:
        raise EncoderError(
            f"cannot load CLIP '{source}': {e}. Give OpenAI's ViT-B-32.pt, a directory saved "
            "with CLIPModel.save_pretrained, or a hub id in the Hugging Face cache"
        ) from None
    return model.float().eval(), load_clip_tokenizer(tokenizer or source), f"hf:{source}"


class ClipSlowFastEncoder(PipelineEncoder):
    """The ``clip_slowfast`` / ``clip`` pipeline (see the module doc).

    Args:
        clip: CLIP weights (OpenAI archive, directory or hub id).
        slowfast: SlowFast weights (Caffe2 pickle), or ``None`` for the ``clip`` pipeline.
        mode: ``default`` or ``lighthouse``.
        tokenizer: BPE source for an OpenAI archive.
        device: torch device.
        batch_size: CLIP frames per forward pass (``default`` mode; ``lighthouse``: 60).
        slowfast_batch: SlowFast clips per forward pass (``default`` mode; ``lighthouse``: 45).
        clip_len: seconds per clip (2).

    Raises:
        EncoderError: a model or file cannot be loaded, or an unknown mode.
    """

    def __init__(
        self,
        clip: str = DEFAULT_CLIP,
        slowfast: str | Path | None = None,
        *,
        mode: str = "default",
        tokenizer: str | None = None,
        device: str = "cpu",
        batch_size: int = 16,
        slowfast_batch: int = 4,
        clip_len: float = 2.0,
    ) -> None:
        from momentkit.encoders.clip_text import ClipTokenizer

        if mode not in MODES:
            raise EncoderError(f"clip_slowfast: unknown mode '{mode}'; use one of {MODES}")
        self.mode, self.device, self.clip_len = mode, device, float(clip_len)
        self.batch_size = LIGHTHOUSE_CLIP_BATCH if mode == "lighthouse" else batch_size
        self.slowfast_batch = LIGHTHOUSE_SLOWFAST_BATCH if mode == "lighthouse" else slowfast_batch
        self.clip_source = str(clip)
        self.clip_model, hf_tokenizer, self.clip_description = load_clip(str(clip), tokenizer)
        self.clip_model.to(device)
        self.tokenizer = ClipTokenizer(hf_tokenizer)
        self.slowfast_source = str(slowfast) if slowfast else None
        self.slowfast = None
        if slowfast is not None:
            from momentkit.encoders.slowfast_weights import load_slowfast

            self.slowfast = self._prepare_slowfast(load_slowfast(slowfast)).to(device)
        self.pipeline = "clip_slowfast" if self.slowfast is not None else "clip"
        #: timings of the last :meth:`encode_video`: total seconds, seconds spent waiting for frames
        self.last_stats: dict[str, float] = {}
        cfg = self.clip_model.config
        self.video_streams = {"clip": int(cfg.projection_dim)}
        if self.slowfast is not None:
            self.video_streams["slowfast"] = self.slowfast.config.feature_dim
        self.text_stream = "clip_text"
        self.text_dim = int(cfg.text_config.hidden_size)
        args = [f"clip={self.clip_source}"]
        if self.slowfast_source:
            args.append(f"slowfast={self.slowfast_source}")
        if mode != "default":
            args.append(f"mode={mode}")
        if tokenizer:
            args.append(f"tokenizer={tokenizer}")
        if self.clip_len != 2.0:
            args.append(f"clip_len={self.clip_len:g}")
        self.name = "clip_slowfast:" + ",".join(args)
        std = torch.tensor(CLIP_STD) + (EPS if mode == "lighthouse" else 0.0)
        self._clip_mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
        self._clip_std = std.to(device).view(1, 3, 1, 1)
        sf_std = torch.tensor(SLOWFAST_STD) + (EPS if mode == "lighthouse" else 0.0)
        self._sf_mean = torch.tensor(SLOWFAST_MEAN, device=device).view(1, 3, 1, 1, 1)
        self._sf_std = sf_std.to(device).view(1, 3, 1, 1, 1)

    def _prepare_slowfast(self, model: Any) -> Any:
        if self.mode == "lighthouse":
            return model.train()  # the reference never calls eval(): batch statistics
        from momentkit.encoders.slowfast import fold_batch_norms

        return fold_batch_norms(model.eval()).to(memory_format=torch.channels_last_3d)

    # -- preprocessing (the tensors the models read) ------------------------------------------
    def clip_pixels(self, frames: np.ndarray) -> torch.Tensor:
        """``(B, 224, 224, 3)`` uint8 -> ``(B, 3, 224, 224)`` float32: ``/255``, CLIP mean/std."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).float()
        x = x.permute(0, 3, 1, 2) / 255.0
        return (x - self._clip_mean) / self._clip_std

    def slowfast_pixels(self, windows: np.ndarray) -> torch.Tensor:
        """``(B, 32, 224, 224, 3)`` uint8 -> ``(B, 3, 32, 224, 224)`` float32: ``/255``,
        Kinetics mean/std."""
        x = torch.from_numpy(np.ascontiguousarray(windows)).to(self.device).float()
        x = x.permute(0, 4, 1, 2, 3) / 255.0
        return (x - self._sf_mean) / self._sf_std

    # -- models -------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        """``(B, 224, 224, 3)`` uint8 -> ``(B, 512)`` projected CLIP image embeddings."""
        pixels = self.clip_pixels(frames)
        pooled = self.clip_model.vision_model(pixel_values=pixels).pooler_output
        return self.clip_model.visual_projection(pooled).float().cpu().numpy()

    @torch.inference_mode()
    def encode_windows(self, windows: np.ndarray) -> np.ndarray:
        """``(B, 32, 224, 224, 3)`` uint8 -> ``(B, 2304)`` SlowFast features (in ``lighthouse``
        mode with this batch's BatchNorm statistics and rounded to float16, as the reference)."""
        assert self.slowfast is not None
        x = self.slowfast_pixels(windows)
        slow, fast = self.slowfast.pathways(x)
        if self.mode != "lighthouse":
            slow = slow.contiguous(memory_format=torch.channels_last_3d)
            fast = fast.contiguous(memory_format=torch.channels_last_3d)
        out = self.slowfast(slow, fast)
        if self.mode == "lighthouse":
            out = out.half()
        return out.float().cpu().numpy()

    @torch.inference_mode()
    def encode_text(self, queries: Sequence[str]) -> list[TextFeatures]:
        """Tokens ``(N_i, D)`` after ``ln_final`` (``<sot>`` ... ``<eot>``) and the projected
        ``<eot>`` state ``(512,)`` of each query. In ``lighthouse`` mode the tokens Lighthouse
        masks as padding (``ids != 0``: a ``!`` not ending a word has id 0) are left out.

        Raises:
            EncoderError: a query longer than CLIP's 75 tokens.
        """
        ids = self.tokenizer.encode(queries)
        out: list[TextFeatures] = []
        text_model, projection = self.clip_model.text_model, self.clip_model.text_projection
        for i in range(0, len(ids), self.batch_size):
            chunk = ids[i : i + self.batch_size]
            width = max(len(t) for t in chunk)
            input_ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for j, t in enumerate(chunk):
                input_ids[j, : len(t)] = torch.tensor(t)
                mask[j, : len(t)] = 1
            states = text_model(
                input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)
            ).last_hidden_state.float()
            for j, t in enumerate(chunk):
                tokens = states[j, : len(t)]
                pooled = projection(tokens[-1:]).squeeze(0)
                if self.mode == "lighthouse":  # its mask is ids != 0: "!" (id 0) is dropped
                    tokens = tokens[torch.tensor(t) != 0]
                out.append(TextFeatures(tokens.cpu().numpy(), pooled.float().cpu().numpy()))
        return out

    # -- videos -------------------------------------------------------------------------------
    def encode_video(
        self, path: str | Path, *, threads: int = 1, progress: Progress | None = None
    ) -> EncodedVideo:
        """Every stream of one video, decoded once (see :mod:`.clip_slowfast_frames`)."""
        from momentkit.utils.memory import bounded_large_allocations
        from momentkit.utils.prefetch import prefetch
        from momentkit.video.decode import VideoError

        bounded_large_allocations()  # windows off the heap: memory flat on long videos
        source = FrameSource(path, self.clip_len, self.mode, self.slowfast is not None, threads)
        total = source.expected_clips
        if progress is not None:
            progress(0, total)
        frames: list[np.ndarray] = []
        windows: list[np.ndarray] = []
        parts: dict[str, list[np.ndarray]] = {"clip": [], "slowfast": []}
        done = {"clip": 0, "slowfast": 0}

        def run_clip() -> None:
            parts["clip"].append(self.encode_frames(np.stack(frames)))
            done["clip"] += len(frames)
            frames.clear()

        def run_slowfast() -> None:
            parts["slowfast"].append(self.encode_windows(np.stack(windows)))
            done["slowfast"] += len(windows)
            windows.clear()

        def report() -> None:
            if progress is not None:
                streams = ["clip"] + (["slowfast"] if self.slowfast is not None else [])
                progress(min(min(done[s] for s in streams), total), total)

        started = time.perf_counter()
        waited = 0.0  # time the models waited for decoded frames
        items = prefetch(source, 2 * max(self.batch_size, self.slowfast_batch))
        try:
            while True:
                t0 = time.perf_counter()
                step = next(items, None)
                waited += time.perf_counter() - t0
                if step is None:
                    break
                kind, item = step
                if kind == "clip":
                    frames.append(item)
                    if len(frames) == self.batch_size:
                        run_clip()
                        report()
                else:
                    windows.append(item)
                    if len(windows) == self.slowfast_batch:
                        run_slowfast()
                        report()
        finally:
            items.close()  # stops the decoding thread if a model failed
        if frames:
            run_clip()
        if windows:
            run_slowfast()
        streams = {k: np.concatenate(v) for k, v in parts.items() if v}
        if "clip" not in streams:
            raise VideoError(path, "the video stream holds no decodable frame")
        length = min(len(v) for v in streams.values())
        if self.mode == "default":
            length = source.expected_clips
            if any(len(v) < length - 1 for v in streams.values()):
                raise VideoError(
                    path,
                    f"video data ends before the {source.duration:.2f} s the file declares",
                    "The file is truncated or damaged; re-download or re-encode it",
                )
            streams = {k: _fit(v, length) for k, v in streams.items()}
        streams = {
            k: np.ascontiguousarray(v[:length], dtype=np.float32) for k, v in streams.items()
        }
        if progress is not None:
            progress(length, total)
        self.last_stats = {
            "seconds": time.perf_counter() - started,
            "waited_for_frames_s": waited,
        }
        return EncodedVideo(source.duration, streams)

    def pipeline_record(self) -> dict[str, object]:
        """The pipeline, its mode, models, stream widths and weights used (see
        :mod:`momentkit.extraction.record`)."""
        from momentkit.extraction.record import make_record

        return make_record(
            self.pipeline,
            mode=self.mode,
            clip_len=self.clip_len,
            video_streams=self.video_streams,
            text_stream=self.text_stream,
            text_dim=self.text_dim,
            weights={"clip": self.clip_source, "slowfast": self.slowfast_source},
        )


def _fit(features: np.ndarray, length: int) -> np.ndarray:
    """Cut to ``length`` rows, or repeat the last row to reach it (at most one missing)."""
    if len(features) >= length:
        return features[:length]
    return np.concatenate([features, np.repeat(features[-1:], length - len(features), 0)])


class FrameSource:
    """The frames of one video for the pipeline: iterating yields ``("clip", (224, 224, 3))``
    and ``("slowfast", (32, 224, 224, 3))`` items in decoding order, each stream's in clip
    order. Decoding runs wherever this is iterated (a background thread in
    :meth:`ClipSlowFastEncoder.encode_video`).

    Attributes:
        duration: the stream's declared duration (seconds).
        expected_clips: ``ceil(duration / clip_len)``.
        native_fps: the stream's average frame rate.
    """

    def __init__(
        self, path: str | Path, clip_len: float, mode: str, slowfast: bool, threads: int = 1
    ) -> None:
        from momentkit.video.decode import probe
        from momentkit.video.filtered import FilteredFrames, FpsBranch, source_info

        self.path, self.clip_len, self.mode, self.with_slowfast = (
            Path(path),
            clip_len,
            mode,
            slowfast,
        )
        info = source_info(self.path)
        duration = info.duration
        if duration is None:
            duration = probe(self.path).duration
        self.duration = float(duration)
        self.native_fps: Fraction | None = info.avg_fps
        self.expected_clips = num_clips(self.duration, clip_len)
        branches = {"clip": FpsBranch(clip_fps(clip_len, self.duration, mode))}
        if slowfast:
            branches["slowfast"] = FpsBranch(SLOWFAST_FPS)
        self.frames = FilteredFrames(self.path, branches, threads)
        limit = self.expected_clips if (mode == "lighthouse" and self.duration > 0) else None
        if mode == "default":
            limit = self.expected_clips
        self.limit = limit

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        assembler = WindowAssembler(self.clip_len, self.native_fps, self.mode, self.limit)
        clip_count = 0
        for s in self.frames:
            if s.branch == "clip":
                if self.mode == "default" and clip_count >= self.expected_clips:
                    continue
                clip_count += 1
                yield "clip", s.rgb
            else:
                for w in assembler.add(s.rgb):
                    yield "slowfast", w.frames
        for w in assembler.finish():
            yield "slowfast", w.frames
        if self.mode == "default" and 0 < clip_count < self.expected_clips:
            yield "clip", self.frames.last["clip"]  # a last partial clip: the last frame
