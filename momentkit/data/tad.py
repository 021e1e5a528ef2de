"""Temporal action detection (TAD) annotations: the ActivityNet-1.3 / THUMOS14 JSON layout, the
class list, and the class queries that let one text-query model detect actions.

The JSON layout (``activity_net.v1-3.min.json``; THUMOS14, Charades and the synthetic benchmark
are converted to it)::

    {"version": "...", "taxonomy": [...],           # optional, ignored
     "database": {
        "<vid>": {"duration": 82.7, "subset": "training",
                  "annotations": [{"segment": [12.1, 30.4], "label": "Long jump"}, ...]},
        ...}}

Each action class becomes a query through a prompt, ``"a video of {}"`` by default (UniMD,
Zeng et al., ECCV 2024, Sec. 3.1), whose text embedding comes from the same frozen text encoder
as the sentence queries (:func:`encode_class_queries`), or from a file
(:func:`save_class_features` / :func:`load_class_features`).

For evaluation each video becomes one :class:`~momentkit.data.records.MomentAnnotation` (qid =
video id) whose ``relevant_windows`` are its segments and ``extra["labels"]`` their classes
(:func:`to_moment_annotations`), the input of the ``tad`` evaluator
(:mod:`momentkit.evaluation.tad`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from momentkit.data.records import MAX_DURATION, WINDOW_SLACK, MomentAnnotation
from momentkit.utils.errors import FeatureError, FormatError
from momentkit.utils.io import atomic_write_bytes, read_json, read_text

#: UniMD's prompt turning an action class into a query
DEFAULT_PROMPT = "a video of {}"


@dataclass
class TADVideo:
    """The action instances of one video.

    Attributes:
        vid: video id (also the feature file stem).
        duration: seconds.
        subset: ``training``, ``validation``, ``testing`` (ActivityNet), or any split name.
        segments: ``[[start, end], ...]`` seconds.
        labels: the class of each segment.
        extra: other fields of the video's entry (``fps``, ``url``, ...), kept as read.
    """

    vid: str
    duration: float
    subset: str
    segments: list[list[float]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def windows_of(self, label: str) -> list[list[float]]:
        """The segments of class ``label``."""
        return [s for s, lab in zip(self.segments, self.labels) if lab == label]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _parse_video(vid: str, entry: Any, path: Path) -> TADVideo:
    where = f"database.{vid}"
    if not isinstance(entry, dict):
        raise FormatError(path, None, where, f"expected an object, got {type(entry).__name__}")
    duration = entry.get("duration")
    if not _number(duration) or duration <= 0:
        raise FormatError(
            path, None, f"{where}.duration", f"expected a positive number, got {duration!r}",
            "Give every video its length in seconds",
        )  # fmt: skip
    if duration > MAX_DURATION:  # the bound of MR annotations (a unit mistake: ms?)
        raise FormatError(
            path, None, f"{where}.duration",
            f"{duration!r} seconds is more than {MAX_DURATION:g} s", "Durations are in seconds",
        )  # fmt: skip
    subset = entry.get("subset", "")
    if not isinstance(subset, str):
        raise FormatError(path, None, f"{where}.subset", f"expected a string, got {subset!r}")
    annotations = entry.get("annotations") or []
    if not isinstance(annotations, list):
        raise FormatError(path, None, f"{where}.annotations", "expected a list")
    segments, labels = [], []
    for i, ann in enumerate(annotations):
        at = f"{where}.annotations[{i}]"
        if not isinstance(ann, dict):
            raise FormatError(path, None, at, f"expected an object, got {ann!r}")
        seg = ann.get("segment")
        if not isinstance(seg, list | tuple) or len(seg) != 2 or not all(map(_number, seg)):
            raise FormatError(
                path, None, f"{at}.segment", f"expected [start, end] seconds, got {seg!r}"
            )
        if seg[1] < seg[0]:
            raise FormatError(
                path, None, f"{at}.segment", f"end {seg[1]} is before start {seg[0]}",
                "Swap the two values",
            )  # fmt: skip
        if seg[0] < 0 or seg[0] > duration or seg[1] > duration + WINDOW_SLACK:  # as MR rows
            raise FormatError(
                path, None, f"{at}.segment", f"{list(seg)} is outside the {duration} s video",
                "Segments are [start, end] seconds within 0 and duration; fix the segment or "
                "the duration",
            )  # fmt: skip
        label = ann.get("label")
        if not isinstance(label, str) or not label.strip():
            raise FormatError(path, None, f"{at}.label", f"expected a class name, got {label!r}")
        segments.append([float(seg[0]), float(seg[1])])
        labels.append(label.strip())
    extra = {k: v for k, v in entry.items() if k not in ("duration", "subset", "annotations")}
    return TADVideo(vid, float(duration), subset, segments, labels, extra)


def load_tad_json(path: str | Path, subset: str | None = None) -> list[TADVideo]:
    """Read a TAD annotation file in the ActivityNet layout.

    Args:
        path: the ``.json`` file.
        subset: keep only videos of this subset (case-insensitive, e.g. ``validation``);
            ``None`` keeps all.

    Raises:
        FormatError: naming the file and the field (``database.<vid>.annotations[i].segment``)
            of a malformed entry, or a subset that no video has (listing those present); the
            file and line of invalid JSON, JSON nested too deeply, or bytes that are not UTF-8.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such TAD annotation file")
    data = read_json(path, "a TAD annotation file")  # names the file (and line) of bad JSON
    database = data.get("database") if isinstance(data, dict) else None
    if not isinstance(database, dict):
        raise FormatError(
            path, 1, "database", "missing or not an object",
            'A TAD file holds {"database": {"<vid>": {"duration", "subset", "annotations"}}}',
        )  # fmt: skip
    videos = [_parse_video(str(vid), entry, path) for vid, entry in database.items()]
    if subset is None:
        return videos
    kept = [v for v in videos if v.subset.lower() == subset.lower()]
    if not kept:
        present = sorted({v.subset for v in videos})
        raise FormatError(
            path, None, "subset", f"no video of subset '{subset}'",
            f"Subsets present: {', '.join(repr(s) for s in present) or 'none'}",
        )  # fmt: skip
    return kept


def save_tad_json(path: str | Path, videos: Iterable[TADVideo], version: str = "momentkit") -> None:
    """Write videos in the ActivityNet layout (atomically)."""
    database = {}
    for v in videos:
        entry: dict[str, Any] = {"duration": v.duration, "subset": v.subset}
        entry.update(v.extra)
        entry["annotations"] = [
            {"segment": list(s), "label": lab} for s, lab in zip(v.segments, v.labels)
        ]
        database[v.vid] = entry
    text = json.dumps({"version": version, "database": database}) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def load_class_list(path: str | Path) -> list[str]:
    """Class names, in order, from a ``.txt`` file (one a line; blank lines ignored) or a
    ``.json`` list of names.

    Raises:
        FormatError: a duplicate or malformed name (naming the line); invalid JSON, JSON
            nested too deeply or bytes that are not UTF-8 (naming the file and line).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such class list")
    if path.suffix == ".json":
        data = read_json(path, "a class list")
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise FormatError(path, 1, None, "expected a JSON list of class names")
        rows = [(i + 1, name.strip()) for i, name in enumerate(data)]
    else:
        lines = read_text(path, "a class list").splitlines()
        rows = [(i + 1, line.strip()) for i, line in enumerate(lines) if line.strip()]
    seen: dict[str, int] = {}
    for line, name in rows:
        if name in seen:
            raise FormatError(path, line, None, f"class '{name}' repeats line {seen[name]}")
        seen[name] = line
    if not seen:
        raise FormatError(path, None, None, "no class names")
    return list(seen)


def classes_of(videos: Iterable[TADVideo]) -> list[str]:
    """Every class with an instance in ``videos``, sorted."""
    return sorted({lab for v in videos for lab in v.labels})


def check_classes(videos: Iterable[TADVideo], classes: Sequence[str], source: str | Path) -> None:
    """Raise a FormatError when a video has a label outside ``classes``."""
    known = set(classes)
    for v in videos:
        for i, lab in enumerate(v.labels):
            if lab not in known:
                raise FormatError(
                    source, None, f"database.{v.vid}.annotations[{i}].label",
                    f"class '{lab}' is not in the class list",
                    "Add it to the class list, or fix the label",
                )  # fmt: skip


def class_queries(classes: Sequence[str], prompt: str = DEFAULT_PROMPT) -> list[str]:
    """The query of each class: ``prompt.format(name)`` (``"a video of Long jump"``)."""
    if "{}" not in prompt:
        raise ValueError(f"the prompt needs a '{{}}' for the class name, got {prompt!r}")
    return [prompt.format(name) for name in classes]


def encode_class_queries(
    classes: Sequence[str],
    encoder: str,
    prompt: str = DEFAULT_PROMPT,
    device: str = "cpu",
) -> np.ndarray:
    """Pooled text embeddings of the class queries, from a momentkit encoder.

    Args:
        classes: class names.
        encoder: an encoder spec (``clip:openai/clip-vit-base-patch32``), the one that encoded
            the sentence queries.
        prompt: the prompt template.
        device: torch device of the encoder.

    Returns:
        ``(C, D)`` float32, one ``pooler_output`` per class.
    """
    from momentkit.encoders import build_encoder

    features = build_encoder(encoder, device=device).encode_text(class_queries(classes, prompt))
    return np.stack([f.pooler_output for f in features]).astype(np.float32)


def save_class_features(path: str | Path, classes: Sequence[str], features: np.ndarray) -> None:
    """Write ``classes`` (``names``) and their ``(C, D)`` embeddings (``pooler_output``) as .npz."""
    from momentkit.data.synth import npz_bytes  # equal arrays give equal bytes

    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) != len(classes):
        raise ValueError(f"need ({len(classes)}, D) features, got {features.shape}")
    arrays = {"names": np.array(list(classes)), "pooler_output": features}
    atomic_write_bytes(path, npz_bytes(arrays))


def load_class_features(
    path: str | Path, classes: Sequence[str] | None = None
) -> tuple[list[str], np.ndarray]:
    """Read class embeddings written by :func:`save_class_features`.

    Args:
        path: the ``.npz`` file (arrays ``names`` and ``pooler_output``).
        classes: reorder to these classes; every one must be present.

    Returns:
        ``(names, (C, D) float32)``.

    Raises:
        FormatError: missing arrays, names that are not strings (an object array is refused,
            never unpickled), shape mismatch, or a requested class without embedding.
            Embeddings that are not finite numbers, or an unreadable file, too (the
            ``pooler_output`` array is read by :func:`momentkit.features.npz.read_npz`, its
            sizes bounded).
    """
    import zipfile

    from momentkit.features.npz import read_npz

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such class-feature file")
    hint = "Write the file with momentkit.data.tad.save_class_features"
    if not zipfile.is_zipfile(path):
        raise FormatError(path, None, None, "not an .npz (zip) archive", hint)
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in ("names", "pooler_output"):
                if key not in npz.files:
                    raise FormatError(path, None, key, "missing", hint)
            try:
                raw = npz["names"]
            except ValueError as e:  # an object array: loading it would unpickle
                raise FormatError(
                    path, None, "names", f"cannot be read without pickle ({e})",
                    "Store the class names as a string array. " + hint,
                ) from None  # fmt: skip
    except FormatError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise FormatError(
            path, None, None, f"cannot read the file ({type(e).__name__}: {e})",
            "It is damaged or not an .npz of class features. " + hint,
        ) from None  # fmt: skip
    if raw.dtype.kind not in "US" or raw.ndim != 1:
        raise FormatError(
            path, None, "names", f"expected a 1-D array of strings, got {raw.dtype} {raw.shape}",
            hint,
        )  # fmt: skip
    names = [str(n) for n in raw]
    try:
        features, _ = read_npz(path, "pooler_output")  # numbers, finite, (C, D), sizes bounded
    except FeatureError as e:
        problem = str(e).removeprefix(f"{path}: ").split(". ")[0]
        raise FormatError(path, None, "pooler_output", problem, hint) from None
    if len(features) != len(names):
        raise FormatError(
            path, None, "pooler_output", f"shape {features.shape} does not fit {len(names)} names"
        )
    if classes is None:
        return names, features
    index = {n: i for i, n in enumerate(names)}
    missing = [c for c in classes if c not in index]
    if missing:
        raise FormatError(
            path, None, "names", f"no embedding for {len(missing)} class(es): {missing[:5]}",
            "Encode every class of the class list",
        )  # fmt: skip
    return list(classes), features[[index[c] for c in classes]]


def to_moment_annotations(videos: Iterable[TADVideo]) -> list[MomentAnnotation]:
    """One record per video (qid = vid) for the ``tad`` evaluator: windows + ``extra["labels"]``."""
    return [
        MomentAnnotation(
            qid=v.vid,
            query="",
            vid=v.vid,
            duration=v.duration,
            relevant_windows=[list(s) for s in v.segments],
            extra={"labels": list(v.labels)},
        )
        for v in videos
    ]


__all__ = [
    "DEFAULT_PROMPT",
    "TADVideo",
    "check_classes",
    "class_queries",
    "classes_of",
    "encode_class_queries",
    "load_class_features",
    "load_class_list",
    "load_tad_json",
    "save_class_features",
    "save_tad_json",
    "to_moment_annotations",
]
