"""Checkpoints of the official MS-DETR code (snailma0229/MS-DETR, ``ms_detr/train.py``).

``train.py`` saves ``torch.save({"model", "optimizer", "lr_scheduler", "epoch", "opt"})`` with
``opt`` the ``argparse.Namespace`` of ``ms_detr/config.py`` (holding a ``torch.device``) and the
tensors on ``cuda:0``. The file is read through the allow-list of
:mod:`momentkit.interop.safe_pickle`; the momentkit config is rebuilt from the saved options
(:func:`config_from_options`, every switch at the release's value, docs/ms_detr.md) and every
tensor is placed by the explicit table :func:`tensor_rules`.

The release's state dict lists tied tensors under several names (``span_embed.<layer>``,
``class_embed.<layer>``: one head shared by the decoder layers); they map to one momentkit
tensor, which is refused if the copies differ. Tensors the release's forward never reads are
listed in the report with the reason (``input_vid_proj`` and the main transformer's
``t2v_encoder`` with ``--use_sf``, ``txt_position_embed`` without ``--use_txt_pos``, ...).

Refused, with the option named: ``span_loss_type ce``, ``pre_norm`` (the release's pre-norm
cross-modal layer hard-codes 75 clips), ``use_txt_pos``, audio features (``a_feat_dir``),
``position_embedding`` other than ``sine``, a ``ctx_mode`` without TEF under ``--use_sf`` (the
release slices the last two channels as TEF whatever they hold), feature widths that do not fit
the release's fixed stream offsets, ``scalar >= 100`` (groups that depend on the batch).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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

NAME = "ms_detr"
DESCRIPTION = "snailma0229/MS-DETR train.py checkpoints ({model, optimizer, ..., opt: Namespace})"

#: options every MS-DETR ``opt`` has (ms_detr/config.py) and LD-DETR's / Lighthouse's do not
MS_DETR_OPTIONS = frozenset(
    {"use_sf", "use_tgt", "use_dn", "cross_enc_layers", "slowfast_dim", "clip_dim", "interm_neg"}
)
#: dset_name -> momentkit dataset
DATASETS = {
    "hl": "qvhighlights",
    "charadesSTA": "charades_sta",
    "tacos": "tacos",
    "tvsum": "tvsum",
    "youtube_uni": "youtube_highlights",
}
#: the release's channel offsets of the SlowFast / CLIP streams (model.py forward_sf_clip)
STREAM_OFFSETS = {"tvsum": (1024, 2048)}
DEFAULT_OFFSETS = (2304, 2816)
#: datasets whose saliency labels the release sums over 3 annotators (momentkit: the mean)
SUMMED_SALIENCY = {"hl": 3.0}
#: datasets on which the release computes no denoising / interm loss (SetCriterion.forward)
HD_ONLY = ("tvsum", "youtube_uni")


def _options(checkpoint: Any) -> dict[str, Any] | None:
    opt = checkpoint.get("opt") if isinstance(checkpoint, Mapping) else None
    return dict(vars(opt)) if isinstance(opt, argparse.Namespace) else None


def matches(checkpoint: Any, path: Path) -> bool:
    """An MS-DETR ``train.py`` file: ``model`` tensors with the release's names and an
    ``argparse.Namespace`` ``opt`` holding MS-DETR's own options (LD-DETR's Namespace lacks
    them, Lighthouse saves an EasyDict, UniMD a ``state_dict``)."""
    options = _options(checkpoint)
    model = checkpoint.get("model") if isinstance(checkpoint, Mapping) else None
    if options is None or not isinstance(model, Mapping):
        return False
    return MS_DETR_OPTIONS <= options.keys() and "global_rep_token" in model


# ----------------------------------------------------------------------------------- options
def _require(options: Mapping[str, Any], path: Path) -> None:
    """Refuse options momentkit cannot reproduce (module docstring)."""
    refusals = {
        "span_loss_type": (options.get("span_loss_type", "l1") != "l1", "'ce' span classes"),
        "pre_norm": (bool(options.get("pre_norm")), "pre-norm layers (the release's pre-norm "
                     "cross-modal layer hard-codes 75 clips and prints every call)"),
        "use_txt_pos": (bool(options.get("use_txt_pos")), "the release's learned text positions "
                        "(with their own LayerNorm and dropout)"),
        "a_feat_dir": (options.get("a_feat_dir") is not None, "audio features"),
        "position_embedding": (options.get("position_embedding", "sine") != "sine",
                               "a video position encoding other than 'sine'"),
        "scalar": (int(options.get("scalar", 10)) >= 100,
                   "denoising groups derived from each batch (scalar >= 100)"),
        "ctx_mode": (bool(options.get("use_sf")) and "tef" not in options.get("ctx_mode", ""),
                     "--use_sf without TEF (the release slices the last 2 channels as TEF)"),
    }  # fmt: skip
    for name, (bad, what) in refusals.items():
        if bad:
            raise ConversionError(
                f"{path}: the checkpoint's option {name}={options.get(name)!r} selects {what}, "
                "which momentkit's MS-DETR does not implement; it cannot be converted"
            )


def _stream_dims(options: Mapping[str, Any], path: Path) -> list[int]:
    """``model.stream_dims`` reproducing the release's fixed offsets, or an error."""
    video_dim = int(options["v_feat_dim"])
    first, second = STREAM_OFFSETS.get(options.get("dset_name"), DEFAULT_OFFSETS)
    widths = (int(options["slowfast_dim"]), int(options["clip_dim"]))
    if video_dim != second + 2 or widths != (first + 2, second - first + 2):
        raise ConversionError(
            f"{path}: with --use_sf the release cuts the video channels at {first} and {second} "
            f"and appends the last 2 (TEF) to each stream, but the checkpoint was trained on "
            f"v_feat_dim={video_dim}, slowfast_dim={widths[0]}, clip_dim={widths[1]} (expected "
            f"{second + 2}, {first + 2}, {second - first + 2}); momentkit cannot reproduce "
            "that model"
        )
    return [first, second - first]


def config_from_options(options: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The momentkit ``MSDETRConfig`` dict of a release checkpoint's options.

    Every switch that differs between the paper and the release takes the release's value;
    the losses and weights are the release's ``build_model`` weight dict.
    """
    _require(options, path)
    o = options
    use_sf, use_tgt, use_dn = bool(o["use_sf"]), bool(o["use_tgt"]), bool(o["use_dn"])
    dset = o.get("dset_name")
    span, giou, label = (float(o[k]) for k in ("span_loss_coef", "giou_loss_coef",
                                               "label_loss_coef"))  # fmt: skip
    interm = float(o.get("interm_loss_coef", 1.0))
    saliency = float(o["lw_saliency"])
    losses = ["saliency_margin", "saliency_rank_contrastive", "saliency_neg_pair"]
    if dset != "tvsum":  # the release's TVSum criterion has no matcher: saliency only
        losses = ["spans", "labels", *losses, "decoder_negatives"]
    if dset not in HD_ONLY:  # denoising and interm losses (SetCriterion.forward)
        if use_dn:
            losses.append("denoising")
        if use_tgt and o.get("use_interm"):
            losses += ["query_selection", "query_selection_negatives"]
    max_v = int(o.get("max_v_l", 75))
    max_q = int(o.get("max_q_l", 32))
    return {
        "name": "ms_detr",
        "video_dim": int(o["v_feat_dim"]),
        "text_dim": int(o["t_feat_dim"]),
        "max_video_len": max_v if max_v > 0 else 75,
        "max_text_len": max_q if max_q > 0 else 100,
        "hidden_dim": int(o["hidden_dim"]),
        "num_queries": int(o["num_queries"]),
        "nheads": int(o["nheads"]),
        "enc_layers": int(o["enc_layers"]),
        "dec_layers": int(o["dec_layers"]),
        "dim_feedforward": int(o["dim_feedforward"]),
        "dropout": float(o["dropout"]),
        "input_dropout": float(o["input_dropout"]),
        "n_input_proj": int(o["n_input_proj"]),
        "activation": "prelu",
        "position_embedding": "sine",
        "use_text_pos": False,
        # without --use_sf the release's T2V layers are the main transformer's (enc_layers)
        "cross_layers": int(o["cross_enc_layers"] if use_sf else o["enc_layers"]),
        "stream_dims": _stream_dims(o, path) if use_sf else [],
        "use_msde": use_sf,
        "fuse_dropout": float(o["input_dropout"]),
        "sentence_token": "before_fusion",
        "use_mtcd": use_tgt,
        "mtcd_content": "learned",
        "mtcd_rank": "class_logit",
        "mtcd_candidates": "all",
        "mtcd_min_anchor_width": 0.0,
        "selection_init": "release",
        "saliency_refinement": "off",
        "use_denoising": use_dn,
        "denoising": {
            "num_groups": max(1, int(o.get("scalar", 10))),
            "span_noise": float(o.get("box_noise_scale", 0.5)),
            "label_noise": float(o.get("label_noise_scale", 0.0)),
            "focal_alpha": float(o.get("focal_alpha", 0.25)),
        },
        "denoising_negatives": bool(o.get("use_dn_neg")),
        "denoising_targets": "last_video",
        "denoising_source": "negative_pairs" if o.get("use_decoder_neg") else "matched",
        "decoder_negatives": bool(o.get("use_decoder_neg")),
        "selection_negatives": bool(o.get("interm_neg")) and use_tgt,
        "use_corpus": False,
        "t2v_mask": "tiled",
        "project_padding": True,
        "postprocess": release_postprocess(dset, int(o["v_feat_dim"])),
        "loss": {
            "losses": losses,
            "aux_loss": bool(o.get("aux_loss", True)),
            "eos_coef": float(o["eos_coef"]),
            "saliency_margin": float(o["saliency_margin"]),
            "rank_label_scale": SUMMED_SALIENCY.get(dset, 1.0),
            "weights": {
                "loss_span": span,
                "loss_giou": giou,
                "loss_label": label,
                "loss_saliency_margin": saliency,
                "loss_saliency_rank": saliency,
                "loss_saliency_neg": saliency,
                "loss_dn_span": span,
                "loss_dn_giou": giou,
                "loss_dn_label": label,
                "loss_enc_span": span * interm,
                "loss_enc_giou": giou * interm,
                "loss_enc_label": label * interm,
                "loss_label_neg": label,
                "loss_enc_label_neg": label * interm,
            },
        },
        "matcher": {
            "cost_span": float(o["set_cost_span"]),
            "cost_giou": float(o["set_cost_giou"]),
            "cost_class": float(o["set_cost_class"]),
        },
    }


def experiment_sections(options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The data / optim / trainer sections of the release's training run."""
    o = options
    max_v, max_q = int(o.get("max_v_l", 75)), int(o.get("max_q_l", 32))
    patience = int(o.get("max_es_cnt", 200))
    return {
        "data": {
            "dataset": DATASETS.get(o.get("dset_name"), "qvhighlights"),
            "clip_len": float(o.get("clip_length", 2)),
            "max_v_len": max_v if max_v > 0 else None,
            "max_q_len": max_q if max_q > 0 else None,
            "use_tef": "tef" in o.get("ctx_mode", "video_tef"),
            "normalize_video": not o.get("no_norm_vfeat", False),
            "normalize_text": not o.get("no_norm_tfeat", False),
            "eval_batch_size": int(o.get("eval_bsz", 100)),
            # the release reads SlowFast then CLIP at fixed channel offsets: the released
            # QVHighlights-style folders unless the options name others
            "video_features": [str(d) for d in o.get("v_feat_dirs") or ("slowfast", "clip")],
            "text_features": str(o.get("t_feat_dir") or "clip_text"),
        },
        "optim": {
            "lr": float(o.get("lr", 1e-4)),
            "weight_decay": float(o.get("wd", 1e-4)),
            "scheduler": "step",
            "lr_drop": int(o.get("lr_drop", 400)),
            "grad_clip": float(o.get("grad_clip", 0.1)),
        },
        "trainer": {
            "epochs": int(o.get("n_epoch", 400)),
            "batch_size": int(o.get("bsz", 32)),
            "seed": int(o.get("seed", 2018)),
            "patience": patience if patience > 0 else None,
        },
    }


# ------------------------------------------------------------------------------------ tensors
_LINEAR = r"(?P<p>weight|bias)"
_NOT_READ_SF = "forward_sf_clip (--use_sf) never reads it: only the single-stream forward does"


def _projection(official: str, target: str) -> list[TensorRule]:
    """The release's ``LinearLayer`` stacks (``.LayerNorm`` + ``.net.1``)."""
    return [
        TensorRule(
            rf"{official}\.(?P<i>\d)\.LayerNorm\.{_LINEAR}", target + ".layers.{i}.norm.{p}"
        ),
        TensorRule(rf"{official}\.(?P<i>\d)\.net\.1\.{_LINEAR}", target + ".layers.{i}.linear.{p}"),
    ]


def _ffn_layer(official: str, target: str, attention: str) -> list[TensorRule]:
    """A post-norm layer: ``self_attn`` (nn.MultiheadAttention), ``linear1/2``, ``norm1/2``,
    the PReLU ``activation``."""
    layer = rf"{official}\.layers\.(?P<l>\d+)"
    out = target + ".layers.{l}"
    return [
        TensorRule(rf"{layer}\.self_attn\.(?P<p>in_proj_weight|in_proj_bias|out_proj\.weight|"
                   r"out_proj\.bias)", out + f".{attention}" + ".{p}"),
        TensorRule(rf"{layer}\.(?P<n>linear1|linear2)\.{_LINEAR}", out + ".ffn.{n}.{p}"),
        TensorRule(rf"{layer}\.activation\.weight", out + ".ffn.activation.weight"),
        TensorRule(rf"{layer}\.(?P<n>norm\d)\.{_LINEAR}", out + ".{n}.{p}"),
    ]  # fmt: skip


def tensor_rules(config: Mapping[str, Any]) -> list[TensorRule]:
    """The conversion table of a checkpoint whose momentkit config is ``config``."""
    sf, tgt = config["use_msde"], config["use_mtcd"]
    dec = r"transformer\.decoder"
    rules = [
        TensorRule(r"global_rep_token", "sentence_token"),
        TensorRule(r"global_rep_pos", "sentence_pos"),
        *_projection("input_txt_proj", "text_proj"),
        *_ffn_layer(r"transformer\.encoder", "encoder", "self_attn"),
        TensorRule(r"saliency_proj1\." + _LINEAR, "saliency.clip_proj.{p}"),
        TensorRule(r"saliency_proj2\." + _LINEAR, "saliency.sentence_proj.{p}"),
        # the anchor decoder (DAB-DETR layers; bbox_embed refines the anchors layer by layer)
        TensorRule(rf"{dec}\.layers\.(?P<l>\d+)\.(?P<n>(sa|ca)_\w+_proj|norm\d)\.{_LINEAR}",
                   "mtcd.decoder.layers.{l}.{n}.{p}"),
        TensorRule(rf"{dec}\.layers\.(?P<l>\d+)\.(?P<n>self_attn|cross_attn)\.out_proj\.{_LINEAR}",
                   "mtcd.decoder.layers.{l}.{n}.out_proj.{p}"),
        TensorRule(rf"{dec}\.layers\.(?P<l>\d+)\.(?P<n>linear1|linear2)\.{_LINEAR}",
                   "mtcd.decoder.layers.{l}.ffn.{n}.{p}"),
        TensorRule(rf"{dec}\.layers\.(?P<l>\d+)\.activation\.weight",
                   "mtcd.decoder.layers.{l}.ffn.activation.weight"),
        TensorRule(rf"{dec}\.norm\.{_LINEAR}", "mtcd.decoder.norm.{p}"),
        TensorRule(rf"{dec}\.(?P<n>query_scale|ref_point_head|ref_anchor_head)\.layers\."
                   rf"(?P<j>\d)\.{_LINEAR}", "mtcd.decoder.{n}.layers.{j}.{p}"),
        TensorRule(rf"{dec}\.bbox_embed\.layers\.(?P<j>\d)\.{_LINEAR}",
                   "mtcd.decoder.span_refine.layers.{j}.{p}"),
        # one prediction head shared by every decoder layer (listed once per layer)
        TensorRule(rf"span_embed\.\d+\.layers\.(?P<j>\d)\.{_LINEAR}",
                   "mtcd.head.span_embed.layers.{j}.{p}", "tied: one head for every layer"),
        TensorRule(rf"class_embed\.\d+\.{_LINEAR}", "mtcd.head.class_embed.{p}",
                   "tied: one head for every layer"),
        TensorRule(r"label_enc\.weight", "mtcd.label_embed.weight"),
        TensorRule(r"txt_position_embed\..*", None,
                   "--use_txt_pos is off: the release never adds text positions"),
        TensorRule(r"contrastive_align_projection_\w+\..*", None,
                   "only the contrastive-align loss reads it (not a prediction)"),
    ]  # fmt: skip
    if sf:
        rules += [
            *_projection("input_slowfast_vid_proj", "msde.branches.motion.proj"),
            *_projection("input_clip_vid_proj", "msde.branches.semantic.proj"),
            *_projection("concat_vid_proj", "msde.fuse"),
            *_ffn_layer(r"transformer_sf\.t2v_encoder", "msde.branches.motion.cross", "cross_attn"),
            *_ffn_layer(r"transformer_clip\.t2v_encoder", "msde.branches.semantic.cross",
                        "cross_attn"),
            TensorRule(r"input_vid_proj\..*", None, _NOT_READ_SF),
            TensorRule(r"transformer\.t2v_encoder\..*", None, _NOT_READ_SF),
        ]  # fmt: skip
    else:
        rules += [
            *_projection("input_vid_proj", "msde.branches.shared.proj"),
            *_ffn_layer(r"transformer\.t2v_encoder", "msde.branches.shared.cross", "cross_attn"),
        ]
    if tgt:
        rules += [
            TensorRule(rf"transformer\.enc_output\.{_LINEAR}", "mtcd.selection.enc_output.{p}"),
            TensorRule(rf"transformer\.enc_output_norm\.{_LINEAR}", "mtcd.selection.enc_norm.{p}"),
            TensorRule(rf"transformer\.enc_out_span_embed\.layers\.(?P<j>\d)\.{_LINEAR}",
                       "mtcd.selection.span_embed.layers.{j}.{p}"),
            TensorRule(rf"transformer\.enc_out_class_embed\.{_LINEAR}",
                       "mtcd.selection.class_embed.{p}"),
            TensorRule(r"tgt_embed\.weight", "mtcd.selection.content.weight"),
        ]  # fmt: skip
    else:
        rules.append(TensorRule(r"query_embed\.weight", "mtcd.anchors.weight"))
    return rules


def convert(checkpoint: Any, path: Path, **options: Any) -> Converted:
    """Build the momentkit MS-DETR a release checkpoint holds (weights loaded, eval mode).

    Raises:
        ConversionError: unsupported options, unknown tensors, shapes or tied copies that
            differ, or a file that is not an MS-DETR ``train.py`` checkpoint.
    """
    from momentkit.models.base import build_model
    from momentkit.models.ms_detr import MSDETRConfig

    if options:
        raise ConversionError(
            f"{path}: MS-DETR checkpoints take no conversion options (got {sorted(options)})"
        )
    opt = _options(checkpoint)
    if opt is None or not isinstance(checkpoint.get("model"), Mapping):
        raise ConversionError(
            f"{path}: not an MS-DETR train.py checkpoint (expected 'model' tensors and an "
            "argparse 'opt')"
        )
    missing = sorted(
        {"v_feat_dim", "t_feat_dim", "hidden_dim", "num_queries", "nheads", "enc_layers",
         "dec_layers", "dim_feedforward", "dropout", "input_dropout", "n_input_proj",
         "span_loss_coef", "giou_loss_coef", "label_loss_coef", "eos_coef", "lw_saliency",
         "saliency_margin", "set_cost_span", "set_cost_giou", "set_cost_class"} - opt.keys()
    )  # fmt: skip
    if missing:
        raise ConversionError(
            f"{path}: the saved options lack {', '.join(missing)}; the file is not from "
            "MS-DETR's train.py (or was edited)"
        )
    data = config_from_options(opt, path)
    try:
        config = MSDETRConfig.from_dict(data, source=path)
        model = build_model(config)
    except ValueError as e:
        raise ConversionError(f"{path}: the saved options give no valid model: {e}") from None
    official = checkpoint["model"]
    derived = {} if "label_enc.weight" in official else {
        "mtcd.label_embed.weight": "not in the checkpoint (no denoising): never read"
    }  # fmt: skip
    state, mapped, unused = map_tensors(
        official, tensor_rules(data), model, source=path, derived=derived
    )
    model.load_state_dict(state)
    model.eval()
    report = ConversionReport(
        source=NAME,
        checkpoint=str(path),
        model="ms_detr",
        mapped=mapped,
        unused=unused,
        derived=[[k, v] for k, v in derived.items()],
        options={k: jsonable(v) for k, v in sorted(opt.items())},
        notes=_notes(checkpoint, opt),
    )
    experiment = experiment_dict(config, **experiment_sections(opt))
    data = experiment["data"]
    features = official_features_record(
        data["video_features"], data["text_features"], data["clip_len"]
    )
    return Converted(model, experiment, report, features=features)


def _notes(checkpoint: Mapping[str, Any], opt: Mapping[str, Any]) -> list[str]:
    notes = [f"saved at epoch {checkpoint.get('epoch')} of the release's training"]
    if opt.get("use_neg_captions"):
        notes.append(
            "trained with --use_neg_captions (generated negative captions as the negative "
            "pairs): training-only, predictions are unaffected"
        )
    if not opt.get("use_sf"):
        notes.append(
            "trained without --use_sf: the release's single-stream forward (momentkit "
            "use_msde=false)"
        )
    return notes
