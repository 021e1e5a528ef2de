"""Long videos for the synthetic benchmark: ``momentkit synth OUT --mode long``.

The ``long`` mode plans videos of 10 minutes to 2 hours (``--set min_duration=600
max_duration=7200``) whose moments take a small share of the video, as in TACoS and MAD:
the same 1-3 target events (2-22 clips each) as the default ``moments`` mode, while the hard
negatives grow with the video (one set of ``negatives`` chains per ``REFERENCE_CLIPS`` clips, so
a long video is as cluttered as a short one everywhere) and random filler events fill the rest.

Long videos are big (an hour of 2 s clips in the standard streams is 20 MB), so
:func:`write_long_benchmark` and :class:`LongVideoGenerator` (in memory) also take a
:class:`LongFeatureConfig`: a narrower SlowFast-like stream, float16 files, and the ``bam``
stream of cheap index features used by clip trimming (``momentkit.models.trimming``):

- Background ``(T, background_dim)``: the scene, constant over shots of 1-10 minutes;
- Appearance ``(T, appearance_dim)`` and Motion ``(T, motion_dim)``: the same concept
  activations as the CLIP-like and SlowFast-like streams seen through a random, entangled
  low-dimensional projection with more noise (a light extractor sees less).
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from momentkit.data.records import MomentAnnotation, save_annotations
from momentkit.data.synth import (
    CONFIG_FILE,
    FORMAT_VERSION,
    RELATIONS,
    SLOWFAST_DIM,
    SPLIT_QID_BASE,
    SPLITS,
    STREAM_DIRS,
    SYNTH_MODES,
    TEXT_DIM,
    QueryPlan,
    SynthConfig,
    SynthSummary,
    World,
    _install,
    _layout,
    _negative_chains,
    _orthonormal_rows,
    annotate,
    build_world,
    check_overwrite,
    draw_query,
    encode_text,
    latent_row,
    npz_bytes,
    render_video,
    split_sizes,
    vid_of,
)
from momentkit.utils.errors import MomentkitError
from momentkit.utils.io import write_json, write_jsonl
from momentkit.utils.paths import safe_child

LONG_MODE = "long"
#: shortest video the ``long`` mode plans (seconds)
LONG_MIN_DURATION = 600.0
#: clips per set of hard-negative chains (the longest video of the default benchmark)
REFERENCE_CLIPS = 75
BAM_STREAM = "bam"
BAM_DIR = "features/bam"


@SYNTH_MODES.register(LONG_MODE)
def plan_long_query(rng: np.random.Generator, config: SynthConfig, world: World) -> QueryPlan:
    """A long video: the ``moments`` mode's targets, hard negatives per ``REFERENCE_CLIPS`` clips.

    Raises:
        MomentkitError: ``config.min_duration`` is below ``LONG_MIN_DURATION``.
    """
    if config.min_duration < LONG_MIN_DURATION:
        raise MomentkitError(
            f"SynthConfig.min_duration: the '{LONG_MODE}' mode plans videos of at least "
            f"{LONG_MIN_DURATION:g} s, got {config.min_duration:g}; pass e.g. --set "
            "min_duration=600 max_duration=7200"
        )
    num_clips, spec, positives = draw_query(rng, config)
    rounds = math.ceil(num_clips / REFERENCE_CLIPS)
    negatives = [c for _ in range(rounds) for c in _negative_chains(rng, config, spec)]
    rest = positives[1:] + negatives[1:]
    optional = negatives[:1] + [rest[i] for i in rng.permutation(len(rest))]
    exclude = [p for p in (spec.target, spec.context) if p is not None]
    events = _layout(rng, config, num_clips, positives[:1], optional, exclude)
    return QueryPlan(num_clips, events, spec)


@dataclass(frozen=True)
class LongFeatureConfig:
    """How long videos are stored (and the BAM index stream rendered).

    Attributes:
        slowfast_dim: channels of the SlowFast-like motion stream (2304 in the standard
            benchmark; the motion directions stay orthonormal in fewer).
        float16: store features as float16 (models read float32).
        bam: also write the ``bam`` index stream.
        background_dim, appearance_dim, motion_dim: widths of the three BAM parts.
        index_noise: per-dimension noise std of the BAM parts (the heavy streams use 0.02-0.03).
        index_clutter: std of the extra per-clip concept activations a light extractor confuses.
        shot_clips: (min, max) clips of a background shot.
    """

    slowfast_dim: int = SLOWFAST_DIM
    float16: bool = False
    bam: bool = True
    background_dim: int = 16
    appearance_dim: int = 32
    motion_dim: int = 32
    index_noise: float = 0.1
    index_clutter: float = 0.2
    shot_clips: tuple[int, int] = (30, 300)

    def __post_init__(self) -> None:
        for name in ("slowfast_dim", "background_dim", "appearance_dim", "motion_dim"):
            if getattr(self, name) < 1:
                raise MomentkitError(f"LongFeatureConfig.{name}: must be >= 1")
        lo, hi = self.shot_clips
        if not 1 <= lo <= hi:
            raise MomentkitError(
                f"LongFeatureConfig.shot_clips: need 1 <= min <= max, got {lo, hi}"
            )
        if self.index_noise < 0 or self.index_clutter < 0:
            raise MomentkitError("LongFeatureConfig.index_noise/index_clutter: must be >= 0")

    @property
    def bam_dim(self) -> int:
        """Channels of the ``bam`` stream."""
        return self.background_dim + self.appearance_dim + self.motion_dim

    @property
    def dtype(self) -> type[np.floating]:
        """The stored dtype."""
        return np.float16 if self.float16 else np.float32

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> LongFeatureConfig:
        """Build from keyword values; unknown keys raise a ``MomentkitError`` naming them."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(obj) - names)
        if unknown:
            raise MomentkitError(
                f"LongFeatureConfig: unknown fields {unknown}; known: {sorted(names)}"
            )
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in obj.items()})


@dataclass
class LongSample:
    """One generated query and its video.

    Attributes:
        annotation: the QVHighlights-schema record.
        latent: the generator's hidden truth (``latent_row``).
        streams: ``slowfast`` ``(T, slowfast_dim)``, ``clip`` ``(T, 512)`` and, with BAM,
            ``bam`` ``(T, bam_dim)``, in the configured dtype.
        text: ``last_hidden_state`` ``(N, 512)`` and ``pooler_output`` ``(512,)`` float32.
    """

    annotation: MomentAnnotation
    latent: dict[str, Any]
    streams: dict[str, np.ndarray]
    text: dict[str, np.ndarray]


class LongVideoGenerator:
    """Generates long-video samples in memory (or for :func:`write_long_benchmark`).

    Query ``index`` of ``split`` depends only on ``(config, features, split, index)``; with the
    default ``features`` its ``slowfast``/``clip``/text arrays equal those of
    :func:`momentkit.data.synth.generate_sample` (same per-query random streams).

    Args:
        config: the synthetic benchmark config (``mode`` is usually ``long``).
        features: storage and BAM settings.
    """

    def __init__(self, config: SynthConfig, features: LongFeatureConfig | None = None) -> None:
        self.config = config
        self.features = features or LongFeatureConfig()
        world = build_world(config)
        rng = np.random.default_rng([config.world_seed, 0xBA3])
        if self.features.slowfast_dim != SLOWFAST_DIM:
            dirs = _orthonormal_rows(rng, config.num_motion, self.features.slowfast_dim)
            world = replace(world, motion_dirs=dirs)
        self.world = world
        f = self.features
        # a light extractor's entangled view of the concepts: Gaussian, not orthonormal
        self.appearance_proj = rng.standard_normal((config.num_appearance, f.appearance_dim))
        self.appearance_proj /= math.sqrt(f.appearance_dim)
        self.motion_proj = rng.standard_normal((config.num_motion, f.motion_dim))
        self.motion_proj /= math.sqrt(f.motion_dim)

    def sample(self, split: str, index: int) -> LongSample:
        """Query ``index`` of ``split``."""
        config = self.config
        seq = np.random.SeedSequence([config.seed, SPLITS.index(split), index])
        plan_rng, render_rng, annot_rng, index_rng = (
            np.random.default_rng(s) for s in seq.spawn(4)
        )
        plan = SYNTH_MODES.get(config.mode)(plan_rng, config, self.world)
        qid, vid = SPLIT_QID_BASE[split] + index, vid_of(split, index)
        query = plan.spec.text(self.world)
        annotation = annotate(plan, qid, vid, query, config, annot_rng)
        streams = render_video(plan, self.world, config, render_rng)
        if self.features.bam:
            streams[BAM_STREAM] = self.render_index(plan, index_rng)
        streams = {k: v.astype(self.features.dtype, copy=False) for k, v in streams.items()}
        text = encode_text(plan.spec, self.world, config.context_weight)
        return LongSample(annotation, latent_row(plan, qid, vid, self.world), streams, text)

    def render_index(self, plan: QueryPlan, rng: np.random.Generator) -> np.ndarray:
        """The ``(T, bam_dim)`` float32 BAM stream of a plan: ``[background, appearance,
        motion]`` (module docstring)."""
        f, config, t = self.features, self.config, plan.num_clips
        background = np.empty((t, f.background_dim))
        start = 0
        while start < t:
            length = int(rng.integers(f.shot_clips[0], f.shot_clips[1] + 1))
            scene = rng.standard_normal(f.background_dim)
            background[start : start + length] = scene / np.linalg.norm(scene)
            start += length
        clutter = config.clutter + f.index_clutter
        a_amp = clutter * rng.standard_normal((t, config.num_appearance))
        m_amp = clutter * rng.standard_normal((t, config.num_motion))
        for ev in plan.events:
            a_amp[ev.start : ev.end, ev.appearance] += config.appearance_strength * ev.intensity
            m_amp[ev.start : ev.end, ev.motion] += config.motion_strength * ev.intensity
        parts = [background, a_amp @ self.appearance_proj, m_amp @ self.motion_proj]
        out = np.concatenate(parts, axis=1)
        out += f.index_noise * rng.standard_normal(out.shape)
        return out.astype(np.float32)


def moment_share(annotation: MomentAnnotation) -> float:
    """Fraction of the video inside the query's relevant windows."""
    covered = sum(end - start for start, end in annotation.relevant_windows)
    return float(covered) / float(annotation.duration)


def write_long_benchmark(
    config: SynthConfig,
    outdir: str | Path,
    features: LongFeatureConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> SynthSummary:
    """Write a long-video benchmark in the standard layout, plus ``features/bam``.

    Like :func:`momentkit.data.synth.generate` (staging folder, atomic install, same bytes for
    the same configs) with ``features`` deciding widths, dtype and the BAM stream.

    Raises:
        MomentkitError: ``outdir`` already holds a dataset and ``overwrite`` is false.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    features = features or LongFeatureConfig()
    outdir = Path(outdir)
    dirs = dict(STREAM_DIRS) | ({BAM_STREAM: BAM_DIR} if features.bam else {})
    outputs = [f"annotations/{s}.jsonl" for s in SPLITS] + [f"latent/{s}.jsonl" for s in SPLITS]
    outputs += [*dirs.values(), CONFIG_FILE]
    check_overwrite(outdir, [rel for rel in outputs if (outdir / rel).exists()], overwrite)
    outdir.mkdir(parents=True, exist_ok=True)
    generator = LongVideoGenerator(config, features)
    sizes = split_sizes(config)
    jobs = [(split, i) for split, n in sizes.items() for i in range(n)]
    staging = Path(tempfile.mkdtemp(prefix=".synth-staging-", dir=outdir))
    try:
        for d in dirs.values():
            (staging / d).mkdir(parents=True)
        rows: dict[str, list[LongSample]] = {s: [] for s in sizes}
        for split, i in tqdm(jobs, desc="synth long", unit="video", disable=not progress):
            sample = generator.sample(split, i)
            for name, array in sample.streams.items():
                path = safe_child(staging / dirs[name], f"{sample.annotation.vid}.npz", "vid")
                path.write_bytes(npz_bytes({"features": array}, config.compress))
            path = safe_child(staging / dirs["clip_text"], f"qid{sample.annotation.qid}.npz", "qid")
            path.write_bytes(npz_bytes(sample.text, config.compress))
            sample.streams = {}  # keep only the records in memory
            rows[split].append(sample)
        for split, samples in rows.items():
            save_annotations(
                staging / f"annotations/{split}.jsonl", [s.annotation for s in samples]
            )
            write_jsonl(staging / f"latent/{split}.jsonl", [s.latent for s in samples])
        stream_dims = {
            "slowfast": features.slowfast_dim,
            "clip": generator.world.appearance_dirs.shape[1],
            "clip_text": TEXT_DIM,
        } | ({BAM_STREAM: features.bam_dim} if features.bam else {})
        meta = {
            "format": "momentkit-synth",
            "version": FORMAT_VERSION,
            "config": config.to_dict(),
            "long_features": {
                k: list(v) if isinstance(v, tuple) else v for k, v in asdict(features).items()
            },  # fmt: skip
            "appearance": list(generator.world.appearance),
            "motion": list(generator.world.motion),
            "streams": {k: {"dir": dirs[k], "dim": d} for k, d in stream_dims.items()},
        }
        write_json(staging / CONFIG_FILE, meta)
        for rel in outputs:
            _install(staging, outdir, rel)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return SynthSummary(
        outdir=outdir,
        num_queries=dict(sizes),
        num_windows={
            s: sum(len(x.annotation.relevant_windows) for x in r) for s, r in rows.items()
        },
        relations={
            s: {rel: sum(x.latent["relation"] == rel for x in r) for rel in RELATIONS}
            for s, r in rows.items()
        },
        seconds=time.perf_counter() - start,
    )


__all__ = [
    "BAM_STREAM",
    "LONG_MIN_DURATION",
    "LONG_MODE",
    "LongFeatureConfig",
    "LongSample",
    "LongVideoGenerator",
    "moment_share",
    "plan_long_query",
    "write_long_benchmark",
]
