"""Cheap semantic index features for clip trimming: the ``bam`` encoder.

Fang et al. (AAAI 2024) index every clip of a long video with three light features before
deciding which clips deserve the full moment-retrieval model:

- **B**ackground, from one sampled frame of the clip (the scene);
- **A**ppearance, from the same frame (what is in view);
- **M**otion, from the clip's first and last frames (what changes).

Each part has its own extractor, chosen by name (:data:`BAM_EXTRACTORS`):

==========  =========================================================  =====================
name        extractor                                                  channels
==========  =========================================================  =====================
``grid``    colour layout: mean RGB of a 4 x 4 grid + RGB std           51
``effnet``  EfficientNet-Lite0 on a 128-pixel centre crop (pooled)     1280
``motion``  frame-difference statistics of the two end frames          48
            (:class:`~momentkit.encoders.motion.MotionEncoder`, K = 2)
==========  =========================================================  =====================

Spec: ``bam`` (= ``bam:grid,effnet,motion``) or ``bam:B,A,M`` with any extractor for each part,
e.g. ``bam:grid,grid,motion`` (no neural network at all). The encoder writes one stream,
``bam`` ``(T, D_B + D_A + D_M)``, in that order.

Frames: three per clip at the centres of its three thirds (1/6, 1/2 and 5/6 of the clip,
:func:`momentkit.video.sampling.sample_times`); the middle one is the sampled frame, the outer
ones stand for the clip's first and last frames. Decoding at the small size the extractors
need (128 pixels on the shorter side) keeps the whole index pass cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from momentkit.encoders.base import Encoder, EncoderError
from momentkit.encoders.preprocess import ImageTransform
from momentkit.utils.registry import Registry
from momentkit.video.decode import FrameRequest

BAM_STREAM = "bam"
DEFAULT_PARTS = ("grid", "effnet", "motion")
#: frames per clip: first third, centre, last third
FRAMES_PER_CLIP = 3
CENTRE, FIRST, LAST = 1, 0, 2


class IndexExtractor(Protocol):
    """One BAM part: images -> per-clip features."""

    dim: int

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """``(T, K, H, W, 3)`` uint8 (``K`` = the frames this part reads) -> ``(T, dim)``."""
        ...


ExtractorFactory = Callable[[str, int], IndexExtractor]
#: extractor name -> factory ``(device, size) -> extractor``
BAM_EXTRACTORS: Registry[ExtractorFactory] = Registry("bam extractor")


class ColorLayout:
    """Mean RGB of each cell of a ``grid x grid`` layout, then the per-channel std of the
    frame: ``3 * grid**2 + 3`` values in ``[0, 1]`` (the last frame given is used)."""

    def __init__(self, grid: int = 4) -> None:
        if grid < 1:
            raise EncoderError(f"colour grid must be >= 1, got {grid}")
        self.grid = grid
        self.dim = 3 * grid * grid + 3

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """``(T, K, H, W, 3)`` uint8 -> ``(T, 3 * grid**2 + 3)`` float32."""
        x = torch.from_numpy(np.ascontiguousarray(frames[:, -1])).float() / 255.0
        x = x.permute(0, 3, 1, 2)  # (T, 3, H, W)
        cells = F.adaptive_avg_pool2d(x, self.grid).flatten(1)
        return torch.cat([cells, x.std(dim=(2, 3))], dim=1).numpy().astype(np.float32)


class SmallEfficientNet:
    """EfficientNet-Lite0's pooled features of a small centre crop (``size`` pixels)."""

    def __init__(self, device: str = "cpu", size: int = 128) -> None:
        from momentkit.encoders.offline import load_efficientnet_lite0

        self.device = device
        self.model = load_efficientnet_lite0().to(device)
        self.transform = ImageTransform(
            resize=size, crop=size, mean=(127 / 255,) * 3, std=(128 / 255,) * 3
        )
        self.dim = int(self.model._fc.in_features)

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """``(T, K, H, W, 3)`` uint8 -> ``(T, 1280)`` float32 (the last frame given)."""
        x = self.transform(frames[:, -1], self.device)
        fmap = self.model.extract_features(x)
        return F.adaptive_avg_pool2d(fmap, 1).flatten(1).float().cpu().numpy()


class EndFrameMotion:
    """:class:`~momentkit.encoders.motion.MotionEncoder` statistics of the two end frames."""

    def __init__(self, device: str = "cpu", size: int = 128, grid: int = 4) -> None:
        from momentkit.encoders.motion import MotionEncoder

        self.encoder = MotionEncoder(2, grid=grid, short_side=min(size, 64), device=device)
        self.dim = self.encoder.video_streams["motion"]

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """``(T, 2, H, W, 3)`` uint8 (first and last frames) -> ``(T, 48)`` float32."""
        return self.encoder.encode_clips(frames)["motion"]


BAM_EXTRACTORS.register("grid")(lambda device, size: ColorLayout())
BAM_EXTRACTORS.register("effnet")(lambda device, size: SmallEfficientNet(device, size))
BAM_EXTRACTORS.register("motion")(lambda device, size: EndFrameMotion(device, size))


class BAMEncoder(Encoder):
    """Background, Appearance and Motion index features of every clip (module docstring).

    Args:
        background, appearance, motion: extractor names (:data:`BAM_EXTRACTORS`).
        size: shorter side of the decoded frames, and the crop of ``effnet``.
        device: torch device.
        batch_size: clips per extractor call.
    """

    def __init__(
        self,
        background: str = DEFAULT_PARTS[0],
        appearance: str = DEFAULT_PARTS[1],
        motion: str = DEFAULT_PARTS[2],
        *,
        size: int = 128,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        if size < 8:
            raise EncoderError(f"bam frame size must be >= 8 pixels, got {size}")
        if batch_size < 1:
            raise EncoderError(f"batch_size must be >= 1, got {batch_size}")
        names = (background, appearance, motion)
        for part, name in zip(("background", "appearance", "motion"), names):
            if name not in BAM_EXTRACTORS:
                raise EncoderError(
                    f"unknown bam {part} extractor '{name}'; known: "
                    f"{', '.join(BAM_EXTRACTORS.names())}"
                )
        self.name = "bam:" + ",".join(names)
        self.parts = {n: BAM_EXTRACTORS.get(n)(device, size) for n in dict.fromkeys(names)}
        self.layout = names
        self.batch_size = batch_size
        self.frame_request = FrameRequest(FRAMES_PER_CLIP, size)
        self.video_streams = {BAM_STREAM: sum(self.parts[n].dim for n in names)}

    @property
    def part_dims(self) -> dict[str, int]:
        """Channels of each part, in stream order."""
        return {
            role: self.parts[n].dim
            for role, n in zip(("background", "appearance", "motion"), self.layout)
        }

    def encode_clips(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """``(T, 3, H, W, 3)`` uint8 -> ``{"bam": (T, D)}`` float32.

        Background and appearance read the centre frame, motion the first and last frames; an
        extractor used by two parts on the same frame runs once.
        """
        if frames.ndim != 5 or frames.shape[1] != FRAMES_PER_CLIP:
            raise EncoderError(
                f"bam needs {FRAMES_PER_CLIP} frames per clip (T, 3, H, W, 3), got shape "
                f"{frames.shape}"
            )
        out = []
        for start in range(0, len(frames), self.batch_size):
            chunk = frames[start : start + self.batch_size]
            centre = chunk[:, CENTRE : CENTRE + 1]
            ends = chunk[:, [FIRST, LAST]]
            cache: dict[str, np.ndarray] = {}
            row = []
            for role, name in zip(("background", "appearance", "motion"), self.layout):
                view = ends if role == "motion" else centre
                key = f"{name}:{'ends' if role == 'motion' else 'centre'}"
                if key not in cache:
                    cache[key] = np.asarray(self.parts[name](view), dtype=np.float32)
                row.append(cache[key])
            out.append(np.concatenate(row, axis=1))
        return {BAM_STREAM: np.concatenate(out).astype(np.float32)}


def parse_parts(arg: str | None) -> tuple[str, str, str]:
    """``"grid,effnet,motion"`` -> the three extractor names; ``None`` -> the defaults.

    Raises:
        EncoderError: not exactly three comma-separated names.
    """
    if arg is None:
        return DEFAULT_PARTS
    names = tuple(n.strip() for n in arg.split(","))
    if len(names) != 3 or not all(names):
        raise EncoderError(
            f"'bam:{arg}': give three extractors, background,appearance,motion, e.g. "
            "'bam:grid,effnet,motion'"
        )
    return names  # type: ignore[return-value]


def build_bam_encoder(
    arg: str | None, *, device: str, batch_size: int, frames_per_clip: int
) -> BAMEncoder:
    """The ``bam[:B,A,M]`` factory of :data:`momentkit.encoders.registry.ENCODERS`
    (``frames_per_clip`` is ignored: BAM always reads three frames per clip)."""
    return BAMEncoder(*parse_parts(arg), device=device, batch_size=max(batch_size, 1))


__all__ = [
    "BAM_EXTRACTORS",
    "BAM_STREAM",
    "BAMEncoder",
    "ColorLayout",
    "EndFrameMotion",
    "SmallEfficientNet",
    "build_bam_encoder",
    "parse_parts",
]
