"""Model-ready features of one item: video streams joined on channels, query tokens.

This reproduces the input pipeline of Moment-DETR's ``StartEndDataset``:

- video: each stream is cut to ``max_len`` clips and (optionally) L2-normalised per clip, the
  streams are cut to the shortest one (extractors disagree by a clip or two) and concatenated
  on channels, then the two TEF channels are appended;
- query: the token features are cut to ``max_len`` tokens and (optionally) L2-normalised.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from momentkit.features.base import FeatureStore, text_key
from momentkit.features.tef import TEF_DIM, temporal_endpoint_features
from momentkit.utils.errors import FeatureError

L2_EPS = 1e-5  # added to the norm, as Moment-DETR's l2_normalize_np_array does


def l2_normalize(features: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Divide each row of ``(L, D)`` ``features`` by its L2 norm plus ``1e-5``.

    Args:
        features: ``(L, D)`` float32.
        out: optional ``(L, D)`` float32 destination (may be a column slice of a larger array).

    Returns:
        ``(L, D)`` float32, ``out`` when given.
    """
    norm = np.sqrt(np.einsum("ij,ij->i", features, features))
    norm += np.float32(L2_EPS)
    return np.divide(features, norm[:, None], out=out, dtype=np.float32)


class VideoFeatureSource:
    """Several video streams concatenated on channels, cut to the shortest, plus TEF.

    Args:
        stores: one store per stream (e.g. SlowFast 2304-d and CLIP 512-d for QVHighlights).
        normalize: L2-normalise each stream per clip before concatenating.
        use_tef: append the 2 temporal endpoint channels.
        max_len: keep at most this many clips.
    """

    def __init__(
        self,
        stores: Sequence[FeatureStore],
        *,
        normalize: bool = True,
        use_tef: bool = True,
        max_len: int | None = None,
    ) -> None:
        if not stores:
            raise ValueError("at least one video feature store is needed")
        self.stores = list(stores)
        self.normalize = normalize
        self.use_tef = use_tef
        self.max_len = max_len

    @property
    def dim(self) -> int:
        """Output channels: the streams' channels summed, plus 2 with TEF."""
        return sum(s.dim for s in self.stores) + (TEF_DIM if self.use_tef else 0)

    def __contains__(self, vid: object) -> bool:
        return all(vid in s for s in self.stores)

    def get(self, vid: str) -> np.ndarray:
        """``(T, D)`` float32 features of video ``vid`` (a new, writable array).

        Raises:
            FeatureError: a stream lacks ``vid`` or has no clips for it.
        """
        arrays = [s.get(vid, self.max_len) for s in self.stores]
        num_clips = min(a.shape[0] for a in arrays)
        if num_clips == 0:
            empty = next(s for s, a in zip(self.stores, arrays) if a.shape[0] == 0)
            raise FeatureError(
                f"{empty.path}: video '{vid}' has 0 clips. Re-extract its features or drop "
                "its annotations"
            )
        width = sum(a.shape[1] for a in arrays) + (TEF_DIM if self.use_tef else 0)
        out = np.empty((num_clips, width), np.float32)
        col = 0
        for a in arrays:
            dst = out[:, col : col + a.shape[1]]
            if self.normalize:
                l2_normalize(a[:num_clips], out=dst)
            else:
                dst[...] = a[:num_clips]
            col += a.shape[1]
        if self.use_tef:
            out[:, col:] = temporal_endpoint_features(num_clips)
        return out


class TextFeatureSource:
    """Query token features read from ``qid<qid>`` keys.

    Args:
        store: the query-feature store.
        normalize: L2-normalise each token.
        max_len: keep at most this many tokens.
    """

    def __init__(
        self, store: FeatureStore, *, normalize: bool = True, max_len: int | None = None
    ) -> None:
        self.store = store
        self.normalize = normalize
        self.max_len = max_len

    @property
    def dim(self) -> int:
        """Channels per token."""
        return self.store.dim

    def __contains__(self, qid: object) -> bool:
        return isinstance(qid, int | str) and text_key(qid) in self.store

    def get(self, qid: int | str) -> np.ndarray:
        """``(N, D)`` float32 token features of query ``qid`` (a new, writable array).

        Raises:
            FeatureError: the store lacks the query or it has no tokens.
        """
        tokens = self.store.get(text_key(qid), self.max_len)
        if tokens.shape[0] == 0:
            raise FeatureError(
                f"{self.store.path}: query {qid} has 0 tokens. Re-extract its features"
            )
        if self.normalize:
            return l2_normalize(tokens)
        return np.array(tokens, dtype=np.float32)
