"""Model configs, the model base class (save/load), the ``MODELS`` registry and builders.

A model is built from a config dataclass and saved as a directory holding ``config.json`` (the
config, with the registry ``name``) and ``model.safetensors`` (the weights; never pickle)::

    model = build_model(MomentDETRConfig())          # or build_model({"name": "moment_detr"})
    criterion = build_criterion(model.config)
    outputs = model(batch)                           # batch dict of momentkit.data.loader
    losses = criterion(outputs, batch)               # losses["loss"].backward()
    model.save_pretrained("runs/x/model")
    model = MomentModel.from_pretrained("runs/x/model")
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from momentkit import __version__
from momentkit.modeling.criterion import LossConfig, SetCriterion
from momentkit.modeling.distill_align import TEMPERATURE_RANGE, DistillAlign
from momentkit.modeling.matcher import MatcherConfig
from momentkit.modeling.mlp import InputProjection
from momentkit.modeling.position_encoding import PositionEmbeddingLearned, build_position_encoding
from momentkit.modeling.transformer import ACTIVATIONS
from momentkit.utils.errors import FormatError
from momentkit.utils.io import atomic_write_bytes, read_text, write_json
from momentkit.utils.registry import Registry
from momentkit.utils.weights import check_finite_weights, read_safetensors

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

C = TypeVar("C", bound="ModelConfig")


def _check_value(value: Any, hint: Any, where: str, source: str | Path | None) -> Any:
    """Validate a scalar config value against its type hint (int/float/bool/str/list/dict)."""
    origin = typing.get_origin(hint) or hint
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(a for a in options if a is not type(None))
        origin = typing.get_origin(hint) or hint
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
        list: isinstance(value, list | tuple),
        dict: isinstance(value, Mapping),
    }.get(origin, True)
    if not ok:
        name = getattr(origin, "__name__", str(origin))
        raise FormatError(source, None, where, f"expected {name}, got {value!r}")
    if origin is float:
        return float(value)
    if origin is list:
        return list(value)
    if origin is dict:
        return dict(value)
    return value


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _merged(default: Any, value: Mapping[str, Any]) -> dict[str, Any]:
    """A partial mapping layered over a field default (dataclass or dict)."""
    if dataclasses.is_dataclass(default):
        default = dataclasses.asdict(default)
    return {**default, **value} if isinstance(default, Mapping) else dict(value)


def dataclass_from_dict(
    cls: type[Any], data: Mapping[str, Any], source: str | Path | None = None, prefix: str = ""
) -> Any:
    """Build dataclass ``cls`` from a (nested) mapping, rejecting unknown or mistyped fields.

    Nested dataclass and dict fields given partially keep their defaults for the missing keys
    (``{"loss": {"weights": {"loss_span": 5}}}`` changes one weight). Errors are
    :class:`FormatError` naming ``source`` and the dotted field (``model.loss.weights``).
    """
    if not isinstance(data, Mapping):
        raise FormatError(
            source, None, prefix.rstrip(".") or None, f"expected an object, got {data!r}"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in fields:
            raise FormatError(
                source, None, where, "unknown field", f"Known fields: {', '.join(sorted(fields))}"
            )
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, Mapping):
                raise FormatError(source, None, where, f"expected an object, got {value!r}")
            merged = _merged(_field_default(fields[key]), value)
            kwargs[key] = dataclass_from_dict(hint, merged, source, where + ".")
        else:
            value = _check_value(value, hint, where, source)
            if isinstance(value, dict):
                value = _merged(_field_default(fields[key]), value)
            kwargs[key] = value
    return cls(**kwargs)


@dataclass
class ModelConfig:
    """Fields every model has. Subclasses add their hyper-parameters and set ``name``.

    Attributes:
        name: registry name of the model (``momentkit.models.MODELS``).
        video_dim: channels of ``video_feats`` (all streams + 2 TEF dims if enabled;
            QVHighlights SlowFast + CLIP + TEF = 2818).
        text_dim: channels of ``text_feats`` (CLIP: 512).
        max_video_len: most clips a video may have (for learned position tables).
        max_text_len: most tokens a query may have.
        loss: losses and weights (see :class:`~momentkit.modeling.criterion.LossConfig`).
        matcher: Hungarian matching costs.
    """

    name: str = ""
    video_dim: int = 2818
    text_dim: int = 512
    max_video_len: int = 75
    max_text_len: int = 32
    loss: LossConfig = field(default_factory=LossConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range field."""
        for name in ("video_dim", "text_dim", "max_video_len", "max_text_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        self.loss.validate()
        self.matcher.validate()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready nested dict (``from_dict`` inverts it)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], source: str | Path | None = None) -> C:
        """Build from a mapping; unknown/mistyped fields raise :class:`FormatError`."""
        config = dataclass_from_dict(cls, data, source, "model.")
        default_name = cls().name
        if default_name and config.name != default_name:
            raise FormatError(
                source, None, "model.name", f"'{config.name}' given to a '{default_name}' config"
            )
        return config

    def replace(self: C, **changes: Any) -> C:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    @property
    def uses_corpus(self) -> bool:
        """Whether the model trains on a generated query corpus (``data.corpus``) when given
        one: MS-DETR with ``use_corpus``. Benchmarks pass theirs to such models only."""
        return False


@dataclass
class DETRConfig(ModelConfig):
    """Hyper-parameters shared by DETR-style moment models (Moment-DETR paper defaults).

    Attributes:
        hidden_dim: transformer width.
        num_queries: moment queries (predictions per video).
        nheads: attention heads.
        enc_layers: encoder layers.
        dec_layers: decoder layers.
        dim_feedforward: hidden width of the feed-forward blocks.
        dropout: dropout inside the transformer.
        input_dropout: dropout of the input projections.
        pre_norm: pre-norm instead of post-norm transformer layers.
        n_input_proj: layers of each input projection.
        activation: feed-forward activation (``relu``, ``gelu`` or ``prelu``).
        position_embedding: video position encoding, ``sine`` or ``learned``.
        use_text_pos: add a learned position encoding to query tokens (off in the papers).
        decoder_loops: LD-DETR's Loop Decoder: run the decoder stack this many times, each
            pass's output being the next pass's queries (no new parameters; 1 = off).
        distill_align: LD-DETR's Distill Align: momentum-distilled contrastive alignment of the
            global video and query features of the input projections (adds the loss term
            ``loss_align``, weight ``loss.weights.loss_align``).
        align_queue_size: momentum features queued per modality for Distill Align.
        align_momentum: momentum ``m`` of the momentum encoders.
        align_alpha: distillation coefficient ``alpha`` (0: plain contrastive target).
        align_temperature: initial learnable similarity temperature.
        align_alpha_warmup_steps: ramp ``alpha`` from 0 over this many optimiser steps (the
            official code ramps over the first epoch; 0 = no ramp).
    """

    hidden_dim: int = 256
    num_queries: int = 10
    nheads: int = 8
    enc_layers: int = 2
    dec_layers: int = 2
    dim_feedforward: int = 1024
    dropout: float = 0.1
    input_dropout: float = 0.5
    pre_norm: bool = False
    n_input_proj: int = 2
    activation: str = "relu"
    position_embedding: str = "sine"
    use_text_pos: bool = False
    decoder_loops: int = 1
    distill_align: bool = False
    align_queue_size: int = 65536
    align_momentum: float = 0.995
    align_alpha: float = 0.4
    align_temperature: float = 0.07
    align_alpha_warmup_steps: int = 0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range field."""
        super().validate()
        positive = (
            "hidden_dim", "num_queries", "nheads", "dec_layers", "dim_feedforward",
            "decoder_loops", "align_queue_size",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.enc_layers < 0:
            raise ValueError(f"model.enc_layers must be >= 0, got {self.enc_layers}")
        if self.hidden_dim % self.nheads or self.hidden_dim % 4:
            raise ValueError(
                f"model.hidden_dim ({self.hidden_dim}) must be a multiple of nheads "
                f"({self.nheads}) and of 4 (sinusoidal encodings of two coordinates)"
            )
        for name in ("dropout", "input_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 1 <= self.n_input_proj <= 3:
            raise ValueError(f"model.n_input_proj must be 1, 2 or 3, got {self.n_input_proj}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"model.activation must be one of {', '.join(ACTIVATIONS)}, got '{self.activation}'"
            )
        if self.position_embedding not in ("sine", "learned"):
            raise ValueError(
                f"model.position_embedding must be 'sine' or 'learned', got "
                f"'{self.position_embedding}'"
            )
        for name in ("align_momentum", "align_alpha"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"model.{name} must be in [0, 1], got {getattr(self, name)}")
        low, high = TEMPERATURE_RANGE
        if not low <= self.align_temperature <= high:
            raise ValueError(
                f"model.align_temperature must be in [{low}, {high}], got {self.align_temperature}"
            )
        if self.align_alpha_warmup_steps < 0:
            raise ValueError(
                f"model.align_alpha_warmup_steps must be >= 0, got {self.align_alpha_warmup_steps}"
            )
        if (size := _estimated_parameters(self)) > MAX_PARAMETERS:  # before anything allocates
            raise ValueError(
                f"model of about {size / 1e9:.1f} billion parameters (hidden_dim "
                f"{self.hidden_dim}, dim_feedforward {self.dim_feedforward}, video_dim "
                f"{self.video_dim}); at most {MAX_PARAMETERS / 1e9:g} billion are accepted: "
                "lower model.hidden_dim or model.dim_feedforward"
            )


#: largest model a config may describe (4 GB of float32 weights; the papers' are 5-50 million)
MAX_PARAMETERS = 1_000_000_000


def _estimated_parameters(c: DETRConfig) -> int:
    """A rough count of the weights and buffers a DETR config describes (input projections,
    transformer layers, query and position tables, Distill Align queues)."""
    h, ff = c.hidden_dim, c.dim_feedforward
    layer = 4 * h * h + 2 * h * ff
    return (
        (c.video_dim + c.text_dim) * h
        + 2 * c.n_input_proj * h * h
        + (c.enc_layers + 2 * c.dec_layers) * layer
        + (c.num_queries + c.max_video_len + c.max_text_len) * h
        + (2 * c.align_queue_size * h if c.distill_align else 0)
    )


def build_inputs(
    config: DETRConfig,
) -> tuple[InputProjection, InputProjection, nn.Module, PositionEmbeddingLearned | None]:
    """A DETR model's input layers ``(video_proj, text_proj, video_pos, text_pos)``.

    The video and query input projections to ``hidden_dim``, the video position encoding
    (``position_embedding``) and the learned query position encoding (``None`` unless
    ``use_text_pos``), built in this order.
    """
    c, d = config, config.hidden_dim
    return (
        InputProjection(c.video_dim, d, c.n_input_proj, c.input_dropout),
        InputProjection(c.text_dim, d, c.n_input_proj, c.input_dropout),
        build_position_encoding(c.position_embedding, d, c.max_video_len),
        PositionEmbeddingLearned(c.max_text_len, d) if c.use_text_pos else None,
    )


def trim_padding(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``x`` ``(B, L, ...)`` and ``mask`` ``(B, L)`` without the trailing columns that are
    padding in every item (``L`` becomes the longest item's length, at least 1); unchanged when
    there are none."""
    valid = mask.any(0).nonzero()
    keep = int(valid[-1]) + 1 if len(valid) else 1
    if keep == mask.shape[1]:
        return x, mask
    return x[:, :keep], mask[:, :keep]


def build_distill_align(
    config: DETRConfig, video_encoder: nn.Module, text_encoder: nn.Module
) -> DistillAlign | None:
    """Distill Align over a model's unimodal encoders, or ``None`` when ``distill_align`` is off.

    Call it at the end of the model's ``__init__`` (the momentum encoders start as copies).
    """
    if not config.distill_align:
        return None
    return DistillAlign(
        video_encoder,
        text_encoder,
        config.hidden_dim,
        queue_size=config.align_queue_size,
        momentum=config.align_momentum,
        alpha=config.align_alpha,
        temperature=config.align_temperature,
        alpha_warmup_steps=config.align_alpha_warmup_steps,
    )


class MomentModel(nn.Module):
    """Base class of momentkit models: a config, ``forward(batch) -> outputs``, save/load.

    Subclasses set ``config_class`` and implement ``forward(batch)`` returning the output dict
    documented in ``docs/architecture.md``.
    """

    config_class: ClassVar[type[ModelConfig]] = ModelConfig

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, "
                f"got {type(config).__name__}"
            )
        config.validate()
        self.config = config

    def num_parameters(self, trainable_only: bool = True) -> int:
        """Number of (trainable) parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (atomically).

        ``directory`` may be new, or a folder whose ``config.json`` / ``model.safetensors`` (if
        any) are a momentkit checkpoint's (they are replaced); other files in it are kept.

        Raises:
            OutputError: ``directory`` is not a path, is a file, cannot be created, or holds a
                ``config.json`` / ``model.safetensors`` momentkit did not write (nothing is
                written then).
        """
        from momentkit.utils.errors import OutputError, describe_os_error

        if not isinstance(directory, str | os.PathLike) or not str(directory).strip():
            raise OutputError(
                f"save_pretrained needs the path of a folder to write (str or Path), got "
                f"{type(directory).__name__} {directory!r}"
            )
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise OutputError(
                f"{directory}: exists and is not a folder; save_pretrained writes a folder "
                f"({CONFIG_FILE} + {WEIGHTS_FILE}): give the path of a new folder"
            )
        _refuse_foreign_files(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(
                f"cannot create the model folder {directory}: {describe_os_error(e)}"
            ) from None
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        metadata = {"format": "pt", "model": self.config.name, "momentkit_version": __version__}
        atomic_write_bytes(directory / WEIGHTS_FILE, safetensors_bytes(tensors, metadata))
        write_json(directory / CONFIG_FILE, self.config.to_dict())
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: torch.device | str = "cpu"
    ) -> MomentModel:
        """Load a model saved by :meth:`save_pretrained`, or an official checkpoint file.

        Called on the base class it builds whichever registered model ``config.json`` names;
        on a subclass it also checks that the saved model is of that class. A *file* is taken
        for an official checkpoint: its source is detected and it is converted in memory
        (:func:`momentkit.interop.convert.convert_checkpoint`, read through an allow-list).
        """
        from momentkit.training.checkpoint import CheckpointError, CheckpointNotFoundError

        if not isinstance(directory, str | os.PathLike) or not str(directory).strip():
            raise CheckpointError(
                f"from_pretrained needs the path of a checkpoint folder (written by "
                f"save_pretrained) or of an official checkpoint file, got "
                f"{type(directory).__name__} {directory!r}"
            )
        device = _checked_device(device)  # before reading: a bad device is not damaged weights
        directory = Path(directory)
        if not directory.exists():
            raise CheckpointNotFoundError(
                f"{directory}: no such checkpoint folder or file; give the folder "
                f"save_pretrained wrote ({CONFIG_FILE} + {WEIGHTS_FILE}) or an official "
                "checkpoint file"
            )
        if directory.is_file():
            from momentkit.interop.convert import convert_checkpoint

            model = convert_checkpoint(directory).model
            if not isinstance(model, cls):
                raise FormatError(
                    directory,
                    None,
                    None,
                    f"holds a '{model.config.name}' model, not a {cls.__name__}",
                )
            return model.to(device)
        if not directory.is_dir():
            raise CheckpointError(
                f"{directory}: neither a folder nor a file; give the folder save_pretrained "
                "wrote or an official checkpoint file"
            )
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                try:
                    present = sorted(p.name for p in directory.iterdir())
                except OSError:
                    present = []
                more = ", ..." if len(present) > 5 else ""
                holds = f"it holds {', '.join(present[:5])}{more}" if present else "it is empty"
                raise CheckpointNotFoundError(
                    f"{path}: no such file, so {directory} is not a checkpoint folder ({holds}); "
                    f"a folder written by save_pretrained holds {CONFIG_FILE} and "
                    f"{WEIGHTS_FILE}: give that folder, or save the model again"
                )
        try:
            data = json.loads(read_text(config_path, "a model config"))
        except json.JSONDecodeError as e:
            raise FormatError(config_path, e.lineno, None, f"invalid JSON: {e.msg}") from None
        except RecursionError:
            raise FormatError(config_path, None, None, "invalid JSON: nested too deeply") from None
        config = config_from_dict(data, source=config_path)
        model_cls = MODELS.get(config.name)
        if not issubclass(model_cls, cls):
            raise FormatError(
                config_path, None, "name", f"holds a '{config.name}' model, not a {cls.__name__}"
            )
        try:  # a config.json edited by hand fails the model's own checks (e.g. dropout 2.0)
            model = model_cls(config)
        except (ValueError, TypeError) as e:
            raise FormatError(
                config_path, None, None, str(e), "Fix the value, or re-save the checkpoint"
            ) from None
        state = read_safetensors(weights_path, device=str(device))
        check_finite_weights(state, weights_path)
        missing, unexpected = _state_mismatch(model, state)
        if missing or unexpected:
            raise FormatError(
                weights_path,
                None,
                None,
                f"weights do not fit a '{config.name}' model built from {CONFIG_FILE}: "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}",
                "Save and load with the same momentkit version and config",
            )
        model.load_state_dict(state)
        return model.to(device)


def _checked_device(device: object) -> torch.device:
    """``device`` as a ``torch.device``, checked by ``resolve_device`` (``auto``, ``cpu``,
    ``cuda``, ``cuda:N`` that this machine has).

    Raises:
        DeviceError: an unknown device, a CUDA device this machine lacks, or not a device.
    """
    from momentkit.training.distributed import DeviceError, resolve_device

    if not isinstance(device, str | torch.device):
        raise DeviceError(
            f"device must be a device name (auto, cpu, cuda or cuda:N) or a torch.device, got "
            f"{type(device).__name__} {device!r}"
        )
    return resolve_device(str(device))


def _refuse_foreign_files(directory: Path) -> None:
    """Refuse to write a checkpoint over a ``config.json`` / ``model.safetensors`` in
    ``directory`` that momentkit did not write (a user's own files), before anything is
    written.

    Raises:
        OutputError: naming the file and saying to save into another folder.
    """
    from momentkit.utils.errors import OutputError

    if not directory.is_dir():
        return
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    foreign: list[str] = []
    own_config = False
    if config_path.exists() or config_path.is_symlink():
        try:
            data = json.loads(config_path.read_text(encoding="utf-8"))
            own_config = isinstance(data, Mapping) and data.get("name") in MODELS
        except (OSError, ValueError, RecursionError):
            own_config = False
        if not own_config:
            foreign.append(f"{CONFIG_FILE} is not a momentkit model config")
    if (weights_path.exists() or weights_path.is_symlink()) and not own_config:
        if not _momentkit_weights(weights_path):
            foreign.append(f"{WEIGHTS_FILE} was not written by momentkit")
    if foreign:
        raise OutputError(
            f"{directory}: holds files momentkit did not write ({'; '.join(foreign)}), which "
            "save_pretrained would replace; nothing was written. Save the model into another "
            "(new or empty) folder"
        )


def _momentkit_weights(path: Path) -> bool:
    """Whether ``path`` is a safetensors file whose metadata says momentkit wrote it."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception:  # unreadable, a folder, not safetensors: not ours
        return False
    return "momentkit_version" in metadata


def _state_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[list, list]:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    missing += sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    return missing, unexpected


MODELS: Registry[type[MomentModel]] = Registry("model")


def config_from_dict(data: Mapping[str, Any], source: str | Path | None = None) -> ModelConfig:
    """The config of the model named by ``data["name"]``, built from ``data``."""
    if not isinstance(data, Mapping) or "name" not in data:
        raise FormatError(
            source, None, "model.name", "missing", f"Name one of: {', '.join(MODELS.names())}"
        )
    try:
        model_cls = MODELS.get(data["name"])
    except KeyError as e:
        raise FormatError(source, None, "model.name", e.args[0]) from None
    return model_cls.config_class.from_dict(data, source)


def build_model(config: ModelConfig | Mapping[str, Any]) -> MomentModel:
    """Instantiate the registered model named by ``config.name`` (a config object or a dict)."""
    if not isinstance(config, ModelConfig):
        config = config_from_dict(config)
    return MODELS.get(config.name)(config)


def build_criterion(config: ModelConfig) -> SetCriterion:
    """The training criterion (matching + weighted losses) described by a model config.

    A model class may define ``build_criterion(config)`` for its own criterion (SG-DETR's
    IoU-aware matching). With ``distill_align`` on, the ``distill_align`` loss is added to
    ``loss.losses`` if missing.
    """
    model_cls = MODELS.get(config.name) if config.name in MODELS else None
    custom = getattr(model_cls, "build_criterion", None)
    if custom is not None:
        return custom(config)
    loss = config.loss
    if getattr(config, "distill_align", False) and "distill_align" not in loss.losses:
        loss = dataclasses.replace(loss, losses=[*loss.losses, "distill_align"])
    return SetCriterion(loss, config.matcher)
