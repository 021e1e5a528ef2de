"""`momentkit search` and `momentkit query` end to end: the real demo video (tables, JSON, plots,
frame-accurate and fast clips decoded back with PyAV, every export format read back), batches
of videos and queries files, the relevance threshold, progress and the timing footer."""

from __future__ import annotations

import argparse
import contextlib
import csv
import inspect
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import needs_offline

from momentkit.cli import query as query_cmd
from momentkit.cli import search
from momentkit.cli.main import main
from momentkit.export import Answer, ExportMoment, slugify
from momentkit.utils.errors import MomentkitError
from momentkit.video import probe

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "momentkit" / "examples" / "charades_demo.mp4"
QUERIES = ["a person drinks from a cup", "a person sits down"]
FRAME = 1001 / 15000  # the demo runs at 14.985 fps

pytest.importorskip("av")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    search.add_arguments(parser)
    return parser.parse_args(argv)


def frame_times(path: Path) -> list[float]:
    """Presentation time (s) of every video frame of ``path``, decoded with PyAV."""
    import av

    with av.open(str(path)) as c:
        return [float(f.time) for f in c.decode(video=0)]


@pytest.fixture(scope="module")
def predictor():
    """The zero-shot offline predictor, loaded once for the module."""
    from momentkit.inference.predictor import Predictor

    return Predictor.zero_shot("offline", clip_len=2.0)


@pytest.fixture()
def cli(predictor, monkeypatch):
    """``momentkit ARGV`` with the module's predictor; returns (status, stdout, stderr)."""
    monkeypatch.setattr(search, "build_predictor", lambda args: predictor)

    def run(argv: list[str]) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(argv)
        return status, out.getvalue(), err.getvalue()

    return run


# ------------------------------------------------------------------------- one video, all out
@pytest.fixture(scope="module")
def everything(predictor, tmp_path_factory):
    """One `search --json` run of the demo writing clips, a plot and every export format."""
    tmp = tmp_path_factory.mktemp("everything")
    argv = [str(DEMO), *QUERIES, "--top", "3", "--json", "--plot", str(tmp / "curve.png"),
            "--export-clips", str(tmp / "clips")]  # fmt: skip
    for spec in ("qvh:preds.jsonl", "csv:m.csv", "srt:s.srt", "vtt:s.vtt", "json:doc.json",
                 "ffmetadata:c.ffmeta", "youtube:yt.txt"):  # fmt: skip
        name, path = spec.split(":")
        argv += ["--export", f"{name}:{tmp / path}"]
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(search, "build_predictor", lambda args: predictor)
        with contextlib.redirect_stdout(out):
            assert main(["search", *argv]) == 0
    return tmp, json.loads(out.getvalue())  # stdout holds the JSON document only


@needs_offline
def test_json_document(everything, predictor):
    tmp, doc = everything
    assert set(doc) == {"predictor", "videos", "results", "failed"} and doc["failed"] == []
    (video,) = doc["videos"]
    assert video["video"] == str(DEMO) and video["vid"] == "charades_demo"
    assert video["duration"] == pytest.approx(30.697, abs=0.01) and video["num_clips"] == 16
    assert video["plot"] == str(tmp / "curve.png")
    assert (tmp / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert [(r["qid"], r["query"], r["vid"]) for r in doc["results"]] == [
        (1, QUERIES[0], "charades_demo"), (2, QUERIES[1], "charades_demo"),
    ]  # fmt: skip
    assert json.loads((tmp / "doc.json").read_text()) == doc
    # scores keep full precision: exactly what the predictor returns
    expected = predictor.predict(predictor.encode_video(DEMO), QUERIES, top_k=3)
    for result, want in zip(doc["results"], expected):
        assert [m["score"] for m in result["moments"]] == [float(m.score) for m in want.moments]
        assert result["saliency"] == [float(x) for x in want.saliency]
        assert [m["relevance"] for m in result["moments"]] == [m.relevance for m in want.moments]


@needs_offline
def test_exported_clips_cover_their_moment_to_the_frame(everything):
    """Default cuts are frame-accurate: decoded, each file's frames are the source frames on
    screen from the moment's start to its end, within one frame at each end."""
    tmp, doc = everything
    source = frame_times(DEMO)
    written = []
    for result in doc["results"]:
        for m in result["moments"]:
            clip = m["clip"]
            path = Path(clip["path"])
            assert path.parent == tmp / "clips"
            assert path.name == (
                f"charades-demo_q{result['qid']}_{slugify(result['query'])}_{m['rank']}_"
                f"{clip['start']:.2f}-{clip['end']:.2f}.mp4"
            )
            # the clip covers the moment and at most one frame more at each end
            assert m["start"] - FRAME < clip["start"] <= m["start"]
            assert m["end"] <= clip["end"] < m["end"] + FRAME + 1e-6
            times = frame_times(path)
            shown = [t for t in source if t + FRAME > m["start"] + 1e-6 and t < m["end"]]
            assert times[0] == 0.0 and len(times) == len(shown)
            assert clip["start"] + times[-1] == pytest.approx(shown[-1], abs=1e-3)
            assert abs(clip["start"] + times[0] - m["start"]) < FRAME
            assert abs(clip["start"] + times[-1] + FRAME - m["end"]) < FRAME
            written.append(path)
    assert sorted((tmp / "clips").iterdir()) == sorted(written)
    drink = doc["results"][0]["moments"][0]
    assert (drink["start"], drink["end"]) == (10.0, 14.0)  # the demo's moment of the issue
    assert drink["clip"]["start"] > 9.9  # not from the keyframe at 0 s


@needs_offline
def test_qvh_export_is_evaluated_by_momentkit_evaluate(everything, capsys):
    tmp, doc = everything
    gt = tmp / "gt.jsonl"  # by eye: drinking 4-8 s, sitting down 8-10 s
    windows = {QUERIES[0]: [4.0, 8.0], QUERIES[1]: [8.0, 10.0]}
    gt.write_text("".join(
        json.dumps({"qid": i, "query": q, "vid": "charades_demo", "duration": 30.7,
                    "relevant_windows": [windows[q]]}) + "\n"
        for i, q in enumerate(QUERIES, start=1)
    ))  # fmt: skip
    assert main(["evaluate", str(tmp / "preds.jsonl"), str(gt), "--out", str(tmp / "m.json")]) == 0
    brief = json.loads((tmp / "m.json").read_text())["brief"]

    def iou(a, b):
        inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
        return inter / (max(a[1], b[1]) - min(a[0], b[0]))

    top1 = [iou([r["moments"][0]["start"], r["moments"][0]["end"]], windows[r["query"]])
            for r in doc["results"]]  # fmt: skip
    assert brief["MR-mIoU"] == pytest.approx(100 * np.mean(top1), abs=0.01)
    assert brief["MR-R1@0.3"] == pytest.approx(100 * np.mean([x >= 0.3 for x in top1]))


@needs_offline
def test_csv_and_subtitle_exports_match_the_json(everything):
    import av

    tmp, doc = everything
    moments = [(r, m) for r in doc["results"] for m in r["moments"]]
    with (tmp / "m.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(moments)
    for row, (r, m) in zip(rows, moments):
        assert (row["query"], int(row["rank"])) == (r["query"], m["rank"])
        assert (float(row["start"]), float(row["end"])) == (m["start"], m["end"])
        assert float(row["score"]) == m["score"] and float(row["relevance"]) == m["relevance"]
        assert row["clip"] == m["clip"]["path"] and float(row["clip_start"]) == m["clip"]["start"]
    for fmt in ("srt", "vtt"):
        with av.open(str(tmp / f"s.{fmt}")) as c:
            cues = [(float(p.pts * p.time_base), bytes(p).decode().splitlines()[0])
                    for p in c.demux(c.streams.subtitles[0]) if p.pts is not None]  # fmt: skip
        assert cues == sorted((m["start"], r["query"]) for r, m in moments)
    with av.open(str(tmp / "c.ffmeta"), format="ffmetadata") as c:
        assert len(c.chapters()) == len(moments)
    lines = (tmp / "yt.txt").read_text().splitlines()
    assert len(lines) == len(moments) + (0 if min(m["start"] for _, m in moments) < 1 else 1)


# --------------------------------------------------------------------------------- fast cuts
@needs_offline
def test_fast_cut_names_the_span_it_really_covers(cli, tmp_path):
    status, out, _ = cli(["search", str(DEMO), QUERIES[0], "--top", "1", "--fast-cut",
                          "--export-clips", str(tmp_path)])  # fmt: skip
    assert status == 0
    (clip,) = tmp_path.iterdir()
    # the only keyframe before 10 s is at 0 s: the copy starts there and its name says so
    assert clip.name.startswith("charades-demo_q1_a-person-drinks-from-a-cup_1_0.00-")
    end = float(clip.stem.rsplit("-", 1)[1])
    assert 14.0 <= end < 14.0 + 0.3
    times = frame_times(clip)
    assert times[0] == 0.0 and times[-1] + FRAME == pytest.approx(end, abs=0.01)
    assert probe(clip).duration == pytest.approx(end, abs=0.07)
    assert f"0.00-{end:.2f}" in out and "stream copies" in out  # the table says so too


# ---------------------------------------------------------------------------------- batches
@needs_offline
def test_videos_globs_and_queries_files_encode_each_video_once(cli, predictor, tmp_path):
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    shutil.copy(DEMO, videos / "kitchen.mp4")
    shutil.copy(DEMO, videos / "sub" / "hall.mp4")
    (videos / "notes.txt").write_text("not a video")
    queries = tmp_path / "q.txt"
    queries.write_text(f"# the demo's queries\n\n{QUERIES[0]}\n  {QUERIES[1]}  \n")
    encoded: list[str] = []
    real = type(predictor).encode_video

    def counting(self, path, progress=None, **kwargs):
        encoded.append(Path(path).name)
        return real(self, path, progress=progress, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(predictor), "encode_video", counting)
        status, out, _ = cli(["search", str(videos / "**" / "*.mp4"), "--queries-file",
                              str(queries), "--top", "1", "--json"])  # fmt: skip
    assert status == 0
    doc = json.loads(out)
    assert sorted(encoded) == ["hall.mp4", "kitchen.mp4"]  # once each, for both queries
    assert [(r["vid"], r["qid"], r["query"]) for r in doc["results"]] == [
        ("kitchen", 1, QUERIES[0]), ("kitchen", 2, QUERIES[1]),
        ("hall", 1, QUERIES[0]), ("hall", 2, QUERIES[1]),
    ]  # fmt: skip
    assert doc["results"][0]["moments"] == doc["results"][2]["moments"]  # same video content

    # QVHighlights JSON Lines: a vid pairs a query with its video; --video adds videos
    rows = [{"qid": "d", "query": QUERIES[0], "vid": "kitchen"},
            {"qid": "s", "query": QUERIES[1], "vid": "hall"},
            {"qid": "x", "query": "a dog", "vid": "garden"}]  # fmt: skip
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    preds = tmp_path / "preds.jsonl"
    status, out, err = cli(["search", str(videos / "kitchen.mp4"), "--video",
                            str(videos / "sub" / "*.mp4"), "--queries-file", str(jsonl),
                            "--top", "1", "--json", "--export", f"qvh:{preds}"])  # fmt: skip
    assert status == 0
    doc = json.loads(out)
    assert [(r["vid"], r["qid"]) for r in doc["results"]] == [("kitchen", "d"), ("hall", "s")]
    assert "skipped 1 queries whose vid names none of the videos" in err
    assert [json.loads(line)["qid"] for line in preds.read_text().splitlines()] == ["d", "s"]


@needs_offline
def test_per_video_outputs_need_a_video_placeholder(cli, tmp_path):
    shutil.copy(DEMO, tmp_path / "a.mp4")
    shutil.copy(DEMO, tmp_path / "b.mp4")
    subs = tmp_path / "subs"
    status, _, _ = cli(["search", str(tmp_path / "*.mp4"), QUERIES[0], "--top", "1",
                        "--export", f"srt:{subs}/{{video}}.srt",
                        "--plot", str(tmp_path / "curves" / "{video}.png")])  # fmt: skip
    assert status == 0
    assert sorted(p.name for p in subs.iterdir()) == ["a.srt", "b.srt"]
    assert sorted(p.name for p in (tmp_path / "curves").iterdir()) == ["a.png", "b.png"]


@pytest.mark.parametrize(
    "files,args,message",
    [
        ({"q.jsonl": '{"qid": 1, "query": "a"}\n{"qid": 2}\n'}, ["--queries-file", "q.jsonl"],
         "q.jsonl:2: field 'query': missing"),
        ({"q.jsonl": '{"query": "a"}\n{"query": "b", "qid": [1]}\n'},
         ["--queries-file", "q.jsonl"], "q.jsonl:2: field 'qid': expected an integer or string"),
        ({"q.jsonl": '{"query": "a"}\nnot json\n'}, ["--queries-file", "q.jsonl"],
         "q.jsonl:2: invalid JSON"),
        ({"q.txt": "a dog\n{\"query\": \"b\"}\n"}, ["--queries-file", "q.txt"],
         "q.txt:2: this line looks like a JSON object"),
        ({"q.jsonl": '{"qid": 5, "query": "a"}\n{"qid": 5, "query": "b"}\n'},
         ["--queries-file", "q.jsonl"], "q.jsonl:2: qid 5 is already used by"),
        ({"q.txt": "# only a comment\n"}, ["--queries-file", "q.txt"], "holds no query"),
        ({}, ["--queries-file", "missing.txt"], "missing.txt: no such queries file"),
        ({}, [], "no query given"),
        ({}, ["a dog", "--export", "xls:m.xls"], "FORMAT one of json, qvh, csv"),
    ],
)  # fmt: skip
def test_bad_inputs_are_one_line_errors_naming_the_place(
    files, args, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        Path(name).write_text(text)
    assert main(["search", str(DEMO), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("momentkit search: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_the_command_line_shape():
    """VIDEO first, then queries, wherever the options are; --video and --queries-file add."""
    args = _parse(["v.mp4", "--top", "1", "a dog", "a cat"])
    assert (args.video, args.queries, args.top) == ("v.mp4", ["a dog", "a cat"], 1)
    args = _parse(["v.mp4", "a dog", "--video", "w.mp4", "--video", "x/*.mkv"])
    assert (args.queries, args.videos) == (["a dog"], ["w.mp4", "x/*.mkv"])
    args = _parse(["videos/*.mp4", "--queries-file", "q.txt", "--queries-file", "r.jsonl"])
    assert (args.queries, args.queries_file) == ([], ["q.txt", "r.jsonl"])
    args = _parse(["v.mp4", "q", "--export", "csv:m.csv", "--export", "s.srt", "--fast-cut"])
    assert args.export == ["csv:m.csv", "s.srt"] and args.fast_cut


def test_videos_that_are_not_there_fail_before_any_work(tmp_path, capsys):
    shutil.copy(DEMO, tmp_path / "a.mp4")
    shutil.copy(DEMO, tmp_path / "b.mp4")
    cases = [
        ([str(tmp_path / "*.mkv"), "q"], "no video file matches this pattern"),
        ([str(tmp_path / "missing.mp4"), "q"], "missing.mp4: no such file"),
        ([str(tmp_path), "q"], "is not a file"),
        # an unquoted glob the shell expanded: the second video would be taken for a query
        ([str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")], "is a video file, not a query"),
        ([str(tmp_path / "*.mp4"), "q", "--export", "srt:s.srt"], "put {video} in the file"),
        ([str(tmp_path / "*.mp4"), "q", "--plot", "c.png"], "put {video} in the file name"),
    ]
    for argv, message in cases:
        assert main(["search", *argv]) == 2
        assert message in capsys.readouterr().err


# ------------------------------------------------------------------------- relevance threshold
@needs_offline
def test_min_score_reports_no_confident_match(cli, predictor):
    from momentkit.inference.predictor import Predictor

    if "min_relevance" not in inspect.signature(Predictor.predict).parameters:
        pytest.skip("Predictor.predict has no min_relevance yet")
    status, out, _ = cli(["search", str(DEMO), QUERIES[0], "--json"])
    best = json.loads(out)["results"][0]["moments"][0]["relevance"]
    assert 0.0 < best < 0.99
    status, out, _ = cli(["search", str(DEMO), QUERIES[0], "--min-score", "0.99"])
    assert status == 0
    line = f"no confident match for '{QUERIES[0]}' in charades_demo.mp4 (best relevance "
    assert f"{line}{best:.3f} < 0.99)" in " ".join(out.split())
    # the same two queries with and without the threshold
    status, out, _ = cli(["search", str(DEMO), *QUERIES, "--json"])
    best = json.loads(out)["results"][0]["moments"][0]["relevance"]
    status, out, _ = cli(["search", str(DEMO), *QUERIES, "--min-score", "0.99", "--json"])
    drink = json.loads(out)["results"][0]
    assert drink["no_confident_match"] and drink["moments"] == []
    assert drink["min_relevance"] == 0.99 and drink["best_relevance"] == best
    status, out, _ = cli(["search", str(DEMO), *QUERIES, "--min-score", "0.5", "--json"])
    for result in json.loads(out)["results"]:
        assert all(m["relevance"] >= 0.5 for m in result["moments"])


# ------------------------------------------------------------------------- tables and helpers
def test_results_table_shows_relevance_and_the_clip_span():
    from momentkit.video.cut import Cut

    moments = [ExportMoment(1, 10.0, 14.0, 7.2e-4, 0.586, Cut(Path("c.mp4"), 0.0, 14.147)),
               ExportMoment(2, 18.0, 22.0, 3.0e-4, None)]  # fmt: skip
    answer = Answer(1, "[red] q", "v.mp4", "v", 30.0, 2.0, [0.0, 1.0], moments)
    table = search.results_table(answer)
    assert "[red] q" in str(table.title) and table.row_count == 2
    cells = {c.header: list(c._cells) for c in table.columns}
    assert cells["relevance"] == ["0.586", "-"]
    assert cells["score"] == ["0.00072", "0.0003"]
    assert cells["clip covers (s)"] == ["0.00-14.15", ""]


def test_progress_shows_clips_done_and_time_left():
    from rich.console import Console

    from momentkit.cli.output import clip_progress

    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, color_system=None, width=120)
    with clip_progress(console, "encoding demo.mp4", "clips") as progress:
        progress(0, 16)
        progress(8, 16)
        console.file.flush()
    text = stream.getvalue()
    assert "encoding demo.mp4" in text
    assert re.search(r"8/16 clips \d:\d\d:\d\d elapsed, (-:--:--|\d:\d\d:\d\d) left", text)


def test_sparkline_and_slugs():
    assert slugify("A person -- drinks from a CUP!") == "a-person-drinks-from-a-cup"
    assert slugify("???") == "query" and len(slugify("word " * 30)) <= 40
    assert search.sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == search.SPARK
    assert search.sparkline([3.0, 3.0]) == "▁▁" and search.sparkline([]) == ""
    assert len(search.sparkline(np.arange(500.0), width=60)) == 60


@pytest.mark.parametrize(
    "args,message",
    [
        (["--encoder", "offline", "--encoder", "motion"], "one --encoder"),
        (["--encoder", "motion"], "image-text space"),
    ],
)
def test_bad_arguments_are_clear_errors(args, message, capsys):
    with pytest.raises(MomentkitError, match=message):
        search.run(_parse([str(DEMO), "q", *args]))
    assert main(["search", str(DEMO), "q", *args]) == 2  # the CLI: one line, exit status 2
    assert "momentkit search: error: " in capsys.readouterr().err


@needs_offline
def test_checkpoint_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """A (random, tiny) model trained on `momentkit extract --encoder offline` features: the
    encoder is inferred from the stream names; the output is a table per query."""
    from test_predictor import make_run

    run = make_run(
        tmp_path,
        video=("effnet", "imagenet_probs"),
        text="minilm_text",
        video_dim=1280 + 1000 + 2,
        text_dim=384,
        max_v_len=10,  # shorter than the video's 16 clips: sliding windows
    )
    assert main(["search", str(DEMO), *QUERIES, "--checkpoint", str(run), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "16 clips of 2 s; moment_detr on effnet + imagenet_probs" in out
    for q in QUERIES:
        assert q in out
    assert out.count("start (s)") == 2 and out.count("relevance") == 2
    ranks = [line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│ ")]
    # two tables of 1..3 ranked moments (fewer when NMS merges a random model's duplicates)
    assert ranks.count("1") == 2 and len(ranks) <= 6


# ----------------------------------------------------------------------------- momentkit query
@pytest.fixture()
def colour_db(tmp_path, monkeypatch) -> Path:
    """A library of the coloured test videos of test_library (a, b, sub/c), whose encoder is
    returned by build_encoder."""
    from test_library import SPEC, ColourEncoder, index, make_folder

    import momentkit.encoders

    real = momentkit.encoders.build_encoder
    monkeypatch.setattr(
        momentkit.encoders,
        "build_encoder",
        lambda spec, **kw: ColourEncoder() if spec == SPEC else real(spec, **kw),
    )
    make_folder(tmp_path / "videos")
    index(tmp_path / "lib.db", tmp_path / "videos")
    return tmp_path / "lib.db"


def run_query(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    query_cmd.add_arguments(parser)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = query_cmd.run(parser.parse_args(argv))
    return status, out.getvalue()


def test_query_several_queries_exports_clips_plots_and_footer(colour_db, tmp_path):
    queries = tmp_path / "q.txt"
    queries.write_text("green\n")
    clips, plots = tmp_path / "clips", tmp_path / "plots"
    status, out = run_query([
        "red", "--queries-file", str(queries), "--db", str(colour_db), "--top", "2",
        "--export", f"csv:{tmp_path / 'm.csv'}", "--export", f"qvh:{tmp_path / 'p.jsonl'}",
        "--export", f"vtt:{tmp_path / 'vtt' / '{video}.vtt'}", "--export-clips", str(clips),
        "--plot", str(plots / "{query}.png"),
    ])  # fmt: skip
    assert status == 0
    text = " ".join(out.split())
    assert "“red”" in text and "“green”" in text and text.count("relevance") >= 2
    with (tmp_path / "m.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["qid"], r["rank"]) for r in rows][:1] == [("1", "1")]
    best = {r["qid"]: r for r in rows if r["rank"] == "1"}
    assert best["1"]["vid"] == "a" and best["2"]["vid"] == "b"  # red is in a, green is b
    assert (float(best["1"]["start"]), float(best["1"]["end"])) == (6.0, 10.0)
    # the clip covers the moment, frame-accurately (5 fps: 0.2 s frames)
    clip = Path(best["1"]["clip"])
    assert clip.parent == clips and 5.8 < float(best["1"]["clip_start"]) <= 6.0
    assert frame_times(clip)[0] == 0.0 and len(frame_times(clip)) == 20
    preds = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len({p["qid"] for p in preds}) == len(preds)  # "<vid>:<qid>" per candidate video
    assert sorted(p.name for p in plots.iterdir()) == ["q1-red.png", "q2-green.png"]
    assert (tmp_path / "vtt" / "a.vtt").read_text().startswith("WEBVTT")
    # the footer accounts for every stage and the total
    footer = text[text.rindex("start-up") if "start-up" in text else text.rindex("open library") :]
    for stage in ("open library", "embed", "coarse", "localise", "output", "other", "total"):
        assert stage in footer


def test_query_json_lines_keep_full_precision(colour_db):
    status, out = run_query(["red", "blue", "--db", str(colour_db), "--top", "2", "--json"])
    assert status == 0
    red, blue = (json.loads(line) for line in out.splitlines())
    assert (red["qid"], red["query"], blue["qid"]) == (1, "red", 2)
    assert red["moments"][0]["name"] == "a.mp4" and "relevance" in red["moments"][0]
    assert set(red["timings"]) >= {"embed", "coarse", "localise", "total"}


def test_query_timing_footer_adds_up():
    footer = query_cmd.timing_footer(0.5, {"open library": 0.01, "embed": 0.2}, 1.0)
    assert footer == (
        "start-up 500 ms · open library 10 ms · embed 200 ms · other 790 ms · total 1.50 s"
    )
    assert "not measured" in query_cmd.timing_footer(None, {"embed": 0.2}, 0.3)
