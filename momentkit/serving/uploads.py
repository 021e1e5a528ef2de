"""Uploaded videos: stored under server-chosen names, never under the client's.

An upload is written to a hidden temporary file in the upload folder while its size is
counted (over the limit: :class:`UploadRejected` with status 413), checked to be a decodable
video, then renamed to ``<32 hex digits><ext>``; its id is ``u-<hex>``. The client's file name
is only kept, sanitised, as a display name in a sidecar ``<hex>.json``; it never becomes part of
a path. Ids are validated against a strict pattern before any file is looked up, and resolved
paths must stay inside the upload folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import tempfile
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from momentkit.library.files import VIDEO_EXTENSIONS
from momentkit.utils.io import write_json

UPLOAD_ID = re.compile(r"u-([0-9a-f]{32})")
_STORED_NAME = re.compile(r"([0-9a-f]{32})(\.[a-z0-9]{2,5})")
_CHUNK = 1 << 20


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
        directory: where uploads are kept (created if missing).
        max_bytes: largest accepted upload.
    """

    def __init__(self, directory: str | Path, max_bytes: int) -> None:
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)

    def save(self, stream: BinaryIO, client_name: str | None) -> UploadedVideo:
        """Store an upload read from ``stream``.

        Raises:
            UploadRejected: 415 for a non-video name or content, 413 when over the limit.
        """
        from momentkit.video.decode import VideoError, probe

        ext = upload_extension(client_name)
        fd, tmp_name = tempfile.mkstemp(prefix=".upload-", suffix=ext, dir=self.directory)
        tmp = Path(tmp_name)
        try:
            size = 0
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(_CHUNK):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise UploadRejected(413, self.too_large())
                    out.write(chunk)
            if size == 0:
                raise UploadRejected(415, "the file is empty")
            try:
                info = probe(tmp)
            except VideoError:
                raise UploadRejected(415, "the file is not a video that can be decoded") from None
            token = secrets.token_hex(16)
            path = self.directory / f"{token}{ext}"
            meta = {"name": display_name(client_name), "duration": info.duration}
            meta["uploaded_at"] = time.time()
            write_json(self.directory / f"{token}.json", meta)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return self._record(token, path)

    def too_large(self) -> str:
        """The message of a 413."""
        return f"the upload is larger than the limit of {self.max_bytes / 2**20:g} MiB"

    def _record(self, token: str, path: Path) -> UploadedVideo:
        meta: dict[str, object] = {}
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads((self.directory / f"{token}.json").read_text(encoding="utf-8"))
        st = path.stat()
        return UploadedVideo(
            id=f"u-{token}",
            path=path,
            name=display_name(str(meta.get("name") or path.name)),
            size=st.st_size,
            duration=float(meta.get("duration") or 0.0),  # type: ignore[arg-type]
            uploaded_at=float(meta.get("uploaded_at") or st.st_mtime),  # type: ignore[arg-type]
        )

    def list(self) -> list[UploadedVideo]:
        """Every stored upload, newest first."""
        found = []
        for entry in self.directory.iterdir():
            match = _STORED_NAME.fullmatch(entry.name)
            if match and match.group(2) in VIDEO_EXTENSIONS and self._inside(entry):
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
                return self._record(token, path)
        return None

    def _inside(self, path: Path) -> bool:
        """A regular file (not a link) directly inside the upload folder."""
        return path.is_file() and not path.is_symlink() and path.resolve().parent == self.directory
