"""`momentkit search` end to end on the real demo video: table, JSON, plot, exported clips."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from momentkit.cli import search
from momentkit.cli.main import main
from momentkit.inference import Moment, QueryResult
from momentkit.utils.errors import MomentkitError
from momentkit.video import VideoError, probe

DEMO = Path(__file__).resolve().parents[2] / "shared" / "media" / "charades_demo.mp4"
QUERIES = ["a person walks through the doorway", "a person drinks from a cup"]

pytestmark = pytest.mark.skipif(not DEMO.exists(), reason="../shared/media is not present")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    search.add_arguments(parser)
    return parser.parse_args(argv)


def run_search(argv: list[str]) -> int:
    """``momentkit search ARGV`` through the CLI."""
    return main(["search", *argv])


def test_zero_shot_json_plot_and_clips(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    pytest.importorskip("efficientnet_lite_pytorch")
    plot, clips = tmp_path / "curve.png", tmp_path / "clips"
    argv = [str(DEMO), *QUERIES, "--top", "2", "--json", "--plot", str(plot)]
    assert run_search(argv + ["--export-clips", str(clips)]) == 0
    doc = json.loads(capsys.readouterr().out)  # stdout holds the JSON document only
    assert doc["video"] == str(DEMO) and doc["duration"] == pytest.approx(30.697, abs=0.01)
    assert doc["clip_len"] == 2.0 and doc["predictor"].startswith("zero-shot (offline")
    assert doc["plot"] == str(plot) and plot.read_bytes()[:4] == b"\x89PNG"
    assert [r["query"] for r in doc["results"]] == QUERIES
    written = []
    for qi, result in enumerate(doc["results"], start=1):
        assert len(result["saliency"]) == 16 and 1 <= len(result["moments"]) <= 2
        scores = [m["score"] for m in result["moments"]]
        assert scores == sorted(scores, reverse=True)
        for rank, m in enumerate(result["moments"], start=1):
            assert 0 <= m["start"] < m["end"] <= doc["duration"]
            clip = Path(m["clip"]["path"])
            assert clip.parent == clips and clip.name.startswith(f"q{qi}_a-person-")
            assert f"_{rank}_{m['start']:.1f}-{m['end']:.1f}.mp4" in clip.name
            # a stream copy starts on the keyframe at or before the moment and covers it
            assert m["clip"]["start"] <= m["start"] + 1e-3 and m["clip"]["end"] >= m["end"] - 0.2
            info = probe(clip)
            assert info.width == 480 and info.height == 270
            assert info.duration == pytest.approx(m["clip"]["end"] - m["clip"]["start"], abs=0.3)
            written.append(clip)
    assert sorted(clips.iterdir()) == sorted(written)
    # the doorway is crossed in the first seconds of the video
    assert doc["results"][0]["moments"][0]["start"] < 4.0


def test_checkpoint_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """A (random, tiny) model trained on `momentkit extract --encoder offline` features: the
    encoder is inferred from the stream names; the output is a table per query."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from test_predictor import make_run

    run = make_run(
        tmp_path,
        video=("effnet", "imagenet_probs"),
        text="minilm_text",
        video_dim=1280 + 1000 + 2,
        text_dim=384,
        max_v_len=10,  # shorter than the video's 16 clips: sliding windows
    )
    argv = [str(DEMO), *QUERIES, "--checkpoint", str(run), "--top", "3"]
    assert run_search(argv) == 0
    out = capsys.readouterr().out
    assert "16 clips of 2 s; moment_detr on effnet + imagenet_probs" in out
    for query in QUERIES:
        assert query in out
    assert out.count("start (s)") == 2 and out.count("saliency ") == 2
    ranks = [line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│ ")]
    # two tables of 1..3 ranked moments (fewer when NMS merges a random model's duplicates)
    assert ranks.count("1") == 2 and len(ranks) <= 6
    assert all(int(b) in (1, int(a) + 1) for a, b in zip(ranks, ranks[1:]))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--top", "0"], "--top must be >= 1"),
        (["--encoder", "offline", "--encoder", "motion"], "one --encoder"),
        (["--encoder", "motion"], "image-text space"),
    ],
)
def test_bad_arguments_are_clear_errors(args, message, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(MomentkitError, match=message):
        search.run(_parse([str(DEMO), "q", *args]))
    assert main(["search", str(DEMO), "q", *args]) == 2  # the CLI: one line, exit status 2
    assert "momentkit search: error: " in capsys.readouterr().err


def test_missing_video_is_a_clear_error(tmp_path: Path):
    with pytest.raises(VideoError, match="missing.mp4: no such file"):
        search.run(_parse([str(tmp_path / "missing.mp4"), "q"]))


def test_helpers():
    assert search.slugify("A person -- drinks from a CUP!") == "a-person-drinks-from-a-cup"
    assert search.slugify("???") == "query" and len(search.slugify("word " * 30)) <= 40
    assert search.sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == search.SPARK
    assert search.sparkline([3.0, 3.0]) == "▁▁" and search.sparkline([]) == ""
    assert len(search.sparkline(np.arange(500.0), width=60)) == 60
    result = QueryResult("[red] q", [Moment(0.0, 2.0, 0.5)], np.zeros(3), 2.0, 6.0)
    table = search.results_table(result)
    assert "\\[red] q" in str(table.title)  # markup in queries is escaped
    assert table.row_count == 1


def test_export_moments_reencoded_is_frame_accurate(tmp_path: Path):
    result = QueryResult(
        "a person sits down", [Moment(9.0, 12.0, 0.9), Moment(20.0, 22.0, 0.5)], np.zeros(16),
        2.0, 30.7,
    )  # fmt: skip
    (cuts,) = search.export_moments(DEMO, [result], tmp_path, per_query=1, reencode=True)
    (cut,) = cuts
    assert cut.path == tmp_path / "q1_a-person-sits-down_1_9.0-12.0.mp4"
    assert cut.start == pytest.approx(9.0, abs=0.07) and cut.end == pytest.approx(12.0, abs=0.1)
    assert probe(cut.path).duration == pytest.approx(3.0, abs=0.15)
