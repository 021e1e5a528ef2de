#!/usr/bin/env python3
"""Reliability probe: bad command-line inputs and faults, run as real ``momentkit`` processes.

Not part of the test suite (it takes minutes); the suite holds the same attacks as fast tests
(``tests/test_security.py``, ``tests/test_fuzz_readers.py``). Run::

    python scripts/reliability_probe.py                 # the input battery
    python scripts/reliability_probe.py --faults        # plus kill -9, disk full, read-only FS
    python scripts/reliability_probe.py --json out.json --keep /tmp/probe

Each input case runs ``python -m momentkit ARGS`` in a workspace built once (a tiny synthetic
benchmark, a one-epoch checkpoint, a packed store, a one-video library) and is classified:

- ``clear``: non-zero exit, the last line of stderr is ``momentkit CMD: error: ...``, no
  traceback (or, for batch commands such as ``extract``, exit status 1 with a ``failed (N):``
  list giving each failed item's reason);
- ``traceback``: a Python traceback reached the user (goal: 0);
- ``success``: exit status 0 (for a case expected to fail this is a *silent* wrong result);
- ``unclear``: a non-zero exit without either.

Cases may also check the file system afterwards (a file written outside its folder, a source
deleted, a symbolic link replaced, a device replaced): each violation counts as data lost or an
escape (goal: 0). Fault cases (``--faults``) kill processes with SIGKILL mid-write, fill a small
disk and mount a library read-only (the last two need root to mount a tmpfs; skipped
otherwise), then check that nothing was lost and that a re-run finishes.

``--server`` adds the server battery: a real ``momentkit serve`` process on a free port of
127.0.0.1 (never any other address), sent bad requests (other ``Host`` names, cross-origin
writes, non-finite numbers and lone surrogates, oversized and malformed bodies, path traversal,
a 1.4 KB file declaring 1000 hours, uploads past the storage cap, 100 concurrent searches),
each classified as ``clear`` (the expected 4xx with a JSON reason, or the expected answer),
``500`` (a server error nobody asked for; goal: 0), ``hang`` (no answer within 30 s; goal: 0)
or ``unexpected`` (another status: e.g. an attack accepted). It also starts ``momentkit serve``
with each crafted checkpoint (must exit with one line before listening) and times
SIGTERM-to-exit. ``--server-only`` runs just that battery.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TINY = [
    "model.hidden_dim=16",
    "model.dim_feedforward=32",
    "model.nheads=2",
    "model.num_queries=4",
    "model.enc_layers=1",
    "model.dec_layers=1",
    "trainer.progress=false",
]
ERROR_LINE = re.compile(r"^momentkit(?: [\w-]+)?: error: ")


@dataclass
class Case:
    """One command line and what must (not) happen."""

    name: str
    args: list[str]
    expect: str = "error"  # "error": must fail clearly; "ok": must succeed; "any"
    check: Callable[[], list[str]] | None = None  # violations found afterwards
    group: str = "input"


@dataclass
class Outcome:
    name: str
    group: str
    outcome: str
    rc: int
    seconds: float
    last_line: str
    violations: list[str] = field(default_factory=list)


#: the crafted checkpoint folders the workspace holds (config, weights and experiment attacks)
CRAFTED_CHECKPOINTS = (
    "ckpt_dropout",
    "ckpt_hidden_huge",
    "ckpt_unknown_model",
    "ckpt_garbage_weights",
    "ckpt_huge_header",
    "ckpt_truncated",
    "ckpt_nan",
    "ckpt_config_latin1",
    "ckpt_config_list",
    "ckpt_experiment_bad",
)


def momentkit(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "momentkit", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def classify(rc: int, stderr: str, stdout: str = "") -> str:
    if "Traceback (most recent call last)" in stderr:
        return "traceback"
    if rc == 0:
        return "success"
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if rc > 0 and lines and ERROR_LINE.match(lines[-1]):
        return "clear"
    # batch commands (extract, index) list the items that failed, each with its reason
    if rc == 1 and re.search(r"^failed \(\d+\):\n  \S.*: ", stdout, re.M):
        return "clear"
    return "unclear"


# ------------------------------------------------------------------------------------ workspace
def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def build_workspace(w: Path) -> dict[str, Path]:
    """The fixtures every case reads (about a minute: one tiny training run, one index)."""
    from momentkit.data.synth import SynthConfig, generate

    synth = w / "synth"
    generate(
        SynthConfig(num_train=16, num_val=6, seed=1, min_duration=30, max_duration=40),
        synth,
        progress=False,
    )
    feats = synth / "features"
    ann = synth / "annotations"
    r = momentkit(
        [
            "train",
            "--model",
            "qd_detr",
            "--preset",
            "synth",
            "--train",
            str(ann / "train.jsonl"),
            "--val",
            str(ann / "val.jsonl"),
            "--video-features",
            str(feats / "slowfast"),
            str(feats / "clip"),
            "--text-features",
            str(feats / "clip_text"),
            "--out",
            "run",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--set",
            *TINY,
        ],
        w,
    )
    if r.returncode:
        raise SystemExit(f"workspace: training failed:\n{r.stderr}")
    r = momentkit(["pack", str(feats / "clip"), "packed", "--no-progress"], w)
    if r.returncode:
        raise SystemExit(f"workspace: pack failed:\n{r.stderr}")
    vids = w / "vids"
    vids.mkdir()
    example = Path(__file__).resolve().parents[1] / "momentkit" / "examples" / "charades_demo.mp4"
    shutil.copy(example, vids / "demo.mp4")
    r = momentkit(["index", "vids", "--db", "lib.db", "--no-progress"], w)
    if r.returncode:
        raise SystemExit(f"workspace: index failed:\n{r.stderr}")
    return {"synth": synth, "feats": feats, "ann": ann, "run": w / "run", "vids": vids}


def bad_inputs(w: Path, f: dict[str, Path]) -> dict[str, Path]:
    """Malformed files, one flaw each."""
    import numpy as np

    bad = w / "bad"
    bad.mkdir()
    val = [json.loads(line) for line in (f["ann"] / "val.jsonl").read_text().splitlines()]
    out: dict[str, Path] = {}

    def variant(name: str, change: Callable[[dict], None]) -> None:
        rows = [dict(r) for r in val]
        change(rows[0])
        out[name] = write_rows(bad / f"{name}.jsonl", rows)

    variant("window_beyond", lambda r: r.update(relevant_windows=[[10, 500]]))
    variant("window_negative", lambda r: r.update(relevant_windows=[[-10, 5]]))
    variant("window_reversed", lambda r: r.update(relevant_windows=[[20, 5]]))
    variant("clip_id_beyond", lambda r: r.update(relevant_clip_ids=[*range(8), 900]))
    variant("duration_huge", lambda r: r.update(duration=1e12))
    variant("duration_zero", lambda r: r.update(duration=0))
    variant("duration_nan", lambda r: r.update(duration=float("nan")))
    variant("qid_missing", lambda r: r.pop("qid"))
    variant("qid_float", lambda r: r.update(qid=1.5))
    variant("vid_escape", lambda r: r.update(vid="../../../../etc/passwd"))
    variant("scores_ragged", lambda r: r.update(saliency_scores=[[1, 2]]))
    variant("windows_not_list", lambda r: r.update(relevant_windows="0-10"))
    rows = [dict(r) for r in val]
    rows[1]["qid"] = rows[0]["qid"]
    out["qid_duplicate"] = write_rows(bad / "qid_duplicate.jsonl", rows)
    (bad / "latin1.jsonl").write_bytes(
        (json.dumps(val[0])[:-1] + ', "note": "caf\xe9"}\n').encode("latin-1")
    )
    out["latin1"] = bad / "latin1.jsonl"
    (bad / "truncated.jsonl").write_text(json.dumps(val[0])[:40] + "\n")
    out["truncated"] = bad / "truncated.jsonl"
    (bad / "empty.jsonl").write_text("")
    out["empty"] = bad / "empty.jsonl"
    (bad / "array_row.jsonl").write_text("[1, 2, 3]\n")
    out["array_row"] = bad / "array_row.jsonl"
    (bad / "deep.jsonl").write_text("[" * 100000 + "]" * 100000 + "\n")
    out["deep"] = bad / "deep.jsonl"
    (bad / "binary.jsonl").write_bytes(os.urandom(4096))
    out["binary"] = bad / "binary.jsonl"
    (bad / "a_folder.jsonl").mkdir()
    out["folder"] = bad / "a_folder.jsonl"
    preds = [json.loads(line) for line in (f["run"] / "val_preds.jsonl").read_text().splitlines()]
    p = [dict(r) for r in preds]
    p[0]["pred_relevant_windows"] = [[0, "x", 1]]
    out["pred_bad_window"] = write_rows(bad / "pred_bad_window.jsonl", p)
    p = [dict(r) for r in preds]
    p[0]["pred_saliency_scores"] = [None]
    out["pred_bad_saliency"] = write_rows(bad / "pred_bad_saliency.jsonl", p)

    # YAML presets
    (bad / "recursive.yaml").write_text("model: &x\n  name: qd_detr\n  loss: *x\n")
    (bad / "recursive_list.yaml").write_text("model:\n  name: qd_detr\nlist: &l [*l]\n")
    levels = ["a: &a [1,1,1,1,1,1,1,1,1]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        levels.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    (bad / "alias_bomb.yaml").write_text("\n".join(levels) + "\n")
    (bad / "latin1.yaml").write_bytes(b"model:\n  name: qd_detr\ndata:\n  dataset: caf\xe9\n")
    (bad / "deep.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    (bad / "list.yaml").write_text("- 1\n- 2\n")
    (bad / "unknown_key.yaml").write_text("model:\n  name: qd_detr\n  hiden_dim: 3\n")
    (bad / "bad_syntax.yaml").write_text("model: [unclosed\n")

    # feature stores
    def npz_store(name: str, write: Callable[[Path], None]) -> None:
        d = bad / name
        shutil.copytree(f["feats"] / "clip", d)
        write(d / sorted(p.name for p in d.iterdir())[0])
        out[name] = d

    def zip_bomb(path: Path) -> None:
        import io

        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "<f4", "fortran_order": False, "shape": (250_000_000, 4)}
        )
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            with z.open("features.npy", "w", force_zip64=True) as fh:
                fh.write(header.getvalue())
                chunk = b"\0" * (1 << 24)
                for _ in range(240):
                    fh.write(chunk)

    def huge_header(path: Path) -> None:
        import io

        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 230_000)}
        )
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("features.npy", header.getvalue() + b"\0" * 64)

    npz_store("npz_zip_bomb", zip_bomb)
    npz_store("npz_huge_header", huge_header)
    npz_store("npz_garbage", lambda p: p.write_bytes(os.urandom(2048)))
    npz_store("npz_nan", lambda p: np.savez(p, features=np.full((10, 512), np.nan, np.float32)))
    npz_store("npz_3d", lambda p: np.savez(p, features=np.zeros((2, 3, 4), np.float32)))
    npz_store("npz_strings", lambda p: np.savez(p, features=np.array(["a", "b"])))
    npz_store("npz_object", lambda p: np.savez(p, features=np.array([{"a": 1}], dtype=object)))
    npz_store("npz_wrong_dim", lambda p: np.savez(p, features=np.zeros((10, 7), np.float32)))

    def packed(name: str, change: Callable[[dict], None]) -> None:
        d = bad / name
        shutil.copytree(w / "packed", d)
        index = json.loads((d / "index.json").read_text())
        change(index)
        (d / "index.json").write_text(json.dumps(index))
        out[name] = d

    def first_item(value: list) -> Callable[[dict], None]:
        def change(index: dict) -> None:
            index["items"][sorted(index["items"])[0]] = value

        return change

    packed("packed_negative_offset", first_item([-5, 10]))
    packed("packed_float_offset", first_item([1.5, 10]))
    packed("packed_past_end", first_item([10**9, 10]))
    packed("packed_bool_rows", first_item([0, True]))
    packed("packed_rows_lie", lambda index: index.update(rows=index["rows"] * 2))
    packed("packed_dim_string", lambda index: index.update(dim="512"))
    packed("packed_items_list", lambda index: index.update(items=[1, 2]))
    d = bad / "packed_index_latin1"
    shutil.copytree(w / "packed", d)
    (d / "index.json").write_bytes(b'{"format": "caf\xe9"}')
    out["packed_index_latin1"] = d

    # checkpoints
    def checkpoint(name: str, change: Callable[[Path], None]) -> None:
        d = bad / name
        shutil.copytree(f["run"] / "best", d)
        change(d)
        out[name] = d

    def config_edit(**values: object) -> Callable[[Path], None]:
        def change(d: Path) -> None:
            cfg = json.loads((d / "config.json").read_text())
            cfg.update(values)
            (d / "config.json").write_text(json.dumps(cfg))

        return change

    def nan_weights(d: Path) -> None:
        from safetensors.torch import load_file, save_file

        state = load_file(str(d / "model.safetensors"))
        for k in state:
            if state[k].is_floating_point():
                state[k] = state[k].clone().fill_(float("nan"))
                break
        save_file(state, str(d / "model.safetensors"))

    checkpoint("ckpt_dropout", config_edit(dropout=2.0))
    checkpoint("ckpt_hidden_huge", config_edit(hidden_dim=4_000_000))
    checkpoint("ckpt_unknown_model", config_edit(name="no_such_model"))
    checkpoint(
        "ckpt_garbage_weights", lambda d: (d / "model.safetensors").write_bytes(b"\xff" * 64)
    )
    checkpoint(
        "ckpt_huge_header",
        lambda d: (d / "model.safetensors").write_bytes((2**62).to_bytes(8, "little") + b"{}"),
    )
    checkpoint(
        "ckpt_truncated",
        lambda d: (d / "model.safetensors").write_bytes(
            (d / "model.safetensors").read_bytes()[:500]
        ),
    )
    checkpoint("ckpt_nan", nan_weights)
    checkpoint("ckpt_config_latin1", lambda d: (d / "config.json").write_bytes(b'{"name": "\xe9"}'))
    checkpoint("ckpt_config_list", lambda d: (d / "config.json").write_text("[]"))
    checkpoint("ckpt_experiment_bad", lambda d: (d / "experiment.json").write_text("{"))

    # queries and captions whose ids are paths (each case its own target, checked apart)
    for name in ("queries", "captions"):
        escape = str(w / f"escaped_{name}" / "ESCAPED")
        out[f"{name}_escape_target"] = w / f"escaped_{name}"
        row = {
            "qid": "/.." * 20 + escape,
            "query": "a person",
            "vid": val[0]["vid"],
            "caption": "a person",
            "start": 0,
            "end": 10,
            "duration": val[0]["duration"],
        }
        out[f"{name}_escape"] = write_rows(bad / f"{name}_escape.jsonl", [row])
    out["captions_nul"] = write_rows(
        bad / "captions_nul.jsonl",
        [
            {
                "qid": "a\x00b",
                "vid": val[0]["vid"],
                "caption": "a person",
                "start": 0,
                "end": 10,
                "duration": val[0]["duration"],
            }
        ],
    )
    return out


# ------------------------------------------------------------------------------------ the cases
def no_file(path: Path, what: str) -> Callable[[], list[str]]:
    return lambda: [f"{what}: {path} exists"] if path.exists() or path.is_symlink() else []


def cases(w: Path, f: dict[str, Path], b: dict[str, Path]) -> list[Case]:
    ann, feats, run = f["ann"], f["feats"], f["run"]
    val, train, preds = (
        str(ann / "val.jsonl"),
        str(ann / "train.jsonl"),
        str(run / "val_preds.jsonl"),
    )
    streams = [str(feats / "slowfast"), str(feats / "clip")]
    text = str(feats / "clip_text")
    out: list[Case] = []

    def add(
        name: str,
        args: list[str],
        expect: str = "error",
        check: Callable[[], list[str]] | None = None,
        group: str = "input",
    ) -> None:
        out.append(Case(name, args, expect, check, group))

    def train_args(annotations: str = train, video: list[str] | None = None) -> list[str]:
        return [
            "train",
            "--model",
            "qd_detr",
            "--preset",
            "synth",
            "--train",
            annotations,
            "--video-features",
            *(video or streams),
            "--text-features",
            text,
            "--out",
            str(w / "runs" / f"r{len(out)}"),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--set",
            *TINY,
        ]

    def predict_args(
        ckpt: str, *extra: str, video: list[str] | None = None, ann_file: str = val
    ) -> list[str]:
        return [
            "predict",
            "--checkpoint",
            ckpt,
            "--annotations",
            ann_file,
            "--video-features",
            *(video or streams),
            "--text-features",
            text,
            "--out",
            str(w / "p.jsonl"),
            *extra,
        ]

    # --- security: paths built from data --------------------------------------------------
    add(
        "extract: qid escaping --out",
        [
            "extract",
            str(f["vids"] / "demo.mp4"),
            "--out",
            str(w / "ex_out"),
            "--queries",
            str(b["queries_escape"]),
            "--quiet",
        ],
        check=no_file(b["queries_escape_target"], "escaped write"),
        group="security",
    )
    add(
        "pseudo-label: qid escaping --text-out",
        [
            "pseudo-label",
            "--captions",
            str(b["captions_escape"]),
            "--video-features",
            str(feats / "clip"),
            "--text-encoder",
            "offline",
            "--text-out",
            str(w / "pl_text"),
            "--out",
            str(w / "pl.jsonl"),
        ],
        check=no_file(b["captions_escape_target"], "escaped write"),
        group="security",
    )
    add(
        "pseudo-label: NUL in qid",
        [
            "pseudo-label",
            "--captions",
            str(b["captions_nul"]),
            "--video-features",
            str(feats / "clip"),
            "--text-encoder",
            "offline",
            "--text-out",
            str(w / "pl_text2"),
            "--out",
            str(w / "pl2.jsonl"),
        ],
        group="security",
    )
    add("train: vid naming a path", train_args(str(b["vid_escape"])), group="security")

    # --- pack deleting what it did not make ----------------------------------------------
    src = w / "pack_src"
    shutil.copytree(feats / "clip", src)
    n_src = len(list(src.iterdir()))
    keep_src = lambda: (  # noqa: E731
        [] if len(list(src.iterdir())) == n_src else [f"pack deleted source files in {src}"]
    )
    add(
        "pack SRC SRC --overwrite",
        ["pack", str(src), str(src), "--overwrite", "--no-progress"],
        check=keep_src,
        group="security",
    )
    other = w / "some_dir"
    other.mkdir()
    (other / "important.txt").write_text("keep me")
    add(
        "pack SRC unrelated-folder --overwrite",
        ["pack", str(src), str(other), "--overwrite", "--no-progress"],
        check=lambda: [] if (other / "important.txt").exists() else ["important.txt deleted"],
        group="security",
    )
    add(
        "pack SRC SRC/inside",
        ["pack", str(src), str(src / "inside"), "--no-progress"],
        check=keep_src,
        group="security",
    )
    add(
        "pack SRC parent-of-SRC --overwrite",
        ["pack", str(src), str(w), "--overwrite", "--no-progress"],
        check=lambda: [] if (w / "lib.db").exists() else ["workspace deleted"],
        group="security",
    )
    add(
        "pack into a file",
        ["pack", str(src), str(other / "important.txt"), "--overwrite", "--no-progress"],
        check=lambda: (
            [] if (other / "important.txt").read_text() == "keep me" else ["important.txt replaced"]
        ),
        group="security",
    )

    # --- output paths that are not regular files -----------------------------------------
    target = w / "metrics_target.json"
    target.write_text("{}")
    link = w / "metrics_link.json"
    link.symlink_to(target)
    add(
        "evaluate --out SYMLINK (written through)",
        ["evaluate", preds, val, "--out", str(link)],
        expect="ok",
        check=lambda: (
            ([] if link.is_symlink() else ["symlink replaced by a file"])
            + ([] if "brief" in target.read_text() else ["link target not written"])
        ),
        group="security",
    )
    if Path("/dev/full").exists():
        add(
            "evaluate --out /dev/full",
            ["evaluate", preds, val, "--out", "/dev/full"],
            check=lambda: [] if Path("/dev/full").is_char_device() else ["/dev/full replaced"],
            group="security",
        )
    add(
        "evaluate --out /dev/null",
        ["evaluate", preds, val, "--out", "/dev/null"],
        check=lambda: [] if Path("/dev/null").is_char_device() else ["/dev/null replaced"],
        group="security",
    )
    add(
        "evaluate --out FOLDER",
        ["evaluate", preds, val, "--out", str(other)],
        check=lambda: [] if other.is_dir() else ["folder replaced"],
        group="security",
    )
    fifo = w / "fifo"
    os.mkfifo(fifo)
    add(
        "evaluate --out FIFO",
        ["evaluate", preds, val, "--out", str(fifo)],
        check=lambda: [] if fifo.is_fifo() else ["FIFO replaced"],
        group="security",
    )
    add(
        "evaluate --out under a file",
        ["evaluate", preds, val, "--out", str(other / "important.txt" / "m.json")],
    )
    add("predict --out /dev/full", [*predict_args(str(run))[:-2], "--out", "/dev/full"])
    add("predict --out FOLDER", [*predict_args(str(run))[:-2], "--out", str(other)])

    # --- an output that is one of the command's inputs (audit of 2026-12-07) ----------------
    def unchanged(path: Path) -> Callable[[], list[str]]:
        before = path.read_bytes()
        return lambda: [] if path.read_bytes() == before else [f"{path.name} replaced"]

    gt_copy, preds_copy = w / "gt_copy.jsonl", w / "preds_copy.jsonl"
    shutil.copyfile(val, gt_copy)
    shutil.copyfile(preds, preds_copy)
    add(
        "evaluate --out GT.jsonl",
        ["evaluate", str(preds_copy), str(gt_copy), "--out", str(gt_copy)],
        check=unchanged(gt_copy),
        group="security",
    )
    add(
        "predict --out its --annotations",
        [*predict_args(str(run), ann_file=str(gt_copy))[:-2], "--out", str(gt_copy)],
        check=unchanged(gt_copy),
        group="security",
    )
    captions_copy = write_rows(
        w / "captions_copy.jsonl",
        [{"qid": 1, "vid": "v0", "caption": "a person", "start": 0, "end": 4, "duration": 10}],
    )
    add(
        "pseudo-label --out its --captions",
        [
            "pseudo-label",
            "--captions",
            str(captions_copy),
            "--video-features",
            str(feats / "clip"),
            "--text-features",
            text,
            "--out",
            str(captions_copy),
        ],
        check=unchanged(captions_copy),
        group="security",
    )

    # --- annotations ---------------------------------------------------------------------
    for key in ("window_beyond", "window_negative", "clip_id_beyond", "duration_huge"):
        add(f"train: {key}", train_args(str(b[key])), group="silent")
        add(f"evaluate: {key}", ["evaluate", preds, str(b[key])], group="silent")
    for key in (
        "window_reversed",
        "duration_zero",
        "duration_nan",
        "qid_missing",
        "qid_float",
        "qid_duplicate",
        "scores_ragged",
        "windows_not_list",
        "latin1",
        "truncated",
        "empty",
        "array_row",
        "deep",
        "binary",
        "folder",
    ):
        add(f"evaluate GT: {key}", ["evaluate", preds, str(b[key])])
    for key in ("latin1", "deep", "binary", "folder", "pred_bad_window", "pred_bad_saliency"):
        add(f"evaluate PRED: {key}", ["evaluate", str(b[key]), val])
    for key in ("latin1", "binary", "empty", "folder"):
        add(f"train: {key}", train_args(str(b[key])))
        add(f"predict: {key}", predict_args(str(run), ann_file=str(b[key])))
        add(f"augment: {key}", ["augment", str(b[key]), "--out", str(w / "corpus.jsonl")])
        add(
            f"pseudo-label captions: {key}",
            [
                "pseudo-label",
                "--captions",
                str(b[key]),
                "--video-features",
                str(feats / "clip"),
                "--text-features",
                text,
                "--out",
                str(w / "pl3.jsonl"),
            ],
        )
    add("evaluate: missing file", ["evaluate", preds, str(w / "nope.jsonl")])
    for value in ("0", "-1", "nan", "inf"):
        add(f"evaluate --clip-len {value}", ["evaluate", preds, val, "--clip-len", value])

    # --- configs -------------------------------------------------------------------------
    for name in (
        "recursive",
        "recursive_list",
        "alias_bomb",
        "latin1",
        "deep",
        "list",
        "unknown_key",
        "bad_syntax",
    ):
        add(
            f"train --preset {name}.yaml",
            [
                "train",
                "--preset",
                str(w / "bad" / f"{name}.yaml"),
                "--out",
                str(w / "runs" / f"y{name}"),
                "--show-config",
            ],
        )
    for setting in (
        "optim.lr=inf",
        "optim.lr=-1",
        "optim.lr=nan",
        "model.hidden_dim=4000000",
        "model.dim_feedforward=1000000000",
        "model.dropout=2",
        "data.clip_len=0",
        "data.clip_len=inf",
        "model.loss=&x {a: *x}",
        "trainer.epochs=[1",
        "nonsense",
        "model.nheads=3",
    ):
        add(f"train --set {setting}", [*train_args(), setting])
    add("train --resume with no such run folder", [*train_args(), "--resume"])
    add("train diverging (optim.lr=1e30, no clipping)",
        [*train_args(), "optim.lr=1e30", "optim.grad_clip=0"], group="silent")  # fmt: skip
    add("synth --set recursive anchor", ["synth", str(w / "s2"), "--set", "world_seed=&x [*x]"])
    unrelated = w / "unrelated"
    (unrelated / "features" / "clip").mkdir(parents=True)
    (unrelated / "features" / "clip" / "mine.npz").write_text("precious")
    add(
        "synth --force into a folder it did not make",
        ["synth", str(unrelated), "--train", "2", "--val", "1", "--force"],
        check=lambda: (
            []
            if (unrelated / "features" / "clip" / "mine.npz").exists()
            else ["synth --force deleted unrelated files"]
        ),
        group="security",
    )

    # --- features ------------------------------------------------------------------------
    for key in (
        "npz_zip_bomb",
        "npz_huge_header",
        "npz_garbage",
        "npz_nan",
        "npz_3d",
        "npz_strings",
        "npz_object",
        "npz_wrong_dim",
    ):
        add(
            f"train: {key}",
            train_args(video=[str(feats / "slowfast"), str(b[key])]),
            group="resource" if "zip" in key or "huge" in key else "input",
        )
        add(f"pack: {key}", ["pack", str(b[key]), str(w / "packs" / key), "--no-progress"])
    for key in (
        "packed_negative_offset",
        "packed_float_offset",
        "packed_past_end",
        "packed_bool_rows",
        "packed_rows_lie",
        "packed_dim_string",
        "packed_items_list",
        "packed_index_latin1",
    ):
        add(f"predict: {key}", predict_args(str(run), video=[str(feats / "slowfast"), str(b[key])]))
    add("train: missing feature folder", train_args(video=[str(w / "nope")]))
    add(
        "predict: streams in the wrong order",
        predict_args(str(run), video=[str(feats / "clip"), str(feats / "slowfast")]),
        group="silent",
    )
    add("predict: one stream missing", predict_args(str(run), video=[str(feats / "clip")]))

    # --- checkpoints -----------------------------------------------------------------------
    for key in CRAFTED_CHECKPOINTS:
        add(
            f"predict --checkpoint {key}",
            predict_args(str(b[key])),
            group="silent" if key == "ckpt_nan" else "input",
        )
        # --init-from reads only the weights: a damaged config.json does not matter there
        weights_damaged = key in ("ckpt_garbage_weights", "ckpt_huge_header", "ckpt_truncated",
                                  "ckpt_nan")  # fmt: skip
        add(
            f"train --init-from {key}",
            [*train_args(), "--init-from", str(b[key])],
            expect="error" if weights_damaged else "any",
        )
    add("predict --checkpoint missing", predict_args(str(w / "nope")))
    add(
        "predict --device cuda (no GPU here?)",
        predict_args(str(run), "--device", "cuda"),
        expect="any",
    )
    add("predict --device tpu", predict_args(str(run), "--device", "tpu"))

    # --- library -------------------------------------------------------------------------
    add("index --clip-len -1", ["index", "vids", "--db", str(w / "l2.db"), "--clip-len", "-1"])
    add("index --clip-len 0", ["index", "vids", "--db", str(w / "l2.db"), "--clip-len", "0"])
    add(
        "index --db FOLDER",
        ["index", "vids", "--db", str(other)],
        check=lambda: [] if (other / "important.txt").exists() else ["folder damaged"],
    )
    add("index --db under a file", ["index", "vids", "--db", str(other / "important.txt" / "x")])
    add(
        "index --db not a database",
        ["index", "vids", "--db", str(other / "important.txt")],
        check=lambda: (
            [] if (other / "important.txt").read_text() == "keep me" else ["important.txt changed"]
        ),
    )
    add(
        "index: no such folder",
        ["index", str(w / "nope"), "--db", str(w / "l3.db")],
        check=no_file(w / "l3.db", "left an empty database"),
    )
    add(
        "index: other encoder than the library's",
        ["index", "vids", "--db", "lib.db", "--encoder", "offline-glove"],
    )

    # --- found by the audit of 2026-12-07 (second part) ------------------------------------
    import numpy as np

    from momentkit.video.write import write_video

    frames = np.zeros((3, 16, 16, 3), np.uint8)
    frames[1], frames[2] = 128, 255
    long = write_video(w / "cli_long.mkv", frames, times=[0, 1, 200_000])  # seconds
    video = w / "own_video.mp4"
    shutil.copyfile(f["vids"] / "demo.mp4", video)
    add(
        "search --export json:THE-VIDEO",
        ["search", str(video), "a person", "--export", f"json:{video}"],
        check=unchanged(video),
        group="security",
    )
    add("search: 868 B file declaring 55 hours", ["search", str(long), "a person"])
    # extract reports a failed video in its summary (stdout) and exits 1; nothing written
    add(
        "extract: file declaring 55 hours",
        ["extract", str(long), "--out", str(w / "fx")],
        check=lambda: [f"wrote {p}" for p in (w / "fx").rglob("*.npz")],
    )
    add("search --clip-len 0.001", ["search", str(video), "a person", "--clip-len", "0.001"])
    foreign = w / "app.db"
    with sqlite3.connect(foreign) as con:
        con.execute("create table videos(name text)")

    def foreign_database(label: str, db: Path) -> None:
        """``index`` and ``query`` on a database that is not a library: refused, unchanged."""
        for command in (["index", "vids"], ["query", "a person"]):
            add(
                f"{command[0]} --db {label}",
                [*command, "--db", str(db)],
                check=unchanged(db),
                group="security",
            )

    foreign_database("someone else's database", foreign)
    damaged = w / "damaged_run"
    shutil.copytree(run, damaged)
    (damaged / "last" / "state.json").write_text('{"trainer": {"epoch": "x"}}')
    add("train --resume: damaged state.json", ["train", "--out", str(damaged), "--resume"])
    for value in ("min_duration=abc", "seed=abc", "clip_noise=nan"):
        add(
            f"synth --set {value}",
            ["synth", str(w / "synth_bad"), "--train", "2", "--val", "1", "--set", value],
            check=no_file(w / "synth_bad", "wrote a benchmark"),
        )
    for value in ("abc", "0.9:0.1:0.1", "nan"):
        add(f"cotrain --tad-tiou {value}", ["cotrain", "--tad-tiou", value])
    add(
        "augment --import a missing module",
        ["augment", train, "--out", str(w / "c.jsonl"), "--import", "nosuch_mod"],
    )
    train_copy = w / "train_copy.jsonl"
    shutil.copyfile(train, train_copy)
    add(
        "augment --out its annotations",
        ["augment", str(train_copy), "--out", str(train_copy)],
        check=unchanged(train_copy),
        group="security",
    )

    # --- the second audit of that night ------------------------------------------------------
    add(
        "bench evaluate --out its --gt",
        [
            "bench",
            "evaluate",
            "--pred",
            str(preds_copy),
            "--gt",
            str(gt_copy),
            "--repeat",
            "1",
            "--out",
            str(gt_copy),
        ],
        check=unchanged(gt_copy),
        group="security",
    )
    broken = w / "expected_broken.json"
    broken.write_text('{"a":')
    add(
        "bench evaluate --expected truncated JSON",
        [
            "bench",
            "evaluate",
            "--pred",
            preds,
            "--gt",
            val,
            "--repeat",
            "1",
            "--expected",
            str(broken),
        ],
    )
    add(
        "bench infer --device foo",
        [
            "bench",
            "infer",
            "--model",
            "qd_detr",
            "--queries",
            "2",
            "--clips",
            "4",
            "--tokens",
            "4",
            "--repeat",
            "1",
            "--latency-repeat",
            "1",
            "--warmup",
            "0",
            "--device",
            "foo",
        ],
    )
    empty = w / "empty_items"
    empty.mkdir()
    np.savez(empty / "a.npz", features=np.zeros((0, 8), np.float32))
    np.savez(empty / "b.npz", features=np.ones((3, 8), np.float32))
    add(
        "pack: an item of zero rows",
        ["pack", str(empty), str(w / "empty_packed"), "--no-progress"],
        expect="ok",
    )
    add(
        "search: two --export options naming one file",
        [
            "search",
            str(video),
            "a person",
            "--export",
            f"csv:{w / 'o.txt'}",
            "--export",
            f"json:{w / 'o.txt'}",
        ],  # fmt: skip
        check=no_file(w / "o.txt", "wrote one export over the other"),
    )
    own_meta = w / "app_meta.db"
    with sqlite3.connect(own_meta) as con:
        con.execute("create table meta(key text primary key, value text)")
        con.execute("insert into meta values ('schema_version', '1')")
        con.execute("create table videos(id integer, title text, url text)")
    foreign_database("a database with a meta table of its own", own_meta)
    return out


# ------------------------------------------------------------------------------- server battery
LOOPBACK = "127.0.0.1"  # the only address the server battery talks to
TRAVERSAL_IDS = [
    "..%2F..%2Fetc%2Fpasswd",
    "%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%252e%252e%252fetc%252fpasswd",
    "..%5C..%5Cwindows%5Cwin.ini",
    "u-..%2F..%2Fetc%2Fpasswd",
    "l-0",
    "l-1%2F..",
    "l--1",
]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def start_server(w: Path, args: list[str], log: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    command = [
        sys.executable,
        "-m",
        "momentkit",
        "serve",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        *args,
    ]
    with log.open("w") as out:
        return subprocess.Popen(command, cwd=w, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_listening(port: int, proc: subprocess.Popen, timeout: float) -> bool:
    import socket

    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex((LOOPBACK, port)) == 0:
                return True
        time.sleep(0.2)
    return False


def stop_server(proc: subprocess.Popen, timeout: float = 30.0) -> float | None:
    """SIGTERM; seconds until the process exits (``None``: it had to be killed)."""
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
        return time.time() - t0
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def padded_video(src: Path, dst: Path, size: int) -> Path:
    """``src`` with bytes appended up to ``size`` (still decodes: players ignore the tail)."""
    data = src.read_bytes()
    dst.write_bytes(data + b"\0" * max(size - len(data), 0))
    return dst


def http_cases(w: Path, vids: Path) -> list[tuple[str, str, str, dict, Any, set[int]]]:
    """``(name, method, path, headers, body, expected statuses)``; ``body``: a ``dict`` (JSON),
    ``bytes``/``str`` (raw), or ``("file", name, bytes)`` (a multipart upload)."""
    import numpy as np

    from momentkit.video.write import write_video

    frames = np.zeros((3, 16, 16, 3), np.uint8)
    frames[1], frames[2] = 128, 255
    long = write_video(w / "server_long.mkv", frames, times=[0, 1_800_000, 3_600_000])
    demo = (vids / "demo.mp4").read_bytes()
    big = padded_video(vids / "demo.mp4", w / "server_big.mp4", 6 * 2**20).read_bytes()
    json_h = {"Content-Type": "application/json"}
    evil = {"Host": "rebind.evil.example"}
    cases: list[tuple[str, str, str, dict, Any, set[int]]] = []

    def add(name: str, method: str, path: str, headers: dict, body: Any, *ok: int) -> None:
        cases.append((name, method, path, headers, body, set(ok)))

    # DNS rebinding: other Host names
    add("Host rebind: list videos", "GET", "/api/videos", evil, None, 400)
    add(
        "Host rebind: video bytes",
        "GET",
        "/api/videos/l-1/file",
        {**evil, "Range": "bytes=0-9"},
        None,
        400,
    )
    add("Host rebind: page", "GET", "/", evil, None, 400)
    add("Host rebind with port", "GET", "/api/info", {"Host": "evil.example:8000"}, None, 400)
    add("Host empty", "GET", "/api/info", {"Host": ""}, None, 400)
    add("Host rebind: search", "POST", "/api/search", {**evil, **json_h}, {"query": "a"}, 400)
    # cross-origin writes
    for hname, hval in [
        ("Origin", "http://evil.example"),
        ("Origin", "null"),
        ("Referer", "http://evil.example/x.html"),
        ("Sec-Fetch-Site", "cross-site"),
    ]:
        add(
            f"cross-origin upload ({hname}: {hval})",
            "POST",
            "/api/videos",
            {hname: hval},
            ("file", "x.mp4", demo),
            403,
        )
    add(
        "cross-origin search",
        "POST",
        "/api/search",
        {"Origin": "http://evil.example"},
        {"query": "a"},
        403,
    )
    add(
        "cross-origin delete",
        "DELETE",
        "/api/videos/u-" + "0" * 32,
        {"Origin": "http://evil.example"},
        None,
        403,
    )
    # JSON values
    for body in [
        '{"query":"a","top_k":NaN}',
        '{"query":"a","top_k":Infinity}',
        '{"query":"a","top_k":-Infinity}',
        '{"query":"a","top_k":1e400}',
        '{"query":"a","min_relevance":NaN}',
        '{"query":"\\ud800"}',
        '{"query":"a\\u0000"}',
        '{"query":"a","top_k":1e30}',
        '{"query":"a","x":1}',
        '{"query":["a"]}',
        '{"query":"' + "x" * 501 + '"}',
        "{}",
        "[]",
        "null",
        '{"query":"a"',
        "\xff\xfe{}",
        '{"query":"a","videos":true}',
    ]:
        add(f"library search {body[:40]!r}", "POST", "/api/search", json_h, body, 422)
    for body in [
        '{"queries":[NaN]}',
        '{"queries":["\\ud800"]}',
        '{"queries":["a"],"top_k":NaN}',
        '{"queries":' + json.dumps(["a"] * 21) + "}",
        '{"queries":"a"}',
        '{"queries":[]}',
        '{"queries":["a"],"min_relevance":Infinity}',
    ]:
        add(f"video search {body[:40]!r}", "POST", "/api/videos/l-1/search", json_h, body, 422)
    add(
        "JSON body of 100 KB",
        "POST",
        "/api/search",
        json_h,
        json.dumps({"query": "a", "pad": "x" * 100_000}),
        413,
    )
    add(
        "JSON nested 20000 deep",
        "POST",
        "/api/search",
        json_h,
        '{"query":' + "[" * 20000 + "]" * 20000 + "}",
        400,
        422,
    )
    add(
        "search as text/plain",
        "POST",
        "/api/search",
        {"Content-Type": "text/plain"},
        '{"query":"a"}',
        422,
        415,
    )
    # path traversal
    for vid in TRAVERSAL_IDS:
        add(f"traversal GET {vid}", "GET", f"/api/videos/{vid}/file", {}, None, 404)
        add(
            f"traversal search {vid}",
            "POST",
            f"/api/videos/{vid}/search",
            json_h,
            {"queries": ["a"]},
            404,
        )
    add("traversal static", "GET", "/static/..%2f..%2fpyproject.toml", {}, None, 404)
    # uploads
    add(
        "upload: 1000-hour mkv",
        "POST",
        "/api/videos",
        {},
        ("file", "long.mkv", long.read_bytes()),
        413,
    )
    add("upload: not a video", "POST", "/api/videos", {}, ("file", "a.mp4", b"hello"), 415)
    add("upload: empty", "POST", "/api/videos", {}, ("file", "a.mp4", b""), 415)
    add("upload: script name", "POST", "/api/videos", {}, ("file", "run.sh", b"#!"), 415)
    add("upload: over 5 MiB", "POST", "/api/videos", {}, ("file", "big.mp4", big), 413)
    add("upload: not multipart", "POST", "/api/videos", {}, b"raw", 415)
    add("upload: name with ../", "POST", "/api/videos", {}, ("file", "../../x.mp4", demo), 201)
    # other
    add("PUT /api/videos", "PUT", "/api/videos", {}, b"x", 405)
    add("Range garbage", "GET", "/api/videos/l-1/file", {"Range": "bytes=abc"}, None, 400)
    add(
        "Range past the end", "GET", "/api/videos/l-1/file", {"Range": "bytes=99999999-"}, None, 416
    )
    add("8 KB path", "GET", "/api/videos/" + "a" * 8000, {}, None, 404, 414)
    return cases


def send(client: Any, method: str, path: str, headers: dict, body: Any) -> Any:
    if isinstance(body, tuple) and body and body[0] == "file":
        return client.request(
            method, path, headers=headers, files={"file": (body[1], body[2], "video/mp4")}
        )
    if isinstance(body, dict):
        return client.request(method, path, headers=headers, json=body)
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    return client.request(method, path, headers=headers, content=body)


def classify_http(status: int | str, expected: set[int], body: str) -> str:
    if status == "hang":
        return "hang"
    if status in expected:
        if isinstance(status, int) and status >= 400:
            try:
                return "clear" if isinstance(json.loads(body).get("detail"), str) else "unclear"
            except (ValueError, AttributeError):
                return "unclear"
        return "clear"
    if isinstance(status, int) and status >= 500 and status not in (503, 504, 507):
        return "500"
    return "unexpected"


def server_battery(w: Path, f: dict[str, Path], b: dict[str, Path]) -> list[Outcome]:
    """The server's bad requests, crafted checkpoints and SIGTERM (see the module doc)."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    results: list[Outcome] = []
    port = free_port()
    log = w / "serve_probe.log"
    args = [
        "--db",
        "lib.db",
        "--upload-dir",
        str(w / "probe_uploads"),
        "--max-upload-mb",
        "5",
        "--max-upload-storage",
        "12",
        "--queue-timeout",
        "10",
    ]
    t0 = time.time()
    proc = start_server(w, args, log, port)
    try:
        if not wait_listening(port, proc, 300):
            raise SystemExit(f"server battery: the server did not start:\n{log.read_text()}")
        print(f"server up in {time.time() - t0:.1f} s on {LOOPBACK}:{port}", flush=True)
        base = f"http://{LOOPBACK}:{port}"
        with httpx.Client(base_url=base, timeout=30) as client:
            for name, method, path, headers, body, expected in http_cases(w, f["vids"]):
                t1 = time.time()
                try:
                    r = send(client, method, path, headers, body)
                    status, text = r.status_code, r.text
                except httpx.TimeoutException:
                    status, text = "hang", ""
                except httpx.HTTPError as e:
                    status, text = "error", type(e).__name__
                outcome = classify_http(status, expected, text)
                detail = text[:200].replace("\n", " ")
                results.append(
                    Outcome(
                        name,
                        "server",
                        outcome,
                        status if isinstance(status, int) else -1,
                        time.time() - t1,
                        detail,
                    )
                )
            # storage: 15 uploads of 4.9 MB against a 12 MB cap
            blob = padded_video(f["vids"] / "demo.mp4", w / "server_49.mp4", int(4.9e6))
            statuses = []
            for i in range(15):
                r = client.post(
                    "/api/videos", files={"file": (f"u{i}.mp4", blob.read_bytes(), "video/mp4")}
                )
                statuses.append(r.status_code)
            kept = statuses.count(201)
            full = [s for s in statuses if s != 201]
            ok = kept <= 2 and full and all(s == 507 for s in full)
            results.append(
                Outcome(
                    "15 uploads of 4.9 MB, 12 MiB storage cap",
                    "server",
                    "clear" if ok else "unexpected",
                    0,
                    0.0,
                    f"statuses {Counter(statuses)}",
                )
            )

            # 100 concurrent searches
            def search(i: int) -> int | str:
                try:
                    body = {"query": ["a person", "a door", "a cup"][i % 3], "top_k": 3}
                    return client.post("/api/search", json=body, timeout=60).status_code
                except httpx.TimeoutException:
                    return "hang"

            t1 = time.time()
            with ThreadPoolExecutor(100) as pool:
                got = list(pool.map(search, range(100)))
            counts = Counter(str(g) for g in got)
            bad = sum(1 for g in got if g not in (200, 503))
            results.append(
                Outcome(
                    "100 concurrent library searches",
                    "server",
                    "clear" if not bad else "500",
                    0,
                    time.time() - t1,
                    f"statuses {dict(counts)}",
                )
            )
        exit_s = stop_server(proc)
        results.append(
            Outcome(
                "SIGTERM an idle server",
                "server",
                "clear" if exit_s is not None and exit_s < 10 else "hang",
                0,
                exit_s or -1.0,
                f"exit after {exit_s} s",
            )
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # crafted checkpoints: exit with one line, never listening
    for key in CRAFTED_CHECKPOINTS:
        port = free_port()
        t1 = time.time()
        proc = start_server(w, ["--db", "lib.db", "--checkpoint", str(b[key])], log, port)
        listened = wait_listening(port, proc, 120)
        try:
            rc = proc.wait(5 if listened else 120)
        except subprocess.TimeoutExpired:
            rc = None
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        text = log.read_text()
        lines = [line for line in text.strip().splitlines() if line.strip()]
        outcome = "hang" if rc is None else classify(rc, text)
        if listened:
            outcome = "unexpected"  # it started serving with a bad checkpoint
        results.append(
            Outcome(
                f"serve --checkpoint {key}",
                "server",
                outcome,
                rc if rc is not None else -1,
                time.time() - t1,
                lines[-1][:300] if lines else "",
            )
        )
    return results


# -------------------------------------------------------------------------------------- faults
def can_mount(w: Path) -> bool:
    probe = w / "mnt_probe"
    probe.mkdir()
    ok = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)], capture_output=True
        ).returncode
        == 0
    )
    if ok:
        subprocess.run(["umount", str(probe)], capture_output=True)
    return ok


def spawn(args: list[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "momentkit", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def db_ok(db: Path) -> bool:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def faults(w: Path, f: dict[str, Path]) -> list[Outcome]:
    ann, feats = f["ann"], f["feats"]
    results: list[Outcome] = []

    def record(name: str, ok: bool, detail: str, seconds: float) -> None:
        results.append(Outcome(name, "fault", "survived" if ok else "FAILED", 0, seconds, detail))

    train = [
        "train",
        "--model",
        "qd_detr",
        "--preset",
        "synth",
        "--train",
        str(ann / "train.jsonl"),
        "--video-features",
        str(feats / "slowfast"),
        str(feats / "clip"),
        "--text-features",
        str(feats / "clip_text"),
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--set",
        *TINY,
        "trainer.checkpoint_every=1",
    ]

    # kill -9 while training (3 times at different moments), then --resume
    for i, delay in enumerate((0.5, 1.5, 3.0)):
        t0 = time.time()
        out = w / "faults" / f"train{i}"
        proc = spawn([*train, "--out", str(out)], w)
        wait_for(lambda o=out: (o / "last" / "model.safetensors").exists(), 120)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        r = momentkit([*train, "--out", str(out), "--resume"], w)
        ok = r.returncode == 0 and (out / "best" / "model.safetensors").exists()
        record(
            f"kill -9 train ({delay} s after a checkpoint) + --resume",
            ok,
            r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "",
            time.time() - t0,
        )

    # kill -9 while packing: no partial store, source intact, a re-run works
    import numpy as np

    big = w / "faults" / "big_src"
    big.mkdir(parents=True)
    for j in range(3000):
        np.savez(big / f"v{j:05d}.npz", features=np.ones((50, 256), np.float32))
    for delay in (0.3, 1.0):
        t0 = time.time()
        dst = w / "faults" / f"packed_{delay}"
        proc = spawn(["pack", str(big), str(dst), "--no-progress"], w)
        time.sleep(1.5 + delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        partial = dst.exists() and not (dst / "index.json").exists()
        source_ok = len(list(big.iterdir())) == 3000
        r = momentkit(["pack", str(big), str(dst), "--no-progress", "--overwrite"], w)
        record(
            f"kill -9 pack ({1.5 + delay} s in) + re-run",
            not partial and source_ok and r.returncode == 0,
            r.stderr.strip()[-200:],
            time.time() - t0,
        )

    # kill -9 while indexing, then the library is consistent and a re-run finishes
    vids = w / "faults" / "vids"
    vids.mkdir()
    for j in range(4):
        shutil.copy(f["vids"] / "demo.mp4", vids / f"v{j}.mp4")
        with open(vids / f"v{j}.mp4", "ab") as fh:  # other bytes: four distinct videos
            fh.write(bytes([j]) * 16)
    for delay in (1.0, 6.0):
        t0 = time.time()
        db = w / "faults" / f"kill_{delay}.db"
        proc = spawn(["index", str(vids), "--db", str(db), "--no-progress"], w)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        consistent = not db.exists() or db_ok(db)
        r = momentkit(["index", str(vids), "--db", str(db), "--no-progress"], w)
        record(
            f"kill -9 index ({delay} s in) + re-run",
            consistent and r.returncode == 0 and db_ok(db),
            r.stdout.strip()[-120:],
            time.time() - t0,
        )

    # two indexers on one library
    t0 = time.time()
    db = w / "faults" / "concurrent.db"
    a = spawn(["index", str(vids), "--db", str(db), "--no-progress"], w)
    time.sleep(2.0)
    rb = momentkit(["index", str(vids), "--db", str(db), "--no-progress"], w)
    a.wait()
    rb_clear = classify(rb.returncode, rb.stderr) in ("clear", "success")
    record(
        "two concurrent `momentkit index` on one library",
        a.returncode == 0 and rb_clear and "Traceback" not in rb.stderr and db_ok(db),
        rb.stderr.strip().splitlines()[-1] if rb.stderr.strip() else "",
        time.time() - t0,
    )

    if not can_mount(w):
        print("faults: cannot mount a tmpfs (not root?): disk-full and read-only cases skipped")
        return results
    # a full disk: clear errors, previous files intact, consistent library
    full = w / "faults" / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(full)], check=True)
    try:
        (full / "metrics.json").write_text('{"old": true}')
        filler = full / "filler"
        try:  # fill the disk (the error comes at the write or at the close)
            with open(filler, "wb") as fh:
                fh.write(b"\0" * (600 << 10))
        except OSError:
            pass
        cases_full = [
            (
                "evaluate --out on a full disk",
                [
                    "evaluate",
                    str(f["run"] / "val_preds.jsonl"),
                    str(ann / "val.jsonl"),
                    "--out",
                    str(full / "metrics.json"),
                ],
                lambda: (full / "metrics.json").read_text() == '{"old": true}',
            ),
            (
                "pack onto a full disk",
                ["pack", str(feats / "clip"), str(full / "packed"), "--no-progress"],
                lambda: not (full / "packed").exists(),
            ),
            ("train --out on a full disk", [*train, "--out", str(full / "run")], lambda: True),
        ]
        for name, args, intact in cases_full:
            t0 = time.time()
            r = momentkit(args, w)
            outcome = classify(r.returncode, r.stderr)
            record(name, outcome == "clear" and intact(), r.stderr.strip()[-200:], time.time() - t0)
        filler.unlink()
        with open(filler, "wb") as fh:  # leave about 150 KiB: the index fills it up
            fh.write(b"\0" * (450 << 10))
        # (the library's first write is the empty database file: a run that fills the disk)
        # index until the disk fills up
        t0 = time.time()
        db = full / "lib.db"
        r = momentkit(["index", str(vids), "--db", str(db), "--no-progress"], w)
        outcome = classify(r.returncode, r.stderr)
        ok = outcome in ("clear", "success") and (not db.exists() or db_ok(db))
        record("index onto a disk that fills up", ok, r.stderr.strip()[-200:], time.time() - t0)
    finally:
        subprocess.run(["umount", str(full)], capture_output=True)

    # a library on a read-only file system: searchable, not indexable
    ro = w / "faults" / "ro"
    ro.mkdir()
    shutil.copy(w / "lib.db", w / "faults" / "lib_copy.db")
    src_dir = w / "faults" / "ro_src"
    src_dir.mkdir()
    shutil.move(w / "faults" / "lib_copy.db", src_dir / "lib.db")
    subprocess.run(["mount", "--bind", str(src_dir), str(ro)], check=True)
    subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True)
    try:
        t0 = time.time()
        r = momentkit(["query", "a person", "--db", str(ro / "lib.db")], w)
        record(
            "query a library on a read-only file system",
            r.returncode == 0,
            r.stderr.strip()[-200:],
            time.time() - t0,
        )
        t0 = time.time()
        r = momentkit(["index", "vids", "--db", str(ro / "lib.db"), "--no-progress"], w)
        record(
            "index into a library on a read-only file system",
            classify(r.returncode, r.stderr) == "clear",
            r.stderr.strip()[-200:],
            time.time() - t0,
        )
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)
    return results


# ------------------------------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", action="store_true", help="also run the fault cases")
    parser.add_argument("--faults-only", action="store_true", help="run only the fault cases")
    parser.add_argument("--server", action="store_true", help="also run the server battery")
    parser.add_argument("--server-only", action="store_true", help="run only the server battery")
    parser.add_argument("--only", help="run the input cases whose name contains this text")
    parser.add_argument("--keep", type=Path, help="build the workspace here and keep it")
    parser.add_argument("--json", type=Path, help="write every outcome here")
    args = parser.parse_args()

    w = args.keep or Path(tempfile.mkdtemp(prefix="momentkit-probe-"))
    w.mkdir(parents=True, exist_ok=True)
    start = time.time()
    print(f"workspace {w} ...", flush=True)
    f = build_workspace(w)
    b = bad_inputs(w, f)
    print(f"built in {time.time() - start:.0f} s", flush=True)
    results: list[Outcome] = []
    for case in cases(w, f, b):
        if (args.only and args.only not in case.name) or args.faults_only or args.server_only:
            continue
        t0 = time.time()
        try:
            r = momentkit(case.args, w)
            rc, err, stdout = r.returncode, r.stderr, r.stdout
        except subprocess.TimeoutExpired:
            rc, err, stdout = -9, "timed out", ""
        outcome = classify(rc, err, stdout)
        violations = case.check() if case.check else []
        if case.expect == "error" and outcome == "success":
            violations.append("succeeded where it must fail (silent wrong result)")
        if case.expect == "ok" and outcome != "success":
            violations.append("failed where it must succeed")
        lines = [line for line in err.strip().splitlines() if line.strip()]
        res = Outcome(
            case.name,
            case.group,
            outcome,
            rc,
            time.time() - t0,
            lines[-1][:300] if lines else "",
            violations,
        )
        results.append(res)
        mark = "!!" if outcome in ("traceback", "unclear") or violations else "  "
        print(f"{mark} {outcome:9s} {res.seconds:5.1f}s {case.name}: {res.last_line[:150]}")
        for v in violations:
            print(f"     VIOLATION: {v}")
    server_results = server_battery(w, f, b) if args.server or args.server_only else []
    for res in server_results:
        mark = "  " if res.outcome == "clear" else "!!"
        print(f"{mark} {res.outcome:10s} {res.seconds:5.1f}s {res.name}: {res.last_line[:150]}")
    fault_results = faults(w, f) if args.faults or args.faults_only else []
    for res in fault_results:
        print(
            f"{'  ' if res.outcome == 'survived' else '!!'} {res.outcome:9s} "
            f"{res.seconds:5.1f}s {res.name}: {res.last_line[:150]}"
        )

    counts = Counter(r.outcome for r in results)
    violations = [v for r in results for v in r.violations]
    lost = [v for v in violations if "silent" not in v and "must succeed" not in v]
    summary = {
        "inputs_tried": len(results),
        "clear_errors": counts["clear"],
        "successes": counts["success"],
        "tracebacks": counts["traceback"],
        "unclear": counts["unclear"],
        "silent_wrong_results": sum("silent" in v for v in violations),
        "data_lost_or_escaped": len(lost),
        "server_requests_tried": len(server_results),
        "server_clear": sum(r.outcome == "clear" for r in server_results),
        "server_500": sum(r.outcome == "500" for r in server_results),
        "server_hang": sum(r.outcome == "hang" for r in server_results),
        "server_unexpected": sum(r.outcome not in ("clear", "500", "hang") for r in server_results),
        "faults_tried": len(fault_results),
        "faults_survived": sum(r.outcome == "survived" for r in fault_results),
        "seconds": round(time.time() - start, 1),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "summary": summary,
                    "cases": [r.__dict__ for r in results + server_results + fault_results],
                },
                indent=1,
            )
        )
    if not args.keep:
        shutil.rmtree(w, ignore_errors=True)
    bad = summary["tracebacks"] + summary["unclear"] + len(violations)
    bad += summary["faults_tried"] - summary["faults_survived"]
    bad += summary["server_requests_tried"] - summary["server_clear"]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
