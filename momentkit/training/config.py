"""Typed experiment configs: dataclass sections, YAML presets and ``--set key=value`` overrides.

An experiment is four sections::

    model:    the model's own config dataclass (looked up by ``model.name`` in ``MODELS``)
    data:     DataConfig     annotation/feature paths, clip length, sequence limits
    optim:    OptimConfig    AdamW + learning-rate schedule + gradient clipping
    trainer:  TrainerConfig  epochs, batch size, seed, precision, evaluation, checkpoints

Values come, later ones winning, from the dataclass defaults (the papers' published settings),
a YAML preset (``momentkit/configs/<model>/<dataset>.yaml``), command-line flags and dotted
overrides such as ``model.hidden_dim=128 optim.lr=2e-4``. Every value is checked against the
field's type; an unknown key raises a :class:`ConfigError` that lists the valid keys.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from momentkit.utils.errors import FormatError
from momentkit.utils.io import read_text
from momentkit.utils.yamlio import parse_yaml, parse_yaml_value

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"

Scheduler = Literal["constant", "step", "warmup_multistep", "cosine"]
Precision = Literal["auto", "fp32", "bf16"]


class ConfigError(FormatError):
    """A bad config value or key; names the file (or ``--set``), line and dotted key."""


# ----------------------------------------------------------------------------------------------
# sections


@dataclass
class DataConfig:
    """Where the data lives and how items are cut and normalised.

    Attributes:
        dataset: benchmark name (``momentkit.data.datasets.DATASETS``) or ``synth``; picks the
            evaluator and the default best-checkpoint metric.
        train_path: training annotations (JSONL).
        val_path: validation annotations (JSONL), evaluated during training.
        video_features: one feature store per video stream, concatenated on channels.
        text_features: the query feature store.
        max_v_len: clips kept per video (Moment-DETR: 75 two-second clips); ``None`` keeps all.
        max_q_len: tokens kept per query (Moment-DETR: 32).
        clip_len: seconds per feature clip.
        use_tef: append the 2-d temporal endpoint feature to every clip.
        normalize_video: L2-normalise every video stream per clip.
        normalize_text: L2-normalise query tokens.
        num_workers: data-loading worker processes (0: load in the main process).
        eval_batch_size: queries per batch at evaluation/prediction.
        evaluator: ``auto`` (from ``dataset``), ``qvhighlights``, ``grounding`` or ``highlight``.
        corpus: a generated query corpus (``momentkit augment``) added to training batches
            (MS-DETR's contrastive learning on an augmented corpus); ``None``: none.
        corpus_text_features: the feature store of the corpus's generated queries.
        corpus_per_query: generated queries sampled per training query.
    """

    dataset: str = "qvhighlights"
    train_path: str | None = None
    val_path: str | None = None
    video_features: list[str] = field(default_factory=list)
    text_features: str | None = None
    max_v_len: int | None = 75
    max_q_len: int = 32
    clip_len: float = 2.0
    use_tef: bool = True
    normalize_video: bool = True
    normalize_text: bool = True
    num_workers: int = 0
    eval_batch_size: int = 100
    evaluator: str = "auto"
    corpus: str | None = None
    corpus_text_features: str | None = None
    corpus_per_query: int = 2

    def validate(self, where: _Where) -> None:
        """Raise a ConfigError for out-of-range values."""
        where.check(self.max_v_len is None or self.max_v_len > 0, "data.max_v_len", "must be > 0")
        where.check(self.max_q_len > 0, "data.max_q_len", "must be > 0")
        where.check(
            math.isfinite(self.clip_len) and self.clip_len > 0,
            "data.clip_len",
            "must be > 0 seconds",
        )
        where.check(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        where.check(self.eval_batch_size > 0, "data.eval_batch_size", "must be > 0")
        where.check(self.corpus_per_query >= 1, "data.corpus_per_query", "must be >= 1")
        where.check(
            self.corpus is None or self.corpus_text_features is not None,
            "data.corpus_text_features",
            "is needed with data.corpus (the features of the generated queries)",
        )


@dataclass
class OptimConfig:
    """AdamW, the learning-rate schedule and gradient clipping.

    Defaults are Moment-DETR's (Lei et al., 2021): lr 1e-4, weight decay 1e-4 on every
    parameter, learning rate divided by 10 every 400 epochs (i.e. never within 200 epochs),
    gradient norm clipped at 0.1.

    Attributes:
        lr: peak learning rate.
        weight_decay: AdamW decoupled weight decay.
        betas: AdamW moment coefficients.
        eps: AdamW epsilon.
        scheduler: ``constant``; ``step`` (x ``gamma`` every ``lr_drop`` epochs);
            ``warmup_multistep`` (x ``gamma`` at each epoch of ``milestones``);
            ``cosine`` (half cosine from ``lr`` to ``min_lr_ratio * lr`` over training).
        lr_drop: epochs between drops of the ``step`` schedule.
        gamma: multiplicative drop of ``step`` and ``warmup_multistep``.
        milestones: epochs at which ``warmup_multistep`` drops the rate.
        warmup_epochs: linear warm-up length (fractions allowed; applies to every schedule).
        warmup_factor: learning-rate fraction at the first warm-up step.
        min_lr_ratio: final fraction of ``lr`` for ``cosine``.
        schedule_epochs: length of the ``cosine`` schedule when it differs from
            ``trainer.epochs`` (``None``: the same), e.g. the official UniMD Charades run, whose
            70-epoch schedule is stopped after epoch 20.
        grad_clip: maximum global gradient norm; ``<= 0`` disables clipping.
    """

    lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    scheduler: Scheduler = "step"
    lr_drop: int = 400
    gamma: float = 0.1
    milestones: list[int] = field(default_factory=list)
    warmup_epochs: float = 0.0
    warmup_factor: float = 0.001
    min_lr_ratio: float = 0.0
    schedule_epochs: int | None = None
    grad_clip: float = 0.1

    def validate(self, where: _Where) -> None:
        """Raise a ConfigError for out-of-range values."""
        where.check(self.lr > 0 and math.isfinite(self.lr), "optim.lr", "must be > 0 and finite")
        where.check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        where.check(all(0 <= b < 1 for b in self.betas), "optim.betas", "must be in [0, 1)")
        where.check(self.lr_drop > 0, "optim.lr_drop", "must be > 0 epochs")
        where.check(0 < self.gamma <= 1, "optim.gamma", "must be in (0, 1]")
        where.check(
            list(self.milestones) == sorted(self.milestones)
            and all(m > 0 for m in self.milestones),
            "optim.milestones",
            "must be increasing positive epochs, e.g. [30, 40]",
        )
        where.check(self.warmup_epochs >= 0, "optim.warmup_epochs", "must be >= 0")
        where.check(0 < self.warmup_factor <= 1, "optim.warmup_factor", "must be in (0, 1]")
        where.check(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
        where.check(
            self.schedule_epochs is None or self.schedule_epochs >= 1,
            "optim.schedule_epochs",
            "must be >= 1 (or null: trainer.epochs)",
        )


@dataclass
class TrainerConfig:
    """The training loop.

    Attributes:
        epochs: training epochs (Moment-DETR: 200).
        batch_size: queries per optimiser step, summed over all processes (Moment-DETR: 32).
        seed: seed of every random generator (Moment-DETR: 2018).
        device: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` (bf16 autocast on CUDA devices that support it, fp32 elsewhere),
            ``fp32`` or ``bf16``.
        deterministic: ask torch for deterministic kernels (slower on GPU, exact resumes).
        eval_every: evaluate every N epochs (and always after the last one).
        eval_before_training: also evaluate the untrained model (logged as epoch 0).
        best_metric: metric choosing the best checkpoint (higher is better); ``auto``:
            ``MR-full-mAP`` for QVHighlights-style data, ``MR-R1@0.5`` for grounding data,
            ``HL-min-VeryGood-mAP``/``mAP`` for highlight-only data.
        patience: stop after this many evaluations without improvement; ``None`` never stops.
        checkpoint_every: also save the resumable ``last`` checkpoint every N optimiser steps
            inside an epoch (0: only at the end of each epoch).
        progress: show a progress bar.
        ddp_find_unused_parameters: let DistributedDataParallel tolerate parameters that get no
            gradient in a step.
        compile: run the training forward through ``torch.compile`` (inductor; the first steps
            compile, minutes on a CPU; where compiling is not possible here, one log line
            and eager steps). Off by default: on the CPUs measured it made steps slower (see
            docs/models.md, "Speed"). Compiled steps draw the same dropout masks as eager ones;
            evaluation stays eager.
    """

    epochs: int = 200
    batch_size: int = 32
    seed: int = 2018
    device: str = "auto"
    precision: Precision = "auto"
    deterministic: bool = True
    eval_every: int = 1
    eval_before_training: bool = False
    best_metric: str = "auto"
    patience: int | None = 200
    checkpoint_every: int = 0
    progress: bool = True
    ddp_find_unused_parameters: bool = False
    compile: bool = False

    def validate(self, where: _Where) -> None:
        """Raise a ConfigError for out-of-range values."""
        where.check(self.epochs >= 0, "trainer.epochs", "must be >= 0")
        where.check(self.batch_size > 0, "trainer.batch_size", "must be > 0")
        where.check(self.eval_every > 0, "trainer.eval_every", "must be > 0")
        where.check(
            self.patience is None or self.patience > 0,
            "trainer.patience",
            "must be > 0, or none to disable early stopping",
        )
        where.check(self.checkpoint_every >= 0, "trainer.checkpoint_every", "must be >= 0")
        where.check(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            "trainer.device",
            f"unknown device {self.device!r}; use auto, cpu, cuda or cuda:N",
        )


@dataclass
class ExperimentConfig:
    """A whole experiment: the model's config plus the data, optimiser and trainer sections.

    ``model`` is an instance of the config dataclass registered for ``model_name``; in dict
    and YAML form the name is stored as ``model.name``.
    """

    model_name: str
    model: Any
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready nested dict (tuples become lists)."""
        return {
            "model": {"name": self.model_name, **_asdict(self.model)},
            "data": _asdict(self.data),
            "optim": _asdict(self.optim),
            "trainer": _asdict(self.trainer),
        }

    @classmethod
    def from_dict(
        cls,
        obj: Mapping[str, Any],
        *,
        source: str | Path | None = None,
        lines: Mapping[str, int] | None = None,
        resolver: ModelConfigResolver | None = None,
    ) -> ExperimentConfig:
        """Build and validate a config from a nested dict (e.g. parsed YAML or saved JSON).

        Args:
            obj: ``{"model": {"name": ..., ...}, "data": {...}, "optim": {...}, "trainer": {...}}``;
                missing sections and keys take their defaults.
            source: file the dict came from, for error messages.
            lines: dotted key -> line in ``source``, for error messages.
            resolver: model name -> config dataclass (default: the ``MODELS`` registry).

        Raises:
            ConfigError: unknown section/key, a value of the wrong type, a missing model name.
        """
        where = _Where(source, lines)
        resolver = resolver or model_config_class
        where.require_mapping(obj, "")
        unknown = [k for k in obj if k not in _SECTIONS]
        if unknown:
            raise where.error(
                unknown[0], "unknown section", f"Valid sections: {', '.join(_SECTIONS)}"
            )
        model_obj = obj.get("model") or {}
        where.require_mapping(model_obj, "model")
        model_obj = dict(model_obj)
        name = model_obj.pop("name", None)
        if not isinstance(name, str) or not name:
            raise where.error(
                "model.name", "missing", "Name the model, e.g. model.name=moment_detr (--model)"
            )
        model_cls = where.resolve(resolver, name)
        sections: dict[str, Any] = {}
        for key, sec_cls in (("data", DataConfig), ("optim", OptimConfig)):
            sections[key] = _build(sec_cls, obj.get(key) or {}, key, where)
        sections["trainer"] = _build(TrainerConfig, obj.get("trainer") or {}, "trainer", where)
        model = _build(model_cls, model_obj, "model", where)
        cfg = cls(name, model, **sections)
        cfg.validate(where)
        return cfg

    def validate(self, where: _Where | None = None) -> None:
        """Check value ranges of every section (and the model config's own ``validate``)."""
        where = where or _Where(None, None)
        self.data.validate(where)
        self.optim.validate(where)
        self.trainer.validate(where)
        check = getattr(self.model, "validate", None)
        if callable(check):
            try:
                check()
            except (ValueError, TypeError) as e:
                raise where.error("model", str(e)) from None

    def replace(self, overrides: Iterable[str], source: str = "--set") -> ExperimentConfig:
        """A copy with ``key=value`` overrides applied (see :func:`apply_overrides`)."""
        return apply_overrides(self, overrides, source=source)


_SECTIONS = ("model", "data", "optim", "trainer")

ModelConfigResolver = Callable[[str], type]


def model_config_class(name: str) -> type:
    """The config dataclass of registered model ``name`` (a KeyError lists known models)."""
    from momentkit.models import MODELS

    return MODELS.get(name).config_class  # a KeyError names the known models


# ----------------------------------------------------------------------------------------------
# building, overriding, loading


def build_config(
    model: str | None = None,
    preset: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    resolver: ModelConfigResolver | None = None,
) -> ExperimentConfig:
    """The experiment config from defaults, an optional preset and ``key=value`` overrides.

    Args:
        model: model name (``--model``); may be omitted when the preset names it.
        preset: preset name (``qvhighlights``, ``moment_detr/charades_sta``) or a YAML path.
        overrides: dotted ``key=value`` strings, applied last.
        resolver: model name -> config dataclass (default: the ``MODELS`` registry).

    Raises:
        ConfigError: unknown preset or key, bad value, model/preset mismatch.
    """
    obj: dict[str, Any] = {}
    source: Path | None = None
    lines: dict[str, int] = {}
    if preset is not None:
        source = resolve_preset(preset, model)
        obj, lines = load_yaml(source)
        preset_model = (obj.get("model") or {}).get("name")
        if model is not None and preset_model is not None and preset_model != model:
            raise ConfigError(
                source,
                lines.get("model.name"),
                "model.name",
                f"preset is for model '{preset_model}', not '{model}'",
                f"Use a {model} preset (available: {', '.join(list_presets(model)) or 'none'})",
            )
    if model is not None:
        obj.setdefault("model", {})
        obj["model"] = {**(obj["model"] or {}), "name": model}
    cfg = ExperimentConfig.from_dict(obj, source=source, lines=lines, resolver=resolver)
    return apply_overrides(cfg, overrides, resolver=resolver)


def apply_overrides(
    cfg: ExperimentConfig,
    overrides: Iterable[str],
    *,
    source: str = "--set",
    resolver: ModelConfigResolver | None = None,
) -> ExperimentConfig:
    """A copy of ``cfg`` with dotted ``key=value`` overrides applied in order.

    Values are parsed by the field's type: ``true``/``false`` for booleans, ``none`` for
    optional fields, ``[1, 2]`` or ``1,2`` for lists. ``model.name=X`` switches the model,
    keeping the other model keys that ``X`` also has.

    Raises:
        ConfigError: naming ``source`` and the key (unknown keys list the valid ones).
    """
    where = _Where(source, None)
    obj = cfg.to_dict()
    pairs = [_split_override(o, source) for o in overrides]
    resolver = resolver or model_config_class
    for key, text in pairs:
        if key == "model.name" and text != obj["model"]["name"]:
            # keep the values changed from the old model's defaults that the new model has
            old = _asdict(where.resolve(resolver, obj["model"]["name"])())
            new_cls = where.resolve(resolver, text)
            kept = {
                k: v
                for k, v in obj["model"].items()
                if k in _field_names(new_cls) and k != "name" and v != old.get(k)
            }
            obj["model"] = {"name": text, **kept}
    model_cls = where.resolve(resolver, obj["model"]["name"])
    for key, text in pairs:
        if key == "model.name":
            continue
        parts = key.split(".")
        section = parts[0]
        if section not in _SECTIONS:
            raise where.error(key, "unknown section", f"Valid sections: {', '.join(_SECTIONS)}")
        sec_cls = {"data": DataConfig, "optim": OptimConfig, "trainer": TrainerConfig}.get(
            section, model_cls
        )
        tp = _field_type(sec_cls, parts[1:], key, where)
        value = _parse_text(text, tp, key, where)
        target = obj[section]
        for p in parts[1:-1]:
            target = target.setdefault(p, {})
        target[parts[-1]] = _asdict(value) if dataclasses.is_dataclass(value) else value
    return ExperimentConfig.from_dict(obj, source=source, resolver=resolver)


def parse_field_overrides(
    cls: type, overrides: Iterable[str], *, source: str = "--set"
) -> dict[str, Any]:
    """``key=value`` strings -> values of the fields of the flat dataclass ``cls``.

    Each value is parsed by the field's annotated type exactly as :func:`apply_overrides`
    parses a ``--set`` value (``6e2`` is a number, ``[3, 6]`` or ``3,6`` a tuple), and numbers
    must be finite; a later override of a key wins. Used by commands whose ``--set`` fills
    another config dataclass (``momentkit synth``'s ``SynthConfig``).

    Raises:
        ConfigError: naming ``source`` and the key: unknown keys (listing the valid ones),
            values of the wrong type, NaN or infinite numbers.
    """
    where = _Where(source, None)
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    out: dict[str, Any] = {}
    for item in overrides:
        key, text = _split_override(item, source)
        if key not in names:
            raise where.error(key, "unknown key", f"Valid keys: {', '.join(sorted(names))}")
        value = _parse_text(text, hints[key], key, where)
        numbers = value if isinstance(value, list | tuple) else [value]
        if any(isinstance(x, float) and not math.isfinite(x) for x in numbers):
            raise where.error(key, f"expected finite numbers, got {text!r}")
        out[key] = value
    return out


def load_config(
    path: str | Path, *, resolver: ModelConfigResolver | None = None
) -> ExperimentConfig:
    """Read an experiment config from a ``.json`` (as saved in run dirs) or ``.yaml`` file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such config file")
    obj, lines = load_yaml(path)  # YAML is a superset of JSON
    return ExperimentConfig.from_dict(obj, source=path, lines=lines, resolver=resolver)


def load_yaml(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Parse a YAML mapping; returns ``(data, {dotted key: 1-based line})``.

    Raises:
        ConfigError: not UTF-8, invalid YAML, a recursive anchor (an alias inside its own
            anchor), more than ``MAX_YAML_VALUES`` values once aliases are expanded, nesting
            too deep, or not a mapping; naming the file and line.
    """
    path = Path(path)
    try:
        data, node = parse_yaml(read_text(path, "a YAML file"), path)
    except FormatError as e:
        raise ConfigError(e.path, e.line, e.field, e.problem, e.hint) from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(
            path, 1, None, f"expected a mapping at top level, got {type(data).__name__}"
        )
    lines: dict[str, int] = {}
    _collect_lines(node, "", lines)
    return data, lines


def resolve_preset(name: str | Path, model: str | None = None) -> Path:
    """The YAML file of preset ``name``.

    ``name`` may be a path to a YAML file, ``<model>/<dataset>`` or, given ``model``, just
    ``<dataset>``; presets live in ``momentkit/configs/``.
    """
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    stem = str(name).removesuffix(".yaml").removesuffix(".yml")
    candidates = ([CONFIG_ROOT / model / f"{stem}.yaml"] if model else []) + [
        CONFIG_ROOT / f"{stem}.yaml"
    ]
    for c in candidates:
        if c.exists():
            return c
    available = ", ".join(list_presets(model)) or "none"
    raise ConfigError(
        "--preset",
        None,
        None,
        f"no preset '{name}'" + (f" for model '{model}'" if model else ""),
        f"Available: {available}; or give the path of a YAML file",
    )


def list_presets(model: str | None = None) -> list[str]:
    """Preset names (``<model>/<dataset>``), only ``model``'s when given."""
    root = CONFIG_ROOT / model if model else CONFIG_ROOT
    if not root.is_dir():
        return []
    return sorted(str(p.relative_to(CONFIG_ROOT).with_suffix("")) for p in root.rglob("*.yaml"))


def valid_keys(cfg_cls: type, prefix: str = "") -> list[str]:
    """Dotted keys accepted by dataclass ``cfg_cls`` (nested dataclasses expanded)."""
    out: list[str] = []
    hints = get_type_hints(cfg_cls)
    for f in dataclasses.fields(cfg_cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(valid_keys(tp, f"{prefix}{f.name}."))
        else:
            out.append(prefix + f.name)
    return out


# ----------------------------------------------------------------------------------------------
# internals


class _Where:
    """Where config values come from, to build precise errors."""

    def __init__(self, source: str | Path | None, lines: Mapping[str, int] | None) -> None:
        self.source = source
        self.lines = lines or {}

    def error(self, key: str, problem: str, hint: str = "") -> ConfigError:
        line = self.lines.get(key)
        if line is None and key:  # fall back on the closest enclosing key
            parts = key.split(".")
            while parts and line is None:
                parts.pop()
                line = self.lines.get(".".join(parts))
        return ConfigError(self.source, line, key or None, problem, hint)

    def check(self, ok: bool, key: str, problem: str) -> None:
        if not ok:
            raise self.error(key, problem)

    def require_mapping(self, obj: Any, key: str) -> None:
        if not isinstance(obj, Mapping):
            raise self.error(key, f"expected a mapping, got {type(obj).__name__}")

    def resolve(self, resolver: ModelConfigResolver, name: str) -> type:
        try:
            return resolver(name)
        except KeyError as e:
            problem = str(e.args[0]) if e.args else f"unknown model {name}"
            raise self.error("model.name", problem) from None


def _asdict(obj: Any) -> Any:
    """``dataclasses.asdict`` with tuples turned into lists (JSON/YAML friendly)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _asdict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [_asdict(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _asdict(v) for k, v in obj.items()}
    return obj


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _build(cls: type, obj: Any, prefix: str, where: _Where) -> Any:
    """Instantiate dataclass ``cls`` from mapping ``obj``, coercing each value to its type."""
    where.require_mapping(obj, prefix)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in obj.items():
        dotted = f"{prefix}.{key}"
        if key not in fields:
            keys = valid_keys(cls, f"{prefix}.")
            raise where.error(dotted, "unknown key", f"Valid keys: {', '.join(keys)}")
        tp = hints[key]
        if isinstance(value, Mapping) and (dataclasses.is_dataclass(tp) or _is_dict(tp)):
            # a partial mapping updates the field's default (e.g. one of several loss weights)
            default = _field_default(fields[key])
            if isinstance(default, Mapping):
                value = _deep_merge(default, value)
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            kwargs[key] = _build(tp, value, dotted, where)
        else:
            kwargs[key] = _coerce(value, tp, dotted, where)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise where.error(prefix, str(e)) from None


def _is_dict(tp: Any) -> bool:
    return tp is dict or get_origin(tp) is dict


def _field_default(f: dataclasses.Field) -> Any:
    """A field's default as plain data (``None`` without a default)."""
    if f.default is not dataclasses.MISSING:
        return _asdict(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return _asdict(f.default_factory())
    return None


def _deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update``'s entries; nested mappings are merged, other values replaced."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _field_type(cls: type, path: Sequence[str], key: str, where: _Where) -> Any:
    """The annotated type of dotted ``path`` inside dataclass ``cls``."""
    tp: Any = cls
    section = key.split(".")[0]
    for i, name in enumerate(path):
        if get_origin(tp) is dict or tp is dict:  # a key inside a dict field
            tp = (get_args(tp) or (Any, Any))[1]
            continue
        if not (dataclasses.is_dataclass(tp) and name in _field_names(tp)):
            prefix = ".".join([section, *path[:i]]) + "."
            keys = valid_keys(tp, prefix) if dataclasses.is_dataclass(tp) else []
            hint = f"Valid keys: {', '.join(keys)}" if keys else ""
            raise where.error(key, "unknown key", hint)
        tp = get_type_hints(tp)[name]
    if not path:
        raise where.error(key, "is a section, not a key", "Write section.key=value")
    return tp


def _split_override(text: str, source: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(
            source,
            None,
            None,
            f"malformed override {text!r}",
            "Write key=value, e.g. optim.lr=2e-4",
        )
    return key, value.strip()


class _Mismatch(Exception):
    """A value that does not fit a type (internal; turned into a ConfigError)."""


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _parse_text(text: str, tp: Any, key: str, where: _Where) -> Any:
    """Parse the string of a ``--set`` value by the field type ``tp``."""
    if tp is str:
        return text
    if _is_optional(tp) and text.lower() in ("none", "null", "~"):
        return None
    value: Any = text
    origin = get_origin(tp)
    inner = _strip_optional(tp)
    inner_origin = get_origin(inner)
    if inner_origin in (list, tuple) or inner in (list, tuple) or origin in (list, tuple):
        if text.startswith("["):
            value = _yaml_scalar(text, key, where)
        else:
            value = [t.strip() for t in text.split(",") if t.strip()]
    elif inner_origin is dict or inner is dict or dataclasses.is_dataclass(inner):
        value = _yaml_scalar(text, key, where)
    return _coerce(value, tp, key, where)


def _yaml_scalar(text: str, key: str, where: _Where) -> Any:
    try:
        return parse_yaml_value(text)
    except FormatError as e:
        raise where.error(key, e.problem, e.hint) from None


def _is_optional(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _coerce(value: Any, tp: Any, key: str, where: _Where) -> Any:
    """``value`` converted to type ``tp`` or a ConfigError naming ``key``."""
    try:
        return _convert(value, tp)
    except _Mismatch as e:
        raise where.error(key, f"expected {_type_name(tp)}, got {value!r}", str(e)) from None


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _convert(value: Any, tp: Any) -> Any:
    if tp is Any:
        return value
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch("")
    if origin is Literal:
        for a in args:
            if value == a or (isinstance(value, str) and str(a) == value):
                return a
        raise _Mismatch("")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise _Mismatch("Use true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise _Mismatch("")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value)  # YAML 1.1 reads "1e-4" as a string
            except ValueError:
                raise _Mismatch("") from None
        else:
            raise _Mismatch("")
        if math.isnan(out):
            raise _Mismatch("NaN is not allowed")
        return out
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch("Quote the value")
    if origin is list or tp is list:
        if not isinstance(value, list | tuple):
            raise _Mismatch("Give a list, e.g. [1, 2]")
        (item_tp,) = args or (Any,)
        return [_convert(v, item_tp) for v in value]
    if origin is tuple or tp is tuple:
        if not isinstance(value, list | tuple):
            raise _Mismatch("Give a list, e.g. [1, 2]")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0]) for v in value)
        if args and len(args) != len(value):
            raise _Mismatch(f"Give exactly {len(args)} values")
        return tuple(_convert(v, a) for v, a in zip(value, args or [Any] * len(value)))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch("Give a mapping")
        kt, vt = args or (Any, Any)
        return {_convert(k, kt): _convert(v, vt) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _Mismatch("Give a mapping")
        where = _Where(None, None)
        try:
            return _build(tp, value, tp.__name__, where)
        except ConfigError as e:
            raise _Mismatch(str(e)) from None
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _Mismatch(f"unsupported field type {tp}")


def _collect_lines(node: Any, prefix: str, out: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = f"{prefix}{k.value}"
            out[key] = k.start_mark.line + 1
            _collect_lines(v, key + ".", out)
