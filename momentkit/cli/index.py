"""``momentkit index``: index a folder of videos into a searchable library, incrementally.

Examples::

    momentkit index videos/ --db library.db                       # offline encoder, 2 s clips
    momentkit index videos/ --db clip.db --encoder clip:openai/clip-vit-base-patch32

Only new and changed files are encoded (changes are seen by size and modification time, then
by content hash); deleted files are removed and moved files re-pointed. Each video is committed
on its own, so an interrupted run keeps its work and the next run finishes the job. Search the
library with ``momentkit query`` or ``momentkit serve --db``.
"""

from __future__ import annotations

import argparse

from momentkit.cli.common import add_max_clips_argument, positive_float

HELP = "index a folder of videos into a searchable library (incremental)"
#: clips per video above which ``momentkit index`` skips a file (24 h of 2 s clips); equal to
#: ``momentkit.inference.predictor.DEFAULT_MAX_CLIPS`` (tested), not imported from there: the
#: predictor's import would slow every command's start-up
DEFAULT_MAX_CLIPS = 43_200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``DIR --db FILE [--encoder SPEC] [--clip-len S] [--device D] [--retry-failed] ...``."""
    parser.add_argument("dir", metavar="DIR", help="folder searched recursively for videos")
    parser.add_argument("--db", required=True, metavar="FILE", help="library database (SQLite)")
    parser.add_argument(
        "--encoder",
        default=None,
        metavar="SPEC",
        help="offline (default for a new library; no download), offline-glove, "
        "clip:<hub id or dir>, siglip:<hub id or dir>; an existing library keeps its own",
    )
    parser.add_argument(
        "--clip-len",
        type=positive_float,
        default=None,
        metavar="S",
        help="seconds per clip (default 2 for a new library; an existing one keeps its own)",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="encode files that failed before even if they did not change",
    )
    add_max_clips_argument(parser, DEFAULT_MAX_CLIPS, "skip (and report) videos")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the run report as JSON")


def run(args: argparse.Namespace) -> int:
    """Index ``args.dir``; exit status 1 if a video failed, else 0.

    The folder and the clip length are checked before the database is touched, and a database
    this run created is removed again when the run fails before indexing anything, so a typo
    never leaves an empty library behind.
    """
    import json
    import math
    from pathlib import Path

    from momentkit.library.indexer import Indexer
    from momentkit.library.store import LibraryStore
    from momentkit.utils.errors import MomentkitError

    folder = Path(args.dir)
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise MomentkitError(f"{folder} {what}; give the folder of videos to index")
    if args.clip_len is not None and not (math.isfinite(args.clip_len) and args.clip_len > 0):
        raise MomentkitError(
            f"--clip-len must be a positive number of seconds, got {args.clip_len}"
        )
    max_clips = getattr(args, "max_clips", DEFAULT_MAX_CLIPS)
    if max_clips < 0:
        raise MomentkitError(f"--max-clips must be >= 0 (0: no limit), got {max_clips}")
    db = Path(args.db)
    created = _create_exclusively(db)  # only the run that made the file may remove it
    try:
        with LibraryStore(db, create=True) as store:
            spec = args.encoder or store.encoder or "offline"
            clip_len = args.clip_len or store.clip_len or 2.0

            def predictor() -> object:
                from momentkit.inference.predictor import Predictor

                return Predictor.zero_shot(spec, clip_len=clip_len, device=args.device)

            indexer = Indexer(
                store,
                spec,
                clip_len,
                predictor,  # built only if a video must be encoded
                progress=not args.no_progress,
                retry_failed=args.retry_failed,
                max_clips=max_clips or None,
            )
            report = indexer.run(args.dir)
            total = f"library: {store.num_videos()} videos, {store.num_clips()} clips ({spec})"
            empty = store.num_videos() == 0
    except BaseException:
        if created:
            _remove_database(db)
        raise
    if created and empty and report.failed:
        _remove_database(db)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.summary())
        print(total)
    return 1 if report.failed else 0


def _create_exclusively(db: object) -> bool:
    """Create the empty database file unless it exists; whether this call created it.

    ``O_EXCL`` makes one of two runs started together the creator, so a run that fails (for
    instance because the other holds the indexing lock) never removes the other's library.
    """
    import os
    from pathlib import Path

    from momentkit.utils.errors import MomentkitError

    path = Path(str(db))
    if path.is_dir():
        raise MomentkitError(f"{path}: is a folder; give the library's database file (--db)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def _remove_database(db: object) -> None:
    """Delete a library database this run created (with SQLite's side files)."""
    from pathlib import Path

    path = Path(str(db))
    for suffix in ("", "-wal", "-shm", ".lock"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
