"""`momentkit extract` end to end: layout, resume, failure report, streams, queries, Ray."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")

from momentkit.cli import extract  # noqa: E402
from momentkit.encoders import EncoderError  # noqa: E402
from momentkit.extraction import (  # noqa: E402
    ExtractionConfig,
    ExtractionReport,
    VideoResult,
    find_videos,
    read_queries,
)
from momentkit.features.npz import NpzFeatureStore  # noqa: E402
from momentkit.utils.errors import FormatError, MomentkitError  # noqa: E402
from momentkit.video.write import write_video  # noqa: E402


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    extract.add_arguments(parser)
    return extract.run(parser.parse_args([*argv, "--quiet"]))


def moving_video(path: Path, seconds: float, fps: int = 10, seed: int = 0) -> Path:
    """A small video with a square moving over noise (odd frame count, even size)."""
    rng = np.random.default_rng(seed)
    n = round(seconds * fps)
    frames = np.repeat(rng.integers(0, 255, (1, 24, 40, 3), dtype=np.uint8), n, axis=0)
    for i in range(n):
        x = (2 * i) % 30
        frames[i, 8:16, x : x + 8] = 255
    return write_video(path, frames, fps=fps)


@pytest.fixture()
def videos(tmp_path) -> Path:
    d = tmp_path / "videos"
    (d / "sub").mkdir(parents=True)
    moving_video(d / "a.mp4", 2.5)
    moving_video(d / "sub" / "b.mkv", 1.2, seed=1)
    (d / "broken.mp4").write_bytes(b"\0" * 300 + b"definitely not a video" * 20)
    (d / "notes.txt").write_text("ignored: not a video extension")
    return d


@pytest.fixture()
def queries(tmp_path) -> Path:
    q = tmp_path / "queries.jsonl"
    rows = [{"qid": 7, "query": "a person drinks from a cup"}, {"qid": "v2", "query": "door"}]
    q.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return q


def test_extract_layout_resume_and_failure_report(videos, queries, tmp_path, capsys):
    out = tmp_path / "feats"
    args = [str(videos), "--out", str(out), "--encoder", "offline", "--encoder", "motion:3"]
    assert run_cli(*args, "--queries", str(queries), "--clip-len", "1") == 0
    # video streams: FEAT_DIR/<stream>/<vid>.npz with (ceil(duration / clip_len), D) features
    for stream, dim in [("effnet", 1280), ("imagenet_probs", 1000), ("motion", 48)]:
        store = NpzFeatureStore(out / stream)
        assert store.keys() == ["a", "b"] and store.dim == dim
        assert store.get("a").shape == (3, dim) and store.get("b").shape == (2, dim)
    np.testing.assert_allclose(NpzFeatureStore(out / "imagenet_probs").get("a").sum(1), 1, 1e-4)
    # text streams: FEAT_DIR/<text stream>/qid<qid>.npz with tokens and pooled vector
    with np.load(out / "minilm_text" / "qid7.npz") as z:
        assert z["last_hidden_state"].shape[1] == 384 and z["pooler_output"].shape == (384,)
    assert (out / "minilm_text" / "qidv2.npz").is_file()
    # the failure report names the broken file and why, and the run went on
    report = json.loads((out / "extract_report.json").read_text())
    assert report["done"] == 2 and len(report["failed"]) == 1
    assert report["failed"][0]["path"].endswith("broken.mp4")
    assert "cannot read the file as a video" in report["failed"][0]["error"]
    printed = capsys.readouterr().out
    assert "2 extracted" in printed and "broken.mp4: cannot read" in printed
    assert "x real time" in printed
    # a second run skips every finished file and rewrites nothing
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")}
    assert run_cli(*args, "--queries", str(queries), "--clip-len", "1") == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")} == before
    report = json.loads((out / "extract_report.json").read_text())
    assert (report["done"], report["skipped"], report["queries_skipped"]) == (0, 2, 2)
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporary files


def test_exit_status_when_everything_fails_or_strict(videos, tmp_path):
    out = tmp_path / "feats"
    assert run_cli(str(videos / "broken.mp4"), "--out", str(out), "--encoder", "motion") == 1
    good_and_bad = [str(videos / "a.mp4"), str(videos / "broken.mp4")]
    assert run_cli(*good_and_bad, "--out", str(out), "--encoder", "motion") == 0
    assert run_cli(*good_and_bad, "--out", str(out), "--encoder", "motion", "--strict") == 1


def test_streams_selection_and_unknown_stream(videos, queries, tmp_path):
    out = tmp_path / "feats"
    code = run_cli(str(videos / "a.mp4"), "--out", str(out), "--streams", "imagenet_probs")
    assert code == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["imagenet_probs"]
    assert NpzFeatureStore(out / "imagenet_probs").get("a").shape == (2, 1000)  # 2 s clips
    with pytest.raises(EncoderError, match="--encoder motion"):
        run_cli(str(videos / "a.mp4"), "--out", str(out), "--streams", "motion")
    # text streams only: the videos are not decoded at all
    text_only = tmp_path / "text_only"
    args = ["--out", str(text_only), "--encoder", "offline-glove", "--streams", "glove_text"]
    assert run_cli(str(videos), *args, "--queries", str(queries)) == 0
    assert sorted(p.name for p in text_only.iterdir()) == ["extract_report.json", "glove_text"]
    report = json.loads((text_only / "extract_report.json").read_text())
    assert (report["done"], report["skipped"], report["queries_written"]) == (0, 0, 2)
    with np.load(text_only / "glove_text" / "qid7.npz") as z:
        assert z["last_hidden_state"].shape == (6, 50) and z["pooler_output"].shape == (50,)


def test_find_videos_recurses_and_rejects_clashing_ids(videos, tmp_path):
    found = find_videos([videos])
    assert [p.name for p in found] == ["a.mp4", "broken.mp4", "b.mkv"]
    assert find_videos([videos / "a.mp4", videos / "a.mp4"]) == [videos / "a.mp4"]
    moving_video(videos / "sub" / "a.mkv", 1.0)
    with pytest.raises(MomentkitError, match="same video id 'a'"):
        find_videos([videos])
    with pytest.raises(MomentkitError, match="no such file"):
        find_videos([tmp_path / "nowhere"])


def test_read_queries_names_the_bad_line(tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text('{"qid": 1, "query": "ok"}\n{"qid": 2}\n')
    with pytest.raises(FormatError, match=r"q.jsonl:2: field 'query'"):
        read_queries(q)
    q.write_text('{"qid": 1, "query": "ok"}\n{"qid": 1, "query": "again"}\n')
    with pytest.raises(FormatError, match="already used on line 1"):
        read_queries(q)


def test_report_exit_status_rules():
    done, skipped = VideoResult(Path("a"), "done", 2.0), VideoResult(Path("b"), "skipped")
    failed = VideoResult(Path("c"), "failed", error="c: broken")
    assert ExtractionReport([done, failed]).exit_status() == 0
    assert ExtractionReport([skipped, failed]).exit_status() == 0
    assert ExtractionReport([failed]).exit_status() == 1
    assert ExtractionReport([done, failed]).exit_status(strict=True) == 1
    assert ExtractionReport([]).exit_status(strict=True) == 0
    assert ExtractionReport([done], wall_seconds=0.5).speed == 4.0


# -- scale-out --------------------------------------------------------------------------------


def test_ray_local_extracts_and_reports(videos, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "feats"
    start = time.perf_counter()
    code = run_cli(str(videos), "--out", str(out), "--encoder", "motion:2", "--ray", "local")
    assert code == 0
    assert NpzFeatureStore(out / "motion").keys() == ["a", "b"]
    assert NpzFeatureStore(out / "motion").get("a").shape == (2, 48)
    report = json.loads((out / "extract_report.json").read_text())
    assert report["done"] == 2 and report["failed"][0]["path"].endswith("broken.mp4")
    # a guard against a hang (Ray startup/shutdown), not a speed test: 69 s was measured on a
    # 2-core machine running two training jobs beside the suite
    assert time.perf_counter() - start < 240


def test_ray_extraction_matches_local_extraction(videos, tmp_path):
    pytest.importorskip("ray")
    import ray

    from momentkit.extraction import build_extractor, run_extraction
    from momentkit.extraction.ray_backend import run_on_ray

    config = ExtractionConfig(clip_len=1.0)
    local = build_extractor(["motion:3"], tmp_path / "local", config)
    run_extraction(local, [videos / "a.mp4"], progress=False)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        report = run_on_ray(["motion:3"], [videos / "a.mp4"], tmp_path / "ray", config,
                            progress=False)  # fmt: skip
        assert ray.is_initialized()  # an instance it did not start is left running
        again = run_on_ray(["motion:3"], [videos / "a.mp4"], tmp_path / "ray", config,
                           progress=False)  # fmt: skip
    finally:
        ray.shutdown()
    assert report.by_status("done")[0].num_clips == 3
    assert again.by_status("skipped")[0].path == videos / "a.mp4"
    np.testing.assert_array_equal(
        NpzFeatureStore(tmp_path / "ray" / "motion").get("a"),
        NpzFeatureStore(tmp_path / "local" / "motion").get("a"),
    )
