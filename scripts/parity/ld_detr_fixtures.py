"""Golden parity fixtures of LD-DETR from qingchen239/ld-detr (not run by CI).

For each dataset preset of the release (``scripts/train_qvhighlight.sh``,
``train_charade.sh``, ``train_tacos.sh``: their dataset, clip length, distillation
coefficient, saliency and ``loss_sim`` weights) the script builds the official model and
criterion with ``ld_detr/model.py``'s ``build_model`` at the smallest size the official code
allows (hidden 256: the decoder's anchor sine embedding is fixed at 2 x 128 channels; heads,
feed-forward width and dropouts are hard-coded in the release; 1 layer per encoder, 1-2 conv
blocks, 2 decoder layers so there are auxiliary outputs, 5 queries, a queue of 8, 14-d video =
12 + 2 TEF, 10-d text), loads :func:`momentkit.interop.parity.random_state` weights (every
tensor randomised, norms and batch norms included; :func:`kept_tensors` fixes two), and runs:

1. evaluation mode, a padded batch of 4 videos (different clip and word counts);
2. evaluation mode, each video alone (no padding);
3. training mode with every dropout at 0 (deterministic): the padded batch at step 3 of a
   10-step first epoch (the alpha ramp), the criterion's losses, one backward pass of the
   official total loss (gradient signature), then the queues, pointer, batch-norm statistics
   and momentum encoders as they are after the step;
4. training mode, the first 3 videos (3 does not divide the queue length 8: not enqueued).

The release also updates the momentum encoders in the evaluation forwards of 1 and 2, so
step 3 starts from momentum encoders updated 5 times. It writes
``tests/fixtures/parity/ld_detr_<preset>/``::

    python scripts/parity/ld_detr_fixtures.py --official-dir /path/to/ld-detr \\
        --out tests/fixtures/parity/

The official code is imported from ``--official-dir`` and run as released; ``torchvision``
(imported for ``sigmoid_focal_loss`` only) is stood in by ``ld_detr_env.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ld_detr_env import import_ld_detr  # noqa: E402

from momentkit.interop.parity import random_state, save_fixture, state_shapes  # noqa: E402

SEED = 0
#: clips of each video of the padded batch, per preset (the first 3 are still padded)
VIDEO_LENS = {"qvhighlights": (9, 6, 9, 4), "charades_sta": (7, 5, 7, 3), "tacos": (14, 9, 14, 6)}
#: words of each query
TEXT_LENS = (5, 3, 2, 5)
STREAM_DIMS = (8, 4)  # "slowfast", "clip" (the release's v_feat_dirs order), + 2 TEF
TEXT_DIM = 10
QUEUE = 8

#: options of ld_detr/config.py as train.py saves them (defaults), at the fixture size
BASE: dict[str, Any] = {
    "dset_name": "hl",
    "eval_split_name": "val",
    "seed": 2018,
    "lr": 1e-4,
    "wd": 1e-4,
    "n_epoch": 250,
    "max_es_cnt": 200,
    "bsz": 32,
    "eval_bsz": 32,
    "grad_clip": 0.1,
    "max_q_l": 32,
    "max_v_l": 75,
    "clip_length": 2,
    "max_windows": 5,
    "no_norm_vfeat": False,
    "no_norm_tfeat": False,
    "v_feat_dirs": [
        "../features/qvhighlight/slowfast_features",
        "../features/qvhighlight/clip_features",
    ],
    "t_feat_dir": "../features/qvhighlight/clip_text_features/",
    "a_feat_dir": None,
    "a_feat_dim": None,
    "v_feat_dim": sum(STREAM_DIMS) + 2,
    "t_feat_dim": TEXT_DIM,
    "ctx_mode": "video_tef",
    "position_embedding": "sine",
    "hidden_dim": 256,
    "num_queries": 5,
    "use_txt_pos": False,
    "queue_length": QUEUE,
    "distillation_coefficient": 0.4,
    "num_v2t_encoder_layers": 1,
    "num_encoder1_layers": 1,
    "num_convolutional_blocks": 2,
    "num_encoder2_layers": 1,
    "num_decoder_layers": 2,
    "num_decoder_loops": 3,
    "n_input_proj": 2,
    "lw_saliency": 1.0,
    "saliency_margin": 0.2,
    "aux_loss": True,
    "span_loss_type": "l1",
    "set_cost_span": 10.0,
    "set_cost_giou": 1.0,
    "set_cost_class": 4.0,
    "span_loss_coef": 10.0,
    "giou_loss_coef": 1.0,
    "label_loss_coef": 4.0,
    "align_loss_coef": 0.6,
    "sim_loss_coef": 0.6,
    "eos_coef": 0.1,
    "use_tef": True,
    "use_video": True,
}

#: momentkit preset -> the options its release script changes
PRESETS: dict[str, dict[str, Any]] = {
    "qvhighlights": {},
    "charades_sta": {
        "dset_name": "charadesSTA",
        "clip_length": 1,
        "max_v_l": -1,
        "n_epoch": 100,
        "num_convolutional_blocks": 1,  # the release: 4, one fewer than elsewhere
        "distillation_coefficient": 0.3,
        "sim_loss_coef": 0.4,
        "lw_saliency": 1.5,
    },
    "tacos": {
        "dset_name": "tacos",
        "max_v_l": -1,
        "distillation_coefficient": 0.7,
        "lw_saliency": 4.0,
        "v_feat_dirs": ["../features/tacos/slowfast_features", "../features/tacos/clip_features"],
        "t_feat_dir": "../features/tacos/clip_text_features/",
    },
}


def make_inputs(
    opt: dict[str, Any], lens: tuple[int, ...], gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """The padded batch with its targets, as the release's collate and prepare_batch_inputs
    give them (zero padding, TEF on the valid clips, float masks)."""
    b, t, n = len(lens), max(lens), max(TEXT_LENS)
    video_mask = (torch.arange(t)[None] < torch.tensor(lens)[:, None]).float()
    text_mask = (torch.arange(n)[None] < torch.tensor(TEXT_LENS)[:, None]).float()
    video = torch.zeros(b, t, sum(STREAM_DIMS) + 2)
    for i, length in enumerate(lens):
        streams = [torch.randn(length, d, generator=gen) for d in STREAM_DIMS]
        streams = [s / s.norm(dim=1, keepdim=True) for s in streams]  # L2 per stream
        start = torch.arange(length, dtype=torch.float32) / length
        video[i, :length] = torch.cat([*streams, start[:, None], (start + 1 / length)[:, None]], 1)
    text = torch.randn(b, n, TEXT_DIM, generator=gen) * text_mask[..., None]
    text = text / text.norm(dim=2, keepdim=True).clamp(min=1e-12)
    spans, counts, saliency, pos, neg = [], [], torch.zeros(b, t), [], []
    for i, length in enumerate(lens):
        k = 1 + i % 2
        centers = 0.2 + 0.6 * torch.rand(k, generator=gen)
        widths = 0.1 + 0.3 * torch.rand(k, generator=gen)
        spans.append(torch.stack([centers, widths], 1))
        counts.append(k)
        if opt["dset_name"] == "hl":  # annotator sums 0..12 on some clips
            saliency[i, :length] = torch.randint(0, 13, (length,), generator=gen).float()
        else:  # a window of ones (get_saliency_labels_sub_as_query)
            first = int(torch.randint(0, length - 1, (1,), generator=gen))
            saliency[i, first : first + 2] = 1.0
        order = saliency[i, :length].argsort(descending=True, stable=True)
        pos.append([int(order[0]), int(order[1])])
        neg.append([int(order[-1]), int(order[-2])])
    return {
        "src_vid": video,
        "src_vid_mask": video_mask,
        "src_txt": text,
        "src_txt_mask": text_mask,
        "span_labels": torch.cat(spans),
        "span_counts": torch.tensor(counts),
        "saliency_all_labels": saliency,
        "saliency_pos_labels": torch.tensor(pos),
        "saliency_neg_labels": torch.tensor(neg),
    }


def targets_of(inputs: dict[str, torch.Tensor], rows: slice = slice(None)) -> dict[str, Any]:
    spans = inputs["span_labels"].split(inputs["span_counts"].tolist())
    return {
        "span_labels": [{"spans": s} for s in spans[rows]],
        "saliency_pos_labels": inputs["saliency_pos_labels"][rows],
        "saliency_neg_labels": inputs["saliency_neg_labels"][rows],
        "saliency_all_labels": inputs["saliency_all_labels"][rows],
    }


def model_inputs(inputs: dict[str, torch.Tensor], rows: slice = slice(None)) -> dict[str, Any]:
    vm, tm = inputs["src_vid_mask"][rows], inputs["src_txt_mask"][rows]
    t, n = int(vm.sum(1).max()), int(tm.sum(1).max())  # the collate pads to the longest
    return {
        "src_vid": inputs["src_vid"][rows, :t],
        "src_vid_mask": vm[:, :t],
        "src_txt": inputs["src_txt"][rows, :n],
        "src_txt_mask": tm[:, :n],
    }


def record(out: dict[str, Any], prefix: str, into: dict[str, torch.Tensor]) -> None:
    for key in ("pred_logits", "pred_spans", "saliency_scores"):
        into[f"{prefix}.{key}"] = out[key].detach().clone()
    for i, aux in enumerate(out.get("aux_outputs") or []):
        for key in ("pred_logits", "pred_spans"):
            into[f"{prefix}.aux{i}.{key}"] = aux[key].detach().clone()


def no_dropout(model: nn.Module) -> None:
    """Every dropout of the official model at 0 (modules and attention probabilities)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        elif isinstance(getattr(m, "dropout", None), float):
            m.dropout = 0.0


def snapshot(model: nn.Module, into: dict[str, torch.Tensor], prefix: str) -> None:
    """Buffers and momentum parameters the steps change (small ones, and the queues)."""
    state = model.state_dict()
    names = [
        "distill_align.vid_queue",
        "distill_align.txt_queue",
        "distill_align.queue_ptr",
        "momentum_video_encoder.linear2.bias",
        "momentum_video_encoder.norm1.weight",
        "momentum_text_encoder.linear1.bias",
        "momentum_text_encoder.norm2.weight",
    ]
    names += [k for k in state if ".convolutional_block." in k and ".bn" in k]
    for name in names:
        into[f"{prefix}.{name}"] = state[name].detach().clone()


def kept_tensors(shapes: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Tensors not left to :func:`random_state`: the temperature at its initial 0.07 (a random
    value may be negative and clamp to 0.001) and the video encoder's last LayerNorm scale
    ``U(0.02, 0.06)`` and output bias ``N(0, 0.01)``, so that ``V'``, the HD head's dot products
    with it and the saliency scores stay of order 1, and the V2T Extractor's ``(d, 1)`` weight
    columns at ``N(0, 1/d)`` (their fan-in is ``d``; :func:`random_state` would draw ``N(0, 1)``,
    making its softmaxes needlessly sharp), and the conv blocks' batch-norm scales at
    ``U(0.1, 0.3)``: in training mode the batch statistics divide by per-channel deviations
    several times smaller than the channel means, which multiplies float32 rounding ~10x; so
    that it stays well below the 1e-5 tolerance."""
    gen = torch.Generator().manual_seed(SEED + 2)
    (width,), _ = shapes["video_encoder.norm2.weight"]
    kept = {
        "distill_align.temp": torch.tensor(0.07),
        "video_encoder.norm2.weight": 0.02 + 0.04 * torch.rand(width, generator=gen),
        "video_encoder.linear2.bias": 0.01 * torch.randn(width, generator=gen),
    }
    for name in ("w4C", "w4Q", "weight"):  # (d, 1) columns: fan-in d, not 1
        full = f"convolutional_fuser.v2t_extractor.{name}"
        kept[full] = torch.randn(shapes[full][0], generator=gen) / width**0.5
    for name in sorted(shapes):  # batch-norm scales of the conv blocks
        if ".convolutional_block." in name and ".bn" in name and name.endswith(".weight"):
            kept[name] = 0.1 + 0.2 * torch.rand(width, generator=gen)
    return kept


def build(ld: Any, opt: dict[str, Any]) -> tuple[nn.Module, nn.Module]:
    args = argparse.Namespace(**opt, device="cpu")
    return ld.model.build_model(args)


def fixture(ld: Any, preset: str, out_dir: Path) -> dict[str, float]:
    opt = {**BASE, **PRESETS[preset]}
    torch.manual_seed(SEED)
    model, criterion = build(ld, opt)
    shapes = state_shapes(model.state_dict())
    kept = kept_tensors(shapes)
    state = random_state(shapes, SEED, kept)
    model.load_state_dict(state)
    inputs = make_inputs(opt, VIDEO_LENS[preset], torch.Generator().manual_seed(SEED + 1))
    outputs: dict[str, torch.Tensor] = {}

    model.eval()
    with torch.no_grad():
        record(model(**model_inputs(inputs)), "eval", outputs)
        for i in range(len(TEXT_LENS)):
            record(model(**model_inputs(inputs, slice(i, i + 1))), f"single{i}", outputs)

    no_dropout(model)
    model.train()
    criterion.train()
    out = model(
        **model_inputs(inputs),
        epoch_i=0,
        batch_idx=3,
        train_loader_length=10,
        targets=targets_of(inputs),
        is_training=True,
    )
    record(out, "train", outputs)
    loss_dict = criterion(out, targets_of(inputs))
    weights = criterion.weight_dict
    total = sum(loss_dict[k] * weights[k] for k in loss_dict if k in weights)
    total.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    losses = {k: float(v.detach()) for k, v in loss_dict.items() if k in weights}
    losses["total"] = float(total.detach())
    snapshot(model, outputs, "after_train")

    with torch.no_grad():
        out3 = model(
            **model_inputs(inputs, slice(0, 3)),
            epoch_i=0,
            batch_idx=4,
            train_loader_length=10,
            is_training=True,
        )
    record(out3, "train3", outputs)
    outputs["train3.loss_align"] = out3["loss_align"].detach().reshape(1)
    outputs["train3.loss_sim"] = out3["loss_sim"].detach().reshape(1)
    snapshot(model, outputs, "after_train3")

    directory = out_dir / f"ld_detr_{preset}"
    save_fixture(
        directory,
        opt=opt,
        state=state,
        seed=SEED,
        inputs=inputs,
        outputs=outputs,
        losses=losses,
        grads=grads,
        kept=kept,
        notes={
            "official": "qingchen239/ld-detr",
            "preset": preset,
            "sequence": "eval batch; eval each video alone; train step (dropout 0, epoch 0, "
            "batch_idx 3 of 10) + loss + backward; train forward of videos 0-2 (batch_idx 4)",
            "loss_weights": {k: float(v) for k, v in weights.items()},
        },
    )
    return losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-dir", required=True, type=Path, help="ld-detr checkout")
    parser.add_argument("--out", required=True, type=Path, help="tests/fixtures/parity/")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ld = import_ld_detr(args.official_dir)
    for preset in args.presets:
        losses = fixture(ld, preset, args.out)
        print(f"{preset}: total loss {losses['total']:.6f} -> {args.out / f'ld_detr_{preset}'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
