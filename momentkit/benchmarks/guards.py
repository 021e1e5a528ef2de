"""Checks every ``momentkit bench`` subcommand runs before any work.

- :func:`refuse_outputs_over_inputs`: an output file (``--out``, ``--json``, a plot) that is one
  of the files the benchmark reads (``--gt``, ``--video``, the annotation files of a ``--data``
  folder, a file of an ``--official-dir`` checkout, ...) is refused: writing it would replace
  the input.
- :func:`check_device`: ``--device`` is a device this machine has (``cuda`` without a GPU,
  ``cuda:7`` on a one-GPU machine, ``foo``: one clear error naming the option).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from momentkit.utils.errors import OutputError
from momentkit.utils.paths import refuse_overwriting_inputs

Named = tuple[str, "str | Path | None"]


def synth_data_inputs(option: str, data: str | Path) -> tuple[list[Named], list[Named]]:
    """``(files, folders)`` a benchmark reads from a ``momentkit synth`` folder ``data``: its
    annotation, latent and config files, and its annotation, latent and feature folders (the
    arguments of :func:`refuse_outputs_over_inputs`). An output elsewhere in ``data`` (a new
    ``data/results.json``) is allowed."""
    data = Path(data)
    files = [
        (option, data / rel)
        for rel in (
            "annotations/train.jsonl",
            "annotations/val.jsonl",
            "latent/train.jsonl",
            "latent/val.jsonl",
            "synth_config.json",
        )
    ]
    folders = [(option, data / rel) for rel in ("annotations", "latent", "features", "packed")]
    return files, folders


def refuse_outputs_over_inputs(
    outputs: Iterable[Named],
    files: Iterable[Named] = (),
    folders: Iterable[Named] = (),
) -> None:
    """Refuse an output that would replace an input, before any work.

    Args:
        outputs: ``(option, path)`` of every file the benchmark writes (``None``: not given).
        files: ``(option, path)`` of every input file it reads (same file through a link or
            a hard link included).
        folders: ``(option, folder)`` of input folders whose files it reads (a feature store,
            an official checkout, a folder of videos): an output that is an existing file
            inside one is refused.

    Raises:
        OutputError: naming the output option, the input and how to fix it.
    """
    outputs = [(name, Path(path)) for name, path in outputs if path is not None]
    refuse_overwriting_inputs(outputs, files)
    roots = [(name, Path(folder)) for name, folder in folders if folder is not None]
    for out_name, out in outputs:
        if not out.is_file():  # not there yet (or not a file): it replaces nothing
            continue
        real = out.resolve()
        for in_name, folder in roots:
            if folder.is_dir() and real.is_relative_to(folder.resolve()):
                raise OutputError(
                    f"{out_name} {out} is a file of the input {in_name} {folder}: writing it "
                    f"would replace it. Give the output a file name outside {folder}"
                )


def check_device(device: str | None) -> str | None:
    """``--device`` checked before any work: the name to use (``auto`` resolved), or ``None``.

    Raises:
        DeviceError: an unknown device, or a CUDA device this machine does not have.
    """
    if device is None:
        return None
    from momentkit.training.distributed import resolve_device

    resolved = resolve_device(device)
    return str(resolved) if device == "auto" else device


__all__ = ["check_device", "refuse_outputs_over_inputs", "synth_data_inputs"]
