"""momentkit.export: every format written from hand-made answers and read back by an independent
reader (momentkit evaluate / load_predictions, the csv module, FFmpeg's srt, webvtt and
ffmetadata demuxers through PyAV), names and paths built from data, atomic writes."""

from __future__ import annotations

import csv
import json
import shutil
from fractions import Fraction
from pathlib import Path

import pytest

from momentkit.cli.main import main
from momentkit.data.records import load_predictions
from momentkit.export import (
    FORMATS,
    Answer,
    ExportError,
    ExportMoment,
    ExportTarget,
    export_clips,
    unique_slugs,
    video_ids,
)
from momentkit.export.chapters import youtube_text
from momentkit.export.jsonfmt import qvh_rows
from momentkit.export.table import rows

DEMO = Path(__file__).resolve().parents[1] / "momentkit" / "examples" / "charades_demo.mp4"
TINY = 1.23456789012345e-4  # zero-shot scores are this small: printed digits must all survive


def answer(qid, query, vid, moments, video=None, **kw) -> Answer:
    return Answer(
        qid=qid,
        query=query,
        video=video or f"/videos/{vid}.mp4",
        vid=vid,
        duration=30.0,
        clip_len=2.0,
        saliency=[0.1 * i + TINY for i in range(15)],
        moments=[ExportMoment(rank, *m) for rank, m in enumerate(moments, start=1)],
        **kw,
    )


@pytest.fixture()
def answers() -> list[Answer]:
    return [
        answer(1, "a person opens the door", "kitchen", [(0.0, 6.0, 0.9, 0.97), (20, 24, TINY)]),
        answer(2, 'he says "hi", then <b>waves</b> & leaves --> out', "kitchen", [(12.5, 20, 0.8)]),
    ]


# ------------------------------------------------------------------------------ qvh and json
def test_qvh_jsonl_is_read_and_scored_by_momentkit_evaluate(tmp_path, answers, capsys):
    pred = tmp_path / "preds.jsonl"
    ExportTarget.parse(f"qvh:{pred}").write(answers, {})
    loaded = load_predictions(pred)
    assert [p.qid for p in loaded] == [1, 2] and [p.vid for p in loaded] == ["kitchen"] * 2
    assert loaded[0].pred_relevant_windows == [[0.0, 6.0, 0.9], [20.0, 24.0, TINY]]
    assert loaded[0].pred_saliency_scores[0] == TINY  # full precision
    gt = tmp_path / "gt.jsonl"
    gt.write_text(
        json.dumps({"qid": 1, "query": "q1", "vid": "kitchen", "duration": 30.0,
                    "relevant_windows": [[0, 4]]}) + "\n"
        + json.dumps({"qid": 2, "query": "q2", "vid": "kitchen", "duration": 30.0,
                      "relevant_windows": [[10, 20]]}) + "\n"
    )  # fmt: skip
    metrics = tmp_path / "metrics.json"
    assert main(["evaluate", str(pred), str(gt), "--out", str(metrics)]) == 0
    brief = json.loads(metrics.read_text())["brief"]
    # top-1 IoU: 4/6 for the door, 7.5/10 for the wave
    assert brief["MR-R1@0.5"] == 100.0 and brief["MR-R1@0.7"] == 50.0
    assert brief["MR-mIoU"] == pytest.approx((4 / 6 + 0.75) / 2 * 100, abs=0.01)


def test_qvh_qids_stay_unique_when_a_query_is_asked_of_several_videos(answers):
    other = answer(1, "a person opens the door", "garage", [(1.0, 2.0, 0.5)])
    rows_ = qvh_rows([*answers, other])
    assert [r["qid"] for r in rows_] == ["kitchen:1", "kitchen:2", "garage:1"]


def test_json_target_writes_the_document(tmp_path, answers):
    path = tmp_path / "out.json"
    (written,) = ExportTarget.parse(str(path)).write(answers, {"results": [1, TINY]})
    assert written == path and json.loads(path.read_text()) == {"results": [1, TINY]}


# ------------------------------------------------------------------------------------- csv
def test_csv_reads_back_exactly(tmp_path, answers):
    path = tmp_path / "m.csv"
    ExportTarget.parse(f"csv:{path}").write(answers, {})
    with path.open(newline="", encoding="utf-8") as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == [
        "qid", "query", "video", "vid", "rank", "start", "end", "score", "relevance", "clip",
        "clip_start", "clip_end",
    ]  # fmt: skip
    assert len(got) == 3
    assert got[1]["score"] and float(got[1]["score"]) == TINY  # repr: every digit kept
    assert got[1]["relevance"] == "" and got[0]["relevance"] == "0.97"
    assert got[2]["query"] == answers[1].query  # quotes, commas and brackets survive
    assert float(got[2]["start"]) == 12.5 and got[2]["clip"] == ""


def test_csv_rows_follow_the_rank_across_videos_for_library_answers():
    # a library query: its global ranks are spread over the candidate videos
    a = answer(1, "q", "a", [])
    a.moments = [ExportMoment(2, 0, 1, 0.5), ExportMoment(3, 2, 3, 0.4)]
    b = answer(1, "q", "b", [])
    b.moments = [ExportMoment(1, 5, 6, 0.9, extra={"moment_score": TINY})]
    assert [(r["vid"], r["rank"]) for r in rows([a, b])] == [("b", 1), ("a", 2), ("a", 3)]
    # a search of several videos: each video ranks its own moments, kept video by video
    c = answer(1, "q", "c", [(0, 1, 0.5), (2, 3, 0.4)])
    d = answer(1, "q", "d", [(5, 6, 0.9)])
    assert [(r["vid"], r["rank"]) for r in rows([c, d])] == [("c", 1), ("c", 2), ("d", 1)]


# ------------------------------------------------------------------------ subtitles, chapters
def subtitle_cues(path: Path) -> list[tuple[Fraction, Fraction, str]]:
    """(start, end, text) of every cue, as FFmpeg's demuxer reads the file."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.subtitles[0]
        return [
            (p.pts * p.time_base, (p.pts + p.duration) * p.time_base, bytes(p).decode())
            for p in container.demux(stream)
            if p.pts is not None
        ]


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_subtitles_are_read_back_by_ffmpeg(tmp_path, answers, fmt):
    path = tmp_path / f"subs.{fmt}"
    ExportTarget.parse(f"{fmt}:{path}").write(answers, {})
    cues = subtitle_cues(path)
    assert [(float(s), float(e)) for s, e, _ in cues] == [(0.0, 6.0), (12.5, 20.0), (20.0, 24.0)]
    first, wave, tiny = (text.splitlines() for _, _, text in cues)
    assert first == ["a person opens the door", "#1 · relevance 0.97"]
    assert tiny == ["a person opens the door", "#2 · score 0.000123"]
    if fmt == "vtt":  # escaped as character references, which FFmpeg's decoder turns back
        assert wave[0] == 'he says "hi", then &lt;b&gt;waves&lt;/b&gt; &amp; leaves --&gt; out'
        decoded = _decoded_vtt_text(path)
        assert 'he says "hi", then <b>waves</b> & leaves --> out' in decoded
    else:  # SubRip has no escapes: only the cue separator is defused
        assert wave[0] == 'he says "hi", then <b>waves</b> & leaves -> out'
    assert wave[1] == "#1 · score 0.8"


def _decoded_vtt_text(path: Path) -> str:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.subtitles[0]
        out = []
        for packet in container.demux(stream):
            for sub in packet.decode():
                out.append(sub.ass.decode())
        return "\n".join(out)


def test_a_query_with_line_breaks_stays_one_cue(tmp_path):
    path = tmp_path / "s.srt"
    ExportTarget.parse(str(path)).write([answer(1, "two\n\nlines", "v", [(1, 2, 0.5)])], {})
    ((start, end, text),) = subtitle_cues(path)
    assert (start, end) == (1, 2) and text.splitlines()[0] == "two lines"


def test_ffmetadata_chapters_are_read_back_by_ffmpeg(tmp_path, answers):
    import av

    path = tmp_path / "chapters.ffmeta"
    answers[0].query = "a = b; c # d \\ e"  # every character FFMETADATA escapes
    ExportTarget.parse(f"ffmetadata:{path}").write(answers, {})
    with av.open(str(path), format="ffmetadata") as container:
        chapters = container.chapters()
    assert [(c["start"], c["end"]) for c in chapters] == [(0, 6000), (12500, 20000), (20000, 24000)]
    assert {c["time_base"] for c in chapters} == {Fraction(1, 1000)}
    assert chapters[0]["metadata"]["title"] == "#1 a = b; c # d \\ e (relevance 0.97)"


def test_youtube_chapter_lines():
    late = answer(1, "q", "v", [(75.9, 80, 0.5, 0.6), (3725.2, 3730, 0.4, None)])
    assert youtube_text([late]) == (
        "0:00 Start\n1:15 #1 q (relevance 0.60)\n1:02:05 #2 q (score 0.4)\n"
    )
    early = answer(1, "q", "v", [(0.4, 3, 0.5, 0.6)])
    assert youtube_text([early]).splitlines() == ["0:00 #1 q (relevance 0.60)"]


# ----------------------------------------------------------------------- targets and paths
def test_targets_parse_and_fail_clearly():
    assert ExportTarget.parse("csv:out/m.csv").format is FORMATS["csv"]
    assert ExportTarget.parse("preds.jsonl").format is FORMATS["qvh"]
    assert ExportTarget.parse("vtt:a:b.vtt").path == "a:b.vtt"
    for bad, message in [
        ("xls:m.xls", "FORMAT one of json, qvh, csv"),
        ("moments.txt", "FORMAT:PATH"),
        ("csv:", "no path after 'csv:'"),
    ]:
        with pytest.raises(ExportError, match=message):
            ExportTarget.parse(bad)
    with pytest.raises(ExportError, match=r"put \{video\} in the file name, e.g. --export srt:"):
        ExportTarget.parse("srt:subs.srt").check(2)
    ExportTarget.parse("srt:subs.srt").check(1)
    with pytest.raises(ExportError, match="may only appear in the file name"):
        ExportTarget.parse("srt:{video}/subs.srt").check(2)
    with pytest.raises(ExportError, match="drop \\{video\\}"):
        ExportTarget.parse("csv:{video}.csv").check(2)


def test_per_video_files_never_leave_their_folder(tmp_path):
    out = tmp_path / "out"
    hostile = [
        answer(1, "q", "../../evil", [(1, 2, 0.5)]),
        answer(1, "q", "..", [(1, 2, 0.5)]),
        answer(1, "q", "Kitchen", [(1, 2, 0.5)]),
        answer(1, "q", "kitchen", [(1, 2, 0.5)]),
    ]
    written = ExportTarget.parse(f"srt:{out}/{{video}}.srt").write(hostile, {})
    assert [p.name for p in written] == ["evil.srt", "video.srt", "kitchen.srt", "kitchen-2.srt"]
    names = sorted(p.name for p in tmp_path.rglob("*"))
    assert names == sorted(["out", *(p.name for p in written)])


def test_video_ids_and_slugs(tmp_path):
    assert video_ids([Path("x/a.mp4"), Path("y/b.mkv")]) == ["a", "b"]
    (tmp_path / "cam1").mkdir()
    (tmp_path / "cam2").mkdir()
    same = [tmp_path / "cam1" / "GH01.MP4", tmp_path / "cam2" / "GH01.MP4"]
    assert video_ids(same) == ["cam1/GH01", "cam2/GH01"]
    assert unique_slugs(["cam1/GH01", "cam2/GH01", "A b", "a-b"]) == {
        "cam1/GH01": "cam1-gh01", "cam2/GH01": "cam2-gh01", "A b": "a-b", "a-b": "a-b-2",
    }  # fmt: skip


def test_writes_are_atomic(tmp_path, answers, monkeypatch):
    path = tmp_path / "m.csv"
    path.write_text("old\n")

    def broken(self, rows):
        raise RuntimeError("disk full")

    monkeypatch.setattr(csv.DictWriter, "writerows", broken)
    with pytest.raises(RuntimeError):
        ExportTarget.parse(f"csv:{path}").write(answers, {})
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["m.csv"]


# -------------------------------------------------------------------------------------- clips
def test_clip_names_from_hostile_data_stay_in_the_folder(tmp_path):
    pytest.importorskip("av")
    video = tmp_path / "src" / "..mp4"  # a file name that is only dots and an extension
    video.parent.mkdir()
    shutil.copy(DEMO, video)
    hostile = answer("../../x", "../../../etc/passwd", "..", [(1.0, 2.0, 0.5)], video=str(video))
    assert export_clips([hostile], tmp_path / "clips", fast=True) == 1
    clip = hostile.moments[0].clip
    assert clip is not None and clip.path.parent == tmp_path / "clips"
    assert clip.path.name == f"video_qx_etc-passwd_1_0.00-{clip.end:.2f}.mp4"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["..mp4", clip.path.name]
