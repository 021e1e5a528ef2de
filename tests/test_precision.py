"""Ranked scores stay float32 under bf16 autocast (momentkit.modeling.precision)."""

from __future__ import annotations

import pytest
import torch

from momentkit.modeling.precision import in_float32
from momentkit.models import build_model

TINY = {"hidden_dim": 16, "dim_feedforward": 32, "nheads": 2, "num_queries": 4}


def test_in_float32_runs_the_call_in_float32_only_under_autocast() -> None:
    linear = torch.nn.Linear(8, 3)
    x = torch.randn(5, 8).bfloat16()  # what an earlier bf16 layer hands over
    reference = linear(x.float())  # float32, no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(x).dtype == torch.bfloat16  # what autocast alone gives
        inside = in_float32(linear, x)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, reference, atol=1e-6, rtol=0)
    assert torch.equal(in_float32(linear, x.float()), reference)  # no autocast: the plain call


def _batch(length: int = 40) -> dict:
    from momentkit.benchmarks.official_videos import make_videos

    return make_videos(2, length, 6, seed=0).momentkit_batch(("slowfast", "clip"))


@pytest.mark.parametrize("name", ["moment_detr", "qd_detr", "ld_detr", "ms_detr", "sg_detr"])
def test_saliency_scores_are_not_rounded_to_bf16_under_autocast(name: str) -> None:
    """Under bf16 autocast every model's saliency scores are computed in float32: some of them
    are not representable in bf16 (with the head in bf16 all of them were, and 40 clips of one
    video tied in groups, which is what cost highlight detection 5 HL mAP on synth)."""
    torch.manual_seed(0)
    batch = _batch()
    config = {"name": name, "video_dim": batch["video_feats"].shape[-1], "text_dim": 512, **TINY}
    if name == "ld_detr":
        config["distill_align"] = False
    model = build_model(config).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        scores = model(batch)["saliency_scores"]
    assert scores.dtype == torch.float32
    valid = scores[batch["video_mask"].bool()]
    assert (valid - valid.bfloat16().float()).abs().max() > 0
