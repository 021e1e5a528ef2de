"""The training/evaluation dataset, its collate function, a resumable sampler and a prefetcher.

:class:`MomentDataset` turns one :class:`~momentkit.data.records.MomentAnnotation` into model
inputs and targets the way Moment-DETR's ``StartEndDataset`` does; :func:`collate` pads a list
of items into the batch dict of ``docs/architecture.md``.

Every random choice (which clips serve as saliency positives/negatives, which windows are kept
when a query has more than ``max_windows``) comes from a NumPy generator seeded with
``(seed, epoch, index)``: the same epoch gives the same labels in any process, worker layout or
resumed run. :class:`EpochSampler` passes its epoch along with each index, so DataLoader workers
(persistent or not) always sample with the right epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from momentkit.data.records import MomentAnnotation, check_clip_ids, check_clip_len
from momentkit.features.base import FeatureStore, text_key
from momentkit.features.loading import open_feature_store
from momentkit.features.streams import TextFeatureSource, VideoFeatureSource
from momentkit.utils.errors import FeatureError, FormatError

NUM_SALIENCY_PAIRS = 2  # positives (and negatives) per query, as in Moment-DETR
T = TypeVar("T")


# --------------------------------------------------------------------------------------- labels
def span_targets(
    windows: Sequence[Sequence[float]],
    num_clips: int,
    clip_len: float,
    rng: np.random.Generator | None = None,
    max_windows: int = 5,
) -> np.ndarray:
    """Ground-truth windows as normalised ``(center, width)`` targets.

    Windows (seconds) are clipped to the ``num_clips * clip_len`` seconds the (truncated) video
    features cover, those left empty are dropped, and the rest are divided by that length, as
    Moment-DETR's ``get_span_labels`` does. Queries with more than ``max_windows`` windows keep a
    random ``max_windows`` of them.

    Returns:
        ``(n, 2)`` float32 cxw in ``[0, 1]``; ``(0, 2)`` without windows.
    """
    span = num_clips * clip_len
    xx = np.asarray(windows, dtype=np.float64).reshape(-1, 2)
    xx = np.clip(xx, 0.0, span)
    xx = xx[xx[:, 1] > xx[:, 0]]
    if len(xx) > max_windows:
        if rng is None:
            raise ValueError("an rng is needed to choose among more than max_windows windows")
        xx = xx[np.sort(rng.choice(len(xx), max_windows, replace=False))]
    xx = xx / span
    cxw = np.stack([(xx[:, 0] + xx[:, 1]) / 2, xx[:, 1] - xx[:, 0]], axis=1)
    return cxw.astype(np.float32)


def _scored_clips(ann: MomentAnnotation, num_clips: int) -> tuple[np.ndarray, np.ndarray]:
    """In-range relevant clip ids and their mean annotator score."""
    ids = np.asarray(ann.relevant_clip_ids, dtype=np.int64)
    if ann.saliency_scores:
        scores = np.array([sum(r) / len(r) if r else 0.0 for r in ann.saliency_scores])
    else:
        scores = np.ones(len(ids))
    keep = ids < num_clips
    return ids[keep], scores[keep].astype(np.float32)


def _window_clips(
    windows: Sequence[Sequence[float]], num_clips: int, clip_len: float
) -> np.ndarray:
    """Clips inside the windows, by Lighthouse's rule for MR-only data.

    Window ``[s, e]`` covers clips ``int(s / clip_len)`` .. ``min(int(e / clip_len), T) - 1``
    (a window past the end maps onto the last clip).
    """
    ids: set[int] = set()
    for start, end in windows:
        last = max(0, min(int(end / clip_len), num_clips) - 1)
        first = min(int(start / clip_len), last)
        ids.update(range(first, last + 1))
    return np.array(sorted(ids), dtype=np.int64)


def _complement(ids: np.ndarray, num_clips: int) -> np.ndarray:
    """Clip indices in ``[0, num_clips)`` not in ``ids``, ascending."""
    outside = np.ones(num_clips, bool)
    outside[ids] = False
    return np.flatnonzero(outside)


def saliency_labels(
    ann: MomentAnnotation, num_clips: int, clip_len: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-clip saliency and the positive/negative clips of the saliency losses.

    With per-clip scores (QVHighlights, TVSum, YouTube Highlights), as Moment-DETR's
    ``get_saliency_labels`` / QD-DETR's ``get_saliency_labels_all``: positives are the
    highest-scoring relevant clip and a random relevant clip; negatives are the lowest-scoring
    relevant clip and a random clip outside the relevant ones (when every clip is relevant, the
    random pair repeats the scored pair). Clips past the truncated video are ignored.

    Without scores (Charades-STA, TACoS, ActivityNet), as Lighthouse's
    ``get_saliency_labels_sub_as_query``: the clips inside the windows get saliency 1; two
    positives are drawn among them and two negatives among the others (with replacement when
    fewer than two exist; negatives repeat the positives when every clip is inside).

    Args:
        ann: the annotation.
        num_clips: ``T``, clips of the (truncated) video features.
        clip_len: seconds per clip.
        rng: the source of randomness (seed it for reproducible labels).

    Returns:
        ``(all, pos, neg)``: ``(T,)`` float32 mean annotator saliency (0 where unannotated),
        ``(2,)`` int64 positive and ``(2,)`` int64 negative clip indices.
    """
    all_labels = np.zeros(num_clips, np.float32)
    if ann.relevant_clip_ids:
        ids, scores = _scored_clips(ann, num_clips)
        all_labels[ids] = scores
        if ids.size == 0:  # every annotated clip lies past the truncation: use the last clip
            ids, scores = np.array([num_clips - 1]), np.zeros(1, np.float32)
        order = np.argsort(scores, kind="stable")
        hard_pos, hard_neg = ids[order[-1]], ids[order[0]]
        pool = _complement(ids, num_clips)
        if pool.size:
            easy_pos, easy_neg = rng.choice(ids), rng.choice(pool)
        else:
            easy_pos, easy_neg = hard_pos, hard_neg
        pos = np.array([hard_pos, easy_pos], np.int64)
        neg = np.array([hard_neg, easy_neg], np.int64)
        return all_labels, pos, neg
    ids = _window_clips(ann.relevant_windows, num_clips, clip_len)
    all_labels[ids] = 1.0
    pos = rng.choice(ids, NUM_SALIENCY_PAIRS, replace=ids.size < NUM_SALIENCY_PAIRS)
    pool = _complement(ids, num_clips)
    if pool.size:
        neg = rng.choice(pool, NUM_SALIENCY_PAIRS, replace=pool.size < NUM_SALIENCY_PAIRS)
    else:
        neg = pos.copy()
    return all_labels, pos.astype(np.int64), neg.astype(np.int64)


def has_targets(ann: MomentAnnotation) -> bool:
    """Whether ``ann`` carries any ground truth (windows or per-clip saliency)."""
    return bool(ann.relevant_windows or ann.relevant_clip_ids)


# -------------------------------------------------------------------------------------- dataset
@dataclass
class MomentItem:
    """One query's model inputs and (when annotated) targets.

    Attributes:
        annotation: the record.
        video: ``(T, Dv)`` float32 video features (+TEF).
        text: ``(N, Dt)`` float32 query token features.
        clip_len: seconds per clip.
        spans: ``(n, 2)`` float32 cxw targets, or ``None`` without ground truth.
        saliency_all: ``(T,)`` float32 mean saliency, or ``None``.
        saliency_pos: ``(2,)`` int64 positive clip indices, or ``None``.
        saliency_neg: ``(2,)`` int64 negative clip indices, or ``None``.
    """

    annotation: MomentAnnotation
    video: np.ndarray
    text: np.ndarray
    clip_len: float
    spans: np.ndarray | None = None
    saliency_all: np.ndarray | None = None
    saliency_pos: np.ndarray | None = None
    saliency_neg: np.ndarray | None = None


StoreLike = FeatureStore | str | Path


class MomentDataset(Dataset[MomentItem]):
    """Annotations joined with their video and query features, as Moment-DETR's dataset.

    Args:
        annotations: the records.
        video_stores: one store (or store path) per video stream; streams are L2-normalised
            (``normalize_video``), cut to the shortest and concatenated on channels.
        text_store: the query-feature store (keys ``qid<qid>``), or its path.
        max_v_len: keep at most this many clips (Moment-DETR: 75); ``None`` keeps all (as
            Lighthouse's ``-1`` for the long videos of TACoS and ActivityNet). Windows past the
            kept clips give no span target.
        max_q_len: keep at most this many query tokens (Moment-DETR: 32); ``None`` keeps all.
        clip_len: seconds per clip (QVHighlights: 2).
        use_tef: append the 2 temporal endpoint channels.
        normalize_video: L2-normalise each video stream per clip.
        normalize_text: L2-normalise each query token.
        training: require ground truth on every annotation and sample labels per epoch; when
            ``False``, labels (where present) are sampled as in epoch 0 every time.
        seed: base seed of every random choice.
        max_windows: span targets kept per query (Moment-DETR: 5).
        cache: keep ``.npz`` arrays in memory after their first read (store paths only).

    Raises:
        FeatureError: a video or query of ``annotations`` is missing from a store.
        FormatError: ``training`` and an annotation has no ground truth.
    """

    def __init__(
        self,
        annotations: Sequence[MomentAnnotation],
        video_stores: Sequence[StoreLike],
        text_store: StoreLike,
        *,
        max_v_len: int | None = 75,
        max_q_len: int | None = 32,
        clip_len: float = 2.0,
        use_tef: bool = True,
        normalize_video: bool = True,
        normalize_text: bool = True,
        training: bool = True,
        seed: int = 0,
        max_windows: int = 5,
        cache: bool = False,
    ) -> None:
        if isinstance(video_stores, str | Path):
            video_stores = [video_stores]
        self.annotations = list(annotations)
        clip_len = check_clip_len(clip_len, "data.clip_len")
        # clip ids of moment data (QVHighlights-style rows) against their durations, before any
        # epoch; highlight-only rows (TVSum, YouTube Highlights) number clips by their labels
        check_clip_ids([a for a in self.annotations if a.relevant_windows], clip_len)
        self.video = VideoFeatureSource(
            [open_feature_store(s, cache=cache) for s in video_stores],
            normalize=normalize_video,
            use_tef=use_tef,
            max_len=max_v_len,
        )
        self.text = TextFeatureSource(
            open_feature_store(text_store, cache=cache), normalize=normalize_text, max_len=max_q_len
        )
        self.clip_len = float(clip_len)
        self.training = training
        self.seed = int(seed)
        self.max_windows = max_windows
        self.epoch = 0
        self._check_features()
        if training:
            self._check_targets()

    def _check_features(self) -> None:
        for store in self.video.stores:
            missing = sorted({a.vid for a in self.annotations if a.vid not in store})
            if missing:
                raise FeatureError(_missing_message(store, missing, "video"))
        store = self.text.store
        missing = sorted({text_key(a.qid) for a in self.annotations if a.qid not in self.text})
        if missing:
            raise FeatureError(_missing_message(store, missing, "query"))

    def _check_targets(self) -> None:
        for a in self.annotations:
            if not has_targets(a):
                raise FormatError(
                    None,
                    None,
                    "relevant_windows",
                    f"query {a.qid!r} has neither relevant_windows nor saliency_scores, so it "
                    "cannot be trained on",
                    "Train on a labelled split, or build the dataset with training=False",
                )

    @property
    def video_dim(self) -> int:
        """``Dv``: video channels per clip, TEF included."""
        return self.video.dim

    @property
    def text_dim(self) -> int:
        """``Dt``: channels per query token."""
        return self.text.dim

    def set_epoch(self, epoch: int) -> None:
        """The epoch used for integer indices (:class:`EpochSampler` passes its own)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.annotations)

    def rng(self, index: int, epoch: int | None = None) -> np.random.Generator:
        """The generator of item ``index`` in ``epoch``: seeded by ``(seed, epoch, index)``.

        Without ``training`` the epoch is always 0, so evaluation labels never change.
        """
        epoch = self.epoch if epoch is None else epoch
        return np.random.default_rng((self.seed, epoch if self.training else 0, index))

    def __getitem__(self, index: int | tuple[int, int]) -> MomentItem:
        """Item ``index``; ``(epoch, index)`` samples its labels as in that epoch."""
        epoch = None
        if isinstance(index, tuple):
            epoch, index = index
        ann = self.annotations[index]
        video = self.video.get(ann.vid)
        item = MomentItem(ann, video, self.text.get(ann.qid), self.clip_len)
        if has_targets(ann):
            num_clips = video.shape[0]
            rng = self.rng(index, epoch)
            item.spans = span_targets(
                ann.relevant_windows, num_clips, self.clip_len, rng, self.max_windows
            )
            item.saliency_all, item.saliency_pos, item.saliency_neg = saliency_labels(
                ann, num_clips, self.clip_len, rng
            )
        return item


def _missing_message(store: FeatureStore, missing: list[str], what: str) -> str:
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return (
        f"{store.path}: no features for {len(missing)} {what}(s) of the annotations: {shown}. "
        f"Check that this store holds the features of this split (files like "
        f"{missing[0]}.npz), or drop those annotations"
    )


# -------------------------------------------------------------------------------------- collate
def collate(items: Sequence[MomentItem]) -> dict[str, Any]:
    """Pad a list of items into the batch dict (``docs/architecture.md``).

    Returns:
        ``video_feats`` ``(B, T, Dv)`` float32, ``video_mask`` ``(B, T)`` bool (True = real clip),
        ``text_feats`` ``(B, N, Dt)`` float32, ``text_mask`` ``(B, N)`` bool, ``duration``
        ``(B,)`` float32, ``clip_len`` float, ``qids``, ``vids``, ``annotations`` lists; and when
        any item is annotated, ``span_targets`` (list of ``{"spans": (n_i, 2)}`` cxw),
        ``saliency_all_labels`` ``(B, T)`` float32, ``saliency_pos_labels`` and
        ``saliency_neg_labels`` ``(B, 2)`` int64. Unannotated items of such a batch get no
        spans, zero saliency and clip 0 as positive and negative.
    """
    if not items:
        raise ValueError("cannot collate an empty batch")
    video, video_mask = _pad([it.video for it in items])
    text, text_mask = _pad([it.text for it in items])
    anns = [it.annotation for it in items]
    batch: dict[str, Any] = {
        "video_feats": video,
        "video_mask": video_mask,
        "text_feats": text,
        "text_mask": text_mask,
        "duration": torch.tensor([a.duration for a in anns], dtype=torch.float32),
        "clip_len": float(items[0].clip_len),
        "qids": [a.qid for a in anns],
        "vids": [a.vid for a in anns],
        "annotations": anns,
    }
    if any(it.spans is not None for it in items):
        batch.update(_collate_targets(items, video.shape[1]))
    return batch


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor; inside a DataLoader worker it is allocated in shared memory.

    Workers hand batches to the main process through shared memory; allocating there directly
    (as ``default_collate`` does) saves copying the ~27 MB video batch of QVHighlights again.
    """
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    proto = torch.empty(0, dtype=dtype)
    storage = proto._typed_storage()._new_shared(math.prod(shape), device="cpu")
    return proto.new(storage).view(shape)


def _pad(arrays: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """``B`` arrays ``(L_i, D)`` -> zero-padded ``(B, max L_i, D)`` float32 and ``(B, L)`` mask."""
    lengths = [a.shape[0] for a in arrays]
    out = _empty((len(arrays), max(lengths), arrays[0].shape[1]), torch.float32)
    mask = torch.zeros(out.shape[:2], dtype=torch.bool)
    dst = out.numpy()
    for i, (a, n) in enumerate(zip(arrays, lengths)):
        dst[i, :n] = a
        dst[i, n:] = 0.0
        mask[i, :n] = True
    return out, mask


def _collate_targets(items: Sequence[MomentItem], max_len: int) -> dict[str, Any]:
    empty = np.zeros((0, 2), np.float32)
    zeros = np.zeros(NUM_SALIENCY_PAIRS, np.int64)
    sal = np.zeros((len(items), max_len), np.float32)
    for i, it in enumerate(items):
        if it.saliency_all is not None:
            sal[i, : len(it.saliency_all)] = it.saliency_all
    pos = [it.saliency_pos if it.saliency_pos is not None else zeros for it in items]
    neg = [it.saliency_neg if it.saliency_neg is not None else zeros for it in items]
    return {
        "span_targets": [
            {"spans": torch.from_numpy(it.spans if it.spans is not None else empty)} for it in items
        ],
        "saliency_all_labels": torch.from_numpy(sal),
        "saliency_pos_labels": torch.from_numpy(np.stack(pos)),
        "saliency_neg_labels": torch.from_numpy(np.stack(neg)),
    }


# ------------------------------------------------------------------------------------- sampling
class EpochSampler(Sampler[tuple[int, int]]):
    """Deterministic (optionally shuffled, optionally sharded) order that yields ``(epoch, i)``.

    The order of epoch ``e`` is a permutation seeded by ``(seed, e)``. With ``num_replicas > 1``
    the order is padded by wrapping (or cut, with ``drop_last``) to a multiple of
    ``num_replicas`` and replica ``rank`` takes every ``num_replicas``-th index, as
    ``torch.utils.data.DistributedSampler`` does.

    Args:
        length: number of items of the dataset.
        shuffle: permute the items each epoch.
        seed: base seed of the permutations.
        num_replicas: processes sharing the epoch (DDP world size).
        rank: this process's index among them.
        drop_last: drop the tail instead of padding when sharding.
    """

    def __init__(
        self,
        length: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        self.length = length
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.epoch = 0
        if drop_last:
            self.num_samples = length // num_replicas
        else:
            self.num_samples = math.ceil(length / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s order and labels from the next iteration on."""
        self.epoch = int(epoch)

    def indices(self) -> np.ndarray:
        """This replica's item indices for the current epoch, in order."""
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(self.length)
        else:
            order = np.arange(self.length)
        total = self.num_samples * self.num_replicas
        if total > self.length and self.length:
            order = np.resize(order, total)  # wraps around, like DistributedSampler's padding
        order = order[:total]
        return order[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return iter([(epoch, int(i)) for i in self.indices()])

    def __len__(self) -> int:
        return self.num_samples


def build_dataloader(
    dataset: MomentDataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    num_replicas: int = 1,
    rank: int = 0,
) -> DataLoader:
    """A DataLoader over ``dataset`` with an :class:`EpochSampler` and :func:`collate`.

    Call :func:`set_loader_epoch` (or ``loader.sampler.set_epoch``) before each epoch. Workers
    are persistent; they receive the epoch with every index.
    """
    sampler = EpochSampler(
        len(dataset),
        shuffle=shuffle,
        seed=dataset.seed,
        num_replicas=num_replicas,
        rank=rank,
        drop_last=drop_last and num_replicas > 1,
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
    )


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Set ``epoch`` on the loader's sampler and dataset (when they have ``set_epoch``)."""
    for obj in (loader.sampler, loader.dataset):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
