"""Large buffers stay out of glibc's heap once videos are decoded (momentkit.utils.memory).

The mechanism, checked in fresh processes: after an 8 MB block is freed, glibc's dynamic mmap
threshold is 8 MB, so a 2 MB buffer comes from the heap (where, mixed with small allocations,
it fragments memory on long videos); with the threshold fixed it gets its own mapping.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not Path("/proc/self/maps").exists(),
    reason="glibc malloc on Linux",
)

PROBE = textwrap.dedent(
    """
    import sys
    import numpy as np
    {setup}
    big = np.empty(8 << 20, np.uint8); big[:] = 1; del big   # raises the dynamic threshold
    a = np.empty(2 << 20, np.uint8); a[:] = 1
    heap = [l for l in open("/proc/self/maps") if "[heap]" in l]
    lo, hi = (int(x, 16) for x in heap[0].split()[0].split("-"))
    print("heap" if lo <= a.ctypes.data < hi else "own mapping")
    """
)


def where(setup: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(setup=setup)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return out.stdout.strip().splitlines()[-1]


def glibc() -> bool:
    import ctypes

    return hasattr(ctypes.CDLL(None), "gnu_get_libc_version")


@pytest.mark.skipif(not glibc(), reason="glibc only")
def test_fixed_threshold_keeps_large_buffers_off_the_heap() -> None:
    assert where("") == "heap"  # the default: the growth this module prevents
    fixed = "from momentkit.utils.memory import bounded_large_allocations as b; assert b()"
    assert where(fixed) == "own mapping"


@pytest.mark.skipif(not glibc(), reason="glibc only")
def test_decoding_a_video_fixes_it(tmp_path: Path) -> None:
    import numpy as np

    from momentkit.video.write import write_video

    video = write_video(tmp_path / "v.mp4", np.zeros((4, 32, 48, 3), np.uint8), fps=2)
    setup = f"from momentkit.video.decode import ClipReader; ClipReader({str(video)!r}, 2.0)"
    assert where(setup) == "own mapping"


@pytest.mark.skipif(not glibc(), reason="glibc only")
def test_the_users_malloc_setting_is_left_alone() -> None:
    import os

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "33554432"}  # 32 MiB: the 2 MB goes to heap
    setup = "from momentkit.utils.memory import bounded_large_allocations as b; assert not b()"
    assert where(setup, env) == "heap"
