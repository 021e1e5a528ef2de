"""``--flops`` of ``momentkit bench train|infer``: FLOP counts, the peak rate and the floor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from momentkit.benchmarks.arithmetic import (
    FlopCount,
    arithmetic_report,
    count_flops,
    describe,
    peak_matmul_rate,
)
from momentkit.cli.main import main

TINY = ["hidden_dim=16", "dim_feedforward=32", "nheads=2", "num_queries=4"]


def test_count_flops_counts_matmuls_forward_and_backward() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 4)
    x = torch.randn(8, 16)  # an input without gradient: backward computes the weight's only
    assert count_flops(lambda: linear(x)) == (2 * 8 * 16 * 4, ())
    assert count_flops(lambda: linear(x).sum().backward()).flops == 2 * (2 * 8 * 16 * 4)
    x.requires_grad_(True)  # now the input's gradient too: one more product of the same size
    assert count_flops(lambda: linear(x).sum().backward()).flops == 3 * (2 * 8 * 16 * 4)
    conv = torch.nn.Conv1d(6, 5, kernel_size=3)  # (B, C, L) = (2, 6, 10) -> (2, 5, 8)
    assert count_flops(lambda: conv(torch.randn(2, 6, 10))).flops == 2 * (2 * 5 * 8) * (6 * 3)
    relu = torch.nn.ReLU()
    assert count_flops(lambda: relu(x)).flops == 0  # element-wise work is overhead: not counted


def test_count_flops_counts_the_onednn_linear_forward_and_backward(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """momentkit's oneDNN linear (``mkldnn._linear_pointwise``, forward and both backward
    products) counts as the same products as ``F.linear``."""
    from momentkit.modeling import linear as lin

    if not torch.backends.mkldnn.is_available():
        pytest.skip("PyTorch built without oneDNN")
    monkeypatch.setenv("MOMENTKIT_ONEDNN_LINEAR", "1")
    monkeypatch.setattr(lin, "MIN_MACS", 1)
    layer = lin.Linear(16, 4)
    x = torch.randn(2, 8, 16, requires_grad=True)
    product = 2 * 16 * 16 * 4
    assert count_flops(lambda: layer(x)) == (product, ())
    assert count_flops(lambda: layer(x).sum().backward()) == (3 * product, ())
    with torch.inference_mode():
        assert count_flops(lambda: layer(x)) == (product, ())
    # unset, the first eligible call measures both kernels: not counted as the step's FLOPs
    monkeypatch.delenv("MOMENTKIT_ONEDNN_LINEAR")
    monkeypatch.setattr(lin, "_decision", None)
    assert count_flops(lambda: layer(x)) == (product, ())
    assert lin._decision is not None


def test_count_flops_under_inference_mode() -> None:
    # evaluation code runs under torch.inference_mode, where linear, matmul and attention reach
    # the counter undecomposed: counted as the same products as in training
    # (LD-DETR's convolutional blocks and HD-head GRU too)
    linear = torch.nn.Linear(16, 4)
    x, q = torch.randn(3, 8, 16), torch.randn(2, 5, 7, 6)  # q: (B, H, L, E)
    attention = torch.nn.functional.scaled_dot_product_attention
    conv = torch.nn.Conv1d(6, 4, kernel_size=3, padding=1, groups=2)  # (2, 6, 10) -> (2, 4, 10)
    gru = torch.nn.GRU(6, 4, num_layers=2, batch_first=True, bidirectional=True)
    gru_weights = 3 * 4 * 6 + 3 * 4 * 4 + 3 * 4 * 8 + 3 * 4 * 4  # per direction: layer 1, 2
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(2, 5, 6), [5, 3], batch_first=True)
    for run, flops in [
        (lambda: linear(x), 2 * 3 * 8 * 16 * 4),
        (lambda: torch.matmul(x, torch.randn(16, 9)), 2 * 3 * 8 * 16 * 9),
        (lambda: attention(q, q, q[..., :3]), 2 * (2 * 5) * 7 * 7 * (6 + 3)),
        (lambda: conv(torch.randn(2, 6, 10)), 2 * (2 * 4 * 10) * (3 * 3)),
        (lambda: gru(torch.randn(2, 5, 6)), 2 * (2 * 5) * 2 * gru_weights),
        (lambda: gru(packed), 2 * (5 + 3) * 2 * gru_weights),  # packed: the valid steps only
    ]:
        with torch.no_grad():
            plain = count_flops(run)
        with torch.inference_mode():
            assert count_flops(run) == plain == (flops, ())


def test_count_flops_of_cpu_attention_and_its_backward() -> None:
    # scaled_dot_product_attention on the CPU runs a kernel PyTorch's FLOP table lacks
    q = torch.randn(2, 4, 10, 8, requires_grad=True)  # (B, H, L, E)
    mask = torch.ones(10, 10, dtype=torch.bool)
    forward = 2 * (2 * 2 * 4 * 10 * 10 * 8)  # Q K^T and A V
    attention = torch.nn.functional.scaled_dot_product_attention
    assert count_flops(lambda: attention(q, q, q, attn_mask=mask)) == (forward, ())
    with_backward = count_flops(lambda: attention(q, q, q, attn_mask=mask).sum().backward())
    assert with_backward.flops > 2 * forward and with_backward.uncounted == ()


def test_count_flops_names_fused_kernels_it_cannot_count() -> None:
    # in eval mode without gradients PyTorch's encoder layer runs one fused kernel that has no
    # FLOP formula (and torch's per-module tracker fails under no_grad: the count must not)
    layer = torch.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)
    layer.eval()
    with torch.no_grad():
        count = count_flops(lambda: layer(torch.randn(1, 3, 8)))
    assert count.uncounted == ("aten._transformer_encoder_layer_fwd",)
    report = arithmetic_report({"momentkit": count}, {"momentkit": 0.01}, peak=1e9)
    assert "NOT counted" in describe(report)
    layer.train()  # the unfused path: every matmul counted
    counted = count_flops(lambda: layer(torch.randn(1, 3, 8)))
    assert counted.flops > 0 and counted.uncounted == ()


def test_arithmetic_report_gives_the_floor_ratio() -> None:
    flops = {"official": FlopCount(4_000_000_000), "momentkit": FlopCount(2_000_000_000)}
    report = arithmetic_report(flops, {"official": 0.2, "momentkit": 0.1}, peak=40e9)
    assert report["peak_gflop_s"] == 40.0 and report["flop_ratio"] == 0.5
    # momentkit's 2 GFLOP take at least 0.05 s at 40 GFLOP/s: 0.25 of the official 0.2 s
    assert report["floor_ratio"] == 0.25
    assert report["official"] == {
        "gflop": 4.0, "gflop_s": 20.0, "at_peak_s": 0.1, "peak_share": 0.5, "uncounted": [],
    }  # fmt: skip
    assert report["momentkit"]["at_peak_s"] == 0.05 and report["momentkit"]["peak_share"] == 0.5
    assert "gets below 0.25 of the official time" in describe(report)
    alone = arithmetic_report({"momentkit": FlopCount(10**9)}, {"momentkit": 0.5}, peak=10e9)
    assert "floor_ratio" not in alone and alone["momentkit"]["peak_share"] == 0.2


def test_peak_matmul_rate_is_the_best_timed_product(monkeypatch: pytest.MonkeyPatch) -> None:
    import momentkit.benchmarks.arithmetic as arithmetic

    assert peak_matmul_rate(size=256, repeats=3) > 1e8  # any CPU: faster than 0.1 GFLOP/s
    # each timed product's (start, end) on a fake clock (the warm-up products are not timed),
    # torch.mm's three then momentkit's linear's (oneDNN where enabled): the best gives the rate
    ticks = iter([1.0, 1.2, 2.0, 2.1, 3.0, 3.3, 4.0, 4.5, 5.0, 5.05, 6.0, 6.4])
    monkeypatch.setattr(arithmetic, "_clock", lambda: next(ticks))
    assert peak_matmul_rate(size=8, repeats=3) == pytest.approx(2 * 8**3 / 0.05)
    ticks = iter([1.0, 1.2, 2.0, 2.1, 3.0, 3.3, 4.0, 4.5, 5.0, 5.3, 6.0, 6.4])
    assert peak_matmul_rate(size=8, repeats=3) == pytest.approx(2 * 8**3 / 0.1)


def test_peak_matmul_rate_times_the_dtype_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--precision bf16``: the floor is taken at the bf16 peak, so the timed products are
    bf16 (the warm-up and each repeat), float32 without a dtype."""
    import torch

    real_mm, dtypes = torch.mm, []
    monkeypatch.setattr(torch, "mm", lambda a, b: dtypes.append(a.dtype) or real_mm(a, b))
    assert peak_matmul_rate(size=16, repeats=2, dtype=torch.bfloat16) > 0
    assert dtypes == [torch.bfloat16] * 3
    dtypes.clear()
    peak_matmul_rate(size=16, repeats=1)
    assert dtypes == [torch.float32] * 2


def test_bench_train_flops_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "train.json"
    argv = ["bench", "train", "--model", "moment_detr", "--batch-size", "2", "--clips", "6"]
    argv += ["--tokens", "5", "--steps", "1", "--warmup", "0", "--items", "0", "--threads", "1"]
    assert main([*argv, "--set", *TINY, "--flops", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    arithmetic = figures["arithmetic"]
    assert arithmetic["momentkit"]["gflop"] > 0 and arithmetic["peak_gflop_s"] > 0
    assert arithmetic["momentkit"]["gflop_s"] == pytest.approx(
        arithmetic["momentkit"]["gflop"] / figures["step_s"], rel=0.05, abs=0.1
    )
    assert "momentkit's FLOPs at peak are" in capsys.readouterr().out


def test_bench_infer_flops_per_figure(tmp_path: Path) -> None:
    out = tmp_path / "infer.json"
    argv = ["bench", "infer", "--model", "qd_detr", "--queries", "3", "--batch-size", "2"]
    argv += ["--clips", "6", "--tokens", "4", "--repeat", "1", "--latency-repeat", "1"]
    assert main([*argv, "--warmup", "0", "--threads", "1", "--flops", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    latency, throughput = figures["latency_arithmetic"], figures["throughput_arithmetic"]
    # 3 queries in the throughput run against 1 in the latency run: more arithmetic
    assert throughput["momentkit"]["gflop"] > latency["momentkit"]["gflop"] > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--clips", "0"], "argument --clips: must be an integer >= 1, got '0'"),
        (["train", "--steps", "0"], "argument --steps: must be an integer >= 1, got '0'"),
        (["train", "--batch-size", "-2"], "argument --batch-size: must be an integer >= 1"),
        (["train", "--items", "-1"], "argument --items: must be an integer >= 0"),
        (["train", "--threads", "two"], "argument --threads: must be an integer >= 1, got 'two'"),
        (["infer", "--queries", "0"], "argument --queries: must be an integer >= 1"),
        (["infer", "--latency-repeat", "0"], "argument --latency-repeat: must be an integer >= 1"),
    ],
)
def test_bench_sizes_out_of_range_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bench_train_on_videos_shorter_than_the_moment(tmp_path: Path) -> None:
    # the epoch test's annotations hold a 10-clip moment; shorter videos get a whole-video one
    out = tmp_path / "train.json"
    argv = ["bench", "train", "--model", "moment_detr", "--batch-size", "2", "--clips", "4"]
    argv += ["--tokens", "3", "--steps", "1", "--warmup", "0", "--items", "2", "--threads", "1"]
    assert main([*argv, "--set", *TINY, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["epoch_npz_s"] > 0
