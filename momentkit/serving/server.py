"""Wiring ``momentkit serve``: models, library and upload folder into a running server."""

from __future__ import annotations

import contextlib
import ipaddress
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from momentkit.serving.service import VideoService
from momentkit.serving.uploads import UploadStore


@dataclass(frozen=True)
class ServerConfig:
    """Settings of ``momentkit serve``.

    Attributes:
        db: library database, or ``None`` to search uploads only.
        upload_dir: where uploads are kept; ``None``: a temporary folder removed at exit.
        checkpoint: localise with this trained model (default: zero-shot).
        checkpoint_encoders: specs of the encoders of the checkpoint's training features, when
            their stream names do not say (default: inferred from the names).
        encoder: zero-shot encoder without a library (a library uses its own).
        device: torch device.
        max_upload_mb: largest upload accepted (MiB).
        host, port: where to listen.
    """

    db: str | Path | None = None
    upload_dir: str | Path | None = None
    checkpoint: str | Path | None = None
    checkpoint_encoders: tuple[str, ...] = ()
    encoder: str = "offline"
    device: str = "cpu"
    max_upload_mb: float = 200.0
    host: str = "127.0.0.1"
    port: int = 8000


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_service(config: ServerConfig, upload_dir: Path) -> VideoService:
    """The :class:`VideoService` of ``config`` (models are loaded on the first search)."""
    from momentkit.library.engine import SearchEngine
    from momentkit.library.library import Library

    uploads = UploadStore(upload_dir, int(config.max_upload_mb * 2**20))
    if config.db is not None:
        library = Library.open(config.db)
        return VideoService(
            uploads,
            library,
            load_engine=lambda lib: SearchEngine.load(
                lib,
                checkpoint=config.checkpoint,
                checkpoint_encoders=config.checkpoint_encoders or None,
                device=config.device,
            ),
        )

    def load_predictor() -> Any:
        from momentkit.inference.predictor import Predictor

        if config.checkpoint is not None:
            encoders = list(config.checkpoint_encoders) or None
            return Predictor.from_checkpoint(
                config.checkpoint, device=config.device, encoder=encoders
            )
        return Predictor.zero_shot(config.encoder, device=config.device)

    return VideoService(uploads, load_predictor=load_predictor)


@contextlib.contextmanager
def upload_folder(config: ServerConfig) -> Iterator[Path]:
    """``config.upload_dir``, or a temporary folder deleted afterwards."""
    if config.upload_dir is not None:
        yield Path(config.upload_dir)
        return
    with tempfile.TemporaryDirectory(prefix="momentkit-uploads-") as tmp:
        yield Path(tmp)


def serve(config: ServerConfig) -> None:
    """Run the server until interrupted."""
    import uvicorn

    from momentkit.serving.app import create_app

    with upload_folder(config) as folder:
        service = build_service(config, folder)
        app = create_app(
            service,
            encoder=config.encoder,
            checkpoint=str(config.checkpoint) if config.checkpoint else None,
        )
        try:
            uvicorn.run(app, host=config.host, port=config.port, log_level="info")
        finally:
            if service.library is not None:
                service.library.close()
