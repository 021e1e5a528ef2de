"""Robustness of exported clips, output paths, damaged video headers, foreign library databases
and `extract --overwrite` / `--device` (audit of 2026-12-07, second round).

Each test drives the real command line (``momentkit.cli.main.main``) on tiny generated videos
where that is cheap, and asserts the exit status, the one-line message (no traceback) and what
is left on disk (inputs byte-for-byte unchanged).
"""

from __future__ import annotations

import io
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")

from cli_helpers import assert_refused, digest, needs_offline, one_video_library, run, tiny_video  # noqa: E402


def damaged_mkv(path: Path, duration_tag: str) -> Path:
    """A 2 s Matroska file whose DURATION tag is patched in place to ``duration_tag``."""
    import av

    with av.open(str(path), "w", format="matroska") as c:
        s = c.add_stream("mpeg4", rate=4)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        for i in range(8):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 30 * i, np.uint8), "rgb24")
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    data = path.read_bytes()
    old = b"00:00:02.000000000"
    assert data.count(old) == 1
    path.write_bytes(data.replace(old, duration_tag.encode().ljust(len(old))))
    return path


# ------------------------------------------------------------------ 1. --export-clips
@needs_offline
def test_export_clips_never_replace_an_input_or_a_foreign_file(tmp_path, capsys):
    a = tiny_video(tmp_path / "a.mp4", seconds=4.0)
    out = tmp_path / "clips"
    args = ["a person", "--top", "1", "--export-clips", out]
    assert run(capsys, "search", a, *args)[0] == 0
    [clip] = sorted(out.iterdir())  # the name depends on the span found: learn it
    # a video being searched has the clip's name (the reported case), and a foreign file too
    victim = shutil.copy(tiny_video(tmp_path / "other.mp4", seconds=4.0, seed=3), clip)
    victim = Path(victim)
    before = digest(victim)
    rc, printed, err = run(capsys, "search", a, "--video", victim, *args)
    assert rc == 0, err
    assert digest(victim) == before  # the input is intact
    renamed = clip.with_name(f"{clip.stem}-2{clip.suffix}")
    assert renamed.is_file()
    assert f"{clip} exists and is not a clip momentkit cut from a.mp4" in printed
    assert f"wrote {renamed.name} instead" in printed
    # the same search again replaces its own clip (no -3), still keeps the foreign file
    names = sorted(p.name for p in out.iterdir())
    rc, printed, err = run(capsys, "search", a, *args)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == names
    assert digest(victim) == before


def test_a_clip_of_the_same_source_is_replaced_any_other_file_kept(tmp_path):
    from momentkit.video.cut import cut_clip_into

    a = tiny_video(tmp_path / "a.mp4", seconds=3.0)
    b = tiny_video(tmp_path / "b.mp4", seconds=3.0, seed=1)
    out = tmp_path / "out"

    def name(s: float, e: float) -> str:
        return "clip.mp4"

    first = cut_clip_into(a, 0.0, 1.0, out, name)
    assert first.path == out / "clip.mp4" and first.instead_of is None
    again = cut_clip_into(a, 0.0, 1.0, out, name)  # a re-run: its own clip is replaced
    assert again.path == out / "clip.mp4" and again.instead_of is None
    other = cut_clip_into(b, 0.0, 1.0, out, name)  # another video's clip is kept
    assert other.path == out / "clip-2.mp4" and other.instead_of == out / "clip.mp4"
    mine = digest(out / "clip.mp4")
    kept = cut_clip_into(a, 0.0, 1.0, out, name, keep=[out / "clip.mp4"])  # an input
    assert kept.path == out / "clip-3.mp4"  # clip.mp4 is an input, clip-2.mp4 is b's clip
    assert digest(out / "clip.mp4") == mine


# ------------------------------------------------------------------ 2. duplicate outputs
@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--export", "csv:{d}/o.txt", "--export", "json:{d}/o.txt"], "--export json:"),
        (["--export", "csv:{d}/o.png", "--plot", "{d}/./o.png"], "--plot"),
    ],
    ids=["export-export", "export-plot"],
)
def test_search_refuses_two_outputs_naming_one_file(tmp_path, capsys, extra, fragment):
    video = tiny_video(tmp_path / "v.mp4")
    extra = [e.format(d=tmp_path) for e in extra]
    rc, _, err = run(capsys, "search", video, "drink", *extra)
    assert_refused(rc, err, "both write", "Give each output its own file", fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]  # refused before any work


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """A library of one 2 s video (offline encoder)."""
    return one_video_library(tmp_path_factory.mktemp("lib"))


@needs_offline
def test_query_refuses_two_outputs_naming_one_file(library, tmp_path, capsys):
    db = library / "lib.db"
    before = digest(db)
    for extra in (
        ["--export", f"csv:{tmp_path}/o.txt", "--export", f"json:{tmp_path}/o.txt"],
        ["--export", f"srt:{tmp_path}/{{video}}.srt", "--export", f"vtt:{tmp_path}/{{video}}.srt"],
    ):
        rc, _, err = run(capsys, "query", "a person", "--db", db, *extra)
        assert_refused(rc, err, "both write", "Give each output its own file")
    assert list(tmp_path.iterdir()) == [] and digest(db) == before


# ------------------------------------------------------------------ 3. damaged durations
@pytest.mark.parametrize("tag", ["0:0:inf", "-9:00:00", "0:0:nan"], ids=["inf", "neg", "nan"])
def test_a_damaged_declared_duration_is_a_clear_error_everywhere(tmp_path, capsys, tag):
    from momentkit.serving.uploads import UploadRejected, UploadStore
    from momentkit.video.decode import DamagedVideoError, probe

    video = damaged_mkv(tmp_path / "bad.mkv", tag)
    before = digest(video)
    with pytest.raises(DamagedVideoError, match="header is damaged"):
        probe(video)
    rc, printed, err = run(capsys, "extract", video, "--out", tmp_path / "f", "--encoder", "motion")
    assert rc == 1 and "Traceback" not in printed + err
    assert "header is damaged" in printed and "ValueError" not in printed
    store = UploadStore(tmp_path / "uploads", 1 << 20)
    with pytest.raises(UploadRejected) as info:
        store.save(io.BytesIO(video.read_bytes()), "bad.mkv")
    assert info.value.status == 415 and "damaged" in info.value.message
    assert [p for p in (tmp_path / "uploads").iterdir() if not p.name.startswith(".")] == []
    assert digest(video) == before


@needs_offline
@pytest.mark.parametrize("tag", ["0:0:inf", "-9:00:00"], ids=["inf", "neg"])
def test_search_says_a_damaged_duration_is_damaged(tmp_path, capsys, tag):
    video = damaged_mkv(tmp_path / "bad.mkv", tag)
    before = digest(video)
    rc, _, err = run(capsys, "search", video, "a person")
    assert_refused(rc, err, "bad.mkv", "header is damaged", "ffmpeg -i IN -c copy OUT.mp4")
    assert digest(video) == before


@needs_offline
def test_index_records_a_damaged_duration_as_a_failure(tmp_path, capsys):
    (tmp_path / "videos").mkdir()
    damaged_mkv(tmp_path / "videos" / "bad.mkv", "0:0:inf")
    rc, printed, err = run(
        capsys, "index", tmp_path / "videos", "--db", tmp_path / "lib.db", "--no-progress",
    )  # fmt: skip
    assert "Traceback" not in printed + err
    assert "header is damaged" in printed + err and "cannot convert" not in printed + err


# ------------------------------------------------------------------ 4. foreign databases
FOREIGN = {
    "meta-and-app-videos": "create table meta(key TEXT PRIMARY KEY, value TEXT); "
    "insert into meta values ('schema_version', '1'); create table videos(id, title, url); "
    "insert into videos values (1, 'holiday', 'http://x')",
    "meta-other-columns": "create table meta(key TEXT, value INTEGER NOT NULL, other TEXT "
    "NOT NULL);"
    " insert into meta values ('schema_version', 1, 'x')",
    "schema-7": "create table meta(key TEXT PRIMARY KEY, value TEXT NOT NULL); "
    "insert into meta values ('schema_version', '7')",
    "only-a-view": "create view v as select 1 as x",
}


@pytest.mark.parametrize("schema", list(FOREIGN), ids=list(FOREIGN))
def test_index_and_query_leave_a_foreign_database_byte_for_byte(tmp_path, capsys, schema):
    tiny_video(tmp_path / "videos" / "w.mp4")
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as c:
        c.executescript(FOREIGN[schema])
    c.close()
    before = digest(db)
    expected = "schema version 7" if schema == "schema-7" else "not a momentkit library"
    rc, _, err = run(capsys, "index", tmp_path / "videos", "--db", db, "--no-progress")
    assert_refused(rc, err, expected, "leaves it unchanged")
    rc, _, err = run(capsys, "query", "x", "--db", db)
    assert_refused(rc, err, expected)
    assert digest(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db", "videos"]  # no -wal/-shm


def test_query_never_writes_an_empty_database(tmp_path, capsys):
    db = tmp_path / "empty.db"
    db.touch()
    rc, _, err = run(capsys, "query", "x", "--db", db)
    assert_refused(rc, err, "empty SQLite database", "momentkit index")
    assert db.stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]


def test_a_real_library_still_opens(tmp_path):
    from momentkit.library.store import LibraryStore

    with LibraryStore(tmp_path / "lib.db", create=True):
        pass
    with LibraryStore(tmp_path / "lib.db") as store:
        assert store.get_meta("schema_version") == "1"
    with LibraryStore(tmp_path / "lib.db", readonly=True) as store:
        assert store.num_videos() == 0


# ------------------------------------------------------------------ 5. extract --overwrite
def test_extract_overwrite_with_a_new_clip_length_refuses_to_leave_the_folder_mixed(
    tmp_path, capsys
):
    x = tiny_video(tmp_path / "a" / "x.mp4", seconds=4.0)
    tiny_video(tmp_path / "a" / "y.mp4", seconds=4.0, seed=1)
    out = tmp_path / "F"
    enc = ["--encoder", "motion", "--quiet"]
    assert run(capsys, "extract", tmp_path / "a", "--out", out, *enc)[0] == 0
    folder = out / "motion"
    before = {p.name: digest(p) for p in folder.iterdir()}
    rc, _, err = run(capsys, "extract", x, "--out", out, *enc, "--clip-len", "1", "--overwrite")
    assert_refused(rc, err, "y.npz", "1.0 s clips", "Nothing was changed")
    assert {p.name: digest(p) for p in folder.iterdir()} == before
    # every video of the folder: all re-extracted at the new length, consistent
    rc, printed, err = run(
        capsys, "extract", tmp_path / "a", "--out", out, *enc, "--clip-len", "1", "--overwrite"
    )
    assert rc == 0 and "2 extracted" in printed, err
    for name in ("x.npz", "y.npz"):
        with np.load(folder / name) as z:
            assert z["features"].shape[0] == 4  # 4 s of 1 s clips, both files
    assert '"clip_len": 1.0' in (folder / "pipeline.json").read_text()


# ------------------------------------------------------------------ 6. extract --device
def test_extract_checks_the_device_once_before_any_video(tmp_path, capsys):
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 1:
        pytest.skip("this machine has a cuda:1")
    video = tiny_video(tmp_path / "x.mp4")
    rc, out, err = run(
        capsys, "extract", video, "--out", tmp_path / "f", "--encoder", "motion", "--device",
        "cuda:1",
    )  # fmt: skip
    assert_refused(rc, err, "cuda:1", "--device cpu")
    assert "AssertionError" not in out + err and not (tmp_path / "f").exists()
