"""Checkpoints of the official UniMD code (yingsen1/UniMD, ``train_sync.py`` /
``train_random.py`` / ``eval.py``).

The file (``epoch_XXX.pth.tar`` or ``model_best.pth.tar``) is ``torch.save`` of
``{"epoch", "state_dict", "state_dict_ema", "scheduler", "optimizer", "best_map"}`` (the best
one without optimizer and scheduler), tensors named ``module.<name>`` (``nn.DataParallel``).
The options are *not* inside: the training script writes the merged config as ``config.yaml``
in the checkpoint's folder, read here with ``yaml.safe_load`` (``config=`` / ``--config``, by
default the ``config.yaml`` beside the file).

Weights: ``eval.py`` evaluates the exponential moving average of the weights
(``state_dict_ema``, decay 0.999), so that is what is converted by default; ``weights="raw"``
takes the trained weights (``state_dict``) instead.

The model is rebuilt as momentkit's UniMD with every switch at the released code's value
(:data:`momentkit.models.unimd.OFFICIAL_SWITCHES`) and the YAML's dataset values
(``grid_offset = 0.5 * num_frames / feat_stride``, NMS settings, loss normaliser start, label
smoothing); every tensor is mapped by the explicit table :data:`RULES`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from momentkit.interop.convert import (
    ConversionError,
    ConversionReport,
    Converted,
    TensorRule,
    experiment_dict,
    map_tensors,
)

NAME = "unimd"
DESCRIPTION = "official UniMD checkpoints (yingsen1/UniMD; needs the config.yaml of the run)"
CONFIG_NAME = "config.yaml"
WEIGHTS = ("ema", "raw")


# ----------------------------------------------------------------------------- the table
def _flat(t: torch.Tensor) -> torch.Tensor:
    """``(1, C, 1)`` LayerNorm parameters of the official channels-first LayerNorm -> ``(C,)``;
    ``(1,)`` scalars -> ``()``."""
    return t.reshape(-1) if t.numel() > 1 else t.reshape(())


RULES: list[TensorRule] = [
    # backbone: embedding convolutions (+ LayerNorm), stem blocks, stages, downsamplings
    TensorRule(r"backbone\.embd\.(?P<i>\d+)\.conv\.weight", "video_encoder.embed.{i}.conv.weight"),
    TensorRule(
        r"backbone\.embd_norm\.(?P<i>\d+)\.(?P<p>weight|bias)",
        "video_encoder.embed_norm.{i}.{p}",
        "channels-first (1, C, 1) -> (C,)",
        _flat,
    ),
    TensorRule(r"backbone\.stem\.(?P<rest>.+)", "video_encoder.stem.{rest}"),
    TensorRule(r"backbone\.stages\.(?P<rest>.+)", "video_encoder.stages.{rest}"),
    TensorRule(
        r"backbone\.downsample_layers\.(?P<s>\d+)\.0\.(?P<p>weight|bias)",
        "video_encoder.downsample.{s}.norm.{p}",
    ),
    TensorRule(
        r"backbone\.downsample_layers\.(?P<s>\d+)\.1\.conv\.(?P<p>weight|bias)",
        "video_encoder.downsample.{s}.conv.conv.{p}",
    ),
    # heads
    TensorRule(
        r"cls_head\.head\.(?P<i>\d+)\.conv\.(?P<p>weight|bias)",
        "cls_head.tower.convs.{i}.conv.{p}",
    ),
    TensorRule(
        r"cls_head\.norm\.(?P<i>\d+)\.(?P<p>weight|bias)",
        "cls_head.tower.norms.{i}.{p}",
        "channels-first (1, C, 1) -> (C,) (the last one is built but not applied, on both sides)",
        _flat,
    ),
    TensorRule(r"cls_head\.cls_fn\.weight", "cls_head.scale", "(1,) -> ()", _flat),
    TensorRule(r"cls_head\.cls_fn\.bias", "cls_head.bias", "(1,) -> ()", _flat),
    TensorRule(
        r"reg_head\.head\.(?P<i>\d+)\.conv\.(?P<p>weight|bias)",
        "reg_head.tower.convs.{i}.conv.{p}",
    ),
    TensorRule(
        r"reg_head\.norm\.(?P<i>\d+)\.(?P<p>weight|bias)",
        "reg_head.tower.norms.{i}.{p}",
        "channels-first (1, C, 1) -> (C,)",
        _flat,
    ),
    TensorRule(
        r"reg_head\.query_fcs\.(?P<i>\d+)\.1\.(?P<p>weight|bias)",
        "reg_head.kernels.layers.{i}.{p}",
    ),
    # reg_head.scale.<l>.scale (one scalar per level) is stacked into reg_head.scales by
    # _stack_scales before the table is applied
    TensorRule(r"reg_head\.scale\.stacked", "reg_head.scales", "per-level scalars stacked"),
]


def _neck_rules(num_layers: int, query_layers: int) -> list[TensorRule]:
    """The BiFPN rows (official p3..p8 names -> level indices) and the kernel-MLP norms."""
    rules: list[TensorRule] = []
    for layer in range(num_layers):
        src, dst = rf"neck\.bifpn_list\.{layer}\.", f"neck.layers.{layer}."
        for k in range(3, 8):  # top-down nodes p3..p7 (p8 is the top-down start)
            lv = k - 3
            rules += [
                TensorRule(rf"{src}conv{k}_up\.(?P<rest>.+)", f"{dst}up_blocks.{lv}.{{rest}}"),
                TensorRule(rf"{src}p{k}_w1_att", f"{dst}up_weights.{lv}.weight"),
            ]
        for k in range(4, 9):  # bottom-up nodes p4..p8
            lv = k - 4
            rules += [
                TensorRule(rf"{src}conv{k}_down\.(?P<rest>.+)", f"{dst}down_blocks.{lv}.{{rest}}"),
                TensorRule(rf"{src}p{k}_w2_att", f"{dst}down_weights.{lv}.weight"),
            ]
        bn = r"(?P<p>weight|bias|running_mean|running_var|num_batches_tracked)"
        for k in range(3, 9):
            lv = k - 3
            rules += [
                TensorRule(
                    rf"{src}ft_modules\.p{k}_down_channel\.conv\.(?P<p>weight|bias)",
                    f"{dst}lateral.{lv}.0.conv.{{p}}",
                ),
                TensorRule(rf"{src}ft_bns\.p{k}_down_channel\.{bn}", f"{dst}lateral.{lv}.1.{{p}}"),
            ]
        for k in range(4, 8):
            lv = k - 4
            rules += [
                TensorRule(
                    rf"{src}ft_modules\.p{k}_down_channel_2\.conv\.(?P<p>weight|bias)",
                    f"{dst}lateral_bottom_up.{lv}.0.conv.{{p}}",
                ),
                TensorRule(
                    rf"{src}ft_bns\.p{k}_down_channel_2\.{bn}",
                    f"{dst}lateral_bottom_up.{lv}.1.{{p}}",
                ),
            ]
    last = query_layers - 1
    rules += [
        TensorRule(
            rf"reg_head\.query_norm\.{last}\.(?:weight|bias)",
            None,
            "the kernel MLP's last LayerNorm is built but never applied by the official forward "
            "(its last layer is Linear + ReLU)",
        ),
        TensorRule(
            r"reg_head\.query_norm\.(?P<i>\d+)\.(?P<p>weight|bias)",
            "reg_head.kernels.norms.{i}.{p}",
        ),
    ]
    return rules


def _stack_scales(state: dict[str, torch.Tensor], path: Path) -> tuple[dict, list[list[str]]]:
    """Replace ``reg_head.scale.<l>.scale`` by one stacked tensor; returns the pairs
    ``[official name, reg_head.scales[l]]`` for the report."""
    names = sorted(
        (k for k in state if re.fullmatch(r"reg_head\.scale\.\d+\.scale", k)),
        key=lambda k: int(k.split(".")[2]),
    )
    if not names:
        return state, []
    levels = [int(k.split(".")[2]) for k in names]
    if levels != list(range(len(levels))):
        raise ConversionError(
            f"{path}: reg_head.scale levels {levels} are not 0..{len(levels) - 1}"
        )
    out = {k: v for k, v in state.items() if k not in names}
    out["reg_head.scale.stacked"] = torch.stack([state[k].reshape(()) for k in names])
    return out, [[k, f"reg_head.scales[{i}]"] for i, k in enumerate(names)]


# ------------------------------------------------------------------------- the options
#: the official DEFAULTS (libs/core/config.py) and meta-architecture keyword defaults, used
#: where a YAML (e.g. an original config file rather than the run's config.yaml) omits them
_MODEL_DEFAULTS: dict[str, Any] = {
    "backbone_type": "convTransformer",
    "fpn_type": "identity",
    "backbone_arch": [2, 2, 5],
    "scale_factor": 2,
    "regression_range": [[0, 4], [4, 8], [8, 16], [16, 32], [32, 64], [64, 10000]],
    "embd_kernel_size": 3,
    "embd_dim": 512,
    "embd_with_ln": True,
    "fpn_dim": 512,
    "head_dim": 512,
    "head_kernel_size": 3,
    "head_num_layers": 3,
    "head_with_ln": True,
    "reg_head_type": "ori",
    "cls_head_type": "ori",
    "fpn_layer": 3,
    "cls_head_fn": "scale",
    "reg_head_fc_num": 3,
    "query_fc_chanel": 512,
    "fpn_kernel_size": 3,
    "convnext_depths": [1, 1, 1, 1, 1],
}
_TRAIN_DEFAULTS: dict[str, Any] = {
    "center_sample": "radius",
    "center_sample_radius": 1.5,
    "loss_weight": 1.0,
    "init_loss_norm": 2000,
    "label_smoothing": 0.0,
    "tad_loss_weight": 1.0,
    "mr_loss_weight": 1.0,
    "clip_grad_l2norm": -1,
}
_TEST_DEFAULTS: dict[str, Any] = {
    "pre_nms_thresh": 0.001,
    "pre_nms_topk": 5000,
    "iou_threshold": 0.1,
    "min_score": 0.01,
    "max_seg_num": 1000,
    "nms_method": "soft",
    "nms_sigma": 0.5,
    "duration_thresh": 0.05,
    "multiclass_nms": True,
}
_OPT_DEFAULTS: dict[str, Any] = {
    "learning_rate": 1e-3,
    "weight_decay": 0.0,
    "epochs": 30,
    "warmup_epochs": 5,
    "schedule_type": "cosine",
}


class _Options:
    """The YAML's values with the official defaults, remembering which were read."""

    def __init__(self, cfg: Mapping[str, Any], source: Path) -> None:
        self.source = source
        model = cfg.get("model") or {}
        if not isinstance(model, Mapping):
            raise ConversionError(f"{source}: 'model' is not a mapping")
        self.model = {**_MODEL_DEFAULTS, **model}
        self.train = {**_TRAIN_DEFAULTS, **(cfg.get("train_cfg") or model.get("train_cfg") or {})}
        self.test = {**_TEST_DEFAULTS, **(cfg.get("test_cfg") or model.get("test_cfg") or {})}
        self.opt = {**_OPT_DEFAULTS, **(cfg.get("opt") or {})}
        self.loader = dict(cfg.get("loader") or {})
        self.dataset = dict(cfg.get("dataset") or {})
        # the dataset section (named after the config file: charades, anet, ego4d)
        self.features: dict[str, Any] = next(
            (dict(v) for v in cfg.values() if isinstance(v, Mapping) and "feat_stride" in v), {}
        )
        self.dataset_name = cfg.get("dataset_name", "")
        self.read: dict[str, Any] = {}
        self.notes: list[str] = []

    def get(self, section: str, key: str) -> Any:
        table = getattr(self, section)
        if key not in table:
            raise ConversionError(
                f"{self.source}: the config has no {section}.{key}; give the config.yaml the "
                "official training wrote beside the checkpoint (--config)"
            )
        value = table[key]
        self.read[f"{section}.{key}"] = value
        return value


def _need(ok: bool, source: Path, field: str, value: Any, why: str) -> None:
    if not ok:
        raise ConversionError(
            f"{source}: {field} = {value!r} is not supported: {why}. momentkit reproduces the "
            "released UniMD configs (convnext_stage backbone, bifpn_convnext neck, dot "
            "classification head, class-wise one_head_multi regression head)"
        )


def model_config(cfg: Mapping[str, Any], source: Path) -> tuple[Any, _Options]:
    """The momentkit :class:`~momentkit.models.unimd.UniMDConfig` of an official config."""
    from momentkit.models.unimd import OFFICIAL_SWITCHES, UniMDConfig

    o = _Options(cfg, source)
    name = cfg.get("model_name", "LocPointTransformerSyntheses")
    _need(name == "LocPointTransformerSyntheses", source, "model_name", name, "another model")
    for key, want in (
        ("backbone_type", "convnext_stage"),
        ("fpn_type", "bifpn_convnext"),
        ("cls_head_type", "dot"),
        ("reg_head_type", "one_head_multi"),
    ):
        value = o.get("model", key)
        _need(value == want, source, f"model.{key}", value, f"only {want!r} is implemented")
    cls_fn = o.get("model", "cls_head_fn")
    _need(cls_fn == "scale", source, "model.cls_head_fn", cls_fn, "only 'scale' (w x + b)")
    arch = list(o.get("model", "backbone_arch"))
    depths = [int(d) for d in o.get("model", "convnext_depths")]
    _need(len(arch) == 3 and arch[2] == 5 and len(depths) == 5, source, "model.backbone_arch",
          arch, "the official BiFPN is written for 6 levels (5 stages)")  # fmt: skip
    _need(o.get("model", "scale_factor") == 2, source, "model.scale_factor",
          o.model["scale_factor"], "strides must double")  # fmt: skip
    _need(o.get("model", "embd_with_ln") is True, source, "model.embd_with_ln",
          o.model["embd_with_ln"], "the embedding is convolution + LayerNorm + ReLU")  # fmt: skip
    dim = int(o.get("model", "embd_dim"))
    fpn_dim = int(o.get("model", "fpn_dim"))
    _need(fpn_dim == dim, source, "model.fpn_dim", fpn_dim, "the BiFPN keeps embd_dim channels")
    head_dim = int(o.get("model", "head_dim"))
    _need(head_dim == 512, source, "model.head_dim", head_dim,
          "the official heads read 512-d CLIP queries")  # fmt: skip
    head_k = int(o.get("model", "head_kernel_size"))
    _need(head_k == 3, source, "model.head_kernel_size", head_k,
          "the official classification head ignores it (always 3)")  # fmt: skip
    video_dim = o.get("model", "input_dim")
    _need(isinstance(video_dim, int), source, "model.input_dim", video_dim, "one input stream")
    loss_weight = float(o.get("train", "loss_weight"))
    _need(loss_weight > 0, source, "train_cfg.loss_weight", loss_weight, "auto balancing")
    multiclass = o.get("test", "multiclass_nms")
    _need(multiclass is True, source, "test_cfg.multiclass_nms", multiclass,
          "momentkit runs NMS per query (class)")  # fmt: skip
    nms = {"soft": "gaussian", "hard": "hard", "none": "none"}.get(o.get("test", "nms_method"))
    _need(nms is not None, source, "test_cfg.nms_method", o.test["nms_method"], "soft/hard/none")
    feat_stride, num_frames = o.features.get("feat_stride"), o.features.get("num_frames")
    if feat_stride and num_frames:
        o.read["<dataset>.feat_stride"], o.read["<dataset>.num_frames"] = feat_stride, num_frames
        grid_offset = 0.5 * float(num_frames) / float(feat_stride)
    else:
        grid_offset = 0.5
    center = o.get("train", "center_sample")
    loss = UniMDConfig().loss
    loss.weights["loss_reg"] = loss_weight
    config = UniMDConfig(
        video_dim=int(video_dim),
        text_dim=512,
        max_video_len=int(o.get("model", "max_seq_len")),
        hidden_dim=dim,
        head_dim=head_dim,
        depths=depths,
        num_embed_convs=int(arch[0]),
        num_stem_blocks=int(arch[1]),
        embed_kernel_size=3,  # fixed in the official backbone
        block_kernel_size=int(o.get("model", "embd_kernel_size")),
        drop_path_rate=0.4,  # fixed in the official make_backbone
        layer_scale_init=1e-6,
        neck="bifpn",
        fpn_layers=int(o.get("model", "fpn_layer")),
        fpn_kernel_size=int(o.get("model", "fpn_kernel_size")),
        head_layers=int(o.get("model", "head_num_layers")),
        head_kernel_size=head_k,
        head_with_ln=bool(o.get("model", "head_with_ln")),
        query_layers=int(o.get("model", "reg_head_fc_num")),
        query_hidden_dim=int(o.get("model", "query_fc_chanel")),
        query_dropout=0.1,
        regression_ranges=[[float(a), float(b)] for a, b in o.get("model", "regression_range")],
        center_sample_radius=float(o.get("train", "center_sample_radius"))
        if center == "radius"
        else 0.0,
        mr_loss_weight=float(o.get("train", "mr_loss_weight")),
        tad_loss_weight=float(o.get("train", "tad_loss_weight")),
        pre_nms_thresh=float(o.get("test", "pre_nms_thresh")),
        pre_nms_topk=int(o.get("test", "pre_nms_topk")),
        duration_thresh=float(o.get("test", "duration_thresh")),
        nms_method=nms,  # type: ignore[arg-type]
        nms_sigma=float(o.get("test", "nms_sigma")),
        iou_threshold=float(o.get("test", "iou_threshold")),
        min_score=float(o.get("test", "min_score")),
        max_seg_num=int(o.get("test", "max_seg_num")),
        loss_norm_init=float(o.get("train", "init_loss_norm")),
        label_smoothing=float(o.get("train", "label_smoothing")),
        smoothing_classes=int(o.model.get("num_classes", o.dataset.get("num_classes", 1))),
        grid_offset=grid_offset,
        window_clipping="grid_end"
        if str(cfg.get("dataset_name", "")).startswith("anet")
        else "none",
        loss=loss,
        **OFFICIAL_SWITCHES,
    )
    try:
        config.validate()
    except ValueError as e:
        raise ConversionError(
            f"{source}: the official options give an invalid config: {e}"
        ) from None
    return config, o


def _experiment(config: Any, o: _Options) -> dict[str, Any]:
    fps = o.features.get("default_fps")
    stride = o.features.get("feat_stride")
    data: dict[str, Any] = {"max_v_len": config.max_video_len, "use_tef": False}
    if not fps and str(o.dataset_name).startswith("charades"):
        fps = 24.0  # the Charades loader reads fps per video; the released features are 24 fps
        o.notes.append(
            "data.clip_len: feat_stride / 24 fps (the official Charades loader reads the fps of "
            "each video from its annotation file; the released I3D/CLIP features are at 24 fps)"
        )
    if fps and stride:
        data["clip_len"] = float(stride) / float(fps)
    warmup = float(o.opt.get("warmup_epochs", 5))
    total = int(o.opt.get("epochs", 30) + warmup)
    optim = {
        "lr": float(o.opt["learning_rate"]),
        "weight_decay": float(o.opt["weight_decay"]),
        "scheduler": "cosine",
        "warmup_epochs": warmup,
        "grad_clip": float(o.train.get("clip_grad_l2norm", -1)),
    }
    if "early_stop_epochs" in o.opt and int(o.opt["early_stop_epochs"]) != total:
        optim["schedule_epochs"] = total  # the schedule spans all epochs, training stops early
    trainer = {"epochs": int(o.opt.get("early_stop_epochs", total))}
    if "batch_size" in o.loader:
        trainer["batch_size"] = int(o.loader["batch_size"])
    return experiment_dict(config, data=data, optim=optim, trainer=trainer)


# ---------------------------------------------------------------------- the interface
def matches(checkpoint: Any, path: Path) -> bool:
    """A dict with a ``state_dict`` mapping and ``epoch`` / ``state_dict_ema`` (UniMD's
    ``save_checkpoint``), and none of the ``model`` / ``opt`` keys of the DETR codebases."""
    if not isinstance(checkpoint, Mapping) or "model" in checkpoint or "opt" in checkpoint:
        return False
    return isinstance(checkpoint.get("state_dict"), Mapping) and (
        "epoch" in checkpoint or "state_dict_ema" in checkpoint
    )


def read_config(path: Path, config: str | Path | None) -> tuple[dict[str, Any], Path]:
    """The run's YAML (``config`` or the ``config.yaml`` beside ``path``), ``safe_load``-ed."""
    import yaml

    yaml_path = Path(config) if config is not None else path.parent / CONFIG_NAME
    if not yaml_path.is_file():
        beside = "" if config is not None else f" (looked for {yaml_path})"
        raise ConversionError(
            f"{path}: the UniMD options are not inside the checkpoint and no config was found"
            f"{beside}. Give the config.yaml its training wrote with --config (Python: "
            "config=PATH)"
        )
    try:
        cfg = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConversionError(f"{yaml_path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, Mapping):
        raise ConversionError(
            f"{yaml_path}: expected a mapping of options, got {type(cfg).__name__}"
        )
    return dict(cfg), yaml_path


def convert(checkpoint: Any, path: Path, **options: Any) -> Converted:
    """Build the momentkit UniMD model a UniMD checkpoint holds.

    Options:
        config: the run's ``config.yaml`` (default: beside ``path``).
        weights: ``ema`` (default: the moving average ``eval.py`` evaluates) or ``raw``.
    """
    from momentkit.models.unimd import UniMD

    path = Path(path)
    unknown = sorted(set(options) - {"config", "weights"})
    if unknown:
        raise ConversionError(f"{path}: unknown unimd conversion options {unknown}")
    which = options.get("weights") or "ema"
    if which not in WEIGHTS:
        raise ConversionError(f"{path}: weights must be 'ema' or 'raw', got {which!r}")
    key = "state_dict_ema" if which == "ema" else "state_dict"
    state = checkpoint.get(key)
    if not isinstance(state, Mapping):
        raise ConversionError(
            f"{path}: no '{key}' in the checkpoint (keys: {', '.join(map(str, checkpoint))})"
            + ("; use weights='raw'" if which == "ema" else "")
        )
    cfg, yaml_path = read_config(path, options.get("config"))
    config, o = model_config(cfg, yaml_path)
    model = UniMD(config)
    official = {
        (k[len("module.") :] if k.startswith("module.") else k): v
        for k, v in state.items()
        if isinstance(v, torch.Tensor)
    }
    official, scale_pairs = _stack_scales(official, path)
    rules = RULES + _neck_rules(config.fpn_layers, config.query_layers)
    derived = {}
    if config.loss_normalizer == "ema":
        derived["loss_norm"] = (
            f"train_cfg.init_loss_norm = {config.loss_norm_init} (the official normaliser is a "
            "Python attribute, not saved)"
        )
    tensors, mapped, unused = map_tensors(official, rules, model, source=path, derived=derived)
    model.load_state_dict(tensors)
    mapped = [m for m in mapped if m[0] != "reg_head.scale.stacked"] + scale_pairs
    experiment = _experiment(config, o)
    report = ConversionReport(
        source=NAME,
        checkpoint=str(path),
        model="unimd",
        mapped=mapped,
        unused=unused,
        derived=[[k, v] for k, v in derived.items()],
        options={"config": str(yaml_path), "weights": key, **o.read},
        notes=[
            f"weights: {key} ({'the EMA eval.py evaluates' if which == 'ema' else 'raw'}), "
            f"epoch {checkpoint.get('epoch')}, best_map {checkpoint.get('best_map')}",
            f"options from {yaml_path}",
            *o.notes,
        ],
    )
    model.eval()
    return Converted(model, experiment, report)
