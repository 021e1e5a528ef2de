"""Videos with several queries of several tasks: the data of UniMD's co-training.

A :class:`VideoItem` is one video's features and one :class:`QueryGroup` per task: its sentence
queries (moment retrieval, MR) and/or every action class as a query (temporal action detection,
TAD), each with the pooled text embedding the model consumes and its ground-truth windows. A
class absent from the video is a query without windows (a negative).

:class:`MultiTaskSource` joins MR annotations (QVHighlights-schema JSONL) and TAD videos
(:mod:`momentkit.data.tad`) on their video ids and builds the item of any ``(video, tasks)``
unit; :func:`collate_videos` pads items into the multi-query batch::

    video_feats     (B, T, Dv) float32   video streams concatenated (+ TEF if enabled)
    video_mask      (B, T) bool
    query_feats     (B, Q, Dt) float32   pooled, L2-normalised query embeddings
    query_mask      (B, Q) bool
    query_task      (B, Q) int64         index into TASKS: 0 = MR, 1 = TAD
    query_segments  (B, Q, G, 2) float32 windows in feature-grid units (clip i = point i)
    segment_mask    (B, Q, G) bool
    duration (B,), clip_len, vids, query_keys (per video: (task, qid or class) per query),
    query_texts, mr_annotations (per video: the MR records, for predictions)

Windows are clipped to the ``num_clips * clip_len`` seconds the (truncated) features cover and
mapped to the grid as ``seconds / clip_len - grid_offset`` (0.5: clip centres; the official
UniMD code uses ``0.5 * num_frames / feat_stride`` and clips differently, see
:func:`grid_windows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from momentkit.data.records import MomentAnnotation, Qid
from momentkit.data.tad import TADVideo
from momentkit.features.base import FeatureStore
from momentkit.features.loading import open_feature_store
from momentkit.features.streams import VideoFeatureSource, l2_normalize
from momentkit.utils.errors import FeatureError

TASKS = ("mr", "tad")
#: how annotated windows are fitted to the features (:func:`grid_windows`)
WINDOW_CLIPPING = ("seconds", "none", "grid_end")


@dataclass
class QueryGroup:
    """One task's queries on one video.

    Attributes:
        task: ``mr`` or ``tad``.
        keys: MR qids, or TAD class names.
        texts: the query texts (sentences, or prompts of the classes).
        features: ``(Q, D)`` float32 pooled text embeddings.
        windows: per query, ``[[start, end], ...]`` seconds (may be empty).
    """

    task: str
    keys: list[Qid]
    texts: list[str]
    features: np.ndarray
    windows: list[list[list[float]]]


@dataclass
class VideoItem:
    """A video and its query groups.

    Attributes:
        vid: video id.
        duration: seconds.
        clip_len: seconds per feature clip.
        video: ``(T, Dv)`` float32 features.
        groups: one :class:`QueryGroup` per task.
        mr_annotations: the MR records of the video's MR group (for predictions).
        grid_offset: grid point ``g`` is the time ``(g + grid_offset) * clip_len``.
        window_clipping: how windows are fitted to the features (:func:`grid_windows`).
    """

    vid: str
    duration: float
    clip_len: float
    video: np.ndarray
    groups: list[QueryGroup]
    mr_annotations: list[MomentAnnotation] = field(default_factory=list)
    grid_offset: float = 0.5
    window_clipping: str = "seconds"


class MultiTaskSource:
    """The videos of a split with their MR and/or TAD queries.

    Args:
        video_stores: one store (or path) per video stream.
        clip_len: seconds per clip.
        mr_annotations: MR records (several may share a video).
        mr_text_store: the MR query-feature store; its ``pooler_output`` (or, for stores without
            it, the last token) is the query embedding.
        tad_videos: TAD videos.
        class_names: the TAD classes (each one a query on every TAD video).
        class_features: ``(C, D)`` embeddings of the class prompts.
        class_prompt: the prompt template (for the query texts).
        max_v_len: clips kept per video.
        use_tef: append the temporal endpoint features.
        normalize_video: L2-normalise each stream per clip.
        normalize_text: L2-normalise the query embeddings.
        normalize_mr_queries: with ``normalize_text``, normalise the sentence embeddings too
            (``False``: the class embeddings only, as the official UniMD code).
        grid_offset: see :class:`VideoItem` (UniMD's ``model.grid_offset``).
        window_clipping: see :func:`grid_windows` (UniMD's ``model.window_clipping``).

    Raises:
        FeatureError: a video or query has no features, or the class features do not fit.
    """

    def __init__(
        self,
        video_stores: Sequence[FeatureStore | str | Path],
        clip_len: float,
        *,
        mr_annotations: Sequence[MomentAnnotation] = (),
        mr_text_store: FeatureStore | str | Path | None = None,
        tad_videos: Sequence[TADVideo] = (),
        class_names: Sequence[str] = (),
        class_features: np.ndarray | None = None,
        class_prompt: str = "a video of {}",
        max_v_len: int | None = None,
        use_tef: bool = True,
        normalize_video: bool = True,
        normalize_text: bool = True,
        normalize_mr_queries: bool = True,
        grid_offset: float = 0.5,
        window_clipping: str = "seconds",
    ) -> None:
        self.clip_len = float(clip_len)
        self.normalize_mr_queries = normalize_mr_queries
        self.grid_offset = float(grid_offset)
        if window_clipping not in WINDOW_CLIPPING:
            raise ValueError(
                f"window_clipping must be one of {', '.join(WINDOW_CLIPPING)}, got "
                f"{window_clipping!r}"
            )
        self.window_clipping = window_clipping
        self.video = VideoFeatureSource(
            [open_feature_store(s) for s in video_stores],
            normalize=normalize_video,
            use_tef=use_tef,
            max_len=max_v_len,
        )
        self.normalize_text = normalize_text
        self.mr: dict[str, list[MomentAnnotation]] = {}
        for ann in mr_annotations:
            self.mr.setdefault(ann.vid, []).append(ann)
        self.mr_text = None
        if self.mr:
            if mr_text_store is None:
                raise ValueError("MR annotations need a query-feature store (mr_text_store)")
            self.mr_text = _pooled_store(mr_text_store)
        self.tad = {v.vid: v for v in tad_videos}
        self.class_names = list(class_names)
        self.class_texts = [class_prompt.format(c) for c in self.class_names]
        self.class_features = None
        if self.tad:
            got = 0 if class_features is None else len(class_features)
            if got != len(self.class_names) or not self.class_names:
                raise FeatureError(
                    f"TAD needs one embedding per class: got {got} for {len(self.class_names)} "
                    "classes. Encode the class prompts (momentkit.data.tad.encode_class_queries) "
                    "with the encoder of the MR query features"
                )
            feats = np.asarray(class_features, dtype=np.float32)
            self.class_features = l2_normalize(feats) if normalize_text else feats
        self._check()

    def _check(self) -> None:
        for store in self.video.stores:
            missing = sorted(v for v in self.vids() if v not in store)
            if missing:
                raise FeatureError(
                    f"{store.path}: no features for {len(missing)} video(s): "
                    f"{', '.join(missing[:5])}. Check that the store holds this split"
                )
        if self.mr_text is not None:
            missing_q = [
                a.qid
                for anns in self.mr.values()
                for a in anns
                if f"qid{a.qid}" not in self.mr_text
            ]
            if missing_q:
                raise FeatureError(
                    f"{self.mr_text.path}: no features for {len(missing_q)} query(ies), e.g. "
                    f"qid{missing_q[0]}. Point --text-features at this split's query store"
                )
        if self.class_features is not None and self.mr_text is not None:
            if self.class_features.shape[1] != self.mr_text.dim:
                raise FeatureError(
                    f"the class embeddings have {self.class_features.shape[1]} channels but the "
                    f"MR query features ({self.mr_text.path}) have {self.mr_text.dim}: encode both "
                    "with the same text encoder"
                )

    @property
    def video_dim(self) -> int:
        """Video channels (TEF included)."""
        return self.video.dim

    @property
    def text_dim(self) -> int:
        """Query-embedding channels."""
        if self.class_features is not None:
            return int(self.class_features.shape[1])
        assert self.mr_text is not None
        return self.mr_text.dim

    def vids(self, task: str | None = None) -> list[str]:
        """Sorted video ids with queries of ``task`` (``None``: of any task)."""
        if task == "mr":
            return sorted(self.mr)
        if task == "tad":
            return sorted(self.tad)
        return sorted(set(self.mr) | set(self.tad))

    def tasks_of(self, vid: str) -> tuple[str, ...]:
        """The tasks ``vid`` has queries of, in :data:`TASKS` order."""
        return tuple(t for t, d in (("mr", self.mr), ("tad", self.tad)) if vid in d)

    def duration(self, vid: str) -> float:
        """The video's duration (from its MR or TAD annotation)."""
        if vid in self.mr:
            return float(self.mr[vid][0].duration)
        return float(self.tad[vid].duration)

    def item(self, vid: str, tasks: Sequence[str] | None = None) -> VideoItem:
        """The features and query groups of ``vid`` for ``tasks`` (default: all it has)."""
        tasks = self.tasks_of(vid) if tasks is None else tuple(tasks)
        groups, records = [], []
        for task in tasks:
            if task == "mr":
                records = self.mr[vid]
                assert self.mr_text is not None
                feats = np.concatenate([self._query_embedding(a.qid) for a in records])
                groups.append(
                    QueryGroup(
                        "mr",
                        [a.qid for a in records],
                        [a.query for a in records],
                        feats,
                        [list(map(list, a.relevant_windows)) for a in records],
                    )
                )
            elif task == "tad":
                video = self.tad[vid]
                assert self.class_features is not None
                groups.append(
                    QueryGroup(
                        "tad",
                        list(self.class_names),
                        list(self.class_texts),
                        self.class_features,
                        [video.windows_of(c) for c in self.class_names],
                    )
                )
            else:
                raise ValueError(f"unknown task '{task}'; known: {', '.join(TASKS)}")
        return VideoItem(
            vid,
            self.duration(vid),
            self.clip_len,
            self.video.get(vid),
            groups,
            records,
            self.grid_offset,
            self.window_clipping,
        )

    def _query_embedding(self, qid: Qid) -> np.ndarray:
        assert self.mr_text is not None
        tokens = self.mr_text.get(f"qid{qid}")
        vec = tokens[-1:].astype(np.float32)  # pooler_output, or the last (EOS) token
        return l2_normalize(vec) if self.normalize_text and self.normalize_mr_queries else vec


def _pooled_store(store: FeatureStore | str | Path) -> FeatureStore:
    """The store opened on ``pooler_output`` when its files have it, else as it is."""
    if not isinstance(store, str | Path):
        return store
    opened = open_feature_store(store)
    try:
        pooled = open_feature_store(store, field="pooler_output")
        keys = pooled.keys()
        if keys:
            pooled.get(keys[0])
        return pooled
    except FeatureError:
        return opened


def grid_windows(
    windows: Sequence[Sequence[float]],
    num_clips: int,
    clip_len: float,
    grid_offset: float = 0.5,
    clipping: str = "seconds",
) -> np.ndarray:
    """Seconds -> feature-grid ``(n, 2)``: ``seconds / clip_len - grid_offset``.

    ``clipping``: ``seconds`` (momentkit) clips windows to the features' ``num_clips *
    clip_len`` seconds first and drops those left empty; ``none`` keeps them as annotated (the
    official Charades loader); ``grid_end`` drops windows starting at or after grid step
    ``num_clips`` and clamps ends to it (the official ActivityNet loader). Windows whose end is
    not after their start are always dropped.
    """
    if clipping not in WINDOW_CLIPPING:
        raise ValueError(f"clipping must be one of {', '.join(WINDOW_CLIPPING)}, got {clipping!r}")
    xx = np.asarray(windows, dtype=np.float64).reshape(-1, 2)
    if clipping == "seconds":
        xx = np.clip(xx, 0.0, num_clips * clip_len)
    xx = xx[xx[:, 1] > xx[:, 0]]
    grid = xx / clip_len - grid_offset
    if clipping == "grid_end":
        grid = grid[grid[:, 0] < num_clips]
        grid[:, 1] = np.minimum(grid[:, 1], num_clips)
    return grid.astype(np.float32)


def collate_videos(items: Sequence[VideoItem]) -> dict[str, Any]:
    """Pad video items into the multi-query batch (see the module docstring)."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    lengths = [it.video.shape[0] for it in items]
    b, t = len(items), max(lengths)
    video = torch.zeros(b, t, items[0].video.shape[1])
    video_mask = torch.zeros(b, t, dtype=torch.bool)
    per_video_q = [sum(len(g.keys) for g in it.groups) for it in items]
    q = max(per_video_q + [1])
    dims = {g.features.shape[1] for it in items for g in it.groups}
    if len(dims) > 1:
        raise FeatureError(f"query embeddings of different widths in one batch: {sorted(dims)}")
    d = dims.pop() if dims else 1
    grids = [
        [
            grid_windows(w, n, it.clip_len, it.grid_offset, it.window_clipping)
            for g in it.groups
            for w in g.windows
        ]
        for it, n in zip(items, lengths)
    ]
    g_max = max([len(w) for rows in grids for w in rows] + [1])
    query_feats = torch.zeros(b, q, d)
    query_mask = torch.zeros(b, q, dtype=torch.bool)
    query_task = torch.zeros(b, q, dtype=torch.long)
    segments = torch.zeros(b, q, g_max, 2)
    seg_mask = torch.zeros(b, q, g_max, dtype=torch.bool)
    keys, texts = [], []
    for i, (it, n) in enumerate(zip(items, lengths)):
        video[i, :n] = torch.from_numpy(it.video)
        video_mask[i, :n] = True
        row, k_row, t_row = 0, [], []
        for g in it.groups:
            m = len(g.keys)
            query_feats[i, row : row + m] = torch.from_numpy(np.asarray(g.features, np.float32))
            query_task[i, row : row + m] = TASKS.index(g.task)
            k_row += [(g.task, k) for k in g.keys]
            t_row += list(g.texts)
            row += m
        query_mask[i, :row] = True
        for j, w in enumerate(grids[i]):
            segments[i, j, : len(w)] = torch.from_numpy(w)
            seg_mask[i, j, : len(w)] = True
        keys.append(k_row)
        texts.append(t_row)
    return {
        "video_feats": video,
        "video_mask": video_mask,
        "query_feats": query_feats,
        "query_mask": query_mask,
        "query_task": query_task,
        "query_segments": segments,
        "segment_mask": seg_mask,
        "duration": torch.tensor([it.duration for it in items], dtype=torch.float32),
        "clip_len": float(items[0].clip_len),
        "vids": [it.vid for it in items],
        "query_keys": keys,
        "query_texts": texts,
        "mr_annotations": [it.mr_annotations for it in items],
    }


__all__ = [
    "TASKS",
    "WINDOW_CLIPPING",
    "MultiTaskSource",
    "QueryGroup",
    "VideoItem",
    "collate_videos",
    "grid_windows",
]
