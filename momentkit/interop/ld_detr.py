"""Checkpoints of the official ld_detr code (placeholder: being written, see issue 30)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from momentkit.interop.convert import ConversionError, Converted

NAME = "ld_detr"
DESCRIPTION = "official ld_detr checkpoints"


def matches(checkpoint: Any, path: Path) -> bool:
    """Whether ``checkpoint`` has this source's layout."""
    return False


def convert(checkpoint: Any, path: Path, **options: Any) -> Converted:
    """Not written yet."""
    raise ConversionError(f"{path}: converting ld_detr checkpoints is not implemented yet")
