"""Decoding (timing, VFR, rotation, odd sizes, short and broken files), sampling and cutting."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")

from momentkit.utils.errors import MomentkitError  # noqa: E402
from momentkit.video import (  # noqa: E402
    ClipReader,
    FrameRequest,
    VideoError,
    clip_bounds,
    cut_clip,
    decode_clips,
    num_clips,
    probe,
    sample_times,
)
from momentkit.video.cut import cut_clip_into  # noqa: E402
from momentkit.video.write import write_audio, write_video  # noqa: E402

DEMO = Path(__file__).parents[1].parent / "shared" / "media" / "charades_demo.mp4"


@pytest.fixture(scope="module")
def demo() -> Path:
    if not DEMO.exists():
        pytest.skip("../shared/media/charades_demo.mp4 is not present")
    return DEMO


def flat_frames(values: list[int], h: int = 16, w: int = 32) -> np.ndarray:
    """One flat grey frame per value: the decoded grey level tells which frame was picked."""
    return np.stack([np.full((h, w, 3), v, np.uint8) for v in values])


# -- sampling ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "duration, clip_len, expected",
    [
        (30.697, 2.0, 16),
        (150.0, 2.0, 75),
        (150.0000001, 2.0, 75),
        (150.01, 2.0, 76),
        (0.3, 2.0, 1),
        (0.0, 2.0, 1),
        (4.0, 1.0, 4),
        (4.2, 1.0, 5),
    ],
)
def test_num_clips_is_ceil_of_duration_over_clip_len(duration, clip_len, expected):
    assert num_clips(duration, clip_len) == expected


def test_sample_times_are_part_centres_and_last_clip_is_short():
    np.testing.assert_allclose(clip_bounds(5.0, 2.0), [[0, 2], [2, 4], [4, 5]])
    np.testing.assert_allclose(sample_times(5.0, 2.0, 1), [[1.0], [3.0], [4.5]])
    np.testing.assert_allclose(sample_times(5.0, 2.0, 2), [[0.5, 1.5], [2.5, 3.5], [4.25, 4.75]])


@pytest.mark.parametrize("bad", [dict(duration=-1.0), dict(clip_len=0.0), dict(duration=math.inf)])
def test_sampling_rejects_bad_arguments(bad):
    kwargs = dict(duration=4.0, clip_len=2.0) | bad
    with pytest.raises(ValueError):
        num_clips(**kwargs)


# -- decoding a real video --------------------------------------------------------------------


def test_demo_video_probe_and_clip_counts(demo):
    info = probe(demo)
    assert (info.width, info.height, info.rotation, info.codec) == (480, 270, 0, "h264")
    assert info.duration == pytest.approx(30.7, abs=0.05)
    assert info.fps == pytest.approx(15.0, abs=0.1)
    clips = decode_clips(demo, clip_len=2.0, frames_per_clip=2, short_side=224)
    assert clips.shape == (16, 2, 224, 398, 3)  # ceil(30.7 / 2) clips, aspect ratio kept
    assert clips.dtype == np.uint8
    assert len(ClipReader(demo, clip_len=1.0)) == 31  # Charades-style 1 s clips


def test_one_pass_serves_several_requests(demo):
    reader = ClipReader(demo, 2.0, {"app": FrameRequest(1, 112), "motion": FrameRequest(8, 32)})
    clips = list(reader)
    assert len(clips) == reader.num_clips == 16
    assert clips[0]["app"].shape == (1, 112, 199, 3)
    assert clips[-1]["motion"].shape == (8, 32, 57, 3)
    assert reader.times["motion"].shape == (16, 8)


# -- decoding edge cases ----------------------------------------------------------------------


def test_variable_frame_rate_is_sampled_by_timestamp(tmp_path):
    times = [0.0, 0.1, 0.15, 0.6, 2.0, 2.1, 3.9]
    values = [0, 30, 60, 90, 120, 150, 180]
    path = write_video(tmp_path / "vfr.mkv", flat_frames(values), times=times, codec="ffv1")
    info = probe(path)
    assert info.duration == pytest.approx(4.0, abs=0.01)  # last frame shown 0.1 s (fps guess)
    clips = decode_clips(path, clip_len=0.5)
    # the frame on screen at each clip centre is the last one whose timestamp is <= the centre
    centres = sample_times(info.duration, 0.5)[:, 0]
    expected = [values[np.searchsorted(times, c, side="right") - 1] for c in centres]
    np.testing.assert_allclose(clips[:, 0, 0, 0, 0], expected, atol=2)
    assert clips.shape[0] == 8


def test_rotation_from_display_matrix_is_applied(tmp_path):
    frames = flat_frames([0] * 10, h=16, w=32)
    frames[:, :, :4] = 255  # a white band on the left of the coded picture
    path = write_video(tmp_path / "rot.mp4", frames, rotation=90)
    info = probe(path)
    assert (info.rotation, info.width, info.height) == (90, 16, 32)
    upright = decode_clips(path, clip_len=1.0)[0, 0, :, :, 0]
    assert upright.shape == (32, 16)
    # turned 90 degrees counter-clockwise, the left band lies along the bottom
    assert upright[-3:].min() > 200 and upright[:-5].max() < 50


def test_odd_sizes_decode_and_resize(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (12, 17, 33, 3), dtype=np.uint8)
    path = write_video(tmp_path / "odd.mp4", frames, codec="mpeg4")
    assert decode_clips(path, clip_len=1.0).shape == (2, 1, 17, 33, 3)
    assert decode_clips(path, clip_len=1.0, short_side=9).shape == (2, 1, 9, 17, 3)


def test_video_shorter_than_one_clip_is_one_clip(tmp_path):
    path = write_video(tmp_path / "short.mp4", flat_frames([10, 20, 30, 40, 50]), fps=10)
    clips = decode_clips(path, clip_len=2.0, frames_per_clip=3)
    assert clips.shape == (1, 3, 16, 32, 3)
    # three instants inside [0, 0.5]: 1/12, 3/12 and 5/12 s -> frames 0, 2, 4
    np.testing.assert_allclose(clips[0, :, 0, 0, 0], [10, 30, 50], atol=3)


def _unsupported_codec_file(tmp_path: Path) -> Path:
    """A Matroska file whose codec id FFmpeg does not know."""
    src = write_video(tmp_path / "m.mkv", flat_frames([0, 50, 100]), codec="mpeg4")
    data = src.read_bytes()
    assert b"V_MPEG4/ISO/ASP" in data
    bad = tmp_path / "unknown_codec.mkv"
    bad.write_bytes(data.replace(b"V_MPEG4/ISO/ASP", b"V_ZZZZZ/ISO/ASP"))
    return bad


def _truncated_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 255, (40, 24, 32, 3), dtype=np.uint8)
    full = write_video(tmp_path / "full.mkv", frames, codec="ffv1", fps=10)
    data = full.read_bytes()
    cut = tmp_path / "truncated.mkv"
    cut.write_bytes(data[: len(data) * 4 // 10])
    return cut


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: write_audio(d / "audio_only.m4a", 1.0), "no video stream (it holds: 1 audio)"),
        (lambda d: _write(d / "garbage.mp4", b"\0" * 500 + b"not a video" * 50), "cannot read"),
        (_unsupported_codec_file, "unsupported video codec"),
        (_truncated_file, "video data ends at"),
        (lambda d: d / "missing.mp4", "no such file"),
    ],
    ids=["audio-only", "garbage", "unsupported-codec", "truncated", "missing"],
)
def test_broken_inputs_raise_clear_errors_naming_the_file(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(VideoError) as err:
        decode_clips(path, clip_len=1.0)
    assert isinstance(err.value, MomentkitError)
    assert str(err.value).startswith(str(path))
    assert message in str(err.value)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_frame_request_validates():
    with pytest.raises(ValueError):
        FrameRequest(frames_per_clip=0)
    with pytest.raises(ValueError):
        FrameRequest(short_side=0)


# -- cutting ----------------------------------------------------------------------------------


def test_cut_clip_stream_copy_starts_on_keyframe(demo, tmp_path):
    cut = cut_clip(demo, 18.0, 22.0, tmp_path / "copy.mp4", reencode=False)
    # the demo's keyframes are at 0 s and 16.68 s: a stream copy must start at 16.68 s
    assert cut.start == pytest.approx(16.683, abs=0.01)
    info = probe(cut.path)
    assert info.duration == pytest.approx(cut.end - cut.start, abs=0.07)
    assert 22.0 <= cut.end < 22.0 + 0.3  # B-frame reordering adds at most a few frames
    assert (info.width, info.height) == (480, 270)


def decoded_frame_times(path: Path) -> list[float]:
    """Presentation time (s) of every video frame of ``path``, decoded with PyAV."""
    import av

    with av.open(str(path)) as c:
        return [float(f.time) for f in c.decode(video=0)]


@pytest.mark.parametrize("start,end", [(5.0, 10.0), (10.0, 14.0), (14.0, 28.0), (28.0, 31.0)])
def test_cut_clip_is_frame_accurate_by_default(demo, tmp_path, start, end):
    """The default cut covers [start, end) and at most one frame more at each end: its frames
    are the source frames on screen from ``start`` until ``end``."""
    frame = 1001 / 15000  # the demo runs at 14.985 fps
    cut = cut_clip(demo, start, end, tmp_path / "exact.mp4")
    end = min(end, 30.697)  # the video ends at 30.697 s
    assert start - frame < cut.start <= start and end <= cut.end < end + frame + 1e-6
    times = decoded_frame_times(cut.path)
    assert times[0] == pytest.approx(0.0, abs=1e-6)  # the file starts with its first frame
    # the source frames on screen during [start, end): same count, same spacing
    source = [t for t in decoded_frame_times(demo) if t + frame > start + 1e-6 and t < end]
    assert len(times) == len(source)
    assert cut.start + times[-1] == pytest.approx(source[-1], abs=1e-3)
    assert cut.start + times[-1] + frame == pytest.approx(cut.end, abs=1e-3)
    assert probe(cut.path).duration == pytest.approx(cut.end - cut.start, abs=frame)


def test_cut_clip_into_names_the_file_after_the_real_span(demo, tmp_path):
    def name(s: float, e: float) -> str:
        return f"clip_{s:.2f}-{e:.2f}.mp4"

    fast = cut_clip_into(demo, 10.0, 14.0, tmp_path, name, reencode=False)
    assert fast.start == 0.0 and fast.path.name == f"clip_0.00-{fast.end:.2f}.mp4"
    assert decoded_frame_times(fast.path)[0] == 0.0 and fast.end >= 14.0
    exact = cut_clip_into(demo, 18.0, 22.0, tmp_path, name)
    assert exact.path.name == "clip_17.95-22.02.mp4"
    for bad in ("../escape.mp4", "sub/x.mp4", ".hidden.mp4", "/tmp/abs.mp4", ""):
        with pytest.raises(ValueError, match="not a plain file name"):
            cut_clip_into(demo, 1.0, 2.0, tmp_path / "out", lambda s, e, b=bad: b)
    # nothing else was written, in the folder or beside it
    assert sorted(p.name for p in tmp_path.rglob("*")) == [fast.path.name, exact.path.name]
    assert not (tmp_path.parent / "escape.mp4").exists()


def test_cut_clip_keeps_rotation_and_audio(tmp_path):
    frames = flat_frames(list(range(0, 200, 5)), h=16, w=32)
    src = write_video(tmp_path / "src.mp4", frames, rotation=270, audio_seconds=4.0)
    for reencode in (False, True):
        cut = cut_clip(src, 1.0, 2.0, tmp_path / f"cut{reencode}.mkv", reencode=reencode)
        info = probe(cut.path)
        assert info.rotation == 270 and (info.width, info.height) == (16, 32)
        import av

        with av.open(str(cut.path)) as c:
            assert len(c.streams.audio) == 1
    assert cut.start == pytest.approx(1.0, abs=1e-6)


def test_cut_clip_rejects_empty_span_and_leaves_no_file(demo, tmp_path):
    with pytest.raises(ValueError):
        cut_clip(demo, 5.0, 5.0, tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="past the end"):
        cut_clip(demo, 40.0, 45.0, tmp_path / "x.mp4")
    with pytest.raises(VideoError):
        cut_clip(tmp_path / "missing.mp4", 0.0, 1.0, tmp_path / "y.mp4")
    assert list(tmp_path.iterdir()) == []
