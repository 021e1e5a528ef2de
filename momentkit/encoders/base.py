"""What every feature encoder provides, whatever model is behind it.

An encoder turns the frames of each clip into one feature vector per clip for each of its
*video streams*, and (optionally) a query into token features for its *text stream*. Stream
names are the folder names of the standard feature layout::

    FEAT_DIR/<video stream>/<vid>.npz   features           (T, D)
    FEAT_DIR/<text stream>/qid<qid>.npz last_hidden_state  (N, D), pooler_output (D,)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from momentkit.utils.errors import MomentkitError
from momentkit.video.decode import FrameRequest

#: ``progress(done, total)``
Progress = Callable[[int, int], None]


class EncoderError(MomentkitError):
    """An encoder that cannot be built: unknown name, bad spec, missing model or package."""


@dataclass(frozen=True)
class TextFeatures:
    """The features of one query.

    Attributes:
        last_hidden_state: ``(N, D)`` float32, one row per token (padding excluded).
        pooler_output: ``(D,)`` float32, one vector for the whole query.
    """

    last_hidden_state: np.ndarray
    pooler_output: np.ndarray


class Encoder(ABC):
    """A named source of per-clip video features and, optionally, query features.

    Subclasses set:
        name: the spec it was built from, e.g. ``clip:openai/clip-vit-base-patch32``.
        frame_request: frames per clip and size it needs from the decoder; ``None`` for an
            encoder without a video tower.
        video_streams: stream name -> channels ``D`` of :meth:`encode_clips`' outputs.
        text_stream: the text stream's name, ``None`` without a text tower.
        text_dim: ``D`` of the text features (0 without a text tower).
    """

    name: str = ""
    frame_request: FrameRequest | None = None
    video_streams: dict[str, int]
    text_stream: str | None = None
    text_dim: int = 0

    def encode_clips(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """Per-clip features of a batch of clips.

        Args:
            frames: ``(T, K, H, W, 3)`` uint8 RGB, as :attr:`frame_request` asked.

        Returns:
            stream name -> ``(T, D)`` float32, for every stream of :attr:`video_streams`.
        """
        raise NotImplementedError(f"encoder '{self.name}' has no video tower")

    def encode_text(self, queries: Sequence[str]) -> list[TextFeatures]:
        """Token and pooled features of each query (empty queries are not allowed)."""
        raise NotImplementedError(f"encoder '{self.name}' has no text tower")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class TorchEncoder(Encoder):
    """An encoder running torch modules on ``device``, ``batch_size`` images per forward pass."""

    def __init__(self, device: str = "cpu", batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = device
        self.batch_size = batch_size

    @abstractmethod
    def _encode_images(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """stream -> ``(B, D)`` float32 features of ``(B, H, W, 3)`` uint8 images."""

    def encode_clips(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """Encode every frame, ``batch_size`` at a time, and average each clip's ``K`` frames."""
        t, k = frames.shape[:2]
        images = frames.reshape(t * k, *frames.shape[2:])
        parts = [
            self._encode_images(images[i : i + self.batch_size])
            for i in range(0, len(images), self.batch_size)
        ]
        return {
            stream: np.concatenate([p[stream] for p in parts]).reshape(t, k, -1).mean(1)
            for stream in self.video_streams
        }


@dataclass(frozen=True)
class EncodedVideo:
    """What a :class:`PipelineEncoder` computes for one video.

    Attributes:
        duration: seconds of video (the stream's declared duration).
        streams: stream name -> ``(T, D)`` float32; every stream has the same ``T``.
    """

    duration: float
    streams: dict[str, np.ndarray]

    @property
    def num_clips(self) -> int:
        """``T``."""
        return next(iter(self.streams.values())).shape[0] if self.streams else 0


class PipelineEncoder(Encoder):
    """An encoder that decodes the video itself, the way a reference feature pipeline does.

    The per-clip interface (:meth:`Encoder.encode_clips` on frames momentkit's decoder samples)
    cannot reproduce a benchmark's features when the benchmark took its frames with other
    rules (``fps`` filters, several frame rates, windows of 32 frames). Such an encoder has no
    :attr:`frame_request`; extraction and search call :meth:`encode_video` on the file instead.
    """

    frame_request = None

    @abstractmethod
    def encode_video(
        self, path: str | Path, *, threads: int = 1, progress: Progress | None = None
    ) -> EncodedVideo:
        """Every video stream of ``path``.

        Args:
            path: the video file.
            threads: FFmpeg decoder threads (0: FFmpeg chooses).
            progress: called as ``progress(clips_done, clips_total)`` while it runs.

        Raises:
            VideoError: the file cannot be decoded.
        """

    def pipeline_record(self) -> dict[str, object]:
        """What makes these features: written beside them and into checkpoints trained on
        them (see :mod:`momentkit.extraction.record`)."""
        return {"pipeline": self.name}
