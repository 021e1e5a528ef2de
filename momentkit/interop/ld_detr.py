"""Checkpoints of the official LD-DETR code (``qingchen239/ld-detr``).

``ld_detr/train.py`` saves ``torch.save({"model", "optimizer", "lr_scheduler", "epoch",
"opt"})`` with ``opt`` the ``argparse.Namespace`` of ``ld_detr/config.py`` (its ``device`` a
``torch.device``) and the tensors on the GPU they trained on. This module:

- recognises such a file by its tensor names (``convolutional_fuser.v2t_extractor.*``,
  ``loop_decoder.transformer_decoder.*``, ``prediction_heads.*``), so MS-DETR's (also a
  ``Namespace`` ``opt``), Lighthouse's (``EasyDict`` ``opt``) and UniMD's (``state_dict``) files
  are not taken for it (:func:`matches`);
- rebuilds the momentkit config from the saved options, every switch of
  :data:`momentkit.models.ld_detr.OFFICIAL` at its official value (:func:`model_config`), and
  the experiment's data / optimiser / trainer sections (:func:`experiment_sections`);
- maps every official tensor by the explicit table :data:`RULES` (:func:`convert`); tensors the
  official forward never reads are listed in the report with the reason.

Options the official model ignores (it hard-codes them) are not read: 8 heads, feed-forward
width 1024, dropout 0.1 in the transformer and V2T Extractor, 0.5 in the unimodal encoders,
2-layer unimodal encoders, PReLU, momentum 0.995.
"""

from __future__ import annotations

import os
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
    jsonable,
    map_tensors,
    official_features_record,
    release_postprocess,
)

NAME = "ld_detr"
DESCRIPTION = "official LD-DETR checkpoints (qingchen239/ld-detr, ld_detr/train.py)"

#: tensor-name prefixes only an LD-DETR state dict has (all must be present)
SIGNATURE = (
    "convolutional_fuser.v2t_extractor.",
    "loop_decoder.transformer_decoder.",
    "prediction_heads.highlight_detection_prediction_head.",
)

#: official ``dset_name`` -> momentkit dataset
DATASETS = {
    "hl": "qvhighlights",
    "charadesSTA": "charades_sta",
    "tacos": "tacos",
    "tvsum": "tvsum",
}

#: official ``dset_name`` -> momentkit's best-checkpoint metric of that preset
BEST_METRIC = {"hl": "MR-full-mAP", "charadesSTA": "MR-R1@0.5", "tacos": "MR-R1@0.5"}

#: options the conversion needs (read from the file; a missing one is an error)
REQUIRED = (
    "v_feat_dim",
    "t_feat_dim",
    "hidden_dim",
    "num_queries",
    "queue_length",
    "distillation_coefficient",
    "num_v2t_encoder_layers",
    "num_encoder1_layers",
    "num_convolutional_blocks",
    "num_encoder2_layers",
    "num_decoder_layers",
    "num_decoder_loops",
)


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.t().contiguous()


def _squeeze_kernel(x: torch.Tensor) -> torch.Tensor:  # Conv1d(k=1) weight -> Linear weight
    return x.squeeze(-1)


def _flatten(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1)


_P = r"(?P<p>weight|bias)"
_ENCODERS = {
    "video_encoder": "video_encoder",
    "text_encoder": "text_encoder",
    "momentum_video_encoder": "distill_align.momentum_video_encoder",
    "momentum_text_encoder": "distill_align.momentum_text_encoder",
}
_FUSER = "convolutional_fuser"
_DEC = r"loop_decoder\.transformer_decoder"
_HEAD = r"prediction_heads\.video_moment_retrieval_prediction_head"
_HD = r"prediction_heads\.highlight_detection_prediction_head"
#: transformer-layer sub-names that keep their name (attention, norms, decoder projections)
_SAME = (
    r"(?P<rest>(self_attn|cross_attn)\.(in_proj_weight|in_proj_bias|out_proj\.weight|"
    r"out_proj\.bias)|norm[123]\.(weight|bias)|(sa|ca)_\w+\.(weight|bias))"
)
_FFN = r"(?P<ffn>linear1|linear2|activation)\.(?P<p>weight|bias)"


#: the unimodal encoder's modules -> InputProjection's (LayerNorm, dropout, Linear per layer)
_ENCODER_LAYERS = {
    "norm1": "0.norm",
    "linear1": "0.linear",
    "norm2": "1.norm",
    "linear2": "1.linear",
}


def _encoder_rules() -> list[TensorRule]:
    return [
        TensorRule(rf"{official}\.{name}\.{_P}", f"{ours}.layers.{layer}.{{p}}")
        for official, ours in _ENCODERS.items()
        for name, layer in _ENCODER_LAYERS.items()
    ]


def _layer_rules(official: str, ours: str, attention: str | None = None) -> list[TensorRule]:
    """Rules of a stack of transformer layers ``official.layers.i`` -> ``ours.layers.i``."""
    rules = []
    if attention is not None:  # the T2V layer's attention is self_attn there, cross_attn here
        attn = r"self_attn\.(?P<a>in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)"
        rules.append(
            TensorRule(
                rf"{official}\.layers\.(?P<i>\d+)\.{attn}", f"{ours}.layers.{{i}}.{attention}.{{a}}"
            )
        )
    rules += [
        TensorRule(rf"{official}\.layers\.(?P<i>\d+)\.{_SAME}", f"{ours}.layers.{{i}}.{{rest}}"),
        TensorRule(
            rf"{official}\.layers\.(?P<i>\d+)\.{_FFN}", f"{ours}.layers.{{i}}.ffn.{{ffn}}.{{p}}"
        ),
    ]
    return rules


def _rules() -> list[TensorRule]:
    v2t = rf"{_FUSER}\.v2t_extractor"
    rules = [
        TensorRule(
            r"txt_position_embed\..*",
            None,
            "text position embedding: the official forward reads it only with --use_txt_pos, "
            "otherwise the text positions are zeros (ld_detr/model.py, LD_DETR.forward)",
        ),
        *_encoder_rules(),
        TensorRule(r"distill_align\.temp", "distill_align.temperature"),
        TensorRule(r"distill_align\.vid_queue", "distill_align.video_queue.features", "", _t),
        TensorRule(r"distill_align\.txt_queue", "distill_align.text_queue.features", "", _t),
        TensorRule(r"distill_align\.queue_ptr", "distill_align.video_queue.ptr"),
        TensorRule(rf"distill_align\.h\.{_P}", "distill_align.predictor.{p}"),
        TensorRule(rf"{v2t}\.w4C", f"{_FUSER}.v2t.video_score.weight", "", _t),
        TensorRule(rf"{v2t}\.w4Q", f"{_FUSER}.v2t.text_score.weight", "", _t),
        TensorRule(rf"{v2t}\.w4mlu", f"{_FUSER}.v2t.joint_score", "", _flatten),
        TensorRule(rf"{v2t}\.weight", f"{_FUSER}.v2t.text_pool.weight", "", _t),
        TensorRule(rf"{v2t}\.cqa_linear\.weight", f"{_FUSER}.v2t.fuse.weight", "", _squeeze_kernel),
        TensorRule(rf"{v2t}\.cqa_linear\.bias", f"{_FUSER}.v2t.fuse.bias"),
        TensorRule(rf"{v2t}\.conv1d\.weight", f"{_FUSER}.v2t.output.weight", "", _squeeze_kernel),
        TensorRule(rf"{v2t}\.conv1d\.bias", f"{_FUSER}.v2t.output.bias"),
        *_layer_rules(rf"{_FUSER}\.t2v_encoder", f"{_FUSER}.t2v", attention="cross_attn"),
        *_layer_rules(rf"{_FUSER}\.transformer_encoder1", f"{_FUSER}.encoder1"),
        *_layer_rules(rf"{_FUSER}\.transformer_encoder2", f"{_FUSER}.encoder2"),
        TensorRule(
            rf"{_FUSER}\.convolutional_block\.blocks\.(?P<i>\d+)\.(?P<rest>(conv|bn)[12]\.\w+)",
            f"{_FUSER}.conv.blocks.{{i}}.{{rest}}",
        ),
        TensorRule(r"query_embed\.weight", "anchors.weight"),
        *_layer_rules(_DEC, "loop_decoder"),
        TensorRule(rf"{_DEC}\.norm\.{_P}", "loop_decoder.norm.{p}"),
        TensorRule(
            rf"{_DEC}\.(?P<m>query_scale|ref_point_head|ref_anchor_head)\.layers\.(?P<i>\d)\.{_P}",
            "loop_decoder.{m}.layers.{i}.{p}",
        ),
        TensorRule(
            rf"{_DEC}\.bbox_embed\.layers\.(?P<i>\d)\.{_P}",
            "loop_decoder.span_refine.layers.{i}.{p}",
        ),
        TensorRule(rf"{_HEAD}\.class_embed\.{_P}", "moment_head.class_embed.{p}"),
        TensorRule(rf"{_HEAD}\.span_embed1\.{_P}", "moment_head.span_embed.layers.0.{p}"),
        TensorRule(rf"{_HEAD}\.span_embed2\.{_P}", "moment_head.span_embed.layers.1.{p}"),
        TensorRule(rf"{_HEAD}\.span_embed3\.{_P}", "moment_head.span_embed.layers.2.{p}"),
        TensorRule(rf"{_HD}\.gru\.(?P<w>(weight|bias)_(ih|hh)_l0)", "highlight_head.gru.{w}"),
        TensorRule(rf"{_HD}\.saliency_proj\.{_P}", "highlight_head.saliency_proj.{p}"),
    ]
    return rules


#: the conversion table: official tensor name (regular expression) -> momentkit name
RULES: list[TensorRule] = _rules()

#: momentkit tensors no official tensor fills, and how they are obtained
DERIVED = {
    "distill_align.text_queue.ptr": "copied from distill_align.queue_ptr: the official code "
    "keeps one pointer for both queues",
    "distill_align.steps": "0 with align_alpha_warmup_steps 0: the official alpha ramp runs "
    "over the first epoch only, so a saved checkpoint continues at the full alpha",
}


# ------------------------------------------------------------------------------- detection
def _state(checkpoint: Mapping[str, Any]) -> Mapping[str, Any] | None:
    model = checkpoint.get("model")
    return model if isinstance(model, Mapping) else None


def _strip_module(state: Mapping[str, Any]) -> dict[str, Any]:
    """The state dict without a ``module.`` prefix that every key carries (DataParallel)."""
    keys = list(state)
    if keys and all(str(k).startswith("module.") for k in keys):
        return {str(k)[len("module.") :]: v for k, v in state.items()}
    return {str(k): v for k, v in state.items()}


def matches(checkpoint: Any, path: Path) -> bool:
    """Whether ``checkpoint`` is an LD-DETR ``train.py`` file: a ``model`` state dict with the
    tensor names of every :data:`SIGNATURE` prefix."""
    if not isinstance(checkpoint, Mapping):
        return False
    state = _state(checkpoint)
    if state is None:
        return False
    names = _strip_module(state)
    return all(any(k.startswith(prefix) for k in names) for prefix in SIGNATURE)


# ------------------------------------------------------------------------------------ config
def _options(checkpoint: Mapping[str, Any], path: Path) -> dict[str, Any]:
    from momentkit.interop.safe_pickle import UnreadableCheckpointError, options_to_dict

    if "opt" not in checkpoint:
        raise ConversionError(
            f"{path}: the file has LD-DETR weights but no saved training options ('opt'), "
            "which the conversion needs to rebuild the model. Convert a checkpoint written by "
            "ld_detr/train.py (model_best.ckpt / model_latest.ckpt)"
        )
    try:
        opt = options_to_dict(checkpoint["opt"])
    except UnreadableCheckpointError as e:
        raise ConversionError(f"{path}: field 'opt': {e}") from None
    missing = [k for k in REQUIRED if k not in opt]
    if missing:
        raise ConversionError(
            f"{path}: field 'opt' lacks {', '.join(missing)}: not the options of "
            "ld_detr/config.py. Check --from"
        )
    return opt


def _check_supported(opt: Mapping[str, Any], path: Path) -> None:
    problems = {
        "span_loss_type": (opt.get("span_loss_type", "l1") == "l1", "only 'l1' spans convert"),
        "use_txt_pos": (
            not opt.get("use_txt_pos", False),
            "the official text position embedding (LayerNorm of words + positions) has no "
            "momentkit counterpart",
        ),
        "position_embedding": (
            opt.get("position_embedding", "sine") == "sine",
            "only the sine video position encoding is built by the official model",
        ),
        "a_feat_dir": (
            not opt.get("a_feat_dir"),
            "the audio variant's loader appends the TEF to the audio features too "
            "(ld_detr/start_end_dataset_audio.py), so its encoder reads two TEF copies that "
            "its first LayerNorm normalises together; momentkit's pipeline appends one",
        ),
    }
    for name, (ok, why) in problems.items():
        if not ok:
            raise ConversionError(
                f"{path}: option '{name}' = {opt.get(name)!r} is not supported: {why}"
            )


def model_config(opt: Mapping[str, Any]) -> Any:
    """The :class:`~momentkit.models.ld_detr.LDDETRConfig` of the saved options (official
    variant: every switch of :data:`~momentkit.models.ld_detr.OFFICIAL` on)."""
    from momentkit.modeling.criterion import LossConfig
    from momentkit.modeling.matcher import MatcherConfig
    from momentkit.models.ld_detr import OFFICIAL, LDDETRConfig

    dataset = opt.get("dset_name", "hl")
    lw_saliency = float(opt.get("lw_saliency", 1.0))
    loss = LossConfig(
        losses=[
            "spans",
            "labels_sigmoid_focal",
            "saliency_margin",
            "saliency_rank_contrastive",
            "distill_align",
            "distill_sim",
        ],
        aux_loss=bool(opt.get("aux_loss", True)),
        eos_coef=float(opt.get("eos_coef", 0.1)),
        saliency_margin=float(opt.get("saliency_margin", 0.2)),
        # the official labels are annotator sums (QVHighlights) or 0/1 windows; momentkit's
        # saliency_all_labels are annotator means
        rank_label_scale=3.0 if dataset == "hl" else 1.0,
    )
    loss.weights.update(
        loss_span=float(opt.get("span_loss_coef", 10.0)),
        loss_giou=float(opt.get("giou_loss_coef", 1.0)),
        loss_label=float(opt.get("label_loss_coef", 4.0)),
        loss_align=float(opt.get("align_loss_coef", 0.6)),
        loss_sim=float(opt.get("sim_loss_coef", 0.6)),
        loss_saliency_margin=lw_saliency,
        loss_saliency_rank=lw_saliency,
    )
    max_v = int(opt.get("max_v_l", 75))
    return LDDETRConfig(
        video_dim=int(opt["v_feat_dim"]),
        text_dim=int(opt["t_feat_dim"]),
        max_video_len=max_v if max_v > 0 else 75,
        max_text_len=int(opt.get("max_q_l", 32)),
        hidden_dim=int(opt["hidden_dim"]),
        num_queries=int(opt["num_queries"]),
        t2v_layers=int(opt["num_v2t_encoder_layers"]),
        enc_layers=int(opt["num_encoder1_layers"]),
        conv_blocks=int(opt["num_convolutional_blocks"]),
        enc2_layers=int(opt["num_encoder2_layers"]),
        dec_layers=int(opt["num_decoder_layers"]),
        decoder_loops=int(opt["num_decoder_loops"]),
        align_queue_size=int(opt["queue_length"]),
        align_alpha=float(opt["distillation_coefficient"]),
        align_alpha_warmup_steps=0,
        loss=loss,
        matcher=MatcherConfig(
            cost_span=float(opt.get("set_cost_span", 10.0)),
            cost_giou=float(opt.get("set_cost_giou", 1.0)),
            cost_class=float(opt.get("set_cost_class", 4.0)),
        ),
        postprocess=release_postprocess(dataset, int(opt["v_feat_dim"])),
        **OFFICIAL,
    )


def _stream(directory: Any) -> str:
    """A feature directory of the official options as a stream name (its last component)."""
    return os.path.basename(str(directory).rstrip("/\\")) or str(directory)


def experiment_sections(opt: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The data / optim / trainer sections of ``experiment.json`` from the saved options.

    Feature directories become stream names (their last path component, e.g.
    ``slowfast_features``): point ``--video-features`` / ``--text-features`` at your copies.
    """
    dataset = opt.get("dset_name", "hl")
    streams = [_stream(d) for d in opt.get("v_feat_dirs") or []]
    max_v = int(opt.get("max_v_l", 75))
    data: dict[str, Any] = {
        "dataset": DATASETS.get(dataset, "qvhighlights"),
        "video_features": streams,
        "text_features": _stream(opt["t_feat_dir"]) if opt.get("t_feat_dir") else None,
        "max_v_len": max_v if max_v > 0 else None,
        "max_q_len": int(opt.get("max_q_l", 32)),
        "clip_len": float(opt.get("clip_length", 2)),
        "use_tef": "tef" in str(opt.get("ctx_mode", "video_tef")),
        "normalize_video": not opt.get("no_norm_vfeat", False),
        "normalize_text": not opt.get("no_norm_tfeat", False),
        "eval_batch_size": int(opt.get("bsz", 32)),
    }
    optim = {
        "lr": float(opt.get("lr", 1e-4)),
        "weight_decay": float(opt.get("wd", 1e-4)),
        "scheduler": "cosine",
        "grad_clip": float(opt.get("grad_clip", 0.1)),
    }
    trainer: dict[str, Any] = {
        "epochs": int(opt.get("n_epoch", 250)),
        "batch_size": int(opt.get("bsz", 32)),
        "best_metric": BEST_METRIC.get(dataset, "auto"),
    }
    if isinstance(opt.get("seed"), int):
        trainer["seed"] = opt["seed"]
    patience = opt.get("max_es_cnt")
    if isinstance(patience, int):
        trainer["patience"] = None if patience < 0 else patience
    return {"data": data, "optim": optim, "trainer": trainer}


# --------------------------------------------------------------------------------- convert
def convert(checkpoint: Any, path: Path, **options: Any) -> Converted:
    """Build the momentkit LD-DETR (official variant) holding the checkpoint's weights.

    Raises:
        ConversionError: missing options, an unsupported option, an unknown tensor, a shape
            the options do not explain.
    """
    from momentkit.models.ld_detr import LDDETR

    if options:
        raise ConversionError(
            f"{path}: LD-DETR checkpoints take no conversion options (got {', '.join(options)})"
        )
    state = _state(checkpoint)
    if state is None:
        raise ConversionError(f"{path}: no 'model' state dict: not an LD-DETR train.py checkpoint")
    state = _strip_module(state)
    opt = _options(checkpoint, path)
    _check_supported(opt, path)
    try:
        config = model_config(opt)
        model = LDDETR(config)
    except ValueError as e:
        raise ConversionError(
            f"{path}: field 'opt': the saved options give an invalid model: {e}"
        ) from None
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(state):
        odd = [k for k in state if k not in tensors][:5]
        raise ConversionError(f"{path}: field 'model': entries that are not tensors: {odd}")
    mapped_state, mapped, unused = map_tensors(tensors, RULES, model, source=path, derived=DERIVED)
    mapped_state["distill_align.text_queue.ptr"] = mapped_state[
        "distill_align.video_queue.ptr"
    ].clone()
    model.load_state_dict(mapped_state)
    model.eval()
    read = sorted(set(REQUIRED) | {k for k in _OPTIONAL if k in opt})
    report = ConversionReport(
        source=NAME,
        checkpoint=str(path),
        model="ld_detr",
        mapped=mapped,
        unused=unused,
        derived=[[k, v] for k, v in DERIVED.items()],
        options={k: jsonable(opt[k]) for k in read},
        notes=_notes(checkpoint, opt),
    )
    experiment = experiment_dict(config, **experiment_sections(opt))
    data = experiment["data"]
    features = official_features_record(
        data["video_features"], data["text_features"], data["clip_len"]
    )
    return Converted(model=model, experiment=experiment, report=report, features=features)


#: options read when present (defaults of ld_detr/config.py otherwise)
_OPTIONAL = (
    "dset_name",
    "ctx_mode",
    "v_feat_dirs",
    "t_feat_dir",
    "clip_length",
    "max_v_l",
    "max_q_l",
    "aux_loss",
    "span_loss_coef",
    "giou_loss_coef",
    "label_loss_coef",
    "align_loss_coef",
    "sim_loss_coef",
    "lw_saliency",
    "saliency_margin",
    "eos_coef",
    "set_cost_span",
    "set_cost_giou",
    "set_cost_class",
    "lr",
    "wd",
    "bsz",
    "n_epoch",
    "grad_clip",
    "max_es_cnt",
    "seed",
    "no_norm_vfeat",
    "no_norm_tfeat",
)


def _notes(checkpoint: Mapping[str, Any], opt: Mapping[str, Any]) -> list[str]:
    notes = []
    if "epoch" in checkpoint:
        notes.append(f"saved after epoch {checkpoint['epoch']} (0-based)")
    notes.append(
        "decoder_loops keeps the saved num_decoder_loops, but the official decoder decodes once "
        "(decoder_form=official); set model.decoder_form=paper for the paper's loops"
    )
    dataset = opt.get("dset_name", "hl")
    if dataset not in BEST_METRIC:
        notes.append(
            f"dset_name {dataset!r}: the release trains it with the saliency loss only (no "
            "matching); the converted config keeps every loss of the other datasets"
        )
    return notes
