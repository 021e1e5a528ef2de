"""The run's JSON Lines log: one object per epoch, appended durably, trimmed on resume."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from momentkit.utils.io import atomic_write_text, output_error


class EpochLog:
    """``RUN_DIR/log.jsonl``: one JSON object per line, one line per finished epoch.

    Each :meth:`append` writes a whole line with one ``write`` on a file opened for appending,
    then flushes and fsyncs it, so a crash leaves at most one incomplete last line, which
    :meth:`trim` drops. ``trim(n)`` also drops lines of epochs after the checkpoint a run
    resumes from, so the log of a resumed run equals that of an uninterrupted one.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, row: dict[str, Any]) -> None:
        """Append ``row`` as one line."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(row, allow_nan=True) + "\n"
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # a full disk: name the log (a partial last line is dropped later)
            raise output_error(self.path, e, "append to the run log") from None

    def read(self) -> list[dict[str, Any]]:
        """Every complete line (a truncated last line is skipped)."""
        if not self.path.exists():
            return []
        rows = []
        # a damaged line (a crash mid-write, bytes that are not UTF-8) is skipped, never fatal
        for line in self.path.read_bytes().decode("utf-8", "replace").splitlines():
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows

    def trim(self, max_epoch: int) -> None:
        """Keep only complete lines whose ``epoch`` is ``<= max_epoch`` (rewritten atomically)."""
        if not self.path.exists():
            return
        rows = [r for r in self.read() if _epoch(r) <= max_epoch]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))


def _epoch(row: dict[str, Any]) -> float:
    """The row's epoch; rows without a usable one sort after every epoch (trimmed)."""
    value = row.get("epoch", 0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return float("inf")
    return value
