"""The FastAPI application behind ``momentkit serve``: a JSON API and the search page.

::

    GET    /                        the page (static/index.html)
    GET    /static/{name}           the page's script and style sheet (a fixed list of files)
    GET    /api/info                mode, encoder, limits
    GET    /api/videos              uploads and library videos: [{id, name, source, duration,
                                    url}]
    POST   /api/videos              upload a video (multipart field "file") -> 201 {video}
    GET    /api/videos/{id}         {video}
    DELETE /api/videos/{id}         delete an upload -> 204
    GET    /api/videos/{id}/file    the video's bytes; HTTP Range requests give 206 (seeking)
    POST   /api/videos/{id}/search  {"queries": [...], "top_k": 10, "min_relevance": null} ->
                                    {video, results: [{query, moments: [{start, end, score,
                                    relevance}], saliency, clip_len, duration, min_relevance,
                                    best_relevance, no_confident_match}], seconds}
    POST   /api/search              {"query": "...", "top_k": 10, "min_relevance": null} -> the
                                    library's best moments across videos (404 without a
                                    library)

Requests never name files: videos are named by ids the server made. Every error is JSON,
``{"detail": "<one line>"}``, never a traceback:

- 400: a ``Host`` the server was not started for (DNS rebinding);
- 403: a write (``POST``, ``DELETE``) from another origin (``Origin`` / ``Referer``), or an
  upload to a read-only server;
- 413: an upload over the size limit, a video of more clips than allowed, a JSON body over
  64 KiB; 415: not a video;
- 422: a request that does not validate (the reason in ``detail``; non-finite numbers, lone
  surrogates and control characters are refused);
- 503 with ``Retry-After``: the model is busy past the queue timeout, too many uploads at once,
  or the server is shutting down; 504: a search ran past its time budget and was stopped;
- 507: the upload storage is full (the message names uploads to delete) or cannot be written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from starlette.datastructures import Headers, UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from momentkit.inference.predictor import TooManyClipsError
from momentkit.library.files import VIDEO_EXTENSIONS
from momentkit.serving.service import (
    NotFound,
    SearchCancelled,
    SearchTimeout,
    ServiceUnavailable,
    VideoService,
)
from momentkit.serving.uploads import UploadRejected
from momentkit.utils.errors import MomentkitError

log = logging.getLogger("momentkit.serving")

# the page's files: name -> media type (nothing else under /static is served)
STATIC_FILES = {
    "app.js": "text/javascript",
    "style.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
# room for the multipart boundaries and part headers around the file
MULTIPART_SLACK = 64 * 1024
#: largest JSON request body (a search asks at most 20 queries of 500 characters)
MAX_JSON_BYTES = 64 * 1024
#: uploads received at once (each is spooled, copied and probed); more get 503
MAX_CONCURRENT_UPLOADS = 4
#: hosts a server made by :func:`create_app` answers by default (any port)
DEFAULT_ALLOWED_HOSTS = ("localhost", "127.0.0.1", "[::1]")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_MEDIA_TYPES = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mov": "video/quicktime",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".ogv": "video/ogg",
    ".avi": "video/x-msvideo",
    ".mpg": "video/mpeg",
    ".mpeg": "video/mpeg",
    ".ts": "video/mp2t",
    ".wmv": "video/x-ms-wmv",
}
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; media-src 'self'; style-src 'self'; "
        "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'"
    ),
}


# --------------------------------------------------------------------------------- validation
def _plain_text(value: str) -> str:
    """Text that UTF-8 can encode, without control characters (tab and newlines allowed)."""
    if any("\ud800" <= c <= "\udfff" for c in value):
        raise ValueError("must be valid Unicode text (it holds a lone surrogate)")
    if any((c < " " and c not in "\t\n\r") or c == "\x7f" for c in value):
        raise ValueError("must not hold control characters")
    return value


Query = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=500),
    AfterValidator(_plain_text),
]
TopK = Annotated[int, Field(strict=True, ge=1, le=100)]
MinRelevance = Annotated[float | None, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class VideoSearch(BaseModel):
    """Body of ``POST /api/videos/{id}/search``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    queries: list[Query] = Field(min_length=1, max_length=20)
    top_k: TopK = 10
    min_relevance: MinRelevance = None


class LibrarySearch(BaseModel):
    """Body of ``POST /api/search``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    query: Query
    top_k: TopK = 10
    videos: Annotated[int, Field(strict=True, ge=1, le=50)] = 5
    min_relevance: MinRelevance = None


def _printable(value: object, limit: int = 80) -> str:
    """``value`` as text that JSON and UTF-8 can carry (lone surrogates escaped), shortened."""
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validation_detail(errors: Sequence[Any]) -> tuple[str, list[dict[str, str]]]:
    """One line and a list of ``{field, problem}`` for pydantic's errors, without echoing the
    input (a NaN or a lone surrogate in it cannot be sent back as JSON)."""
    items = []
    for error in list(errors)[:10]:
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        field = ".".join(_printable(p, 40) for p in loc) or "body"
        items.append({"field": field, "problem": _printable(error.get("msg", "invalid"), 200)})
    line = "; ".join(f"{i['field']}: {i['problem']}" for i in items) or "invalid request"
    return line, items


# --------------------------------------------------------------------------------- middleware
def _split_host(value: str) -> tuple[str, int | None] | None:
    """``(name, port)`` of a ``Host`` header or an allowed-host entry (IPv6 without brackets,
    lower case, no trailing dot); ``None`` when it cannot be read."""
    value = value.strip()
    if not value or any(c in value for c in "/?#@ \\"):
        return None
    if value.count(":") > 1 and not value.startswith("["):  # a bare IPv6 address
        return value.lower(), None
    try:
        parts = urlsplit(f"//{value}")
        name, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not name:
        return None
    return name.rstrip(".").lower(), port


class SecurityHeaders:
    """Adds :data:`_SECURITY_HEADERS` to every response that does not set them (pure ASGI)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                present = {k.lower() for k, _ in headers}
                for key, value in _SECURITY_HEADERS.items():
                    if key.lower().encode() not in present:
                        headers.append((key.lower().encode(), value.encode()))
            await send(message)

        await self.app(scope, receive, send_with_headers)


class JSONErrors:
    """Turns error responses that are not JSON (Starlette's plain-text 400 and 416 for a bad
    ``Range`` header, for instance) into ``{"detail": "<their text>"}`` (pure ASGI), so that
    every error the server sends is JSON."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        chunks: list[bytes] = []

        async def send_json_errors(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                kind = Headers(raw=message.get("headers", [])).get("content-type", "")
                if message["status"] >= 400 and not kind.startswith("application/json"):
                    held = message  # rewritten once its body is complete
                    return
            elif held is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                status = held["status"]
                text = b"".join(chunks).decode("utf-8", "replace").strip()
                body = json.dumps({"detail": _printable(text or HTTPStatus(status).phrase, 300)})
                skip = (b"content-type", b"content-length")
                headers = [(k, v) for k, v in held.get("headers", []) if k.lower() not in skip]
                headers += [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ]
                await send({**held, "headers": headers})
                await send({"type": "http.response.body", "body": body.encode()})
                return
            await send(message)

        await self.app(scope, receive, send_json_errors)


class RequestGuard:
    """Refuses requests for other hosts, writes from other origins and large JSON bodies.

    - ``Host`` must name one of ``allowed_hosts`` (``"name"``: any port; ``"name:port"``: that
      port; ``"*"``: any host), else 400: a page of another site whose name was re-bound to
      this machine's address (DNS rebinding) cannot read the library.
    - A ``POST`` or ``DELETE`` whose ``Origin`` (or, without one, ``Referer``) is not the
      server's own (the ``host:port`` the request was sent to) is refused with 403: another
      site's page, even one on this machine, cannot upload or search through the user's
      browser. Requests with neither (``curl``, scripts) are let through, unless
      the browser says ``Sec-Fetch-Site: cross-site``.
    - A body other than an upload over ``max_json_bytes`` gets 413.
    """

    def __init__(
        self,
        app: ASGIApp,
        allowed_hosts: Sequence[str],
        upload_path: str = "/api/videos",
        max_json_bytes: int = MAX_JSON_BYTES,
    ) -> None:
        self.app = app
        self.any_host = "*" in allowed_hosts
        self.allowed: list[tuple[str, int | None]] = []
        for entry in allowed_hosts:
            if entry == "*":
                continue
            parsed = _split_host(entry)
            if parsed is None:
                raise ValueError(f"not a host name or host:port: {entry!r}")
            self.allowed.append(parsed)
        self.upload_path = upload_path
        self.max_json_bytes = max_json_bytes

    def host_allowed(self, host: tuple[str, int | None], default_port: int) -> bool:
        name, port = host
        port = port if port is not None else default_port
        return any(n == name and (p is None or p == port) for n, p in self.allowed)

    @staticmethod
    def _same_origin(origin: str, request_host: tuple[str, int | None] | None) -> bool:
        """Whether ``origin`` (or a referring URL) names the host the request was sent to (which
        passed the host check): the server's own page."""
        try:
            parts = urlsplit(origin)
            name, port = parts.hostname, parts.port
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not name or request_host is None:
            return False
        default = 443 if parts.scheme == "https" else 80
        mine = (request_host[0], request_host[1] if request_host[1] is not None else default)
        return (name.rstrip(".").lower(), port if port is not None else default) == mine

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host_header = headers.get("host", "")
        request_host = _split_host(host_header)
        default_port = 443 if scope.get("scheme") == "https" else 80
        if not self.any_host and (
            request_host is None or not self.host_allowed(request_host, default_port)
        ):
            shown = _printable(host_header, 60) or "(none)"
            await _error(
                400,
                f"this server does not answer for the host {shown!r}; start it with "
                "--allowed-host NAME to reach it under another name",
            )(scope, receive, send)
            return
        method = scope["method"]
        if method not in _SAFE_METHODS:
            origin = headers.get("origin")
            referer = headers.get("referer")
            if origin is not None:
                ok, source = self._same_origin(origin, request_host), origin
            elif referer:
                ok, source = self._same_origin(referer, request_host), referer
            else:
                site = headers.get("sec-fetch-site", "none")
                ok, source = site in ("same-origin", "none"), f"Sec-Fetch-Site: {site}"
            if not ok:
                await _error(
                    403,
                    f"cross-origin {method} refused ({_printable(source, 60)}): this server "
                    "accepts uploads and searches only from its own page",
                )(scope, receive, send)
                return
            if not (method == "POST" and scope["path"] == self.upload_path):
                length = headers.get("content-length")
                if length is not None and length.isdigit() and int(length) > self.max_json_bytes:
                    await _error(413, self._too_large())(scope, receive, send)
                    return
                receive = limited_receive(receive, self.max_json_bytes, self._too_large())
        await self.app(scope, receive, send)

    def _too_large(self) -> str:
        return f"the request body is larger than {self.max_json_bytes // 1024} KiB"


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def static_dir() -> Path:
    """The folder of the page's files."""
    return Path(str(resources.files("momentkit.serving").joinpath("static")))


def limited_receive(receive: Receive, limit: int, message: str) -> Callable[[], Awaitable[Message]]:
    """``receive`` that fails with 413 once the request body exceeds ``limit`` bytes."""
    received = 0

    async def wrapped() -> Message:
        nonlocal received
        msg = await receive()
        if msg["type"] == "http.request":
            received += len(msg.get("body", b""))
            if received > limit:
                raise HTTPException(413, message)
        return msg

    return wrapped


# ---------------------------------------------------------------------------------------- app
def create_app(
    service: VideoService,
    *,
    encoder: str = "",
    checkpoint: str | None = None,
    allowed_hosts: Sequence[str] = DEFAULT_ALLOWED_HOSTS,
) -> FastAPI:
    """The application serving ``service``.

    Args:
        service: videos, uploads, library and models.
        encoder: the encoder spec shown by ``/api/info``.
        checkpoint: the checkpoint shown by ``/api/info`` (its folder name only).
        allowed_hosts: the names (``host`` or ``host:port``; ``"*"``: any) clients may reach
            the server under; other ``Host`` headers get 400 and writes from other origins 403
            (see :class:`RequestGuard`).
    """
    app = FastAPI(title="momentkit", docs_url=None, redoc_url=None, openapi_url=None)
    static = static_dir()
    uploads = service.uploads
    max_bytes = uploads.max_bytes
    app.state.uploads_in_flight = 0
    RequestGuard(app, tuple(allowed_hosts))  # refuse a bad entry now (middleware is built late)
    app.add_middleware(RequestGuard, allowed_hosts=tuple(allowed_hosts))
    app.add_middleware(JSONErrors)
    app.add_middleware(SecurityHeaders)

    # -- errors: one JSON line each, never a traceback ---------------------------------------
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        line, items = validation_detail(exc.errors())
        return JSONResponse({"detail": line, "errors": items}, status_code=422)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> JSONResponse:
        return _error(404, "no such video")

    @app.exception_handler(TooManyClipsError)
    async def too_long(request: Request, exc: TooManyClipsError) -> JSONResponse:
        return _error(413, _hide_paths(str(exc), service))

    @app.exception_handler(MomentkitError)
    async def user_error(request: Request, exc: MomentkitError) -> JSONResponse:
        return _error(422, _hide_paths(str(exc), service))

    @app.exception_handler(UploadRejected)
    async def rejected(request: Request, exc: UploadRejected) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(ServiceUnavailable)
    async def unavailable(request: Request, exc: ServiceUnavailable) -> JSONResponse:
        retry = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return _error(503, exc.message, retry)

    @app.exception_handler(SearchTimeout)
    async def timed_out(request: Request, exc: SearchTimeout) -> JSONResponse:
        return _error(504, exc.message)

    @app.exception_handler(SearchCancelled)
    async def cancelled(request: Request, exc: SearchCancelled) -> JSONResponse:
        return _error(503, "the search was cancelled")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("error answering %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            {"detail": f"internal error ({type(exc).__name__}); the server's log has the details"},
            status_code=500,
            headers=_SECURITY_HEADERS,
        )

    # -- the page ----------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(static / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    def asset(name: str) -> FileResponse:
        if name not in STATIC_FILES:
            raise HTTPException(404, "not found")
        return FileResponse(static / name, media_type=STATIC_FILES[name])

    # -- the API -----------------------------------------------------------------------------
    @app.get("/api/info")
    def info() -> dict[str, Any]:
        library = service.library
        limits = service.limits
        total = uploads.max_total_bytes
        return {
            "library": None
            if library is None
            else {"videos": library.store.num_videos(), "clips": library.store.num_clips()},
            "encoder": (library.spec if library is not None else None) or encoder,
            "checkpoint": Path(checkpoint).name if checkpoint else None,
            "max_upload_mb": round(max_bytes / 2**20, 6),
            "max_upload_storage_mb": None if total is None else round(total / 2**20, 6),
            "max_clips": limits.max_clips,
            "search_timeout": limits.search_timeout,
            "read_only": uploads.read_only,
            "extensions": sorted(VIDEO_EXTENSIONS),
        }

    @app.get("/api/videos")
    def list_videos() -> dict[str, Any]:
        return {"videos": [v.to_dict() for v in service.videos()]}

    @app.post("/api/videos", status_code=201)
    async def upload(request: Request) -> dict[str, Any]:
        if uploads.read_only:
            raise HTTPException(403, uploads.read_only_message())
        too_large = uploads.too_large()
        length = request.headers.get("content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        if declared is not None and declared > max_bytes + MULTIPART_SLACK:
            raise HTTPException(413, too_large)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(415, "send the video as multipart/form-data, field 'file'")
        if declared is not None:
            room = await run_in_threadpool(uploads.room)
            if room is not None and declared > room + MULTIPART_SLACK:
                raise HTTPException(507, await run_in_threadpool(uploads.storage_full))
        if app.state.uploads_in_flight >= MAX_CONCURRENT_UPLOADS:
            raise ServiceUnavailable(
                f"{MAX_CONCURRENT_UPLOADS} uploads are being received; try again in a few seconds",
                5,
            )
        app.state.uploads_in_flight += 1
        try:
            limited = Request(
                request.scope,
                limited_receive(request.receive, max_bytes + MULTIPART_SLACK, too_large),
            )
            form = await limited.form(max_files=1, max_fields=4)
            try:
                file = form.get("file")
                if not isinstance(file, UploadFile):
                    raise HTTPException(422, "no file in field 'file'")
                video = await run_in_threadpool(
                    uploads.save, file.file, file.filename, service.check_upload
                )
            finally:
                await form.close()
        finally:
            app.state.uploads_in_flight -= 1
        return {"video": service.resolve(video.id).to_dict()}

    @app.get("/api/videos/{video_id}")
    def get_video(video_id: str) -> dict[str, Any]:
        return {"video": service.resolve(video_id).to_dict()}

    @app.delete("/api/videos/{video_id}", status_code=204)
    def delete_video(video_id: str) -> Response:
        service.delete_upload(video_id)
        return Response(status_code=204)

    @app.get("/api/videos/{video_id}/file")
    def video_file(video_id: str) -> FileResponse:
        ref = service.resolve(video_id)
        media_type = _MEDIA_TYPES.get(ref.path.suffix.lower(), "application/octet-stream")
        return FileResponse(ref.path, media_type=media_type)  # handles Range: 206 / 416

    @app.post("/api/videos/{video_id}/search")
    async def search_video(video_id: str, body: VideoSearch) -> dict[str, Any]:
        return await service.search_video_async(
            video_id, body.queries, body.top_k, body.min_relevance
        )

    @app.post("/api/search")
    async def search_library(body: LibrarySearch) -> dict[str, Any]:
        if service.library is None:
            raise HTTPException(404, "this server has no library (start it with --db)")
        return await service.search_library_async(
            body.query, body.top_k, body.videos, body.min_relevance
        )

    return app


def _hide_paths(message: str, service: VideoService) -> str:
    """``message`` without the server's folders (errors name files; clients see names only)."""
    folders = [service.uploads.directory]
    if service.library is not None:
        folders += service.library.store.roots()
    for folder in folders:
        message = message.replace(f"{folder}/", "").replace(str(folder), "")
    return message
