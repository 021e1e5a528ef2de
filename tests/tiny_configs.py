"""Tiny model sizes shared by the DETR model tests (imported by name: pytest puts this folder on
``sys.path``). Each test module adds the settings of its own model."""

from __future__ import annotations

from typing import Any

#: hidden 16, 2 heads, 5 queries over 10-d clips and 8-d tokens: a forward pass in milliseconds
TINY_DETR: dict[str, Any] = dict(
    video_dim=10,
    text_dim=8,
    hidden_dim=16,
    nheads=2,
    dim_feedforward=32,
    num_queries=5,
    max_video_len=12,
    max_text_len=6,
)
