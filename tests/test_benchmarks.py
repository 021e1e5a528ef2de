"""The ``momentkit bench`` commands run end to end at tiny sizes and report what they measure."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from momentkit.benchmarks.learn import Variant, format_table, wants_corpus
from momentkit.cli.main import main

TINY = [
    "hidden_dim=16", "dim_feedforward=32", "nheads=2", "num_queries=4", "enc_layers=1",
    "dec_layers=1",
]  # fmt: skip


def test_bench_train_reports_step_and_epoch_ratios(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    argv = ["bench", "train", "--model", "moment_detr", "--batch-size", "4", "--clips", "12"]
    argv += ["--tokens", "6", "--steps", "2", "--warmup", "1", "--items", "8", "--threads", "1"]
    argv += ["--epoch-rounds", "2"]
    assert main([*argv, "--set", *TINY, "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["step_s"] > 0 and figures["samples_per_s"] == pytest.approx(
        4 / figures["step_s"], rel=0.01
    )
    assert 0 < figures["step_cpu_s"] < 10 * figures["step_s"]  # one thread: CPU time ~ wall time
    assert figures["epoch_rounds"] == 2 and figures["epoch_compute_s"] > 0
    for store in ("npz", "packed"):
        low, high = figures[f"epoch_{store}_ratio_range"]
        assert 0 < low <= figures[f"epoch_{store}_ratio"] <= high
        assert figures[f"epoch_{store}_s"] > 0


def test_epoch_ratios_pair_each_round_with_its_own_compute_epoch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The epoch test alternates compute, npz and packed epochs; each store's ratio is taken
    against the compute epoch of the same round (a drifting machine affects both alike)."""
    from momentkit.benchmarks import train

    order: list[str] = []
    store_times = {"npz": iter([1.2, 2.6, 3.3]), "packed": iter([1.0, 2.0, 3.0])}

    def epoch(model, criterion, optimizer, dataset, batch_size, dtype):  # noqa: ANN001, ANN202
        order.append(dataset)
        return next(store_times[dataset]), 10

    compute_times = iter([1.0, 2.0, 3.0])

    def compute(model, criterion, optimizer, batch, steps, dtype):  # noqa: ANN001, ANN202
        assert steps == 10  # as many steps as the stores' epochs took
        order.append("compute")
        return next(compute_times)

    monkeypatch.setattr(train, "_epoch_seconds", epoch)
    monkeypatch.setattr(train, "_compute_epoch_seconds", compute)
    figures = train._epoch_figures(
        None, None, None, {"npz": "npz", "packed": "packed"}, {}, 4, None, rounds=3
    )
    assert order == ["npz", "packed", "compute"] * 3
    assert figures["epoch_npz_ratio"] == pytest.approx(1.2)  # rounds: 1.2, 1.3, 1.1
    assert figures["epoch_npz_ratio_range"] == [1.1, 1.3]
    assert figures["epoch_packed_ratio"] == 1.0 and figures["epoch_compute_s"] == 2.0


def test_bench_train_steps_under_the_precision_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--precision bf16`` without official code: momentkit's forward runs under bf16 autocast
    (its linear layers compute in bf16 but for the float32 saliency head), the loss in float32,
    and the JSON says so; fp32 keeps every layer in float32."""
    import torch

    from momentkit.benchmarks.official import device_name
    from momentkit.modeling.linear import Linear

    seen: list[torch.dtype] = []
    forward = Linear.forward  # every linear layer of the models (oneDNN or F.linear inside)

    def recording(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        out = forward(self, x)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(Linear, "forward", recording)
    argv = ["bench", "train", "--model", "moment_detr", "--batch-size", "2", "--clips", "6"]
    argv += ["--tokens", "4", "--steps", "1", "--warmup", "0", "--items", "0", "--threads", "1"]
    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        seen.clear()
        out = tmp_path / f"{precision}.json"
        assert main([*argv, "--precision", precision, "--set", *TINY, "--json", str(out)]) == 0
        figures = json.loads(out.read_text())
        assert figures["precision"] == precision and figures["device"] == "cpu"
        assert figures["device_name"] == device_name("cpu")  # which processor ran it
        assert isinstance(figures["onednn_linear"], bool)  # which float32 kernel ran
        if dtype == torch.float32:
            assert seen and set(seen) == {torch.float32}
        else:  # the layers in bf16; the saliency head stays float32 (modeling/precision.py)
            assert seen.count(torch.bfloat16) > seen.count(torch.float32) > 0
        assert figures["step_s"] > 0


def test_bench_train_compile_alone_refuses_a_device_or_precision_it_would_ignore(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["bench", "train", "--model", "moment_detr", "--compile"]
    # a device this machine has (``--device cuda`` without a GPU is refused first, as such)
    device = "cuda" if torch.cuda.is_available() else "meta"
    for extra in (["--precision", "bf16"], ["--device", device]):
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert "compares compiled and eager steps on the CPU in fp32" in err
        assert "Traceback" not in err


@pytest.mark.parametrize("bench", ["train", "infer"])
def test_official_precision_needs_official_code(
    bench: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", bench, "--model", "moment_detr", "--official-precision", "fp32"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--official-precision needs --official-dir" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_info:  # not a precision the sides have
        main([*argv[:-1], "fp16"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_each_side_autocasts_at_its_own_precision() -> None:
    """``--precision bf16 --official-precision fp32``: momentkit's calls run under bf16
    autocast, the official side's in float32; without ``--official-precision`` both follow
    ``--precision``."""
    import torch

    from momentkit.benchmarks.official import OfficialPair

    def dtype_inside(context: object) -> torch.dtype:
        with context:  # type: ignore[attr-defined]
            return (torch.ones(2, 2) @ torch.ones(2, 2)).dtype

    pair = OfficialPair(None, "moment_detr", torch.device("cpu"), "bf16")
    assert dtype_inside(pair.autocast()) == dtype_inside(pair.official_autocast()) == torch.bfloat16
    pair.official_precision = "fp32"
    assert dtype_inside(pair.autocast()) == torch.bfloat16
    assert dtype_inside(pair.official_autocast()) == torch.float32
    plain = OfficialPair(None, "moment_detr", torch.device("cpu"), "fp32")
    assert (
        dtype_inside(plain.autocast()) == dtype_inside(plain.official_autocast()) == torch.float32
    )


def test_a_failure_inside_the_official_code_is_one_line_naming_its_file(tmp_path: Path) -> None:
    """The official LD-DETR fails under bf16 autocast (a dtype mismatch in its own module):
    the bench must name that file and line and the way round it, not print a traceback."""
    import importlib.util

    import torch

    from momentkit.benchmarks.official import OfficialPair
    from momentkit.benchmarks.official_env import OfficialCodeError

    (tmp_path / "ld_detr").mkdir()
    source = tmp_path / "ld_detr" / "methods.py"
    error = "RuntimeError('both inputs should have same dtype')"
    source.write_text(f"def forward():\n    raise {error}\n")
    spec = importlib.util.spec_from_file_location("fake_official_methods", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    pair = OfficialPair(tmp_path, "ld_detr", torch.device("cpu"), "bf16")
    with pytest.raises(OfficialCodeError) as err, pair.official_failures("a training step"):
        module.forward()
    message = str(err.value)
    assert "failed during a training step at ld_detr/methods.py:2" in message
    assert "RuntimeError: both inputs should have same dtype" in message
    assert "--official-precision fp32" in message and len(message.splitlines()) == 1
    pair.official_precision = "fp32"  # no bf16 hint when the official side ran in fp32
    with pytest.raises(OfficialCodeError) as err, pair.official_failures("inference"):
        module.forward()
    assert "--official-precision" not in str(err.value)


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
    partial = {k: v for k, v in brief.items() if not k.startswith("HL")}
    only = format_table({"c": [partial]}).splitlines()[2]
    assert only == "| c | 1 | 10.00 | 20.00 | 5.00 | - | - |"  # a metric no run reports


def test_bench_learn_end_to_end_and_resumes_unfinished_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = tmp_path / "synth", tmp_path / "learn"
    tiny = [f"model.{kv}" for kv in TINY] + ["trainer.batch_size=4", "data.eval_batch_size=8"]
    argv = ["bench", "learn", "--data", str(data), "--make-data", "12", "8", "0", "--out", str(out)]
    argv += ["--seeds", "0", "--epochs", "1", "--variant", "MD=moment_detr", "--set", *tiny]
    assert main(argv) == 0
    run = out / "md" / "seed0"
    assert (run / "bench_learn_done").exists() and (run / "best" / "config.json").exists()
    rows = json.loads((out / "results.json").read_text())
    assert set(rows) == {"per-clip similarity baseline", "MD"} and len(rows["MD"]) == 1
    table = (out / "table.md").read_text().splitlines()
    assert table[0].startswith("| variant | runs | mAP") and len(table) == 4
    # a finished run is reused, not retrained
    mtime = (run / "val_metrics.json").stat().st_mtime_ns
    assert main(argv) == 0
    assert (run / "val_metrics.json").stat().st_mtime_ns == mtime
    # --report trains nothing: the finished seed makes the table, the missing one is listed
    seeds = argv.index("--seeds")
    report = [*argv[: seeds + 1], "0", "1", *argv[seeds + 2 :], "--report", "--no-baseline"]
    capsys.readouterr()
    table_mtime = (out / "table.md").stat().st_mtime_ns
    assert main(report) == 0
    printed = capsys.readouterr().out
    assert f"not finished: MD seed 1 ({out / 'md' / 'seed1'}): not started" in printed
    assert "MD seed 0: mAP " in printed and " min trained)" in printed
    assert not (out / "md" / "seed1").exists()
    assert (out / "table.md").stat().st_mtime_ns == table_mtime  # a report writes nothing
    # a run without the marker (interrupted) is resumed from its last checkpoint and finished
    (run / "bench_learn_done").unlink()
    assert main([*argv[: -len(tiny)], *tiny, "trainer.epochs=2"]) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2]


def test_bench_learn_trains_ms_detr_on_the_generated_corpus(tmp_path: Path) -> None:
    # MS-DETR gets the benchmark's corpus (made once); use_corpus=false and other models do not
    data, out = tmp_path / "synth", tmp_path / "learn"
    args = argparse.Namespace(preset="synth", epochs=1, overrides=[])
    assert wants_corpus(data, Variant.parse("MS=ms_detr"), args)
    assert not wants_corpus(data, Variant.parse("MS=ms_detr model.use_corpus=false"), args)
    assert not wants_corpus(
        data, Variant.parse("MS=ms_detr data.corpus=c.jsonl data.corpus_text_features=f"), args
    )
    assert not wants_corpus(data, Variant.parse("QD=qd_detr"), args)
    tiny = [f"model.{kv}" for kv in TINY] + ["trainer.batch_size=4", "data.eval_batch_size=8"]
    argv = ["bench", "learn", "--data", str(data), "--make-data", "12", "8", "0", "--out", str(out)]
    argv += ["--seeds", "0", "--epochs", "1", "--no-baseline", "--variant", "MS=ms_detr"]
    argv += ["--variant", "MS w/o corpus=ms_detr model.use_corpus=false", "--set", *tiny]
    assert main(argv) == 0
    corpus = data / "corpus" / "train.jsonl"
    n_generated = len(corpus.read_text().splitlines())
    assert n_generated > 12 and len(list((data / "features" / "aug_text").iterdir())) == n_generated
    for slug, with_corpus in (("ms", True), ("ms_w_o_corpus", False)):
        run = out / slug / "seed0"
        config = json.loads((run / "config.json").read_text())
        assert (config["data"]["corpus"] == str(corpus)) is with_corpus
        train_losses = json.loads((run / "log.jsonl").read_text().splitlines()[0])["train"]
        assert ("loss_corpus_contrast" in train_losses) is with_corpus


def test_bench_learn_progress_of_an_unfinished_run(tmp_path: Path) -> None:
    from momentkit.benchmarks.learn import run_progress

    run = tmp_path / "run"
    run.mkdir()
    assert run_progress(run) == "not started"
    (run / "config.json").write_text(json.dumps({"trainer": {"epochs": 30}}))
    epochs = [  # epoch 2 logged twice: the later entry counts
        (1, 10.0, 600.0),
        (2, 31.5, 620.0),
        (2, 30.25, 900.0),
        (3, 20.0, 840.0),
    ]
    (run / "log.jsonl").write_text("".join(
        json.dumps({"epoch": e, "metrics": {"MR-full-mAP": m}, "time": {"train": t, "eval": 20.0}})
        + "\n" for e, m, t in epochs
    ))  # fmt: skip
    assert run_progress(run) == "epoch 3 of 30, best MR-full-mAP 30.25 (epoch 2), 40 min"


def test_bench_learn_parallel_jobs_give_the_sequential_results(tmp_path: Path) -> None:
    # two runs at once, each in its own process, train exactly what one-after-another trains
    data = tmp_path / "synth"
    tiny = [f"model.{kv}" for kv in TINY] + ["trainer.batch_size=4", "data.eval_batch_size=8"]
    argv = ["bench", "learn", "--data", str(data), "--make-data", "12", "8", "0", "--no-baseline"]
    argv += ["--seeds", "0", "1", "--epochs", "1", "--variant", "MD=moment_detr"]
    assert main([*argv, "--out", str(tmp_path / "seq"), "--threads", "1", "--set", *tiny]) == 0
    par = ["--out", str(tmp_path / "par"), "--jobs", "2", "--threads", "1", "--set", *tiny]
    assert main([*argv, *par]) == 0
    seq = json.loads((tmp_path / "seq" / "results.json").read_text())["MD"]
    par_rows = json.loads((tmp_path / "par" / "results.json").read_text())["MD"]
    assert par_rows == seq and len(seq) == 2 and seq[0] != seq[1]  # seed order kept
    for seed in (0, 1):
        assert (tmp_path / "par" / "md" / f"seed{seed}" / "bench_learn_done").exists()


def test_run_parallel_runs_jobs_in_other_processes_and_checks_jobs() -> None:
    import os

    from momentkit.benchmarks.parallel import run_parallel

    done = list(run_parallel(pow, [(2, 3), (3, 2), (2, 5)], workers=2, threads=1))
    assert sorted((job, result) for job, result, _ in done) == [
        ((2, 3), 8), ((2, 5), 32), ((3, 2), 9)
    ]  # fmt: skip
    assert all(seconds >= 0 for _, _, seconds in done)
    pids = [pid for _, pid, _ in run_parallel(os.getpid, [(), ()], workers=2)]
    assert os.getpid() not in pids
    assert [r for _, r, _ in run_parallel(pow, [(2, 2)])] == [4]  # workers=1: here, in order
    with pytest.raises(ValueError, match="--jobs must be >= 1"):
        list(run_parallel(pow, [(2, 2)], workers=0))


def test_pairwise_ranking_accuracy_counts_ordered_pairs() -> None:
    import torch

    from momentkit.benchmarks.probe import pairwise_ranking_accuracy

    labels = torch.tensor([[0.0, 1.0, 2.0, 0.0]])
    mask = torch.tensor([[True, True, True, False]])  # the last clip is padding
    # pairs with labels[i] > labels[j] among valid clips: (1,0), (2,0), (2,1)
    assert pairwise_ranking_accuracy(torch.tensor([[0.0, 1.0, 2.0, 9.0]]), labels, mask) == (3, 3)
    assert pairwise_ranking_accuracy(torch.tensor([[2.0, 1.0, 0.0, 9.0]]), labels, mask) == (0, 3)
    assert pairwise_ranking_accuracy(torch.tensor([[0.0, 2.0, 1.0, 9.0]]), labels, mask) == (2, 3)
    assert pairwise_ranking_accuracy(torch.zeros(1, 4), labels, mask) == (0, 3)  # ties are wrong


def test_bench_probe_reports_accuracy_every_few_steps(tmp_path: Path) -> None:
    data, out = tmp_path / "synth", tmp_path / "probe.json"
    assert main(["synth", str(data), "--train", "12", "--val", "8", "--seed", "0"]) == 0
    argv = ["bench", "probe", "--data", str(data), "--model", "qd_detr", "--steps", "4"]
    argv += ["--every", "2", "--train", "8", "--val", "4", "--json", str(out)]
    assert main([*argv, "--set", *[f"model.{kv}" for kv in TINY], "trainer.batch_size=4"]) == 0
    reports = json.loads(out.read_text())["reports"]
    assert [r["step"] for r in reports] == [2, 4]
    for r in reports:
        assert 0.0 <= r["train_accuracy"] <= 1.0 and 0.0 <= r["val_accuracy"] <= 1.0
        assert "loss_saliency_rank" in r and r["seconds"] > 0


def test_bench_calibration_scores_positives_and_true_negatives(tmp_path: Path) -> None:
    """Every validation query on its own video and on a video without a matching event (the
    generator's own rule), zero-shot and with a trained checkpoint; rates in [0, 1], the
    untresholded row keeps every answer, stricter thresholds reject at least as many."""
    from momentkit.benchmarks.calibration import _matches, roc_auc

    data, out = tmp_path / "synth", tmp_path / "calib.json"
    assert main(["synth", str(data), "--train", "24", "--val", "12", "--seed", "0"]) == 0
    run = tmp_path / "run"
    train = ["train", "--model", "qd_detr", "--preset", "synth", "--out", str(run), "--epochs", "1"]
    train += ["--train", str(data / "annotations/train.jsonl")]
    train += ["--val", str(data / "annotations/val.jsonl")]
    train += ["--video-features", str(data / "features/slowfast"), str(data / "features/clip")]
    train += ["--text-features", str(data / "features/clip_text")]
    assert main([*train, "--set", *[f"model.{kv}" for kv in TINY], "trainer.batch_size=4"]) == 0
    argv = ["bench", "calibration", "--data", str(data), "--checkpoint", str(run)]
    assert main([*argv, "--bank", "10", "--thresholds", "0.5", "0.9", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["bank"] == 10 and report["negatives"] >= 8
    assert len(report["predictors"]) == 2
    for figures in report["predictors"].values():
        none, mid, strict = figures["rows"]
        assert none["threshold"] is None and none["negatives_rejected"] == 0.0
        assert none["positives_kept"] == 1.0
        assert mid["negatives_rejected"] <= strict["negatives_rejected"]
        assert mid["positives_kept"] >= strict["positives_kept"]
        assert 0.0 <= figures["auc"] <= 1.0
    latent = {"relation": "after", "target": ["dog", "running"], "context": ["cat", "rolling"]}
    assert _matches(latent, [[0, 3, "cat", "rolling"], [3, 5, "dog", "running"]])
    assert not _matches(latent, [[0, 3, "dog", "running"], [3, 5, "cat", "rolling"]])
    assert roc_auc([1.0, 0.9], [0.1, 0.9]) == pytest.approx((2 + 1 + 0.5) / 4)


# ------------------------------------------------------------- official code, side by side
OFFICIAL = Path(__file__).resolve().parents[2] / "official"
LIGHTHOUSE = OFFICIAL / "line+lighthouse"


def test_synthetic_batch_has_the_qvhighlights_shape() -> None:
    import torch

    from momentkit.benchmarks.official import make_videos

    v = make_videos(8, 20, 10, seed=1)
    assert v.streams["slowfast"].shape == (8, 20, 2304) and v.text.shape == (8, 10, 512)
    lengths = v.lengths
    assert [n < 20 for n in lengths] == [i % 4 == 3 for i in range(8)]  # every 4th is short
    assert all(5 <= n for n in lengths)
    words = v.text_mask.sum(1)
    assert int(words.min()) >= 8 and int(words.max()) <= 10
    for i, n in enumerate(lengths):  # padding is zero, valid clips are unit vectors per stream
        assert float(v.streams["clip"][i, n:].abs().sum()) == 0.0
        norms = v.streams["clip"][i, :n].norm(dim=-1)
        assert torch.allclose(norms, torch.ones(n), atol=1e-5)
        assert float(v.tef[i, n - 1, 1]) == pytest.approx(1.0)
    video = v.video(["clip", "slowfast"])
    assert video.shape == (8, 20, 512 + 2304 + 2)
    assert torch.equal(video[..., :512], v.streams["clip"])
    for spans, windows, n in zip(v.spans(), v.windows, lengths):
        assert spans.shape == (len(windows), 2) and float(spans.min()) >= 0.0
        assert float((spans[:, 0] + spans[:, 1] / 2).max()) <= 1.0 + 1e-6
        assert all(0 <= s < e <= n * 2.0 for s, e in windows)
    relevant = v.saliency > 0
    assert float(v.saliency.max()) <= 12.0 and not bool((relevant & ~v.video_mask).any())
    assert bool((v.pos < v.video_mask.sum(1, keepdim=True)).all())
    batch = v.momentkit_batch(["slowfast", "clip"])
    assert torch.equal(batch["saliency_all_labels"], v.saliency / 3.0)
    assert batch["duration"].tolist() == [n * 2.0 for n in lengths]


def test_device_name_is_the_processor_model_or_the_card(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The figures name their machine: ``/proc/cpuinfo``'s first ``model name`` (what tells the
    AMD and Intel tables apart), else the platform's processor; a CUDA device its card."""
    import platform

    from momentkit.benchmarks.official import device_name

    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n"
        "\nprocessor\t: 1\nmodel name\t: Another\n"
    )
    assert device_name("cpu", info) == "Intel(R) Xeon(R) Processor"
    assert device_name(torch.device("cpu"), info) == "Intel(R) Xeon(R) Processor"
    monkeypatch.setattr(platform, "processor", lambda: "x86_64-fallback")
    assert device_name("cpu", tmp_path / "missing") == "x86_64-fallback"
    info.write_text("processor\t: 0\nmodel name\t:\n")  # an empty name is not a name
    assert device_name("cpu", info) == "x86_64-fallback"
    calls: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: calls.append(d) or "NVIDIA H100")
    assert device_name("cuda:0") == "NVIDIA H100" and calls == [torch.device("cuda:0")]


@pytest.mark.skipif(shutil.which("git") is None, reason="no git")
def test_the_official_code_revision_names_commits_edits_and_copies(tmp_path: Path) -> None:
    """A git checkout gives its commit (``+modified`` after an edit); a copy outside git, or a
    folder inside another repository, gives a digest of its Python files, not that
    repository's commit."""
    from momentkit.benchmarks.official import git_revision

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return done.stdout.strip()

    repo = tmp_path / "checkout"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "model.py").write_text("x = 1\n")
    (repo / "README.md").write_text("official\n")
    copy = git_revision(repo)  # not a repository yet: a digest
    assert copy.startswith("sha256:") and len(copy) == len("sha256:") + 16
    assert git_revision(repo) == copy  # stable
    (repo / "README.md").write_text("changed\n")  # not Python: the same code
    assert git_revision(repo) == copy
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "release")
    head = git("rev-parse", "HEAD")
    assert git_revision(repo) == head
    (repo / "pkg" / "model.py").write_text("x = 2\n")
    assert git_revision(repo) == head + "+modified"
    inner = git_revision(repo / "pkg")  # inside the repository, not its top
    assert inner.startswith("sha256:") and inner != copy
    empty = tmp_path / "empty"
    empty.mkdir()
    assert git_revision(empty) == "unknown"
    from momentkit.benchmarks.official import OfficialPair

    pair = OfficialPair(None, "moment_detr", torch.device("cpu"), "fp32")
    pair.source, pair.root = "lighthouse", repo
    for revision, shown in ((head + "+modified", head[:10] + "+modified"), (copy, copy)):
        pair.revision = revision
        assert pair.describe() == f"lighthouse checkout {repo} @ {shown}"


def test_alternate_runs_the_sides_in_turn_and_ratio_pairs_rounds() -> None:
    from momentkit.benchmarks.official import alternate, ratio

    calls: list[str] = []
    times = alternate(
        {"a": lambda: calls.append("a") or 2.0, "b": lambda: calls.append("b") or 1.0},
        repeats=3,
        warmup=1,
    )
    assert calls == ["a", "b"] * 4  # the warm-up round, then A B A B A B
    assert times == {"a": [2.0] * 3, "b": [1.0] * 3}
    r = ratio([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
    assert (r.median, r.low, r.high) == (1.0, 0.5, 1.5) and str(r) == "1.00 (0.50-1.50)"


@pytest.mark.parametrize("bench", ["train", "infer"])
def test_official_dir_errors_are_one_line(
    bench: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", bench, "--model", "moment_detr", "--official-dir", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "not a checkout of line/lighthouse" in err and "git clone" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main([*argv[:3], "sg_detr", *argv[4:]]) == 2
    assert "no official code is wired for model 'sg_detr'" in capsys.readouterr().err
    if bench == "train":  # both sides use the official options
        assert main([*argv, "--set", "hidden_dim=128"]) == 2
        assert "--set cannot be combined" in capsys.readouterr().err


def test_a_missing_package_of_the_official_code_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkout whose import fails on a package that is not installed: one line naming it and
    the pip command (stand-ins cover only the packages the model path never calls)."""
    import sys

    import torch

    from momentkit.benchmarks.official_env import OfficialCodeError, import_ld_detr

    package = tmp_path / "ld_detr"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "model.py").write_text("import yaml\nimport momentkit_no_such_pkg\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    # import_ld_detr replaces Tensor.cuda where there is no CUDA: restored after the test
    monkeypatch.setattr(torch.Tensor, "cuda", torch.Tensor.cuda)
    before = set(sys.modules)
    try:
        with pytest.raises(OfficialCodeError) as err:
            import_ld_detr(tmp_path)
    finally:  # the stand-ins and the fake package leave with the test
        for name in set(sys.modules) - before:
            del sys.modules[name]
    message = str(err.value)
    assert str(tmp_path) in message and "qingchen239/ld-detr" in message
    assert "no module named 'momentkit_no_such_pkg'" in message
    assert "pip install momentkit_no_such_pkg" in message
    assert len(message.splitlines()) == 1


def test_stand_ins_only_replace_missing_packages() -> None:
    import importlib.util
    import sys

    from momentkit.benchmarks.official_env import stand_in

    assert stand_in("json") is sys.modules["json"]  # installed: the real package
    name = "momentkit_test_stand_in_pkg"
    try:
        module = stand_in(name, answer=42)
        assert module.answer == 42 and sys.modules[name] is module
        assert importlib.util.find_spec(name) is not None  # torch._dynamo asks find_spec
    finally:
        sys.modules.pop(name, None)


def _run_bench(argv: list[str], tmp_path: Path) -> dict:
    """``momentkit bench ...`` in a fresh process (the official import installs stand-ins)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "figures.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "momentkit", "bench", *argv, "--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.mark.skipif(not LIGHTHOUSE.is_dir(), reason="no line/lighthouse checkout beside the repo")
def test_bench_train_official_side_by_side_on_the_same_function(tmp_path: Path) -> None:
    argv = ["train", "--model", "qd_detr", "--official-dir", str(LIGHTHOUSE), "--threads", "1"]
    argv += ["--batch-size", "4", "--clips", "10", "--tokens", "9", "--steps", "2"]
    figures = _run_bench([*argv, "--warmup", "0", "--flops"], tmp_path)
    assert max(figures["max_difference"].values()) < 1e-4  # both sides: the same weights
    # the same function, so about the same arithmetic: momentkit skips the padded rows only
    arithmetic = figures["arithmetic"]
    assert 0.7 < arithmetic["flop_ratio"] <= 1.0
    assert arithmetic["official"]["uncounted"] == arithmetic["momentkit"]["uncounted"] == []
    for side in ("official", "momentkit"):
        step = figures[side]
        assert len(step["steps_s"]) == 2 and step["step_s"] > 0
        parts = step["forward_loss_s"] + step["backward_s"] + step["clip_adamw_s"]
        assert parts == pytest.approx(step["step_s"], rel=0.5)
    assert figures["ratio"]["low"] <= figures["ratio"]["median"] <= figures["ratio"]["high"]
    assert figures["batch"].startswith("4 videos: 3 of 10 clips + 1 of")
    assert figures["load_average_before"]


@pytest.mark.skipif(not LIGHTHOUSE.is_dir(), reason="no line/lighthouse checkout beside the repo")
def test_bench_infer_official_latency_and_throughput_in_bf16(tmp_path: Path) -> None:
    argv = ["infer", "--model", "moment_detr", "--official-dir", str(LIGHTHOUSE)]
    argv += ["--queries", "5", "--batch-size", "2", "--clips", "8", "--tokens", "6"]
    argv += ["--repeat", "1", "--latency-repeat", "2", "--warmup", "0", "--threads", "1"]
    figures = _run_bench([*argv, "--precision", "bf16", "--official-precision", "fp32"], tmp_path)
    assert figures["batch_size"] == 2 and figures["precision"] == "bf16"
    assert figures["official_precision"] == "fp32"
    for figure in ("latency", "throughput"):
        assert figures[f"{figure}_official_median_s"] > 0
        assert figures[f"{figure}_momentkit_median_s"] > 0
        assert figures[f"{figure}_ratio"]["median"] > 0


def test_bench_infer_without_official_code(tmp_path: Path) -> None:
    out = tmp_path / "infer.json"
    argv = ["bench", "infer", "--model", "qd_detr", "--queries", "3", "--batch-size", "2"]
    argv += ["--clips", "6", "--tokens", "4", "--repeat", "1", "--latency-repeat", "1"]
    assert main([*argv, "--warmup", "0", "--threads", "1", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["official_code"] is None and figures["batch_size"] == 2
    assert figures["throughput_momentkit_median_s"] > 0 and "latency_ratio" not in figures


@pytest.mark.skipif(not LIGHTHOUSE.is_dir(), reason="no line/lighthouse checkout beside the repo")
@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_the_prepared_gpu_comparison_runs_on_a_cpu(tmp_path: Path) -> None:
    """scripts/gpu_compare.sh (issue 33's one-command GPU run), rehearsed on the CPU: a run it
    knows lands in results.jsonl with its figures and rc, a name it does not know is refused
    without stopping the others, and a spent budget starts nothing more."""
    import os
    import subprocess

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_compare.sh"
    env = {**os.environ, "DEVICE": "cpu", "STEPS": "1", "OMP_NUM_THREADS": "1"}
    env["BENCH_ARGS"] = "--batch-size 4 --clips 10 --tokens 9 --warmup 0 --threads 1"
    out = tmp_path / "out"
    runs = ["bogus-run", "train-fp32-moment_detr"]
    done = subprocess.run(
        ["bash", str(script), str(OFFICIAL), str(out), *runs],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "unknown run 'bogus-run'" in done.stdout
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["run"] for r in rows] == ["train-fp32-moment_detr"] and rows[0]["rc"] == 0
    assert rows[0]["device"] == "cpu" and rows[0]["device_name"]
    assert max(rows[0]["max_difference"].values()) < 1e-4  # the same function on both sides
    assert rows[0]["batch"].startswith("4 videos")
    assert sorted(p.name for p in out.iterdir()) == ["all.log", "results.jsonl"]
    env["BUDGET"] = "0"
    done = subprocess.run(
        ["bash", str(script), str(OFFICIAL), str(out), "infer-bf16-qd_detr"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert "infer-bf16-qd_detr: not started" in done.stdout
    assert (out / "results.jsonl").read_text() == ""
