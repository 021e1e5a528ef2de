"""The web server of ``momentkit serve``: a JSON API and a page to search videos.

- :mod:`.uploads`: safe storage of uploaded videos (size limit, server-chosen names);
- :mod:`.service`: videos by opaque id, lazily loaded models, searches;
- :mod:`.app`: the FastAPI application (routes, limits, security headers);
- :mod:`.server`: configuration and startup;
- ``static/``: the page (HTML, JavaScript, CSS; no build step, nothing fetched from outside).
"""

from momentkit.serving.server import ServerConfig, build_service, serve
from momentkit.serving.service import NotFound, VideoRef, VideoService
from momentkit.serving.uploads import UploadedVideo, UploadRejected, UploadStore

__all__ = [
    "NotFound",
    "ServerConfig",
    "UploadRejected",
    "UploadStore",
    "UploadedVideo",
    "VideoRef",
    "VideoService",
    "build_service",
    "serve",
]
