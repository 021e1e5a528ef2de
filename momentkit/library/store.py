"""The library's single source of truth: one SQLite file (standard library ``sqlite3``).

Tables::

    meta(key, value)          schema_version, encoder spec, retrieval stream, generation, ...
    roots(path, added_at)     folders indexed into the library (the only places videos are
                              served from)
    videos(id, path, size, mtime_ns, sha256, duration, clip_len, num_clips, indexed_at,
           encode_seconds)
    clips(id, video_id, idx, start, end)      id = the clip's id in the vector index
    streams(video_id, name, rows, dim, data)  each (T, D) float32 feature stream of a video
    failures(path, size, mtime_ns, error, at) videos that could not be encoded
    runs(id, root, started_at, seconds, added, changed, moved, touched, removed, unchanged,
         failed)                              one row per indexing run (timings)

Every change of a video (insert with its clips and streams, delete, move) is one transaction,
so a crash leaves each video either fully indexed or absent, and re-running the indexer
finishes the job. Each write transaction increments ``meta.generation``; readers holding a
derived structure (the vector index) rebuild it when the generation moved. The database runs
in WAL mode, so a server can read while ``momentkit index`` writes.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from momentkit.library.files import FileStat, KnownVideo
from momentkit.utils.errors import MomentkitError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS roots(path TEXT PRIMARY KEY, added_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS videos(
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    duration REAL NOT NULL,
    clip_len REAL NOT NULL,
    num_clips INTEGER NOT NULL,
    indexed_at REAL NOT NULL,
    encode_seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS clips(
    id INTEGER PRIMARY KEY,
    video_id INTEGER NOT NULL REFERENCES videos(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    start REAL NOT NULL,
    end REAL NOT NULL,
    UNIQUE(video_id, idx)
);
CREATE TABLE IF NOT EXISTS streams(
    video_id INTEGER NOT NULL REFERENCES videos(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    rows INTEGER NOT NULL,
    dim INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY(video_id, name)
);
CREATE TABLE IF NOT EXISTS failures(
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    error TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs(
    id INTEGER PRIMARY KEY,
    root TEXT NOT NULL,
    started_at REAL NOT NULL,
    seconds REAL NOT NULL,
    added INTEGER NOT NULL,
    changed INTEGER NOT NULL,
    moved INTEGER NOT NULL,
    touched INTEGER NOT NULL,
    removed INTEGER NOT NULL,
    unchanged INTEGER NOT NULL,
    failed INTEGER NOT NULL
);
"""


def _table_columns(conn: sqlite3.Connection, table: str) -> tuple[tuple[str, str, int, int], ...]:
    """``(name, TYPE, notnull, pk)`` of each column of ``table`` (empty when there is none)."""
    rows = conn.execute(f"PRAGMA table_info('{table}')").fetchall()
    return tuple((str(r[1]), str(r[2]).upper(), int(r[3]), int(r[5])) for r in rows)


_EXPECTED: dict[str, tuple[tuple[str, str, int, int], ...]] = {}


def _expected_columns() -> dict[str, tuple[tuple[str, str, int, int], ...]]:
    """table -> its columns as :data:`_SCHEMA` creates them (read from an in-memory copy)."""
    if not _EXPECTED:
        conn = sqlite3.connect(":memory:")
        try:
            conn.executescript(_SCHEMA)
            names = [
                str(r[0])
                for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' ORDER BY rowid"
                )
            ]
            _EXPECTED.update({name: _table_columns(conn, name) for name in names})
        finally:
            conn.close()
    return _EXPECTED


class LibraryError(MomentkitError):
    """A library database that cannot be used as asked (missing, other encoder, other schema)."""


class IndexLockedError(LibraryError):
    """Another indexing run holds the library."""


_READONLY_MARKERS = ("readonly database", "read-only", "unable to open database file")


def _is_readonly_error(error: BaseException) -> bool:
    """Whether ``error`` says the database cannot be written (not that it is damaged)."""
    if isinstance(error, PermissionError):
        return True
    lowered = str(error).lower()
    return isinstance(error, sqlite3.OperationalError) and any(
        m in lowered for m in _READONLY_MARKERS
    )


def _library_error(path: Path, error: sqlite3.Error) -> LibraryError:
    """A one-line error for an SQLite failure, naming the library and what to do."""
    text = str(error)
    lowered = text.lower()
    if "full" in lowered:
        hint = (
            "the disk is full: free some space and run again (the videos committed so far are "
            "kept, the library is consistent)"
        )
    elif any(m in lowered for m in _READONLY_MARKERS):
        hint = (
            "it cannot be written here (read-only file system, or no write permission on the "
            "file or its folder): search it, or index into a writable --db"
        )
    elif "locked" in lowered or "busy" in lowered:
        hint = "another process holds it: wait for it to finish and run again"
    elif "disk i/o" in lowered:
        hint = "the device reported an I/O error: check the disk"
    else:
        hint = "the database may be damaged: re-index into a new --db"
    return LibraryError(f"{path}: {text}; {hint}")


@dataclass(frozen=True)
class VideoRecord:
    """One indexed video.

    Attributes:
        id: row id (stable while the file is unchanged or moved).
        path: resolved absolute path of the file.
        size, mtime_ns, sha256: the file's fingerprint when it was indexed.
        duration: seconds.
        clip_len: seconds per clip of its features.
        num_clips: ``T``, rows of every feature stream.
        indexed_at: UNIX time of the indexing.
        encode_seconds: wall-clock seconds its encoding took.
    """

    id: int
    path: Path
    size: int
    mtime_ns: int
    sha256: str
    duration: float
    clip_len: float
    num_clips: int
    indexed_at: float
    encode_seconds: float

    @property
    def name(self) -> str:
        """The file name."""
        return self.path.name

    def known(self) -> KnownVideo:
        """The fields change detection compares."""
        return KnownVideo(self.id, self.path, self.size, self.mtime_ns, self.sha256)


@dataclass(frozen=True)
class ClipTable:
    """Every clip of the library as parallel arrays, for mapping vector ids back to videos.

    Attributes:
        ids: ``(N,)`` int64 clip ids (vector ids), ascending.
        video_ids: ``(N,)`` int64 the video of each clip.
        idx: ``(N,)`` int64 the clip's index in its video.
    """

    ids: np.ndarray
    video_ids: np.ndarray
    idx: np.ndarray

    def lookup(self, clip_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(video_ids, idx)`` of ``clip_ids`` (each must be in the table)."""
        pos = np.searchsorted(self.ids, clip_ids)
        return self.video_ids[pos], self.idx[pos]

    def by_video(self) -> dict[int, np.ndarray]:
        """video id -> ``(T,)`` int64 ids of its clips in clip order."""
        order = np.lexsort((self.idx, self.video_ids))
        videos = self.video_ids[order]
        starts = np.flatnonzero(np.r_[True, videos[1:] != videos[:-1]]) if len(order) else []
        bounds = list(starts) + [len(order)]
        return {int(videos[a]): self.ids[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:])}


def _video(row: Sequence[object]) -> VideoRecord:
    return VideoRecord(
        id=int(row[0]),
        path=Path(str(row[1])),
        size=int(row[2]),
        mtime_ns=int(row[3]),
        sha256=str(row[4]),
        duration=float(row[5]),
        clip_len=float(row[6]),
        num_clips=int(row[7]),
        indexed_at=float(row[8]),
        encode_seconds=float(row[9]),
    )


_VIDEO_COLUMNS = (
    "id, path, size, mtime_ns, sha256, duration, clip_len, num_clips, indexed_at, encode_seconds"
)


class LibraryStore:
    """The SQLite file of a library (see the module doc for the tables).

    Args:
        path: the database file.
        create: create it when missing; otherwise a missing file is an error.

    Raises:
        LibraryError: ``path`` is missing (without ``create``), is not a momentkit library, or
            was written by another schema version.

    The connection is shared by the threads of a server; every method holds a lock.
    """

    def __init__(self, path: str | Path, *, create: bool = False, readonly: bool = False) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise LibraryError(
                f"{self.path}: is a folder, not a library database. Give the --db file"
            )
        if (not create or readonly) and not self.path.is_file():
            raise LibraryError(
                f"{self.path}: no such library. Build it with `momentkit index VIDEO_DIR "
                f"--db {self.path}`"
            )
        self._lock = threading.RLock()
        self._create = create
        #: opened read-only: asked for, or the file or its folder cannot be written (a library
        #: on read-only media is still searchable)
        self.readonly = readonly
        if not readonly:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._conn = self._connect(readonly=False)
                return
            except LibraryError as e:
                if create and not self.path.is_file():
                    raise
                if not _is_readonly_error(e.__cause__ or e):
                    raise
            except OSError as e:
                raise LibraryError(
                    f"{self.path}: cannot create the library's folder ({e.strerror}). Give a "
                    "--db path in a writable folder"
                ) from None
            self.readonly = True
        self._conn = self._connect(readonly=True)

    def _connect(self, readonly: bool) -> sqlite3.Connection:
        """A connection set up for the library (WAL, foreign keys), schema checked.

        Read-only: the file is opened with ``mode=ro``, or ``immutable=1`` where SQLite cannot
        create the shared-memory file beside it (read-only media) and no write-ahead log holds
        changes that are not yet in the file.
        """
        try:
            if readonly:
                conn = self._connect_readonly()
            else:
                conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=30.0
                )
        except sqlite3.Error as e:
            raise _library_error(self.path, e) from e
        self._conn = conn
        try:
            self._refuse_foreign()  # before anything is written, even the journal mode
            if not readonly:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            if readonly:
                self._check_schema()
            else:
                self._init_schema()
        except LibraryError:
            conn.close()
            raise
        except sqlite3.DatabaseError as e:
            conn.close()
            if isinstance(e, sqlite3.OperationalError) and _is_readonly_error(e):
                raise _library_error(self.path, e) from e
            if isinstance(e, sqlite3.OperationalError) and "full" in str(e):
                raise _library_error(self.path, e) from e
            raise LibraryError(
                f"{self.path}: not a momentkit library database ({e}). Give another --db path"
            ) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect_readonly(self) -> sqlite3.Connection:
        from urllib.parse import quote

        uri = f"file:{quote(str(self.path.resolve()))}"
        conn = sqlite3.connect(
            f"{uri}?mode=ro", uri=True, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        try:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError:
            conn.close()
        wal = self.path.with_name(self.path.name + "-wal")
        if wal.is_file() and wal.stat().st_size > 0:
            raise LibraryError(
                f"{self.path}: cannot be read here: the folder is read-only and {wal.name} "
                "holds changes not yet merged into the library. Open it once where it is "
                "writable (any `momentkit query` merges them), or copy the three files to a "
                "writable folder"
            )
        return sqlite3.connect(
            f"{uri}?immutable=1", uri=True, isolation_level=None, check_same_thread=False
        )

    def _refuse_foreign(self) -> None:
        """Refuse, before anything is written (even the journal mode), an SQLite database that
        is not a momentkit library of this schema version.

        A database with any table, view, index or trigger must hold momentkit's ``meta`` table
        (its columns exactly), a ``schema_version`` of :data:`SCHEMA_VERSION`, and every
        library table with momentkit's columns: adding the library's tables to someone else's
        database would change it, and its own ``videos`` table may have other columns. An
        empty database is a new library only when ``create`` was asked (``momentkit index``);
        ``momentkit query`` never writes one.

        Raises:
            LibraryError: naming what differs and how to fix it.
        """
        objects = [
            (str(r[0]), str(r[1]))
            for r in self._conn.execute(
                "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
            )
        ]
        if not objects:
            if self._create:
                return  # a new (empty) database: the library's tables go in
            raise LibraryError(
                f"{self.path}: an empty SQLite database, not a momentkit library; momentkit "
                f"leaves it unchanged. Build the library with `momentkit index VIDEO_DIR --db "
                f"{self.path}`"
            )
        tables = sorted(name for kind, name in objects if kind == "table")
        others = sorted(f"{kind} {name}" for kind, name in objects if kind == "view")
        problem = None
        if "meta" not in tables:
            problem = "no momentkit 'meta' table"
        elif self._columns("meta") != _expected_columns()["meta"]:
            problem = self._differs("meta")
        else:
            try:
                row = self._conn.execute(
                    "SELECT value FROM meta WHERE key='schema_version'"
                ).fetchone()
            except sqlite3.DatabaseError:
                row = None
            if row is None:
                problem = "a 'meta' table that is not momentkit's (no schema_version)"
            elif str(row[0]) != str(SCHEMA_VERSION):
                raise LibraryError(
                    f"{self.path}: library schema version {row[0]}, this momentkit reads "
                    f"version {SCHEMA_VERSION}; momentkit leaves it unchanged. Re-index into a "
                    "new --db file"
                )
        if problem is None:
            for table, expected in _expected_columns().items():
                if table not in tables:
                    problem = f"no momentkit '{table}' table"
                elif self._columns(table) != expected:
                    problem = self._differs(table)
                if problem is not None:
                    break
        if problem is not None:
            found = tables + others
            shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
            raise LibraryError(
                f"{self.path}: not a momentkit library: an SQLite database of other tables "
                f"({shown}) with {problem}; momentkit leaves it unchanged. Give a new --db "
                "file for the library (e.g. --db library.db)"
            )

    def _columns(self, table: str) -> tuple[tuple[str, str, int, int], ...]:
        """``(name, TYPE, notnull, pk)`` of each column of ``table`` in this database."""
        return _table_columns(self._conn, table)

    def _differs(self, table: str) -> str:
        """``a 'T' table that is not momentkit's (columns ...; momentkit's: ...)``."""

        def shown(columns: Sequence[tuple[str, str, int, int]]) -> str:
            return ", ".join(
                " ".join([name, kind] + ["NOT NULL"] * bool(notnull) + ["PRIMARY KEY"] * bool(pk))
                .replace("  ", " ")
                .strip()
                for name, kind, notnull, pk in columns
            )

        return (
            f"a '{table}' table that is not momentkit's (columns {shown(self._columns(table))}; "
            f"momentkit's: {shown(_expected_columns()[table])})"
        )

    def _check_schema(self) -> None:
        """The checks of :meth:`_init_schema` without writing (read-only stores)."""
        tables = {
            r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if not {"meta", "videos", "clips", "streams"} <= tables:
            raise LibraryError(
                f"{self.path}: not a momentkit library database (tables missing). Give "
                "another --db path"
            )
        version = self.get_meta("schema_version")
        if version != str(SCHEMA_VERSION):
            raise LibraryError(
                f"{self.path}: library schema version {version}, this momentkit reads "
                f"version {SCHEMA_VERSION}. Re-index into a new --db file"
            )

    # -- lifecycle -------------------------------------------------------------------------------

    def _init_schema(self) -> None:
        with self.transaction(bump=False):
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._conn.execute(statement)
            version = self.get_meta("schema_version")
            if version is None:
                self.set_meta("schema_version", str(SCHEMA_VERSION))
                self.set_meta("generation", "0")
                self.set_meta("created_at", repr(time.time()))
            elif version != str(SCHEMA_VERSION):
                raise LibraryError(
                    f"{self.path}: library schema version {version}, this momentkit reads "
                    f"version {SCHEMA_VERSION}. Re-index into a new --db file"
                )

    @contextlib.contextmanager
    def index_lock(self) -> Iterator[None]:
        """Hold the library's indexing lock (``<db>.lock``, an OS file lock released when the
        process ends, even by ``kill -9``): one indexing run at a time.

        Raises:
            IndexLockedError: another process holds it.
        """
        try:
            import fcntl
        except ImportError:  # no POSIX locks: SQLite's own locking still keeps rows consistent
            yield
            return
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise LibraryError(
                f"{lock_path}: cannot create the indexing lock ({e.strerror}); index into a "
                "--db in a writable folder"
            ) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
                raise IndexLockedError(
                    f"{self.path}: another `momentkit index` is running on this library"
                    + (f" (process {holder})" if holder else "")
                    + "; wait for it to finish, then run again (it indexes only what is left)"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> LibraryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self, bump: bool = True) -> Iterator[None]:
        """One atomic write: everything inside commits together or not at all.

        Args:
            bump: increment ``meta.generation`` (tells readers their derived data is stale).
        """
        with self._lock:
            if self._conn.in_transaction:  # nested: part of the enclosing transaction
                yield
                return
            if self.readonly:
                raise LibraryError(
                    f"{self.path}: the library is read-only here (the file, its folder or the "
                    "file system cannot be written); it can be searched, not changed. Index "
                    "into a writable --db"
                )
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield
                    if bump:
                        self._conn.execute(
                            "UPDATE meta SET value = CAST(value AS INTEGER) + 1 "
                            "WHERE key='generation'"
                        )
                    self._conn.execute("COMMIT")
                except BaseException:
                    # SQLite may have rolled back already (disk full, I/O error): do not hide
                    # the error that caused it behind "cannot rollback"
                    if self._conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as e:
                raise _library_error(self.path, e) from e

    # -- meta ------------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        """The value stored under ``key``, ``None`` if absent."""
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Store ``value`` under ``key``."""
        with self._lock:
            self._conn.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (key, value),
            )

    @property
    def generation(self) -> int:
        """Counter incremented by every committed write."""
        return int(self.get_meta("generation") or 0)

    @property
    def encoder(self) -> str | None:
        """The encoder spec the library was indexed with (``None`` while empty and new)."""
        return self.get_meta("encoder")

    @property
    def clip_len(self) -> float | None:
        """Seconds per clip of the library's features (``None`` while empty and new)."""
        value = self.get_meta("clip_len")
        return None if value is None else float(value)

    def bind(self, spec: str, stream: str, clip_len: float) -> None:
        """Record the encoder spec, retrieval stream and clip length of a new library; check
        those of an existing one.

        Raises:
            LibraryError: the library was indexed with another encoder or clip length.
        """
        with self.transaction(bump=False):
            current = self.get_meta("encoder")
            if current is None:
                self.set_meta("encoder", spec)
                self.set_meta("retrieval_stream", stream)
                self.set_meta("clip_len", repr(float(clip_len)))
                return
            if current != spec:
                raise LibraryError(
                    f"{self.path}: the library was indexed with encoder '{current}', not "
                    f"'{spec}'. Use --encoder {current}, or another --db for '{spec}'"
                )
            stored = float(self.get_meta("clip_len") or clip_len)
            if abs(stored - clip_len) > 1e-9:
                raise LibraryError(
                    f"{self.path}: the library was indexed with {stored:g} s clips, not "
                    f"{clip_len:g} s. Use --clip-len {stored:g}, or another --db"
                )

    # -- roots -----------------------------------------------------------------------------------

    def add_root(self, root: Path) -> None:
        """Remember ``root`` as an indexed folder."""
        with self._lock:
            self._conn.execute(
                "INSERT OR IGNORE INTO roots(path, added_at) VALUES (?, ?)",
                (str(root), time.time()),
            )

    def roots(self) -> list[Path]:
        """The indexed folders."""
        with self._lock:
            rows = self._conn.execute("SELECT path FROM roots ORDER BY path").fetchall()
        return [Path(r[0]) for r in rows]

    # -- videos ----------------------------------------------------------------------------------

    def videos(self, under: Path | None = None) -> list[VideoRecord]:
        """Indexed videos (those inside folder ``under`` if given), by path."""
        with self._lock:
            rows = self._conn.execute(f"SELECT {_VIDEO_COLUMNS} FROM videos ORDER BY path")
            videos = [_video(r) for r in rows.fetchall()]
        if under is not None:
            videos = [v for v in videos if v.path.is_relative_to(under)]
        return videos

    def video(self, video_id: int) -> VideoRecord | None:
        """The video with id ``video_id``, ``None`` if there is none."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_VIDEO_COLUMNS} FROM videos WHERE id=?", (int(video_id),)
            ).fetchone()
        return None if row is None else _video(row)

    def num_videos(self) -> int:
        """Number of indexed videos."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM videos").fetchone()[0])

    def num_clips(self) -> int:
        """Number of indexed clips (vectors)."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM clips").fetchone()[0])

    def add_video(
        self,
        stat: FileStat,
        sha256: str,
        duration: float,
        clip_len: float,
        streams: Mapping[str, np.ndarray],
        encode_seconds: float,
        replace: int | None = None,
    ) -> int:
        """Insert a video with its clips and feature streams in one transaction.

        Args:
            stat: the file.
            sha256: its content digest.
            duration: seconds.
            clip_len: seconds per clip.
            streams: name -> ``(T, D)`` float32 features; every stream has the same ``T``.
            encode_seconds: time the encoding took.
            replace: id of a row to delete in the same transaction (a changed file).

        Returns:
            The new video id.
        """
        arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in streams.items()}
        lengths = {k: a.shape[0] for k, a in arrays.items() if a.ndim == 2}
        if not arrays or len(lengths) != len(arrays) or len(set(lengths.values())) != 1:
            shapes = {k: a.shape for k, a in arrays.items()}
            raise ValueError(f"{stat.path}: streams must be (T, D) with one T, got {shapes}")
        num = next(iter(lengths.values()))
        try:
            return self._insert_video(
                stat, sha256, duration, clip_len, arrays, num, encode_seconds, replace
            )
        except sqlite3.IntegrityError as e:  # another writer added this path meanwhile
            raise LibraryError(
                f"{stat.path}: was added to {self.path} by another process at the same time "
                f"({e}); run the index again to reconcile"
            ) from None

    def _insert_video(
        self,
        stat: FileStat,
        sha256: str,
        duration: float,
        clip_len: float,
        arrays: Mapping[str, np.ndarray],
        num: int,
        encode_seconds: float,
        replace: int | None,
    ) -> int:
        with self.transaction():
            if replace is not None:
                self._conn.execute("DELETE FROM videos WHERE id=?", (int(replace),))
            self._conn.execute("DELETE FROM failures WHERE path=?", (str(stat.path),))
            cur = self._conn.execute(
                "INSERT INTO videos(path, size, mtime_ns, sha256, duration, clip_len, num_clips, "
                "indexed_at, encode_seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    str(stat.path),
                    stat.size,
                    stat.mtime_ns,
                    sha256,
                    float(duration),
                    float(clip_len),
                    num,
                    time.time(),
                    float(encode_seconds),
                ),
            )
            video_id = int(cur.lastrowid or 0)
            first = int(self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM clips").fetchone()[0])
            self._conn.executemany(
                "INSERT INTO clips(id, video_id, idx, start, end) VALUES (?, ?, ?, ?, ?)",
                (
                    (
                        first + 1 + i,
                        video_id,
                        i,
                        i * clip_len,
                        max(min((i + 1) * clip_len, duration), i * clip_len),
                    )
                    for i in range(num)
                ),
            )
            self._conn.executemany(
                "INSERT INTO streams(video_id, name, rows, dim, data) VALUES (?, ?, ?, ?, ?)",
                (
                    (video_id, name, a.shape[0], a.shape[1], a.tobytes())
                    for name, a in arrays.items()
                ),
            )
        return video_id

    def remove_video(self, video_id: int) -> None:
        """Delete a video, its clips and its streams (one transaction)."""
        with self.transaction():
            self._conn.execute("DELETE FROM videos WHERE id=?", (int(video_id),))

    def update_file(self, video_id: int, stat: FileStat) -> None:
        """Point a video at a new path / fingerprint without touching its features."""
        with self.transaction():
            self._conn.execute(
                "UPDATE videos SET path=?, size=?, mtime_ns=? WHERE id=?",
                (str(stat.path), stat.size, stat.mtime_ns, int(video_id)),
            )

    # -- features --------------------------------------------------------------------------------

    def streams(self, video_id: int, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """A video's feature streams: name -> ``(T, D)`` float32 (``names``: only those)."""
        query = "SELECT name, rows, dim, data FROM streams WHERE video_id=?"
        params: list[object] = [int(video_id)]
        if names is not None:
            query += f" AND name IN ({','.join('?' * len(names))})"
            params.extend(names)
        with self._lock:
            rows = self._conn.execute(query, params).fetchall()
        return {
            str(name): np.frombuffer(data, dtype=np.float32).reshape(int(r), int(d))
            for name, r, d, data in rows
        }

    def iter_stream(self, name: str) -> Iterator[tuple[int, np.ndarray]]:
        """``(video_id, (T, D) float32)`` of stream ``name`` for every video, by video id.

        Rows are read one at a time (a large library is never held twice in memory); other
        threads wait until the iteration ends.
        """
        with self._lock:
            cursor = self._conn.execute(
                "SELECT video_id, rows, dim, data FROM streams WHERE name=? ORDER BY video_id",
                (name,),
            )
            for video_id, r, d, data in cursor:
                yield int(video_id), np.frombuffer(data, dtype=np.float32).reshape(int(r), int(d))

    def clip_table(self) -> ClipTable:
        """Every clip as a :class:`ClipTable`."""
        with self._lock:
            rows = self._conn.execute("SELECT id, video_id, idx FROM clips ORDER BY id").fetchall()
        table = np.array(rows, dtype=np.int64).reshape(-1, 3)
        return ClipTable(table[:, 0].copy(), table[:, 1].copy(), table[:, 2].copy())

    # -- failures and runs -----------------------------------------------------------------------

    def record_failure(self, stat: FileStat, error: str) -> None:
        """Remember that ``stat`` could not be encoded (not retried until the file changes)."""
        with self.transaction(bump=False):
            self._conn.execute(
                "INSERT INTO failures(path, size, mtime_ns, error, at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(path) DO UPDATE SET size=excluded.size, mtime_ns=excluded.mtime_ns, "
                "error=excluded.error, at=excluded.at",
                (str(stat.path), stat.size, stat.mtime_ns, error, time.time()),
            )

    def failures(self) -> dict[Path, tuple[int, int, str]]:
        """path -> ``(size, mtime_ns, error)`` of every recorded failure."""
        with self._lock:
            rows = self._conn.execute("SELECT path, size, mtime_ns, error FROM failures").fetchall()
        return {Path(p): (int(s), int(m), str(e)) for p, s, m, e in rows}

    def forget_failures(self, paths: Sequence[Path]) -> None:
        """Drop the failure records of ``paths`` (deleted files)."""
        if not paths:
            return
        with self.transaction(bump=False):
            self._conn.executemany("DELETE FROM failures WHERE path=?", ((str(p),) for p in paths))

    def record_run(self, root: Path, started_at: float, seconds: float, **counts: int) -> None:
        """Append one indexing run (timings and counts) to ``runs``."""
        keys = ("added", "changed", "moved", "touched", "removed", "unchanged", "failed")
        with self.transaction(bump=False):
            self._conn.execute(
                f"INSERT INTO runs(root, started_at, seconds, {', '.join(keys)}) "
                f"VALUES (?, ?, ?, {', '.join('?' * len(keys))})",
                (str(root), started_at, seconds, *(int(counts.get(k, 0)) for k in keys)),
            )

    def runs(self) -> list[dict[str, object]]:
        """Every recorded indexing run, oldest first, as dicts."""
        with self._lock:
            cur = self._conn.execute("SELECT * FROM runs ORDER BY id")
            names = [c[0] for c in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]
