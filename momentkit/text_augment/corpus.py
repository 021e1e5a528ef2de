"""The augmented-corpus file: one generated query a line, and its integer codes in batches.

``momentkit augment`` writes a JSON Lines file; each row is::

    {"aug_id": 17, "qid": 3, "query": "a puppy jumping", "kind": "positive",
     "dimension": "semantic", "generator": "semantic", "edits": [["dog", "puppy"]]}

- ``aug_id``: unique integer of the generated query; its text features are stored under the key
  ``qid<aug_id>`` of the augmented text-feature store (the standard ``qid<qid>.npz`` layout);
- ``qid``: the source query it was generated from (it shares that query's video and moments);
- ``kind``: ``positive`` (same meaning: same moments) or ``negative`` (a different meaning);
- ``dimension``: ``temporal`` (action order) or ``semantic`` (objects and actions);
- ``generator`` and ``edits``: provenance, for inspection.

In a batch (:mod:`momentkit.data.augmented`) ``aug_kind`` holds :data:`KIND_CODES` and
:data:`PAD` for empty slots.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from momentkit.utils.errors import FormatError
from momentkit.utils.io import iter_jsonl, write_jsonl

KINDS = ("negative", "positive")
DIMENSIONS = ("temporal", "semantic")
#: ``aug_kind`` codes of a batch: negatives 0, positives 1, empty slots -1
KIND_CODES = {"negative": 0, "positive": 1}
NEGATIVE, POSITIVE, PAD = 0, 1, -1


@dataclass(frozen=True)
class CorpusEntry:
    """One generated query (a row of the corpus file)."""

    aug_id: int
    qid: int | str
    query: str
    kind: str
    dimension: str
    generator: str = ""
    edits: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """The JSON row."""
        return {
            "aug_id": self.aug_id,
            "qid": self.qid,
            "query": self.query,
            "kind": self.kind,
            "dimension": self.dimension,
            "generator": self.generator,
            "edits": [list(e) for e in self.edits],
        }


def _entry(row: dict[str, Any], path: Path, line: int) -> CorpusEntry:
    def need(name: str, types: type | tuple[type, ...]) -> Any:
        if name not in row:
            raise FormatError(
                path, line, name, "missing", "Write the corpus with momentkit augment"
            )
        value = row[name]
        if not isinstance(value, types) or isinstance(value, bool):
            raise FormatError(path, line, name, f"unexpected value {value!r}")
        return value

    kind, dimension = need("kind", str), need("dimension", str)
    if kind not in KINDS:
        raise FormatError(path, line, "kind", f"'{kind}' is not one of {', '.join(KINDS)}")
    if dimension not in DIMENSIONS:
        raise FormatError(
            path, line, "dimension", f"'{dimension}' is not one of {', '.join(DIMENSIONS)}"
        )
    query = need("query", str)
    if not query.strip():
        raise FormatError(path, line, "query", "empty query")
    edits = row.get("edits", [])
    if not isinstance(edits, list) or not all(
        isinstance(e, list) and len(e) == 2 and all(isinstance(w, str) for w in e) for e in edits
    ):
        raise FormatError(path, line, "edits", "expected a list of [old, new] word pairs")
    return CorpusEntry(
        aug_id=need("aug_id", int),
        qid=need("qid", (int, str)),
        query=query,
        kind=kind,
        dimension=dimension,
        generator=str(row.get("generator", "")),
        edits=tuple((a, b) for a, b in edits),
    )


def load_corpus(path: str | Path) -> list[CorpusEntry]:
    """Read a corpus file; errors name the file, line and field.

    Raises:
        FormatError: a malformed row, or two rows with the same ``aug_id``.
    """
    path = Path(path)
    entries: list[CorpusEntry] = []
    seen: dict[int, int] = {}
    for line, row in iter_jsonl(path):
        entry = _entry(row, path, line)
        if entry.aug_id in seen:
            raise FormatError(
                path, line, "aug_id", f"{entry.aug_id} already used on line {seen[entry.aug_id]}"
            )
        seen[entry.aug_id] = line
        entries.append(entry)
    return entries


def save_corpus(path: str | Path, entries: Iterable[CorpusEntry]) -> None:
    """Write ``entries`` as a corpus file (atomically)."""
    write_jsonl(path, (e.to_dict() for e in entries))


def by_source(entries: Iterable[CorpusEntry]) -> dict[int | str, list[CorpusEntry]]:
    """Entries grouped by source ``qid``, in file order."""
    out: dict[int | str, list[CorpusEntry]] = {}
    for e in entries:
        out.setdefault(e.qid, []).append(e)
    return out


def iter_kind(entries: Iterable[CorpusEntry], kind: str) -> Iterator[CorpusEntry]:
    """The entries of one ``kind``."""
    return (e for e in entries if e.kind == kind)
