"""Query generators: positives and negatives along the temporal and the semantic dimension.

A :class:`Generator` turns one query into candidate :class:`GeneratedQuery` s; it must be
deterministic given its ``rng``. The built-in ones work offline from a :class:`Lexicon`
(optionally helped by GloVe vectors) and are registered in :data:`GENERATORS`:

==========================  ========  =========  =============================================
name                        kind      dimension  edit
==========================  ========  =========  =============================================
``temporal_positive``       positive  temporal   reorder the clauses around a connective
                                                 (``X after Y`` -> ``after Y, X``) or make the
                                                 action order explicit (``first Y, then X``)
``semantic_positive``       positive  semantic   one noun/verb/adjective -> a near-synonym
``temporal_negative``       negative  temporal   ``after`` <-> ``before``; ``X then Y`` ->
                                                 ``Y then X``
``semantic_negative``       negative  semantic   one noun/verb/adjective -> an antonym, or an
                                                 unrelated word of the same part of speech
==========================  ========  =========  =============================================

**Plugging in an LLM.** :class:`LLMGenerator` formats a prompt, sends it to any
``complete(prompt) -> str`` function you provide (a local model, an API client) and parses
its lines ``positive|temporal|<query>``. Register it under a name from your own module and
select it with ``momentkit augment --import your_module --generators your_name``::

    from momentkit.text_augment import GENERATORS, LLMGenerator

    @GENERATORS.register("my_llm")
    def build(context):                       # context: GeneratorContext
        return LLMGenerator(my_complete_function, name="my_llm")

Every generated query records the source token each of its tokens comes from
(:attr:`GeneratedQuery.sources`), so encoders that need word roles (the synthetic benchmark's)
can encode it; an LLM's free text has none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from momentkit.text_augment.lexicon import (
    STOPWORDS,
    Lexicon,
    detokenize,
    match_case,
    tokenize,
)
from momentkit.utils.registry import Registry

_PUNCT = set(",.;:!?")
_SINGLE_CONNECTIVES = ("after", "before", "while", "then")
_MULTI_CONNECTIVES = (("and", "then"), ("followed", "by"))
_VOWELS = set("aeiou")


@dataclass(frozen=True)
class GeneratedQuery:
    """One generated query.

    Attributes:
        text: the query.
        kind: ``positive`` (same moments as the source) or ``negative``.
        dimension: ``temporal`` or ``semantic``.
        generator: the generator's name.
        edits: ``(old, new)`` word pairs (``("", "first")`` for an inserted word).
        tokens: the tokens of ``text``.
        sources: per token, the index of the source-query token it comes from (``-1``: new
            word); ``None`` when unknown (free-text generators).
    """

    text: str
    kind: str
    dimension: str
    generator: str
    edits: tuple[tuple[str, str], ...] = ()
    tokens: tuple[str, ...] = ()
    sources: tuple[int, ...] | None = None


class Generator(Protocol):
    """Turns a query into candidate generated queries (deterministic given ``rng``)."""

    name: str

    def generate(self, query: str, rng: np.random.Generator) -> list[GeneratedQuery]:
        """All candidates for ``query`` (the caller samples among them)."""
        ...


@dataclass
class GeneratorContext:
    """What generator factories receive.

    Attributes:
        lexicon: the word lists.
        neighbours: GloVe similarities, when enabled (:class:`~momentkit.text_augment.glove.
            GloveNeighbours`); ``None`` otherwise.
        glove_synonyms: let ``semantic_positive`` take GloVe neighbours for words the lexicon
            has no synonym for (noisier: GloVe neighbours are often co-hyponyms, ``dog``/``cat``).
    """

    lexicon: Lexicon
    neighbours: object | None = None
    glove_synonyms: bool = False


GeneratorFactory = Callable[[GeneratorContext], Generator]
GENERATORS: Registry[GeneratorFactory] = Registry("query generator")
DEFAULT_GENERATORS = (
    "temporal_positive",
    "semantic_positive",
    "temporal_negative",
    "semantic_negative",
)


def build_generators(
    names: list[str] | tuple[str, ...], context: GeneratorContext
) -> list[Generator]:
    """Instantiate registered generators by name (a KeyError lists the known names)."""
    return [GENERATORS.get(n)(context) for n in names]


# ------------------------------------------------------------------------------ token editing
@dataclass
class _Draft:
    """Tokens being edited, each remembering its source index."""

    tokens: list[str]
    sources: list[int]
    edits: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def of(cls, tokens: list[str]) -> _Draft:
        return cls(list(tokens), list(range(len(tokens))))

    def replace(self, i: int, word: str) -> _Draft:
        """A copy with token ``i`` replaced (case matched, article ``a``/``an`` fixed)."""
        new = _Draft(list(self.tokens), list(self.sources), list(self.edits))
        new.edits.append((self.tokens[i], word))
        new.tokens[i] = match_case(word, self.tokens[i])
        if i > 0 and new.tokens[i - 1].lower() in ("a", "an"):
            article = "an" if word[:1].lower() in _VOWELS else "a"
            new.tokens[i - 1] = match_case(article, new.tokens[i - 1])
        return new

    def result(self, source: list[str], kind: str, dimension: str, name: str) -> GeneratedQuery:
        tokens = list(self.tokens)
        if source and source[0][:1].isupper() and tokens:
            tokens[0] = match_case(tokens[0], "A")
        return GeneratedQuery(
            detokenize(tokens), kind, dimension, name, tuple(self.edits), tuple(tokens),
            tuple(self.sources),
        )  # fmt: skip


@dataclass(frozen=True)
class _Split:
    """A query cut at a temporal connective: ``X <connective> Y [final punctuation]``."""

    x: list[int]  # source indices of clause X
    connective: list[int]
    y: list[int]
    final: list[int]  # trailing punctuation

    def words(self, tokens: list[str], idx: list[int]) -> str:
        return " ".join(tokens[i].lower() for i in idx)


def split_at_connective(tokens: list[str]) -> _Split | None:
    """The first temporal connective that has a clause on both sides, else ``None``."""
    lower = [t.lower() for t in tokens]
    end = len(tokens)
    while end > 0 and tokens[end - 1] in _PUNCT:
        end -= 1
    for i in range(1, end):
        width = 0
        if lower[i] in _SINGLE_CONNECTIVES:
            width = 1
        elif any(tuple(lower[i : i + len(m)]) == m for m in _MULTI_CONNECTIVES):
            width = 2
        if not width or i + width >= end:
            continue
        x = [j for j in range(i) if not (j == i - 1 and tokens[j] in _PUNCT)]
        y = list(range(i + width, end))
        return _Split(x, list(range(i, i + width)), y, list(range(end, len(tokens))))
    return None


def _assemble(tokens: list[str], parts: list[list[int] | str]) -> _Draft:
    """Tokens from source indices and inserted words (``str`` parts, source ``-1``)."""
    draft = _Draft([], [])
    for part in parts:
        if isinstance(part, str):
            draft.tokens.append(part)
            draft.sources.append(-1)
            draft.edits.append(("", part))
        else:
            draft.tokens.extend(tokens[i] for i in part)
            draft.sources.extend(part)
    return draft


def _lower_first(tokens: list[str], idx: list[int]) -> list[str]:
    """Tokens with the first one of ``idx`` lower-cased if it starts the source sentence."""
    out = list(tokens)
    first = out[0] if idx and idx[0] == 0 else ""
    if first[:1].isupper() and first != "I" and (len(first) == 1 or first[1:].islower()):
        out[0] = first.lower()
    return out


# ------------------------------------------------------------------------------- generators
class TemporalPositiveGenerator:
    """Positives that keep the meaning but change how the action order is expressed."""

    name = "temporal_positive"

    def generate(self, query: str, rng: np.random.Generator) -> list[GeneratedQuery]:
        """``X after Y`` -> ``after Y, X`` and ``first Y, then X``; ``X before Y`` ->
        ``before Y, X`` and ``first X, then Y``; ``X while Y`` -> ``while Y, X``;
        ``X then Y`` / ``X and then Y`` / ``X followed by Y`` -> ``first X, then Y``."""
        source = tokenize(query)
        split = split_at_connective(source)
        if split is None:
            return []
        tokens = _lower_first(source, split.x)
        conn = split.words(source, split.connective)
        x, y, c, f = split.x, split.y, split.connective, split.final
        forms: list[list[list[int] | str]] = []
        if conn in ("after", "before", "while"):
            forms.append([c, y, ",", x, f])
        if conn == "after":
            forms.append(["first", y, ",", "then", x, f])
        elif conn in ("before", "then", "and then", "followed by"):
            forms.append(["first", x, ",", "then", y, f])
        out = []
        for parts in forms:
            draft = _assemble(tokens, parts)
            out.append(draft.result(source, "positive", "temporal", self.name))
        return out


class TemporalNegativeGenerator:
    """Negatives that change the temporal meaning."""

    name = "temporal_negative"

    def __init__(self, lexicon: Lexicon) -> None:
        self.lexicon = lexicon

    def generate(self, query: str, rng: np.random.Generator) -> list[GeneratedQuery]:
        """Connective -> its temporal antonym (``after`` <-> ``before``); ``X then Y`` (and
        ``and then`` / ``followed by``) -> ``Y then X``."""
        source = tokenize(query)
        split = split_at_connective(source)
        if split is None:
            return []
        conn = split.words(source, split.connective)
        out = []
        opposite = self.lexicon.temporal_antonyms.get(conn)
        if opposite is not None and len(split.connective) == 1:
            draft = _Draft.of(source).replace(split.connective[0], opposite)
            out.append(draft.result(source, "negative", "temporal", self.name))
        if conn in ("then", "and then", "followed by"):
            tokens = _lower_first(source, split.x)
            draft = _assemble(tokens, [split.y, split.connective, split.x, split.final])
            draft.edits.append((conn, "order reversed"))
            out.append(draft.result(source, "negative", "temporal", self.name))
        return out


def word_form(word: str) -> str:
    """Coarse inflection class: ``ing``, ``s`` (3rd person / plural) or ``base``."""
    w = word.lower()
    if w.endswith("ing") and len(w) > 4:
        return "ing"
    if w.endswith("s") and not w.endswith("ss") and len(w) > 3:
        return "s"
    return "base"


def _editable(lexicon: Lexicon, tokens: list[str]) -> list[tuple[int, str]]:
    """``(index, part of speech)`` of the tokens a semantic edit may change."""
    out = []
    for i, tok in enumerate(tokens):
        pos = lexicon.part_of_speech(tok) if tok.isalpha() else None
        if pos is not None:
            out.append((i, pos))
    return out


class SemanticPositiveGenerator:
    """Positives with one noun, verb or adjective replaced by a near-synonym."""

    name = "semantic_positive"

    def __init__(
        self, lexicon: Lexicon, neighbours: object | None = None, glove_synonyms: bool = False
    ) -> None:
        self.lexicon = lexicon
        self.neighbours = neighbours if glove_synonyms else None

    def synonyms(self, word: str) -> list[str]:
        """The lexicon's near-synonyms of ``word``, else (if enabled) its GloVe neighbours."""
        found = list(self.lexicon.synonyms.get(word.lower(), ()))
        if not found and self.neighbours is not None:
            found = self.neighbours.synonyms(word.lower(), exclude=self.lexicon.related(word))  # type: ignore[attr-defined]
        return found

    def generate(self, query: str, rng: np.random.Generator) -> list[GeneratedQuery]:
        """One candidate per (editable word, synonym)."""
        source = tokenize(query)
        draft = _Draft.of(source)
        out = []
        for i, tok in enumerate(source):
            if not tok.isalpha() or tok.lower() in STOPWORDS:
                continue
            for syn in self.synonyms(tok):
                out.append(draft.replace(i, syn).result(source, "positive", "semantic", self.name))
        return out


class SemanticNegativeGenerator:
    """Negatives with one noun, verb or adjective replaced by an antonym or an unrelated word.

    Args:
        lexicon: word lists; when its ``closed_vocabulary`` is set
            (:meth:`~momentkit.text_augment.lexicon.Lexicon.with_pools`), antonyms outside its
            part-of-speech pools are not used.
        neighbours: GloVe similarities: "unrelated" words must have cosine below
            ``max_similarity`` to the replaced word.
        unrelated_per_word: unrelated replacements drawn per editable word.
    """

    name = "semantic_negative"

    def __init__(
        self,
        lexicon: Lexicon,
        neighbours: object | None = None,
        unrelated_per_word: int = 1,
        max_similarity: float = 0.5,
    ) -> None:
        self.lexicon = lexicon
        self.neighbours = neighbours
        self.unrelated_per_word = unrelated_per_word
        self.max_similarity = max_similarity

    def unrelated(self, word: str, pos: str, rng: np.random.Generator) -> list[str]:
        """Words of the ``pos`` pool unrelated to ``word`` (sampled with ``rng``)."""
        related = self.lexicon.related(word)
        pool = [w for w in self.lexicon.pos.get(pos, ()) if w not in related]
        same_form = [w for w in pool if word_form(w) == word_form(word)]
        pool = same_form or pool  # "talks" -> "sings", not "singing"
        if self.neighbours is not None:
            sim = self.neighbours.similarity  # type: ignore[attr-defined]
            pool = [w for w in pool if sim(word.lower(), w) < self.max_similarity]
        if not pool:
            return []
        n = min(self.unrelated_per_word, len(pool))
        return [pool[i] for i in sorted(rng.choice(len(pool), n, replace=False))]

    def generate(self, query: str, rng: np.random.Generator) -> list[GeneratedQuery]:
        """Per editable word: every antonym (in the pools when closed) + unrelated words."""
        source = tokenize(query)
        draft = _Draft.of(source)
        pools = {w for ws in self.lexicon.pos.values() for w in ws}
        out = []
        for i, pos in _editable(self.lexicon, source):
            word = source[i].lower()
            antonyms = [
                a for a in self.lexicon.antonyms.get(word, ()) if not self.closed or a in pools
            ]
            for new in antonyms + self.unrelated(word, pos, rng):
                out.append(draft.replace(i, new).result(source, "negative", "semantic", self.name))
        return out

    @property
    def closed(self) -> bool:
        """Whether replacements must stay inside the lexicon's pools."""
        return self.lexicon.closed_vocabulary


class LLMGenerator:
    """The hook for an LLM-based generator (see the module doc).

    Args:
        complete: ``prompt -> reply`` (any local or remote model; momentkit calls no network).
        name: the generator's name in the corpus.
        prompt: a ``str.format`` template with ``{query}``.
    """

    DEFAULT_PROMPT = (
        "Rewrite the video search query below.\n"
        "Give positives that keep its meaning and negatives that change it, along the temporal "
        "dimension (the order of actions) and the semantic dimension (objects and actions).\n"
        "Answer with one line per query: KIND|DIMENSION|QUERY, KIND positive or negative, "
        "DIMENSION temporal or semantic.\n"
        "Query: {query}\n"
    )

    def __init__(
        self, complete: Callable[[str], str], name: str = "llm", prompt: str | None = None
    ) -> None:
        self.complete = complete
        self.name = name
        self.prompt = prompt or self.DEFAULT_PROMPT

    def generate(self, query: str, rng: np.random.Generator) -> list[GeneratedQuery]:
        """Parse ``KIND|DIMENSION|QUERY`` lines of the reply; other lines are ignored."""
        reply = self.complete(self.prompt.format(query=query))
        out = []
        for line in reply.splitlines():
            parts = [p.strip() for p in line.split("|", 2)]
            if len(parts) != 3 or not parts[2]:
                continue
            kind, dimension, text = parts[0].lower(), parts[1].lower(), parts[2]
            if kind in ("positive", "negative") and dimension in ("temporal", "semantic"):
                out.append(
                    GeneratedQuery(text, kind, dimension, self.name, (), tuple(tokenize(text)))
                )
        return out


@GENERATORS.register("temporal_positive")
def _temporal_positive(context: GeneratorContext) -> Generator:
    return TemporalPositiveGenerator()


@GENERATORS.register("temporal_negative")
def _temporal_negative(context: GeneratorContext) -> Generator:
    return TemporalNegativeGenerator(context.lexicon)


@GENERATORS.register("semantic_positive")
def _semantic_positive(context: GeneratorContext) -> Generator:
    return SemanticPositiveGenerator(context.lexicon, context.neighbours, context.glove_synonyms)


@GENERATORS.register("semantic_negative")
def _semantic_negative(context: GeneratorContext) -> Generator:
    return SemanticNegativeGenerator(context.lexicon, context.neighbours)
