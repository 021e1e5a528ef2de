"""The ``momentkit bench`` commands run end to end at tiny sizes and report what they measure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from momentkit.benchmarks.learn import Variant, format_table
from momentkit.cli.main import main

TINY = [
    "hidden_dim=16", "dim_feedforward=32", "nheads=2", "num_queries=4", "enc_layers=1",
    "dec_layers=1",
]  # fmt: skip


def test_bench_train_reports_step_and_epoch_ratios(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    argv = ["bench", "train", "--model", "moment_detr", "--batch-size", "4", "--clips", "12"]
    argv += ["--tokens", "6", "--steps", "2", "--warmup", "1", "--items", "8", "--threads", "1"]
    assert main([*argv, "--set", *TINY, "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["step_s"] > 0 and figures["samples_per_s"] == pytest.approx(
        4 / figures["step_s"], rel=0.01
    )
    for store in ("npz", "packed"):
        assert figures[f"epoch_{store}_ratio"] > 0
        assert figures[f"epoch_{store}_s"] > 0


def test_bench_extract_times_an_encoder(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("av")
    assert main(["bench", "extract", "--encoder", "motion", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "motion" in out and "30.7" in out and "x" in out


def test_variant_parsing_and_table() -> None:
    v = Variant.parse("QD-DETR + loop=qd_detr model.decoder_loops=3 optim.lr=2e-4")
    assert (v.label, v.model, v.overrides) == (
        "QD-DETR + loop", "qd_detr", ("model.decoder_loops=3", "optim.lr=2e-4"),
    )  # fmt: skip
    assert v.slug == "qd_detr___loop"
    with pytest.raises(ValueError, match="LABEL=MODEL"):
        Variant.parse("no model")
    brief = {
        "MR-full-mAP": 10.0, "MR-full-R1@0.5": 20.0, "MR-full-R1@0.7": 5.0,
        "HL-min-VeryGood-mAP": 30.0, "HL-min-VeryGood-Hit1": 40.0,
    }  # fmt: skip
    other = {k: v + 2.0 for k, v in brief.items()}
    table = format_table({"a": [brief], "b": [brief, other]})
    lines = table.splitlines()
    assert lines[2] == "| a | 1 | 10.00 | 20.00 | 5.00 | 30.00 | 40.00 |"
    assert lines[3].startswith("| b | 2 | 11.00 ± 1.41 | 21.00 ± 1.41 |")
