"""Training items with generated queries (MS-DETR's corpus) and their collate function.

:class:`AugmentedDataset` wraps a training :class:`~momentkit.data.loader.MomentDataset` and a
corpus written by ``momentkit augment`` (:mod:`momentkit.text_augment.corpus`): each item also
carries up to ``per_query`` generated queries of its source query, balanced between positives and
negatives and drawn with the item's ``(seed, epoch, index)`` generator, so every epoch sees a
reproducible sample. :func:`augmented_collate` pads them into three extra batch keys::

    aug_text_feats  (B, A, N, Dt) float32   token features of the generated queries
    aug_text_mask   (B, A, N) bool          True for real tokens
    aug_kind        (B, A) long             1 positive, 0 negative, -1 empty slot

Items without generated queries (evaluation datasets, queries the corpus has nothing for) give
empty slots; a batch of such items is exactly :func:`~momentkit.data.loader.collate`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from momentkit.data.loader import MomentDataset, MomentItem, StoreLike, collate
from momentkit.features.base import text_key
from momentkit.features.loading import open_feature_store
from momentkit.features.streams import TextFeatureSource
from momentkit.text_augment.corpus import (
    KIND_CODES,
    NEGATIVE,
    PAD,
    POSITIVE,
    CorpusEntry,
    by_source,
    load_corpus,
)
from momentkit.utils.errors import FeatureError


@dataclass
class AugmentedItem(MomentItem):
    """A :class:`MomentItem` with generated queries.

    Attributes:
        aug_texts: ``(N_a, Dt)`` float32 token features of each generated query.
        aug_kinds: their :data:`~momentkit.text_augment.corpus.KIND_CODES`.
    """

    aug_texts: list[np.ndarray] = field(default_factory=list)
    aug_kinds: list[int] = field(default_factory=list)


class AugmentedDataset(Dataset[AugmentedItem]):
    """A training dataset whose items also carry generated queries.

    Args:
        base: the training dataset (its annotations' ``qid`` s index the corpus).
        corpus: corpus entries, or the path of a corpus file.
        text_store: the generated queries' feature store (keys ``qid<aug_id>``), or its path.
            Tokens are normalised and cut as the base dataset's queries.
        per_query: most generated queries per item (half positives, half negatives when
            both exist).
        seed: base seed of the sampling (with the epoch and the index).

    Raises:
        FeatureError: the store lacks features of a generated query of the base's queries.
    """

    def __init__(
        self,
        base: MomentDataset,
        corpus: Sequence[CorpusEntry] | str | Path,
        text_store: StoreLike,
        *,
        per_query: int = 2,
        seed: int = 0,
    ) -> None:
        if per_query < 1:
            raise ValueError(f"per_query must be >= 1, got {per_query}")
        entries = load_corpus(corpus) if isinstance(corpus, str | Path) else list(corpus)
        self.base = base
        self.per_query = per_query
        self.seed = int(seed)
        self.text = TextFeatureSource(
            open_feature_store(text_store),
            normalize=base.text.normalize,
            max_len=base.text.max_len,
        )
        if self.text.dim != base.text_dim:
            raise FeatureError(
                f"{self.text.store.path}: generated queries have {self.text.dim}-d features but "
                f"the training queries {base.text_dim}-d. Encode the corpus with the same text "
                "encoder (momentkit augment --text-encoder / --synth)"
            )
        groups = by_source(entries)
        self.entries = [groups.get(a.qid, []) for a in base.annotations]
        missing = sorted(
            {text_key(e.aug_id) for es in self.entries for e in es if e.aug_id not in self.text}
        )
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise FeatureError(
                f"{self.text.store.path}: no features for {len(missing)} generated queries "
                f"({shown}). Re-run momentkit augment with --features-out pointing here"
            )

    # -- the MomentDataset interface the trainer and pipeline use
    @property
    def annotations(self) -> list[Any]:
        """The base dataset's annotations."""
        return self.base.annotations

    @property
    def video_dim(self) -> int:
        """``Dv`` of the base dataset."""
        return self.base.video_dim

    @property
    def text_dim(self) -> int:
        """``Dt`` of the base dataset."""
        return self.base.text_dim

    @property
    def training(self) -> bool:
        """Whether the base dataset samples training labels."""
        return self.base.training

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to the base dataset."""
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def sample(self, index: int, epoch: int) -> list[CorpusEntry]:
        """The generated queries item ``index`` carries in ``epoch`` (positives first)."""
        entries = self.entries[index]
        if not entries:
            return []
        rng = np.random.default_rng((self.seed, epoch, index, 0xA06))
        pos = [e for e in entries if e.kind == "positive"]
        neg = [e for e in entries if e.kind == "negative"]
        n_pos = min(len(pos), max(self.per_query - len(neg), self.per_query // 2))
        n_neg = min(len(neg), self.per_query - n_pos)
        chosen = [pos[i] for i in sorted(rng.choice(len(pos), n_pos, replace=False))]
        chosen += [neg[i] for i in sorted(rng.choice(len(neg), n_neg, replace=False))]
        return chosen

    def __getitem__(self, index: int | tuple[int, int]) -> AugmentedItem:
        """Item ``index`` (or ``(epoch, index)``) of the base dataset with its generated queries."""
        epoch = self.base.epoch
        if isinstance(index, tuple):
            epoch, index = index
        item = self.base[(epoch, index)]
        chosen = self.sample(index, epoch)
        return AugmentedItem(
            **{f: getattr(item, f) for f in MomentItem.__dataclass_fields__},
            aug_texts=[self.text.get(e.aug_id) for e in chosen],
            aug_kinds=[KIND_CODES[e.kind] for e in chosen],
        )


def augmented_collate(items: Sequence[MomentItem]) -> dict[str, Any]:
    """:func:`~momentkit.data.loader.collate` plus ``aug_text_feats`` / ``aug_text_mask`` /
    ``aug_kind`` (module doc) when any item carries a generated query."""
    batch = collate(items)
    texts = [getattr(it, "aug_texts", []) for it in items]
    kinds = [getattr(it, "aug_kinds", []) for it in items]
    slots = max(len(t) for t in texts)
    if slots == 0:
        return batch
    tokens = max(a.shape[0] for t in texts for a in t)
    dim = batch["text_feats"].shape[-1]
    feats = torch.zeros(len(items), slots, tokens, dim)
    mask = torch.zeros(len(items), slots, tokens, dtype=torch.bool)
    kind = torch.full((len(items), slots), PAD, dtype=torch.long)
    for i, (ts, ks) in enumerate(zip(texts, kinds)):
        for j, (a, k) in enumerate(zip(ts, ks)):
            if k not in (NEGATIVE, POSITIVE):
                raise ValueError(f"item {i}: unknown generated-query kind code {k}")
            feats[i, j, : a.shape[0]] = torch.from_numpy(a)
            mask[i, j, : a.shape[0]] = True
            kind[i, j] = k
    batch.update(aug_text_feats=feats, aug_text_mask=mask, aug_kind=kind)
    return batch
