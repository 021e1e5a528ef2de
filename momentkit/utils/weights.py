"""Reading model weights (safetensors) with errors that name the file, never a raw traceback.

Used by :meth:`momentkit.models.base.MomentModel.from_pretrained` and
:func:`momentkit.training.checkpoint.load_weights`, so a damaged or crafted checkpoint gives
one clear error wherever it is loaded (``predict``, ``serve``, ``--init-from``, ``--resume``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from momentkit.utils.errors import FormatError

if TYPE_CHECKING:
    import torch


def read_safetensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file.

    Raises:
        FileNotFoundError: no such file.
        FormatError: the file is not a readable safetensors file (a header too large, invalid
            JSON in the header, truncated data, a folder), naming it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise FormatError(
            path,
            None,
            None,
            f"not a readable safetensors file ({type(e).__name__}: {e})",
            "The weights are damaged or not written by momentkit; re-save or re-download the "
            "checkpoint",
        ) from None


def check_finite_weights(state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Refuse weights holding NaN or infinite values (a diverged run), naming the tensor.

    Raises:
        FormatError: naming ``path`` and the first non-finite tensor.
    """
    import torch

    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise FormatError(
                path,
                None,
                name,
                "holds NaN or infinite values (the training diverged before this checkpoint "
                "was saved)",
                "Use an earlier checkpoint, or retrain with a lower optim.lr",
            )


__all__ = ["check_finite_weights", "read_safetensors"]
