"""Timing for the side-by-side benchmarks: A B alternation, phases, ratios, machine load."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so wall-clock times are the work's."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Phases:
    """Seconds of one training step by phase (device synchronised between phases)."""

    forward: float  # forward + loss
    backward: float
    optimizer: float  # gradient clipping + AdamW
    cpu: float = 0.0  # CPU time of the whole step, all threads

    @property
    def total(self) -> float:
        """The whole step."""
        return self.forward + self.backward + self.optimizer


def alternate(
    sides: dict[str, Callable[[], Any]], repeats: int, warmup: int = 0
) -> dict[str, list[Any]]:
    """Run the sides in turn (A B A B ...), ``warmup`` untimed rounds first; returns each
    side's results (what its callable returns, e.g. seconds or :class:`Phases`)."""
    for _ in range(warmup):
        for fn in sides.values():
            fn()
    results: dict[str, list[Any]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            results[name].append(fn())
    return results


@dataclass
class Timing:
    """Wall-clock and CPU seconds (all threads) of one run."""

    wall: float
    cpu: float


def timed(fn: Callable[[], Any], device: torch.device) -> Callable[[], Timing]:
    """``fn`` wrapped to return its :class:`Timing` (device synchronised)."""

    def run() -> Timing:
        synchronize(device)
        cpu, start = time.process_time(), time.perf_counter()
        fn()
        synchronize(device)
        return Timing(time.perf_counter() - start, time.process_time() - cpu)

    return run


@dataclass
class Ratio:
    """momentkit's time over the official time, per A B round: median and range."""

    median: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.median:.2f} ({self.low:.2f}-{self.high:.2f})"


def ratio(momentkit: Sequence[float], official: Sequence[float]) -> Ratio:
    """Ratios of the paired rounds (momentkit / official)."""
    pairs = [m / o for m, o in zip(momentkit, official) if o > 0]
    if not pairs:
        return Ratio(math.nan, math.nan, math.nan)
    return Ratio(statistics.median(pairs), min(pairs), max(pairs))


def load_average() -> str:
    """The machine's 1/5/15-minute load averages, ``"n/a"`` where the OS does not say."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def device_name(device: torch.device | str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """What ran the figures: the CUDA card's name, or the processor's model name (``cpuinfo``'s
    first ``model name`` line, else :func:`platform.processor`, else the architecture), so a
    table says which machine kind its ratios are from."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """``torch.set_num_threads(n)`` inside the block (``None``: unchanged)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
