"""momentkit.modeling.linear: oneDNN float32 products equal F.linear's, forward and backward."""

from __future__ import annotations

from unittest.mock import patch

import pytest
import torch
import torch.nn.functional as F

from momentkit.modeling import linear as lin

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN"
)


@pytest.fixture
def onednn(monkeypatch: pytest.MonkeyPatch):
    """oneDNN forced on, and every kernel call counted."""
    monkeypatch.setenv("MOMENTKIT_ONEDNN_LINEAR", "1")
    calls: list[tuple[int, ...]] = []
    real = lin._onednn

    def counted(x, weight, bias):  # noqa: ANN001, ANN202
        calls.append(tuple(weight.shape))
        return real(x, weight, bias)

    monkeypatch.setattr(lin, "_onednn", counted)
    return calls


@pytest.mark.parametrize("shape", [(300, 64), (4, 90, 64), (2, 3, 70, 64)])
@pytest.mark.parametrize("out_features", [96, 40])  # the weight gradient's two operand orders
@pytest.mark.parametrize("with_bias", [True, False])
def test_onednn_linear_equals_f_linear_with_gradients(
    onednn, shape, out_features, with_bias
) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(out_features, 64, generator=g, requires_grad=True)
    b = torch.randn(out_features, generator=g, requires_grad=True) if with_bias else None
    x = torch.randn(*shape, generator=g).transpose(-1, -2).contiguous().transpose(-1, -2)
    x.requires_grad_()  # a strided (column-major) input: read in place
    grad = torch.randn(*shape[:-1], out_features, generator=g)
    lin.MIN_MACS, old = 1, lin.MIN_MACS
    try:
        out = lin.linear(x, w, b)
        out.backward(grad)
    finally:
        lin.MIN_MACS = old
    # forward, input gradient (weight^T), weight gradient: the narrower operand second
    rows = x.numel() // 64
    last = (64, rows) if out_features < 64 else (out_features, rows)
    assert onednn == [(out_features, 64), (64, out_features), last]
    got = (out.detach(), x.grad, w.grad, None if b is None else b.grad)
    x2, w2 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b2 = None if b is None else b.detach().double().requires_grad_()
    ref = F.linear(x2, w2, b2)
    ref.backward(grad.double())
    expected = (ref.detach(), x2.grad, w2.grad, None if b2 is None else b2.grad)
    for name, a, e in zip(("out", "grad x", "grad w", "grad b"), got, expected):
        if e is None:
            assert a is None
            continue
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), e, rtol=1e-5, atol=1e-4, msg=name)


def test_small_products_autocast_and_the_switch_take_f_linear(onednn, monkeypatch) -> None:
    x, w = torch.randn(10, 256), torch.randn(256, 256)
    assert 10 * 256 * 256 < lin.MIN_MACS  # the decoder's 10 queries: oneDNN's call costs more
    assert torch.equal(lin.linear(x, w), F.linear(x, w))
    big = torch.randn(64, 256)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lin.linear(big, w).dtype == torch.bfloat16  # autocast's own (oneDNN) bf16 path
    assert torch.equal(lin.linear(big.double(), w.double()), F.linear(big.double(), w.double()))
    monkeypatch.setenv("MOMENTKIT_ONEDNN_LINEAR", "0")
    assert torch.equal(lin.linear(big, w), F.linear(big, w))
    assert onednn == []
    monkeypatch.setenv("MOMENTKIT_ONEDNN_LINEAR", "1")
    with torch.inference_mode():
        torch.testing.assert_close(lin.linear(big, w), F.linear(big, w), rtol=1e-5, atol=1e-4)
    assert onednn == [(256, 256)]


def test_auto_measures_once_and_follows_the_measurement(onednn, monkeypatch) -> None:
    monkeypatch.delenv("MOMENTKIT_ONEDNN_LINEAR")
    for faster in (False, True):
        monkeypatch.setattr(lin, "_decision", None)
        with patch.object(lin, "_measure", return_value=faster) as measure:
            x, w = torch.randn(64, 256), torch.randn(256, 256)
            for _ in range(3):
                lin.linear(x, w)
        assert measure.call_count == 1
        assert len(onednn) == (3 if faster else 0)
    assert isinstance(lin._measure(), bool)  # the real measurement runs


def test_linear_module_is_a_drop_in_nn_linear() -> None:
    torch.manual_seed(0)
    ours, theirs = lin.Linear(5, 3), torch.nn.Linear(5, 3)
    theirs.load_state_dict(ours.state_dict())
    assert isinstance(ours, torch.nn.Linear) and set(ours.state_dict()) == {"weight", "bias"}
    x = torch.randn(4, 5)
    assert torch.equal(ours(x), theirs(x))  # below MIN_MACS: the same F.linear


@pytest.mark.parametrize("name", ["moment_detr", "qd_detr"])
def test_tiny_model_step_is_the_same_through_onednn(name, make_batch, monkeypatch) -> None:
    """A whole training step (forward, loss, backward) with every product of the model
    through oneDNN equals the F.linear step: loss, outputs and every gradient."""
    from step_results import step_results
    from tiny_configs import TINY_DETR

    from momentkit.models import build_criterion, build_model

    torch.manual_seed(0)
    model = build_model({"name": name, **TINY_DETR})
    criterion = build_criterion(model.config)
    batch = make_batch()
    results = {}
    monkeypatch.setattr(lin, "MIN_MACS", 1)
    for setting in ("0", "1"):
        monkeypatch.setenv("MOMENTKIT_ONEDNN_LINEAR", setting)
        results[setting] = step_results(model, model, criterion, batch, seed=2)
    (s0, l0, g0), (s1, l1, g1) = results["0"], results["1"]
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s1, s0, rtol=1e-5, atol=1e-5)
    assert set(g0) == set(g1) and len(g0) > 20
    for name, grad in g0.items():
        torch.testing.assert_close(g1[name], grad, rtol=1e-3, atol=1e-5, msg=name)
