"""Golden parity fixtures of Moment-DETR and QD-DETR from line/lighthouse (not run by CI).

For each model and dataset preset the script builds the official model and criterion with
Lighthouse's own option files (``configs/base.yml`` + ``feature/clip_slowfast.yml`` +
``model/<model>.yml`` + ``dataset/<dataset>.yml``, read by its ``BaseOptions``) at a small size
(hidden 256, 2 encoder / 2 decoder layers, FFN 512, 34-d video = 16 CLIP + 16 SlowFast + 2 TEF,
24-d text), loads :func:`momentkit.interop.parity.random_state` weights (every tensor
randomised), and, in evaluation mode (deterministic), runs three videos of different lengths
with queries of different lengths (a padded batch) and the first video alone. Labels come from
Lighthouse's own dataset methods and ``start_end_collate``; predictions from its
``compute_mr_results`` (ranking, ``PostProcessorDETR``). It records the outputs, the
criterion's losses, the prediction rows and the gradient signature after one backward pass of
the official total loss, and writes ``tests/fixtures/parity/lighthouse_<model>_<preset>/``::

    python scripts/parity/lighthouse_fixtures.py --official-dir /path/to/lighthouse \\
        --out tests/fixtures/parity/ [--official-revision COMMIT]

The committed fixtures were made from line/lighthouse d095eaa552cecef240897a8b750306b3b2a08740.

The official code is imported from ``--official-dir`` and run as released; missing extras it
never calls on this path are stood in by ``lighthouse_env.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lighthouse_env import import_lighthouse  # noqa: E402

from momentkit.benchmarks.official import git_revision  # noqa: E402
from momentkit.interop.parity import random_state, save_fixture, state_shapes  # noqa: E402

#: momentkit preset -> (Lighthouse dataset option file, clip lengths of the three videos,
#: query lengths, durations in seconds)
PRESETS: dict[str, tuple[str, list[int], list[int], list[float]]] = {
    "qvhighlights": ("qvhighlight", [12, 9, 5], [5, 7, 3], [24.0, 17.3, 10.0]),
    "charades_sta": ("charades", [11, 8, 6], [4, 6, 3], [10.6, 8.0, 5.4]),
    "tacos": ("tacos", [16, 10, 7], [6, 9, 4], [31.2, 20.0, 13.9]),
}
MODELS = ("moment_detr", "qd_detr")
SMALL = {
    "hidden_dim": 256,  # QD-DETR's anchor sine embedding is fixed at 2 x 128 channels
    "nheads": 8,
    "enc_layers": 2,
    "dec_layers": 2,
    "dim_feedforward": 512,
    "num_queries": 10,
    "v_feat_dim": 34,  # 16 CLIP + 16 SlowFast + 2 TEF
    "t_feat_dim": 24,
    "device": "cpu",
}
STREAM_DIMS = (16, 16)  # CLIP, SlowFast: Lighthouse's v_feat_dirs order
TEXT_DIM = 24
SEED = 0


def official_options(lh: Any, root: Path, model: str, dataset: str) -> Any:
    """Lighthouse's options for ``model`` on ``dataset`` with clip_slowfast features, at the
    fixture size (its ``BaseOptions.parse`` reads the YAML files relative to the checkout)."""
    options = lh.config.BaseOptions(model, dataset, "clip_slowfast", None, None)
    with contextlib.chdir(root):
        options.parse()
    opt = options.option
    opt.update(SMALL)
    return opt


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def make_items(
    lh: Any, opt: Any, lengths: list[int], query_lengths: list[int], durations: list[float]
) -> list[dict[str, Any]]:
    """Three dataset items as Lighthouse's ``StartEndDataset.__getitem__`` returns them, labels
    from its own methods (``get_span_labels``, ``get_saliency_labels_*``)."""
    g = torch.Generator().manual_seed(SEED)
    random.seed(SEED)
    labeller = argparse.Namespace(
        clip_len=opt.clip_length, max_windows=opt.max_windows, span_loss_type="l1"
    )
    dataset_cls = lh.dataset.StartEndDataset
    items = []
    for i, (ctx_l, n_words, duration) in enumerate(zip(lengths, query_lengths, durations)):
        streams = [l2_normalise(torch.randn(ctx_l, d, generator=g)) for d in STREAM_DIMS]
        tef_st = torch.arange(0, ctx_l, 1.0) / ctx_l
        tef = torch.stack([tef_st, tef_st + 1.0 / ctx_l], dim=1)
        video = torch.cat([*streams, tef], dim=1)
        query = l2_normalise(torch.randn(n_words, TEXT_DIM, generator=g))
        clip = float(opt.clip_length)
        first, last = (1 + i) % 3, max(2 + i % 3, ctx_l - 2 - i)
        windows = [[first * clip, last * clip]]
        if i == 0:
            windows.append([(ctx_l - 3) * clip, ctx_l * clip])
        inputs: dict[str, Any] = {"query_feat": query, "video_feat": video}
        inputs["span_labels"] = dataset_cls.get_span_labels(labeller, windows, ctx_l)
        if opt.dset_name == "qvhighlight":
            clip_ids = sorted({c for s, e in windows for c in range(int(s / clip), int(e / clip))})
            scores = [[(c * 7 + k * 3 + i) % 5 for k in range(3)] for c in clip_ids]
            labels = dataset_cls.get_saliency_labels_all(labeller, clip_ids, scores, ctx_l)
        else:
            labels = dataset_cls.get_saliency_labels_sub_as_query(labeller, windows[0], ctx_l)
        pos, neg, all_labels = labels
        inputs["saliency_pos_labels"], inputs["saliency_neg_labels"] = pos, neg
        inputs["saliency_all_labels"] = all_labels
        meta = {
            "qid": 100 + i,
            "query": f"query {i}",
            "vid": f"video{i}",
            "duration": duration,
            "relevant_windows": windows,
        }
        items.append({"meta": meta, "model_inputs": inputs})
    return items


def official_total(criterion: Any, loss_dict: dict[str, Any]) -> torch.Tensor:
    weights = criterion.weight_dict
    return sum(loss_dict[k] * weights[k] for k in loss_dict if k in weights)


def flatten_outputs(outputs: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    flat = {}
    for key, value in outputs.items():
        if key == "aux_outputs":
            for i, aux in enumerate(value):
                for k, v in aux.items():
                    flat[f"{prefix}aux_outputs.{i}.{k}"] = v.detach().clone()
        elif isinstance(value, torch.Tensor):
            flat[prefix + key] = value.detach().float().clone()
    return flat


def prediction_tensors(rows: list[dict[str, Any]], num_clips: list[int]) -> dict[str, Any]:
    """Lighthouse's prediction rows as tensors: windows ``(B, Q, 3)``, saliency ``(B, T)``."""
    windows = torch.tensor([r["pred_relevant_windows"] for r in rows], dtype=torch.float64)
    out = {"predictions.windows": windows}
    if "pred_saliency_scores" in rows[0]:
        saliency = torch.zeros(len(rows), max(num_clips), dtype=torch.float64)
        for i, r in enumerate(rows):
            saliency[i, : len(r["pred_saliency_scores"])] = torch.tensor(r["pred_saliency_scores"])
        out["predictions.saliency"] = saliency
    return out


def make_fixture(
    lh: Any, root: Path, model_name: str, preset: str, out: Path, revision: str
) -> Path:
    dataset, lengths, query_lengths, durations = PRESETS[preset]
    opt = official_options(lh, root, model_name, dataset)
    build = lh.moment_detr.build_model if model_name == "moment_detr" else lh.qd_detr.build_model
    torch.manual_seed(SEED)
    model, criterion = build(opt)
    state = random_state(state_shapes(model.state_dict()), SEED)
    model.load_state_dict(state)
    model.eval()  # deterministic: no dropout

    items = make_items(lh, opt, lengths, query_lengths, durations)
    metas, batched = lh.dataset.start_end_collate(items)
    model_inputs, targets = lh.dataset.prepare_batch_inputs(batched, "cpu")
    outputs = model(**model_inputs)
    loss_dict = criterion(outputs, targets)
    total = official_total(criterion, loss_dict)
    loss_dict = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in loss_dict.items()}
    model.zero_grad()
    total.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    with torch.no_grad():  # the first video alone (unpadded)
        t0, n0 = lengths[0], query_lengths[0]
        single = model(
            src_txt=model_inputs["src_txt"][:1, :n0],
            src_txt_mask=model_inputs["src_txt_mask"][:1, :n0],
            src_vid=model_inputs["src_vid"][:1, :t0],
            src_vid_mask=model_inputs["src_vid_mask"][:1, :t0],
        )
        rows, _ = lh.evaluate.compute_mr_results(None, model, [(metas, batched)], opt, None)

    inputs = {
        "src_txt": model_inputs["src_txt"],
        "src_txt_mask": model_inputs["src_txt_mask"],
        "src_vid": model_inputs["src_vid"],
        "src_vid_mask": model_inputs["src_vid_mask"],
        "saliency_pos_labels": targets["saliency_pos_labels"],
        "saliency_neg_labels": targets["saliency_neg_labels"],
        "saliency_all_labels": targets["saliency_all_labels"],
        "duration": torch.tensor([m["duration"] for m in metas], dtype=torch.float64),
    }
    for i, t in enumerate(targets["span_labels"]):
        inputs[f"span_labels.{i}"] = t["spans"]
    outs = flatten_outputs(outputs)
    outs.update(flatten_outputs(single, "single."))
    outs.update(prediction_tensors(rows, lengths))
    losses = {  # weighted by nothing: the criterion's own terms; class_error is a metric
        k: float(v) for k, v in loss_dict.items() if not k.startswith("class_error")
    }
    losses["loss_overall"] = float(total.detach())
    notes = {
        "official": "line/lighthouse",
        "official_revision": revision,
        "torch": torch.__version__,
        "mode": "eval (no dropout); one backward pass of the weighted total",
        "weight_dict": {k: float(v) for k, v in criterion.weight_dict.items()},
        "num_clips": lengths,
        "num_words": query_lengths,
    }
    directory = out / f"lighthouse_{model_name}_{preset}"
    opt_json = {k: v for k, v in dict(opt).items() if not callable(v)}
    save_fixture(
        directory,
        opt=opt_json,
        state=state,
        seed=SEED,
        inputs=inputs,
        outputs=outs,
        losses=losses,
        grads=grads,
        notes=notes,
    )
    return directory


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-dir", required=True, type=Path, help="lighthouse checkout")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/parity"))
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--presets", nargs="+", choices=list(PRESETS), default=list(PRESETS))
    parser.add_argument(
        "--official-revision",
        default=None,
        help="commit of the checkout, recorded in the fixtures (default: asked from git)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    np.seterr(all="ignore")
    root = args.official_dir.resolve()
    lh = import_lighthouse(root)
    revision = args.official_revision or git_revision(root)
    args.out.mkdir(parents=True, exist_ok=True)
    for model_name in args.models:
        for preset in args.presets:
            directory = make_fixture(lh, root, model_name, preset, args.out.resolve(), revision)
            size = sum(f.stat().st_size for f in directory.iterdir())
            print(f"wrote {directory} ({size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
