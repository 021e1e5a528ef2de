"""The video library: change detection, incremental crash-safe indexing, vector search and the
two-stage query, on tiny synthetic videos with a tiny colour encoder behind the real Predictor.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from momentkit.encoders.base import Encoder, EncoderError, TextFeatures
from momentkit.inference.predictor import Predictor
from momentkit.inference.zero_shot import ZeroShotScorer, class_weights
from momentkit.library import (
    Indexer,
    Library,
    LibraryError,
    LibraryStore,
    RetrievalSpace,
    SearchEngine,
    VectorIndex,
    search_library,
)
from momentkit.library.files import FileStat, KnownVideo, plan_changes, scan_videos
from momentkit.library.search import span_relevance, vote_videos
from momentkit.video.decode import FrameRequest
from momentkit.video.write import write_video

TESTS = Path(__file__).resolve().parent
SPEC = "clip:colour-test"
COLOURS = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "white": (255, 255, 255),
}


# ------------------------------------------------------------------------ tiny colour "model"
class ColourEncoder(Encoder):
    """A CLIP-like encoder in a 3-d space: a clip is its mean colour, a query the sum of the
    colour words it contains (``"red"`` -> (1, 0, 0))."""

    def __init__(self) -> None:
        self.name = SPEC
        self.frame_request = FrameRequest(1, 8)
        self.video_streams = {"clip": 3}
        self.text_stream = "clip_text"
        self.text_dim = 3

    def encode_clips(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        t = frames.shape[0]
        return {"clip": frames.reshape(t, -1, 3).mean(1).astype(np.float32) / 255.0}

    def encode_text(self, queries: Sequence[str]) -> list[TextFeatures]:
        out = []
        for q in queries:
            v = sum(
                (np.array(c, np.float32) / 255 for w, c in COLOURS.items() if w in q.lower()),
                start=np.full(3, 1e-3, np.float32),
            )
            out.append(TextFeatures(v[None], v))
        return out


def colour_predictor(encoder: Encoder | None = None) -> Predictor:
    """The real zero-shot Predictor on the colour encoder, 2 s clips."""
    encoder = encoder or ColourEncoder()
    return Predictor(ZeroShotScorer(encoder, clip_len=2.0), [encoder], clip_len=2.0)


class CountingPredictor:
    """Wraps a predictor and counts the videos it encodes."""

    def __init__(self, inner: Predictor | None = None) -> None:
        self.inner = inner or colour_predictor()
        self.encoded: list[str] = []

    def encode_video(self, path, *, max_clips=None):
        self.encoded.append(Path(path).name)
        return self.inner.encode_video(path)

    def predict(self, video, queries, *, top_k=10):
        return self.inner.predict(video, queries, top_k=top_k)


def colour_video(path: Path, segments: Sequence[tuple[str, float]], fps: int = 5) -> Path:
    """A 16x16 video of solid colours, e.g. ``[("blue", 6), ("red", 4)]`` (seconds)."""
    frames = [
        np.full((16, 16, 3), COLOURS[name], np.uint8)
        for name, seconds in segments
        for _ in range(round(seconds * fps))
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, np.stack(frames), fps=fps)


def make_folder(root: Path) -> dict[str, Path]:
    """Three videos: a.mp4 blue then red, b.mp4 green, c.mp4 blue (10 s each)."""
    return {
        "a": colour_video(root / "a.mp4", [("blue", 6), ("red", 4)]),
        "b": colour_video(root / "b.mp4", [("green", 10)]),
        "c": colour_video(root / "sub" / "c.mp4", [("blue", 10)]),
    }


def index(db: Path, root: Path, predictor: CountingPredictor | None = None, **kwargs):
    predictor = predictor or CountingPredictor()
    with LibraryStore(db, create=True) as store:
        report = Indexer(store, SPEC, 2.0, predictor, progress=False, **kwargs).run(root)
    return report, predictor


# ------------------------------------------------------------------------------ change planning
def test_plan_changes_classifies_every_case_and_hashes_only_when_needed():
    hashes = {"/v/touched.mp4": "h-t", "/v/edited.mp4": "h-new", "/v/renamed.mp4": "h-m"}
    hashed: list[str] = []

    def fake_hash(path: Path) -> str:
        hashed.append(str(path))
        return hashes[str(path)]

    known = [
        KnownVideo(1, Path("/v/same.mp4"), 10, 100, "h-s"),
        KnownVideo(2, Path("/v/grown.mp4"), 10, 100, "h-g"),
        KnownVideo(3, Path("/v/touched.mp4"), 10, 100, "h-t"),
        KnownVideo(4, Path("/v/edited.mp4"), 10, 100, "h-old"),
        KnownVideo(5, Path("/v/old_name.mp4"), 33, 100, "h-m"),
        KnownVideo(6, Path("/v/deleted.mp4"), 44, 100, "h-d"),
    ]
    found = [
        FileStat(Path("/v/same.mp4"), 10, 100),
        FileStat(Path("/v/grown.mp4"), 11, 200),
        FileStat(Path("/v/touched.mp4"), 10, 200),
        FileStat(Path("/v/edited.mp4"), 10, 200),
        FileStat(Path("/v/renamed.mp4"), 33, 300),
        FileStat(Path("/v/brand_new.mp4"), 55, 300),
    ]
    plan = plan_changes(known, found, fake_hash)
    assert [r.id for r in plan.unchanged] == [1]
    assert [(r.id, f.path.name) for r, f in plan.changed] == [(2, "grown.mp4"), (4, "edited.mp4")]
    assert [r.id for r, _ in plan.touched] == [3]
    assert [(r.id, f.path.name) for r, f in plan.moved] == [(5, "renamed.mp4")]
    assert [r.id for r in plan.removed] == [6]
    assert [f.path.name for f in plan.new] == ["brand_new.mp4"]
    # same.mp4 (stat equal), grown.mp4 (size differs) and brand_new.mp4 (no vanished file of
    # its size) are never read
    assert sorted(hashed) == ["/v/edited.mp4", "/v/renamed.mp4", "/v/touched.mp4"]
    assert [f.path.name for f in plan.to_encode] == ["brand_new.mp4", "grown.mp4", "edited.mp4"]


def test_scan_skips_hidden_and_non_videos_and_links_out_of_the_root(tmp_path):
    root = tmp_path / "root"
    (root / ".hidden").mkdir(parents=True)
    for name in ["x.mp4", "Y.MKV", "notes.txt", ".partial.mp4", ".hidden/z.mp4"]:
        (root / name).write_bytes(b"0")
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(b"0")
    (root / "link_out.mp4").symlink_to(outside)
    (root / "link_in.mp4").symlink_to(root / "x.mp4")  # same file as x.mp4: listed once
    assert [f.path.name for f in scan_videos(root)] == ["Y.MKV", "x.mp4"]
    with pytest.raises(FileNotFoundError):
        scan_videos(tmp_path / "missing")


# ------------------------------------------------------------------------- incremental indexing
def test_incremental_indexing_processes_only_what_changed(tmp_path):
    root, db = tmp_path / "videos", tmp_path / "lib.db"
    videos = make_folder(root)
    report, pred = index(db, root)
    assert sorted(p.name for p in report.added) == ["a.mp4", "b.mp4", "c.mp4"]
    assert sorted(pred.encoded) == ["a.mp4", "b.mp4", "c.mp4"]

    built: list[int] = []

    def factory() -> CountingPredictor:  # a second run must not even load a model
        built.append(1)
        return CountingPredictor()

    report, _ = index(db, root, factory)  # type: ignore[arg-type]
    assert report.encoded == 0 and report.unchanged == 3 and not built

    # add d and e, change b (new content), touch a (same bytes)
    colour_video(root / "d.mp4", [("white", 4)])
    time.sleep(0.01)
    colour_video(videos["b"], [("red", 10)])
    os.utime(videos["a"], ns=(time.time_ns(), time.time_ns()))
    colour_video(root / "e.mp4", [("green", 2), ("blue", 2)])
    report, pred = index(db, root)
    assert sorted(pred.encoded) == ["b.mp4", "d.mp4", "e.mp4"]
    assert [p.name for p in report.changed] == ["b.mp4"]
    assert [p.name for p in report.touched] == ["a.mp4"]

    # move e, delete c
    (root / "e.mp4").rename(root / "sub" / "e_moved.mp4")
    videos["c"].unlink()

    report, pred = index(db, root)
    assert pred.encoded == []  # a move is re-pointed, not re-encoded
    assert [(a.name, b.name) for a, b in report.moved] == [("e.mp4", "e_moved.mp4")]
    assert [p.name for p in report.removed] == ["c.mp4"]

    with LibraryStore(db) as store:
        names = [v.name for v in store.videos()]
        assert names == ["a.mp4", "b.mp4", "d.mp4", "e_moved.mp4"]
        b = next(v for v in store.videos() if v.name == "b.mp4")
        clip = store.streams(b.id)["clip"]
        assert clip.shape == (5, 3) and clip[:, 0].min() > 0.9  # b's new (red) content
        assert store.num_clips() == 5 + 5 + 2 + 2
        assert len(store.runs()) == 4
    report, pred = index(db, root)
    assert pred.encoded == [] and report.unchanged == 4


def test_failed_files_are_recorded_and_retried_only_when_changed(tmp_path):
    root, db = tmp_path / "videos", tmp_path / "lib.db"
    colour_video(root / "good.mp4", [("red", 2)])
    (root / "bad.mp4").write_bytes(b"this is not a video")
    report, _ = index(db, root)
    assert [p.name for p, _ in report.failed] == ["bad.mp4"]
    assert "bad.mp4" in report.failed[0][1]
    report, pred = index(db, root)
    assert pred.encoded == [] and [p.name for p in report.skipped_failed] == ["bad.mp4"]
    report, pred = index(db, root, retry_failed=True)
    # tried again: refused by the probe before decoding (the predictor is not reached)
    assert not report.skipped_failed and [p.name for p, _ in report.failed] == ["bad.mp4"]
    colour_video(root / "bad.mp4", [("blue", 2)])  # fixed
    report, pred = index(db, root)
    assert [p.name for p in report.added] == ["bad.mp4"] and not report.failed
    with LibraryStore(db) as store:
        assert store.failures() == {}


def test_a_crash_leaves_whole_videos_and_rerunning_finishes_the_job(tmp_path):
    root, db = tmp_path / "videos", tmp_path / "lib.db"
    make_folder(root)

    class Interrupted(CountingPredictor):
        def encode_video(self, path, *, max_clips=None):
            if len(self.encoded) == 1:
                raise KeyboardInterrupt
            return super().encode_video(path)

    with pytest.raises(KeyboardInterrupt):
        index(db, root, Interrupted())
    with LibraryStore(db) as store:
        assert [v.name for v in store.videos()] == ["a.mp4"]
        assert store.num_clips() == 5
    report, pred = index(db, root)
    assert sorted(pred.encoded) == ["b.mp4", "c.mp4"] and report.unchanged == 1


def test_a_failed_transaction_rolls_back_completely(tmp_path):
    root, db = tmp_path / "videos", tmp_path / "lib.db"
    make_folder(root)
    index(db, root)
    with LibraryStore(db) as store:
        generation, clips = store.generation, store.num_clips()
        real = store._conn

        class FailingStreams:  # the connection dies while writing a video's features
            def __getattr__(self, name):
                return getattr(real, name)

            def executemany(self, sql, rows):
                if sql.startswith("INSERT INTO streams"):
                    raise sqlite3.OperationalError("disk I/O error")
                return real.executemany(sql, rows)

        store._conn = FailingStreams()  # type: ignore[assignment]
        a = next(v for v in store.videos() if v.name == "a.mp4")
        with pytest.raises(LibraryError, match="disk I/O error; the device reported"):
            store.add_video(
                FileStat(a.path, 1, 1), "x", 4.0, 2.0, {"clip": np.ones((2, 3))}, 0.1, a.id
            )
        store._conn = real
        assert store.generation == generation and store.num_clips() == clips
        assert store.video(a.id) is not None  # the replaced row is still there


def test_a_killed_process_leaves_a_consistent_library(tmp_path):
    root, db = tmp_path / "videos", tmp_path / "lib.db"
    make_folder(root)
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(TESTS)!r})
        from test_library import CountingPredictor, index
        from pathlib import Path

        class Killed(CountingPredictor):
            def encode_video(self, path, *, max_clips=None):
                if len(self.encoded) == 2:
                    os._exit(3)  # no cleanup, no rollback, no finally
                return super().encode_video(path)

        index(Path({str(db)!r}), Path({str(root)!r}), Killed())
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == 3, proc.stderr.decode()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM videos").fetchone()[0] == 2
    report, pred = index(db, root)
    assert len(pred.encoded) == 1 and report.unchanged == 2
    with Library.open(db) as library:
        index_, _ = library.vector_index()
        assert index_ is not None and len(index_) == 15


def test_encoder_and_clip_length_of_a_library_are_fixed(tmp_path):
    root, db = tmp_path / "videos", tmp_path / "lib.db"
    colour_video(root / "a.mp4", [("red", 2)])
    index(db, root)
    with LibraryStore(db) as store:
        with pytest.raises(LibraryError, match="indexed with encoder 'clip:colour-test'"):
            Indexer(store, "clip:other", 2.0, CountingPredictor())
        with pytest.raises(LibraryError, match="--clip-len 2"):
            Indexer(store, SPEC, 1.0, CountingPredictor())
    with pytest.raises(EncoderError, match="share no space"):
        RetrievalSpace.for_spec("motion")
    with pytest.raises(LibraryError, match="no such library"):
        LibraryStore(tmp_path / "missing.db")
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(LibraryError, match="not a momentkit library"):
        LibraryStore(tmp_path / "junk.db")


# --------------------------------------------------------------------------------- vector search
def test_vector_index_is_exact_inner_product_search():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(500, 16)).astype(np.float32)
    ids = np.arange(1000, 1500)
    index_ = VectorIndex(16)
    index_.add(ids, vectors)
    query = rng.normal(size=(2, 16)).astype(np.float32)
    scores, found = index_.search(query, 5)
    expected = np.argsort(-(query @ vectors.T), axis=1)[:, :5] + 1000
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_allclose(scores[0], np.sort(query[0] @ vectors.T)[::-1][:5], rtol=1e-5)
    assert index_.remove(expected[0, :1]) == 1 and len(index_) == 499
    assert expected[0, 0] not in index_.search(query[:1], 5)[1]
    assert index_.search(query, 10_000)[1].shape == (2, 499)
    with pytest.raises(ValueError, match=r"\(N, 16\)"):
        index_.add(np.arange(2), np.ones((2, 8)))


def test_offline_bridge_vectors_give_the_zero_shot_relevance():
    class Bridge(Encoder):
        name = "offline"
        video_streams = {"imagenet_probs": 4}

        def class_similarity(self, query):
            return np.array([0.1, 0.5, -0.2, 0.3], np.float32) * len(query)

    probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.0, 0.0, 0.5, 0.5]], np.float32)
    for temperature in (None, 0.05):
        space = RetrievalSpace.for_spec("offline", temperature=temperature)
        assert space.stream == "imagenet_probs" and not space.normalise
        q = space.query_vectors(Bridge(), ["ab"])[0]
        weights = class_weights(Bridge().class_similarity("ab"), temperature)
        np.testing.assert_allclose(space.clip_vectors(probs) @ q, probs @ weights, rtol=1e-6)
    clip = RetrievalSpace.for_spec("clip:x")
    assert clip.stream == "clip" and clip.normalise
    np.testing.assert_allclose(np.linalg.norm(clip.clip_vectors(probs * 3), axis=1), 1, rtol=1e-6)
    with pytest.raises(EncoderError, match="indexed with encoder"):
        clip.query_vectors(Bridge(), ["red"])


def test_clip_table_groups_ids_by_video_in_clip_order():
    from momentkit.library.store import ClipTable

    table = ClipTable(
        np.array([1, 2, 3, 4, 5]), np.array([7, 7, 9, 9, 9]), np.array([1, 0, 0, 2, 1])
    )
    groups = table.by_video()
    assert sorted(groups) == [7, 9]
    assert groups[7].tolist() == [2, 1] and groups[9].tolist() == [3, 5, 4]
    video_ids, idx = table.lookup(np.array([5, 1]))
    assert video_ids.tolist() == [9, 7] and idx.tolist() == [1, 1]
    empty = np.zeros(0, np.int64)
    assert ClipTable(empty, empty, empty).by_video() == {}


def test_vote_and_span_relevance():
    votes = vote_videos(np.array([0.9, 0.8, 0.8, 0.5]), np.array([2, 1, 2, 3]), 2)
    assert votes == [(2, 0.9, 2), (1, 0.8, 1)]
    rel = np.array([0.0, 1.0, 3.0, 0.0])
    assert span_relevance(rel, 2.0, 2.0, 6.0) == 2.0  # clips 1 and 2
    assert span_relevance(rel, 2.0, 2.5, 3.0) == 1.0  # inside clip 1
    assert span_relevance(rel, 2.0, 7.0, 9.0) == 0.0  # past the end: the last clip
    assert span_relevance(np.zeros(0), 2.0, 0, 1) == 0.0


# ------------------------------------------------------------------------------ two-stage query
@pytest.fixture(scope="module")
def colour_library(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    make_folder(root)
    db = root.parent / "colour.db"
    index(db, root)
    return db


def test_two_stage_query_finds_the_right_video_and_moment(colour_library):
    encoder = ColourEncoder()
    predictor = colour_predictor(encoder)
    with Library.open(colour_library) as library:
        red = search_library(library, "something red", predictor, encoder, top_k=3, n_videos=2)
        best = red.moments[0]
        assert best.video.name == "a.mp4"
        assert (best.start, best.end) == (6.0, 10.0)
        assert best.score > 0.9 and best.video_score > 0.9
        assert [c.video.name for c, _ in red.videos][0] == "a.mp4"
        green = search_library(library, "green", predictor, encoder, top_k=3)
        assert green.moments[0].video.name == "b.mp4"
        blue = search_library(library, "blue", predictor, encoder, top_k=10, n_videos=3)
        assert {m.video.name for m in blue.moments[:2]} <= {"a.mp4", "c.mp4"}
        # ranked by calibrated relevance, then by span relevance
        keys = [(m.relevance, m.score) for m in blue.moments]
        assert all(0.0 <= r <= 1.0 for r, _ in keys)
        assert keys == sorted(keys, reverse=True)
        data = json.loads(json.dumps(red.to_dict()))
        assert set(data) == {
            "query", "moments", "videos", "timings", "min_relevance", "best_relevance",
            "no_confident_match",
        }  # fmt: skip
        assert set(data["moments"][0]) == {
            "video_id", "path", "name", "start", "end", "score", "moment_score", "video_score",
            "relevance",
        }  # fmt: skip
        assert list(red.timings) == ["embed", "coarse", "localise", "total"]
        assert len(data["videos"][0]["saliency"]) == 5 and data["videos"][0]["clip_len"] == 2.0


def test_engine_reencodes_only_when_the_stored_features_do_not_fit(colour_library):
    with Library.open(colour_library) as library:
        counting = CountingPredictor()
        engine = SearchEngine(library, ColourEncoder(), counting)
        engine.predictor.video_streams = ("clip",)  # type: ignore[attr-defined]
        engine.predictor.clip_len = 2.0  # type: ignore[attr-defined]
        assert engine.query("red", top_k=2).moments[0].video.name == "a.mp4"
        assert counting.encoded == []  # stored features used
        engine.predictor.video_streams = ("clip", "motion")  # type: ignore[attr-defined]
        engine.query("red", top_k=2, n_videos=1)
        engine.query("red again", top_k=2, n_videos=1)
        assert counting.encoded == ["a.mp4"]  # encoded once, then cached


def test_vector_index_follows_writes_of_another_process(colour_library, tmp_path):
    with Library.open(colour_library) as library:
        index_, _ = library.vector_index()
        assert len(index_) == 15
        with LibraryStore(colour_library) as other:  # e.g. `momentkit index` while serving
            a = next(v for v in other.videos() if v.name == "a.mp4")
            blob = other.streams(a.id)
            other.remove_video(a.id)
            assert len(library.vector_index()[0]) == 10
            stat = FileStat(a.path, a.size, a.mtime_ns)
            other.add_video(stat, a.sha256, a.duration, a.clip_len, blob, a.encode_seconds)
        assert len(library.vector_index()[0]) == 15


def test_coarse_search_over_100k_clips_is_fast(tmp_path):
    from momentkit.benchmarks.search import build_synthetic_library, time_coarse

    db = tmp_path / "big.db"
    build_synthetic_library(db, num_clips=100_000, dim=512, clips_per_video=50, seed=0)
    with Library.open(db) as library:
        library.vector_index()  # built once at open, not per query
        times = time_coarse(library, num_queries=10, seed=1)
    assert len(times) == 10
    assert float(np.median(times)) < 0.5, f"median coarse search {np.median(times):.3f} s"


def make_checkpoint(root: Path) -> Path:
    """A run directory holding a random tiny Moment-DETR trained on the colour streams."""
    import torch

    from momentkit.models import build_model, config_from_dict
    from momentkit.training.config import ExperimentConfig
    from momentkit.utils.io import write_json

    model = {
        "name": "moment_detr", "hidden_dim": 16, "dim_feedforward": 32, "nheads": 2,
        "num_queries": 5, "enc_layers": 1, "dec_layers": 1, "video_dim": 3 + 2, "text_dim": 3,
    }  # fmt: skip
    data = {
        "dataset": "synth",
        "video_features": [str(root / "feats" / "clip")],
        "text_features": str(root / "feats" / "clip_text"),
        "clip_len": 2.0,
    }
    torch.manual_seed(0)
    build_model(config_from_dict(model)).save_pretrained(root / "run" / "best")
    cfg = ExperimentConfig.from_dict({"model": model, "data": data})
    write_json(root / "run" / "best" / "experiment.json", cfg.to_dict())
    return root / "run"


def test_query_with_a_checkpoint_reuses_the_stored_features(colour_library, tmp_path, monkeypatch):
    import momentkit.encoders

    monkeypatch.setattr(momentkit.encoders, "build_encoder", lambda spec, **kw: ColourEncoder())
    with Library.open(colour_library) as library:
        engine = SearchEngine.load(
            library, checkpoint=make_checkpoint(tmp_path), checkpoint_encoders=[SPEC]
        )
        assert "moment_detr" in engine.predictor.description
        assert engine.encoder is engine.predictor.encoders[0]  # one encoder, shared
        encoded: list[str] = []
        monkeypatch.setattr(engine.predictor, "encode_video", lambda p: encoded.append(p))
        result = engine.query("red", top_k=4, n_videos=2)
    assert encoded == []  # the stored 'clip' stream is what the model reads
    assert [c.video.name for c, _ in result.videos][0] == "a.mp4"
    assert 1 <= len(result.moments) <= 4
    assert {m.video.name for m in result.moments} <= {c.video.name for c, _ in result.videos}
    assert all(0 <= m.start < m.end <= 10.0 for m in result.moments)
    scores = [m.score for m in result.moments]
    assert scores == sorted(scores, reverse=True)


# ------------------------------------------------------------------------------------------ CLI
def test_cli_index_and_query(tmp_path, monkeypatch, capsys):
    import momentkit.encoders
    from momentkit.cli import index as index_cmd
    from momentkit.cli import query as query_cmd

    real_build = momentkit.encoders.build_encoder
    monkeypatch.setattr(
        momentkit.encoders,
        "build_encoder",
        lambda spec, **kw: ColourEncoder() if spec == SPEC else real_build(spec, **kw),
    )
    root, db = tmp_path / "videos", tmp_path / "lib.db"
    make_folder(root)

    def cli(module, argv):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        return module.run(parser.parse_args(argv))

    assert cli(index_cmd, [str(root), "--db", str(db), "--encoder", SPEC, "--no-progress"]) == 0
    assert "3 added" in capsys.readouterr().out
    assert cli(index_cmd, [str(root), "--db", str(db), "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["unchanged"] == 3
    assert cli(query_cmd, ["a red thing", "--db", str(db), "--top", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["moments"][0]["name"] == "a.mp4" and len(out["moments"]) == 2
    assert cli(query_cmd, ["green", "--db", str(db)]) == 0
    assert "b.mp4" in capsys.readouterr().out
    with pytest.raises(LibraryError, match="no such library"):
        cli(query_cmd, ["red", "--db", str(tmp_path / "nope.db")])


def test_index_cli_leaves_no_database_behind_on_bad_input(tmp_path, capsys):
    """A missing folder, a file instead of a folder, a non-positive clip length: one clear
    line, and no library file created (an existing library is never deleted)."""
    from momentkit.cli.main import main

    db = tmp_path / "x.db"
    assert main(["index", str(tmp_path / "nodir"), "--db", str(db)]) == 2
    assert "nodir does not exist" in capsys.readouterr().err
    afile = tmp_path / "a.txt"
    afile.write_text("x")
    assert main(["index", str(afile), "--db", str(db)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    for bad in ("-1", "0", "nan"):
        with pytest.raises(SystemExit) as exit_info:
            main(["index", str(tmp_path), "--db", str(db), "--clip-len", bad])
        assert exit_info.value.code == 2
        assert "argument --clip-len: must be a finite number > 0" in capsys.readouterr().err
    assert not list(tmp_path.glob("x.db*"))
    existing = tmp_path / "lib.db"
    existing.write_bytes(b"")  # a file the user has: never removed by a failed run
    main(["index", str(tmp_path / "nodir"), "--db", str(existing)])
    assert existing.exists()
