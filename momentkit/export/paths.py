"""Names and paths built from data (queries, video ids, qids) that cannot leave their folder.

Every file name momentkit derives from data goes through :func:`slugify` (lower-case ASCII
letters, digits and ``-`` only: no separator, no dot, never empty) and every such path is
checked with :func:`inside` after resolving links, so a query such as ``../../etc/passwd`` or a
video named ``..`` only ever names a file in the output folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePath

from momentkit.utils.errors import MomentkitError


class ExportError(MomentkitError):
    """An export that cannot be written as asked (bad format, path or template)."""


def slugify(text: str, max_len: int = 40, empty: str = "query") -> str:
    """A file-name-safe version of ``text``: lower case, ``-`` between words, at most
    ``max_len`` characters (``empty`` when nothing is left)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or empty


def unique_slugs(names: Sequence[str], max_len: int = 40, empty: str = "video") -> dict[str, str]:
    """``name -> slug`` for distinct ``names``, the slugs made distinct by ``-2``, ``-3``, ...
    in order of first appearance (``"A"`` and ``"a"`` slugify alike)."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        if name in out:
            continue
        base = slugify(name, max_len, empty)
        slug, n = base, 1
        while slug in taken:
            n += 1
            slug = f"{base}-{n}"
        out[name] = slug
        taken.add(slug)
    return out


def video_ids(paths: Sequence[Path]) -> list[str]:
    """The id (``vid``) of each video: its file stem, or, when two stems are equal, its path
    relative to the videos' common folder without the extension (``a/clip``, ``b/clip``)."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    resolved = [p.resolve() for p in paths]
    common = Path(*_common_parts(r.parent.parts for r in resolved))
    return [r.relative_to(common).with_suffix("").as_posix() for r in resolved]


def _common_parts(parts: Iterable[tuple[str, ...]]) -> tuple[str, ...]:
    items = list(parts)
    prefix = items[0]
    for p in items[1:]:
        n = 0
        while n < min(len(prefix), len(p)) and prefix[n] == p[n]:
            n += 1
        prefix = prefix[:n]
    return prefix


def inside(directory: Path, name: str) -> Path:
    """``directory / name``, checked to stay directly inside ``directory`` once resolved.

    Raises:
        ExportError: ``name`` is not a plain file name or resolves elsewhere.
    """
    path = directory / name
    if (
        not name
        or PurePath(name).name != name
        or name in (".", "..")
        or path.resolve().parent != directory.resolve()
    ):
        raise ExportError(
            f"{directory}: refusing to write {name!r}, which is not a plain file name"
        )
    return path


def fill(template: str, placeholder: str, slug: str) -> Path:
    """``template`` with ``{placeholder}`` replaced by ``slug`` (a :func:`slugify` result).

    The placeholder may only appear in the file name, so every file lands in the template's
    folder.

    Raises:
        ExportError: the placeholder is in a folder name, or ``slug`` is not a slug.
    """
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", slug):
        raise ExportError(f"{slug!r} is not a file-name slug")
    path = Path(template)
    token = "{" + placeholder + "}"
    if token in str(path.parent):
        raise ExportError(
            f"{template}: {token} may only appear in the file name, not in a folder name"
        )
    return inside(path.parent, path.name.replace(token, slug))
