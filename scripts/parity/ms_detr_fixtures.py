"""Write MS-DETR golden parity fixtures from the official code (not run by CI).

    python3 scripts/parity/ms_detr_fixtures.py --official-dir /path/to/MS-DETR \
        --out tests/fixtures/parity/

For every preset of the release (``ms_detr/scripts/train.sh`` for QVHighlights,
``charades/train.sh`` and ``tacos/train_val.sh`` with train.sh's model flags, as momentkit's
presets, and ``charades/train.sh`` bare, as released), the script builds the official model from
the release's own option parser at the smallest size its code allows (hidden 256: the decoder
hard-codes 128 sine channels per coordinate; 1 cross-modal and 1 encoder layer, 2 decoder layers
for the auxiliary losses, FFN 64, 32-d query tokens; with ``--use_sf`` the video keeps the real
2304 + 512 + 2 channels, which the release cuts at fixed offsets), loads
:func:`momentkit.interop.parity.random_state` weights (every tensor randomised, norms and PReLU
slopes included; tied heads equal), and records on 2-3 videos (one padded):

- ``eval.*``: outputs of the padded batch in eval mode; ``single<i>.*``: each video alone;
- ``train.*``: outputs in training mode with every dropout at 0, the denoising noise the
  release drew (``dn_sign_bits``, ``dn_magnitude``: replayed on the momentkit side), the official
  losses and the signature of every gradient after one backward pass of the weighted total.

The slowfast channels are stored as a 64-channel block tiled 36 times (``video_core``; the rest
of the channels in ``video_tail``) to keep each fixture small; ``official_video`` rebuilds them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ms_detr_env import cpu_only, import_ms_detr  # noqa: E402

from momentkit.interop.parity import random_state, save_fixture, state_shapes  # noqa: E402

SEED = 30
CORE, TILES = 64, 36  # 64 * 36 = 2304 SlowFast channels
SMALL = [
    "--hidden_dim", "256", "--nheads", "8", "--enc_layers", "1", "--cross_enc_layers", "1",
    "--dec_layers", "2", "--dim_feedforward", "64", "--t_feat_dim", "32", "--device", "-1",
]  # fmt: skip
TRAIN_SH = [
    "--use_dn", "--use_tgt", "--use_sf", "--use_decoder_neg", "--interm_neg", "--use_interm",
    "--eval_epoch", "1", "--num_queries", "20",
]  # fmt: skip
CHARADES = [
    "--dset_name", "charadesSTA", "--ctx_mode", "video_tef", "--bsz", "32", "--max_v_l", "-1",
    "--max_q_l", "-1", "--clip_length", "1", "--n_epoch", "400", "--eval_bsz", "32",
    "--num_patterns", "0", "--focal_alpha", "0.25",
]  # fmt: skip
TACOS = [
    "--dset_name", "tacos", "--ctx_mode", "video_tef", "--bsz", "32", "--max_v_l", "-1",
    "--max_q_l", "-1", "--clip_length", "2", "--n_epoch", "400", "--eval_bsz", "32",
    "--num_patterns", "0", "--focal_alpha", "0.25",
]  # fmt: skip

#: preset -> (options, clips per video, words per query, targets per video, summed saliency)
PRESETS: dict[str, dict[str, Any]] = {
    "qvhighlights": {
        "args": ["--dset_name", "hl", "--v_feat_dim", "2816", *TRAIN_SH],
        "clips": [52, 30],  # 52 clips: the first and last proposals fall outside (0.01, 0.99)
        "words": [7, 4],
        "targets": [[[0.30, 0.20], [0.70, 0.10]], [[0.55, 0.30]]],
        "summed_saliency": True,
    },
    "charades_sta": {
        "args": [*CHARADES, "--v_feat_dim", "2816", *TRAIN_SH],
        "clips": [24, 20, 22],
        "words": [6, 8, 5],
        "targets": [[[0.40, 0.30]], [[0.25, 0.20]], [[0.60, 0.35]]],
        "summed_saliency": False,
    },
    "tacos": {
        "args": [*TACOS, "--v_feat_dim", "2816", *TRAIN_SH],
        "clips": [32, 21, 26],
        "words": [9, 5, 7],
        "targets": [[[0.50, 0.20]], [[0.35, 0.25], [0.80, 0.10]], [[0.45, 0.30]]],
        "summed_saliency": False,
    },
    # charades/train.sh run as released (no model flags): the single-stream baseline
    "charades_sta_bare": {
        "args": [*CHARADES, "--v_feat_dim", "16"],
        "clips": [12, 9, 11],
        "words": [6, 8, 5],
        "targets": [[[0.40, 0.30]], [[0.25, 0.20]], [[0.60, 0.35]]],
        "summed_saliency": False,
    },
}


def parse_options(modules: dict[str, Any], args: list[str]) -> argparse.Namespace:
    """The release's options: its parser, then what ``BaseOptions.parse`` derives (TEF
    channels, device), without its side effects (result directories, code zips)."""
    base = modules["config"].BaseOptions()
    base.initialize()
    opt = base.parser.parse_args(args)
    opt.use_tef, opt.use_video = "tef" in opt.ctx_mode, "video" in opt.ctx_mode
    if opt.use_tef:
        opt.v_feat_dim += 2
    opt.device = torch.device("cpu")
    opt.pin_memory = False
    return opt


def make_inputs(spec: dict[str, Any], opt: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Random inputs, masks and targets of one preset (video rows padded with zeros)."""
    g = torch.Generator().manual_seed(seed)
    clips, words = spec["clips"], spec["words"]
    b, t, n = len(clips), max(clips), max(words)
    video_mask = torch.arange(t)[None] < torch.tensor(clips)[:, None]
    text_mask = torch.arange(n)[None] < torch.tensor(words)[:, None]
    tef = torch.zeros(b, t, 2)
    for i, length in enumerate(clips):
        start = torch.arange(length) / length
        tef[i, :length] = torch.stack([start, start + 1.0 / length], dim=1)
    inputs: dict[str, Any] = {"tef": tef}
    if opt.use_sf:
        inputs["video_core"] = torch.randn(b, t, CORE, generator=g) * video_mask[..., None]
        inputs["video_clip"] = torch.randn(b, t, 512, generator=g) * video_mask[..., None]
    else:
        width = opt.v_feat_dim - 2
        inputs["video_plain"] = torch.randn(b, t, width, generator=g) * video_mask[..., None]
    inputs["text"] = torch.randn(b, n, opt.t_feat_dim, generator=g) * text_mask[..., None]
    inputs["video_mask"] = video_mask.float()
    inputs["text_mask"] = text_mask.float()
    top = 12 if spec["summed_saliency"] else 1  # QVHighlights: 3 annotators' scores summed
    saliency = torch.randint(0, top + 1, (b, t), generator=g).float() * video_mask
    pos, neg = torch.zeros(b, 2, dtype=torch.long), torch.zeros(b, 2, dtype=torch.long)
    for i, length in enumerate(clips):
        saliency[i, 1] = top  # at least one positive clip, one negative
        saliency[i, 2] = 0
        pos[i] = torch.tensor([1, 1 + int(torch.randint(0, length - 1, (1,), generator=g))])
        neg[i] = torch.tensor([2, 2])
    inputs.update(saliency_all_labels=saliency, saliency_pos_labels=pos, saliency_neg_labels=neg)
    for i, spans in enumerate(spec["targets"]):
        inputs[f"spans{i}"] = torch.tensor(spans)
    return inputs


def official_video(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(B, T, Dv)`` video features from the stored blocks (module docstring)."""
    if "video_plain" in inputs:
        return torch.cat([inputs["video_plain"], inputs["tef"]], dim=-1)
    core = inputs["video_core"].repeat(1, 1, TILES)
    return torch.cat([core, inputs["video_clip"], inputs["tef"]], dim=-1)


def targets_of(inputs: dict[str, torch.Tensor], rows: range) -> dict[str, Any]:
    return {
        "span_labels": [{"spans": inputs[f"spans{i}"]} for i in rows],
        "saliency_all_labels": inputs["saliency_all_labels"][list(rows)],
        "saliency_pos_labels": inputs["saliency_pos_labels"][list(rows)],
        "saliency_neg_labels": inputs["saliency_neg_labels"][list(rows)],
    }


def run_official(
    modules: dict[str, Any],
    model: torch.nn.Module,
    opt: argparse.Namespace,
    inputs: dict[str, torch.Tensor],
    rows: range,
    mode: str,
    length: int | None = None,
    words: int | None = None,
) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """One official forward on videos ``rows`` (cut to ``length`` clips / ``words`` tokens)."""
    index = list(rows)
    vid = official_video(inputs)[index][:, :length]
    vid_mask = inputs["video_mask"][index][:, :length]
    txt, txt_mask = inputs["text"][index][:, :words], inputs["text_mask"][index][:, :words]
    targets = targets_of(inputs, rows)
    dn_args = None
    if opt.use_dn:
        dn_targets = modules["inference_cg"].get_dn_targets(targets)
        dn_args = (dn_targets, opt.scalar, opt.label_noise_scale, opt.box_noise_scale,
                   opt.num_patterns)  # fmt: skip
    outputs, mask_dict = model(
        txt, txt_mask, None, None, vid, vid_mask, opt, dn_args=dn_args, mode=mode
    )
    return outputs, mask_dict, targets


def flatten_outputs(prefix: str, outputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Official output tensors under ``prefix.<key>`` (``aux<i>.``, ``interm``, ``interm_neg``)."""
    flat: dict[str, torch.Tensor] = {}
    for key in ("pred_logits", "pred_spans", "saliency_scores", "saliency_scores_neg",
                "pred_logits_neg", "pred_spans_neg"):  # fmt: skip
        if key in outputs:
            flat[f"{prefix}.{key}"] = outputs[key].detach()
    for i, aux in enumerate(outputs.get("aux_outputs", [])):
        for key, value in aux.items():
            flat[f"{prefix}.aux{i}.{key}"] = value.detach()
    for name in ("interm_outputs", "interm_outputs_neg"):
        for key, value in outputs.get(name, {}).items():
            flat[f"{prefix}.{name.replace('_outputs', '')}.{key}"] = value.detach()
    return flat


def no_dropout(model: torch.nn.Module) -> None:
    """Every dropout of the release's model at 0 (layers and attention weights)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if hasattr(module, "dropout") and isinstance(module.dropout, float):
            module.dropout = 0.0


def build_fixture(modules: dict[str, Any], name: str, spec: dict[str, Any], out: Path) -> Path:
    opt = parse_options(modules, spec["args"])
    torch.manual_seed(SEED)
    model, criterion = modules["model"].build_model(opt)
    official = model.state_dict()
    shapes = state_shapes(official)
    state = random_state(shapes, SEED)
    tied: dict[str, str] = {}
    first: dict[int, str] = {}
    for key, tensor in official.items():  # tied heads: one tensor listed under several names
        owner = first.setdefault(tensor.data_ptr(), key)
        if owner != key:
            tied[key] = owner
            state[key] = state[owner]
    model.load_state_dict(state)
    inputs = make_inputs(spec, opt, SEED)
    b = len(spec["clips"])
    outputs: dict[str, torch.Tensor] = {}

    model.eval()
    with torch.no_grad(), cpu_only():
        batch_out, _, _ = run_official(modules, model, opt, inputs, range(b), "val")
        outputs.update(flatten_outputs("eval", batch_out))
        for i, (length, words) in enumerate(zip(spec["clips"], spec["words"])):
            single, _, _ = run_official(
                modules, model, opt, inputs, range(i, i + 1), "val", length, words
            )
            outputs.update(flatten_outputs(f"single{i}", single))

    model.train()
    no_dropout(model)
    draws: dict[str, list[torch.Tensor]] = {"randint_like": [], "rand_like": []}
    originals = {k: getattr(torch, k) for k in draws}

    def recording(kind: str) -> Any:
        def draw(*args: Any, **kwargs: Any) -> torch.Tensor:
            value = originals[kind](*args, **kwargs)
            draws[kind].append(value.clone())
            return value

        return draw

    torch.manual_seed(SEED + 1)
    for kind in draws:
        setattr(torch, kind, recording(kind))
    try:
        with cpu_only():
            train_out, mask_dict, targets = run_official(
                modules, model, opt, inputs, range(b), "train"
            )
            losses = criterion(train_out, targets, mask_dict, opt, "train")
    finally:
        for kind, fn in originals.items():
            setattr(torch, kind, fn)
    weights = criterion.weight_dict
    total = sum(losses[k] * weights[k] for k in losses if k in weights)
    total.backward()
    outputs.update(flatten_outputs("train", train_out))
    if mask_dict is not None and "output_known_lbs_bboxes" in mask_dict:
        cls, coord = mask_dict["output_known_lbs_bboxes"]
        outputs["train.dn.pred_logits"] = cls.detach()
        outputs["train.dn.pred_spans"] = coord.detach()
    if draws["randint_like"]:
        inputs["dn_sign_bits"] = draws["randint_like"][0]
        inputs["dn_magnitude"] = draws["rand_like"][0]
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    options = {k: (str(v) if isinstance(v, torch.device) else v) for k, v in vars(opt).items()}
    return save_fixture(
        out / f"ms_detr_{name}",
        opt=options,
        state=official,
        seed=SEED,
        inputs={k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)},
        outputs=outputs,
        losses={
            **{k: float(torch.as_tensor(v).detach()) for k, v in losses.items()},
            "total": float(total.detach()),
        },
        grads=grads,
        notes={
            "preset": name,
            "official_args": spec["args"],
            "tied": tied,
            "weights": {k: float(v) for k, v in weights.items()},
            "clips": spec["clips"],
            "words": spec["words"],
            "summed_saliency": spec["summed_saliency"],
            "video_layout": "video_core tiled x36 + video_clip + tef (or video_plain + tef)",
        },
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official-dir", type=Path, required=True, help="MS-DETR checkout")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/parity"))
    parser.add_argument("--presets", nargs="*", default=list(PRESETS), choices=list(PRESETS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    modules = import_ms_detr(args.official_dir)
    for name in args.presets:
        spec = {**PRESETS[name], "args": PRESETS[name]["args"] + SMALL}
        path = build_fixture(modules, name, spec, args.out)
        size = sum(p.stat().st_size for p in path.iterdir())
        print(f"{path}: {size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
