"""soft_nms_groups: all groups in one vectorised loop give, group by group, exactly what a
plain one-group loop gives (the C++ scan of the official arithmetic, element by element)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from momentkit.modeling.soft_nms import soft_nms, soft_nms_groups


def scan_official(seg, sc, gaussian, sigma, thr, min_score, limit):
    """The C++ ``softnms_1d_cpu`` loop, one segment at a time, float32."""
    f32 = np.float32
    x1, x2, sc = seg[:, 0].astype(f32), seg[:, 1].astype(f32), sc.astype(f32).copy()
    areas, inds, n, i, picked = x2 - x1 + f32(1e-6), np.arange(len(sc)), len(sc), 0, []
    arrays = (x1, x2, sc, areas, inds)
    while i < n:
        best = i + int(np.argmax(sc[i:n]))
        for a in arrays:
            a[i], a[best] = a[best], a[i]
        picked.append(sc[i])
        pos = i + 1
        while pos < n:
            inter = max(f32(0), min(x2[i], x2[pos]) - max(x1[i], x1[pos]))
            ovr = f32(inter / (areas[i] + areas[pos] - inter))
            if gaussian:
                weight = np.exp(np.array([-(ovr * ovr) / f32(sigma)], f32))[0]
            else:
                weight = f32(1) - ovr if ovr >= f32(thr) else f32(1)
            sc[pos] = sc[pos] * weight
            pos += 1
        pos = i + 1
        while pos < n:  # a dropped segment: the last one takes its place, checked again
            if sc[pos] < f32(min_score):
                for a in arrays:
                    a[pos] = a[n - 1]
                n -= 1
            else:
                pos += 1
        i += 1
    return inds[: min(n, limit)].tolist(), picked[: min(n, limit)]


def scan_float64(seg, sc, gaussian, sigma, thr, min_score, limit):
    """momentkit's arithmetic, one pick at a time over a list of live segments."""
    sc = sc.astype(np.float64).copy()
    alive = [k for k in range(len(sc)) if sc[k] >= min_score]
    picks, picked = [], []
    while alive and len(picks) < limit:
        best = max(alive, key=lambda k: (sc[k], -k))  # first of equal maxima
        picks.append(best)
        picked.append(sc[best])
        alive.remove(best)
        for k in alive:
            inter = max(0.0, min(seg[k, 1], seg[best, 1]) - max(seg[k, 0], seg[best, 0]))
            union = (seg[k, 1] - seg[k, 0]) + (seg[best, 1] - seg[best, 0]) - inter
            iou = inter / union if union > 0 else 0.0
            sc[k] *= np.exp(-(iou * iou) / sigma) if gaussian else (1 - iou if iou >= thr else 1)
        alive = [k for k in alive if sc[k] >= min_score]
    return picks, picked


# grid-aligned segments (duplicates and equal IoUs) and scores from a small set (ties)
segment = st.tuples(st.integers(0, 30), st.integers(1, 12)).map(lambda s: [s[0] / 2, sum(s) / 2])
group = st.lists(st.tuples(segment, st.sampled_from([0.9, 0.5, 0.3, 0.31, 0.05, 0.002])),
                 max_size=25)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    groups=st.lists(group, min_size=1, max_size=6),
    method=st.sampled_from(["gaussian", "linear"]),
    arithmetic=st.sampled_from(["official", "float64"]),
    min_score=st.sampled_from([0.001, 0.1, 0.4]),
    max_num=st.sampled_from([None, 1, 3, 200]),
)
def test_groups_equal_the_one_segment_at_a_time_scan(
    groups, method, arithmetic, min_score, max_num
):
    tensors = [
        (torch.tensor([s for s, _ in g], dtype=torch.float32).reshape(-1, 2),
         torch.tensor([c for _, c in g], dtype=torch.float32))
        for g in groups
    ]  # fmt: skip
    kw = {"sigma": 0.5, "iou_threshold": 0.3, "min_score": min_score, "max_num": max_num}
    out = soft_nms_groups(tensors, method=method, arithmetic=arithmetic, **kw)
    scan = scan_official if arithmetic == "official" else scan_float64
    limit = 10**9 if max_num is None else max_num
    for (segs, scores), (kept, new, index) in zip(tensors, out, strict=True):
        picks, picked = scan(segs.double().numpy(), scores.numpy(), method == "gaussian", 0.5,
                             0.3, min_score, limit)  # fmt: skip
        assert index.tolist() == picks
        assert torch.equal(kept, segs[index])
        expected = torch.tensor(np.array(picked, dtype=np.float64)).float()
        torch.testing.assert_close(new, expected, rtol=0, atol=0)
        # one group alone gives the same
        alone = soft_nms(segs, scores, method=method, arithmetic=arithmetic, **kw)
        assert torch.equal(alone[2], index) and torch.equal(alone[1], new)


long_group = st.lists(st.tuples(segment, st.sampled_from([0.9, 0.5, 0.3, 0.31, 0.05, 0.002])),
                      max_size=60)  # fmt: skip


@settings(max_examples=30, deadline=None)
@given(
    groups=st.lists(long_group, min_size=16, max_size=30),
    short=st.integers(0, 15),
    method=st.sampled_from(["gaussian", "linear"]),
    arithmetic=st.sampled_from(["official", "float64"]),
)
def test_many_groups_of_unequal_lengths_in_buckets_equal_the_scan(
    groups, short, method, arithmetic
):
    """16+ groups whose lengths differ (a video's classes) run in length buckets: each group
    still gets exactly the one-segment-at-a-time scan's picks and scores, in input order."""
    groups = [g[:3] if i < short else g for i, g in enumerate(groups)]  # some very short
    tensors = [
        (torch.tensor([s for s, _ in g], dtype=torch.float32).reshape(-1, 2),
         torch.tensor([c for _, c in g], dtype=torch.float32))
        for g in groups
    ]  # fmt: skip
    out = soft_nms_groups(tensors, method=method, arithmetic=arithmetic, sigma=0.5,
                          iou_threshold=0.3, min_score=0.001, max_num=200)  # fmt: skip
    scan = scan_official if arithmetic == "official" else scan_float64
    for (segs, scores), (kept, new, index) in zip(tensors, out, strict=True):
        picks, picked = scan(segs.double().numpy(), scores.numpy(), method == "gaussian", 0.5,
                             0.3, 0.001, 200)  # fmt: skip
        assert index.tolist() == picks and torch.equal(kept, segs[index])
        expected = torch.tensor(np.array(picked, dtype=np.float64)).float()
        torch.testing.assert_close(new, expected, rtol=0, atol=0)


def test_groups_of_nothing_and_bad_shapes() -> None:
    empty = (torch.zeros(0, 2), torch.zeros(0))
    assert soft_nms_groups([]) == []
    ((segs, scores, index),) = soft_nms_groups([empty], arithmetic="official")
    assert segs.shape == (0, 2) and scores.shape == (0,) and index.tolist() == []
    one = (torch.tensor([[0.0, 1.0]]), torch.tensor([0.5]))
    got = soft_nms_groups([empty, one, empty], max_num=5)
    assert [g[2].tolist() for g in got] == [[], [0], []]
    with pytest.raises(ValueError, match=r"expected \(N, 2\)"):
        soft_nms_groups([one, (torch.zeros(3), torch.zeros(3))])


def best_over_groups(out, k):
    """The ``k`` best picks over all groups as UniMD's decoding ranks them (a stable sort of
    the groups' picks in group order): ``(group, index, score)`` rows."""
    rows = [(g, int(i), float(s)) for g, (_, sc, idx) in enumerate(out) for i, s in zip(idx, sc)]
    order = sorted(range(len(rows)), key=lambda r: -rows[r][2])  # stable
    return [rows[r] for r in order[:k]]


@settings(max_examples=80, deadline=None)
@given(
    groups=st.lists(long_group, min_size=1, max_size=24),
    method=st.sampled_from(["gaussian", "linear"]),
    arithmetic=st.sampled_from(["official", "float64"]),
    total_max=st.sampled_from([0, 1, 3, 10, 40, 10_000]),
)
def test_total_max_keeps_the_best_picks_over_all_groups(groups, method, arithmetic, total_max):
    """With ``total_max`` a group stops once none of its later picks can be among the best
    ``total_max`` over all groups; those best picks, ties and their order included, are the
    full run's, and each group's picks are the first ones of its full run."""
    tensors = [
        (torch.tensor([s for s, _ in g], dtype=torch.float32).reshape(-1, 2),
         torch.tensor([c for _, c in g], dtype=torch.float32))
        for g in groups
    ]  # fmt: skip
    kw = {"method": method, "arithmetic": arithmetic, "sigma": 0.5, "iou_threshold": 0.3,
          "min_score": 0.001, "max_num": 200}  # fmt: skip
    full = soft_nms_groups(tensors, **kw)
    cut = soft_nms_groups(tensors, total_max=total_max, **kw)
    assert best_over_groups(cut, total_max) == best_over_groups(full, total_max)
    for (_, sc_full, idx_full), (_, sc_cut, idx_cut) in zip(full, cut, strict=True):
        assert torch.equal(idx_cut, idx_full[: len(idx_cut)])
        assert torch.equal(sc_cut, sc_full[: len(sc_cut)])


def test_total_max_stops_groups_whose_picks_cannot_count() -> None:
    """A video's classes: 40 groups of 30 disjoint segments each; with the 10 best picks
    wanted, the low-scoring groups stop early (a few picks instead of 30 each)."""
    gen = torch.Generator().manual_seed(0)
    starts = torch.arange(30, dtype=torch.float32) * 2
    groups = [
        (torch.stack([starts, starts + 1], 1), torch.rand(30, generator=gen) * (g + 1) / 40)
        for g in range(40)
    ]
    for arithmetic in ("official", "float64"):
        kw = {"arithmetic": arithmetic, "max_num": 200, "min_score": 0.0}
        full = soft_nms_groups(groups, **kw)
        cut = soft_nms_groups(groups, total_max=10, **kw)
        assert sum(len(i) for _, _, i in full) == 40 * 30  # disjoint: nothing decays
        assert sum(len(i) for _, _, i in cut) < 40 * 30 // 4
        assert best_over_groups(cut, 10) == best_over_groups(full, 10)
    for bad in (2.5, 2.0, True, "3"):
        with pytest.raises(ValueError, match="total_max"):
            soft_nms_groups(groups, total_max=bad)  # type: ignore[arg-type]
    assert all(len(i) == 0 for _, _, i in soft_nms_groups(groups, total_max=0))
