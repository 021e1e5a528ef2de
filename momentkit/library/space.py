"""The space in which clips and queries are compared for coarse retrieval.

Coarse retrieval needs one vector per clip and one per query whose inner product says how well
the clip matches the query. Which vectors depends on the encoder the library was indexed with:

* ``clip:ID`` / ``siglip:ID``: images and texts share an embedding space. Clip vectors are the
  clip's image embedding (stream ``clip``/``siglip``), query vectors the projected text
  embedding (``pooler_output``), both L2-normalised, so the inner product is their cosine.
* ``offline`` / ``offline-glove``: images and texts do not share a space; they are bridged
  through the names of the ImageNet classes (:mod:`momentkit.encoders.offline`). Clip vectors
  are the clip's ``(1000,)`` class probabilities (stream ``imagenet_probs``), the query vector
  the ``(1000,)`` weights of the class names for the query, so the inner product is exactly the
  zero-shot relevance ``sum_c p(c | clip) * w_c(query)``. The weights are the cosine
  similarities of the query and the class names (``temperature=None``) or, by default, their
  softmax at the zero-shot predictor's temperature (0.05), so that coarse retrieval ranks clips
  exactly as the zero-shot predictor scores them (:mod:`momentkit.inference.zero_shot`). The
  stored clip vectors do not depend on it: the temperature can change without re-indexing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from momentkit.encoders.base import Encoder, EncoderError
from momentkit.encoders.registry import parse_spec
from momentkit.inference.zero_shot import class_weights

#: softmax temperature of the class weights of the offline bridge (the zero-shot predictor's)
BRIDGE_TEMPERATURE = 0.05

# encoder family -> (retrieval stream or None for "the family's name", normalise vectors)
_FAMILIES: dict[str, tuple[str | None, bool]] = {
    "offline": ("imagenet_probs", False),
    "offline-glove": ("imagenet_probs", False),
    "clip": (None, True),
    "siglip": (None, True),
}


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class RetrievalSpace:
    """How clips and queries of one encoder become comparable vectors.

    Attributes:
        spec: the encoder spec, e.g. ``offline`` or ``clip:openai/clip-vit-base-patch32``.
        stream: the video stream whose rows are the clip vectors.
        normalise: L2-normalise clip and query vectors (joint image-text spaces).
        temperature: class-weight softmax temperature of the offline bridge (``None``: the raw
            class-name similarities); unused by joint spaces.
    """

    spec: str
    stream: str
    normalise: bool
    temperature: float | None = BRIDGE_TEMPERATURE

    @classmethod
    def for_spec(cls, spec: str, temperature: float | None = BRIDGE_TEMPERATURE) -> RetrievalSpace:
        """The space of encoder ``spec`` (no model is loaded).

        Raises:
            EncoderError: the encoder gives clips and queries no comparable vectors.
        """
        family, _ = parse_spec(spec)
        if family not in _FAMILIES:
            raise EncoderError(
                f"encoder '{spec}' cannot index a searchable library: its clips and queries share "
                f"no space. Use one of: offline, offline-glove, clip:<model>, siglip:<model>"
            )
        stream, normalise = _FAMILIES[family]
        if temperature is not None and temperature <= 0:
            raise ValueError(f"temperature must be > 0 or None, got {temperature}")
        return cls(spec, stream or family, normalise, temperature)

    def clip_vectors(self, features: np.ndarray) -> np.ndarray:
        """``(T, D)`` retrieval vectors of a video from its ``(T, D)`` :attr:`stream` features."""
        features = np.asarray(features, dtype=np.float32)
        return _unit(features) if self.normalise else features

    def query_vectors(self, encoder: Encoder, queries: Sequence[str]) -> np.ndarray:
        """``(Q, D)`` float32 retrieval vectors of ``queries`` with ``encoder`` (of :attr:`spec`).

        Raises:
            EncoderError: ``encoder`` is not the library's encoder, or a query is empty.
        """
        if encoder.name != self.spec:
            raise EncoderError(
                f"the library was indexed with encoder '{self.spec}' but the query encoder is "
                f"'{encoder.name}'"
            )
        if not queries or any(not q.strip() for q in queries):
            raise EncoderError("queries must be non-empty strings")
        if not self.normalise:  # the ImageNet-class bridge of the offline encoder
            similarity = getattr(encoder, "class_similarity", None)
            if similarity is None:
                raise EncoderError(f"encoder '{encoder.name}' has no class_similarity()")
            return np.stack([class_weights(similarity(q), self.temperature) for q in queries])
        pooled = [f.pooler_output for f in encoder.encode_text(list(queries))]
        return _unit(np.stack(pooled))
