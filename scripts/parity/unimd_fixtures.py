"""Golden parity fixtures of UniMD: the official code (yingsen1/UniMD) on random weights.

Not run by CI: it needs an official checkout. For each dataset preset of the release
(``charades_sta``: ``configs/charades/charades_i3d_convnext_bs2_70e_stop20e.yaml``;
``activitynet``: ``configs/anet/anet_mae_convnext_queryavg_bs8_15e.yaml``) it

1. loads the official YAML with the official ``load_config`` and shrinks it to the smallest
   model the official code builds (its BiFPN is written for exactly 6 levels and its heads for
   512-d CLIP queries, so: 16 channels, 2 BiFPN layers, 64 steps, kernel MLP width 16, head
   width 512);
2. builds ``LocPointTransformerSyntheses``, loads :func:`momentkit.interop.parity.random_state`
   weights (every tensor randomised, norms and BatchNorm statistics included) and switches
   stochastic depth and dropout off;
3. eval mode, one video at a time as ``eval.py``: records the per-level classification logits
   and regression offsets of every task (``save_mid_file``) and the decoded detections
   (official soft-NMS, built from the checkout's C++ sources);
4. train mode (float64), the 3 videos as one batch (padded to ``max_seq_len``, one video with
   MR and TAD, one TAD only, one MR only): records the per-task losses and the gradient
   signature of the official total loss ``tad_loss_weight * L_tad + mr_loss_weight * L_mr``;
5. (``charades_sta``) the compiled soft-NMS and NMS on segments with tied scores and
   duplicates (``nms.*`` outputs).

The BiFPN's fusion weights (``*_att``) are drawn from ``U(0.5, 1.5)`` (stored as ``kept``
tensors) rather than by :func:`random_tensor`'s rule for their shape (``N(0, 1)``): a fusion
node whose weights are all negative is switched off by the ReLU of the fast normalised fusion,
its pyramid level becomes a constant and many scores tie exactly, which leaves the order of
the decoded detections to unstable sorts. Seeds whose official logits still tie are rejected.

The training step runs in float64 (model and inputs; the official focal and DIoU losses cast
to float32 themselves, as momentkit's do): a gradient is not a continuous function of the
inputs at ReLU kinks and max-pooling ties, and with ~10^6 activations in float32 some
pre-activation always lies within rounding of zero, so that two correct float32
implementations can differ in one gradient element by far more than rounding (measured: a
head-tower ReLU input of 1.3e-8 moved a layer's gradient by 2e-3 of its norm). In float64 no
activation is that close. The eval outputs and decoded detections stay float32.

Usage::

    python scripts/parity/unimd_fixtures.py --official-dir /path/to/UniMD \\
        --out tests/fixtures/parity/ [--presets charades_sta activitynet] [--nms-build DIR]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from unimd_official_env import deterministic, import_official  # noqa: E402

from momentkit.interop.parity import (  # noqa: E402
    random_state,
    save_fixture,
    state_shapes,
)

SEED = 30
#: preset -> (official YAML, dataset section, fps, classes, feature channels)
PRESETS: dict[str, dict[str, Any]] = {
    "charades_sta": {
        "yaml": "configs/charades/charades_i3d_convnext_bs2_70e_stop20e.yaml",
        "section": "charades",
        "fps": 24.0,
        "classes": 4,
    },
    "activitynet": {
        "yaml": "configs/anet/anet_mae_convnext_queryavg_bs8_15e.yaml",
        "section": "anet",
        "fps": 30.0,
        "classes": 1,  # class-agnostic TAD: one query, the mean of the class embeddings
    },
}
SMALL = {
    "input_dim": 24,
    "embd_dim": 16,
    "fpn_dim": 16,
    "max_seq_len": 64,
    "fpn_layer": 2,
    "query_fc_chanel": 16,
}
LENGTHS = (64, 45, 30)  # full, odd (the downsamplings' edge), short
TRAIN_TASKS = (["tad", "mr"], ["tad"], ["mr"])


def jsonable(obj: Any) -> Any:
    """Tuples as lists (the YAML the training script writes holds lists)."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj


def official_config(env: Any, root: Path, preset: str) -> dict[str, Any]:
    """The official config as ``train_*.py`` writes it to ``config.yaml``, shrunk."""
    spec = PRESETS[preset]
    cfg = env.config.load_config(str(root / spec["yaml"]), copy.deepcopy(env.config.DEFAULTS))
    for key, value in SMALL.items():
        target = cfg["dataset"] if key in ("input_dim", "max_seq_len") else cfg["model"]
        target[key] = value
    cfg["dataset"]["num_classes"] = spec["classes"]
    section = cfg[spec["section"]]
    section.update(input_dim=SMALL["input_dim"], max_seq_len=SMALL["max_seq_len"])
    section["num_classes"] = spec["classes"]
    if preset == "charades_sta":
        section["default_fps"] = spec["fps"]  # Charades reads it per video; fixed here
    cfg = env.config._update_config(cfg)  # model.input_dim / num_classes / max_seq_len
    return jsonable(cfg)


def make_inputs(preset: str, cfg: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """Features, queries and ground truth of the 3 videos (official units: feature grid)."""
    g = torch.Generator().manual_seed(seed)
    dim = cfg["model"]["input_dim"]
    classes = PRESETS[preset]["classes"]
    inputs: dict[str, torch.Tensor] = {}
    tad_q = torch.nn.functional.normalize(torch.randn(classes, 512, generator=g), dim=-1)
    inputs["tad.q_feats"] = tad_q
    for i, length in enumerate(LENGTHS):
        feats = torch.randn(dim, length, generator=g)
        inputs[f"v{i}.feats"] = feats / feats.norm(dim=0, keepdim=True)
        # TAD: overlapping instances of one class with nearby centres, the longer listed last
        # (the class-wise target picks the last listed, not the shortest), instances reaching
        # coarse levels, one starting before the video
        tad = torch.tensor(
            [[2.0, 9.5], [4.0, 30.0], [-1.5, 6.0], [12.0, 19.0], [20.0, 40.5], [10.0, 20.0],
             [length * 0.5, length - 3.0]]
        )  # fmt: skip
        labels = torch.tensor([0, 0, 1, 1, 2, 1, 3]) % classes
        inputs[f"v{i}.tad.segments"] = tad.clamp(max=length - 1.0)
        inputs[f"v{i}.tad.labels"] = labels
        # MR: 3 sentences, one segment each (the official MR label = the sentence index)
        mr = torch.tensor([[1.0, 12.0], [length * 0.3, length * 0.8], [5.5, 7.0]])
        inputs[f"v{i}.mr.segments"] = mr
        inputs[f"v{i}.mr.labels"] = torch.arange(3)
        inputs[f"v{i}.mr.q_feats"] = torch.randn(3, 512, generator=g) * 0.5
    return inputs


def video_dicts(
    preset: str, cfg: dict[str, Any], inputs: dict[str, torch.Tensor], i: int
) -> dict[str, dict[str, Any]]:
    """The ``{"tad": ..., "mr": ...}`` item the official dataset returns for video ``i``."""
    section = cfg[PRESETS[preset]["section"]]
    feats = inputs[f"v{i}.feats"]
    meta = {
        "video_id": f"v{i}",
        "fps": PRESETS[preset]["fps"],
        "duration": (feats.shape[1] * section["feat_stride"] + section["num_frames"])
        / PRESETS[preset]["fps"],
        "feat_stride": section["feat_stride"],
        "feat_num_frames": section["num_frames"],
    }
    tad = {
        **meta,
        "feats": feats,
        "segments": inputs[f"v{i}.tad.segments"].clone(),
        "labels": inputs[f"v{i}.tad.labels"].clone(),
        "q_feats": inputs["tad.q_feats"],
    }
    mr = {
        **meta,
        "feats": feats,
        "segments": inputs[f"v{i}.mr.segments"].clone(),
        "labels": inputs[f"v{i}.mr.labels"].clone(),
        "q_feats": inputs[f"v{i}.mr.q_feats"],
        "queries": [f"sentence {j}" for j in range(3)],
    }
    return {"tad": tad, "mr": mr}


def train_step(
    model: Any, state: dict[str, torch.Tensor], preset: str, cfg: dict[str, Any],
    inputs: dict[str, torch.Tensor],
) -> tuple[dict[str, float], dict[str, torch.Tensor], float]:  # fmt: skip
    """The official losses, gradients and loss normaliser of one training step from ``state``,
    in float64 (see the module docstring); the model is left in float32."""
    model.load_state_dict(state)  # fresh BatchNorm statistics and loss normaliser
    model.loss_normalizer = cfg["train_cfg"]["init_loss_norm"]
    model.double().train()
    deterministic(model)
    inputs = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
    batch = [video_dicts(preset, cfg, inputs, i) for i in range(len(LENGTHS))]
    video_list = [{t: item[t] for t in tasks} for item, tasks in zip(batch, TRAIN_TASKS)]
    losses = model(video_list, [list(t) for t in TRAIN_TASKS])[0]
    w_tad = cfg["train_cfg"].get("tad_loss_weight", 1.0)
    w_mr = cfg["train_cfg"].get("mr_loss_weight", 1.0)
    total = losses["tad"]["final_loss"] * w_tad + losses["mr"]["final_loss"] * w_mr
    model.zero_grad(set_to_none=True)
    total.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    flat = {f"{t}.{k}": float(v.detach()) for t in ("tad", "mr") for k, v in losses[t].items()}
    flat["total"] = float(total.detach())
    model.float()
    return flat, grads, float(model.loss_normalizer)


def fusion_weights(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """``U(0.5, 1.5)`` values of the BiFPN fusion weights (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: 0.5 + torch.rand(v.shape, generator=g, dtype=torch.float64).to(v.dtype)
        for k, v in sorted(state.items())
        if k.endswith("_att")
    }


def evaluate(
    model: Any, preset: str, cfg: dict[str, Any], inputs: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Per-level outputs and decoded detections, one video at a time (as ``eval.py``)."""
    outputs: dict[str, torch.Tensor] = {}
    model.eval()
    with torch.no_grad():
        for i in range(len(LENGTHS)):
            item = video_dicts(preset, cfg, inputs, i)
            res = model([item], [["tad", "mr"]], save_mid_file=True)
            for task in ("tad", "mr"):
                mid = res[f"{task}_mid_file"][f"v{i}"]
                for lv, (c, o) in enumerate(zip(mid["out_cls_logits"], mid["offsets_per_vid"])):
                    outputs[f"v{i}.{task}.cls.{lv}"] = c.float()
                    outputs[f"v{i}.{task}.reg.{lv}"] = o.float()
                det = res[task][0]
                outputs[f"v{i}.{task}.segments"] = det["segments"].float()
                outputs[f"v{i}.{task}.scores"] = det["scores"].float()
                outputs[f"v{i}.{task}.labels"] = det["labels"].long()
    return outputs


def ties(outputs: dict[str, torch.Tensor], lengths: tuple[int, ...]) -> int:
    """Exactly equal logits among the valid points of one video, task and level."""
    count = 0
    for key, value in outputs.items():
        parts = key.split(".")
        if len(parts) == 4 and parts[2] == "cls":
            valid = -(-lengths[int(parts[0][1:])] // 2 ** int(parts[3]))
            flat = value[:valid].flatten()
            count += len(flat) - len(torch.unique(flat))
    return count


def nms_cases(seed: int) -> dict[str, torch.Tensor]:
    """Inputs and official results of the compiled 1-D NMS on segments with tied scores and
    duplicates (where the C++ swap order decides), Gaussian soft-NMS and hard NMS."""
    import libs.utils.nms as official_nms

    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for case in range(3):
        n = 60
        start = torch.rand(n, generator=g) * 50
        segs = torch.stack([start, start + 1 + torch.rand(n, generator=g) * 20], dim=1)
        segs[n // 2 :] = segs[: n - n // 2]  # duplicated segments
        scores = (torch.rand(n, generator=g) * 20).round() / 20 + 0.01  # many ties
        labels = torch.zeros(n, dtype=torch.long)
        out[f"nms.{case}.segs"], out[f"nms.{case}.scores"] = segs, scores
        sigma, min_score, max_num = (0.5, 0.001, 40) if case < 2 else (0.75, 0.05, 25)
        soft = official_nms.SoftNMSop.apply(segs, scores, labels, 0.1, sigma, min_score, 2, max_num)
        out[f"nms.{case}.soft.segs"], out[f"nms.{case}.soft.scores"] = soft[0], soft[1]
        hard = official_nms.NMSop.apply(segs, scores, labels, 0.3, min_score, max_num)
        out[f"nms.{case}.hard.segs"], out[f"nms.{case}.hard.scores"] = hard[0], hard[1]
        out[f"nms.{case}.settings"] = torch.tensor([sigma, min_score, max_num], dtype=torch.float64)
    return out


def run_preset(env: Any, root: Path, preset: str, out: Path, max_tries: int = 20) -> Path:
    if not env.has_nms:
        raise SystemExit("the official NMS could not be built: no decoded fixtures")
    cfg = official_config(env, root, preset)
    model = env.meta_archs.PtTransformerSyntheses(**copy.deepcopy(cfg["model"]))
    for seed in range(SEED, SEED + max_tries):
        torch.manual_seed(seed)
        shapes = state_shapes(model.state_dict())
        kept = fusion_weights(model.state_dict(), seed)
        state = random_state(shapes, seed, kept)
        inputs = make_inputs(preset, cfg, seed)
        model.load_state_dict(state)
        deterministic(model)
        outputs = evaluate(model, preset, cfg, inputs)
        tied = ties(outputs, LENGTHS)
        if not tied:
            break
        print(f"{preset}: seed {seed} rejected: {tied} tied logits")
    else:
        raise SystemExit(f"{preset}: no seed in {max_tries} tries is free of ties and kinks")
    # train: the 3 videos in one batch, the official loss and one backward pass
    losses, grads, normaliser = train_step(model, state, preset, cfg, inputs)
    if preset == "charades_sta":  # the compiled soft-NMS on its own (ties, duplicates)
        outputs.update(nms_cases(seed))
    directory = save_fixture(
        out / f"unimd_{preset}",
        opt=cfg,
        state=state,
        seed=seed,
        inputs=inputs,
        outputs=outputs,
        losses=losses,
        grads=grads,
        kept=kept,
        notes={
            "official": "yingsen1/UniMD " + PRESETS[preset]["yaml"],
            "lengths": list(LENGTHS),
            "train_tasks": [list(t) for t in TRAIN_TASKS],
            "fps": PRESETS[preset]["fps"],
            "loss_normalizer_after": normaliser,
            "train_dtype": "float64 (the losses in float32, as the official focal/DIoU cast)",
            "eval": "one video at a time, padded to max_seq_len; outputs include padded steps",
            "train": "stochastic depth and dropout off on both sides; BatchNorm in train mode",
            "nms": "official C++ softnms_1d_cpu built from the checkout",
            "no_grad": sorted(k for k, p in model.named_parameters() if p.grad is None),
        },
    )
    print(f"{preset}: seed {seed}, wrote {directory} (total loss {losses['total']:.6f})")
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-dir", required=True, type=Path, help="UniMD checkout")
    parser.add_argument("--out", required=True, type=Path, help="tests/fixtures/parity/")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--nms-build", type=Path, default=None, help="reuse a built NMS here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    env = import_official(args.official_dir, args.nms_build)
    for preset in args.presets:
        run_preset(env, args.official_dir.resolve(), preset, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
