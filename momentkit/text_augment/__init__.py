"""Offline generation of MS-DETR's query corpus (``momentkit augment``).

From each training query, generators (:mod:`~momentkit.text_augment.generators`) make
*positives* (same meaning: the temporal order made explicit or reordered, a noun/verb replaced
by a near-synonym) and *negatives* (``after`` <-> ``before``, a noun/verb replaced by an
antonym or an unrelated word), from a built-in lexicon (:mod:`~momentkit.text_augment.lexicon`)
and, optionally, the offline GloVe vectors (:mod:`~momentkit.text_augment.glove`).
:func:`build_corpus` runs them deterministically for a seed; the corpus file format is
:mod:`~momentkit.text_augment.corpus`. :class:`LLMGenerator` is the hook for an LLM-based
generator.
"""

from momentkit.text_augment.builder import CorpusItem, build_corpus, generate_for_query, query_rng
from momentkit.text_augment.corpus import (
    DIMENSIONS,
    KIND_CODES,
    KINDS,
    CorpusEntry,
    by_source,
    load_corpus,
    save_corpus,
)
from momentkit.text_augment.generators import (
    DEFAULT_GENERATORS,
    GENERATORS,
    GeneratedQuery,
    Generator,
    GeneratorContext,
    LLMGenerator,
    SemanticNegativeGenerator,
    SemanticPositiveGenerator,
    TemporalNegativeGenerator,
    TemporalPositiveGenerator,
    build_generators,
)
from momentkit.text_augment.lexicon import Lexicon, load_lexicon, tokenize

__all__ = [
    "DEFAULT_GENERATORS",
    "DIMENSIONS",
    "GENERATORS",
    "KINDS",
    "KIND_CODES",
    "CorpusEntry",
    "CorpusItem",
    "GeneratedQuery",
    "Generator",
    "GeneratorContext",
    "LLMGenerator",
    "Lexicon",
    "SemanticNegativeGenerator",
    "SemanticPositiveGenerator",
    "TemporalNegativeGenerator",
    "TemporalPositiveGenerator",
    "build_corpus",
    "build_generators",
    "by_source",
    "generate_for_query",
    "load_corpus",
    "load_lexicon",
    "query_rng",
    "save_corpus",
    "tokenize",
]
