"""The benchmarks momentkit knows, registered by name (detectron2's DatasetCatalog idea).

Each :class:`DatasetSpec` says which task a benchmark serves, its clip length and the file of
each split. :func:`load_dataset` reads a split into :class:`MomentAnnotation` records. The
highlight-only benchmarks (TVSum, YouTube Highlights) carry per-clip ``label`` rows instead of
``saliency_scores``; their loader maps them onto ``relevant_clip_ids`` (every clip) and
``saliency_scores`` (one row of annotator scores per clip) so one record type serves all.

Example::

    from momentkit.data.datasets import load_dataset
    val = load_dataset("qvhighlights", "val", root="../shared/data")
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from momentkit.data.records import MomentAnnotation, load_annotations
from momentkit.utils.errors import FormatError
from momentkit.utils.registry import Registry


@dataclass(frozen=True)
class DatasetSpec:
    """What a benchmark is and where its splits live.

    Attributes:
        name: registry name.
        tasks: subset of ``{"mr", "hd"}``.
        clip_len: seconds per feature clip in the standard feature releases.
        folder: sub-folder of the data root.
        splits: split name -> file name inside ``folder``.
        evaluator: name of the evaluator in :mod:`momentkit.evaluation`.
        postprocess: optional ``f(record, path, line) -> record`` fix-up applied per row.
    """

    name: str
    tasks: tuple[str, ...]
    clip_len: float
    folder: str
    splits: dict[str, str]
    evaluator: str
    postprocess: Callable[[MomentAnnotation, Path, int], MomentAnnotation] | None = field(
        default=None, compare=False
    )


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def _register(spec: DatasetSpec) -> DatasetSpec:
    DATASETS.register(spec.name)(spec)
    return spec


def _labels_to_saliency(ann: MomentAnnotation, path: Path, line: int) -> MomentAnnotation:
    """Map a per-clip ``label`` (clips x annotators) onto relevant clips + saliency rows."""
    label = ann.extra.get("label")
    if label is None:
        if ann.saliency_scores:
            return ann
        raise FormatError(path, line, "label", "missing", "Give per-clip annotator scores")
    if not isinstance(label, list) or not all(isinstance(r, list) and r for r in label):
        raise FormatError(
            path,
            line,
            "label",
            "expected one non-empty list of annotator scores per clip, e.g. [[1, 2], [3, 1]]",
        )
    ann.relevant_clip_ids = list(range(len(label)))
    ann.saliency_scores = [[float(x) for x in row] for row in label]
    return ann


_register(
    DatasetSpec(
        "qvhighlights",
        ("mr", "hd"),
        2.0,
        "qvhighlights",
        {
            "train": "highlight_train_release.jsonl",
            "val": "highlight_val_release.jsonl",
            "test": "highlight_test_release.jsonl",
            "test_with_gt": "highlight_test_with_gt.jsonl",
        },
        "qvhighlights",
    )
)
_register(
    DatasetSpec(
        "charades_sta",
        ("mr",),
        1.0,
        "charades_sta",
        {"train": "charades_sta_train.jsonl", "test": "charades_sta_test.jsonl"},
        "grounding",
    )
)
_register(
    DatasetSpec(
        "tacos",
        ("mr",),
        2.0,
        "tacos",
        {"train": "tacos_train.jsonl", "val": "tacos_val.jsonl", "test": "tacos_test.jsonl"},
        "grounding",
    )
)
_register(
    DatasetSpec(
        "activitynet",
        ("mr",),
        2.0,
        "activitynet",
        {"val": "activitynet_captions_val.jsonl"},
        "grounding",
    )
)
_register(
    DatasetSpec(
        "tvsum",
        ("hd",),
        2.0,
        "tvsum",
        {"train": "tvsum_train.jsonl", "val": "tvsum_val.jsonl"},
        "tvsum",
        _labels_to_saliency,
    )
)
_register(
    DatasetSpec(
        "youtube_highlights",
        ("hd",),
        2.0,
        "youtube_highlights",
        {"train": "youtube_highlights_train.jsonl", "val": "youtube_highlights_val.jsonl"},
        "youtube_highlights",
        _labels_to_saliency,
    )
)


def default_data_root() -> Path:
    """``$MOMENTKIT_DATA`` if set, else ``../shared/data`` relative to the working directory."""
    return Path(os.environ.get("MOMENTKIT_DATA", "../shared/data"))


def dataset_path(name: str, split: str, root: str | Path | None = None) -> Path:
    """The annotation file of ``split`` of benchmark ``name`` under ``root``."""
    spec = DATASETS.get(name)
    if split not in spec.splits:
        raise KeyError(f"{name} has no split '{split}'; known: {', '.join(spec.splits)}")
    return Path(root or default_data_root()) / spec.folder / spec.splits[split]


def load_dataset(name: str, split: str, root: str | Path | None = None) -> list[MomentAnnotation]:
    """Read one split of a registered benchmark into annotation records."""
    spec = DATASETS.get(name)
    path = dataset_path(name, split, root)
    return load_annotations(path, spec.postprocess)
