"""Converting official checkpoints into momentkit checkpoints.

One module per source codebase (``momentkit.interop.<source>``) knows that codebase's file
layout; this module holds what they share:

- :class:`TensorRule` / :func:`map_tensors`: an explicit table from official tensor names to
  momentkit names. Every official tensor must be either mapped or listed as unused with the
  reason; an official tensor no rule names is an error ("unknown key layout"), as is a
  momentkit tensor left unfilled or a shape that differs. Nothing is silently dropped.
- :class:`ConversionReport`: what was mapped, what was not used and why, which options were
  read; written beside the weights as ``conversion.json``.
- :data:`SOURCES` and :func:`convert_checkpoint`: the registry of sources, auto-detection from
  the checkpoint's keys and options, and the conversion itself.
- :func:`write_converted`: a momentkit checkpoint directory (``model.safetensors`` +
  ``config.json`` + ``experiment.json`` + ``conversion.json``) that ``momentkit predict``,
  ``Predictor.from_checkpoint`` and ``MomentModel.from_pretrained`` read.

A source module exposes::

    NAME: str                               # "ld_detr", the --from value
    DESCRIPTION: str                        # one line for --help
    def matches(checkpoint, path) -> bool   # auto-detection: is this file ours?
    def convert(checkpoint, path, **options) -> Converted

Official files are read with :func:`momentkit.interop.safe_pickle.load_torch_checkpoint`:
never ``torch.load(weights_only=False)`` with the plain unpickler.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from momentkit.utils.errors import MomentkitError

if TYPE_CHECKING:
    import torch

    from momentkit.models.base import MomentModel

#: --from name -> module under momentkit.interop (Moment-DETR and QD-DETR come from Lighthouse)
SOURCES: dict[str, str] = {
    "lighthouse": "lighthouse",
    "ld_detr": "ld_detr",
    "ms_detr": "ms_detr",
    "unimd": "unimd",
}

REPORT_NAME = "conversion.json"


class ConversionError(MomentkitError):
    """A checkpoint that cannot be converted (unknown layout, wrong model, mismatched shapes)."""


@dataclass(frozen=True)
class TensorRule:
    """One row of a conversion table.

    Attributes:
        source: regular expression matched against the whole official tensor name; named groups
            (``(?P<layer>\\d+)``) can be used in ``target``.
        target: momentkit tensor name, a ``str.format`` template over the groups (and
            ``int`` arithmetic via ``transform_name``); ``None`` marks the tensor as unused.
        reason: why an unused tensor is not needed (shown in the report); for a mapped tensor,
            an optional note.
        transform: applied to the tensor before it is stored (e.g. a reshape); ``None`` = as is.
    """

    source: str
    target: str | None
    reason: str = ""
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def match(self, name: str) -> re.Match[str] | None:
        return re.fullmatch(self.source, name)


@dataclass
class ConversionReport:
    """What a conversion did, tensor by tensor (written as ``conversion.json``).

    Attributes:
        source: the ``--from`` name.
        checkpoint: path of the official file.
        model: momentkit model name.
        variant: the momentkit variant the config follows (``official``).
        mapped: ``[official name, momentkit name]`` pairs.
        unused: ``[official name, reason]``: official tensors the official forward never reads
            (or that momentkit keeps elsewhere), listed rather than silently dropped.
        derived: ``[momentkit name, how]``: momentkit tensors with no official counterpart.
        options: the official options read into the config (name -> value).
        notes: anything else a user should know (epoch, metrics saved with the file, ...).
    """

    source: str
    checkpoint: str
    model: str
    variant: str = "official"
    mapped: list[list[str]] = field(default_factory=list)
    unused: list[list[str]] = field(default_factory=list)
    derived: list[list[str]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """Three lines for the terminal."""
        lines = [
            f"{self.checkpoint}: {self.source} checkpoint -> momentkit '{self.model}' "
            f"({self.variant} variant)",
            f"{len(self.mapped)} tensors mapped, {len(self.unused)} official tensors unused "
            f"by the forward (listed in {REPORT_NAME}), {len(self.derived)} derived",
        ]
        lines += [f"unused: {name} ({why})" for name, why in self.unused]
        lines += self.notes
        return "\n".join(lines)


@dataclass
class Converted:
    """A converted checkpoint: the model (weights loaded), its experiment config as a dict
    (``experiment.json``: data/optim/trainer sections rebuilt from the official options) and
    the report."""

    model: MomentModel
    experiment: dict[str, Any]
    report: ConversionReport
    #: the pipeline record of the training features (:func:`features_record`), if known
    features: dict[str, Any] | None = None


def map_tensors(
    official: Mapping[str, torch.Tensor],
    rules: Sequence[TensorRule],
    model: torch.nn.Module,
    *,
    source: str | Path,
    derived: Mapping[str, str] | None = None,
) -> tuple[dict[str, torch.Tensor], list[list[str]], list[list[str]]]:
    """Map an official state dict onto ``model``'s tensor names with ``rules``.

    The first rule whose ``source`` matches an official name decides. Several official tensors
    may map to one momentkit tensor only when they are equal (tied weights, e.g. heads shared
    across decoder layers).

    Args:
        official: the official state dict.
        rules: the conversion table.
        model: the momentkit model (its ``state_dict`` gives the names and shapes expected).
        source: the official file (for error messages).
        derived: momentkit tensors that no official tensor fills, with how they are obtained
            (they keep the model's values, e.g. buffers momentkit computes itself).

    Returns:
        ``(state, mapped, unused)``: the momentkit state dict to load, the ``[official,
        momentkit]`` pairs and the ``[official, reason]`` pairs.

    Raises:
        ConversionError: an official tensor no rule names, a target the model lacks, a shape
            mismatch, tied tensors that differ, or a momentkit tensor left unfilled.
    """
    expected = model.state_dict()
    derived = dict(derived or {})
    state: dict[str, torch.Tensor] = {}
    mapped: list[list[str]] = []
    unused: list[list[str]] = []
    unknown: list[str] = []
    for name, tensor in official.items():
        rule = next((r for r in rules if r.match(name)), None)
        if rule is None:
            unknown.append(name)
            continue
        if rule.target is None:
            unused.append([name, rule.reason or "not read by the official forward"])
            continue
        groups = rule.match(name).groupdict()  # type: ignore[union-attr]
        target = rule.target.format(**groups)
        if target not in expected:
            raise ConversionError(
                f"{source}: official tensor '{name}' maps to '{target}', which the momentkit "
                f"'{getattr(model.config, 'name', type(model).__name__)}' model built from the "
                "checkpoint's options does not have. The options and the weights disagree, or "
                "the checkpoint is from another model: check --from"
            )
        value = tensor.detach().to("cpu")
        if rule.transform is not None:
            value = rule.transform(value)
        if tuple(value.shape) != tuple(expected[target].shape):
            raise ConversionError(
                f"{source}: official tensor '{name}' has shape {tuple(value.shape)} but "
                f"momentkit's '{target}' has {tuple(expected[target].shape)}. The checkpoint's "
                "saved options do not describe these weights, or it is from another model"
            )
        if target in state:
            if not (state[target].shape == value.shape and bool((state[target] == value).all())):
                raise ConversionError(
                    f"{source}: official tensors mapped to '{target}' differ ('{name}' and an "
                    "earlier one); momentkit shares this tensor. The file is not a checkpoint "
                    "of the official model"
                )
        else:
            state[target] = value.to(expected[target].dtype).clone()
        mapped.append([name, target])
    if unknown:
        shown = ", ".join(unknown[:8]) + (
            f" ... ({len(unknown)} in all)" if len(unknown) > 8 else ""
        )
        raise ConversionError(
            f"{source}: unknown key layout: no conversion rule for {shown}. The file is not a "
            "checkpoint of the official model this converter reads, or of a newer version of "
            "it: check --from, or report the names"
        )
    missing = [k for k in expected if k not in state and k not in derived]
    if missing:
        shown = ", ".join(missing[:8]) + (
            f" ... ({len(missing)} in all)" if len(missing) > 8 else ""
        )
        raise ConversionError(
            f"{source}: the checkpoint does not fill momentkit tensors {shown}. It is from "
            "another model or an incompatible version: check --from"
        )
    for k in derived:
        if k in expected and k not in state:
            state[k] = expected[k].detach().clone()
    return state, mapped, unused


def jsonable(value: Any) -> Any:
    """An option value as JSON for the report: scalars and lists as they are, anything else
    (a ``torch.device``, a path) as its string."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)


def _names(names: Sequence[str], limit: int = 8) -> str:
    more = f" ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def source_module(name: str) -> Any:
    """The module of source ``name`` (``ConversionError`` listing the known ones)."""
    if name not in SOURCES:
        raise ConversionError(f"unknown checkpoint source '{name}'; known: {', '.join(SOURCES)}")
    return importlib.import_module(f"momentkit.interop.{SOURCES[name]}")


def read_checkpoint(path: str | Path) -> Any:
    """The official file's contents, read through the allow-list (see
    :func:`~momentkit.interop.safe_pickle.load_torch_checkpoint`)."""
    from momentkit.interop.safe_pickle import load_torch_checkpoint

    return load_torch_checkpoint(path)


def detect_source(checkpoint: Any, path: str | Path) -> str:
    """The source whose layout ``checkpoint`` has (exactly one must claim it)."""
    if not isinstance(checkpoint, Mapping):
        raise ConversionError(
            f"{path}: expected a dict saved by an official training script, got "
            f"{type(checkpoint).__name__}"
        )
    claims = [name for name in SOURCES if source_module(name).matches(checkpoint, Path(path))]
    if len(claims) == 1:
        return claims[0]
    if not claims:
        keys = ", ".join(map(str, list(checkpoint)[:8]))
        raise ConversionError(
            f"{path}: unknown checkpoint layout (top-level keys: {keys}); no known source "
            f"({', '.join(SOURCES)}) recognises it. Give --from if you know where it comes from"
        )
    raise ConversionError(
        f"{path}: the checkpoint could come from {' or '.join(claims)}; give --from"
    )


def release_postprocess(dset: str | None, video_dim: int) -> dict[str, Any]:
    """The post-processing of the QD-DETR-derived releases' ``compute_mr_results`` (MS-DETR's
    ``ms_detr/inference_cg.py``, LD-DETR's ``ld_detr/inference.py``) as
    :class:`~momentkit.modeling.postprocess.PostProcessor` settings: spans times the duration,
    clamped to it, then ``clip_ts`` (``[0, 150]`` s; Charades-STA VGG ``[0, 360]``) and
    ``round_multiple`` on QVHighlights (``hl``) / Charades-STA, ``round_multiple`` only
    elsewhere."""
    from momentkit.models.moment_detr import LIGHTHOUSE_POSTPROCESS

    settings = dict(LIGHTHOUSE_POSTPROCESS)
    if dset == "charadesSTA" and video_dim == 4096:
        settings["max_time"] = 360.0
    elif dset not in ("hl", "charadesSTA"):
        settings["clamp"] = "none"
        del settings["max_time"]
    return settings


def convert_checkpoint(path: str | Path, source: str | None = None, **options: Any) -> Converted:
    """Read an official checkpoint and build the momentkit model it holds.

    Args:
        path: the official file.
        source: ``--from`` name (default: detected from the file).
        options: passed to the source's ``convert`` (e.g. ``config=`` for UniMD's YAML).

    Raises:
        FileNotFoundError, UnsafeFileError, UnreadableCheckpointError, ConversionError.
    """
    path = Path(path)
    checkpoint = read_checkpoint(path)
    if source is None:
        source = detect_source(checkpoint, path)
    module = source_module(source)
    if not isinstance(checkpoint, Mapping) or not module.matches(checkpoint, path):
        raise ConversionError(
            f"{path}: this is not a {source} checkpoint (its layout is not the one "
            f"{source}'s training script saves). Check --from, or leave it out to detect it"
        )
    try:
        converted = module.convert(checkpoint, path, **options)
    except MomentkitError:
        raise
    except (TypeError, ValueError) as e:  # a saved option of a type no official run writes
        raise ConversionError(
            f"{path}: the options saved in the checkpoint are malformed ({type(e).__name__}: "
            f"{e}). The file is damaged or was not written by {source}'s training; convert an "
            "intact checkpoint"
        ) from None
    check_experiment(converted, path, getattr(module, "OPTION_OF", OFFICIAL_OPTION_OF))
    return converted


#: momentkit experiment key -> the official option it comes from (the Lighthouse option names,
#: which LD-DETR and MS-DETR keep), to name the option of an invalid value
OFFICIAL_OPTION_OF = {
    "data.clip_len": "clip_length",
    "data.video_features": "v_feat_dirs",
    "data.text_features": "t_feat_dir",
    "data.max_v_len": "max_v_l",
    "data.max_q_len": "max_q_l",
    "data.eval_batch_size": "eval_bsz",
    "optim.lr": "lr",
    "optim.weight_decay": "wd",
    "optim.lr_drop": "lr_drop",
    "optim.grad_clip": "grad_clip",
    "trainer.epochs": "n_epoch",
    "trainer.batch_size": "bsz",
    "trainer.seed": "seed",
    "trainer.patience": "max_es_cnt",
}


def check_experiment(converted: Converted, path: Path, option_of: Mapping[str, str]) -> None:
    """Refuse a conversion whose ``experiment.json`` momentkit would refuse to read.

    The data / optim / trainer settings come from the options saved in the checkpoint; a value
    out of range there (``clip_length`` 0 or NaN, ``lr`` infinite, ``n_epoch`` -1) would be
    written and then refused by ``predict`` / ``train --init-from``. Checked by the same code
    that reads the file (:meth:`ExperimentConfig.from_dict`).

    Raises:
        ConversionError: naming the checkpoint, the official option (when ``option_of`` knows
            it) and the momentkit field, and what is wrong.
    """
    from momentkit.training.config import ConfigError, ExperimentConfig

    try:
        ExperimentConfig.from_dict(converted.experiment, source=path)
    except ConfigError as e:
        field_name = e.field or ""
        option = option_of.get(field_name) or option_of.get(field_name.split("[")[0])
        saved = (
            f"option '{option}' = {converted.report.options.get(option, '?')!r} gives "
            if option
            else "the saved options give "
        )
        raise ConversionError(
            f"{path}: {saved}an invalid {field_name or 'config'}: {e.problem}. The file's "
            "options are damaged or not the official ones; convert an intact checkpoint"
        ) from None


def write_converted(converted: Converted, out_dir: str | Path) -> Path:
    """Write a momentkit checkpoint directory (weights, configs, ``conversion.json``)."""
    from momentkit.training.checkpoint import save_checkpoint

    return save_checkpoint(
        out_dir,
        converted.model,
        model_config=converted.model.config.to_dict(),
        experiment=converted.experiment,
        extra_files={
            REPORT_NAME: converted.report.to_dict(),
            **({"features.json": converted.features} if converted.features else {}),
        },
    )


def features_record(pipeline: str, *, clip_len: float = 2.0, **kwargs: Any) -> dict[str, Any]:
    """The pipeline record (``features.json``) of the features an official checkpoint was
    trained on, for :func:`write_converted` (``Converted.features``): e.g.
    ``features_record("clip_slowfast")`` for Lighthouse/Moment-DETR/QD-DETR QVHighlights
    checkpoints (``v_feat_types`` ``slowfast_clip``), ``features_record("clip")`` for CLIP-only
    ones. ``kwargs`` (``mode``, ``video_streams``, ``text_stream``, ``text_dim``) go to
    :func:`momentkit.extraction.record.make_record`."""
    from momentkit.extraction.record import make_record

    return make_record(pipeline, clip_len=clip_len, **kwargs)


def official_features_record(
    video_features: Sequence[str], text_features: str | None, clip_len: float = 2.0
) -> dict[str, Any] | None:
    """The pipeline record of an official checkpoint trained on the released QVHighlights-style
    features: ``clip_slowfast`` for SlowFast + CLIP folders (``slowfast_features``,
    ``clip_features``), ``clip`` for CLIP alone, with CLIP text features; ``None`` for other
    features (I3D, GloVe, audio...), whose pipeline momentkit does not run."""
    from momentkit.inference.predictor import stream_name

    videos = [stream_name(d) for d in video_features]
    if text_features is None or stream_name(text_features) != "clip_text":
        return None
    # the released files were made by the authors' own scripts: the pipeline is known, its
    # mode (Lighthouse's extractor or momentkit's default) is not, so either is accepted
    if sorted(videos) == ["clip", "slowfast"]:
        return {**features_record("clip_slowfast", clip_len=clip_len), "inferred": True}
    if videos == ["clip"]:
        return {**features_record("clip", clip_len=clip_len), "inferred": True}
    return None


def experiment_dict(model_config: Any, **sections: Mapping[str, Any]) -> dict[str, Any]:
    """An ``experiment.json`` dict: the model config plus the given data/optim/trainer
    sections layered over momentkit's defaults (unknown keys are refused when it is read)."""
    from momentkit.training.config import DataConfig, OptimConfig, TrainerConfig

    defaults = {"data": DataConfig(), "optim": OptimConfig(), "trainer": TrainerConfig()}
    out: dict[str, Any] = {"model": model_config.to_dict()}
    for name, default in defaults.items():
        out[name] = {**dataclasses.asdict(default), **dict(sections.get(name, {}))}
    return out
