"""``momentkit serve``: a web page to search videos, and its JSON API.

Examples::

    momentkit serve                                  # upload videos and search them (zero-shot)
    momentkit serve --db library.db                  # also search an indexed library
    momentkit serve --db library.db --checkpoint runs/qd_detr --port 8080
    momentkit serve --db library.db --read-only      # search only, no uploads

Then open http://127.0.0.1:8000. The server has no authentication: keep it on 127.0.0.1
unless the network is trusted. It answers only for the hosts it was started for (the bind
address, localhost, 127.0.0.1, [::1]; more with --allowed-host), refuses writes from other
origins, and bounds the work of every request (--max-clips, --search-timeout,
--queue-timeout, --max-upload-storage). The models are loaded, and answer a test query,
before the server listens: a bad checkpoint ends the command with one line. See
docs/library_and_server.md for the API.
"""

from __future__ import annotations

import argparse
import math

from momentkit.cli.common import (
    add_max_clips_argument,
    int_in_range,
    non_negative_float,
    positive_float,
)

HELP = "serve a web page (and JSON API) to upload, search and play videos"
# the defaults of momentkit.serving.service.ServiceLimits (not imported here: it needs numpy)
DEFAULT_MAX_CLIPS = 5400
DEFAULT_SEARCH_TIMEOUT = 240.0
DEFAULT_QUEUE_TIMEOUT = 15.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``[--db FILE] [--host H] [--port P] [--checkpoint RUN_DIR] [--upload-dir DIR] ...``."""
    parser.add_argument("--db", metavar="FILE", help="an indexed library (momentkit index)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int_in_range(1, 65535), default=8000, help="port (8000)")
    parser.add_argument(
        "--checkpoint",
        metavar="RUN_DIR",
        help="localise moments with this trained model (default: zero-shot)",
    )
    parser.add_argument(
        "--checkpoint-encoder",
        action="append",
        metavar="SPEC",
        help="encoder(s) that made the checkpoint's training features, when their stream "
        "names do not say (e.g. clip:openai/clip-vit-base-patch32); repeatable",
    )
    parser.add_argument(
        "--upload-dir",
        metavar="DIR",
        help="keep uploads here (default: a temporary folder deleted when the server stops)",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=positive_float,
        default=200.0,
        metavar="N",
        help="upload limit (200 MiB)",
    )
    parser.add_argument(
        "--max-upload-storage",
        type=non_negative_float,
        default=2048.0,
        metavar="MB",
        help="most MiB all uploads together may take; over it an upload gets 507 naming "
        "uploads to delete (2048; 0: no limit)",
    )
    add_max_clips_argument(parser, DEFAULT_MAX_CLIPS, "refuse uploads")
    parser.add_argument(
        "--search-timeout",
        type=positive_float,
        default=DEFAULT_SEARCH_TIMEOUT,
        metavar="S",
        help=f"seconds of model work one search may take; then it is stopped with 504 "
        f"({DEFAULT_SEARCH_TIMEOUT:g})",
    )
    parser.add_argument(
        "--queue-timeout",
        type=positive_float,
        default=DEFAULT_QUEUE_TIMEOUT,
        metavar="S",
        help=f"seconds a search may wait while the model is busy; then 503 with Retry-After "
        f"({DEFAULT_QUEUE_TIMEOUT:g})",
    )
    parser.add_argument(
        "--read-only",
        action="store_true",
        help="refuse uploads (403); the library is always opened read-only",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME[:PORT]",
        help="another host name clients use to reach the server (besides the bind address, "
        "localhost, 127.0.0.1, [::1]); requests naming other hosts get 400 (DNS rebinding) "
        "and writes from other origins 403; repeatable; '*' allows any host",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=positive_float,
        default=3.0,
        metavar="S",
        help="seconds to wait for open requests on SIGTERM / Ctrl-C (3)",
    )
    parser.add_argument(
        "--encoder",
        default="offline",
        metavar="SPEC",
        help="zero-shot encoder without --db (default offline; a library uses its own)",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    import sys

    from momentkit.serving.server import ServerConfig, is_loopback, serve
    from momentkit.utils.errors import MomentkitError

    if not (math.isfinite(args.max_upload_mb) and args.max_upload_mb > 0):
        raise MomentkitError("--max-upload-mb must be positive")
    if not (math.isfinite(args.max_upload_storage) and args.max_upload_storage >= 0):
        raise MomentkitError("--max-upload-storage must be >= 0 MiB (0: no limit)")
    if args.max_clips < 0:
        raise MomentkitError(f"--max-clips must be >= 0 (0: no limit), got {args.max_clips}")
    for option in ("search_timeout", "queue_timeout", "shutdown_timeout"):
        value = getattr(args, option)
        if not (math.isfinite(value) and value > 0):
            name = "--" + option.replace("_", "-")
            raise MomentkitError(f"{name} must be a positive number of seconds, got {value}")
    if not 0 < args.port < 65536:
        raise MomentkitError(f"--port must be in 1..65535, got {args.port}")
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise MomentkitError(
            f"momentkit serve needs the module '{e.name}': pip install fastapi uvicorn "
            "python-multipart"
        ) from None
    if not is_loopback(args.host):
        print(
            f"warning: listening on {args.host}: anyone who can reach it can upload and search "
            "(there is no authentication)",
            file=sys.stderr,
        )
    serve(
        ServerConfig(
            db=args.db,
            upload_dir=args.upload_dir,
            checkpoint=args.checkpoint,
            checkpoint_encoders=tuple(args.checkpoint_encoder or ()),
            encoder=args.encoder,
            device=args.device,
            max_upload_mb=args.max_upload_mb,
            max_upload_storage_mb=args.max_upload_storage or None,
            max_clips=args.max_clips or None,
            search_timeout=args.search_timeout,
            queue_timeout=args.queue_timeout,
            read_only=args.read_only,
            allowed_hosts=tuple(args.allowed_host or ()),
            shutdown_timeout=args.shutdown_timeout,
            host=args.host,
            port=args.port,
        )
    )
    return 0
