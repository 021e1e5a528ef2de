"""Relevance calibration against reference captions, de-duplication, thresholds, disk cache."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest

from momentkit.inference.calibration import (
    bank_relevance,
    calibrate_result,
    clip_range,
    deduplicate,
    reference_captions,
)
from momentkit.inference.results import Moment, QueryResult
from momentkit.utils.cache import cache_dir, cached_array


def test_reference_captions_are_many_distinct_sentences() -> None:
    captions = reference_captions()
    assert len(captions) >= 100 and len(set(captions)) == len(captions)
    assert not any(c.startswith("#") for c in captions)


def test_relevance_is_the_share_of_reference_captions_beaten() -> None:
    # 4 clips of 2 s; the moment [2, 6] covers clips 1 and 2
    query = np.array([0.0, 0.5, 0.7, 0.0])
    reference = np.array(
        [
            [9.0, 0.1, 0.1, 9.0],  # mean 0.1 on clips 1-2: beaten
            [0.0, 0.6, 0.6, 0.0],  # mean 0.6: tie (counts half)
            [0.0, 0.9, 0.9, 0.0],  # 0.9: not beaten
            [0.0, 0.0, 0.2, 0.0],  # 0.1: beaten
        ]
    )
    rel = bank_relevance(query, reference, np.array([[2.0, 6.0], [0.0, 2.0]]), 2.0)
    assert rel[0] == pytest.approx((2 + 0.5) / 4)
    assert rel[1] == pytest.approx(1.5 / 4)  # clip 0: 0 vs 9, 0, 0, 0: three ties
    assert clip_range(2.0, 4, 2.0, 6.0) == (1, 3)
    assert clip_range(2.0, 4, 7.9, 8.5) == (3, 4)  # past the end: the last clip


def test_nested_and_overlapping_moments_are_dropped() -> None:
    moments = [
        Moment(10.0, 14.0, 0.9),
        Moment(10.0, 22.0, 0.8),  # contains the first: dropped
        Moment(18.0, 22.0, 0.7),  # disjoint from the first: kept
        Moment(18.5, 22.0, 0.6),  # nested in the third: dropped
        Moment(0.0, 4.0, 0.5),
    ]
    kept = deduplicate(moments)
    assert [(m.start, m.end) for m in kept] == [(10.0, 14.0), (18.0, 22.0), (0.0, 4.0)]


def _result(moments: list[Moment]) -> QueryResult:
    return QueryResult("q", moments, np.array([0.0, 1.0, 0.0, 0.2]), 2.0, 8.0)


def test_threshold_keeps_confident_moments_or_reports_no_match() -> None:
    reference = np.tile(np.array([0.1, 0.5, 0.1, 0.1]), (10, 1))
    reference[:5, 3] = 0.3  # half the captions beat the query on clip 3
    result = _result([Moment(2.0, 4.0, 0.9), Moment(6.0, 8.0, 0.5)])
    out = calibrate_result(result, reference, top_k=None, min_relevance=0.9)
    assert [(m.start, m.relevance) for m in out.moments] == [(2.0, 1.0)]
    assert out.best_relevance == 1.0 and not out.no_confident_match
    none = calibrate_result(_result([Moment(6.0, 8.0, 0.5)]), reference, top_k=3, min_relevance=0.9)
    assert none.moments == [] and none.no_confident_match and none.best_relevance == 0.5
    raw = calibrate_result(result, None, top_k=1)
    assert raw.moments[0].relevance is None and len(raw.moments) == 1


def test_cache_survives_corruption_and_read_only_directories(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MOMENTKIT_CACHE", str(tmp_path / "c"))
    calls = []

    def compute() -> np.ndarray:
        calls.append(1)
        return np.arange(6, dtype=np.float32).reshape(2, 3)

    a = cached_array("demo", {"k": 1}, compute, shape=(2, 3))
    b = cached_array("demo", {"k": 1}, compute, shape=(2, 3))
    assert np.array_equal(a, b) and len(calls) == 1
    (entry,) = cache_dir().glob("demo-*.npy")
    entry.write_bytes(b"garbage")  # a torn or foreign file is recomputed
    assert np.array_equal(cached_array("demo", {"k": 1}, compute, shape=(2, 3)), a)
    assert len(calls) == 2
    cached_array("demo", {"k": 2}, compute)  # another key: another entry
    assert len(list(cache_dir().glob("demo-*.npy"))) == 2
    # a value of the wrong shape is returned but never stored
    cached_array("demo", {"k": 3}, lambda: np.zeros(4), shape=(2, 3))
    assert len(list(cache_dir().glob("demo-*.npy"))) == 2
    # a cache directory that cannot be created costs only the recomputation
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("MOMENTKIT_CACHE", str(blocker / "sub"))
    assert np.array_equal(cached_array("demo", {"k": 1}, compute, shape=(2, 3)), a)


def _writer(root: str, seed: int) -> None:
    os.environ["MOMENTKIT_CACHE"] = root
    for _ in range(20):
        cached_array("race", {"k": 0}, lambda: np.full((256, 256), 7.0), shape=(256, 256))
        for p in Path(root).glob("race-*.npy"):
            try:
                value = np.load(p, allow_pickle=False)
            except (OSError, ValueError):
                continue
            assert value.shape == (256, 256) and (value == 7.0).all()


def test_concurrent_writers_never_leave_a_torn_entry(tmp_path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), i)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    (entry,) = tmp_path.glob("race-*.npy")
    assert (np.load(entry) == 7.0).all()
    assert not list(tmp_path.glob(".*.tmp"))  # no leftovers
