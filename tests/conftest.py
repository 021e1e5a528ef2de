"""Shared fixtures: the real annotation files beside the repository, one-thread torch, and the
hand-built random batch of the DETR model tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Tests never read or write the user's momentkit cache (~/.cache/momentkit)."""
    import os

    path = tmp_path_factory.mktemp("momentkit-cache")
    old = os.environ.get("MOMENTKIT_CACHE")
    os.environ["MOMENTKIT_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MOMENTKIT_CACHE", None)
    else:
        os.environ["MOMENTKIT_CACHE"] = old


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests that need it are skipped where it is absent."""
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny tensors: one thread avoids OpenMP overhead (and stalls on a busy machine).

    Modules of small-tensor tests use it with ``pytestmark = pytest.mark.usefixtures(...)``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_batch(
    seed: int = 0,
    video_lens: Sequence[int] = (12, 9, 7),
    text_lens: Sequence[int] = (6, 4, 3),
    saliency_divisor: float = 1.0,
) -> dict[str, Any]:
    """A batch dict as documented in docs/architecture.md, built by hand (up to 4 videos).

    ``video_feats`` ``(B, T, 10)`` and ``text_feats`` ``(B, N, 8)`` are random (zero on
    padding), ``T``/``N`` the longest of ``video_lens``/``text_lens``; ``saliency_all_labels``
    ``(B, T)`` are random integers 0-4 divided by ``saliency_divisor``; spans and saliency
    pairs are fixed, one or two spans a video.
    """
    gen = torch.Generator().manual_seed(seed)
    b, t, n = len(video_lens), max(video_lens), max(text_lens)
    video_mask = torch.arange(t)[None] < torch.tensor(video_lens)[:, None]
    text_mask = torch.arange(n)[None] < torch.tensor(text_lens)[:, None]
    saliency = torch.randint(0, 5, (b, t), generator=gen).float() * video_mask / saliency_divisor
    spans = [
        torch.tensor([[0.3, 0.2]]),
        torch.tensor([[0.5, 0.4], [0.8, 0.1]]),
        torch.tensor([[0.6, 0.3]]),
        torch.tensor([[0.2, 0.1]]),
    ]
    return {
        "video_feats": torch.randn(b, t, 10, generator=gen) * video_mask[..., None],
        "video_mask": video_mask,
        "text_feats": torch.randn(b, n, 8, generator=gen) * text_mask[..., None],
        "text_mask": text_mask,
        "duration": torch.tensor([2.0 * x for x in video_lens]),
        "clip_len": 2.0,
        "qids": list(range(b)),
        "vids": [f"v{i}" for i in range(b)],
        "annotations": [None] * b,
        "span_targets": [{"spans": s} for s in spans[:b]],
        "saliency_all_labels": saliency,
        "saliency_pos_labels": torch.tensor([[0, 1], [2, 3], [1, 4], [2, 2]])[:b],
        "saliency_neg_labels": torch.tensor([[5, 6], [7, 8], [5, 6], [6, 5]])[:b],
    }


@pytest.fixture
def make_batch() -> Callable[..., dict[str, Any]]:
    """:func:`random_batch`, called as ``make_batch(seed=..., video_lens=..., ...)``."""
    return random_batch
