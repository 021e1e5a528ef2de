"""``momentkit serve``: a web page to search videos, and its JSON API.

Examples::

    momentkit serve                                  # upload videos and search them (zero-shot)
    momentkit serve --db library.db                  # also search an indexed library
    momentkit serve --db library.db --checkpoint runs/qd_detr --port 8080

Then open http://127.0.0.1:8000. The server has no authentication: keep it on 127.0.0.1
unless the network is trusted. See docs/library_and_server.md for the API.
"""

from __future__ import annotations

import argparse

HELP = "serve a web page (and JSON API) to upload, search and play videos"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``[--db FILE] [--host H] [--port P] [--checkpoint RUN_DIR] [--upload-dir DIR] ...``."""
    parser.add_argument("--db", metavar="FILE", help="an indexed library (momentkit index)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (8000)")
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
        "--max-upload-mb", type=float, default=200.0, metavar="N", help="upload limit (200 MiB)"
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

    if args.max_upload_mb <= 0:
        raise MomentkitError("--max-upload-mb must be positive")
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
            host=args.host,
            port=args.port,
        )
    )
    return 0
