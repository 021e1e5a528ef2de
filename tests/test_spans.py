"""Span utilities: parameterisations, (generalised) temporal IoU, clip ids. Property-tested."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from momentkit.structures import (
    clip_ids_to_windows,
    generalized_temporal_iou,
    paired_generalized_temporal_iou,
    paired_temporal_iou,
    span_cxw_to_xx,
    span_xx_to_cxw,
    temporal_iou,
    window_to_clip_ids,
    windows_to_clip_ids,
)

coord = st.floats(0, 100, allow_nan=False, allow_infinity=False)


@st.composite
def span(draw: st.DrawFn) -> list[float]:
    a, b = draw(coord), draw(coord)
    return [min(a, b), max(a, b)]


spans = st.lists(span(), min_size=1, max_size=6)


def test_hand_computed_iou() -> None:
    a = torch.tensor([[0.0, 10.0]])
    b = torch.tensor([[5.0, 15.0], [20.0, 30.0], [0.0, 10.0], [2.0, 4.0]])
    iou, union = temporal_iou(a, b)
    torch.testing.assert_close(iou, torch.tensor([[5 / 15, 0.0, 1.0, 0.2]]))
    torch.testing.assert_close(union, torch.tensor([[15.0, 20.0, 10.0, 10.0]]))
    giou = generalized_temporal_iou(a, b)
    # disjoint [0,10] vs [20,30]: iou 0, hull 30, union 20 -> -1/3
    torch.testing.assert_close(giou, torch.tensor([[5 / 15, -1 / 3, 1.0, 0.2]]))


@given(spans)
def test_xx_cxw_round_trip(s: list[list[float]]) -> None:
    x = torch.tensor(s, dtype=torch.float64)
    torch.testing.assert_close(span_cxw_to_xx(span_xx_to_cxw(x)), x)
    cxw = span_xx_to_cxw(x)
    assert torch.all(cxw[:, 1] >= 0)


@given(spans, spans)
@settings(max_examples=200)
def test_iou_properties(s1: list[list[float]], s2: list[list[float]]) -> None:
    a = torch.tensor(s1, dtype=torch.float64)
    b = torch.tensor(s2, dtype=torch.float64)
    iou, _ = temporal_iou(a, b)
    giou = generalized_temporal_iou(a, b)
    assert torch.all((iou >= 0) & (iou <= 1 + 1e-9))
    assert torch.all((giou >= -1 - 1e-9) & (giou <= iou + 1e-9))
    # symmetric
    torch.testing.assert_close(temporal_iou(b, a)[0], iou.T)
    torch.testing.assert_close(generalized_temporal_iou(b, a), giou.T)
    # paired == diagonal of cross
    n = min(len(a), len(b))
    torch.testing.assert_close(paired_temporal_iou(a[:n], b[:n])[0], iou[:n, :n].diagonal())
    torch.testing.assert_close(
        paired_generalized_temporal_iou(a[:n], b[:n]), giou[:n, :n].diagonal()
    )


@given(span())
def test_self_iou_is_one(s: list[float]) -> None:
    x = torch.tensor([s], dtype=torch.float64)
    iou, _ = temporal_iou(x, x)
    expected = 1.0 if s[1] > s[0] else 0.0
    assert abs(float(iou) - expected) < 1e-9


def test_window_to_clip_ids_matches_qvhighlights(shared_data) -> None:
    from momentkit.data.datasets import load_dataset

    for ann in load_dataset("qvhighlights", "val", shared_data)[:300]:
        assert windows_to_clip_ids(ann.relevant_windows, 2.0) == ann.relevant_clip_ids


@given(st.sets(st.integers(0, 80), min_size=1))
def test_clip_ids_round_trip(ids: set[int]) -> None:
    windows = clip_ids_to_windows(ids, 2.0)
    assert windows_to_clip_ids(windows, 2.0) == sorted(ids)
    # windows are maximal runs: never adjacent
    for w1, w2 in zip(windows, windows[1:]):
        assert w2[0] > w1[1]


def test_window_to_clip_ids_edges() -> None:
    assert window_to_clip_ids([72, 82], 2.0) == [36, 37, 38, 39, 40]
    assert window_to_clip_ids([1.0, 1.5], 2.0) == [0]
    assert window_to_clip_ids([3.0, 3.0], 1.0) == [3]
    assert window_to_clip_ids([0.5, 2.5], 1.0) == [0, 1, 2]
