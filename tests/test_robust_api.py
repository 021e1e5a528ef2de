"""The Python API called wrongly: a MomentkitError saying what is wrong and how to fix it, never
a bare TypeError/ValueError/KeyError/AttributeError/FileNotFoundError from deep inside, and no
user file replaced (audit of the Python quick start)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from cli_helpers import digest, needs_offline, tiny_video
from tiny_configs import TINY_DETR

from momentkit.inference import Predictor
from momentkit.inference.predictor import ClipLengthError, PredictorError, TooManyClipsError
from momentkit.inference.results import VideoEncoding
from momentkit.models import MomentDETR, MomentDETRConfig, MomentModel
from momentkit.training.checkpoint import CheckpointError
from momentkit.training.distributed import DeviceError
from momentkit.utils.errors import FormatError, MomentkitError, OutputError


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.zero_shot("offline")


@pytest.fixture
def video(predictor: Predictor) -> VideoEncoding:
    """An encoding of 5 clips, as encode_video makes (no decoding: fast)."""
    probs = np.random.default_rng(0).dirichlet(np.ones(1000), size=5).astype(np.float32)
    return VideoEncoding("v.mp4", 10.0, predictor.clip_len, {"imagenet_probs": probs})


@pytest.fixture
def model() -> MomentDETR:
    return MomentDETR(MomentDETRConfig(**TINY_DETR))


def refused(error: type[BaseException], *fragments: str):
    """``pytest.raises`` of a MomentkitError ``error`` whose message holds ``fragments``."""
    assert issubclass(error, MomentkitError)
    return pytest.raises(error, match=".*".join(map(_escape, fragments)))


def _escape(text: str) -> str:
    import re

    return re.escape(text)


# ------------------------------------------------------------------------------------ 1. queries
@needs_offline
def test_a_str_of_queries_is_refused_not_searched_per_character(predictor, video) -> None:
    with refused(PredictorError, "queries must be a list of strings, got a str", "wrap it"):
        predictor.predict(video, "dog")
    with refused(PredictorError, "queries must be a list of strings"):
        predictor.predict(video, 42)  # type: ignore[arg-type]
    with refused(PredictorError, "no queries"):
        predictor.predict(video, None)  # type: ignore[arg-type]
    assert len(predictor.predict(video, ["dog"])) == 1
    assert len(predictor.predict(video, ("dog", "cat"))) == 2


@needs_offline
def test_a_lone_surrogate_in_a_query_is_a_clear_error(predictor, video) -> None:
    with refused(PredictorError, "query 1", "lone surrogate", "errors='replace'"):
        predictor.predict(video, ["a \ud800 b"])
    from momentkit.encoders.base import EncoderError

    with refused(EncoderError, "lone surrogate"):
        predictor.encoders[0].encode_text(["a \udcff b"])


@needs_offline
@pytest.mark.parametrize("top_k", [float("nan"), "3", 2.5, True, 0, -1])
def test_bad_top_k_is_a_clear_error(predictor, video, top_k) -> None:
    with refused(PredictorError, "top_k"):
        predictor.predict(video, ["a"], top_k=top_k)


@needs_offline
def test_bad_min_relevance_and_video_are_clear_errors(predictor, video) -> None:
    with refused(PredictorError, "min_relevance must be a number"):
        predictor.predict(video, ["a"], min_relevance="0.5")  # type: ignore[arg-type]
    with refused(PredictorError, "video must be a VideoEncoding", "encode_video"):
        predictor.predict(None, ["a"])  # type: ignore[arg-type]
    with refused(PredictorError, "video must be a VideoEncoding"):
        predictor.predict("v.mp4", ["a"])  # type: ignore[arg-type]
    assert predictor.predict(video, ["a"], top_k=np.int64(2))[0].moments is not None


# ------------------------------------------------------------------------- 2. clip length, video
@needs_offline
@pytest.mark.parametrize("clip_len", [float("nan"), float("inf"), 0, -1.0, "2", None])
def test_zero_shot_refuses_a_bad_clip_len(clip_len) -> None:
    with refused(PredictorError, "clip_len"):
        Predictor.zero_shot("offline", clip_len=clip_len)
    with pytest.raises(ValueError):  # still a ValueError for callers that caught one
        Predictor.zero_shot("offline", clip_len=clip_len)


def test_zero_shot_refuses_no_encoder_and_a_bad_device() -> None:
    with refused(PredictorError, "encoder must be an encoder spec"):
        Predictor.zero_shot(None)  # type: ignore[arg-type]
    with refused(DeviceError, "unknown device 'bogus'"):
        Predictor.zero_shot("offline", device="bogus")


@needs_offline
def test_encode_video_refuses_clips_shorter_than_a_frame_before_decoding(tmp_path) -> None:
    path = tiny_video(tmp_path / "w.mp4")  # 2 s at 4 fps
    short = Predictor.zero_shot("offline", clip_len=1e-3)
    with refused(ClipLengthError, "clip_len 0.001 s is shorter than the video's frame interval"):
        short.encode_video(path)
    predictor = Predictor.zero_shot("offline", clip_len=0.5)
    with refused(TooManyClipsError, "4 clips", "limit of 3 clips", "max_clips"):
        predictor.encode_video(path, max_clips=3)
    for bad in ("3", 0, -2, 2.5):
        with refused(PredictorError, "max_clips"):
            predictor.encode_video(path, max_clips=bad)  # type: ignore[arg-type]
    for bad in (None, 3, ""):
        with refused(PredictorError, "encode_video needs the path of a video file"):
            predictor.encode_video(bad)  # type: ignore[arg-type]
    assert predictor.encode_video(path, max_clips=4).num_clips == 4


@pytest.mark.parametrize(
    ("clip_len", "duration", "field"),
    [
        (float("nan"), 10.0, "clip_len"),
        ("2", 10.0, "clip_len"),
        (2.0, float("nan"), "duration"),
        (2.0, -1.0, "duration"),
        (2.0, float("inf"), "duration"),
        (2.0, None, "duration"),
    ],
)
def test_video_encoding_refuses_bad_numbers(clip_len, duration, field) -> None:
    with refused(FormatError, "v.mp4", f"field '{field}'", "encode the video again"):
        VideoEncoding("v.mp4", duration, clip_len, {})
    with pytest.raises(ValueError):
        VideoEncoding("v.mp4", duration, clip_len, {})


def test_video_encoding_refuses_bad_streams() -> None:
    with refused(FormatError, "field 'streams'", "stream 'x'", "expected (clips, channels)"):
        VideoEncoding("v.mp4", 2.0, 2.0, {"x": np.zeros(3)})
    with refused(FormatError, "field 'streams'"):
        VideoEncoding("v.mp4", 2.0, 2.0, [1, 2])  # type: ignore[arg-type]
    assert VideoEncoding("v.mp4", 0, 2, {}).num_clips == 0


# ------------------------------------------------------------------------ 3. save_pretrained
def test_save_pretrained_keeps_a_users_config_json(tmp_path, model) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"precious": 1}))
    (out / "notes.txt").write_text("mine")
    before = {p.name: digest(p) for p in out.iterdir()}
    with refused(OutputError, "config.json is not a momentkit model config", "another"):
        model.save_pretrained(out)
    assert {p.name: digest(p) for p in out.iterdir()} == before
    # a foreign model.safetensors alone is refused too
    other = tmp_path / "w"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"not mine")
    with refused(OutputError, "model.safetensors was not written by momentkit"):
        model.save_pretrained(other)
    assert (other / "model.safetensors").read_bytes() == b"not mine"


def test_save_pretrained_replaces_its_own_checkpoint_and_keeps_other_files(tmp_path, model):
    out = tmp_path / "o"
    model.save_pretrained(out)
    (out / "experiment.json").write_text("{}")  # training writes these next to it
    model.save_pretrained(out)  # its own checkpoint: replaced
    assert (out / "experiment.json").read_text() == "{}"
    assert isinstance(MomentModel.from_pretrained(out), MomentDETR)
    # weights alone, written by momentkit, are momentkit's too
    (out / "config.json").unlink()
    model.save_pretrained(out)


def test_save_pretrained_over_a_file_or_an_unwritable_place(tmp_path, model) -> None:
    existing = tmp_path / "existing_file.bin"
    existing.write_bytes(b"data")
    with refused(OutputError, "existing_file.bin: exists and is not a folder", "new folder"):
        model.save_pretrained(existing)
    assert existing.read_bytes() == b"data"
    with refused(OutputError, "cannot create the model folder", "/proc/x"):
        model.save_pretrained("/proc/x")
    with refused(OutputError, "save_pretrained needs the path of a folder"):
        model.save_pretrained(None)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ 4. from_pretrained
def test_from_pretrained_names_a_bad_device_not_damaged_weights(tmp_path, model) -> None:
    model.save_pretrained(tmp_path / "good")
    with refused(DeviceError, "unknown device 'bogus'"):
        MomentModel.from_pretrained(tmp_path / "good", device="bogus")
    if not torch.cuda.is_available() or torch.cuda.device_count() < 8:
        with refused(DeviceError, "cuda:7"):
            MomentModel.from_pretrained(tmp_path / "good", device="cuda:7")
    with refused(DeviceError, "device must be a device name"):
        MomentModel.from_pretrained(tmp_path / "good", device=7)  # type: ignore[arg-type]
    loaded = MomentModel.from_pretrained(tmp_path / "good", device=torch.device("cpu"))
    assert isinstance(loaded, MomentDETR)


def test_from_pretrained_missing_or_incomplete_folders(tmp_path, model) -> None:
    with refused(CheckpointError, "nope: no such checkpoint folder or file"):
        MomentModel.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError):  # still one, for callers that caught it
        MomentModel.from_pretrained(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with refused(CheckpointError, "config.json: no such file", "it is empty", "save_pretrained"):
        MomentModel.from_pretrained(empty)
    model.save_pretrained(tmp_path / "half")
    (tmp_path / "half" / "model.safetensors").unlink()
    with refused(CheckpointError, "model.safetensors: no such file", "it holds config.json"):
        MomentModel.from_pretrained(tmp_path / "half")
    for bad in (None, 3):
        with refused(CheckpointError, "from_pretrained needs the path of a checkpoint"):
            MomentModel.from_pretrained(bad)  # type: ignore[arg-type]


def test_nothing_here_is_a_bare_builtin_error() -> None:
    """The classes used above keep the built-in bases callers relied on."""
    from momentkit.training.checkpoint import CheckpointNotFoundError

    assert issubclass(CheckpointNotFoundError, FileNotFoundError)
    assert issubclass(FormatError, ValueError) and issubclass(OutputError, OSError)
    assert str(CheckpointNotFoundError("x: no such file")) == "x: no such file"
    assert math.isfinite(Predictor.zero_shot("offline", clip_len=1).clip_len)
