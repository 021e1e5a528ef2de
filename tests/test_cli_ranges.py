"""Numeric options are range-checked by argparse: an out-of-range value (0, -1, NaN, inf, a
relevance above 1, ...) is a one-line usage error naming the option and the allowed range, exit
status 2, never a traceback from deep inside the command; the smallest valid value still runs."""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import pytest
from cli_helpers import usage_error

from momentkit.cli.common import (
    at_least,
    in_range,
    int_in_range,
    non_negative_float,
    positive_float,
    unit_interval,
)
from momentkit.cli.main import build_parser, main


# ------------------------------------------------------------------------------- the new types
def _rejects(parse, text: str) -> str:
    with pytest.raises(argparse.ArgumentTypeError) as err:
        parse(text)
    return str(err.value)


@pytest.mark.parametrize(
    "parse, good, bad, message",
    [
        (positive_float, ["1e-9", "2", "0.5", " 3 "], ["0", "-0", "-1", "nan", "inf", "-inf",
         "1e400", "x", ""], "must be a finite number > 0, got {!r}"),
        (non_negative_float, ["0", "-0", "7.5"], ["-1e-9", "-1", "nan", "NaN", "inf", "x"],
         "must be a finite number >= 0, got {!r}"),
        (unit_interval, ["0", "1", "0.5", "1.0"], ["1.5", "-0.1", "1.0000001", "nan", "inf", "x"],
         "must be a number in [0, 1], got {!r}"),
        (in_range(0, 1, low_open=True, high_open=True), ["0.5", "1e-12"], ["0", "1", "nan"],
         "must be a number in (0, 1), got {!r}"),
        (in_range(high=10, high_open=True), ["-5", "9.99"], ["10", "inf", "-inf", "nan"],
         "must be a finite number < 10, got {!r}"),
        (in_range(), ["-1e300", "0", "1e300"], ["nan", "inf", "-inf", "1e400", "one"],
         "must be a finite number, got {!r}"),
    ],
)  # fmt: skip
def test_float_types_accept_and_reject(parse, good, bad, message) -> None:
    for text in good:
        value = parse(text)
        assert isinstance(value, float) and value == float(text) and math.isfinite(value)
    for text in bad:
        assert _rejects(parse, text) == message.format(text)


def test_int_in_range() -> None:
    port = int_in_range(1, 65535)
    assert port("1") == 1 and port("65535") == 65535 and port("8000") == 8000
    for text in ("0", "-1", "65536", "1.5", "nan", "x"):
        assert _rejects(port, text) == f"must be an integer in [1, 65535], got {text!r}"


def test_the_types_are_named_for_argparse() -> None:
    assert positive_float.__name__ == "a finite number > 0"
    assert unit_interval.__name__ == "a number in [0, 1]"
    assert at_least(1).__name__ == "integer >= 1"
    assert int_in_range(1, 65535).__name__ == "integer in [1, 65535]"


# ----------------------------------------------------------- every range-checked option, by kind
#: the required arguments of each command (never read: parsing fails or is all that runs)
BASE: dict[str, list[str]] = {
    "augment": ["augment", "a.jsonl", "--out", "c.jsonl"],
    "cotrain": ["cotrain", "--out", "run"],
    "demo": ["demo"],
    "evaluate": ["evaluate", "p.jsonl", "g.jsonl"],
    "extract": ["extract", "v.mp4", "--out", "feats"],
    "index": ["index", "videos", "--db", "lib.db"],
    "predict": ["predict", "--checkpoint", "run", "--annotations", "a.jsonl", "--video-features",
                "v", "--text-features", "t", "--out", "p.jsonl"],
    "pseudo-label": ["pseudo-label", "--captions", "c.jsonl", "--video-features", "v",
                     "--text-features", "t", "--out", "o.jsonl"],
    "query": ["query", "a dog", "--db", "lib.db"],
    "search": ["search", "v.mp4", "a dog"],
    "serve": ["serve"],
    "synth": ["synth", "out"],
    "train": ["train", "--out", "run"],
    "bench calibration": ["bench", "calibration", "--data", "d"],
    "bench cli": ["bench", "cli"],
    "bench cotrain": ["bench", "cotrain", "--data", "d", "--out", "o"],
    "bench evaluate": ["bench", "evaluate"],
    "bench extract": ["bench", "extract"],
    "bench learn": ["bench", "learn", "--data", "d", "--out", "o", "--variant", "x=qd_detr"],
    "bench long-video": ["bench", "long-video"],
    "bench probe": ["bench", "probe", "--data", "d", "--model", "qd_detr"],
    "bench search": ["bench", "search"],
}  # fmt: skip

#: kind -> (smallest valid value, [(bad value, message), ...])
KINDS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "int>=0": ("0", [("-1", "must be an integer >= 0, got '-1'"),
                     ("1.5", "must be an integer >= 0, got '1.5'")]),
    "int>=1": ("1", [("0", "must be an integer >= 1, got '0'"),
                     ("-1", "must be an integer >= 1, got '-1'")]),
    "int>=2": ("2", [("1", "must be an integer >= 2, got '1'"),
                     ("-1", "must be an integer >= 2, got '-1'")]),
    "port": ("1", [("0", "must be an integer in [1, 65535], got '0'"),
                   ("65536", "must be an integer in [1, 65535], got '65536'")]),
    ">0": ("1e-06", [("0", "must be a finite number > 0, got '0'"),
                     ("-1", "must be a finite number > 0, got '-1'"),
                     ("nan", "must be a finite number > 0, got 'nan'"),
                     ("inf", "must be a finite number > 0, got 'inf'")]),
    ">=0": ("0", [("-1", "must be a finite number >= 0, got '-1'"),
                  ("nan", "must be a finite number >= 0, got 'nan'"),
                  ("inf", "must be a finite number >= 0, got 'inf'")]),
    "[0,1]": ("0", [("1.5", "must be a number in [0, 1], got '1.5'"),
                    ("-0.1", "must be a number in [0, 1], got '-0.1'"),
                    ("nan", "must be a number in [0, 1], got 'nan'")]),
}  # fmt: skip

#: (command, option, kind, values taken: 1 or the option's nargs)
OPTIONS: list[tuple[str, str, str, int]] = [
    ("augment", "--per-generator", "int>=1", 1),
    ("augment", "--seed", "int>=0", 1),
    ("augment", "--start-id", "int>=0", 1),
    ("augment", "--batch-size", "int>=1", 1),
    ("cotrain", "--pretrain-epochs", "int>=0", 1),
    ("cotrain", "--epochs", "int>=0", 1),
    ("cotrain", "--batch-size", "int>=1", 1),
    ("demo", "--seed", "int>=0", 1),
    ("demo", "--train", "int>=0", 1),
    ("demo", "--val", "int>=1", 1),
    ("evaluate", "--clip-len", ">0", 1),
    ("extract", "--clip-len", ">0", 1),
    ("extract", "--frames-per-clip", "int>=1", 1),
    ("extract", "--batch-size", "int>=1", 1),
    ("extract", "--threads", "int>=1", 1),
    ("extract", "--decode-threads", "int>=0", 1),
    ("extract", "--ray-cpus-per-task", ">0", 1),
    ("extract", "--max-clips", "int>=0", 1),
    ("index", "--clip-len", ">0", 1),
    ("index", "--max-clips", "int>=0", 1),
    ("predict", "--batch-size", "int>=1", 1),
    ("pseudo-label", "--clip-len", ">0", 1),
    ("pseudo-label", "--annotators", "int>=1", 1),
    ("pseudo-label", "--min-clips", "int>=1", 1),
    ("pseudo-label", "--batch-size", "int>=1", 1),
    ("query", "--top", "int>=1", 1),
    ("query", "--videos", "int>=1", 1),
    ("query", "--clips", "int>=1", 1),
    ("query", "--min-score", "[0,1]", 1),
    ("search", "--top", "int>=1", 1),
    ("search", "--clip-len", ">0", 1),
    ("search", "--min-score", "[0,1]", 1),
    ("search", "--max-clips", "int>=0", 1),
    ("serve", "--port", "port", 1),
    ("serve", "--max-upload-mb", ">0", 1),
    ("serve", "--max-upload-storage", ">=0", 1),
    ("serve", "--max-clips", "int>=0", 1),
    ("serve", "--search-timeout", ">0", 1),
    ("serve", "--queue-timeout", ">0", 1),
    ("serve", "--shutdown-timeout", ">0", 1),
    ("synth", "--train", "int>=0", 1),
    ("synth", "--val", "int>=0", 1),
    ("synth", "--seed", "int>=0", 1),
    ("synth", "--world-seed", "int>=0", 1),
    ("train", "--epochs", "int>=0", 1),
    ("train", "--batch-size", "int>=1", 1),
    ("bench calibration", "--bank", "int>=1", 1),
    ("bench calibration", "--queries", "int>=2", 1),  # negatives: other videos
    ("bench calibration", "--thresholds", "[0,1]", 1),
    ("bench calibration", "--seed", "int>=0", 1),
    ("bench cli", "--repeat", "int>=1", 1),
    ("bench cotrain", "--seeds", "int>=0", 1),
    ("bench cotrain", "--epochs", "int>=1", 1),
    ("bench cotrain", "--jobs", "int>=1", 1),
    ("bench cotrain", "--threads", "int>=1", 1),
    ("bench cotrain", "--make-data", "int>=0", 3),
    ("bench evaluate", "--repeat", "int>=1", 1),
    ("bench evaluate", "--official-repeat", "int>=1", 1),
    ("bench extract", "--repeat", "int>=1", 1),
    ("bench extract", "--threads", "int>=1", 1),
    ("bench extract", "--clip-len", ">0", 1),
    ("bench learn", "--make-data", "int>=0", 3),
    ("bench learn", "--seeds", "int>=0", 1),
    ("bench learn", "--epochs", "int>=1", 1),
    ("bench learn", "--jobs", "int>=1", 1),
    ("bench learn", "--threads", "int>=1", 1),
    ("bench long-video", "--lengths", ">0", 1),
    ("bench long-video", "--queries", "int>=1", 1),
    ("bench long-video", "--seed", "int>=0", 1),
    ("bench long-video", "--threads", "int>=1", 1),
    ("bench long-video", "--train-steps", "int>=1", 1),
    ("bench long-video", "--train-minutes", ">0", 2),
    ("bench long-video", "--batch-size", "int>=1", 1),
    ("bench long-video", "--selection-lr", ">0", 1),
    ("bench long-video", "--slowfast-dim", "int>=1", 1),
    ("bench probe", "--steps", "int>=1", 1),
    ("bench probe", "--every", "int>=1", 1),
    ("bench probe", "--train", "int>=1", 1),
    ("bench probe", "--val", "int>=1", 1),
    ("bench probe", "--seed", "int>=0", 1),
    ("bench search", "--clips", "int>=1", 1),
    ("bench search", "--dims", "int>=1", 1),
    ("bench search", "--queries", "int>=1", 1),
    ("bench search", "--clips-per-video", "int>=1", 1),
    ("bench search", "--n-clips", "int>=1", 1),
    ("bench search", "--n-videos", "int>=1", 1),
    ("bench search", "--copies", "int>=1", 1),
    ("bench search", "--e2e-repeat", "int>=1", 1),
    ("bench search", "--seed", "int>=0", 1),
]

BAD_CASES = [
    pytest.param(cmd, option, bad, message, n, id=f"{cmd} {option} {bad}")
    for cmd, option, kind, n in OPTIONS
    for bad, message in KINDS[kind][1]
]


@pytest.mark.parametrize("cmd, option, bad, message, n", BAD_CASES)
def test_out_of_range_is_ausage_error(cmd, option, bad, message, n, capsys) -> None:
    # the bad value comes last of the option's values: the others are valid
    smallest = KINDS[next(k for c, o, k, _ in OPTIONS if (c, o) == (cmd, option))][0]
    err = usage_error([*BASE[cmd], option, *[smallest] * (n - 1), bad], capsys)
    assert f"momentkit {cmd}: error: argument {option}: {message}" in err
    assert len(err.strip().splitlines()[-1]) < 200  # one line after the usage


@pytest.mark.parametrize(
    "cmd, option, kind, n", [pytest.param(*o, id=f"{o[0]} {o[1]}") for o in OPTIONS]
)
def test_the_smallest_valid_value_parses(cmd, option, kind, n) -> None:
    smallest = KINDS[kind][0]
    args = build_parser(BASE[cmd][0]).parse_args([*BASE[cmd], option, *[smallest] * n])
    value = getattr(args, option.lstrip("-").replace("-", "_"))
    values = value if isinstance(value, list) else [value]
    assert values == [type(values[0])(smallest)] * n
    assert isinstance(values[0], float if kind in (">0", ">=0", "[0,1]") else int)


def test_every_numeric_option_is_range_checked() -> None:
    """No ``type=int`` / ``type=float`` is left in the commands and benchmarks covered here."""
    root = Path(__file__).resolve().parents[1] / "momentkit"
    excluded = {"train.py", "infer.py", "arithmetic.py"}  # benchmarks checked elsewhere
    files = list((root / "cli").glob("*.py")) + [
        p
        for p in (root / "benchmarks").glob("*.py")
        if p.name not in excluded and not p.name.startswith("official")
    ]
    unchecked = [
        f"{p.relative_to(root)}:{i}"
        for p in files
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"\btype=(int|float)\b", line)
    ]
    assert not unchecked, unchecked


def test_defaults_are_unchanged() -> None:
    args = build_parser("serve").parse_args(["serve"])
    assert (args.port, args.max_upload_mb, args.max_upload_storage, args.max_clips) == (
        8000,
        200.0,
        2048.0,
        5400,
    )
    args = build_parser("bench").parse_args(BASE["bench long-video"])
    assert args.lengths == [10.0, 30.0, 60.0] and args.train_minutes == [10.0, 20.0]
    args = build_parser("search").parse_args(BASE["search"])
    assert (args.top, args.clip_len, args.min_score) == (5, 2.0, None)


# --------------------------------------------------- the smallest valid values run (cheap ones)
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from momentkit.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("ranges")
    generate(SynthConfig(num_train=6, num_val=4, seed=0), root / "synth", progress=False)
    return root / "synth"


def test_synth_with_empty_splits_and_seed_0(tmp_path, capsys) -> None:
    argv = ["synth", str(tmp_path / "s"), "--train", "0", "--val", "0", "--seed", "0"]
    assert main([*argv, "--world-seed", "0", "--no-progress"]) == 0
    assert "train: 0 queries" in capsys.readouterr().out


def test_demo_synthetic_with_one_val_query(tmp_path, capsys) -> None:
    argv = ["demo", "--synthetic", "--workdir", str(tmp_path), "--train", "0", "--val", "1"]
    assert main([*argv, "--seed", "0"]) == 0
    assert "similarity baseline, synthetic val (1 queries)" in capsys.readouterr().out


def test_evaluate_and_pseudo_label_with_small_values(tiny, tmp_path, capsys) -> None:
    from momentkit.utils.io import read_jsonl

    val = tiny / "annotations" / "val.jsonl"
    rows = list(read_jsonl(val))
    preds = tmp_path / "p.jsonl"
    preds.write_text(
        "".join(
            json.dumps({"qid": r["qid"], "vid": r["vid"], "pred_relevant_windows": [[0, 2, 1]]})
            + "\n"
            for r in rows
        )
    )
    assert main(["evaluate", str(preds), str(val), "--clip-len", "0.5"]) == 0
    captions = tmp_path / "caps.jsonl"
    captions.write_text(
        "".join(
            json.dumps(
                {
                    "qid": r["qid"],
                    "vid": r["vid"],
                    "caption": r["query"],
                    "start": r["relevant_windows"][0][0],
                    "end": r["relevant_windows"][0][1],
                    "duration": r["duration"],
                }
            )
            + "\n"
            for r in rows
        )
    )
    feats = tiny / "features"
    argv = ["pseudo-label", "--captions", str(captions), "--video-features", str(feats / "clip")]
    argv += ["--text-features", str(feats / "clip_text"), "--out", str(tmp_path / "pl.jsonl")]
    assert main([*argv, "--annotators", "1", "--min-clips", "1", "--batch-size", "1"]) == 0
    assert "pseudo-labelled queries" in capsys.readouterr().out


def test_bench_search_with_one_of_everything(capsys) -> None:
    argv = ["bench", "search", "--skip-e2e", "--clips", "1", "--dims", "1", "--queries", "1"]
    argv += ["--clips-per-video", "1", "--n-clips", "1", "--n-videos", "1", "--seed", "0"]
    assert main(argv) in (0, 1)  # 1: a median over 100 ms (a loaded machine)
    assert "coarse retrieval over 1 clips" in capsys.readouterr().out


def test_bench_calibration_with_small_values(tiny, capsys) -> None:
    argv = ["bench", "calibration", "--data", str(tiny), "--bank", "1", "--queries", "2"]
    assert main([*argv, "--thresholds", "0", "1", "--seed", "0"]) == 0
    assert "ROC AUC" in capsys.readouterr().out
