"""Which frames each clip of the ``clip_slowfast`` pipeline reads, in both of its modes.

Frames come from :class:`momentkit.video.filtered.FilteredFrames`: a ``1 / clip_len`` fps branch
for CLIP (frame ``k`` = the last frame before ``(k + 1/2) clip_len``: the clip's centre) and a
30 fps branch for SlowFast (window ``k`` = 30 fps frames ``[k n, (k + 1) n)``, ``n = 30
clip_len``), both scaled to a 224 shorter side and centre-cropped to 224 x 224.

``default`` (what the benchmark features intend):

- ``T = ceil(duration / clip_len)`` clips for every stream (QVHighlights: 150 s -> 75);
- CLIP: frame ``k`` of the fps branch; a last partial clip past the branch's end gets the
  video's last frame;
- SlowFast: 32 frames spread over the whole window, ``linspace(0, 63, 32)`` clamped to the
  window (every other 30 fps frame: 64 frames at sampling rate 2, SlowFast 8x8's input),
  whatever the video's own frame rate; a last partial window repeats its last frame.

``lighthouse`` (Lighthouse's ``frame_loaders`` exactly):

- CLIP: every frame of the fps branch; a video shorter than ``clip_len + 0.1`` s uses
  ``2 / max(int(duration), 1)`` fps instead;
- SlowFast: the 30 fps frames padded to a whole second with the last frame, then to a whole
  window by repeating the last second; ``ceil(duration / clip_len)`` windows kept; in each,
  frames ``linspace(0, int(64 floor(fps) / 30 - 1), 32)`` (``fps`` the video's average rate):
  on a 15 fps video only the first ~29 frames (~0.97 s) of each 2 s window;
- ``T = min(CLIP frames, SlowFast windows)`` (the shorter stream is the length).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

SLOWFAST_FPS = 30
SLOWFAST_FRAMES = 32
SLOWFAST_SAMPLING = 2
MODES = ("default", "lighthouse")


def clip_fps(clip_len: float, duration: float | None, mode: str) -> Fraction:
    """Frame rate of the CLIP branch: ``1 / clip_len``; in ``lighthouse`` mode a video shorter
    than ``clip_len + 0.1`` s gets ``2 / max(int(duration), 1)``."""
    fps = Fraction(1) / Fraction(clip_len).limit_denominator(1000)
    if mode == "lighthouse" and duration and 0 < duration < float(1 / fps) + 0.1:
        return Fraction(2, max(int(duration), 1))
    return fps


def slowfast_indices(window: int, native_fps: Fraction | None, mode: str) -> np.ndarray:
    """``(32,)`` int64 frame indices read inside a window of ``window`` 30 fps frames.

    ``default``: ``linspace(0, 63, 32)`` clamped to the window. ``lighthouse``:
    ``linspace(0, int(32 x 2 x floor(native_fps) / 30 - 1), 32)`` clamped (computed in torch
    float32 as the reference does, then truncated).
    """
    import torch

    if mode == "lighthouse":
        fps = math.floor(native_fps) if native_fps else 0
        end = int(SLOWFAST_FRAMES * SLOWFAST_SAMPLING * fps / SLOWFAST_FPS - 1)
    else:
        end = SLOWFAST_FRAMES * SLOWFAST_SAMPLING - 1
    index = torch.linspace(0, end, SLOWFAST_FRAMES)
    return torch.clamp(index, 0, window - 1).long().numpy()


def num_clips(duration: float, clip_len: float) -> int:
    """``ceil(duration / clip_len)``, at least 1."""
    from momentkit.video.sampling import num_clips as _num_clips

    return _num_clips(duration, clip_len)


@dataclass
class Window:
    """One SlowFast clip: ``frames`` ``(32, 224, 224, 3)`` uint8, its index and its first
    frame's 30 fps index (for checks)."""

    index: int
    frames: np.ndarray


class WindowAssembler:
    """Groups the 30 fps branch's frames into SlowFast windows and samples each.

    Feed frames with :meth:`add` (in order); windows come out as soon as complete; call
    :meth:`finish` at the end of the stream for the padded tail.

    Args:
        clip_len: seconds per window.
        native_fps: the video's average frame rate (``lighthouse`` sampling depends on it).
        mode: ``default`` or ``lighthouse``.
        limit: windows kept (``ceil(duration / clip_len)``); ``None``: all.
    """

    def __init__(
        self, clip_len: float, native_fps: Fraction | None, mode: str, limit: int | None
    ) -> None:
        self.size = round(SLOWFAST_FPS * clip_len)
        self.mode = mode
        self.limit = limit
        self.index = slowfast_indices(self.size, native_fps, mode)
        self.buffer: list[np.ndarray] = []
        self.done = 0
        self.seen = 0
        self.last_second: list[np.ndarray] = []

    def _emit(self, frames: list[np.ndarray]) -> Iterator[Window]:
        if self.limit is not None and self.done >= self.limit:
            return
        picked = np.stack([frames[i] for i in self.index])
        yield Window(self.done, picked)
        self.done += 1

    def add(self, frame: np.ndarray) -> Iterator[Window]:
        """Add the next 30 fps frame; yield the window it completes, if any."""
        self.buffer.append(frame)
        self.seen += 1
        if len(self.buffer) == self.size:
            frames, self.buffer = self.buffer, []
            yield from self._emit(frames)

    def finish(self) -> Iterator[Window]:
        """Pad and emit the last partial window (if any)."""
        if not self.buffer:
            return
        frames, self.buffer = self.buffer, []
        if self.mode == "lighthouse":
            second = SLOWFAST_FPS
            frames = frames + [frames[-1]] * ((-len(frames)) % second)
            while len(frames) < self.size:  # repeat the last whole second
                frames = frames + frames[-second:]
            frames = frames[: self.size]
        else:
            frames = frames + [frames[-1]] * (self.size - len(frames))
        yield from self._emit(frames)
