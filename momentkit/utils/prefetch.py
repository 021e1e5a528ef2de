"""Running a producer on a background thread, ahead of its consumer.

Used for video decoding (PyAV releases the GIL) overlapped with encoding, and for batch
preparation (NumPy releases the GIL while it copies features) overlapped with training steps,
without passing large batches through worker-process shared memory.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield ``items`` in order while a background thread produces up to ``depth`` ahead.

    Decoding (PyAV releases the GIL) then overlaps with encoding on the calling thread. An
    exception raised by the producer is re-raised here, at the point where the item that failed
    would have come. Stopping early (closing the generator) stops the producer.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    q: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        it = iter(items)
        try:
            for item in it:
                if not put(item):
                    return
        except BaseException as e:  # handed to the consumer
            put(_Failure(e))
            return
        finally:
            close = getattr(it, "close", None)
            if close is not None:  # e.g. a generator holding an open file
                close()
        put(_DONE)

    thread = threading.Thread(target=produce, name="momentkit-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()
