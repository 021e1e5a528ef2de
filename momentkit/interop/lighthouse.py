"""Checkpoints of line/lighthouse: Moment-DETR and QD-DETR.

Lighthouse's ``training/train.py`` saves ``{"model", "optimizer", "lr_scheduler", "epoch",
"opt"}`` with ``opt`` its ``easydict.EasyDict`` of options (read back as
:class:`~momentkit.interop.safe_pickle.OptionDict`); tensors may have been saved on a GPU (the
loader maps them to the CPU). The options rebuild the momentkit config of the ``official``
variant (:data:`momentkit.models.moment_detr.OFFICIAL`, :data:`momentkit.models.qd_detr.OFFICIAL`)
and the experiment (data/optim/trainer); every tensor is mapped by the tables below, the ones the
official forward never reads listed with the reason.

Feature channels: Lighthouse concatenates ``[video streams, TEF, audio streams]``, momentkit
``[streams..., TEF]``; with audio and TEF the first video projection's input channels are
permuted accordingly.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
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
    official_features_record,
)

NAME = "lighthouse"
DESCRIPTION = "line/lighthouse checkpoints of Moment-DETR and QD-DETR (training/train.py)"

#: Lighthouse ``model_name`` values momentkit converts
MODELS = ("moment_detr", "qd_detr")

#: Lighthouse ``dset_name`` -> momentkit dataset
DATASETS = {
    "qvhighlight": "qvhighlights",
    "qvhighlight_pretrain": "qvhighlights",
    "charades": "charades_sta",
    "tacos": "tacos",
    "activitynet": "activitynet",
    "tvsum": "tvsum",
    "youtube_highlight": "youtube_highlights",
}

#: Lighthouse's ``configs/base.yml`` values, used for loss/schedule options a file lacks
BASE_OPTIONS: dict[str, Any] = {
    "hidden_dim": 256,
    "nheads": 8,
    "enc_layers": 2,
    "dec_layers": 2,
    "dim_feedforward": 1024,
    "num_queries": 10,
    "dropout": 0.1,
    "input_dropout": 0.5,
    "n_input_proj": 2,
    "position_embedding": "sine",
    "span_loss_type": "l1",
    "aux_loss": True,
    "eos_coef": 0.1,
    "saliency_margin": 0.2,
    "lw_saliency": 1.0,
    "span_loss_coef": 10.0,
    "giou_loss_coef": 1.0,
    "label_loss_coef": 4.0,
    "set_cost_span": 10.0,
    "set_cost_giou": 1.0,
    "set_cost_class": 4.0,
    "max_q_l": 32,
    "max_v_l": 75,
    "clip_length": 1,
    "ctx_mode": "video_tef",
    "lr": 1e-4,
    "wd": 1e-4,
    "lr_drop": 400,
    "grad_clip": 0.1,
    "n_epoch": 200,
    "bsz": 32,
    "eval_bsz": 100,
    "seed": 2023,
    "max_es_cnt": 200,
}

_P = r"(?P<p>weight|bias)"
_ATTN = r"(?P<p>in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)"
_UNUSED_TEXT_POS = (
    "Lighthouse builds a learned query-position table, but its forward reads it only with "
    "use_txt_pos, which its build_model never sets"
)

#: tensors both models share (input projections, heads)
SHARED_RULES: list[TensorRule] = [
    TensorRule(rf"input_vid_proj\.(?P<i>\d+)\.LayerNorm\.{_P}", "video_proj.layers.{i}.norm.{p}"),
    TensorRule(rf"input_vid_proj\.(?P<i>\d+)\.net\.1\.{_P}", "video_proj.layers.{i}.linear.{p}"),
    TensorRule(rf"input_txt_proj\.(?P<i>\d+)\.LayerNorm\.{_P}", "text_proj.layers.{i}.norm.{p}"),
    TensorRule(rf"input_txt_proj\.(?P<i>\d+)\.net\.1\.{_P}", "text_proj.layers.{i}.linear.{p}"),
    TensorRule(rf"class_embed\.{_P}", "head.class_embed.{p}"),
    TensorRule(rf"span_embed\.layers\.(?P<i>\d+)\.{_P}", "head.span_embed.layers.{i}.{p}"),
    TensorRule(r"txt_position_embed\..+", None, _UNUSED_TEXT_POS),
]


def _ffn_rules(official: str, momentkit: str) -> list[TensorRule]:
    """Feed-forward, norms and PReLU slope of layer stack ``official`` -> ``momentkit``."""
    layer = rf"transformer\.{official}\.layers\.(?P<i>\d+)"
    target = f"{momentkit}.layers.{{i}}"
    return [
        TensorRule(rf"{layer}\.linear(?P<n>[12])\.{_P}", target + ".ffn.linear{n}.{p}"),
        TensorRule(rf"{layer}\.norm(?P<n>[123])\.{_P}", target + ".norm{n}.{p}"),
        TensorRule(rf"{layer}\.activation\.weight", target + ".ffn.activation.weight"),
    ]


MOMENT_DETR_RULES: list[TensorRule] = [
    *SHARED_RULES,
    TensorRule(r"query_embed\.weight", "query_embed.weight"),
    TensorRule(rf"saliency_proj\.{_P}", "saliency_proj.{p}"),
    TensorRule(
        rf"transformer\.encoder\.layers\.(?P<i>\d+)\.self_attn\.{_ATTN}",
        "encoder.layers.{i}.self_attn.{p}",
    ),
    TensorRule(
        rf"transformer\.decoder\.layers\.(?P<i>\d+)\.self_attn\.{_ATTN}",
        "decoder.layers.{i}.self_attn.{p}",
    ),
    TensorRule(
        rf"transformer\.decoder\.layers\.(?P<i>\d+)\.multihead_attn\.{_ATTN}",
        "decoder.layers.{i}.cross_attn.{p}",
    ),
    *_ffn_rules("encoder", "encoder"),
    *_ffn_rules("decoder", "decoder"),
    TensorRule(rf"transformer\.decoder\.norm\.{_P}", "decoder.norm.{p}"),
]

_PROJ = r"(?P<m>(?:sa|ca)_\w+_proj)"
QD_DETR_RULES: list[TensorRule] = [
    *SHARED_RULES,
    TensorRule(r"global_rep_token", "global_token"),
    TensorRule(r"global_rep_pos", "global_pos"),
    TensorRule(r"query_embed\.weight", "anchors.weight"),
    TensorRule(rf"saliency_proj(?P<n>[12])\.{_P}", "saliency_proj{n}.{p}"),
    TensorRule(
        rf"transformer\.t2v_encoder\.layers\.(?P<i>\d+)\.self_attn\.{_ATTN}",
        "t2v.layers.{i}.cross_attn.{p}",
    ),
    TensorRule(
        rf"transformer\.encoder\.layers\.(?P<i>\d+)\.self_attn\.{_ATTN}",
        "encoder.layers.{i}.self_attn.{p}",
    ),
    TensorRule(
        rf"transformer\.decoder\.layers\.(?P<i>\d+)\.{_PROJ}\.{_P}", "decoder.layers.{i}.{m}.{p}"
    ),
    TensorRule(
        rf"transformer\.decoder\.layers\.(?P<i>\d+)\.(?P<a>self_attn|cross_attn)\.out_proj\.{_P}",
        "decoder.layers.{i}.{a}.out_proj.{p}",
    ),
    *_ffn_rules("t2v_encoder", "t2v"),
    *_ffn_rules("encoder", "encoder"),
    *_ffn_rules("decoder", "decoder"),
    TensorRule(rf"transformer\.decoder\.norm\.{_P}", "decoder.norm.{p}"),
    TensorRule(
        rf"transformer\.decoder\.(?P<m>query_scale|ref_point_head|ref_anchor_head)"
        rf"\.layers\.(?P<i>\d+)\.{_P}",
        "decoder.{m}.layers.{i}.{p}",
    ),
    TensorRule(
        rf"transformer\.decoder\.bbox_embed\.layers\.(?P<i>\d+)\.{_P}",
        "decoder.span_refine.layers.{i}.{p}",
    ),
]

RULES = {"moment_detr": MOMENT_DETR_RULES, "qd_detr": QD_DETR_RULES}


# ------------------------------------------------------------------------------- detection
def matches(checkpoint: Any, path: Path) -> bool:
    """A Lighthouse file: a ``model`` state dict and ``opt`` a mapping (``EasyDict``, not an
    ``argparse.Namespace`` as LD-DETR/MS-DETR save) with Lighthouse's ``model_name`` and its
    feature options (``ctx_mode`` / ``v_feat_types`` / ``t_feat_type``)."""
    if not isinstance(checkpoint, Mapping):
        return False
    opt, model = checkpoint.get("opt"), checkpoint.get("model")
    if not isinstance(model, Mapping) or isinstance(opt, argparse.Namespace):
        return False
    if not isinstance(opt, Mapping) or "model_name" not in opt:
        return False
    return any(key in opt for key in ("ctx_mode", "v_feat_types", "t_feat_type"))


# ------------------------------------------------------------------------------ options
class _Options:
    """The saved options, with Lighthouse's base defaults for keys a file lacks (recorded)."""

    def __init__(self, opt: Mapping[str, Any], path: Path) -> None:
        self.opt, self.path = dict(opt), path
        self.read: dict[str, Any] = {}
        self.defaulted: list[str] = []

    def __getitem__(self, key: str) -> Any:
        if key in self.opt and self.opt[key] is not None:
            value = self.opt[key]
        elif key in BASE_OPTIONS:
            value = BASE_OPTIONS[key]
            self.defaulted.append(key)
        else:
            raise ConversionError(
                f"{self.path}: the saved options lack '{key}', which the conversion needs. The "
                "file was not written by Lighthouse's training/train.py, or by a version it "
                "does not know"
            )
        self.read[key] = value
        return value

    def get(self, key: str, default: Any = None) -> Any:
        value = self.opt.get(key, default)
        self.read[key] = value
        return value

    def number(self, key: str, kind: Callable[[Any], Any] = float) -> Any:
        value = self[key]
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise ConversionError(
                f"{self.path}: option '{key}' is {value!r}, expected a number"
            ) from None


def _postprocess(dataset: str) -> dict[str, Any]:
    """Lighthouse's ``compute_mr_results`` post-processing for ``dset_name``."""
    from momentkit.models.moment_detr import LIGHTHOUSE_POSTPROCESS

    settings = dict(LIGHTHOUSE_POSTPROCESS)
    if dataset == "castella":
        settings["max_time"] = 300.0
    elif dataset in ("tacos", "activitynet", "youtube_highlight"):
        settings["clamp"] = "none"
        del settings["max_time"]
    return settings


def _channel_layout(opts: _Options) -> tuple[int, int, bool]:
    """``(video channels incl. TEF, audio channels, TEF used)`` of the first video layer."""
    ctx_mode = str(opts["ctx_mode"])
    video_dim = opts.number("v_feat_dim", int)
    audio = "audio" in ctx_mode
    audio_dim = opts.number("a_feat_dim", int) if audio and "a_feat_dim" in opts.opt else 0
    return video_dim, audio_dim, "tef" in ctx_mode


def _channel_order(video_dim: int, audio_dim: int, tef: bool) -> list[int] | None:
    """Official channel of each momentkit channel, or ``None`` when the orders agree.

    Lighthouse: ``[video (video_dim - 2), TEF (2), audio]``; momentkit:
    ``[video, audio, TEF]``.
    """
    if not (audio_dim and tef):
        return None
    plain = list(range(video_dim - 2))
    audio = list(range(video_dim, video_dim + audio_dim))
    return plain + audio + [video_dim - 2, video_dim - 1]


def _permute_inputs(order: list[int]) -> list[TensorRule]:
    index = torch.tensor(order)
    return [
        TensorRule(
            rf"input_vid_proj\.0\.LayerNorm\.{_P}",
            "video_proj.layers.0.norm.{p}",
            "input channels reordered: Lighthouse [video, TEF, audio] -> [video, audio, TEF]",
            lambda t: t.index_select(0, index),
        ),
        TensorRule(
            r"input_vid_proj\.0\.net\.1\.weight",
            "video_proj.layers.0.linear.weight",
            "input channels reordered: Lighthouse [video, TEF, audio] -> [video, audio, TEF]",
            lambda t: t.index_select(1, index),
        ),
    ]


def model_config(opts: _Options, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The momentkit model config (a dict) of the ``official`` variant from the options."""
    from momentkit.models.moment_detr import OFFICIAL as MOMENT_DETR_OFFICIAL
    from momentkit.models.qd_detr import OFFICIAL as QD_DETR_OFFICIAL

    name = opts["model_name"]
    if opts["span_loss_type"] != "l1":
        raise ConversionError(
            f"{opts.path}: span_loss_type '{opts['span_loss_type']}': momentkit implements "
            "Lighthouse's default 'l1' (center/width regression) only"
        )
    if opts["position_embedding"] not in ("sine", "v2"):
        raise ConversionError(
            f"{opts.path}: position_embedding '{opts['position_embedding']}' is not one "
            "Lighthouse builds ('sine')"
        )
    video_dim, audio_dim, _ = _channel_layout(opts)
    dataset = str(opts["dset_name"]) if "dset_name" in opts.opt else "qvhighlight"
    lw = opts.number("lw_saliency")
    max_v_l = opts.number("max_v_l", int)
    config: dict[str, Any] = {
        "name": name,
        "video_dim": video_dim + audio_dim,
        "text_dim": opts.number("t_feat_dim", int),
        "max_text_len": opts.number("max_q_l", int) if opts.number("max_q_l", int) > 0 else 100,
        "hidden_dim": opts.number("hidden_dim", int),
        "num_queries": opts.number("num_queries", int),
        "nheads": opts.number("nheads", int),
        "enc_layers": opts.number("enc_layers", int),
        "dec_layers": opts.number("dec_layers", int),
        "dim_feedforward": opts.number("dim_feedforward", int),
        "dropout": opts.number("dropout"),
        "input_dropout": opts.number("input_dropout"),
        "n_input_proj": opts.number("n_input_proj", int),
        "pre_norm": False,
        "position_embedding": "sine",
        "use_text_pos": False,
        "matcher": {
            "cost_span": opts.number("set_cost_span"),
            "cost_giou": opts.number("set_cost_giou"),
            "cost_class": opts.number("set_cost_class"),
        },
    }
    if max_v_l > 0:
        config["max_video_len"] = max_v_l
    weights = {
        "loss_span": opts.number("span_loss_coef"),
        "loss_giou": opts.number("giou_loss_coef"),
        "loss_label": opts.number("label_loss_coef"),
        "loss_saliency_margin": lw,
    }
    loss: dict[str, Any] = {
        "aux_loss": bool(opts["aux_loss"]),
        "eos_coef": opts.number("eos_coef"),
        "saliency_margin": opts.number("saliency_margin"),
        "weights": weights,
    }
    if name == "qd_detr":
        config.update(QD_DETR_OFFICIAL)
        config["t2v_layers"] = config["enc_layers"]
        if not any(k.endswith(".activation.weight") for k in state):
            config["activation"] = "relu"  # a checkpoint of a ReLU build has no PReLU slopes
        weights.update({"loss_saliency_rank": lw, "loss_saliency_neg": lw})
        # QD-DETR thresholds the annotator sum (QVHighlights) or 0/1 window labels
        loss["rank_label_scale"] = 3.0 if dataset.startswith("qvhighlight") else 1.0
        loss["neg_pair_form"] = "log_sigmoid"
    else:
        config.update(MOMENT_DETR_OFFICIAL)
    config["postprocess"] = _postprocess(dataset)
    config["loss"] = loss
    return config


def _folders(opts: _Options, key: str) -> list[str]:
    """Option ``key``: a list of feature folders (``None``: none), refused otherwise."""
    value = opts.get(key)
    if value is None:
        return []
    if not isinstance(value, list | tuple) or not all(
        isinstance(d, str) and d.strip() for d in value
    ):
        raise ConversionError(
            f"{opts.path}: option '{key}' is {value!r}, expected a list of feature folders "
            "(e.g. ['features/slowfast', 'features/clip']). The file's options are damaged or "
            "not Lighthouse's; convert an intact checkpoint"
        )
    return list(value)


def _experiment_sections(opts: _Options) -> dict[str, dict[str, Any]]:
    dataset = str(opts.get("dset_name") or "qvhighlight")
    streams = _folders(opts, "v_feat_dirs") + _folders(opts, "a_feat_dirs")
    text_features = opts.get("t_feat_dir")
    if text_features is not None and not (isinstance(text_features, str) and text_features):
        raise ConversionError(
            f"{opts.path}: option 't_feat_dir' is {text_features!r}, expected one feature "
            "folder (e.g. 'features/clip_text'). The file's options are damaged or not "
            "Lighthouse's; convert an intact checkpoint"
        )
    max_v_l, max_q_l = opts.number("max_v_l", int), opts.number("max_q_l", int)
    data: dict[str, Any] = {
        "video_features": streams,
        "text_features": text_features,
        "max_v_len": max_v_l if max_v_l > 0 else None,
        "max_q_len": max_q_l if max_q_l > 0 else 100,
        "clip_len": opts.number("clip_length"),
        "use_tef": "tef" in str(opts["ctx_mode"]),
        "normalize_video": True,
        "normalize_text": True,
        "eval_batch_size": opts.number("eval_bsz", int),
    }
    if dataset in DATASETS:
        data["dataset"] = DATASETS[dataset]
    optim = {
        "lr": opts.number("lr"),
        "weight_decay": opts.number("wd"),
        "scheduler": "step",
        "lr_drop": opts.number("lr_drop", int),
        "gamma": 0.1,
        "grad_clip": opts.number("grad_clip"),
    }
    trainer = {
        "epochs": opts.number("n_epoch", int),
        "batch_size": opts.number("bsz", int),
        "seed": opts.number("seed", int),
        # Lighthouse: max_es_cnt -1 disables early stopping (momentkit: patience None)
        "patience": patience if (patience := opts.number("max_es_cnt", int)) > 0 else None,
    }
    return {"data": data, "optim": optim, "trainer": trainer}


# ------------------------------------------------------------------------------ conversion
def convert(checkpoint: Any, path: Path, **options: Any) -> Converted:
    """Build the momentkit model a Lighthouse checkpoint holds (see the module doc).

    Raises:
        ConversionError: another Lighthouse model (CG-DETR, EaTR, ...), options momentkit does
            not implement, unknown options given, or tensors that do not fit.
    """
    from momentkit.interop.safe_pickle import options_to_dict
    from momentkit.models.base import build_model, config_from_dict
    from momentkit.utils.errors import FormatError

    if options:
        raise ConversionError(
            f"{path}: option(s) {sorted(options)} do not apply to Lighthouse checkpoints (their "
            "options are saved inside the file)"
        )
    opts = _Options(options_to_dict(checkpoint["opt"]), path)
    name = str(opts["model_name"])
    if name not in MODELS:
        raise ConversionError(
            f"{path}: a Lighthouse checkpoint of '{name}'; momentkit converts Lighthouse's "
            f"{' and '.join(MODELS)} checkpoints"
        )
    state = dict(checkpoint["model"])
    config_dict = model_config(opts, state)
    try:
        config = config_from_dict(config_dict, source=path)
        model = build_model(config)
    except (FormatError, ValueError, TypeError) as e:
        raise ConversionError(
            f"{path}: the saved options give an invalid model config: {e}"
        ) from None
    rules = list(RULES[name])
    order = _channel_order(*_channel_layout(opts))
    if order is not None:
        rules = _permute_inputs(order) + rules
    mapped_state, mapped, unused = map_tensors(state, rules, model, source=path)
    model.load_state_dict(mapped_state)
    model.eval()
    sections = _experiment_sections(opts)
    report = ConversionReport(
        source=NAME,
        checkpoint=str(path),
        model=name,
        mapped=mapped,
        unused=unused,
        options={k: v for k, v in opts.read.items() if isinstance(v, str | int | float | bool)},
    )
    if "epoch" in checkpoint:
        report.notes.append(f"saved after epoch {checkpoint['epoch']}")
    if opts.defaulted:
        report.notes.append(
            "options missing from the file, Lighthouse's configs/base.yml values used: "
            + ", ".join(sorted(set(opts.defaulted)))
        )
    if order is not None:
        report.notes.append(
            "video input channels: give the audio streams after the video streams "
            "(data.video_features lists them in that order); TEF stays last"
        )
    dataset = str(opts.get("dset_name"))
    if dataset not in DATASETS:
        report.notes.append(
            f"Lighthouse dataset '{dataset}' has no momentkit counterpart: data.dataset keeps "
            "its default; set it (and the evaluator) before evaluating"
        )
    experiment = experiment_dict(config, **sections)
    data = experiment["data"]
    features = official_features_record(
        data["video_features"], data["text_features"], data["clip_len"]
    )
    return Converted(model, experiment, report, features=features)
