"""Robustness of `momentkit search`, `query`, `extract` and `index` (audit of 2026-12-07).

Each test drives the real command line (``momentkit.cli.main.main``) on tiny generated videos
and asserts what the user sees and what is left on disk:

- outputs naming an input (the video, a queries file, the --db, a library video, a ``{video}``
  template expanding to an input) are refused before any work, the input byte-for-byte intact;
- a tiny file declaring a huge duration, and a clip length shorter than a frame, are refused
  before decoding, quickly, with the limit named (search, extract, index share the check);
- `extract` re-extracts a file made from another video / query text and says so;
- `index` / `query` leave someone else's SQLite database untouched and say why.
"""

from __future__ import annotations

import json
import sqlite3
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")

from cli_helpers import assert_refused, digest, needs_offline, one_video_library, run, tiny_video  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "momentkit" / "examples" / "charades_demo.mp4"


def declared_long_video(path: Path) -> Path:
    """An ~900-byte mkv of 3 frames at 0 s, 1 s and 200,000 s (declares 55 hours)."""
    import av

    tb = Fraction(1, 1000)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=4)
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        s.time_base = tb
        for i, pts in enumerate([0, 1000, 200_000_000]):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 40 * i, np.uint8), "rgb24")
            frame.pts, frame.time_base = pts, tb
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


# ------------------------------------------------------------------ 1. outputs over inputs
@pytest.mark.parametrize(
    "extra",
    [
        ["--export", "json:{v}"],
        ["--export", "csv:{v}"],
        ["--plot", "{v}"],
        ["--export", "srt:{d}/{{video}}.mp4"],  # the template expands to the input
    ],
    ids=["export-json", "export-csv", "plot", "export-template"],
)
def test_search_refuses_to_write_over_its_video(tmp_path, capsys, extra):
    video = tiny_video(tmp_path / "w.mp4")
    before = digest(video)
    extra = [e.format(v=video, d=tmp_path) for e in extra]
    rc, _, err = run(capsys, "search", video, "a person sits", *extra)
    assert_refused(rc, err, "would replace the input", str(video))
    assert digest(video) == before


def test_search_refuses_a_template_expanding_to_another_input_video(tmp_path, capsys):
    a, b = tiny_video(tmp_path / "a.mp4"), tiny_video(tmp_path / "b.mp4", seed=1)
    before = digest(b)
    template = f"{tmp_path}/{{video}}.mp4"
    rc, _, err = run(capsys, "search", a, "--video", b, "x", "--plot", template)
    assert_refused(rc, err, "--plot", "would replace the input")
    assert digest(b) == before


def test_search_refuses_to_write_over_its_queries_file(tmp_path, capsys):
    video = tiny_video(tmp_path / "w.mp4")
    queries = tmp_path / "q.txt"
    queries.write_text("a person sits\n")
    rc, _, err = run(
        capsys, "search", video, "--queries-file", queries, "--export", f"csv:{queries}"
    )
    assert_refused(rc, err, "--queries-file", "would replace the input")
    assert queries.read_text() == "a person sits\n"


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """A library of one 2 s video (offline encoder)."""
    return one_video_library(tmp_path_factory.mktemp("lib"))


@needs_offline
@pytest.mark.parametrize("what", ["db", "queries", "video", "video-template"])
def test_query_refuses_to_write_over_its_inputs(library, tmp_path, capsys, what):
    db, video = library / "lib.db", library / "videos" / "w.mp4"
    queries = tmp_path / "q.txt"
    queries.write_text("a person sits\n")
    target = {
        "db": f"json:{db}",
        "queries": f"csv:{queries}",
        "video": f"json:{video}",
        "video-template": f"srt:{video.parent}/{{video}}.mp4",
    }[what]
    before = {p: digest(p) for p in (db, video, queries)}
    rc, _, err = run(capsys, "query", "--queries-file", queries, "--db", db, "--export", target)
    assert_refused(rc, err, "would replace the input")
    assert {p: digest(p) for p in before} == before


# ------------------------------------------------------------------ 2. a declared huge duration
@needs_offline
def test_search_refuses_a_tiny_file_declaring_55_hours_quickly(tmp_path, capsys):
    video = declared_long_video(tmp_path / "long.mkv")
    assert video.stat().st_size < 2000
    start = time.perf_counter()
    rc, _, err = run(capsys, "search", video, "x")
    assert time.perf_counter() - start < 30  # ran to a 300 s timeout before
    assert_refused(rc, err, "over the limit of 43,200 clips", "--max-clips")


@needs_offline
def test_search_max_clips_has_index_meaning(tmp_path, capsys):
    from momentkit.cli.index import DEFAULT_MAX_CLIPS
    from momentkit.cli.main import build_parser

    assert build_parser("search").parse_args(["search", "v.mp4", "q"]).max_clips == (
        DEFAULT_MAX_CLIPS
    )
    from momentkit.inference import predictor

    assert predictor.DEFAULT_MAX_CLIPS == DEFAULT_MAX_CLIPS  # the library's and the CLI's
    video = tiny_video(tmp_path / "w.mp4")  # 2 s: 4 clips of 0.5 s
    rc, _, err = run(capsys, "search", video, "x", "--clip-len", "0.5", "--max-clips", "3")
    assert_refused(rc, err, "4 clips", "limit of 3 clips", "--max-clips")
    rc, out, _ = run(capsys, "search", video, "x", "--clip-len", "0.5", "--max-clips", "0")
    assert rc == 0 and "4 clips of 0.5 s" in out  # 0: no limit
    # with several videos, the refused one is reported and the others are searched
    long = declared_long_video(tmp_path / "long.mkv")
    rc, out, _ = run(capsys, "search", video, "--video", long, "x", "--json")
    document = json.loads(out)
    assert rc == 1 and [Path(v["video"]).name for v in document["videos"]] == ["w.mp4"]
    assert "--max-clips" in document["failed"][0]["error"]


@needs_offline
def test_the_python_api_refuses_a_tiny_file_declaring_55_hours_by_default(tmp_path):
    """``Predictor.encode_video`` / ``search`` take the command line's limit by default (they
    had none: ``search`` of this file was still running at 120 s); ``max_clips`` sets it."""
    from momentkit.inference.predictor import DEFAULT_MAX_CLIPS, Predictor, TooManyClipsError

    video = declared_long_video(tmp_path / "long.mkv")
    predictor = Predictor.zero_shot("offline")
    start = time.perf_counter()
    for call in (
        lambda: predictor.encode_video(video),
        lambda: predictor.search(video, ["x"]),
        lambda: predictor.search(video, ["x"], max_clips=DEFAULT_MAX_CLIPS * 2),
    ):
        with pytest.raises(TooManyClipsError, match=r"over the limit of [\d,]+ clips.*max_clips"):
            call()
    assert time.perf_counter() - start < 30
    small = tiny_video(tmp_path / "w.mp4")  # 2 s: one 2 s clip
    assert predictor.search(small, ["x"], max_clips=1)[0].moments


# ------------------------------------------------------------------ 3. clips shorter than a frame
@needs_offline
def test_search_refuses_a_clip_shorter_than_a_frame(capsys):
    start = time.perf_counter()
    rc, _, err = run(capsys, "search", DEMO, "x", "--clip-len", "0.001")
    assert time.perf_counter() - start < 30  # never finished before
    assert_refused(rc, err, "--clip-len 0.001 s is shorter than the video's frame interval")
    assert "--clip-len 0.067 or more" in err


def test_extract_and_index_refuse_a_clip_shorter_than_a_frame(tmp_path, capsys):
    video = tiny_video(tmp_path / "videos" / "w.mp4", fps=4)  # a frame every 0.25 s
    rc, out, _ = run(
        capsys, "extract", video, "--out", tmp_path / "f", "--encoder", "motion", "--quiet",
        "--clip-len", "0.1",
    )  # fmt: skip
    assert rc == 1 and "frame interval (0.25 s at 4 fps)" in out
    assert not (tmp_path / "f" / "motion" / "w.npz").exists()
    rc, out, _ = run(
        capsys, "index", tmp_path / "videos", "--db", tmp_path / "l.db", "--clip-len", "0.1",
        "--no-progress",
    )  # fmt: skip
    assert rc == 1 and "--clip-len 0.1 s is shorter than the video's frame interval" in out


def test_extract_refuses_a_tiny_file_declaring_55_hours(tmp_path, capsys):
    video = declared_long_video(tmp_path / "long.mkv")
    start = time.perf_counter()
    rc, out, _ = run(capsys, "extract", video, "--out", tmp_path / "f", "--encoder", "motion")
    assert time.perf_counter() - start < 30
    assert rc == 1 and "over the limit of 43,200 clips" in out


# ------------------------------------------------------------------ 4. extract: stale outputs
def test_extract_redoes_a_file_made_from_another_video_of_the_same_name(tmp_path, capsys):
    a = tiny_video(tmp_path / "a" / "x.mp4", seed=0)
    b = tiny_video(tmp_path / "b" / "x.mp4", seed=1)
    out, fresh = tmp_path / "feats", tmp_path / "fresh"
    args = ["--encoder", "motion", "--quiet", "--clip-len", "1"]
    assert run(capsys, "extract", b, "--out", fresh, *args)[0] == 0
    assert run(capsys, "extract", a, "--out", out, *args)[0] == 0
    made_from_a = np.load(out / "motion" / "x.npz")["features"]
    rc, printed, _ = run(capsys, "extract", b, "--out", out, *args)
    assert rc == 0 and "1 extracted" in printed and "re-extracted 1 video(s)" in printed
    features = np.load(out / "motion" / "x.npz")["features"]
    np.testing.assert_array_equal(features, np.load(fresh / "motion" / "x.npz")["features"])
    assert not np.array_equal(features, made_from_a)
    # the same video again: skipped; the file still reads as the standard layout
    rc, printed, _ = run(capsys, "extract", b, "--out", out, *args)
    assert "1 skipped" in printed and "re-extracted" not in printed
    from momentkit.features.npz import NpzFeatureStore

    assert NpzFeatureStore(out / "motion").get("x").shape == features.shape
    # an edited video (other size and time) is re-extracted too
    tiny_video(b, seconds=3.0, seed=2)
    rc, printed, _ = run(capsys, "extract", b, "--out", out, *args)
    assert "re-extracted 1 video(s)" in printed
    assert np.load(out / "motion" / "x.npz")["features"].shape[0] == 3


def test_extract_keeps_an_older_file_without_a_record_and_says_so(tmp_path, capsys):
    video = tiny_video(tmp_path / "x.mp4")
    old = tmp_path / "feats" / "motion" / "x.npz"
    old.parent.mkdir(parents=True)
    np.savez(old, features=np.zeros((2, 16), np.float32))  # as momentkit wrote it before
    before = digest(old)
    rc, printed, _ = run(
        capsys, "extract", video, "--out", tmp_path / "feats", "--encoder", "motion"
    )
    assert rc == 0 and "1 skipped" in printed
    assert "do not record what they were made from" in printed and "--overwrite" in printed
    assert digest(old) == before


@needs_offline
def test_extract_redoes_a_query_whose_text_changed(tmp_path, capsys):
    qa, qb, qc = tmp_path / "qa.jsonl", tmp_path / "qb.jsonl", tmp_path / "qc.jsonl"
    qa.write_text(json.dumps({"qid": 1, "query": "a dog runs on the beach"}) + "\n")
    qb.write_text(json.dumps({"qid": 1, "query": "a man cooks pasta"}) + "\n")
    qc.write_text(json.dumps({"qid": 1, "query": "a man cooks pasta"}) + "\n")
    out, fresh = tmp_path / "feats", tmp_path / "fresh"
    assert run(capsys, "extract", "--queries", qb, "--out", fresh)[0] == 0
    assert run(capsys, "extract", "--queries", qa, "--out", out)[0] == 0
    rc, printed, _ = run(capsys, "extract", "--queries", qb, "--out", out)
    assert rc == 0 and "queries: 1 extracted" in printed and "1 query file(s)" in printed
    with (
        np.load(out / "minilm_text" / "qid1.npz") as z,
        np.load(fresh / "minilm_text" / "qid1.npz") as f,
    ):
        np.testing.assert_array_equal(z["pooler_output"], f["pooler_output"])
    rc, printed, _ = run(capsys, "extract", "--queries", qc, "--out", out)  # same text
    assert "queries: 0 extracted, 1 skipped" in printed


# ------------------------------------------------------------------ 5. someone else's database
def _foreign(path: Path, schema: str) -> Path:
    with sqlite3.connect(path) as c:
        c.executescript(schema)
    return path


@pytest.mark.parametrize(
    "schema",
    [
        "create table users(name text)",
        "create table videos(name text); insert into videos values ('holiday')",
        "create table meta(k text, v text); create table t(x)",  # a 'meta' of other columns
    ],
    ids=["users", "videos", "other-meta"],
)
def test_index_and_query_leave_a_foreign_database_untouched(tmp_path, capsys, schema):
    videos = tmp_path / "videos"
    tiny_video(videos / "w.mp4")
    db = _foreign(tmp_path / "app.db", schema)
    before = digest(db)
    tables = sqlite3.connect(db).execute("select name from sqlite_master").fetchall()
    rc, _, err = run(capsys, "index", videos, "--db", db, "--no-progress")
    assert_refused(rc, err, "not a momentkit library", "Give a new --db file")
    rc, _, err = run(capsys, "query", "x", "--db", db)
    assert_refused(rc, err, "not a momentkit library")
    assert digest(db) == before
    assert sqlite3.connect(db).execute("select name from sqlite_master").fetchall() == tables
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db", "videos"]  # no -wal, .lock
