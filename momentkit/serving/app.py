"""The FastAPI application behind ``momentkit serve``: a JSON API and the search page.

::

    GET  /                          the page (static/index.html)
    GET  /static/{name}             the page's script and style sheet (a fixed list of files)
    GET  /api/info                  mode, encoder, upload limit
    GET  /api/videos                uploads and library videos: [{id, name, source, duration,
                                    url}]
    POST /api/videos                upload a video (multipart field "file") -> 201 {video}
    GET  /api/videos/{id}           {video}
    GET  /api/videos/{id}/file      the video's bytes; HTTP Range requests give 206 (seeking)
    POST /api/videos/{id}/search    {"queries": [...], "top_k": 10, "min_relevance": null} ->
                                    {video, results: [{query, moments: [{start, end, score,
                                    relevance}], saliency, clip_len, duration, min_relevance,
                                    best_relevance, no_confident_match}], seconds}
    POST /api/search                {"query": "...", "top_k": 10, "min_relevance": null} -> the
                                    library's best moments across videos (404 without a
                                    library)

Requests never name files: videos are named by ids the server made. Uploads over the limit get
413, non-video uploads 415.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.types import Message, Receive

from momentkit.library.files import VIDEO_EXTENSIONS
from momentkit.serving.service import NotFound, VideoService
from momentkit.serving.uploads import UploadRejected
from momentkit.utils.errors import MomentkitError

# the page's files: name -> media type (nothing else under /static is served)
STATIC_FILES = {
    "app.js": "text/javascript",
    "style.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
# room for the multipart boundaries and part headers around the file
MULTIPART_SLACK = 64 * 1024

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
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; media-src 'self'; style-src 'self'; "
        "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'"
    ),
}


class VideoSearch(BaseModel):
    """Body of ``POST /api/videos/{id}/search``."""

    queries: list[str] = Field(min_length=1, max_length=20)
    top_k: int = Field(default=10, ge=1, le=100)
    min_relevance: float | None = Field(default=None, ge=0.0, le=1.0)


class LibrarySearch(BaseModel):
    """Body of ``POST /api/search``."""

    query: str = Field(min_length=1, max_length=500)
    top_k: int = Field(default=10, ge=1, le=100)
    videos: int = Field(default=5, ge=1, le=50)
    min_relevance: float | None = Field(default=None, ge=0.0, le=1.0)


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


def _clean_queries(queries: list[str]) -> list[str]:
    cleaned = [q.strip() for q in queries]
    if any(not q or len(q) > 500 for q in cleaned):
        raise HTTPException(422, "each query must hold 1 to 500 characters")
    return cleaned


def create_app(
    service: VideoService, *, encoder: str = "", checkpoint: str | None = None
) -> FastAPI:
    """The application serving ``service``.

    Args:
        service: videos, uploads, library and models.
        encoder: the encoder spec shown by ``/api/info``.
        checkpoint: the checkpoint shown by ``/api/info`` (its folder name only).
    """
    app = FastAPI(title="momentkit", docs_url=None, redoc_url=None, openapi_url=None)
    static = static_dir()
    max_bytes = service.uploads.max_bytes

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[..., Any]) -> Response:
        response = await call_next(request)
        for key, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": "no such video"}, status_code=404)

    @app.exception_handler(MomentkitError)
    async def user_error(request: Request, exc: MomentkitError) -> JSONResponse:
        return JSONResponse({"detail": _hide_paths(str(exc), service)}, status_code=422)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(static / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    def asset(name: str) -> FileResponse:
        if name not in STATIC_FILES:
            raise HTTPException(404, "not found")
        return FileResponse(static / name, media_type=STATIC_FILES[name])

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        library = service.library
        return {
            "library": None
            if library is None
            else {"videos": library.store.num_videos(), "clips": library.store.num_clips()},
            "encoder": (library.spec if library is not None else None) or encoder,
            "checkpoint": Path(checkpoint).name if checkpoint else None,
            "max_upload_mb": round(max_bytes / 2**20, 6),
            "extensions": sorted(VIDEO_EXTENSIONS),
        }

    @app.get("/api/videos")
    def list_videos() -> dict[str, Any]:
        return {"videos": [v.to_dict() for v in service.videos()]}

    @app.post("/api/videos", status_code=201)
    async def upload(request: Request) -> dict[str, Any]:
        too_large = service.uploads.too_large()
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes + MULTIPART_SLACK:
            raise HTTPException(413, too_large)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(415, "send the video as multipart/form-data, field 'file'")
        limited = Request(
            request.scope, limited_receive(request.receive, max_bytes + MULTIPART_SLACK, too_large)
        )
        form = await limited.form(max_files=1, max_fields=4)
        try:
            file = form.get("file")
            if not isinstance(file, UploadFile):
                raise HTTPException(422, "no file in field 'file'")
            try:
                video = await run_in_threadpool(service.uploads.save, file.file, file.filename)
            except UploadRejected as e:
                raise HTTPException(e.status, e.message) from None
        finally:
            await form.close()
        return {"video": service.resolve(video.id).to_dict()}

    @app.get("/api/videos/{video_id}")
    def get_video(video_id: str) -> dict[str, Any]:
        return {"video": service.resolve(video_id).to_dict()}

    @app.get("/api/videos/{video_id}/file")
    def video_file(video_id: str) -> FileResponse:
        ref = service.resolve(video_id)
        media_type = _MEDIA_TYPES.get(ref.path.suffix.lower(), "application/octet-stream")
        return FileResponse(ref.path, media_type=media_type)  # handles Range: 206 / 416

    @app.post("/api/videos/{video_id}/search")
    def search_video(video_id: str, body: VideoSearch) -> dict[str, Any]:
        queries = _clean_queries(body.queries)
        return service.search_video(video_id, queries, body.top_k, body.min_relevance)

    @app.post("/api/search")
    def search_library(body: LibrarySearch) -> dict[str, Any]:
        if service.library is None:
            raise HTTPException(404, "this server has no library (start it with --db)")
        (query,) = _clean_queries([body.query])
        return service.search_library(query, body.top_k, body.videos, body.min_relevance)

    return app


def _hide_paths(message: str, service: VideoService) -> str:
    """``message`` without the server's folders (errors name files; clients see names only)."""
    folders = [service.uploads.directory]
    if service.library is not None:
        folders += service.library.store.roots()
    for folder in folders:
        message = message.replace(f"{folder}/", "").replace(str(folder), "")
    return message
