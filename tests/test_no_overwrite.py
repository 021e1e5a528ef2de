"""An output file that is one of the command's inputs is refused before any work, and the input
is left as it was (``momentkit.utils.paths.refuse_overwriting_inputs``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from momentkit.cli.main import main
from momentkit.data.records import MomentAnnotation, save_annotations
from momentkit.utils.errors import OutputError
from momentkit.utils.paths import refuse_overwriting_inputs


def error_line(capsys: pytest.CaptureFixture) -> str:
    """The last line a failed command printed, and that it printed no traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


def test_the_same_file_under_any_name_is_refused(tmp_path):
    source = tmp_path / "gt.jsonl"
    source.write_text("x\n")
    (tmp_path / "hard.jsonl").hardlink_to(source)
    (tmp_path / "soft.jsonl").symlink_to(source)
    (tmp_path / "sub").mkdir()
    for out in (
        source,
        tmp_path / "sub" / ".." / "gt.jsonl",
        tmp_path / "hard.jsonl",
        tmp_path / "soft.jsonl",
    ):
        with pytest.raises(OutputError, match=r"--out .* is the input GT\.jsonl .*another file"):
            refuse_overwriting_inputs([("--out", out)], [("GT.jsonl", source)])
    # another file, a folder input, options not given, an output that does not exist yet
    (tmp_path / "other.jsonl").write_text("y\n")
    refuse_overwriting_inputs(
        [("--out", tmp_path / "other.jsonl"), ("--plot", None), ("--out2", tmp_path / "new")],
        [("GT.jsonl", source), ("DIR", tmp_path / "sub"), ("--x", None)],
    )
    assert source.read_text() == "x\n"


def _annotations(path: Path) -> Path:
    save_annotations(path, [MomentAnnotation(1, "a person sits", "v0", 10.0, [[0, 4]])])
    return path


def test_evaluate_refuses_to_write_its_metrics_over_an_input(tmp_path, capsys):
    gt = _annotations(tmp_path / "gt.jsonl")
    pred = tmp_path / "pred.jsonl"
    pred.write_text(json.dumps({"qid": 1, "pred_relevant_windows": [[0, 4, 1.0]]}) + "\n")
    before = {p: p.read_bytes() for p in (gt, pred)}
    for out, named in ((gt, "GT.jsonl"), (pred, "PRED.jsonl")):
        assert main(["evaluate", str(pred), str(gt), "--out", str(out)]) == 2
        assert f"--out {out} is the input {named}" in error_line(capsys)
    assert {p: p.read_bytes() for p in before} == before
    assert main(["evaluate", str(pred), str(gt), "--out", str(tmp_path / "m.json")]) == 0


def test_predict_refuses_to_write_predictions_over_its_annotations(tmp_path, capsys):
    """Refused before the checkpoint is even opened (a run folder that does not exist)."""
    queries = _annotations(tmp_path / "val.jsonl")
    before = queries.read_bytes()
    args = [
        "predict", "--checkpoint", str(tmp_path / "no-run"), "--annotations", str(queries),
        "--video-features", str(tmp_path / "clip"), "--text-features", str(tmp_path / "text"),
        "--out", str(queries),
    ]  # fmt: skip
    assert main(args) == 2
    assert f"--out {queries} is the input --annotations" in error_line(capsys)
    assert queries.read_bytes() == before


def test_pseudo_label_refuses_to_write_over_its_captions(tmp_path, capsys):
    captions = tmp_path / "captions.jsonl"
    row = {"qid": 1, "vid": "v0", "caption": "a person", "start": 0, "end": 4, "duration": 10}
    captions.write_text(json.dumps(row) + "\n")
    (tmp_path / "clip").mkdir()
    np.savez(tmp_path / "clip" / "v0.npz", features=np.ones((5, 4), np.float32))
    before = captions.read_bytes()
    args = [
        "pseudo-label", "--captions", str(captions), "--video-features", str(tmp_path / "clip"),
        "--text-encoder", "offline", "--text-out", str(tmp_path / "text"), "--out",
        os.path.relpath(captions),
    ]  # fmt: skip
    assert main(args) == 2
    assert "is the input --captions" in error_line(capsys)
    assert captions.read_bytes() == before and not (tmp_path / "text").exists()
