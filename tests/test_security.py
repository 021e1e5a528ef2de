"""The attacks of the hardening review (issue 32), each kept as a test.

A file written outside its folder, a delete of what a command did not make, a symbolic link or
a device replaced by a file, a resource bomb (zip bomb, huge array header, huge duration,
recursive YAML anchor, alias bomb, huge model), crafted checkpoints, silent wrong results
(streams in the wrong order, NaN weights, a diverging run), concurrent indexers, a read-only
library. Each test fails on the code before the fix. Bad command lines as real processes:
``scripts/reliability_probe.py``.
"""

from __future__ import annotations

import io
import json
import os
import re
import sqlite3
import stat
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from momentkit.cli.main import main
from momentkit.data.records import (
    MomentAnnotation,
    check_clip_ids,
    load_annotations,
    save_annotations,
)
from momentkit.features import NpzFeatureStore, PackedFeatureStore, open_feature_store
from momentkit.features.npz import read_npz
from momentkit.features.packed import pack_features
from momentkit.utils.errors import FeatureError, FormatError, MomentkitError, OutputError
from momentkit.utils.io import atomic_write_text, iter_jsonl, write_json
from momentkit.utils.paths import UnsafePathError, safe_child
from momentkit.video.write import write_video

pytestmark = pytest.mark.usefixtures("one_thread")


def error_line(capsys: pytest.CaptureFixture) -> str:
    """The one line a failed command printed (and that it printed no traceback)."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


def npz_dir(root: Path, n: int = 3, dim: int = 4, prefix: str = "v") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        np.savez(root / f"{prefix}{i}.npz", features=np.ones((5, dim), np.float32) * i)
    return root


# ------------------------------------------------------------------------- 1. paths from data
@pytest.mark.parametrize(
    "name",
    [
        "/../../../../tmp/x/ESCAPED",
        "../outside.npz",
        "..",
        ".",
        "",
        "a/b.npz",
        "a\\b.npz",
        "/etc/passwd",
        "qid\x00.npz",
        "tab\there.npz",
        "x" * 300,
    ],
)
def test_safe_child_refuses_names_that_leave_the_folder(tmp_path, name):
    with pytest.raises(UnsafePathError, match=r"Q.jsonl:3: field 'qid': refused as a file name"):
        safe_child(tmp_path / "out", name, "qid", source="Q.jsonl", line=3)


def test_safe_child_refuses_a_link_that_points_outside(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "qid1.npz").symlink_to(tmp_path / "elsewhere.npz")
    with pytest.raises(UnsafePathError, match="outside"):
        safe_child(out, "qid1.npz", "qid")
    assert safe_child(out, "qid2.npz", "qid") == out / "qid2.npz"
    assert safe_child(out, "v_1.5-x.npz", "vid") == out / "v_1.5-x.npz"


def test_pseudo_label_text_out_refuses_a_qid_that_escapes(tmp_path, capsys):
    """The reported attack: ``"qid": "/../../../..../tmp/x/ESCAPED"`` wrote outside
    ``--text-out``."""
    escaped = tmp_path / "x" / "ESCAPED"
    captions = tmp_path / "captions.jsonl"
    qid = "/.." * 20 + str(escaped)
    captions.write_text(
        json.dumps(
            {"qid": qid, "vid": "v0", "caption": "a person", "start": 0, "end": 4, "duration": 10}
        )
        + "\n"
    )
    args = [
        "pseudo-label", "--captions", str(captions), "--video-features",
        str(npz_dir(tmp_path / "clip")), "--text-encoder", "offline", "--text-out",
        str(tmp_path / "text"), "--out", str(tmp_path / "pl.jsonl"),
    ]  # fmt: skip
    assert main(args) == 2
    line = error_line(capsys)
    assert "captions.jsonl:1: field 'qid': refused as a file name" in line
    assert not escaped.with_suffix(".npz").exists() and not escaped.parent.exists()
    assert not (tmp_path / "text").exists()  # nothing written before the check


def test_extract_refuses_a_qid_that_escapes(tmp_path, capsys):
    """The reported attack on ``momentkit extract VIDEO --out OUT --queries Q.jsonl``: the qid
    is refused with the file, line and field before any feature file is written."""
    from momentkit.extraction.pipeline import feature_file, read_queries
    from momentkit.utils.errors import FormatError

    escaped = tmp_path / "x" / "ESCAPED"
    queries = tmp_path / "q.jsonl"
    queries.write_text(
        json.dumps({"qid": 1, "query": "a person"}) + "\n"
        + json.dumps({"qid": "/.." * 20 + str(escaped), "query": "a person"}) + "\n"
    )  # fmt: skip
    with pytest.raises(FormatError, match=r"q\.jsonl:2: field 'qid': .*cannot name a feature"):
        read_queries(queries)
    with pytest.raises(UnsafePathError):
        feature_file(tmp_path / "out", "clip_text", "qid/../../x")
    video = tmp_path / "v.mp4"
    write_video(video, np.zeros((4, 16, 16, 3), np.uint8), fps=2)
    args = ["extract", str(video), "--out", str(tmp_path / "out"), "--queries", str(queries)]
    assert main([*args, "--encoder", "motion"]) == 2
    assert "q.jsonl:2: field 'qid'" in error_line(capsys)
    assert not escaped.with_suffix(".npz").exists() and not escaped.parent.exists()


def test_feature_store_never_reads_outside_its_folder(tmp_path):
    store = NpzFeatureStore(npz_dir(tmp_path / "v"))
    np.savez(tmp_path / "secret.npz", features=np.ones((2, 4), np.float32))
    assert "../secret" not in store
    with pytest.raises(FeatureError, match="cannot name a feature file"):
        store.get("../secret")


# --------------------------------------------------------------- 4. pack deletes only its own
def test_pack_refuses_to_replace_its_source(tmp_path):
    src = npz_dir(tmp_path / "src", n=30)
    with pytest.raises(FeatureError, match="is the source folder itself"):
        pack_features(open_feature_store(src), src, overwrite=True, progress=False)
    assert len(list(src.glob("*.npz"))) == 30
    with pytest.raises(FeatureError, match="inside the source"):
        pack_features(open_feature_store(src), src / "packed", progress=False)
    with pytest.raises(FeatureError, match="a folder holding the source"):
        pack_features(open_feature_store(src), tmp_path, overwrite=True, progress=False)
    assert len(list(src.glob("*.npz"))) == 30


def test_pack_overwrite_deletes_only_a_packed_store(tmp_path, capsys):
    src = npz_dir(tmp_path / "src")
    other = tmp_path / "some" / "dir"
    other.mkdir(parents=True)
    (other / "important.txt").write_text("keep me")
    assert main(["pack", str(src), str(other), "--overwrite", "--no-progress"]) == 2
    assert "not a packed feature store" in error_line(capsys)
    assert (other / "important.txt").read_text() == "keep me"
    # a real store is replaced, but not once someone put a file of their own inside it
    out = tmp_path / "packed"
    pack_features(open_feature_store(src), out, progress=False)
    pack_features(open_feature_store(src), out, overwrite=True, progress=False)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FeatureError, match=r"holds files that are not part .*notes.txt"):
        pack_features(open_feature_store(src), out, overwrite=True, progress=False)
    assert (out / "notes.txt").exists() and PackedFeatureStore(out).rows == 15
    file_out = tmp_path / "a_file"
    file_out.write_text("x")
    with pytest.raises(FeatureError, match="it is a file"):
        pack_features(open_feature_store(src), file_out, overwrite=True, progress=False)
    assert file_out.read_text() == "x"


# -------------------------------------------------------------- 5. outputs: links and devices
def test_a_symlink_output_is_written_through(tmp_path):
    target = tmp_path / "real" / "metrics.json"
    target.parent.mkdir()
    target.write_text("old")
    os.chmod(target, 0o640)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_json(link, {"a": 1})
    assert link.is_symlink() and json.loads(target.read_text()) == {"a": 1}
    assert (target.stat().st_mode & 0o777) == 0o640  # the replaced file's permissions kept
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]  # no temporary left


def _full_device(tmp_path: Path) -> Path:
    """A device node like ``/dev/full`` (char 1:7): a private one where this process may
    create it (so the test harms nothing even against code that would replace it), else the
    system's (which an unprivileged process cannot replace)."""
    node = tmp_path / "full"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
        return node
    except (PermissionError, OSError):
        if not Path("/dev/full").exists():
            pytest.skip("no /dev/full and no permission to create a device node")
        return Path("/dev/full")


def test_evaluate_out_dev_full_is_refused_not_replaced(tmp_path, capsys):
    device = _full_device(tmp_path)
    gt = tmp_path / "gt.jsonl"
    save_annotations(gt, [MomentAnnotation(1, "q", "v", 10.0, [[0, 4]])])
    pred = tmp_path / "pred.jsonl"
    pred.write_text(json.dumps({"qid": 1, "pred_relevant_windows": [[0, 4, 1.0]]}) + "\n")
    assert main(["evaluate", str(pred), str(gt), "--out", str(device)]) == 2
    assert f"{device}: is a character device, not a regular file" in error_line(capsys)
    assert device.is_char_device()


def test_outputs_that_are_not_regular_files_are_refused(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for path, problem in (
        (fifo, "is a named pipe"),
        (folder, "is a folder"),
        (blocker / "sub.json", "A part of the path is a file"),
    ):
        with pytest.raises(OutputError, match=problem):
            atomic_write_text(path, "data")
    assert fifo.is_fifo() and folder.is_dir() and blocker.read_text() == "x"
    assert isinstance(OutputError("x"), OSError | MomentkitError)


def test_cli_turns_os_and_unicode_errors_into_one_line(tmp_path, capsys, monkeypatch):
    import momentkit.cli.evaluate as evaluate

    def raise_permission(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x.json"))

    monkeypatch.setattr(evaluate, "run", raise_permission)
    assert main(["evaluate", "a", "b"]) == 2
    line = error_line(capsys)
    assert line == (
        f"momentkit evaluate: error: {tmp_path / 'x.json'}: Permission denied. Check its "
        "permissions, or choose another path"
    )


# ------------------------------------------------------------------------ 9. resource bombs
def _npz_with_header(path: Path, shape: tuple[int, ...], payload: int, deflate: bool) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    mode = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", mode) as z:
        with z.open("features.npy", "w", force_zip64=True) as f:
            f.write(header.getvalue())
            chunk = b"\0" * (1 << 22)
            for _ in range(payload // len(chunk)):
                f.write(chunk)
            f.write(b"\0" * (payload % len(chunk)))


def test_zip_bomb_npz_is_refused_before_decompressing(tmp_path):
    """1.2 GiB of zeros deflated to ~1.2 MB: refused from the declared size, in milliseconds."""
    bomb = tmp_path / "bomb.npz"
    _npz_with_header(bomb, (300_000_000, 1), 1_200_000_000, deflate=True)
    assert bomb.stat().st_size < 3_000_000
    start = time.perf_counter()
    with pytest.raises(FeatureError, match=r"bomb.npz: array 'features' declares \d+ MiB"):
        read_npz(bomb, None)
    assert time.perf_counter() - start < 1.0


def test_huge_npy_header_is_refused_before_allocating(tmp_path):
    huge = tmp_path / "huge.npz"
    _npz_with_header(huge, (10**9, 230_000), 64, deflate=False)  # declares 858 TiB
    with pytest.raises(FeatureError, match=r"declares shape \(1000000000, 230000\)"):
        read_npz(huge, None)
    liar = tmp_path / "liar.npz"
    _npz_with_header(liar, (200_000_000,), 64, deflate=False)  # 763 MiB declared, 64 B held
    with pytest.raises(FeatureError, match="the archive holds 64 bytes"):
        read_npz(liar, None)
    npy = tmp_path / "raw.npz"  # a plain .npy under an .npz name: never loaded
    with open(npy, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 230_000)}
        )
    with pytest.raises(FeatureError, match="not a zip archive"):
        read_npz(npy, None)


def test_huge_duration_is_refused_with_file_line_and_field(tmp_path):
    gt = tmp_path / "gt.jsonl"
    gt.write_text(
        json.dumps({"qid": 1, "query": "q", "vid": "v", "duration": 10, "relevant_windows": []})
        + "\n"
        + json.dumps({"qid": 2, "query": "q", "vid": "v", "duration": 1e12})
        + "\n"
    )
    with pytest.raises(FormatError, match=r"gt.jsonl:2: field 'duration': .* seconds"):
        load_annotations(gt)


def test_caption_intervals_and_durations_are_bounded(tmp_path):
    """A caption ending at 1e15 s listed 5e14 clip ids before pseudo-labelling it."""
    from momentkit.pretraining.pseudo_label import interval_clips, load_captions

    path = tmp_path / "c.jsonl"
    row = {"vid": "v", "caption": "a dog", "start": 0, "end": 1e15, "duration": 10}
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(FormatError, match=r"c.jsonl:1: field 'end': .* outside the 10.0 s"):
        load_captions(path)
    path.write_text(json.dumps({**row, "end": 5, "duration": 1e12}) + "\n")
    with pytest.raises(FormatError, match=r"c.jsonl:1: field 'duration'"):
        load_captions(path)
    assert interval_clips(0, 1e15, 2.0, 5).tolist() == [0, 1, 2, 3, 4]  # bounded by the video


def test_long_durations_that_would_not_fit_in_memory_are_refused(tmp_path):
    """Each duration is plausible, but 2000 one-week videos in 0.1 s clips would need
    terabytes of dense ground truth: the evaluator says so before allocating."""
    from momentkit.evaluation import QVHighlightsEvaluator

    rows = [
        {"qid": i, "query": "q", "vid": "v", "duration": 600_000.0,
         "relevant_clip_ids": [0], "saliency_scores": [[1]]}
        for i in range(2000)
    ]  # fmt: skip
    evaluator = QVHighlightsEvaluator(rows, clip_len=0.1, gt_path="gt.jsonl")
    evaluator.process([{"qid": i, "pred_saliency_scores": [0.5]} for i in range(2000)])
    with pytest.raises(FormatError, match=r"field 'duration': qid 0: .* needs \d+ GiB"):
        evaluator.evaluate()


@pytest.mark.parametrize("clip_len", [0, -1, float("nan"), float("inf")])
def test_clip_lengths_that_are_not_positive_are_refused(clip_len, capsys, tmp_path):
    from momentkit.evaluation import QVHighlightsEvaluator

    with pytest.raises(FormatError, match="positive number of seconds per clip"):
        QVHighlightsEvaluator([], clip_len=clip_len)
    with pytest.raises(FormatError, match="positive number of seconds per clip"):
        check_clip_ids([], clip_len)
    with pytest.raises(SystemExit) as exit_info:  # a usage error of the CLI
        main(["evaluate", "p.jsonl", "g.jsonl", "--clip-len", str(clip_len)])
    assert exit_info.value.code == 2
    assert "argument --clip-len: must be a finite number > 0" in error_line(capsys)


def test_library_api_refuses_bad_clip_lengths(tmp_path):
    from momentkit.library import Indexer, LibraryStore

    with LibraryStore(tmp_path / "lib.db", create=True) as store:
        for clip_len in (-1, 0, float("nan")):
            with pytest.raises(FormatError, match="clip_len"):
                Indexer(store, "offline", clip_len, lambda: None)
        assert store.clip_len is None  # nothing recorded


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("model: &x\n  name: qd_detr\n  loss: *x\n", "recursive YAML anchor"),
        ("a: &l [*l]\n", "recursive YAML anchor"),
        (
            "a: &a [1,1,1,1,1,1,1,1,1]\n"
            + "".join(
                f"{n}: &{n} [" + ",".join([f"*{p}"] * 9) + "]\n"
                for p, n in zip("abcdefg", "bcdefgh")
            ),
            "aliases expand to more than",
        ),
        ("a: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
    ],
)
def test_yaml_bombs_are_refused(tmp_path, text, problem):
    from momentkit.training.config import ConfigError, load_yaml

    path = tmp_path / "preset.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        load_yaml(path)


def test_recursive_anchor_in_a_set_value_is_refused():
    from momentkit.training.config import ConfigError, build_config

    with pytest.raises(ConfigError, match="field 'model.loss': recursive YAML anchor"):
        build_config("moment_detr", overrides=["model.loss=&x {a: *x}"])


def test_a_huge_model_is_refused_before_anything_is_allocated():
    from momentkit.models import build_model
    from momentkit.training.config import ConfigError, build_config

    with pytest.raises(ConfigError, match="billion parameters .*lower model.hidden_dim"):
        build_config("qd_detr", overrides=["model.hidden_dim=4000000"])
    with pytest.raises(ValueError, match="billion parameters"):
        build_model({"name": "moment_detr", "dim_feedforward": 10**9})


# ------------------------------------------------------------------------ 8. one validation
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"relevant_windows": [[10, 500]]}, "relevant_windows[0]"),
        ({"relevant_windows": [[-10, 5]]}, "relevant_windows[0]"),
        ({"relevant_windows": [[45, 50]]}, "relevant_windows[0]"),
    ],
)
def test_windows_outside_the_video_are_refused_by_every_reader(tmp_path, change, field):
    from momentkit.evaluation import QVHighlightsEvaluator

    row = {"qid": 1, "query": "q", "vid": "v", "duration": 40, **change}
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(row) + "\n")
    where = re.escape(f"a.jsonl:1: field '{field}'")
    with pytest.raises(FormatError, match=rf"{where}.*outside the 40 s video"):
        load_annotations(path)
    with pytest.raises(FormatError, match="outside the 40 s video"):
        QVHighlightsEvaluator([row])
    # a window rounded a little past the end (ActivityNet Captions) is accepted
    row["relevant_windows"] = [[30, 40.01]]
    assert MomentAnnotation.from_dict(row).relevant_windows == [[30, 40.01]]


def test_training_refuses_clip_ids_that_evaluation_refuses(tmp_path):
    from momentkit.data.loader import MomentDataset

    vids, text = npz_dir(tmp_path / "v", 1), npz_dir(tmp_path / "t", 1, prefix="qid")
    path = tmp_path / "train.jsonl"
    row = {"qid": 0, "query": "q", "vid": "v0", "duration": 10, "relevant_windows": [[0, 4]],
           "relevant_clip_ids": [0, 1, 900], "saliency_scores": [[1], [2], [3]]}  # fmt: skip
    path.write_text(json.dumps(row) + "\n")
    annotations = load_annotations(path)
    with pytest.raises(FormatError, match=r"train.jsonl:1: field 'relevant_clip_ids': .* 900"):
        MomentDataset(annotations, [vids], text, clip_len=2.0)
    with pytest.raises(FormatError, match="positive number of seconds"):
        MomentDataset(annotations, [vids], text, clip_len=0.0)


def test_packed_index_offsets_must_be_non_negative_integers(tmp_path):
    src = npz_dir(tmp_path / "src")
    out = tmp_path / "packed"
    pack_features(open_feature_store(src), out, progress=False)
    index = json.loads((out / "index.json").read_text())
    for bad in ([-5, 2], [1.5, 2], [0, True], [0, 10**6], "0,5", [0]):
        changed = {**index, "items": {**index["items"], "v0": bad}}
        (out / "index.json").write_text(json.dumps(changed))
        with pytest.raises(FeatureError, match="field 'items.v0'"):
            PackedFeatureStore(out)
    (out / "index.json").write_bytes(b'{"format": "caf\xe9"}')
    with pytest.raises(FeatureError, match="unreadable index"):
        PackedFeatureStore(out)


# ------------------------------------------------------------------ non-UTF-8 inputs: one line
def test_non_utf8_jsonl_and_yaml_name_file_and_line(tmp_path):
    from momentkit.training.config import ConfigError, load_yaml

    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"qid": 1}\n{"qid": 2, "query": "caf\xe9"}\n')
    with pytest.raises(FormatError, match=r"a.jsonl:2: not UTF-8 text \(byte 0xe9 at column 25"):
        list(iter_jsonl(path))
    yaml_path = tmp_path / "p.yaml"
    yaml_path.write_bytes(b"model:\n  name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"p.yaml:2: not UTF-8"):
        load_yaml(yaml_path)
    with pytest.raises(FormatError, match="is a folder, not a JSON Lines file"):
        list(iter_jsonl(tmp_path))


# -------------------------------------------------------------------- crafted checkpoints
@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    from momentkit.models import build_model

    model = build_model(
        {"name": "moment_detr", "video_dim": 6, "text_dim": 4, "hidden_dim": 8, "nheads": 2,
         "dim_feedforward": 8, "num_queries": 2, "enc_layers": 1, "dec_layers": 1}
    )  # fmt: skip
    return model.save_pretrained(tmp_path / "ckpt")


def _edit_config(ckpt: Path, **values: object) -> None:
    config = json.loads((ckpt / "config.json").read_text())
    config.update(values)
    (ckpt / "config.json").write_text(json.dumps(config))


def test_crafted_checkpoints_give_momentkit_errors_naming_the_file(tiny_checkpoint):
    from momentkit.models import MomentModel

    ckpt = tiny_checkpoint
    weights = (ckpt / "model.safetensors").read_bytes()
    _edit_config(ckpt, dropout=2.0)
    with pytest.raises(FormatError, match=r"config.json: model.dropout must be in \[0, 1\)"):
        MomentModel.from_pretrained(ckpt)
    _edit_config(ckpt, dropout=0.1, hidden_dim=4_000_000)
    with pytest.raises(FormatError, match="config.json: model of about .* billion parameters"):
        MomentModel.from_pretrained(ckpt)
    _edit_config(ckpt, hidden_dim=8)
    for garbage in (b"\xff" * 64, (2**62).to_bytes(8, "little") + b"{}", weights[:100]):
        (ckpt / "model.safetensors").write_bytes(garbage)
        with pytest.raises(FormatError, match="model.safetensors: not a readable safetensors"):
            MomentModel.from_pretrained(ckpt)
    (ckpt / "config.json").write_bytes(b'{"name": "\xe9"}')
    with pytest.raises(FormatError, match="config.json:1: not UTF-8"):
        MomentModel.from_pretrained(ckpt)


def test_nan_weights_are_refused_at_load(tiny_checkpoint):
    from safetensors.torch import load_file, save_file

    from momentkit.models import MomentModel, build_model
    from momentkit.training.checkpoint import load_weights

    path = tiny_checkpoint / "model.safetensors"
    state = load_file(str(path))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(path))
    with pytest.raises(FormatError, match=rf"field '{name}': holds NaN or infinite values"):
        MomentModel.from_pretrained(tiny_checkpoint)
    model = build_model(json.loads((tiny_checkpoint / "config.json").read_text()))
    with pytest.raises(FormatError, match="holds NaN or infinite values"):
        load_weights(model, tiny_checkpoint)


# ----------------------------------------------------------- 6/7. silent wrong results
def _run_with_streams(root: Path) -> tuple[Path, list[MomentAnnotation], list[str], str]:
    """A checkpoint trained (well, saved) on streams ``wide`` (6 channels) then ``narrow``
    (2 channels), as ``momentkit train`` records them."""
    from momentkit.models import build_model
    from momentkit.training.checkpoint import save_checkpoint
    from momentkit.training.config import build_config

    wide, narrow = npz_dir(root / "wide", 2, 6), npz_dir(root / "narrow", 2, 2)
    text = npz_dir(root / "text", 2, 4, prefix="qid")
    cfg = build_config(
        "moment_detr",
        overrides=[
            "model.hidden_dim=8", "model.nheads=2", "model.dim_feedforward=8",
            "model.num_queries=2", "model.enc_layers=1", "model.dec_layers=1",
            "model.video_dim=10", "model.text_dim=4", "trainer.progress=false",
            f"data.video_features=[{wide}, {narrow}]", f"data.text_features={text}",
            "data.dataset=synth",
        ],
    )  # fmt: skip
    model = build_model(cfg.model)
    ckpt = root / "run" / "best"
    save_checkpoint(ckpt, model, model_config=model.config.to_dict(), experiment=cfg.to_dict())
    anns = [MomentAnnotation(i, "q", f"v{i}", 10.0, [[0, 4]]) for i in range(2)]
    return ckpt, anns, [str(wide), str(narrow)], str(text)


def test_predict_refuses_streams_in_another_order(tmp_path):
    from momentkit.training.pipeline import predict

    ckpt, anns, streams, text = _run_with_streams(tmp_path)
    assert len(predict(ckpt, anns, streams, text, device="cpu")) == 2
    with pytest.raises(FeatureError, match=r"another order \(narrow wide\).*wide narrow"):
        predict(ckpt, anns, streams[::-1], text, device="cpu")
    # other folder names, same widths swapped: caught by the widths of the recorded streams
    (tmp_path / "a").symlink_to(streams[1])
    (tmp_path / "b").symlink_to(streams[0])
    with pytest.raises(FeatureError, match=r"\[2, 6\] channels but .* trained on \[6, 2\]"):
        predict(ckpt, anns, [str(tmp_path / "a"), str(tmp_path / "b")], text, device="cpu")


def test_predictions_holding_nan_are_refused(tmp_path):
    from momentkit.data.records import MomentPrediction
    from momentkit.training.pipeline import check_finite_predictions
    from momentkit.training.trainer import TrainingError

    ok = MomentPrediction(1, "q", "v", [[0.0, 2.0, 0.9]], [0.1, 0.2])
    check_finite_predictions([ok], tmp_path)
    bad = MomentPrediction(2, "q", "v", [[float("nan"), 2.0, 0.9]], [0.1])
    with pytest.raises(TrainingError, match="predicts NaN/Inf for query 2"):
        check_finite_predictions([ok, bad], tmp_path)


def _poison_after_each_step(trainer, value: float, from_step: int) -> None:
    """Make ``v.weight[0, 0]`` ``value`` after every optimiser step from global step
    ``from_step`` on (a diverging run)."""
    real_step = trainer.optimizer.step

    def step(*args, **kwargs):
        real_step(*args, **kwargs)
        if trainer.state.global_step + 1 >= from_step:
            with torch.no_grad():
                trainer.model.v.weight[0, 0] = value

    trainer.optimizer.step = step


def test_a_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    from test_trainer import make_trainer, toy_config

    from momentkit.training.trainer import TrainingError

    trainer = make_trainer(toy_config(epochs=1), tmp_path / "data", tmp_path / "run")
    trainer.fit()
    last = (tmp_path / "run" / "last" / "model.safetensors").read_bytes()
    trainer = make_trainer(toy_config(epochs=2), tmp_path / "data", tmp_path / "run")
    real = trainer.criterion

    def matcher(outputs, batch):  # the Hungarian matcher's scipy error on NaN costs
        if not torch.isfinite(outputs["pred_spans"]).all():
            raise ValueError("matrix contains invalid numeric entries")
        return real(outputs, batch)

    trainer.criterion = matcher
    _poison_after_each_step(trainer, float("nan"), from_step=3)  # epoch 2, step 1
    with pytest.raises(TrainingError, match=r"output '\w+' became NaN/Inf at epoch 2, step 2 "
                       r".*training diverged.*keeps the last good checkpoint"):  # fmt: skip
        trainer.fit(resume=True)
    assert (tmp_path / "run" / "last" / "model.safetensors").read_bytes() == last


def test_nan_weights_are_never_saved_over_a_good_checkpoint(tmp_path):
    from test_trainer import make_trainer, toy_config

    from momentkit.training.trainer import TrainingError

    trainer = make_trainer(toy_config(epochs=1), tmp_path / "data", tmp_path / "run")
    trainer.fit()
    last = (tmp_path / "run" / "last" / "model.safetensors").read_bytes()
    trainer = make_trainer(toy_config(epochs=2), tmp_path / "data", tmp_path / "run")
    # the last step of epoch 2 makes a weight inf, and the loss cannot see it
    _poison_after_each_step(trainer, float("inf"), from_step=4)
    trainer.criterion = lambda outputs, batch: {
        "loss": outputs["saliency_scores"].nan_to_num(0.0, 0.0, 0.0).sum() * 0
    }
    with pytest.raises(TrainingError, match=r"the weight 'v.weight' became NaN/Inf by global"):
        trainer.fit(resume=True)
    assert (tmp_path / "run" / "last" / "model.safetensors").read_bytes() == last


def test_lr_inf_is_refused_by_the_config():
    from momentkit.training.config import ConfigError, build_config

    for value in ("inf", "-inf", "nan"):
        with pytest.raises(ConfigError, match="optim.lr"):
            build_config("qd_detr", overrides=[f"optim.lr={value}"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    from momentkit.training.distributed import DeviceError, resolve_device

    for name in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError, match="no CUDA device on this machine.*--device cpu"):
            resolve_device(name)
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_resume_of_a_run_folder_that_does_not_exist_is_refused(tmp_path, capsys):
    out = tmp_path / "no_such_run"
    args = ["train", "--model", "qd_detr", "--train", "t.jsonl", "--video-features", "v",
            "--text-features", "t", "--out", str(out), "--resume"]  # fmt: skip
    assert main(args) == 2
    assert "--resume: no such run folder" in error_line(capsys)
    assert not out.exists()


def test_synth_force_replaces_only_a_benchmark_it_wrote(tmp_path, capsys):
    target = tmp_path / "mine"
    (target / "features" / "clip").mkdir(parents=True)
    (target / "features" / "clip" / "precious.npz").write_text("data")
    args = ["synth", str(target), "--train", "2", "--val", "1", "--force", "--no-progress"]
    assert main(args) == 2
    assert "is not a benchmark written by `momentkit synth`" in error_line(capsys)
    assert (target / "features" / "clip" / "precious.npz").read_text() == "data"


# --------------------------------------------------------------------------------- library
def test_two_indexers_on_one_library_one_waits_its_turn(tmp_path):
    from momentkit.library import LibraryStore
    from momentkit.library.store import IndexLockedError

    db = tmp_path / "lib.db"
    with LibraryStore(db, create=True) as a, LibraryStore(db) as b:
        with a.index_lock():
            pid = str(os.getpid())
            # another process holding the lock: flock locks are per open file description
            code = (
                "import sys; from momentkit.library import LibraryStore\n"
                f"s = LibraryStore({str(db)!r})\n"
                "try:\n    s.index_lock().__enter__()\nexcept Exception as e:\n"
                "    print(type(e).__name__, e); sys.exit(3)\n"
            )
            r = subprocess.run(["python", "-c", code], capture_output=True, text=True)
            assert r.returncode == 3, r.stderr
            assert r.stdout.startswith("IndexLockedError")
            assert f"another `momentkit index` is running on this library (process {pid})" in (
                r.stdout
            )
        with b.index_lock():  # released: the next run goes on
            pass
    assert issubclass(IndexLockedError, MomentkitError)


def test_disk_full_during_a_write_says_so_instead_of_cannot_rollback(tmp_path):
    """SQLite rolls a transaction back itself on SQLITE_FULL; the second ROLLBACK used to
    hide the real error behind 'cannot rollback - no transaction is active'."""
    from momentkit.library import LibraryStore
    from momentkit.library.files import FileStat
    from momentkit.library.store import LibraryError

    with LibraryStore(tmp_path / "lib.db", create=True) as store:
        real = store._conn

        class DiskFull:
            def __getattr__(self, name):
                return getattr(real, name)

            def executemany(self, sql, rows):
                if sql.startswith("INSERT INTO streams"):
                    real.execute("ROLLBACK")  # what SQLite does on a full disk
                    raise sqlite3.OperationalError("database or disk is full")
                return real.executemany(sql, rows)

        store._conn = DiskFull()  # type: ignore[assignment]
        with pytest.raises(LibraryError, match="database or disk is full; the disk is full"):
            store.add_video(FileStat(tmp_path / "a.mp4", 1, 1), "x", 4.0, 2.0,
                            {"clip": np.ones((2, 3))}, 0.1)  # fmt: skip
        store._conn = real
        assert store.num_videos() == 0


def test_a_read_only_library_is_searchable_and_says_why_it_cannot_be_changed(tmp_path):
    from momentkit.library import LibraryStore
    from momentkit.library.files import FileStat
    from momentkit.library.store import LibraryError

    db = tmp_path / "lib.db"
    with LibraryStore(db, create=True) as store:
        store.bind("offline", "clip", 2.0)
        store.add_video(FileStat(tmp_path / "a.mp4", 1, 1), "x", 4.0, 2.0,
                        {"clip": np.ones((2, 3))}, 0.1)  # fmt: skip
    with LibraryStore(db, readonly=True) as store:
        assert store.readonly and store.num_videos() == 1 and store.clip_len == 2.0
        with pytest.raises(LibraryError, match="read-only here .* searched, not changed"):
            store.remove_video(1)


def test_a_library_on_a_read_only_mount(tmp_path):
    """The real thing where this process may mount (root in a container); skipped elsewhere."""
    from momentkit.library import Library, LibraryStore
    from momentkit.library.files import FileStat
    from momentkit.library.store import LibraryError

    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    with LibraryStore(src / "lib.db", create=True) as store:
        store.bind("offline", "imagenet_probs", 2.0)
        stream = {"imagenet_probs": np.full((2, 3), 1 / 3, np.float32)}
        store.add_video(FileStat(tmp_path / "a.mp4", 1, 1), "x", 4.0, 2.0, stream, 0.1)
    if subprocess.run(["mount", "--bind", str(src), str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount here")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(mnt)], check=True)
        with Library.open(mnt / "lib.db") as library:
            assert library.store.readonly and library.store.num_videos() == 1
            index, clips = library.vector_index()
            assert index is not None and len(clips.ids) == 2
        with LibraryStore(mnt / "lib.db", create=True) as store:
            with pytest.raises(LibraryError, match="read-only here"):
                store.bind("offline", "clip", 2.0)
                store.remove_video(1)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
