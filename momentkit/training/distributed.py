"""Multi-process training helpers for ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N -m momentkit train ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR/PORT`` set; :func:`init_distributed` joins
them into one process group (NCCL on GPUs, gloo on CPU). Without those variables everything
here degrades to a single process, so the same code path serves both.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator, Sized
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from momentkit.utils.errors import MomentkitError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job.

    Attributes:
        rank: global rank, 0 is the main process (the only one writing files).
        world_size: number of processes.
        local_rank: rank on this machine (picks the GPU).
        device: the device this process computes on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


class DeviceError(MomentkitError):
    """A device that this machine does not have (``--device cuda`` without a GPU, ...)."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` if CUDA is available, else CPU; other names as given.

    Raises:
        DeviceError: an unknown device name, or a CUDA device this machine does not have.
    """
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(f"cuda:{local_rank}" if name == "cuda" else name)
    except (RuntimeError, ValueError, TypeError):
        raise DeviceError(
            f"unknown device {name!r}; use auto, cpu, cuda or cuda:N (--device)"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(
                f"device {name!r}: no CUDA device on this machine (or this PyTorch has no CUDA "
                "support); use --device cpu (or auto)"
            )
        if device.index is not None and device.index >= count:
            raise DeviceError(
                f"device {name!r}: this machine has {count} CUDA device(s), cuda:0 to "
                f"cuda:{count - 1}; pick one of those or --device cpu"
            )
    return device


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the ``torchrun`` process group if the environment describes one.

    Args:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (see :func:`resolve_device`).

    Returns:
        This process's :class:`DistInfo`; ``world_size == 1`` outside ``torchrun``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank, dev)


def cleanup_distributed() -> None:
    """Leave the process group (no-op when none was joined).

    Every rank first meets the others at a barrier: a rank that tears its gloo context down
    while another still has messages in flight can abort the process at exit
    ("terminate called without an active exception"). Wrappers caught in reference cycles
    (a DistributedDataParallel's reducer holds the process group) are collected first, so the
    group's worker threads are joined here rather than during interpreter shutdown.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op for one process)."""
    if info.distributed:
        dist.barrier()


def all_gather_objects(obj: T, info: DistInfo) -> list[T]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process (``[obj]`` for one process)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, info: DistInfo, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every process."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Average a dict of floats over processes (same keys on every process)."""
    if not info.distributed or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.to(info.device)
    dist.all_reduce(t)
    t = (t / info.world_size).cpu()
    return {k: float(v) for k, v in zip(keys, t.tolist())}


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index starting at ``rank``, in order, without padding.

    For evaluation: the shards of all processes cover the dataset exactly once, so gathering
    their outputs and sorting by index gives the single-process result.
    """

    def __init__(self, data: Sized, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, len(data), world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class SkipSampler(Sampler[int]):
    """The indices of ``sampler`` after the first ``skip`` (to resume inside an epoch)."""

    def __init__(self, sampler: Sampler[int], skip: int = 0) -> None:
        self.sampler = sampler
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        for i, index in enumerate(self.sampler):
            if i >= self.skip:
                yield index

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)  # type: ignore[arg-type]
