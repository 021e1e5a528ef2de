"""An indexed video library: the SQLite store plus the vector index built from it.

The vector index is derived data: when the library is opened (or when another process wrote
to it since, seen by ``meta.generation``) it is rebuilt from the retrieval stream stored in
SQLite, so it can never disagree with the metadata. Building it reads ``N x D`` floats, about
0.5 s for 100 000 clips of 1000 dimensions; searching it is the fast part.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from momentkit.encoders.base import Encoder
from momentkit.inference.results import VideoEncoding
from momentkit.library.space import RetrievalSpace
from momentkit.library.store import ClipTable, LibraryError, LibraryStore, VideoRecord
from momentkit.library.vectors import VectorIndex


class Library:
    """Read access to a library for search.

    Args:
        store: the library database (see :meth:`open`).

    Attributes:
        store: the :class:`LibraryStore`.
    """

    def __init__(self, store: LibraryStore) -> None:
        self.store = store
        self._lock = threading.RLock()
        self._generation: int | None = None
        self._index: VectorIndex | None = None
        self._clips: ClipTable | None = None
        self._encoder: Encoder | None = None

    @classmethod
    def open(cls, path: str | Path) -> Library:
        """Open an existing library file.

        Raises:
            LibraryError: no library at ``path``.
        """
        return cls(LibraryStore(path))

    def close(self) -> None:
        """Close the database."""
        self.store.close()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def spec(self) -> str | None:
        """The encoder spec of the library (``None`` while nothing was ever indexed)."""
        return self.store.encoder

    @property
    def space(self) -> RetrievalSpace:
        """The retrieval space of the library's encoder.

        Raises:
            LibraryError: nothing was ever indexed into the library.
        """
        spec = self.spec
        if spec is None:
            raise self._empty()
        return RetrievalSpace.for_spec(spec)

    @property
    def clip_len(self) -> float:
        """Seconds per clip of the library's features.

        Raises:
            LibraryError: nothing was ever indexed into the library.
        """
        clip_len = self.store.clip_len
        if clip_len is None:
            raise self._empty()
        return clip_len

    def _empty(self) -> LibraryError:
        return LibraryError(
            f"{self.store.path}: the library is empty. Index videos first: "
            f"`momentkit index VIDEO_DIR --db {self.store.path}`"
        )

    # -- the vector index --------------------------------------------------------------------

    def vector_index(self) -> tuple[VectorIndex | None, ClipTable]:
        """The vector index and clip table, rebuilt if the database changed since last time.

        Returns ``(None, empty table)`` for a library without clips.
        """
        with self._lock:
            generation = self.store.generation
            if generation != self._generation or self._clips is None:
                self._index, self._clips = self._build()
                self._generation = generation
            return self._index, self._clips

    def _build(self) -> tuple[VectorIndex | None, ClipTable]:
        clips = self.store.clip_table()
        if self.spec is None or not len(clips.ids):
            return None, clips
        space = self.space
        ids = clips.by_video()
        index: VectorIndex | None = None
        for video_id, features in self.store.iter_stream(space.stream):
            vectors = space.clip_vectors(features)
            if index is None:
                index = VectorIndex(vectors.shape[1])
            index.add(ids[video_id][: len(vectors)], vectors)
        return index, clips

    def search_clips(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``k`` clips of the library most similar to a query vector.

        Args:
            query: ``(D,)`` retrieval vector of the query.
            k: clips wanted.

        Returns:
            ``scores (k',)`` float32 best first, ``video_ids (k',)`` and ``clip_idx (k',)``
            int64, ``k' <= k``.
        """
        index, clips = self.vector_index()
        if index is None:
            empty = np.zeros(0, np.int64)
            return np.zeros(0, np.float32), empty, empty
        scores, ids = index.search(np.asarray(query, np.float32)[None], k)
        keep = ids[0] >= 0
        video_ids, idx = clips.lookup(ids[0][keep])
        return scores[0][keep], video_ids, idx

    # -- per-video data ----------------------------------------------------------------------

    def video(self, video_id: int) -> VideoRecord:
        """The record of a video.

        Raises:
            LibraryError: no such video (e.g. deleted by a later index run).
        """
        record = self.store.video(video_id)
        if record is None:
            raise LibraryError(f"{self.store.path}: no video with id {video_id}")
        return record

    def encoding(self, video_id: int) -> VideoEncoding:
        """The stored features of a video, ready for ``Predictor.predict``."""
        record = self.video(video_id)
        return VideoEncoding(
            path=str(record.path),
            duration=record.duration,
            clip_len=record.clip_len,
            streams=self.store.streams(video_id),
        )

    def clip_relevance(self, video_id: int, query: np.ndarray) -> np.ndarray:
        """``(T,)`` inner product of the query vector with each clip vector of a video."""
        stream = self.store.streams(video_id, [self.space.stream]).get(self.space.stream)
        if stream is None:
            return np.zeros(0, np.float32)
        return self.space.clip_vectors(stream) @ np.asarray(query, np.float32)
