"""The web server of ``momentkit serve``: a JSON API and a page to search videos.

- :mod:`.uploads`: safe storage of uploaded videos (size and storage limits, server-chosen
  names, atomic writes);
- :mod:`.service`: videos by opaque id, models, searches with bounded work (clip limit, time
  budget, queue timeout, cancellation);
- :mod:`.app`: the FastAPI application (routes, validation, host and origin checks, JSON
  errors, security headers);
- :mod:`.server`: configuration, start-up (models checked before binding) and shutdown;
- ``static/``: the page (HTML, JavaScript, CSS; no build step, nothing fetched from outside).
"""

from momentkit.serving.server import ServerConfig, build_service, serve
from momentkit.serving.service import (
    NotFound,
    SearchTimeout,
    ServiceLimits,
    ServiceUnavailable,
    VideoRef,
    VideoService,
)
from momentkit.serving.uploads import UploadedVideo, UploadRejected, UploadStore

__all__ = [
    "NotFound",
    "SearchTimeout",
    "ServerConfig",
    "ServiceLimits",
    "ServiceUnavailable",
    "UploadRejected",
    "UploadStore",
    "UploadedVideo",
    "VideoRef",
    "VideoService",
    "build_service",
    "serve",
]
