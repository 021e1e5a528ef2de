"""MS-DETR: MSDE, MTCD (equations by hand), the masked anchor decoder, corpus losses, the model."""

from __future__ import annotations

import math

import pytest
import torch

from momentkit.modeling.anchor_decoder import AnchorDecoder
from momentkit.modeling.corpus_losses import (
    GCE_Q,
    generalized_cross_entropy,
    loss_corpus_contrastive,
    loss_corpus_positive,
    loss_corpus_positive_per_clip,
)
from momentkit.modeling.criterion import LossConfig
from momentkit.modeling.denoising import DenoisingConfig, build_denoising_queries
from momentkit.modeling.dropout import Dropout
from momentkit.modeling.masked_anchor_decoder import MaskedAnchorDecoder, allowed_pairs
from momentkit.modeling.msde import MotionSemanticsDisentangledEncoder, stream_slices
from momentkit.modeling.mtcd import (
    SentenceSaliency,
    boundary_membership,
    clip_proposals,
    refine_saliency,
    span_positional_query,
)
from momentkit.modeling.query_selection import top_k_wrapped
from momentkit.models import MomentModel, build_criterion, build_model
from momentkit.models.ms_detr import MSDETRConfig

B, T, N, D_MOTION, D_SEM, D_TEXT = 3, 10, 5, 12, 8, 8
VIDEO_DIM = D_MOTION + D_SEM + 2  # + TEF

TINY = {
    "name": "ms_detr",
    "video_dim": VIDEO_DIM,
    "text_dim": D_TEXT,
    "stream_dims": [D_MOTION, D_SEM],
    "hidden_dim": 16,
    "nheads": 2,
    "dim_feedforward": 32,
    "num_queries": 4,
    "cross_layers": 1,
    "enc_layers": 1,
    "dec_layers": 2,
    "max_video_len": T,
    "max_text_len": 8,
}


def make_batch(seed: int = 0, aug: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    video_mask = torch.ones(B, T, dtype=torch.bool)
    video_mask[1, 7:] = False
    text_mask = torch.ones(B, N, dtype=torch.bool)
    text_mask[2, 3:] = False
    sal = torch.zeros(B, T)
    sal[0, 2:5], sal[1, 0:3], sal[2, 6:9] = 3.0, 2.0, 4.0
    batch = {
        "video_feats": torch.randn(B, T, VIDEO_DIM, generator=g) * video_mask[..., None],
        "video_mask": video_mask,
        "text_feats": torch.randn(B, N, D_TEXT, generator=g) * text_mask[..., None],
        "text_mask": text_mask,
        "span_targets": [
            {"spans": torch.tensor([[0.35, 0.3]])},
            {"spans": torch.tensor([[0.2, 0.4], [0.8, 0.1]])},
            {"spans": torch.tensor([[0.75, 0.3]])},
        ],
        "saliency_all_labels": sal,
        "saliency_pos_labels": torch.tensor([[2, 3], [0, 1], [6, 7]]),
        "saliency_neg_labels": torch.tensor([[8, 9], [5, 6], [0, 1]]),
    }
    if aug:
        batch["aug_text_feats"] = torch.randn(B, 2, 6, D_TEXT, generator=g)
        batch["aug_text_mask"] = torch.ones(B, 2, 6, dtype=torch.bool)
        batch["aug_kind"] = torch.tensor([[1, 0], [0, -1], [-1, -1]])
    return batch


def tiny_model(seed: int = 0, **changes: object) -> MomentModel:
    torch.manual_seed(seed)
    return build_model({**TINY, **changes})


# ------------------------------------------------------------------------------------- MTCD
def test_topk_selection_picks_most_salient_valid_clips() -> None:
    saliency = torch.tensor([[0.1, 0.9, 0.5, 5.0, 0.7], [3.0, 1.0, 2.0, 9.0, 9.0]])
    mask = torch.tensor([[True, True, True, False, True], [True, True, True, False, False]])
    idx = top_k_wrapped(saliency, mask, 3)
    assert idx.tolist() == [[1, 4, 2], [0, 2, 1]]  # clip 3 (padding, highest) never chosen
    # fewer valid clips than queries: the ranking repeats, still no padding
    idx = top_k_wrapped(saliency, mask, 7)
    assert idx[1].tolist() == [0, 2, 1, 0, 2, 1, 0]
    assert mask.gather(1, idx).all()


def test_mtcd_queries_start_at_the_most_salient_clips() -> None:
    """The K most salient clips' proposals become the anchors (detached, DINO / the official
    --use_tgt), are supervised as ``enc_outputs``, and the content is learned by default."""
    from momentkit.modeling.mtcd import MutualTaskCollaborativeDecoder

    torch.manual_seed(0)
    mtcd = MutualTaskCollaborativeDecoder(16, 2, 1, num_queries=3, dim_feedforward=32)
    clips = torch.randn(2, 8, 16, requires_grad=True)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 5:] = False
    saliency = torch.tensor([[0.0, 5, 1, 0, 4, 0, 3, 0], [2.0, 0, 0, 1, 3, 9, 9, 9]])
    content, anchors, selected = mtcd.matching_queries(clips, saliency, mask)
    centers = torch.sigmoid(anchors[..., 0])
    # MLP_span starts at zero: each anchor is its clip's proposal (centre (i + 0.5) / T_valid)
    expected = torch.tensor([[1.5 / 8, 4.5 / 8, 6.5 / 8], [4.5 / 5, 0.5 / 5, 3.5 / 5]])
    assert torch.allclose(centers, expected, atol=1e-5)
    assert torch.allclose(torch.sigmoid(anchors[..., 1]), torch.full((2, 3), 0.1), atol=1e-5)
    assert not anchors.requires_grad and selected["pred_spans"].requires_grad
    assert torch.allclose(selected["pred_spans"].detach(), torch.sigmoid(anchors), atol=1e-5)
    assert torch.equal(content[0], content[1])  # learned embeddings, not clip features
    mtcd_sel = MutualTaskCollaborativeDecoder(
        16, 2, 1, num_queries=3, dim_feedforward=32, content="selected"
    )
    content, _, _ = mtcd_sel.matching_queries(clips, saliency, mask)
    hidden = mtcd_sel.selection.transform(clips)
    assert torch.allclose(content[0, 0], hidden[0, 1]) and torch.allclose(
        content[1, 0], hidden[1, 4]
    )
    with pytest.raises(ValueError, match="content"):
        MutualTaskCollaborativeDecoder(16, 2, 1, num_queries=3, content="clips")


def test_selected_proposals_are_supervised() -> None:
    model = tiny_model().train()
    out = model(make_batch())
    assert out["enc_outputs"]["pred_spans"].shape == (B, TINY["num_queries"], 2)
    losses = build_criterion(model.config)(out, make_batch())
    assert {"loss_enc_span", "loss_enc_giou", "loss_enc_label"} <= set(losses)
    with pytest.raises(ValueError, match="mtcd_content"):
        MSDETRConfig(**{**TINY, "mtcd_content": "clips"}).validate()


def test_clip_proposals_centres_on_valid_timeline() -> None:
    mask = torch.tensor([[True] * 4 + [False] * 6])
    p = clip_proposals(torch.tensor([[0, 3]]), mask, width=0.1)
    assert torch.allclose(p, torch.tensor([[[0.125, 0.1], [0.875, 0.1]]]))


def test_positional_query_matches_equation_4() -> None:
    d, temperature = 8, 10000.0
    spans = torch.tensor([[0.3, 0.25], [0.9, 0.05]])
    got = span_positional_query(spans, d)
    half = d // 2
    for row, (c, w) in enumerate(spans.tolist()):
        expected = []
        for x in (c, w):
            for i in range(half // 2):
                arg = 2 * math.pi * x / temperature ** (2 * i / half)
                expected += [math.sin(arg), math.cos(arg)]
        assert got[row].tolist() == pytest.approx(expected, abs=1e-6)


def test_sentence_saliency_formula() -> None:
    head = SentenceSaliency(4)
    clips, sentence = torch.randn(2, 3, 4), torch.randn(2, 4)
    expected = (
        torch.stack(
            [
                torch.stack(
                    [
                        head.sentence_proj(sentence[b]) @ head.clip_proj(clips[b, i])
                        for i in range(3)
                    ]
                )
                for b in range(2)
            ]
        )
        / 2.0
    )
    assert torch.allclose(head(clips, sentence), expected, atol=1e-6)


def test_saliency_refinement_by_boundaries_and_foreground() -> None:
    mask = torch.ones(1, 4, dtype=torch.bool)  # clip centres 0.125, 0.375, 0.625, 0.875
    spans = torch.tensor([[[0.25, 0.5], [0.875, 0.25]]])  # clips 0-1, clip 3
    m = boundary_membership(spans, mask)
    assert (m[0, 0, :2] > 0.85).all() and (m[0, 0, 2:] < 0.15).all()
    assert m[0, 1, 3] > 0.85 and (m[0, 1, :3] < 0.15).all()
    logits = torch.tensor([[[2.0, 0.0], [-2.0, 0.0]]])  # p_fg = 0.881, 0.119
    refined = refine_saliency(torch.zeros(1, 4), spans, logits, mask, torch.tensor(2.0))
    p = torch.sigmoid(torch.tensor(2.0))
    assert refined[0, 0].item() == pytest.approx((2 * p * m[0, 0, 0]).item(), rel=1e-5)
    assert refined[0, 3].item() == pytest.approx((2 * (1 - p) * m[0, 1, 3]).item(), rel=1e-5)
    fg = torch.stack([p, 1 - p])[:, None]
    assert torch.allclose(refined[0], 2 * (fg * m[0]).amax(0))
    assert refined[0, 1] > refined[0, 2]
    # padded clips get nothing
    padded = torch.tensor([[True, True, True, False]])
    assert boundary_membership(spans, padded)[0, :, 3].abs().max() == 0


@pytest.mark.parametrize("mode", ["joint", "detached", "off"])
def test_saliency_refinement_modes(mode: str) -> None:
    """``joint`` lets the highlight losses reach the moment heads through the refinement,
    ``detached`` gives the same scores without that gradient, ``off`` keeps the encoder's S."""
    models = {m: tiny_model(saliency_refinement=m).eval() for m in ("joint", mode)}
    with torch.no_grad():
        joint, out = (models[m](make_batch(aug=False)) for m in ("joint", mode))
    raw = joint["saliency_scores"] - models["joint"].mtcd.refine_weight * (
        joint["pred_logits"].softmax(-1)[..., 0, None]
        * boundary_membership(joint["pred_spans"], make_batch()["video_mask"])
    ).amax(1)
    if mode == "off":
        assert models[mode].mtcd.refine_weight is None
        assert torch.allclose(out["saliency_scores"], raw, atol=1e-5)
    else:
        assert torch.allclose(out["saliency_scores"], joint["saliency_scores"], atol=1e-6)
    model = models[mode]
    model(make_batch(aug=False))["saliency_scores"].sum().backward()
    head_grad = model.mtcd.head.class_embed.weight.grad
    reached = head_grad is not None and head_grad.abs().sum() > 0
    assert reached == (mode == "joint")
    assert model.saliency.clip_proj.weight.grad.abs().sum() > 0  # the encoder's S always learns
    if mode != "off":
        assert model.mtcd.refine_weight.grad.abs() > 0
    with pytest.raises(ValueError, match="saliency_refinement"):
        MSDETRConfig(**{**TINY, "saliency_refinement": "both"}).validate()


# ------------------------------------------------------------------------------------- MSDE
def test_stream_slices_and_errors() -> None:
    streams, shared = stream_slices(22, [12, 8])
    assert streams == [slice(0, 12), slice(12, 20)] and shared == slice(20, 22)
    with pytest.raises(ValueError, match="stream_dims"):
        stream_slices(10, [8, 8])


def _msde(**kw: object) -> MotionSemanticsDisentangledEncoder:
    torch.manual_seed(0)
    args = dict(d_model=16, nhead=2, num_layers=1, dim_feedforward=32, dropout=0.0)
    return MotionSemanticsDisentangledEncoder(VIDEO_DIM, **{"stream_dims": [12, 8], **args, **kw})


def test_msde_branches_see_only_their_stream() -> None:
    msde = _msde().eval()
    video, mask = torch.randn(2, T, VIDEO_DIM), torch.ones(2, T, dtype=torch.bool)
    pos, text = torch.randn(2, T, 16), torch.randn(2, N, 16)
    tmask = torch.ones(2, N, dtype=torch.bool)

    def branches(v: torch.Tensor) -> dict[str, torch.Tensor]:
        return msde.interact(msde.project(v, mask), pos, text, None, tmask)

    base = branches(video)
    assert set(base) == {"motion", "semantic"}
    for channels, changed in ((slice(0, 12), "motion"), (slice(12, 20), "semantic")):
        other = video.clone()
        other[..., channels] += torch.randn_like(other[..., channels])
        out = branches(other)
        kept = "semantic" if changed == "motion" else "motion"
        assert torch.equal(out[kept], base[kept])
        assert not torch.allclose(out[changed], base[changed])
    tef = video.clone()
    tef[..., 20:] += 1.0  # shared channels reach both branches
    out = branches(tef)
    assert not torch.allclose(out["motion"], base["motion"])
    assert not torch.allclose(out["semantic"], base["semantic"])
    fused = msde(video, mask, pos, text, None, tmask)
    assert fused.shape == (2, T, 16)


@pytest.mark.parametrize("kw", [{"stream_dims": []}, {"stream_dims": [20]}, {"disentangle": False}])
def test_msde_degrades_to_one_shared_stream(kw: dict) -> None:
    msde = _msde(**kw).eval()
    assert not msde.disentangled and set(msde.branches) == {"shared"} and msde.fuse is None
    assert msde.branches["shared"].proj.layers[0].linear.in_features == VIDEO_DIM
    video, mask = torch.randn(2, T, VIDEO_DIM), torch.ones(2, T, dtype=torch.bool)
    out = msde(video, mask, torch.randn(2, T, 16), torch.randn(2, N, 16), None,
               torch.ones(2, N, dtype=torch.bool))  # fmt: skip
    assert out.shape == (2, T, 16)


# -------------------------------------------------------------------- masked anchor decoder
def test_masked_anchor_decoder_equals_anchor_decoder_without_mask() -> None:
    torch.manual_seed(0)
    plain = AnchorDecoder(16, 2, 2, 32, 0.0).eval()
    masked = MaskedAnchorDecoder(16, 2, 2, 32, 0.0).eval()
    masked.load_state_dict(plain.state_dict())
    memory, pos = torch.randn(2, T, 16), torch.randn(2, T, 16)
    anchors, mask = torch.randn(5, 2), torch.ones(2, T, dtype=torch.bool)
    hs_a, ref_a = plain(memory, anchors, pos, mask)
    hs_b, ref_b = masked(memory, anchors, pos, mask)
    assert torch.allclose(hs_a, hs_b, atol=1e-6) and torch.allclose(ref_a, ref_b, atol=1e-6)


def test_masked_anchor_decoder_keeps_matching_queries_blind_to_denoising() -> None:
    torch.manual_seed(0)
    dec = MaskedAnchorDecoder(16, 2, 2, 32, 0.0).eval()
    targets = [{"spans": torch.tensor([[0.3, 0.2], [0.7, 0.1]])}]
    dn = build_denoising_queries(targets, DenoisingConfig(num_groups=3), 4)
    d = dn.num_denoising
    memory, pos = torch.randn(1, T, 16), torch.randn(1, T, 16)
    mask = torch.ones(1, T, dtype=torch.bool)
    anchors = torch.randn(1, d + 4, 2)
    tgt = torch.randn(1, d + 4, 16)
    hs, _ = dec(memory, anchors, pos, mask, tgt, dn.attn_mask, dn.key_mask(4))
    alone, _ = dec(memory, anchors[:, d:], pos, mask, tgt[:, d:])
    assert torch.allclose(hs[:, :, d:], alone, atol=1e-5)  # as if no denoising query existed
    # group 1 does not change group 0
    tgt2 = tgt.clone()
    tgt2[:, 4:8] += 1.0
    hs2, _ = dec(memory, anchors, pos, mask, tgt2, dn.attn_mask, dn.key_mask(4))
    assert torch.allclose(hs2[:, :, :4], hs[:, :, :4], atol=1e-5)
    assert not torch.allclose(hs2[:, :, 4:8], hs[:, :, 4:8])


def test_allowed_pairs_masks_invalid_keys_but_keeps_self() -> None:
    blocked = torch.tensor([[False, True], [False, False]])
    allowed = allowed_pairs(blocked, torch.tensor([[True, False]]))
    assert allowed.shape == (1, 1, 2, 2)
    assert allowed[0, 0].tolist() == [[True, False], [True, True]]
    assert allowed_pairs(None, torch.ones(1, 2, dtype=torch.bool)) is None


# ---------------------------------------------------------------------------- corpus losses
def test_corpus_contrastive_hinge_by_hand() -> None:
    labels = torch.tensor([[0.0, 2.0, 2.0, 0.0]])
    outputs = {
        "saliency_scores": torch.tensor([[0.0, 1.0, 0.6, 5.0]]),  # moment score 0.8
        "aug_saliency_scores": torch.tensor([[[9.0, 0.9, 0.9, 9.0], [0.0, 0.2, 0.0, 0.0]]]),
        "video_mask": torch.ones(1, 4, dtype=torch.bool),
    }
    batch = {"saliency_all_labels": labels, "aug_kind": torch.tensor([[0, 0]])}
    cfg = LossConfig(saliency_margin=0.2)
    # negatives score 0.9 and 0.1 on the moment: hinges 0.2 + 0.9 - 0.8 = 0.3 and 0
    got = loss_corpus_contrastive(outputs, batch, [], cfg)["loss_corpus_contrast"]
    assert got.item() == pytest.approx(0.15)
    batch["aug_kind"] = torch.tensor([[1, -1]])  # no negative: skipped
    assert loss_corpus_contrastive(outputs, batch, [], cfg) == {}
    assert (
        loss_corpus_contrastive({"saliency_scores": outputs["saliency_scores"]}, batch, [], cfg)
        == {}
    )


def test_corpus_positive_per_clip_is_bounded_gce() -> None:
    logits, targets = torch.tensor([2.0, -30.0]), torch.tensor([True, True])
    gce = generalized_cross_entropy(logits, targets)
    p = torch.sigmoid(torch.tensor(2.0)).item()
    assert gce[0].item() == pytest.approx((1 - p**GCE_Q) / GCE_Q, rel=1e-5)
    assert gce[1].item() == pytest.approx(1 / GCE_Q, rel=1e-4)  # bounded, unlike CE (= 30)
    outputs = {
        "saliency_scores": torch.zeros(1, 3),
        "aug_saliency_scores": torch.tensor([[[4.0, -4.0, -4.0], [-4.0, 4.0, 4.0]]]),
        "video_mask": torch.tensor([[True, True, False]]),
    }
    batch = {
        "saliency_all_labels": torch.tensor([[3.0, 0.0, 0.0]]),
        "aug_kind": torch.tensor([[1, 1]]),
    }
    loss = loss_corpus_positive_per_clip(outputs, batch, [], LossConfig())
    loss = loss["loss_corpus_positive"]
    good = generalized_cross_entropy(torch.tensor(4.0), torch.tensor(True)).item()
    bad = generalized_cross_entropy(torch.tensor(-4.0), torch.tensor(True)).item()
    assert loss.item() == pytest.approx((good + bad) / 2, rel=1e-5)  # padded clip ignored


def test_corpus_positive_is_gce_of_the_moments_softmax_share() -> None:
    aug = torch.tensor([[[2.0, 0.0, 9.0], [0.0, 0.0, 5.0]], [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])
    outputs = {
        "saliency_scores": torch.zeros(2, 3),
        "aug_saliency_scores": aug.clone().requires_grad_(),
        "video_mask": torch.tensor([[True, True, False], [True, True, True]]),
    }
    batch = {  # video 1 has no moment: its positive is skipped (and gives no NaN gradient)
        "saliency_all_labels": torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
        "aug_kind": torch.tensor([[1, 1], [1, -1]]),
    }
    cfg = LossConfig(rank_tau=0.5)
    loss = loss_corpus_positive(outputs, batch, [], cfg)["loss_corpus_positive"]
    # padded clip 2 ignored; shares e^4 / (e^4 + 1) and 1 / 2 at temperature 0.5
    shares = [math.exp(4) / (math.exp(4) + 1), 0.5]
    want = sum((1 - p**GCE_Q) / GCE_Q for p in shares) / 2
    assert loss.item() == pytest.approx(want, rel=1e-5)
    loss.backward()
    assert torch.isfinite(outputs["aug_saliency_scores"].grad).all()
    # a shift of all saliencies changes nothing; the per-clip form moves with the level and,
    # where MS-DETR's saliencies sit after training (~ -7), has almost no gradient left
    low = {**outputs, "aug_saliency_scores": (aug - 7.0).requires_grad_()}
    assert loss_corpus_positive(low, batch, [], cfg)["loss_corpus_positive"].item() == (
        pytest.approx(want, rel=1e-5)
    )
    per_clip = loss_corpus_positive_per_clip(low, batch, [], cfg)["loss_corpus_positive"]
    (grad_per_clip,) = torch.autograd.grad(per_clip, low["aug_saliency_scores"])
    (grad_share,) = torch.autograd.grad(
        loss_corpus_positive(low, batch, [], cfg)["loss_corpus_positive"],
        low["aug_saliency_scores"],
    )
    assert grad_per_clip.abs().max() < 0.02 < grad_share.abs().max()
    batch["aug_kind"] = torch.tensor([[0, -1], [1, -1]])  # no positive with a moment: skipped
    assert loss_corpus_positive(outputs, batch, [], cfg) == {}


# ------------------------------------------------------------------------------------ model
def test_training_outputs_with_corpus_and_denoising() -> None:
    model = tiny_model().train()
    batch = make_batch()
    out = model(batch)
    assert out["pred_logits"].shape == (B, 4, 2) and out["pred_spans"].shape == (B, 4, 2)
    assert out["saliency_scores"].shape == (B, T) and out["saliency_scores_neg"].shape == (B, T)
    assert out["aug_saliency_scores"].shape == (B, 2, T)
    assert (out["aug_saliency_scores"][batch["aug_kind"] == -1] == 0).all()
    dn = out["dn_queries"]
    assert out["dn_pred_spans"].shape == (B, dn.num_denoising, 2)
    assert all("dn_pred_logits" in a for a in out["aux_outputs"])
    losses = build_criterion(model.config)(out, batch)
    expected = {"loss_dn_span", "loss_dn_label_0", "loss_corpus_contrast", "loss_corpus_positive"}
    assert expected <= set(losses) and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert model.msde.branches["motion"].proj.layers[0].linear.weight.grad is not None


def test_works_without_generated_queries_and_in_eval() -> None:
    model = tiny_model().train()
    batch = make_batch(aug=False)
    out = model(batch)
    assert "aug_saliency_scores" not in out
    losses = build_criterion(model.config)(out, batch)
    assert "loss_corpus_contrast" not in losses and "loss_corpus_positive" not in losses
    model.eval()
    with torch.no_grad():
        a, b = model(make_batch()), model(make_batch())
    assert not any(k.startswith(("dn_", "aug_")) or k == "saliency_scores_neg" for k in a)
    assert torch.equal(a["pred_spans"], b["pred_spans"])


def test_generated_query_equal_to_source_scores_like_it() -> None:
    model = tiny_model(dropout=0.0, input_dropout=0.0, fuse_dropout=0.0, use_mtcd=False).train()
    batch = make_batch()
    batch["aug_text_feats"] = torch.zeros(B, 1, N, D_TEXT)
    batch["aug_text_feats"][:, 0] = batch["text_feats"]
    batch["aug_text_mask"] = batch["text_mask"][:, None].clone()
    batch["aug_kind"] = torch.tensor([[1], [0], [1]])
    out = model(batch)
    assert torch.allclose(out["aug_saliency_scores"][:, 0], out["saliency_scores"], atol=1e-5)


def test_padding_content_does_not_change_predictions() -> None:
    model = tiny_model().eval()
    batch = make_batch(aug=False)
    noisy = dict(batch)
    noisy["video_feats"] = batch["video_feats"] + 5.0 * (~batch["video_mask"])[..., None]
    noisy["text_feats"] = batch["text_feats"] + 5.0 * (~batch["text_mask"])[..., None]
    with torch.no_grad():
        a, b = model(batch), model(noisy)
    assert torch.allclose(a["pred_spans"], b["pred_spans"], atol=1e-5)
    valid = batch["video_mask"]
    assert torch.allclose(a["saliency_scores"][valid], b["saliency_scores"][valid], atol=1e-5)


@pytest.mark.parametrize(
    "changes",
    [
        {"use_msde": False},
        {"use_mtcd": False},
        {"use_denoising": False},
        {"use_corpus": False},
        {"stream_dims": []},
    ],
)
def test_ablations_build_and_train(changes: dict) -> None:
    model = tiny_model(**changes).train()
    out = model(make_batch())
    losses = build_criterion(model.config)(out, make_batch())
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    if changes.get("use_msde") is False or changes.get("stream_dims") == []:
        assert set(model.msde.branches) == {"shared"}
    if changes.get("use_mtcd") is False:
        assert not hasattr(model.mtcd, "selection") and model.mtcd.refine_weight is None
        assert "enc_outputs" not in out and "loss_enc_span" not in losses
    if changes.get("use_denoising") is False:
        assert "dn_queries" not in out
    if changes.get("use_corpus") is False:
        assert "aug_saliency_scores" not in out


def test_config_defaults_and_validation() -> None:
    c = MSDETRConfig()
    assert (c.hidden_dim, c.enc_layers, c.dec_layers, c.cross_layers, c.nheads) == (256, 2, 2, 2, 8)
    assert (c.dim_feedforward, c.dropout, c.input_dropout, c.num_queries) == (1024, 0.1, 0.5, 20)
    assert (c.use_mtcd, c.mtcd_content, c.saliency_refinement) == (True, "learned", "detached")
    assert (c.denoising.num_groups, c.denoising.span_noise, c.denoising.focal_alpha) == (
        10,
        0.5,
        0.25,
    )
    w = c.loss.weights
    assert (w["loss_span"], w["loss_giou"], w["loss_label"], c.loss.eos_coef) == (10, 1, 4, 0.1)
    assert c.loss.saliency_margin == 0.2 and c.stream_dims == [2304, 512]
    with pytest.raises(ValueError, match="stream_dims"):
        build_model({**TINY, "stream_dims": [20, 20]})
    with pytest.raises(ValueError, match="model.denoising.num_groups"):
        build_model({**TINY, "denoising": {"num_groups": 0}})
    with pytest.raises(ValueError, match=r"model.fuse_dropout must be in \[0, 1\)"):
        build_model({**TINY, "fuse_dropout": 1.0})


def _dropout_rates(module: torch.nn.Module) -> set[float]:
    return {m.p for m in module.modules() if isinstance(m, Dropout)}


def test_fuse_dropout_sets_only_phi() -> None:
    # official: phi (concat_vid_proj) reuses the input dropout; fuse_dropout changes phi alone
    assert MSDETRConfig().fuse_dropout == MSDETRConfig().input_dropout == 0.5
    model = build_model({**TINY, "input_dropout": 0.5, "fuse_dropout": 0.1})
    assert _dropout_rates(model.msde.fuse) == {0.1}
    for branch in model.msde.branches.values():
        assert _dropout_rates(branch.proj) == {0.5}
    assert _dropout_rates(model.text_proj) == {0.5}
    default = build_model({**TINY, "input_dropout": 0.5})
    assert _dropout_rates(default.msde.fuse) == {0.5}


def test_save_and_load_roundtrip(tmp_path) -> None:
    model = tiny_model().eval()
    model.save_pretrained(tmp_path / "m")
    loaded = MomentModel.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        a, b = model(make_batch()), loaded(make_batch())
    assert torch.equal(a["pred_spans"], b["pred_spans"])
    assert torch.equal(a["saliency_scores"], b["saliency_scores"])


def test_overfits_a_few_samples() -> None:
    model = tiny_model(seed=1).train()
    criterion = build_criterion(model.config)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    batch = make_batch(seed=1)
    history = []
    for _ in range(60):
        losses = criterion(model(batch), batch)
        opt.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        history.append(losses["loss"].item())
    assert all(math.isfinite(x) for x in history)
    assert sum(history[-10:]) / 10 < 0.6 * sum(history[:10]) / 10


@pytest.mark.parametrize("preset", ["qvhighlights", "charades_sta", "tacos", "synth"])
def test_presets_load_and_validate(preset: str) -> None:
    from momentkit.training.config import build_config

    cfg = build_config("ms_detr", f"ms_detr/{preset}")
    assert isinstance(cfg.model, MSDETRConfig) and cfg.model.num_queries == 20
    cfg.model.validate()
    assert cfg.optim.grad_clip == 0.1
    if preset == "synth":  # the common CPU budget of every synth preset
        assert (cfg.optim.lr, cfg.trainer.batch_size, cfg.model.hidden_dim) == (3e-4, 8, 128)
        assert cfg.model.fuse_dropout == 0.1  # see docs/ms_detr.md
    else:
        assert cfg.optim.lr == 1e-4 and cfg.trainer.batch_size == 32
        assert cfg.model.fuse_dropout == cfg.model.input_dropout == 0.5  # official


# ------------------------------------------------------------------ the release's switches
RELEASE = {
    "activation": "prelu",
    "sentence_token": "before_fusion",
    "mtcd_rank": "class_logit",
    "mtcd_candidates": "all",
    "mtcd_min_anchor_width": 0.0,
    "selection_init": "release",
    "saliency_refinement": "off",
    "denoising_negatives": False,
    "denoising_targets": "last_video",
    "denoising_source": "negative_pairs",
    "decoder_negatives": True,
    "selection_negatives": True,
    "use_corpus": False,
    "t2v_mask": "tiled",
    "project_padding": True,
}


def test_release_variant_trains_with_its_extra_losses() -> None:
    model = tiny_model(**RELEASE).train()
    batch = make_batch()
    out = model(batch)
    assert out["pred_logits_neg"].shape == (B, 4, 2)
    assert all("pred_logits_neg" in a for a in out["aux_outputs"])
    assert out["enc_outputs_neg"]["pred_logits"].shape == (B, 4, 2)
    dn = out["dn_queries"]  # positive-only groups of the last video's (one) span, every video
    assert dn.num_denoising == 10 * 1 and bool((dn.labels == 0).all())
    last = batch["span_targets"][-1]["spans"]
    assert all(torch.equal(dn.target_spans[i, :1], last) for i in range(B))
    losses = build_criterion(model.config)(out, batch)
    expected = {"loss_label_neg", "loss_label_neg_0", "loss_enc_label_neg", "loss_dn_span"}
    assert expected <= set(losses)
    losses["loss"].backward()
    assert model.msde.fuse.layers[0].linear.weight.grad is not None


def test_denoising_source_reads_the_negative_pairs() -> None:
    """The release's DN loss reads the negative pairs' decoding: with the same weights and
    noise, switching the source changes the DN outputs but not the matched predictions."""
    outs = {}
    for source in ("matched", "negative_pairs"):
        torch.manual_seed(3)
        model = tiny_model(dropout=0.0, input_dropout=0.0, fuse_dropout=0.0, **RELEASE)
        model.config.denoising_source = source
        torch.manual_seed(4)
        outs[source] = model.train()(make_batch())
    a, b = outs["matched"], outs["negative_pairs"]
    assert torch.allclose(a["pred_logits"], b["pred_logits"])
    assert not torch.allclose(a["dn_pred_logits"], b["dn_pred_logits"])
    with pytest.raises(ValueError, match="decoder_negatives"):
        MSDETRConfig(**{**TINY, "denoising_source": "negative_pairs"}).validate()


def test_release_denoising_layout_and_noise_order() -> None:
    from momentkit.modeling.mtcd_denoising import release_denoising_queries

    targets = [{"spans": torch.tensor([[0.5, 0.2]])}, {"spans": torch.tensor([[0.3, 0.2]] * 2)}]
    cfg = DenoisingConfig(num_groups=3, span_noise=0.5)
    own = release_denoising_queries(targets, cfg, 4, negatives=False, generator=None)
    assert own.num_denoising == 3 * 2 and own.valid[0].tolist() == [True, False] * 3
    assert own.attn_mask.shape == (10, 10) and bool(own.attn_mask[0, 2]) and not own.attn_mask[0, 1]
    both = release_denoising_queries(targets, cfg, 4, negatives=True)
    assert both.num_denoising == 3 * 4 and both.labels[1, :4].tolist() == [0, 0, 1, 1]
    last = release_denoising_queries(targets, cfg, 4, negatives=False, target_mode="last_video")
    assert bool(last.valid.all()) and torch.equal(last.target_spans[0], last.target_spans[1])
    # noise: edge moved by sign * u * 0.5 * w / 2 (u < 1 positives), not re-ordered
    g = torch.Generator().manual_seed(0)
    q = release_denoising_queries(targets[:1], cfg, 4, negatives=True, generator=g)
    start, end = q.spans[0, :, 0] - q.spans[0, :, 1] / 2, q.spans[0, :, 0] + q.spans[0, :, 1] / 2
    moved = torch.stack([(start - 0.4).abs(), (end - 0.6).abs()], -1)
    assert (moved[q.labels[0] == 0] < 0.05 + 1e-6).all()
    assert ((moved[q.labels[0] == 1] >= 0.05 - 1e-6) & (moved[q.labels[0] == 1] < 0.1)).all()


def test_release_selection_ranks_by_class_logit_over_every_position() -> None:
    from momentkit.modeling.mtcd import MutualTaskCollaborativeDecoder, select_queries

    torch.manual_seed(0)
    mtcd = MutualTaskCollaborativeDecoder(16, 2, 1, num_queries=3, dim_feedforward=32)
    clips = torch.randn(1, 60, 16)
    mask = torch.ones(1, 60, dtype=torch.bool)
    mask[0, 55:] = False  # 55 valid clips: the first and last proposals leave (0.01, 0.99)
    sel = select_queries(mtcd.selection, clips, mask, torch.zeros(1, 60), "class_logit", "all")
    logits = mtcd.selection.class_embed(mtcd.selection.transform(clips))[0, :, 0]
    usable = mask[0].clone()
    usable[[0, 54]] = False
    zero = mtcd.selection.class_embed(mtcd.selection.transform(torch.zeros(16)))[0]
    ranked = torch.where(usable, logits, zero).argsort(descending=True)[:3]
    assert sorted(sel.enc_logits[0, :, 0].tolist()) == pytest.approx(
        sorted(torch.where(usable, logits, zero)[ranked].tolist()), abs=1e-6
    )
    infinite = ~usable[sel.index[0]]
    assert (
        torch.isinf(sel.anchors[0][infinite]).all()
        and torch.isfinite(sel.anchors[0][~infinite]).all()
    )
    assert (sel.enc_spans[0][infinite] == 1.0).all()


def test_sentence_token_before_fusion_goes_through_phi() -> None:
    torch.manual_seed(0)
    msde = MotionSemanticsDisentangledEncoder(VIDEO_DIM, [D_MOTION, D_SEM], 16, 2, 1, 32, 0.0, 0.0)
    token = torch.randn(2, 1, 16)
    outs = {"motion": torch.randn(2, 5, 16), "semantic": torch.randn(2, 5, 16)}
    mask = torch.ones(2, 5, dtype=torch.bool)
    fused = msde.fuse_branches(outs, mask, token=token)
    assert fused.shape == (2, 6, 16)
    assert torch.allclose(fused[:, 0], msde.fuse(torch.cat([token, token], -1))[:, 0], atol=1e-6)
    assert torch.allclose(fused[:, 1:], msde.fuse_branches(outs, mask), atol=1e-6)


def test_tiled_t2v_mask_borrows_other_videos_padding() -> None:
    from momentkit.modeling.msde import tiled_t2v_allowed

    video = torch.tensor([[True, True, True], [True, False, False]])
    text = torch.tensor([[True, True], [True, False]])
    allowed = tiled_t2v_allowed(video, text, nhead=2)  # head h of video b: video (2b + h) % 2
    assert allowed.shape == (2, 2, 3, 2)
    assert bool(allowed[0, 0].all()) and not bool(allowed[0, 1, 2, 1])  # video 1's padding
    assert torch.equal(allowed[1], allowed[0])
    single = tiled_t2v_allowed(video[1:], text[1:], nhead=2)
    assert not bool(single[0, 0, 1, 1]) and bool(single[0, 0, 1, 0])


def test_release_presets_set_every_switch() -> None:
    from momentkit.training.config import build_config

    for preset in ("qvhighlights", "charades_sta", "tacos", "synth_official"):
        model = build_config("ms_detr", f"ms_detr/{preset}").model
        for name, value in RELEASE.items():
            assert getattr(model, name) == value, (preset, name)
        assert model.fuse_dropout == 0.5 and model.mtcd_content == "learned"
    synth = build_config("ms_detr", "ms_detr/synth_official")
    assert (synth.optim.lr, synth.trainer.batch_size, synth.model.hidden_dim) == (3e-4, 8, 128)


def test_train_infers_the_stream_widths_from_the_feature_stores(tmp_path) -> None:
    """256-d motion + 512-d semantic streams train without overrides: ``stream_dims`` comes
    from the ``--video-features`` stores, like ``video_dim``."""
    import json

    import numpy as np

    from momentkit.cli.main import main
    from momentkit.data.synth import SynthConfig, generate

    root = tmp_path / "synth"
    generate(SynthConfig(num_train=6, num_val=3, seed=2, min_duration=20, max_duration=24), root,
             progress=False)  # fmt: skip
    feats = root / "features"
    narrow = tmp_path / "motion256"
    narrow.mkdir()
    for file in (feats / "slowfast").glob("*.npz"):
        np.savez(narrow / file.name, features=np.load(file)["features"][:, :256])
    out = tmp_path / "run"
    args = ["train", "--model", "ms_detr", "--preset", "synth_official"]
    args += ["--train", str(root / "annotations" / "train.jsonl")]
    args += ["--val", str(root / "annotations" / "val.jsonl")]
    args += ["--video-features", str(narrow), str(feats / "clip")]
    args += ["--text-features", str(feats / "clip_text"), "--out", str(out), "--epochs", "1"]
    args += ["--batch-size", "3", "--set", "model.hidden_dim=16", "model.dim_feedforward=32",
             "model.nheads=2", "model.num_queries=4", "model.enc_layers=1", "model.dec_layers=1",
             "model.cross_layers=1", "trainer.progress=false",
             "data.eval_batch_size=3"]  # fmt: skip
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())["model"]
    assert config["stream_dims"] == [256, 512] and config["video_dim"] == 256 + 512 + 2
