"""Uploaded videos: stored under server-chosen names, never under the client's.

An upload is written to a hidden temporary file in the upload folder while its size is
counted (over the limit: :class:`UploadRejected` with status 413; over the storage the folder
may hold: 507), synced, checked to be a decodable video (and by the server's own check, e.g. a
clip limit), then renamed to ``<32 hex digits><ext>`` (placed with
:func:`~momentkit.utils.paths.safe_child`): a crash leaves no partial upload. Its id is
``u-<hex>``. The client's file name is only kept, sanitised, as a display name in a sidecar
``<hex>.json`` (written atomically); it never becomes part of a path. Ids are validated against
a strict pattern before any file is looked up, and resolved paths must stay inside the upload
folder. A store opened ``read_only`` refuses uploads (403); a folder that cannot be written (a
full disk, a read-only file system) gives 507 with the reason.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from momentkit.library.files import VIDEO_EXTENSIONS
from momentkit.utils.io import write_json
from momentkit.utils.paths import safe_child

UPLOAD_ID = re.compile(r"u-([0-9a-f]{32})")
_STORED_NAME = re.compile(r"([0-9a-f]{32})(\.[a-z0-9]{2,5})")
_CHUNK = 1 << 20
_TEMP_PREFIX = ".upload-"
#: a temporary upload file older than this (seconds) is a crash's leftover
_STALE_SECONDS = 3600.0


class UploadRejected(Exception):
    """An upload refused with an HTTP ``status`` and a message for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def display_name(client_name: str | None, max_len: int = 120) -> str:
    """A harmless label from a client's file name: its last path component, without control
    characters, at most ``max_len`` characters (``"video"`` if nothing is left)."""
    name = re.split(r"[\\/]", client_name or "")[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip()
    return name[:max_len] or "video"


def upload_extension(client_name: str | None) -> str:
    """The lower-case video extension of the client's file name.

    Raises:
        UploadRejected: (415) not one of the video extensions.
    """
    suffix = Path(display_name(client_name)).suffix.lower()
    if suffix not in VIDEO_EXTENSIONS:
        allowed = ", ".join(sorted(VIDEO_EXTENSIONS))
        raise UploadRejected(415, f"not a video file name (expected one of: {allowed})")
    return suffix


@dataclass(frozen=True)
class UploadedVideo:
    """A stored upload.

    Attributes:
        id: ``u-<hex>``.
        path: the stored file.
        name: the sanitised client file name (display only).
        size: bytes.
        duration: seconds.
        uploaded_at: UNIX time.
    """

    id: str
    path: Path
    name: str
    size: int
    duration: float
    uploaded_at: float


class UploadStore:
    """The upload folder.

    Args:
        directory: where uploads are kept (created if missing, unless ``read_only``).
        max_bytes: largest accepted upload.
        max_total_bytes: most bytes all uploads together may take (``None``: no limit);
            an upload that would go over it is refused with 507, naming uploads to delete.
        read_only: refuse every upload (403); list and serve the ones already there.
    """

    def __init__(
        self,
        directory: str | Path,
        max_bytes: int,
        *,
        max_total_bytes: int | None = None,
        read_only: bool = False,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.read_only = read_only
        if not read_only:
            self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self.max_total_bytes = None if max_total_bytes is None else int(max_total_bytes)
        self._lock = threading.Lock()
        self._stored = 0  # bytes of the stored uploads (recounted at each upload's start)
        self._pending = 0  # bytes of uploads being written now
        if not read_only:
            self._remove_stale_temporaries()

    def _remove_stale_temporaries(self) -> None:
        """Delete temporary files left by a crash (older than an hour, so never one that a
        server sharing the folder is writing)."""
        now = time.time()
        for entry in self.directory.glob(f"{_TEMP_PREFIX}*"):
            with contextlib.suppress(OSError):
                if entry.is_file() and not entry.is_symlink():
                    if now - entry.stat().st_mtime > _STALE_SECONDS:
                        entry.unlink()

    # -- storage -----------------------------------------------------------------------------

    def usage(self) -> int:
        """Bytes the stored uploads take (videos and their sidecars; not uploads in progress)."""
        total = 0
        if not self.directory.is_dir():
            return 0
        for entry in self.directory.iterdir():
            if entry.name.startswith(_TEMP_PREFIX):
                continue
            with contextlib.suppress(OSError):
                st = entry.lstat()
                if entry.is_file() and not entry.is_symlink():
                    total += st.st_size
        return total

    def room(self) -> int | None:
        """Bytes an upload may still take (``None``: no storage limit)."""
        if self.max_total_bytes is None:
            return None
        with self._lock:
            return max(self.max_total_bytes - self.usage() - self._pending, 0)

    def _reserve(self, n: int) -> None:
        with self._lock:
            limit = self.max_total_bytes
            if limit is not None and self._stored + self._pending + n > limit:
                raise UploadRejected(507, self.storage_full())
            self._pending += n

    def _unreserve(self, n: int, stored: bool) -> None:
        with self._lock:
            self._pending -= n
            if stored:
                self._stored += n

    def storage_full(self) -> str:
        """The message of a 507 for a full upload folder: what to delete."""
        oldest = sorted(self.list(), key=lambda v: v.uploaded_at)[:3]
        names = ", ".join(f"'{v.name}' ({v.id}, {v.size / 2**20:.1f} MiB)" for v in oldest)
        limit = (self.max_total_bytes or 0) / 2**20
        return (
            f"the uploads already take {self._stored / 2**20:.1f} MiB of the {limit:g} MiB this "
            "server keeps (--max-upload-storage), so this upload does not fit. Delete uploads "
            "you no longer need with DELETE /api/videos/<id>"
            + (f" (oldest: {names})" if names else "")
            + ", or restart the server with a larger --max-upload-storage"
        )

    def too_large(self) -> str:
        """The message of a 413."""
        return f"the upload is larger than the limit of {self.max_bytes / 2**20:g} MiB"

    @staticmethod
    def read_only_message() -> str:
        """The message of a 403 for an upload to a read-only server."""
        return (
            "this server is read-only (started with --read-only, or its upload folder cannot "
            "be written): uploads are turned off; search the videos it has"
        )

    def _write_refused(self, e: OSError) -> UploadRejected:
        """A 507 saying why the folder could not be written (no server paths)."""
        cause = e.__cause__ or e.__context__  # an OutputError of an atomic write wraps one
        if e.errno is None and isinstance(cause, OSError):
            e = cause
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            reason = "the server's disk is full"
        elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            reason = "the server cannot write its upload folder (read-only or no permission)"
        else:
            reason = f"the server could not write the upload ({e.strerror or type(e).__name__})"
        return UploadRejected(507, f"{reason}: the upload was not stored")

    # -- uploads -----------------------------------------------------------------------------

    def save(
        self,
        stream: BinaryIO,
        client_name: str | None,
        check: Callable[[Any, str], None] | None = None,
    ) -> UploadedVideo:
        """Store an upload read from ``stream``.

        Args:
            stream: the bytes.
            client_name: the client's file name (its extension and a display name only).
            check: called as ``check(video_info, display_name)`` once the file decodes; raises
                :class:`UploadRejected` to refuse it (e.g. too many clips).

        Raises:
            UploadRejected: 415 for a non-video name or content, 413 when over the limit (or
                by ``check``), 507 when the folder is full or cannot be written, 403 for a
                read-only store.
        """
        from momentkit.video.decode import DamagedVideoError, VideoError, probe

        if self.read_only:
            raise UploadRejected(403, self.read_only_message())
        ext = upload_extension(client_name)
        name = display_name(client_name)
        token = secrets.token_hex(16)
        path = safe_child(self.directory, f"{token}{ext}", "upload")
        sidecar = safe_child(self.directory, f"{token}.json", "upload")
        with self._lock:
            self._stored = self.usage()
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=ext, dir=self.directory)
        except OSError as e:
            raise self._write_refused(e) from None
        tmp = Path(tmp_name)
        reserved = 0
        stored = False
        try:
            size = 0
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(_CHUNK):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise UploadRejected(413, self.too_large())
                    self._reserve(len(chunk))
                    reserved += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if size == 0:
                raise UploadRejected(415, "the file is empty")
            try:
                info = probe(tmp)
            except DamagedVideoError as e:  # a header declaring an impossible duration
                raise UploadRejected(415, f"the video is damaged: {e.problem}") from None
            except VideoError:
                raise UploadRejected(415, "the file is not a video that can be decoded") from None
            if check is not None:
                check(info, name)
            meta = {"name": name, "duration": info.duration, "uploaded_at": time.time()}
            write_json(sidecar, meta)  # atomic
            os.replace(tmp, path)  # atomic: the upload appears whole or not at all
            stored = True
        except OSError as e:
            raise self._write_refused(e) from None
        finally:
            self._unreserve(reserved, stored)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            if not stored:
                with contextlib.suppress(OSError):
                    sidecar.unlink()
        return self._record(token, path)

    def delete(self, video_id: str) -> bool:
        """Delete an upload and its sidecar; ``False`` when there is no such upload.

        Raises:
            UploadRejected: 403 for a read-only store, 507 when the folder cannot be written.
        """
        if self.read_only:
            raise UploadRejected(403, self.read_only_message())
        upload = self.get(video_id)
        if upload is None:
            return False
        token = video_id.removeprefix("u-")
        try:
            with self._lock:
                upload.path.unlink()
                with contextlib.suppress(FileNotFoundError):
                    safe_child(self.directory, f"{token}.json", "upload").unlink()
                self._stored = self.usage()
        except FileNotFoundError:
            return False
        except OSError as e:
            raise self._write_refused(e) from None
        return True

    def _record(self, token: str, path: Path) -> UploadedVideo:
        meta: dict[str, object] = {}
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads((self.directory / f"{token}.json").read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            meta = {}
        st = path.stat()
        return UploadedVideo(
            id=f"u-{token}",
            path=path,
            name=display_name(str(meta.get("name") or path.name)),
            size=st.st_size,
            duration=_number(meta.get("duration"), 0.0),
            uploaded_at=_number(meta.get("uploaded_at"), st.st_mtime),
        )

    def list(self) -> list[UploadedVideo]:
        """Every stored upload, newest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for entry in self.directory.iterdir():
            match = _STORED_NAME.fullmatch(entry.name)
            if match and match.group(2) in VIDEO_EXTENSIONS and self._inside(entry):
                with contextlib.suppress(OSError):  # deleted meanwhile
                    found.append(self._record(match.group(1), entry))
        return sorted(found, key=lambda v: -v.uploaded_at)

    def get(self, video_id: str) -> UploadedVideo | None:
        """The upload with id ``video_id``; ``None`` for an unknown or malformed id."""
        match = UPLOAD_ID.fullmatch(video_id)
        if match is None:
            return None
        token = match.group(1)
        for ext in VIDEO_EXTENSIONS:
            path = self.directory / f"{token}{ext}"
            if self._inside(path):
                with contextlib.suppress(OSError):
                    return self._record(token, path)
        return None

    def _inside(self, path: Path) -> bool:
        """A regular file (not a link) directly inside the upload folder."""
        return path.is_file() and not path.is_symlink() and path.resolve().parent == self.directory


def _number(value: object, default: float) -> float:
    """A finite float from a sidecar value (``default`` for anything else)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return number if number == number and abs(number) != float("inf") else default
