"""The background-thread prefetcher shared by extraction and training."""

from __future__ import annotations

import threading
import time

import pytest

from momentkit.utils.prefetch import prefetch


def test_prefetch_keeps_order_runs_ahead_and_reraises():
    produced: list[int] = []

    def slow():
        for i in range(6):
            produced.append(i)
            yield i

    it = prefetch(slow(), depth=3)
    assert next(it) == 0
    time.sleep(0.05)
    assert len(produced) >= 4  # the producer ran ahead while the consumer waited
    assert list(it) == [1, 2, 3, 4, 5]

    def failing():
        yield 1
        raise ValueError("decoder broke")

    it = prefetch(failing())
    assert next(it) == 1
    with pytest.raises(ValueError, match="decoder broke"):
        next(it)


def test_prefetch_stops_its_thread_when_closed_early():
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    it = prefetch(endless(), depth=2)
    assert next(it) == 0
    it.close()
    assert closed.wait(2.0)
    assert not any(t.name == "momentkit-prefetch" for t in threading.enumerate())
