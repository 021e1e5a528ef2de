"""Flat memory while a long video streams through decoding and the encoders.

glibc's ``malloc`` serves a block at or above its *mmap threshold* with its own ``mmap`` and
gives it back to the system on ``free``. But the threshold is dynamic: freeing such a block
raises it to that block's size (up to 32 MiB on 64-bit). After the first freed 4.8 MB SlowFast
window (32 frames of 224 x 224 x 3), every later window and batch of frames comes from the
heap instead, interleaved with the decoding thread's and the models' small allocations; the
heap fragments and the resident size grows with the video's length (measured: 7.4 MB per
minute of video, 0.89 GB after 1 min, 1.10 GB after 30; docs/extraction.md, "Long videos").
A fixed threshold (``mallopt(M_MMAP_THRESHOLD, 1 MiB)``, which also switches the dynamic
adjustment off; the trim threshold, which that adjustment raises with it, set back to glibc's
default) keeps large buffers out of the heap: 0.81 GB after 1 min, 0.83-0.90 GB after 30.

:func:`bounded_large_allocations` does that once per process, where videos are decoded
(:class:`momentkit.video.decode.ClipReader`, the ``clip_slowfast`` frame source). A
``MALLOC_MMAP_THRESHOLD_`` set in the environment is the user's choice and is left alone;
elsewhere than glibc (macOS, musl) nothing is done.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: glibc's ``mallopt`` parameter numbers
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc's default trim threshold (the dynamic adjustment may have doubled the mmap threshold
#: into it before the first video; set back so that free memory at the heap's top is returned)
TRIM_THRESHOLD = 128 * 1024
#: blocks of this size or more get their own mapping (glibc's dynamic maximum is 32 MiB)
THRESHOLD = 1 << 20

_state: dict[str, bool] = {}


def bounded_large_allocations(threshold: int = THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes (once per process).

    Returns:
        True where the threshold is now fixed (by this call or an earlier one); False where
        it was left as it is (not glibc, or ``MALLOC_MMAP_THRESHOLD_`` set by the user).
    """
    if "done" in _state:
        return _state["done"]
    done = False
    if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        try:
            libc = ctypes.CDLL(None)
            if hasattr(libc, "gnu_get_libc_version"):  # glibc (musl's mallopt does nothing)
                done = bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold)))
                done = done and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        except (OSError, AttributeError):
            done = False
    _state["done"] = done
    return done
