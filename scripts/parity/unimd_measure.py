"""Measure momentkit's UniMD against the committed official fixtures (the numbers of
docs/unimd.md, "Parity"), and what each official switch is worth.

For each preset fixture (tests/fixtures/parity/unimd_<preset>/): the checkpoint is written as
the official training script writes it, converted (``--from unimd``) and run; printed are the
largest absolute differences of the per-level logits/offsets, the decoded scores and segments,
the losses and the gradients (max abs, and the largest ``compare_signatures`` ratio, <= 1 =
within ``1e-6 + 1e-4 |value|``). With ``--ablate`` every switch of ``OFFICIAL_SWITCHES`` that
keeps the tensor layout is set back to momentkit's default, one at a time, and the differences
it causes (outputs, decoded scores, losses) are printed.

Usage::

    python scripts/parity/unimd_measure.py [--ablate]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

import test_parity_unimd as T  # noqa: E402

from momentkit.interop.parity import grad_signature  # noqa: E402
from momentkit.models.unimd import OFFICIAL_SWITCHES, UniMD, UniMDConfig  # noqa: E402


def output_diff(model: torch.nn.Module, fx: T.Fixture) -> float:
    """Largest |momentkit - official| over every per-level logit and offset: the videos as
    one padded batch, and each video alone."""
    n = len(fx.notes["lengths"])
    worst = 0.0
    for videos in [list(range(n))] + [[i] for i in range(n)]:
        batch = T.batch_of(fx, [["mr", "tad"]] * n, videos)
        model.eval()
        with torch.no_grad():
            out = model(batch)
        levels = torch.log2(out["points"][:, 3]).round().long()
        for row, i in enumerate(videos):
            for task, rows in (("mr", slice(0, 3)), ("tad", slice(3, None))):
                for lv in range(int(levels.max()) + 1):
                    cols = levels == lv
                    got = {
                        "cls": out["cls_logits"][row, rows][:, cols].T,
                        "reg": out["reg_offsets"][row, rows][:, cols].permute(1, 0, 2),
                    }
                    for kind, value in got.items():
                        want = fx.outputs[f"v{i}.{task}.{kind}.{lv}"]
                        common = min(len(value), len(want))  # pad_to: other lengths
                        diff = (value[:common] - want[:common]).abs().max()
                        worst = max(worst, float(diff))
    return worst


def decoded_diff(model: torch.nn.Module, fx: T.Fixture) -> tuple[float, float, int]:
    """Largest |momentkit - official| of the decoded scores and segments (seconds), and the
    number of detections; ``inf`` when the numbers of detections differ."""
    section = next(v for v in fx.opt.values() if isinstance(v, dict) and "feat_stride" in v)
    clip_len = section["feat_stride"] / fx.notes["fps"]
    durations = [
        (n * section["feat_stride"] + section["num_frames"]) / fx.notes["fps"]
        for n in fx.notes["lengths"]
    ]
    batch = T.batch_of(fx, [["mr", "tad"]] * len(fx.notes["lengths"]))
    model.eval()
    with torch.no_grad():
        dets = T.decode_detections(model(batch), durations, clip_len, model.config)
    d_score = d_seg = 0.0
    count = 0
    for i in range(len(fx.notes["lengths"])):
        for task, flag in (("mr", 0), ("tad", 1)):
            rows = [q for q in range(len(dets[i])) if int(batch["query_task"][i, q]) == flag]
            scores = torch.cat([dets[i][q][1] for q in rows])
            segs = torch.cat([dets[i][q][0] for q in rows])
            order = scores.argsort(descending=True, stable=True)
            want_s, want_g = fx.outputs[f"v{i}.{task}.scores"], fx.outputs[f"v{i}.{task}.segments"]
            if len(order) != len(want_s):
                return float("inf"), float("inf"), count
            d_score = max(d_score, float((scores[order] - want_s).abs().max()))
            d_seg = max(d_seg, float((segs[order] - want_g).abs().max()))
            count += len(order)
    return d_score, d_seg, count


def loss_diff(model: torch.nn.Module, fx: T.Fixture) -> float:
    """Largest |momentkit - official| over the per-task losses and the total (float64)."""
    model = model.double().train()
    T.deterministic(model)
    batch = {
        k: v.double() if v.is_floating_point() else v
        for k, v in T.batch_of(fx, fx.notes["train_tasks"]).items()
    }
    losses = T.UniMDCriterion(model.config)(model(batch), batch)
    w = {"tad": model.config.tad_loss_weight, "mr": model.config.mr_loss_weight}
    worst = abs(float(losses["loss"].detach()) - fx.losses["total"])
    for task in ("tad", "mr"):
        for name, key in (("cls", "cls_loss"), ("reg", "reg_loss")):
            got = float(losses[f"loss_{name}_{task}"].detach()) / w[task]
            worst = max(worst, abs(got - fx.losses[f"{task}.{key}"]))
    return worst


def measure(preset: str, ablate: bool) -> None:
    fx = T.fixture(preset)
    with tempfile.TemporaryDirectory() as tmp:
        conv = T.convert_checkpoint(T.official_files(fx, Path(tmp)), "unimd")
    model = conv.model
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    print(f"== {preset} (seed {fx.seed})")
    print(f"per-level logits/offsets: max abs diff {output_diff(model, fx):.3g}")
    d_score, d_seg, count = decoded_diff(model, fx)
    print(f"decoded ({count} detections): scores {d_score:.3g}, segments (s) {d_seg:.3g}")
    # losses and gradients (float64, as the fixture)
    model = model.double().train()
    T.deterministic(model)
    batch = {
        k: v.double() if v.is_floating_point() else v
        for k, v in T.batch_of(fx, fx.notes["train_tasks"]).items()
    }
    losses = T.UniMDCriterion(model.config)(model(batch), batch)
    w = {"tad": model.config.tad_loss_weight, "mr": model.config.mr_loss_weight}
    d_loss = abs(float(losses["loss"].detach()) - fx.losses["total"])
    for task in ("tad", "mr"):
        for name, key in (("cls", "cls_loss"), ("reg", "reg_loss")):
            got = float(losses[f"loss_{name}_{task}"].detach()) / w[task]
            d_loss = max(d_loss, abs(got - fx.losses[f"{task}.{key}"]))
    print(f"losses: max abs diff {d_loss:.3g} (total {fx.losses['total']:.6f})")
    model.zero_grad(set_to_none=True)
    losses["loss"].backward()
    params = dict(model.named_parameters())
    grads = {}
    for official, target in conv.report.mapped:
        if official in fx.grads:
            name, _, index = target.partition("[")
            g = params[name].grad
            grads[official] = g[int(index[:-1])] if index else g
    sig = grad_signature(grads, fx.seed)
    ratio = max(T.compare_signatures(sig, fx.grads, rtol=1e-4, atol=1e-6).values())
    d_grad = max(max(abs(a - b) for a, b in zip(sig[k], fx.grads[k])) for k in fx.grads)
    print(
        f"gradient signatures ({len(grads)} tensors): max abs diff {d_grad:.3g}, "
        f"compare_signatures ratio {ratio:.3g} (<= 1: within 1e-6 + 1e-4 |value|)"
    )
    if not ablate:
        return
    defaults = UniMDConfig()
    for switch in OFFICIAL_SWITCHES:
        if switch in ("bifpn_input_norm", "bifpn_second_top_inputs"):
            continue  # another tensor layout: the official weights do not fit
        config = dataclasses.replace(model.config, **{switch: getattr(defaults, switch)})
        other = UniMD(config)
        other.load_state_dict(fresh, strict=switch != "loss_normalizer")
        d_out = output_diff(other, fx)
        d_det = decoded_diff(other, fx)[0]
        other.load_state_dict(fresh, strict=switch != "loss_normalizer")
        print(
            f"  {switch} = {getattr(defaults, switch)!r}: outputs differ by {d_out:.3g}, "
            f"decoded scores by {d_det:.3g}, losses by {loss_diff(other, fx):.3g}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ablate", action="store_true")
    parser.add_argument("--presets", nargs="+", default=list(T.PRESETS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    for preset in args.presets:
        measure(preset, args.ablate)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
