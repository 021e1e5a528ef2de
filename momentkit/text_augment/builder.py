"""Build a generated-query corpus from annotations, deterministically for a seed."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from momentkit.data.records import MomentAnnotation
from momentkit.text_augment.corpus import CorpusEntry
from momentkit.text_augment.generators import GeneratedQuery, Generator


def query_rng(seed: int, qid: int | str, generator: str) -> np.random.Generator:
    """The generator of one (query, generator) pair: a function of the seed, qid and name only,
    so adding queries or generators never changes the others' outputs."""
    key = zlib.crc32(f"{qid}\0{generator}".encode())
    return np.random.default_rng([int(seed), key])


@dataclass(frozen=True)
class CorpusItem:
    """A corpus row with the generated query it came from (tokens and their sources)."""

    entry: CorpusEntry
    generated: GeneratedQuery
    source: str


def generate_for_query(
    query: str,
    qid: int | str,
    generators: Sequence[Generator],
    per_generator: int,
    seed: int,
) -> list[GeneratedQuery]:
    """Up to ``per_generator`` distinct candidates of every generator for one query.

    Candidates equal to the query (case-insensitively) or to an earlier pick are dropped; the
    picks of each generator are sampled with :func:`query_rng`.
    """
    seen = {query.strip().lower()}
    picked: list[GeneratedQuery] = []
    for gen in generators:
        rng = query_rng(seed, qid, gen.name)
        candidates = []
        for cand in gen.generate(query, rng):
            key = cand.text.strip().lower()
            if key not in seen and key not in {c.text.strip().lower() for c in candidates}:
                candidates.append(cand)
        if len(candidates) > per_generator:
            keep = sorted(rng.choice(len(candidates), per_generator, replace=False))
            candidates = [candidates[i] for i in keep]
        seen.update(c.text.strip().lower() for c in candidates)
        picked.extend(candidates)
    return picked


def build_corpus(
    annotations: Sequence[MomentAnnotation],
    generators: Sequence[Generator],
    per_generator: int = 2,
    seed: int = 0,
    start_id: int = 0,
) -> list[CorpusItem]:
    """Generated queries of every annotation, numbered ``start_id, start_id + 1, ...``.

    Args:
        annotations: the source queries (typically the training split).
        generators: see :mod:`momentkit.text_augment.generators`.
        per_generator: most outputs of each generator per query.
        seed: the corpus seed.
        start_id: first ``aug_id``.
    """
    if per_generator < 1:
        raise ValueError(f"per_generator must be >= 1, got {per_generator}")
    items: list[CorpusItem] = []
    for ann in annotations:
        for g in generate_for_query(ann.query, ann.qid, generators, per_generator, seed):
            entry = CorpusEntry(
                aug_id=start_id + len(items),
                qid=ann.qid,
                query=g.text,
                kind=g.kind,
                dimension=g.dimension,
                generator=g.generator,
                edits=g.edits,
            )
            items.append(CorpusItem(entry, g, ann.query))
    return items
