"""The synthetic moment-retrieval benchmark written by ``momentkit synth``.

Every video is a sequence of *events* separated by short background gaps. An event shows one
appearance concept (``dog``, ``chef``, ...) doing one motion concept (``jumping``, ...) for a few
2-second clips, with a visibility that rises and falls over the event. The two concepts live in
different streams:

- the CLIP-like stream ``(T, 512)`` carries the appearance, along directions that the text
  encoder also uses for the appearance words (a zero-shot similarity gets partial credit);
- the SlowFast-like stream ``(T, 2304)`` carries the motion, along directions unrelated to the
  text space (the motion vocabulary has to be learned);

plus per-clip clutter on every concept direction and isotropic noise, so single clips are
ambiguous and temporal smoothing helps. A query names a conjunction (``a dog jumping``) or a
temporal relation between two conjunctions (``a dog jumping after a cat spinning``,
``... before ...``). The planted distractors (same appearance with another motion, same motion
with another appearance, the target event without its context or in the wrong order) make
every per-clip decision rule fail: see ``docs/synthetic_benchmark.md``.

Layout written by :func:`generate` (the standard QVHighlights feature layout)::

    OUTDIR/annotations/{train,val}.jsonl        QVHighlights schema (momentkit.data.records)
    OUTDIR/features/slowfast/<vid>.npz          features (T, 2304) float32
    OUTDIR/features/clip/<vid>.npz              features (T, 512) float32
    OUTDIR/features/clip_text/qid<qid>.npz      last_hidden_state (N, 512), pooler_output (512,)
    OUTDIR/latent/{train,val}.jsonl             the generator's hidden truth: events, relation
    OUTDIR/synth_config.json                    the config and vocabulary

Extending: a *mode* is a query planner ``(rng, config, world) -> QueryPlan`` registered in
:data:`SYNTH_MODES` and selected by ``SynthConfig.mode``; rendering, annotation and writing are
shared by all modes.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from momentkit.data.records import MomentAnnotation, save_annotations
from momentkit.utils.errors import MomentkitError
from momentkit.utils.io import read_json, write_json, write_jsonl
from momentkit.utils.paths import safe_child
from momentkit.utils.registry import Registry

FORMAT_VERSION = 1
CLIP_DIM = 512
SLOWFAST_DIM = 2304
TEXT_DIM = 512
SPLITS = ("train", "val")
# qids must be unique across splits (the query features share one folder)
SPLIT_QID_BASE = {"train": 0, "val": 10_000_000}

APPEARANCE_WORDS = (
    "dog", "cat", "horse", "bird", "child", "woman", "man", "chef",
    "robot", "clown", "knight", "dancer", "goat", "monkey", "penguin", "pirate",
)  # fmt: skip
MOTION_WORDS = (
    "running", "jumping", "spinning", "falling", "waving",
    "climbing", "crawling", "swimming", "rolling", "juggling",
)  # fmt: skip
RELATIONS = ("conj", "after", "before")
_FUNCTION_WORDS = ("<sos>", "<eos>", "a", "after", "before")
_MAX_TOKENS = 16

Pair = tuple[int, int]  # (appearance id, motion id)


#: longest synthetic video (seconds): a day, far beyond the long-video benchmarks (2 h)
MAX_SYNTH_DURATION = 86_400.0
#: SynthConfig's amplitudes, weights and noise levels: finite numbers >= 0
NON_NEGATIVE_FIELDS = (
    "context_weight",
    "appearance_strength",
    "motion_strength",
    "clutter",
    "clip_noise",
    "slowfast_noise",
    "scene_strength",
    "annotator_noise",
)


def _type_problem(value: Any, default: Any) -> str | None:
    """Why ``value`` cannot stand for a field whose default is ``default`` (None: it can).

    Integers must be integers, numbers finite numbers, flags booleans, texts strings, and
    tuples of the default's length with items of the default items' types.
    """
    if isinstance(default, tuple):
        if not isinstance(value, tuple | list) or len(value) != len(default):
            return f"expected {len(default)} values like {list(default)}, got {value!r}"
        for v, d in zip(value, default, strict=True):
            problem = _type_problem(v, d)
            if problem is not None:
                return problem
        return None
    if isinstance(default, bool):
        ok, wanted = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, wanted = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok, wanted = ok and math.isfinite(value), "a finite number"
    elif isinstance(default, str):
        ok, wanted = isinstance(value, str), "a string"
    else:
        return None
    return None if ok else f"expected {wanted}, got {value!r}"


@dataclass(frozen=True)
class SynthConfig:
    """Every knob of the generator; the defaults are the benchmark ``momentkit synth`` writes.

    Attributes:
        num_train, num_val: queries per split (one video per query).
        seed: seed of the videos and queries.
        world_seed: seed of the concept directions and word vectors; datasets with different
            ``seed`` and the same ``world_seed`` share one "world" (a model trained on one can
            be tested on the other).
        mode: query planner in :data:`SYNTH_MODES`.
        clip_len: seconds per clip.
        min_duration, max_duration: video length range in seconds (uniform over clip counts).
        num_appearance, num_motion: vocabulary sizes (prefixes of the word lists).
        relation_probs: probabilities of ``conj``, ``after``, ``before`` queries.
        max_targets_conj, max_targets_relation: most relevant windows per query.
        negatives: (min, max) planted hard-negative chains per query.
        near_miss_appearance: probability that a near-miss event (one concept in common with
            the target or context) shares the appearance rather than the motion.
        event_clips: (min, max) clips of an ordinary event.
        long_event_clips, long_event_prob: length range and probability of a long event.
        max_gap: most background clips planned after an event (leftover clips of a full
            video are added between chains).
        context_weight: weight of the context phrase in the pooled text feature.
        appearance_strength, motion_strength: signal amplitude at full visibility.
        clutter: std of the per-clip random activation of every concept direction.
        clip_noise, slowfast_noise: per-dimension isotropic noise std of each stream.
        scene_strength: norm of the per-video constant offset of each stream.
        num_annotators: saliency annotators (3 in QVHighlights).
        annotator_noise: std of an annotator's per-clip error before rounding to 0..4.
        compress: write deflated ``.npz`` files (smaller, slower).
    """

    num_train: int = 2000
    num_val: int = 500
    seed: int = 0
    world_seed: int = 0
    mode: str = "moments"
    clip_len: float = 2.0
    min_duration: float = 30.0
    max_duration: float = 150.0
    num_appearance: int = 12
    num_motion: int = 8
    relation_probs: tuple[float, float, float] = (0.3, 0.35, 0.35)
    max_targets_conj: int = 3
    max_targets_relation: int = 2
    negatives: tuple[int, int] = (3, 6)
    near_miss_appearance: float = 0.65
    event_clips: tuple[int, int] = (2, 10)
    long_event_clips: tuple[int, int] = (11, 22)
    long_event_prob: float = 0.15
    max_gap: int = 2
    context_weight: float = 0.5
    appearance_strength: float = 1.0
    motion_strength: float = 1.0
    clutter: float = 0.3
    clip_noise: float = 0.03
    slowfast_noise: float = 0.02
    scene_strength: float = 0.5
    num_annotators: int = 3
    annotator_noise: float = 0.5
    compress: bool = False

    def __post_init__(self) -> None:
        def bad(name: str, problem: str) -> MomentkitError:
            return MomentkitError(f"SynthConfig.{name}: {problem}")

        for f in fields(self):  # the type of the default, numbers finite (also from JSON)
            problem = _type_problem(getattr(self, f.name), f.default)
            if problem is not None:
                raise bad(f.name, problem)
        for name in ("seed", "world_seed"):
            if getattr(self, name) < 0:
                raise bad(name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("min_duration", "max_duration"):
            if not 0 < getattr(self, name) <= MAX_SYNTH_DURATION:
                raise bad(
                    name,
                    f"must be in (0, {MAX_SYNTH_DURATION:g}] seconds, got {getattr(self, name)}",
                )
        for name in ("near_miss_appearance", "long_event_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise bad(name, f"must be a probability in [0, 1], got {getattr(self, name)}")
        for name in NON_NEGATIVE_FIELDS:
            if getattr(self, name) < 0:
                raise bad(name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("num_train", "num_val"):
            n = getattr(self, name)
            if not 0 <= n < SPLIT_QID_BASE["val"]:
                raise bad(name, f"must be in [0, {SPLIT_QID_BASE['val']}), got {n}")
        if self.mode not in SYNTH_MODES:
            raise bad("mode", f"unknown mode '{self.mode}'; known: {', '.join(SYNTH_MODES)}")
        if self.clip_len <= 0:
            raise bad("clip_len", f"must be positive, got {self.clip_len}")
        if not 2 <= self.num_appearance <= len(APPEARANCE_WORDS):
            raise bad("num_appearance", f"must be in [2, {len(APPEARANCE_WORDS)}]")
        if not 2 <= self.num_motion <= len(MOTION_WORDS):
            raise bad("num_motion", f"must be in [2, {len(MOTION_WORDS)}]")
        if len(self.relation_probs) != len(RELATIONS) or any(p < 0 for p in self.relation_probs):
            raise bad("relation_probs", f"need {len(RELATIONS)} non-negative probabilities")
        if not math.isclose(sum(self.relation_probs), 1.0, abs_tol=1e-6):
            raise bad("relation_probs", f"must sum to 1, got {sum(self.relation_probs)}")
        for name in ("event_clips", "long_event_clips", "negatives"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise bad(name, f"need 0 <= min <= max, got ({lo}, {hi})")
        if self.event_clips[0] < 1:
            raise bad("event_clips", "events need at least one clip")
        if self.max_targets_conj < 1 or self.max_targets_relation < 1:
            raise bad("max_targets_*", "need at least one target per query")
        # the relevant events of a relation query, at full length, must fit the shortest video
        need = 2 * self.event_clips[0] + self.max_gap
        if self.max_duration < self.min_duration:
            raise bad(
                "max_duration",
                f"{self.max_duration:g} s is below min_duration {self.min_duration:g} s; "
                "set both, e.g. --set min_duration=600 max_duration=3600",
            )
        if self.min_clips < need or self.max_clips < self.min_clips:
            raise bad(
                "min_duration",
                f"videos of {self.min_clips} clips cannot hold a relation ({need} clips); "
                "raise min_duration/max_duration or lower event_clips",
            )
        if not 0.0 <= self.near_miss_appearance <= 1.0:
            raise bad("near_miss_appearance", "must be a probability in [0, 1]")
        if self.max_gap < 0:
            raise bad("max_gap", "must be >= 0")
        if self.num_annotators < 1:
            raise bad("num_annotators", "need at least one annotator")

    @property
    def min_clips(self) -> int:
        """Fewest clips of a video."""
        return max(1, math.ceil(self.min_duration / self.clip_len - 1e-9))

    @property
    def max_clips(self) -> int:
        """Most clips of a video."""
        return max(1, math.floor(self.max_duration / self.clip_len + 1e-9))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> SynthConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise a ``MomentkitError`` naming them."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(obj) - names)
        if unknown:
            raise MomentkitError(f"SynthConfig: unknown fields {unknown}; known: {sorted(names)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in obj.items()}
        return cls(**kwargs)


# --------------------------------------------------------------------------------------------
# The world: concept directions shared by every video and query of a dataset.


@dataclass(frozen=True)
class World:
    """Concept directions and word vectors.

    Attributes:
        appearance: appearance words, index = concept id.
        motion: motion words, index = concept id.
        appearance_dirs: ``(A, 512)`` orthonormal rows; CLIP-stream directions of the
            appearance concepts and text vectors of the appearance words (shared).
        motion_dirs: ``(M, 2304)`` orthonormal rows; SlowFast-stream directions of the motions.
        motion_text_dirs: ``(M, 512)`` text vectors of the motion words, orthogonal to
            ``appearance_dirs`` and unrelated to ``motion_dirs``.
        function_dirs: ``(F, 512)`` text vectors of ``<sos>``, ``<eos>``, ``a``, ``after``,
            ``before``.
        position_dirs: ``(16, 512)`` token-position vectors.
    """

    appearance: tuple[str, ...]
    motion: tuple[str, ...]
    appearance_dirs: np.ndarray
    motion_dirs: np.ndarray
    motion_text_dirs: np.ndarray
    function_dirs: np.ndarray
    position_dirs: np.ndarray

    def word_vector(self, word: str) -> np.ndarray:
        """The ``(512,)`` text vector of ``word``."""
        if word in self.appearance:
            return self.appearance_dirs[self.appearance.index(word)]
        if word in self.motion:
            return self.motion_text_dirs[self.motion.index(word)]
        return self.function_dirs[_FUNCTION_WORDS.index(word)]


def _orthonormal_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((dim, rows)))
    return np.ascontiguousarray(q.T)


def build_world(config: SynthConfig) -> World:
    """The concept directions of ``config.world_seed`` (independent of ``config.seed``)."""
    rng = np.random.default_rng([config.world_seed, 0x5EED])
    a, m, f = config.num_appearance, config.num_motion, len(_FUNCTION_WORDS)
    text = _orthonormal_rows(rng, a + m + f, TEXT_DIM)
    # positions: random, small, not orthogonalised (like learned position embeddings)
    positions = rng.standard_normal((_MAX_TOKENS, TEXT_DIM)) / math.sqrt(TEXT_DIM)
    return World(
        appearance=APPEARANCE_WORDS[:a],
        motion=MOTION_WORDS[:m],
        appearance_dirs=text[:a],
        motion_dirs=_orthonormal_rows(rng, m, SLOWFAST_DIM),
        motion_text_dirs=text[a : a + m],
        function_dirs=text[a + m :],
        position_dirs=positions,
    )


# --------------------------------------------------------------------------------------------
# Queries and the events of a video.


@dataclass(frozen=True)
class QuerySpec:
    """What a query asks for.

    Attributes:
        relation: ``conj`` (the target events), ``after`` (target events whose previous event
            is the context) or ``before`` (target events whose next event is the context).
        target: ``(appearance, motion)`` of the events to retrieve.
        context: ``(appearance, motion)`` of the neighbouring event, ``None`` for ``conj``.
    """

    relation: str
    target: Pair
    context: Pair | None = None

    def words(self, world: World) -> list[tuple[str, str]]:
        """``(word, role)`` pairs; role is ``target``, ``context`` or ``function``."""
        out = [("a", "function"), (world.appearance[self.target[0]], "target")]
        out.append((world.motion[self.target[1]], "target"))
        if self.context is not None:
            out += [(self.relation, "function"), ("a", "function")]
            out.append((world.appearance[self.context[0]], "context"))
            out.append((world.motion[self.context[1]], "context"))
        return out

    def text(self, world: World) -> str:
        """The natural-language query, e.g. ``a dog jumping after a cat spinning``."""
        return " ".join(w for w, _ in self.words(world))


@dataclass
class Event:
    """One event: a concept pair visible over clips ``[start, start + len(intensity))``.

    Attributes:
        start: first clip.
        appearance, motion: concept ids.
        intensity: ``(L,)`` visibility in ``(0, 1]`` per clip; scales both streams' signal and
            drives the annotators' saliency.
    """

    start: int
    appearance: int
    motion: int
    intensity: np.ndarray

    @property
    def end(self) -> int:
        """One past the last clip."""
        return self.start + len(self.intensity)

    @property
    def pair(self) -> Pair:
        """``(appearance, motion)``."""
        return (self.appearance, self.motion)


@dataclass
class QueryPlan:
    """A planned video and its query.

    Attributes:
        num_clips: clips of the video (``T``).
        events: sorted by ``start``, non-overlapping; clips outside events are background.
        spec: the query.
        relevant: indices of the events relevant to ``spec`` (computed, see
            :func:`match_events`).
    """

    num_clips: int
    events: list[Event]
    spec: QuerySpec
    relevant: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.relevant = match_events(self.events, self.spec)


def match_events(events: Sequence[Event], spec: QuerySpec) -> list[int]:
    """Indices of the events relevant to ``spec`` (background gaps between events are ignored).

    ``after``: the target event's previous event is the context; ``before``: its next event is.
    """
    out = []
    for i, ev in enumerate(events):
        if ev.pair != spec.target:
            continue
        if spec.relation == "after" and not (i > 0 and events[i - 1].pair == spec.context):
            continue
        if spec.relation == "before" and not (
            i + 1 < len(events) and events[i + 1].pair == spec.context
        ):
            continue
        out.append(i)
    return out


Planner = Callable[[np.random.Generator, SynthConfig, World], QueryPlan]
SYNTH_MODES: Registry[Planner] = Registry("synth mode")


def _intensity(rng: np.random.Generator, length: int) -> np.ndarray:
    """A bump of visibility over an event: ``(length,)`` in ``[0.25, 1]``."""
    low, high = rng.uniform(0.25, 0.55), rng.uniform(0.8, 1.0)
    center, width = rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.45)
    t = (np.arange(length) + 0.5) / length
    bump = np.exp(-0.5 * ((t - center) / width) ** 2)
    return low + (high - low) * bump


def _event_length(rng: np.random.Generator, config: SynthConfig) -> int:
    long = rng.random() < config.long_event_prob
    lo, hi = config.long_event_clips if long else config.event_clips
    return int(rng.integers(lo, hi + 1))


def _random_pair(rng: np.random.Generator, config: SynthConfig, exclude: Sequence[Pair]) -> Pair:
    while True:
        p = (int(rng.integers(config.num_appearance)), int(rng.integers(config.num_motion)))
        if p not in exclude:
            return p


def _near_miss(
    rng: np.random.Generator, config: SynthConfig, pair: Pair, exclude: Sequence[Pair]
) -> Pair:
    """A pair sharing exactly one concept with ``pair`` (not in ``exclude``): its appearance
    with probability ``config.near_miss_appearance`` (when possible), else its motion."""
    a, m = pair
    same_a = [(a, j) for j in range(config.num_motion) if j != m and (a, j) not in exclude]
    same_m = [(i, m) for i in range(config.num_appearance) if i != a and (i, m) not in exclude]
    group = same_a if rng.random() < config.near_miss_appearance else same_m
    group = group or same_a or same_m
    return group[int(rng.integers(len(group)))]


# hard negatives of a relation query that contain the target event without its context
_CONTEXT_NEGATIVES = ("lone", "wrong_context", "reversed")
_NEGATIVE_KINDS = (*_CONTEXT_NEGATIVES, "context_alone", "near_miss")


def _negative_chain(
    rng: np.random.Generator, config: SynthConfig, spec: QuerySpec, kind: str
) -> list[Pair]:
    """One hard-negative chain of events for ``spec``.

    ``near_miss``: an event sharing one concept with the target. For relations (shown for
    ``after``; ``before`` mirrors the order): ``lone`` = the target alone, ``wrong_context`` =
    the target after a near miss of the context, ``reversed`` = the target *before* the
    context, ``context_alone`` = the context followed by another event.
    """
    x, y = spec.target, spec.context
    if kind == "near_miss" or y is None:
        return [_near_miss(rng, config, x, [p for p in (x, y) if p is not None])]
    if kind == "lone":
        return [x]
    if kind == "wrong_context":
        chain = [_near_miss(rng, config, y, [x, y]), x]
    elif kind == "reversed":
        chain = [x, y]
    elif kind == "context_alone":
        chain = [y, _random_pair(rng, config, [x, y])]
    else:
        raise ValueError(f"unknown negative kind '{kind}'")
    return chain if spec.relation == "after" else chain[::-1]


def _negative_chains(
    rng: np.random.Generator, config: SynthConfig, spec: QuerySpec
) -> list[list[Pair]]:
    """``config.negatives`` hard-negative chains, the hardest kind first: a near miss for a
    conjunction, the target without its context for a relation."""
    n = int(rng.integers(config.negatives[0], config.negatives[1] + 1))
    if spec.context is None:
        kinds = ["near_miss"] * n
    else:
        kinds = [_CONTEXT_NEGATIVES[int(rng.integers(len(_CONTEXT_NEGATIVES)))]]
        kinds += [_NEGATIVE_KINDS[int(rng.integers(len(_NEGATIVE_KINDS)))] for _ in range(n - 1)]
    return [_negative_chain(rng, config, spec, kind) for kind in kinds[:n]]


def _shrink(lengths: list[int], budget: int, min_len: int) -> bool:
    """Shorten the longest events (not below ``min_len``) until ``sum <= budget``."""
    while sum(lengths) > budget:
        i = int(np.argmax(lengths))
        if lengths[i] <= min_len:
            return False
        lengths[i] -= 1
    return True


@dataclass
class _Chain:
    """Events that stay together on the timeline, and the background clips after each."""

    pairs: list[Pair]
    lengths: list[int]
    gaps: list[int]  # gaps[i]: background after event i; the last one follows the chain

    @property
    def clips(self) -> int:
        return sum(self.lengths) + sum(self.gaps)


def _layout(
    rng: np.random.Generator,
    config: SynthConfig,
    num_clips: int,
    required: list[list[Pair]],
    optional: list[list[Pair]],
    filler_exclude: Sequence[Pair],
) -> list[Event]:
    """Lay chains of events on a timeline of ``num_clips`` clips, in random order.

    Every ``required`` chain is placed (events shortened if need be), then as many ``optional``
    ones as fit, then single random filler events (not in ``filler_exclude``) until the video
    is full. Up to ``max_gap`` background clips follow each event; leftover clips are spread
    over the gaps between chains. Two identical events never touch (they would read as one).
    """
    min_len = config.event_clips[0]
    chains: list[_Chain] = []
    free = num_clips

    def try_add(pairs: list[Pair], must: bool) -> None:
        nonlocal free
        lengths = [_event_length(rng, config) for _ in pairs]
        gaps = [int(rng.integers(config.max_gap + 1)) for _ in pairs]
        if sum(lengths) + sum(gaps) > free:
            gaps = [min(g, 1) for g in gaps[:-1]] + [0]
            if not _shrink(lengths, free - sum(gaps), min_len if not must else 1):
                if must:
                    raise AssertionError("a required chain does not fit; SynthConfig prevents it")
                return
        chains.append(_Chain(pairs, lengths, gaps))
        free -= chains[-1].clips

    for pairs in required:
        try_add(pairs, must=True)
    for pairs in optional:
        try_add(pairs, must=False)
    while free >= min_len:
        try_add([_random_pair(rng, config, filler_exclude)], must=False)

    order = [chains[i] for i in rng.permutation(len(chains))]
    for prev, nxt in zip(order, order[1:]):
        if prev.pairs[-1] == nxt.pairs[0] and prev.gaps[-1] == 0:
            if free == 0:  # borrow the clip from the longest event
                longest = max(order, key=lambda c: max(c.lengths))
                if max(longest.lengths) <= 1:
                    raise AssertionError("no clip left to separate two identical events")
                longest.lengths[int(np.argmax(longest.lengths))] -= 1
                free += 1
            prev.gaps[-1] += 1
            free -= 1
    lead = 0
    for k in rng.integers(len(order) + 1, size=free):
        if k == len(order):
            lead += 1
        else:
            order[int(k)].gaps[-1] += 1

    events, t = [], lead
    for chain in order:
        for pair, length, gap in zip(chain.pairs, chain.lengths, chain.gaps):
            events.append(Event(t, pair[0], pair[1], _intensity(rng, length)))
            t += length + gap
    if t != num_clips:
        raise AssertionError(f"layout covers {t} clips, expected {num_clips}")
    return events


def draw_query(
    rng: np.random.Generator, config: SynthConfig
) -> tuple[int, QuerySpec, list[list[Pair]]]:
    """The video length, the query and its positive chains (shared by the query planners).

    Returns:
        ``(num_clips, spec, positives)``: ``positives`` repeats the target (``conj``) or the
        target with its context in the relation's order, 1 to ``max_targets_*`` times.
    """
    num_clips = int(rng.integers(config.min_clips, config.max_clips + 1))
    relation = RELATIONS[int(rng.choice(len(RELATIONS), p=config.relation_probs))]
    target = _random_pair(rng, config, [])
    if relation == "conj":
        spec = QuerySpec(relation, target)
        positives = [[target]] * int(rng.integers(1, config.max_targets_conj + 1))
    else:
        spec = QuerySpec(relation, target, _random_pair(rng, config, [target]))
        chain = [spec.context, target] if relation == "after" else [target, spec.context]
        positives = [chain] * int(rng.integers(1, config.max_targets_relation + 1))
    return num_clips, spec, positives


@SYNTH_MODES.register("moments")
def plan_moment_query(rng: np.random.Generator, config: SynthConfig, world: World) -> QueryPlan:
    """The default mode: conjunction and temporal-relation queries with hard negatives.

    A video holds 1 to ``max_targets_*`` target events (each with its context for a relation;
    the first always fits), ``negatives`` hard-negative chains (as many as fit) and random
    filler events that are neither the target nor the context; the rest is background.
    """
    num_clips, spec, positives = draw_query(rng, config)
    # the first positive always fits; then the hardest negative; then the rest in random order
    negatives = _negative_chains(rng, config, spec)
    rest = positives[1:] + negatives[1:]
    optional = negatives[:1] + [rest[i] for i in rng.permutation(len(rest))]
    exclude = [p for p in (spec.target, spec.context) if p is not None]
    events = _layout(rng, config, num_clips, positives[:1], optional, exclude)
    return QueryPlan(num_clips, events, spec)


# --------------------------------------------------------------------------------------------
# Rendering features, text and annotations.


def render_video(
    plan: QueryPlan, world: World, config: SynthConfig, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """The two video streams of a plan.

    Returns:
        ``{"slowfast": (T, 2304) float32, "clip": (T, 512) float32}``: per clip, the event's
        concept direction scaled by its visibility, random clutter on every concept direction,
        a per-video constant offset and isotropic noise.
    """
    t = plan.num_clips
    a_amp = config.clutter * rng.standard_normal((t, config.num_appearance))
    m_amp = config.clutter * rng.standard_normal((t, config.num_motion))
    for ev in plan.events:
        a_amp[ev.start : ev.end, ev.appearance] += config.appearance_strength * ev.intensity
        m_amp[ev.start : ev.end, ev.motion] += config.motion_strength * ev.intensity
    streams = {}
    for name, amp, dirs, noise in (
        ("slowfast", m_amp, world.motion_dirs, config.slowfast_noise),
        ("clip", a_amp, world.appearance_dirs, config.clip_noise),
    ):
        dim = dirs.shape[1]
        scene = rng.standard_normal(dim)
        scene *= config.scene_strength / np.linalg.norm(scene)
        x = (amp @ dirs + scene).astype(np.float32)
        x += np.float32(noise) * rng.standard_normal((t, dim), dtype=np.float32)
        streams[name] = x
    return streams


def encode_text(spec: QuerySpec, world: World, context_weight: float) -> dict[str, np.ndarray]:
    """CLIP-like text features of a query (a deterministic function of the query).

    Returns:
        ``{"last_hidden_state": (N, 512), "pooler_output": (512,)}`` float32 with ``N`` = words
        + 2. The pooled vector is the normalised sum of the target word vectors,
        ``context_weight`` times the context word vectors and 0.2 times the function words'; it
        is also the last (``<eos>``) token, as in CLIP. Tokens ``<sos>`` and the words are
        their word vector + a position vector + a quarter of the pooled vector.
    """
    weights = {"target": 1.0, "context": context_weight, "function": 0.2}
    words = spec.words(world)
    pooled = np.sum([weights[role] * world.word_vector(w) for w, role in words], axis=0)
    pooled = pooled / np.linalg.norm(pooled)
    tokens = np.stack([world.word_vector("<sos>")] + [world.word_vector(w) for w, _ in words])
    hidden = tokens + world.position_dirs[: len(tokens)] + 0.25 * pooled
    hidden = np.concatenate([hidden, pooled[None]], axis=0)
    return {
        "last_hidden_state": hidden.astype(np.float32),
        "pooler_output": pooled.astype(np.float32),
    }


def _number(x: float) -> int | float:
    """``x`` as an int when whole (QVHighlights writes ``150``, not ``150.0``)."""
    x = round(float(x), 6)
    return int(x) if x.is_integer() else x


def annotate(
    plan: QueryPlan,
    qid: int,
    vid: str,
    query: str,
    config: SynthConfig,
    rng: np.random.Generator,
) -> MomentAnnotation:
    """The QVHighlights-schema record of a plan.

    One window per relevant event; every clip of a relevant event gets one integer score in
    ``0..4`` per annotator: ``round(4 * visibility + annotator bias + noise)``.
    """
    clip_len = config.clip_len
    bias = rng.normal(0.0, 0.3, size=config.num_annotators)
    windows, clip_ids, scores = [], [], []
    for i in plan.relevant:
        ev = plan.events[i]
        windows.append([_number(ev.start * clip_len), _number(ev.end * clip_len)])
        noise = config.annotator_noise * rng.standard_normal((len(ev.intensity), len(bias)))
        raw = 4.0 * ev.intensity[:, None] + bias[None, :] + noise
        clip_ids.extend(range(ev.start, ev.end))
        scores.extend(np.clip(np.rint(raw), 0, 4).astype(int).tolist())
    return MomentAnnotation(
        qid=qid,
        query=query,
        vid=vid,
        duration=_number(plan.num_clips * clip_len),
        relevant_windows=windows,
        relevant_clip_ids=clip_ids,
        saliency_scores=scores,
    )


def latent_row(plan: QueryPlan, qid: int, vid: str, world: World) -> dict[str, Any]:
    """The generator's hidden truth for one query (``OUTDIR/latent/<split>.jsonl``).

    ``events`` rows are ``[first clip, one past the last clip, appearance, motion]``;
    ``relevant_events`` index them.
    """

    def names(pair: Pair | None) -> list[str] | None:
        return None if pair is None else [world.appearance[pair[0]], world.motion[pair[1]]]

    return {
        "qid": qid,
        "vid": vid,
        "num_clips": plan.num_clips,
        "relation": plan.spec.relation,
        "target": names(plan.spec.target),
        "context": names(plan.spec.context),
        "events": [[ev.start, ev.end, *names(ev.pair)] for ev in plan.events],
        "relevant_events": plan.relevant,
    }


def npz_bytes(arrays: Mapping[str, np.ndarray], compress: bool = False) -> bytes:
    """The bytes of an ``.npz`` archive of ``arrays``, readable by :func:`numpy.load`.

    Unlike :func:`numpy.savez` it stamps a fixed date on the members, so equal arrays give
    equal bytes.
    """
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for key, array in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = method
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Writing a dataset.

STREAM_DIRS = {
    "slowfast": "features/slowfast",
    "clip": "features/clip",
    "clip_text": "features/clip_text",
}
CONFIG_FILE = "synth_config.json"


def _outputs() -> list[str]:
    """Paths (relative to OUTDIR) that :func:`generate` writes or replaces."""
    out = [f"annotations/{s}.jsonl" for s in SPLITS] + [f"latent/{s}.jsonl" for s in SPLITS]
    return out + list(STREAM_DIRS.values()) + [CONFIG_FILE]


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`generate` wrote.

    Attributes:
        outdir: the output folder.
        num_queries: split -> queries (= videos).
        num_windows: split -> relevant windows.
        relations: split -> relation -> queries.
        seconds: wall time.
    """

    outdir: Path
    num_queries: dict[str, int]
    num_windows: dict[str, int]
    relations: dict[str, dict[str, int]]
    seconds: float


def split_sizes(config: SynthConfig) -> dict[str, int]:
    """Split name -> number of queries."""
    return {"train": config.num_train, "val": config.num_val}


def vid_of(split: str, index: int) -> str:
    """The video id of query ``index`` of ``split``."""
    return f"synth_{split}_{index:06d}"


def generate_sample(
    config: SynthConfig, world: World, split: str, index: int
) -> tuple[MomentAnnotation, dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Query ``index`` of ``split``, independent of every other query.

    Returns:
        ``(annotation, latent row, video streams {"slowfast", "clip"}, text features)``.
    """
    seq = np.random.SeedSequence([config.seed, SPLITS.index(split), index])
    plan_rng, render_rng, annot_rng = (np.random.default_rng(s) for s in seq.spawn(3))
    plan = SYNTH_MODES.get(config.mode)(plan_rng, config, world)
    qid, vid = SPLIT_QID_BASE[split] + index, vid_of(split, index)
    query = plan.spec.text(world)
    annotation = annotate(plan, qid, vid, query, config, annot_rng)
    streams = render_video(plan, world, config, render_rng)
    text = encode_text(plan.spec, world, config.context_weight)
    return annotation, latent_row(plan, qid, vid, world), streams, text


def _install(staging: Path, outdir: Path, rel: str) -> None:
    """Move ``staging/rel`` over ``outdir/rel``, replacing an older file or folder."""
    src, dst = staging / rel, outdir / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_dir() and not dst.is_symlink():
        old = staging / ".old" / rel
        old.parent.mkdir(parents=True, exist_ok=True)
        os.replace(dst, old)
    os.replace(src, dst)


def check_overwrite(outdir: Path, existing: list[str], overwrite: bool) -> None:
    """Refuse to replace the files ``existing`` of ``outdir`` unless ``overwrite`` and
    ``outdir`` holds a benchmark this tool wrote (its ``synth_config.json`` marker): a folder
    of other data is never replaced, even with ``--force``.

    Raises:
        MomentkitError: naming the folder, what it holds and what to do.
    """
    if not existing:
        return
    if not overwrite:
        raise MomentkitError(
            f"{outdir} already holds {', '.join(existing)}. Pass overwrite=True (--force on the "
            "command line) to replace them, or choose another folder"
        )
    marker = outdir / CONFIG_FILE
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != "momentkit-synth":
        raise MomentkitError(
            f"{outdir} holds {', '.join(existing)} but is not a benchmark written by `momentkit "
            f"synth` (no valid {CONFIG_FILE}); --force replaces only those. Choose another "
            "folder, or move these files away"
        )


def write_sample(
    config: SynthConfig, world: World, split: str, index: int, root: Path
) -> tuple[MomentAnnotation, dict[str, Any]]:
    """Generate query ``index`` of ``split`` and write its three feature files under ``root``.

    Returns:
        ``(annotation, latent row)``.
    """
    ann, latent, streams, text = generate_sample(config, world, split, index)
    for name, array in streams.items():
        path = safe_child(root / STREAM_DIRS[name], f"{ann.vid}.npz", "vid")
        path.write_bytes(npz_bytes({"features": array}, config.compress))
    path = safe_child(root / STREAM_DIRS["clip_text"], f"qid{ann.qid}.npz", "qid")
    path.write_bytes(npz_bytes(text, config.compress))
    return ann, latent


def generate(
    config: SynthConfig,
    outdir: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> SynthSummary:
    """Write the synthetic benchmark of ``config`` under ``outdir`` (layout: module docstring).

    Everything is written into a hidden staging folder inside ``outdir`` first and moved into
    place at the end, so an interrupted run leaves no partial dataset. The same config gives
    the same bytes.

    Args:
        config: what to generate.
        outdir: the output folder (created if needed).
        overwrite: replace the files of an earlier run; else refuse to touch them.
        progress: show a progress bar.

    Raises:
        MomentkitError: ``outdir`` already holds a dataset and ``overwrite`` is false.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    outdir = Path(outdir)
    check_overwrite(outdir, [rel for rel in _outputs() if (outdir / rel).exists()], overwrite)
    outdir.mkdir(parents=True, exist_ok=True)
    sizes = split_sizes(config)
    jobs = [(split, i) for split, n in sizes.items() for i in range(n)]
    staging = Path(tempfile.mkdtemp(prefix=".synth-staging-", dir=outdir))
    try:
        for d in STREAM_DIRS.values():
            (staging / d).mkdir(parents=True)
        world = build_world(config)
        bar = tqdm(jobs, desc="synth", unit="video", disable=not progress)
        rows = [write_sample(config, world, split, i, staging) for split, i in bar]
        num_windows: dict[str, int] = {}
        relations: dict[str, dict[str, int]] = {}
        for split in sizes:
            annotations = [ann for (s, _), (ann, _) in zip(jobs, rows) if s == split]
            latents = [lat for (s, _), (_, lat) in zip(jobs, rows) if s == split]
            save_annotations(staging / f"annotations/{split}.jsonl", annotations)
            write_jsonl(staging / f"latent/{split}.jsonl", latents)
            num_windows[split] = sum(len(a.relevant_windows) for a in annotations)
            relations[split] = {r: sum(row["relation"] == r for row in latents) for r in RELATIONS}
        meta = {
            "format": "momentkit-synth",
            "version": FORMAT_VERSION,
            "config": config.to_dict(),
            "appearance": list(world.appearance),
            "motion": list(world.motion),
            "streams": {
                "slowfast": {"dir": STREAM_DIRS["slowfast"], "dim": SLOWFAST_DIM},
                "clip": {"dir": STREAM_DIRS["clip"], "dim": CLIP_DIM},
                "clip_text": {"dir": STREAM_DIRS["clip_text"], "dim": TEXT_DIM},
            },
        }
        write_json(staging / CONFIG_FILE, meta)
        for rel in _outputs():
            _install(staging, outdir, rel)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return SynthSummary(
        outdir=outdir,
        num_queries=dict(sizes),
        num_windows=num_windows,
        relations=relations,
        seconds=time.perf_counter() - start,
    )


def load_synth_config(outdir: str | Path) -> SynthConfig:
    """The config a dataset under ``outdir`` was generated with (from ``synth_config.json``)."""
    path = Path(outdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; is {outdir} a `momentkit synth` folder?")
    meta = read_json(path, "a synth_config.json")
    if not isinstance(meta, dict) or meta.get("format") != "momentkit-synth":
        raise MomentkitError(f"{path}: not written by `momentkit synth` (format field)")
    if not isinstance(meta.get("config"), dict):
        raise MomentkitError(f"{path}: field 'config': missing. Re-run `momentkit synth`")
    try:
        return SynthConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as e:
        raise MomentkitError(f"{path}: field 'config': {e}. Re-run `momentkit synth`") from None


# modes defined in their own modules register themselves in SYNTH_MODES when imported
from momentkit.data import synth_long as _synth_long  # noqa: E402, F401
from momentkit.data import synth_tad as _synth_tad  # noqa: E402, F401
