"""Temporal action detection on the synthetic benchmark: action classes, labelled segments and
class queries, so moment retrieval (MR) and TAD train together offline.

The action classes are the synthetic world's *motions* (``running``, ``jumping``, ...): every
event of a video is an instance of its motion, so a video holds several instances of several
classes (the planner of mode ``tad`` guarantees at least two classes a video). Motions live only
in the SlowFast-like stream, along directions unrelated to the text space, and the MR queries
name them too (``a dog jumping after a cat spinning``): dense TAD labels teach the motion words,
which is the synergy UniMD's co-training exploits.

A class query is the prompt ``"a video of jumping"`` encoded like the MR queries
(:func:`encode_class_prompt`, mirroring :func:`momentkit.data.synth.encode_text`: the class word
weighs 1, the prompt's other words 0.2; words outside the world's vocabulary get fixed random
vectors drawn from the world seed).

:func:`write_synth_tad` derives, from a folder written by ``momentkit synth``::

    OUTDIR/annotations/tad.json             ActivityNet layout, subsets training / validation
    OUTDIR/annotations/tad_classes.txt      the class list, one a line
    OUTDIR/features/tad_class_text.npz      names (C,), pooler_output (C, 512): class queries

The videos, MR queries and features are those of the ``moments`` mode with the same seed, except
that a plan with fewer than two action classes is drawn again.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from momentkit.data.synth import (
    SPLITS,
    SYNTH_MODES,
    TEXT_DIM,
    QueryPlan,
    SynthConfig,
    World,
    build_world,
    load_synth_config,
    plan_moment_query,
)
from momentkit.data.tad import DEFAULT_PROMPT, TADVideo, save_class_features, save_tad_json
from momentkit.utils.errors import MomentkitError
from momentkit.utils.io import atomic_write_text, iter_jsonl

#: subset name of each synthetic split in the TAD file (ActivityNet's names)
SUBSETS = {"train": "training", "val": "validation"}
TAD_FILE = "annotations/tad.json"
CLASSES_FILE = "annotations/tad_classes.txt"
CLASS_FEATURES_FILE = "features/tad_class_text.npz"
MIN_CLASSES_PER_VIDEO = 2
_MAX_REPLANS = 100


@SYNTH_MODES.register("tad")
def plan_tad_video(rng: np.random.Generator, config: SynthConfig, world: World) -> QueryPlan:
    """The ``moments`` plan, drawn again until the video shows at least two action classes."""
    for _ in range(_MAX_REPLANS):
        plan = plan_moment_query(rng, config, world)
        if len({ev.motion for ev in plan.events}) >= MIN_CLASSES_PER_VIDEO:
            return plan
    raise MomentkitError(
        f"no video with {MIN_CLASSES_PER_VIDEO} action classes in {_MAX_REPLANS} plans; raise "
        "max_duration or lower event_clips so that videos hold several events"
    )


def action_classes(world: World) -> list[str]:
    """The action classes: the world's motion words, in concept order."""
    return list(world.motion)


def _extra_word_vector(word: str, world_seed: int) -> np.ndarray:
    """A fixed unit vector for a word outside the world's vocabulary (``video``, ``of``)."""
    rng = np.random.default_rng([world_seed, zlib.crc32(word.encode("utf-8")), 0x7AD])
    vec = rng.standard_normal(TEXT_DIM)
    return vec / np.linalg.norm(vec)


def _word_vector(word: str, world: World, world_seed: int) -> np.ndarray:
    try:
        return world.word_vector(word)
    except ValueError:
        return _extra_word_vector(word, world_seed)


def encode_class_prompt(
    label: str, world: World, world_seed: int, prompt: str = DEFAULT_PROMPT
) -> dict[str, np.ndarray]:
    """CLIP-like text features of the class query ``prompt.format(label)``.

    Returns:
        ``{"last_hidden_state": (N, 512), "pooler_output": (512,)}`` float32 built as
        :func:`momentkit.data.synth.encode_text` builds a sentence's: pooled = normalised sum of
        the label words (weight 1) and the other words (weight 0.2); tokens = word vector +
        position vector + a quarter of the pooled vector, ``<sos>`` first and the pooled
        vector last.
    """
    label_words = label.split()
    words = prompt.format(label).split()
    weights = [1.0 if w in label_words else 0.2 for w in words]
    vectors = [_word_vector(w, world, world_seed) for w in words]
    pooled = np.sum([wt * v for wt, v in zip(weights, vectors)], axis=0)
    pooled = pooled / np.linalg.norm(pooled)
    tokens = np.stack([world.word_vector("<sos>"), *vectors])
    hidden = tokens + world.position_dirs[: len(tokens)] + 0.25 * pooled
    hidden = np.concatenate([hidden, pooled[None]], axis=0)
    return {
        "last_hidden_state": hidden.astype(np.float32),
        "pooler_output": pooled.astype(np.float32),
    }


def tad_video_from_latent(row: dict[str, Any], clip_len: float, subset: str) -> TADVideo:
    """The TAD annotation of one latent row: every event is an instance of its motion."""
    segments = [[ev[0] * clip_len, ev[1] * clip_len] for ev in row["events"]]
    labels = [str(ev[3]) for ev in row["events"]]
    return TADVideo(row["vid"], row["num_clips"] * clip_len, subset, segments, labels)


@dataclass(frozen=True)
class SynthTADFiles:
    """What :func:`write_synth_tad` wrote.

    Attributes:
        annotations: the TAD JSON.
        classes: the class list.
        class_features: the class-query embeddings.
        num_videos: subset -> videos.
        num_instances: subset -> action instances.
    """

    annotations: Path
    classes: Path
    class_features: Path
    num_videos: dict[str, int]
    num_instances: dict[str, int]


def write_synth_tad(outdir: str | Path, prompt: str = DEFAULT_PROMPT) -> SynthTADFiles:
    """Write the TAD annotations, class list and class-query features of a synth folder.

    Args:
        outdir: a folder written by ``momentkit synth`` (any mode; ``tad`` guarantees two
            classes a video).
        prompt: the class-query template.

    Raises:
        FileNotFoundError: ``outdir`` is not a ``momentkit synth`` folder.
    """
    outdir = Path(outdir)
    config = load_synth_config(outdir)
    world = build_world(config)
    videos: list[TADVideo] = []
    for split in SPLITS:
        path = outdir / "latent" / f"{split}.jsonl"
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: no such file; is {outdir} a `momentkit synth` folder?"
            )
        videos += [
            tad_video_from_latent(r, config.clip_len, SUBSETS[split]) for _, r in iter_jsonl(path)
        ]
    classes = action_classes(world)
    save_tad_json(outdir / TAD_FILE, videos, version="momentkit-synth-tad")
    atomic_write_text(outdir / CLASSES_FILE, "".join(f"{c}\n" for c in classes))
    features = np.stack(
        [encode_class_prompt(c, world, config.world_seed, prompt)["pooler_output"] for c in classes]
    )
    save_class_features(outdir / CLASS_FEATURES_FILE, classes, features)
    return SynthTADFiles(
        outdir / TAD_FILE,
        outdir / CLASSES_FILE,
        outdir / CLASS_FEATURES_FILE,
        {s: sum(v.subset == s for v in videos) for s in SUBSETS.values()},
        {s: sum(len(v.segments) for v in videos if v.subset == s) for s in SUBSETS.values()},
    )


__all__ = [
    "CLASSES_FILE",
    "CLASS_FEATURES_FILE",
    "SUBSETS",
    "SynthTADFiles",
    "TAD_FILE",
    "action_classes",
    "encode_class_prompt",
    "plan_tad_video",
    "tad_video_from_latent",
    "write_synth_tad",
]
