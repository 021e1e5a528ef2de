"""Weight files, records and bad inputs of the ``clip_slowfast`` pipeline (fast: tiny CLIP)."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from momentkit.encoders.base import EncoderError
from momentkit.encoders.clip_openai import hf_config_from_openai, openai_state_from_hf
from momentkit.encoders.slowfast import SlowFast, SlowFastConfig
from momentkit.encoders.slowfast_weights import (
    SlowFastWeightsError,
    caffe2_name,
    load_slowfast,
    random_blobs,
    read_blobs,
    save_caffe2_blobs,
    state_dict_from_blobs,
)
from momentkit.encoders.torchscript_archive import read_torchscript_tensors
from momentkit.interop.safe_pickle import UnreadableCheckpointError, UnsafeFileError

FIXTURES = Path(__file__).parent / "fixtures" / "features"
CLIP = FIXTURES / "clip_tiny.pt"
BPE = FIXTURES / "bpe_tiny.txt.gz"
SMALL = SlowFastConfig(width=8, blocks=(1, 1, 1, 1))  # 2 fast channels... per pathway
SPEC = f"clip_slowfast:clip={CLIP},slowfast=none,tokenizer={BPE}"

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------ SlowFast file
def test_r50_has_the_552_weight_blobs_of_the_model_zoo_file() -> None:
    model = SlowFast()
    names = [caffe2_name(k) for k in model.state_dict()]
    names = [n for n in names if n is not None]
    assert len(names) == len(set(names)) == 552
    assert model.config.feature_dim == 2304
    for expected in (
        "conv1_w",
        "res_conv1_bn_riv",
        "t_conv1_w",
        "t_pool1_subsample_w",
        "t_res2_2_branch2c_bn_subsample_bn_s",
        "t_res4_5_branch2c_bn_subsample_w",
        "res5_2_branch2c_bn_b",
        "res2_0_branch1_w",
        "t_res3_0_branch1_bn_rm",
        "pred_w",
        "pred_b",
    ):
        assert expected in names


def test_python2_caffe2_pickle_round_trip(tmp_path: Path) -> None:
    blobs = random_blobs(1, SMALL)
    path = save_caffe2_blobs(tmp_path / "sf.pkl", blobs)
    data = path.read_bytes()
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in data  # Python-2 names and opcodes
    assert pickle.BINUNICODE not in data[:64]
    model = load_slowfast(path, SMALL)
    state = model.state_dict()
    np.testing.assert_array_equal(state["slow_stem.conv.conv.weight"].numpy(), blobs["conv1_w"])
    np.testing.assert_array_equal(state["classifier.bias"].numpy(), blobs["pred_b"])
    x = torch.rand(1, 3, 32, 224, 224)
    out = model.eval()(*model.pathways(x))
    assert out.shape == (1, SMALL.feature_dim) and torch.isfinite(out).all()


def test_weight_file_refusals_name_the_file(tmp_path: Path) -> None:
    blobs = random_blobs(2, SMALL, momentum=False)
    model = SlowFast(SMALL)
    bad = dict(blobs, conv1_w=blobs["conv1_w"][:, :, :, :3])
    with pytest.raises(SlowFastWeightsError, match=r"x\.pkl: blob 'conv1_w' has shape"):
        state_dict_from_blobs(bad, model, "x.pkl")
    missing = {k: v for k, v in blobs.items() if k != "res3_0_branch2b_w"}
    with pytest.raises(SlowFastWeightsError, match=r"x\.pkl: the file lacks 1 weight blob"):
        state_dict_from_blobs(missing, model, "x.pkl")
    with pytest.raises(SlowFastWeightsError, match=r"x\.pkl: blob\(s\) nonlocal_w belong to no"):
        state_dict_from_blobs(dict(blobs, nonlocal_w=blobs["pred_b"]), model, "x.pkl")
    # not a weights dict
    listed = tmp_path / "list.pkl"
    listed.write_bytes(pickle.dumps([np.zeros(3)], protocol=2))
    with pytest.raises(SlowFastWeightsError, match=r"list\.pkl: not a SlowFast weights dict"):
        read_blobs(listed)
    nested = tmp_path / "nested.pkl"
    nested.write_bytes(pickle.dumps({"model_state": {}}, protocol=2))
    with pytest.raises(SlowFastWeightsError, match=r"nested\.pkl: not a SlowFast weights dict"):
        read_blobs(nested)
    # code in the pickle is never run
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(b"cos\nsystem\n(S'echo owned'\ntR.")
    with pytest.raises(UnsafeFileError, match=r"evil\.pkl: refused to load.*'os\.system'"):
        read_blobs(evil)
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    with pytest.raises(UnreadableCheckpointError, match=r"empty\.pkl: the file is empty"):
        read_blobs(empty)


def test_encoder_refuses_a_slowfast_file_that_is_not_weights(tmp_path: Path) -> None:
    from momentkit.encoders import build_encoder

    bad = tmp_path / "notes.pkl"
    bad.write_bytes(pickle.dumps({"hello": "world"}, protocol=2))
    with pytest.raises(SlowFastWeightsError, match=r"notes\.pkl: not a SlowFast weights dict"):
        build_encoder(f"clip_slowfast:clip={CLIP},slowfast={bad},tokenizer={BPE}")
    with pytest.raises(EncoderError, match="needs the SlowFast weights"):
        build_encoder(f"clip_slowfast:clip={CLIP},tokenizer={BPE}")


# ------------------------------------------------------------------------------ CLIP archive
def test_torchscript_archive_is_read_without_running_it() -> None:
    tensors = read_torchscript_tensors(CLIP)
    assert tensors["visual.conv1.weight"].dtype == torch.float16  # OpenAI's mixed precisions
    assert tensors["ln_final.weight"].dtype == torch.float32
    config = hf_config_from_openai(tensors)
    assert (config.vision_config.patch_size, config.vision_config.image_size) == (16, 224)
    assert config.text_config.vocab_size == 614


def test_openai_and_hugging_face_forms_give_the_same_features(tmp_path: Path) -> None:
    from momentkit.encoders.clip_openai import load_openai_archive
    from momentkit.encoders.clip_slowfast import ClipSlowFastEncoder
    from momentkit.encoders.clip_text import tokenizer_files_from_bpe

    hf = load_openai_archive(CLIP)
    hf.save_pretrained(tmp_path / "hf")
    tokenizer_files_from_bpe(BPE, tmp_path / "hf")
    from transformers import CLIPTokenizerFast

    CLIPTokenizerFast(
        vocab=str(tmp_path / "hf" / "vocab.json"), merges=str(tmp_path / "hf" / "merges.txt")
    ).save_pretrained(tmp_path / "hf")
    a = ClipSlowFastEncoder(str(CLIP), None, tokenizer=str(BPE))
    b = ClipSlowFastEncoder(str(tmp_path / "hf"), None)
    frames = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    np.testing.assert_array_equal(a.encode_frames(frames), b.encode_frames(frames))
    ta, tb = (
        a.encode_text(["a person opens a door"])[0],
        b.encode_text(["a person opens a door"])[0],
    )
    np.testing.assert_array_equal(ta.last_hidden_state, tb.last_hidden_state)
    # and back to OpenAI's names: the inverse mapping restores every tensor
    back = openai_state_from_hf(hf.state_dict())
    original = read_torchscript_tensors(CLIP)
    for name, value in original.items():
        np.testing.assert_array_equal(back[name].numpy(), value.float().numpy(), err_msg=name)


def test_archive_refusals_name_the_file(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("evil/data.pkl", b"cos\nsystem\n(S'echo owned'\ntR.")
    with pytest.raises(UnsafeFileError, match=r"evil\.pt: refused to load.*'os\.system'"):
        read_torchscript_tensors(evil)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(CLIP.read_bytes()[:200_000])
    with pytest.raises(UnreadableCheckpointError, match=r"cut\.pt: not a TorchScript archive"):
        read_torchscript_tensors(cut)
    escape = tmp_path / "escape.pt"
    payload = (
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage"
        b"\nX\x08\x00\x00\x00../../x0X\x03\x00\x00\x00cpuK\x01tQK\x00K\x01\x85K\x01\x85\x89)tR."
    )
    with zipfile.ZipFile(escape, "w") as z:
        z.writestr("e/data.pkl", payload)
    with pytest.raises(UnsafeFileError, match="unexpected storage reference"):
        read_torchscript_tensors(escape)


# ------------------------------------------------------------------------------ extraction
def test_extract_writes_streams_and_record_and_survives_bad_videos(tmp_path: Path) -> None:
    from momentkit.extraction import ExtractionConfig, build_extractor, run_extraction
    from momentkit.video.write import write_audio

    videos = tmp_path / "videos"
    videos.mkdir()
    good = videos / "good.mp4"
    good.write_bytes((FIXTURES / "odd_vfr.mp4").read_bytes())
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "cut.mp4").write_bytes(good.read_bytes()[:3000])
    write_audio(videos / "sound.m4a", 1.0)
    sound = videos / "sound.mp4"
    (videos / "sound.m4a").rename(sound)
    extractor = build_extractor([SPEC], tmp_path / "feats", ExtractionConfig())
    report = run_extraction(extractor, sorted(videos.iterdir()), progress=False)
    assert [r.vid for r in report.by_status("done")] == ["good"]
    failed = {r.vid: r.error for r in report.by_status("failed")}
    assert set(failed) == {"empty", "cut", "sound"}
    for vid, error in failed.items():
        assert error.startswith(str(videos / f"{vid}.mp4")), error
    assert "no video stream" in failed["sound"]
    summary = report.summary()
    assert "3 failed" in summary and str(videos / "cut.mp4") in summary
    feats = np.load(tmp_path / "feats" / "clip" / "good.npz")["features"]
    assert feats.shape == (4, 64)  # 7.3 s -> ceil(3.65) clips of 2 s
    record = json.loads((tmp_path / "feats" / "clip" / "pipeline.json").read_text())
    assert (record["pipeline"], record["mode"], record["video_streams"]) == (
        "clip",
        "default",
        {"clip": 64},
    )


def test_records_refuse_mixing_pipelines(tmp_path: Path) -> None:
    from momentkit.extraction import ExtractionConfig, build_extractor
    from momentkit.extraction.record import (
        STREAM_RECORD,
        RecordError,
        checkpoint_record,
        make_record,
        training_record,
    )
    from momentkit.utils.io import write_json

    a, b = tmp_path / "clip", tmp_path / "slowfast"
    a.mkdir()
    b.mkdir()
    write_json(a / STREAM_RECORD, make_record("clip_slowfast"))
    write_json(b / STREAM_RECORD, make_record("clip_slowfast", mode="lighthouse"))
    with pytest.raises(RecordError, match=r"slowfast was made by clip_slowfast \(mode lighthouse"):
        training_record([a, b])
    assert checkpoint_record({"data": {"video_features": [str(a), str(b)]}}) is None
    write_json(b / STREAM_RECORD, make_record("clip_slowfast"))
    assert training_record([a, b])["pipeline"] == "clip_slowfast"
    # an extraction into a folder holding another pipeline's features is refused up front
    write_json(a / STREAM_RECORD, make_record("clip_slowfast", mode="lighthouse"))
    with pytest.raises(RecordError, match=r"clip holds features of clip_slowfast \(mode lighth"):
        build_extractor([SPEC], tmp_path, ExtractionConfig())


def test_checkpoints_carry_the_record_of_their_training_features(tmp_path: Path) -> None:
    from momentkit.extraction.record import STREAM_RECORD, encoder_spec, make_record
    from momentkit.training.checkpoint import save_checkpoint
    from momentkit.utils.io import write_json

    folders = []
    for stream in ("clip", "slowfast"):
        folder = tmp_path / "feats" / stream
        folder.mkdir(parents=True)
        record = make_record("clip_slowfast", weights={"clip": "ViT-B/32", "slowfast": "x.pkl"})
        write_json(folder / STREAM_RECORD, record)
        folders.append(str(folder))
    experiment = {"data": {"video_features": folders}}
    ckpt = save_checkpoint(
        tmp_path / "ckpt", torch.nn.Linear(2, 2), model_config={}, experiment=experiment
    )
    saved = json.loads((ckpt / "features.json").read_text())
    assert (saved["pipeline"], saved["video_streams"]) == (
        "clip_slowfast",
        {"clip": 512, "slowfast": 2304},
    )
    # the recorded SlowFast file is not on this machine and no default exists: a clear error
    with pytest.raises(Exception, match="SLOWFAST_8x8_R50.pkl"):
        encoder_spec(saved)
    weights = tmp_path / "sf.pkl"
    weights.write_bytes(b"x")
    spec = encoder_spec({**saved, "weights": {"slowfast": str(weights)}, "clip_len": 1.0})
    assert spec == f"clip_slowfast:clip=ViT-B/32,slowfast={weights},clip_len=1"


def test_clip_len_of_the_pipeline_must_match_the_extraction(tmp_path: Path) -> None:
    from momentkit.extraction import ExtractionConfig, build_extractor

    with pytest.raises(EncoderError, match=r"makes 2 s clips but --clip-len is 1; add clip_len=1"):
        build_extractor([SPEC], tmp_path, ExtractionConfig(clip_len=1.0))
    extractor = build_extractor([SPEC + ",clip_len=1"], tmp_path, ExtractionConfig(clip_len=1.0))
    assert extractor.pipeline_encoders[0].clip_len == 1.0


def test_pipeline_of_a_checkpoint_without_record(tmp_path: Path) -> None:
    from momentkit.extraction.record import checkpoint_pipeline

    inferred = checkpoint_pipeline(tmp_path, [], ("clip", "slowfast"))
    assert inferred is not None and (inferred["pipeline"], inferred["inferred"]) == (
        "clip_slowfast",
        True,
    )
    # momentkit's synthetic benchmark names its generated features slowfast/clip too
    assert checkpoint_pipeline(tmp_path, [], ("slowfast", "clip"), "synth") is None
    assert checkpoint_pipeline(tmp_path, [], ("effnet", "imagenet_probs")) is None
    (tmp_path / "conversion.json").write_text(json.dumps({"source": "lighthouse"}))
    assert checkpoint_pipeline(tmp_path, [], ("clip",))["pipeline"] == "clip"  # type: ignore[index]


def test_window_padding_rules() -> None:
    from fractions import Fraction

    from momentkit.encoders.clip_slowfast_frames import WindowAssembler, clip_fps

    frames = [np.full((1,), i, np.uint8) for i in range(75)]  # 2.5 s at 30 fps
    for mode, tail in (
        # lighthouse: 15 frames -> a whole second with frame 74, then that second again
        ("lighthouse", [60 + i if i < 15 else 74 for i in range(30)] * 2),
        ("default", [60 + i if i < 15 else 74 for i in range(60)]),  # frame 74 repeated
    ):
        asm = WindowAssembler(2.0, Fraction(30), mode, limit=2)
        windows = [w for f in frames for w in asm.add(f)] + list(asm.finish())
        assert len(windows) == 2
        index = asm.index.tolist()
        assert [int(x[0]) for x in windows[1].frames] == [tail[i] for i in index]
    # lighthouse's CLIP rate for short videos, and the sampling at 15 fps
    assert clip_fps(2.0, 1.4, "lighthouse") == 2 and clip_fps(2.0, 1.4, "default") == Fraction(1, 2)
    short = WindowAssembler(2.0, Fraction(15000, 1001), "lighthouse", None).index
    assert short.tolist() == np.linspace(0, 28, 32).astype(int).tolist()
