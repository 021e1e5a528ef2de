"""Text features of generated queries in the synthetic benchmark's world.

The synthetic benchmark (:mod:`momentkit.data.synth`) encodes a query from its words and their
roles (target, context, function) with :func:`~momentkit.data.synth.encode_text`. Generated
queries keep every source token's role through :attr:`GeneratedQuery.sources`, and are encoded
by the same formula:

- words of the world's vocabulary (``dog``, ``jumping``, ``after``, ...) use their world vector,
  so a negative that swaps ``dog`` for ``cat`` *is* a query about cats;
- a lexicon near-synonym of a vocabulary word (``puppy`` for ``dog``) gets a vector at cosine
  ``synonym_similarity`` (0.9) to that word's, as a real text encoder places near-synonyms;
- any other word (``first``, ``then``) gets a fixed random unit vector of its own;
- punctuation is dropped; inserted words are function words.

For unedited queries this is exactly :func:`~momentkit.data.synth.encode_text`.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from momentkit.data.synth import RELATIONS, World, build_world, load_synth_config, npz_bytes
from momentkit.text_augment.builder import CorpusItem, build_corpus
from momentkit.text_augment.corpus import save_corpus
from momentkit.text_augment.generators import (
    DEFAULT_GENERATORS,
    GeneratedQuery,
    GeneratorContext,
    build_generators,
)
from momentkit.text_augment.lexicon import Lexicon, load_lexicon, tokenize
from momentkit.utils.errors import MomentkitError

ROLE_WEIGHTS = {"target": 1.0, "function": 0.2}
SYNTH_CORPUS = Path("corpus") / "train.jsonl"
"""Where :func:`make_synth_corpus` writes a benchmark's corpus (relative to its folder)."""
SYNTH_CORPUS_FEATURES = Path("features") / "aug_text"
"""Where it writes the generated queries' text features (``qid<aug_id>.npz``)."""
_POSITION_ROWS = 16


def synth_roles(tokens: list[str], world: World) -> list[str]:
    """Roles of the tokens of a synthetic-benchmark query (``a A M [rel a A M]``).

    Raises:
        MomentkitError: ``tokens`` are not a query of that grammar in ``world``'s vocabulary.
    """
    words = [t.lower() for t in tokens]
    ok = len(words) in (3, 7) and words[0] == "a" and words[1] in world.appearance
    ok = ok and words[2] in world.motion
    if ok and len(words) == 7:
        ok = words[3] in RELATIONS[1:] and words[4] == "a"
        ok = ok and words[5] in world.appearance and words[6] in world.motion
    if not ok:
        raise MomentkitError(
            f"'{' '.join(tokens)}' is not a synthetic-benchmark query ('a <appearance> "
            "<motion> [after|before a <appearance> <motion>]'); encode real queries with a text "
            "encoder (momentkit augment --text-encoder)"
        )
    roles = ["function", "target", "target"]
    if len(words) == 7:
        roles += ["function", "function", "context", "context"]
    return roles


def _unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.standard_normal(dim)
    return v / np.linalg.norm(v)


def _word_seed(word: str, world_seed: int) -> list[int]:
    return [int(world_seed), zlib.crc32(word.encode())]


def synonym_vector(base: np.ndarray, word: str, similarity: float, world_seed: int) -> np.ndarray:
    """A unit vector at cosine ``similarity`` to unit ``base``, fixed for ``word``."""
    u = _unit(np.random.default_rng(_word_seed(word, world_seed)), base.shape[0])
    u = u - (u @ base) * base
    u /= np.linalg.norm(u)
    return similarity * base + np.sqrt(1.0 - similarity**2) * u


def unknown_vector(word: str, dim: int, world_seed: int) -> np.ndarray:
    """A fixed random unit vector for a word outside the world's vocabulary."""
    return _unit(np.random.default_rng(_word_seed("<unk>" + word, world_seed)), dim)


class SynthTextEncoder:
    """Encodes generated queries of synthetic-benchmark source queries.

    Args:
        world: the benchmark's world (:func:`~momentkit.data.synth.build_world`).
        lexicon: the lexicon the generators used (to recognise near-synonyms).
        context_weight: the benchmark's ``SynthConfig.context_weight``.
        world_seed: seeds the vectors of words outside the vocabulary.
        synonym_similarity: cosine of a near-synonym's vector to its word's.
    """

    def __init__(
        self,
        world: World,
        lexicon: Lexicon,
        context_weight: float = 0.5,
        world_seed: int = 0,
        synonym_similarity: float = 0.9,
    ) -> None:
        self.world = world
        self.lexicon = lexicon
        self.context_weight = context_weight
        self.world_seed = world_seed
        self.synonym_similarity = synonym_similarity
        self.vocabulary = set(world.appearance) | set(world.motion) | {"a", *RELATIONS[1:]}

    def lexicon_for_world(self) -> Lexicon:
        """``lexicon`` closed over the world's words (appearance words as nouns, motions as
        verbs), so negatives swap in words the world knows."""
        return self.lexicon.with_pools(noun=self.world.appearance, verb=self.world.motion)

    def word_vector(self, word: str, source_word: str | None) -> np.ndarray:
        """The text vector of ``word`` standing where ``source_word`` was."""
        w = word.lower()
        if w in self.vocabulary:
            return self.world.word_vector(w)
        dim = self.world.appearance_dirs.shape[1]
        if source_word is not None and source_word in self.vocabulary:
            if w in self.lexicon.synonyms.get(source_word, ()):
                base = self.world.word_vector(source_word)
                return synonym_vector(base, w, self.synonym_similarity, self.world_seed)
        return unknown_vector(w, dim, self.world_seed)

    def encode(self, generated: GeneratedQuery, source_query: str) -> dict[str, np.ndarray]:
        """``{"last_hidden_state": (N, 512), "pooler_output": (512,)}`` of a generated query.

        Raises:
            MomentkitError: the source is not a benchmark query, the generated query has no
                token sources (free text), or it is too long for the world's position table.
        """
        source = tokenize(source_query)
        roles = synth_roles(source, self.world)
        if generated.sources is None:
            raise MomentkitError(
                f"generator '{generated.generator}' gives free text without token sources; "
                "the synthetic benchmark's encoder needs them (use the built-in generators)"
            )
        weights = {**ROLE_WEIGHTS, "context": self.context_weight}
        words: list[tuple[np.ndarray, str]] = []
        for tok, src in zip(generated.tokens, generated.sources):
            if not any(ch.isalnum() for ch in tok):
                continue
            source_word = source[src].lower() if src >= 0 else None
            role = roles[src] if src >= 0 else "function"
            words.append((self.word_vector(tok, source_word), role))
        if len(words) + 1 > _POSITION_ROWS:
            raise MomentkitError(
                f"'{generated.text}' has {len(words)} words; the synthetic world encodes at "
                f"most {_POSITION_ROWS - 1}"
            )
        pooled = np.sum([weights[role] * v for v, role in words], axis=0)
        pooled = pooled / np.linalg.norm(pooled)
        tokens = np.stack([self.world.word_vector("<sos>")] + [v for v, _ in words])
        hidden = tokens + self.world.position_dirs[: len(tokens)] + 0.25 * pooled
        hidden = np.concatenate([hidden, pooled[None]], axis=0)
        return {
            "last_hidden_state": hidden.astype(np.float32),
            "pooler_output": pooled.astype(np.float32),
        }


def synth_text_encoder(root: str | Path, lexicon: Lexicon) -> SynthTextEncoder:
    """The :class:`SynthTextEncoder` of the benchmark written by ``momentkit synth`` in ``root``."""
    config = load_synth_config(root)
    return SynthTextEncoder(build_world(config), lexicon, config.context_weight, config.world_seed)


def write_synth_features(
    items: Sequence[CorpusItem], encoder: SynthTextEncoder, out: str | Path
) -> None:
    """Write each generated query's features as ``out/qid<aug_id>.npz`` (atomically)."""
    from momentkit.features.base import text_key
    from momentkit.utils.io import atomic_write_bytes
    from momentkit.utils.paths import safe_child

    out = Path(out)
    paths = [safe_child(out, f"{text_key(it.entry.aug_id)}.npz", "aug_id") for it in items]
    out.mkdir(parents=True, exist_ok=True)
    for it, path in zip(items, paths, strict=True):
        atomic_write_bytes(path, npz_bytes(encoder.encode(it.generated, it.source)))


def make_synth_corpus(root: str | Path, seed: int = 0, per_generator: int = 2) -> tuple[Path, Path]:
    """MS-DETR's corpus for the training queries of the benchmark in ``root``.

    What ``momentkit augment ROOT/annotations/train.jsonl --synth ROOT`` makes with the default
    generators and the built-in lexicon: the corpus file ``ROOT/corpus/train.jsonl``
    (:data:`SYNTH_CORPUS`, written last, so that it exists only once the features do) and the
    features in ``ROOT/features/aug_text`` (:data:`SYNTH_CORPUS_FEATURES`).

    Returns:
        ``(corpus file, features folder)``, the ``data.corpus`` / ``data.corpus_text_features``
        of a training config.
    """
    from momentkit.data.records import load_annotations

    root = Path(root)
    encoder = synth_text_encoder(root, load_lexicon())
    generators = build_generators(DEFAULT_GENERATORS, GeneratorContext(encoder.lexicon_for_world()))
    annotations = load_annotations(root / "annotations" / "train.jsonl")
    items = build_corpus(annotations, generators, per_generator, seed, 0)
    corpus, features = root / SYNTH_CORPUS, root / SYNTH_CORPUS_FEATURES
    write_synth_features(items, encoder, features)
    save_corpus(corpus, [it.entry for it in items])
    return corpus, features
