"""Robust outputs: stale clip temporaries are cleaned up by a rerun, and metrics JSON is standard.

- ``export_clips`` removes the hidden ``.cut.XXXXXXXX<ext>`` files a killed run left in the
  folder (old and unlocked only) and nothing else;
- ``momentkit evaluate --out`` writes ``null`` (not bare ``NaN``) for a length range without
  queries and records the query count of each metric group; normal data is written unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from momentkit.cli.main import main
from momentkit.evaluation import eval_submission, metrics_json
from momentkit.export.clips import export_clips
from momentkit.export.model import Answer, ExportMoment
from momentkit.utils.io import write_jsonl

DEMO = Path(__file__).resolve().parents[1] / "momentkit" / "examples" / "charades_demo.mp4"
HOUR_AGO = time.time() - 3600


# --------------------------------------------------------------------- stale clip temporaries
def _file(path: Path, data: bytes = b"\0" * 48, mtime: float | None = HOUR_AGO) -> Path:
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_rerun_removes_stale_cut_temporaries_and_nothing_else(tmp_path: Path) -> None:
    pytest.importorskip("av")
    video = tmp_path / "src" / "v01.mp4"
    video.parent.mkdir()
    shutil.copy(DEMO, video)
    clips = tmp_path / "clips"
    clips.mkdir()
    stale = [_file(clips / ".cut.ab3_x9z0.mp4"), _file(clips / ".cut.q1w2e3r4.MKV")]
    kept = [
        _file(clips / ".cut.fresh123.mp4", mtime=None),  # may be written by a live run right now
        _file(clips / "v01_q1_sits_1_0.00-2.00.mp4", b"a finished clip"),
        _file(clips / ".cut.notes.txt"),  # not a clip temporary: wrong shape and extension
        _file(clips / ".cut.abcd1234.txt"),  # not a video extension
        _file(clips / ".cut.abcd12345.mp4"),  # not mkstemp's 8 random characters
        _file(clips / ".other.abcd1234.mp4"),
        _file(clips / "notes.txt", b"mine"),
    ]
    folder = clips / ".cut.dir12345.mp4"  # a folder of that name is not a temporary file
    folder.mkdir()
    link = clips / ".cut.link1234.mp4"  # nor is a link (its target stays too)
    link.symlink_to(kept[-1])
    os.utime(link, (HOUR_AGO, HOUR_AGO), follow_symlinks=False)
    before = {p: p.read_bytes() for p in kept}

    answer = Answer(
        qid=1, query="a person sits down", video=str(video), vid="v01", duration=30.7,
        clip_len=2.0, saliency=[], moments=[ExportMoment(1, 1.0, 2.0, 0.5)],
    )  # fmt: skip
    assert export_clips([answer], clips, fast=True) == 1

    assert not any(p.exists() for p in stale)
    assert {p: p.read_bytes() for p in kept} == before
    assert folder.is_dir() and link.is_symlink()
    clip = answer.moments[0].clip
    assert clip is not None and clip.path.is_file()
    # the export itself leaves no temporary behind
    leftovers = {p.name for p in clips.iterdir() if p.name.startswith(".cut.")}
    assert leftovers == {p.name for p in kept if p.name.startswith(".cut.")} | {
        folder.name,
        link.name,
    }


def test_a_temporary_locked_by_a_live_writer_is_kept_however_old(tmp_path: Path) -> None:
    pytest.importorskip("fcntl")
    from momentkit.video.cut import TEMP_PREFIX, _hold_lock, remove_stale_temporaries

    fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".mp4", dir=tmp_path)
    lock = _hold_lock(fd)  # what a cut does while it writes the clip
    os.utime(name, (HOUR_AGO, HOUR_AGO))
    try:
        assert remove_stale_temporaries(tmp_path) == []
        assert Path(name).exists()
    finally:
        assert lock is not None
        os.close(lock)  # the writer died: the system drops its lock
    assert remove_stale_temporaries(tmp_path) == [Path(name)]
    assert not Path(name).exists()
    assert remove_stale_temporaries(tmp_path / "missing") == []


# ------------------------------------------------------------------------- standard metrics JSON
def _gt(qid: int, windows: list, duration: float = 150) -> dict:
    return {"qid": qid, "query": "q", "vid": f"v{qid}", "duration": duration,
            "relevant_windows": windows}  # fmt: skip


def _pred(qid: int, windows: list) -> dict:
    return {"qid": qid, "pred_relevant_windows": windows}


def _strict_loads(text: str) -> object:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_no_long_queries_give_null_and_a_zero_count(tmp_path: Path, capsys) -> None:
    gt, pred, out = tmp_path / "gt.jsonl", tmp_path / "pred.jsonl", tmp_path / "mq.json"
    write_jsonl(gt, [_gt(1, [[0, 5]], 30), _gt(2, [[5, 25]], 30), _gt(3, [[2, 8]], 30)])
    write_jsonl(pred, [_pred(1, [[0, 5, 0.9]]), _pred(2, [[5, 25, 0.8]]), _pred(3, [[2, 8, 1]])])
    argv = ["evaluate", str(pred), str(gt), "--dataset", "qvhighlights", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "n/a" in printed and "no queries in: long" in printed

    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    metrics = _strict_loads(text)
    assert metrics["brief"]["MR-long-mAP"] is None
    assert set(metrics["long"]["MR-mAP"].values()) == {None}
    assert set(metrics["long"]["MR-R1"].values()) == {None}
    assert metrics["num_queries"] == {"short": 2, "middle": 1, "long": 0, "full": 3}
    # the defined metrics are the values the evaluator computes, untouched
    expected = eval_submission(_read(pred), _read(gt))
    assert metrics["brief"]["MR-short-mAP"] == expected["brief"]["MR-short-mAP"] == 100.0
    assert metrics["full"] == expected["full"] and metrics["middle"] == expected["middle"]
    assert list(metrics)[: len(expected)] == list(expected)


def test_charades_sta_scored_as_qvhighlights_is_standard_json(
    shared_data: Path, tmp_path: Path
) -> None:
    """The reported case: Charades-STA (no window over 30 s) with ``--dataset qvhighlights``."""
    gt = shared_data / "charades_sta" / "charades_sta_test.jsonl"
    rows = _read(gt)[:200]
    part, pred, out = tmp_path / "gt.jsonl", tmp_path / "pred.jsonl", tmp_path / "mq.json"
    write_jsonl(part, rows)
    write_jsonl(pred, [_pred(r["qid"], [[*r["relevant_windows"][0], 1.0]]) for r in rows])
    argv = ["evaluate", str(pred), str(part), "--dataset", "qvhighlights", "--out", str(out)]
    assert main(argv) == 0
    metrics = _strict_loads(out.read_text())
    assert metrics["brief"]["MR-long-mAP"] is None and metrics["num_queries"]["long"] == 0
    assert metrics["num_queries"]["full"] == len(rows)
    assert metrics["brief"]["MR-full-mAP"] == 100.0


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_normal_data_is_written_unchanged(tmp_path: Path) -> None:
    gts = [_gt(1, [[0, 10]]), _gt(2, [[20, 50]]), _gt(3, [[0, 140]])]
    preds = [_pred(1, [[0, 10, 0.9]]), _pred(2, [[0, 31, 0.8]]), _pred(3, [[0, 160, 1.0]])]
    gt, pred, out = tmp_path / "gt.jsonl", tmp_path / "pred.jsonl", tmp_path / "m.json"
    write_jsonl(gt, gts)
    write_jsonl(pred, preds)
    expected = eval_submission(preds, gts)
    assert metrics_json(expected, {"short": 1, "middle": 1, "long": 1, "full": 3}) == expected
    argv = ["evaluate", str(pred), str(gt), "--dataset", "qvhighlights", "--out", str(out)]
    assert main(argv) == 0
    text = out.read_text()
    assert text == json.dumps(expected, indent=4) + "\n"  # byte for byte what was written before
    assert "num_queries" not in _strict_loads(text)
