"""Wiring ``momentkit serve``: models, library and upload folder into a running server.

Start-up order: the library is opened read-only and the models are loaded and answer one test
query, *then* the socket is bound, so a bad checkpoint or library ends the command with one
clear line instead of a server that fails every search. On SIGTERM or Ctrl-C running searches
are told to stop at their next check and uvicorn waits at most ``shutdown_timeout`` seconds for
open requests before it closes them.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from momentkit.serving.service import ServiceLimits, VideoService
from momentkit.serving.uploads import UploadStore
from momentkit.utils.errors import MomentkitError


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
        max_upload_storage_mb: most MiB all uploads together may take (``None``: no limit).
        max_clips: uploads of more clips are refused (``None``: no limit).
        search_timeout: seconds of model work one search may take.
        queue_timeout: seconds a search may wait for the model.
        read_only: refuse uploads (the library is always opened read-only).
        allowed_hosts: more names (``host`` or ``host:port``) clients may use besides the bind
            address, ``localhost``, ``127.0.0.1`` and ``[::1]``; ``"*"``: any.
        shutdown_timeout: seconds to wait for open requests on SIGTERM / Ctrl-C.
        host, port: where to listen.
    """

    db: str | Path | None = None
    upload_dir: str | Path | None = None
    checkpoint: str | Path | None = None
    checkpoint_encoders: tuple[str, ...] = ()
    encoder: str = "offline"
    device: str = "cpu"
    max_upload_mb: float = 200.0
    max_upload_storage_mb: float | None = 2048.0
    max_clips: int | None = ServiceLimits.max_clips
    search_timeout: float = ServiceLimits.search_timeout
    queue_timeout: float = ServiceLimits.queue_timeout
    read_only: bool = False
    allowed_hosts: tuple[str, ...] = ()
    shutdown_timeout: float = 3.0
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


def allowed_hosts(config: ServerConfig) -> tuple[str, ...]:
    """The ``host:port`` names the server answers under: the bind address, ``localhost``,
    ``127.0.0.1``, ``[::1]`` and ``config.allowed_hosts`` (an entry without a port gets the
    server's)."""

    def with_port(name: str) -> str:
        if name == "*":
            return name
        if name.count(":") > 1 and not name.startswith("["):  # a bare IPv6 address
            name = f"[{name}]"
        if name.startswith("[") and name.endswith("]") or ":" not in name:
            return f"{name}:{config.port}"
        return name

    names = [config.host, "localhost", "127.0.0.1", "::1", *config.allowed_hosts]
    return tuple(dict.fromkeys(with_port(n) for n in names))


def _writable(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (created if missing)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def build_service(config: ServerConfig, upload_dir: Path) -> VideoService:
    """The :class:`VideoService` of ``config`` (models are loaded on the first search, or by
    :meth:`VideoService.load_models`). The library is opened read-only: the server never
    writes it. An upload folder that cannot be written makes the server read-only (said on
    stderr)."""
    from momentkit.library.engine import SearchEngine
    from momentkit.library.library import Library
    from momentkit.library.store import LibraryStore

    read_only = config.read_only
    if not read_only and not _writable(upload_dir):
        print(
            f"warning: the upload folder {upload_dir} cannot be written: uploads are turned off",
            file=sys.stderr,
        )
        read_only = True
    total = config.max_upload_storage_mb
    uploads = UploadStore(
        upload_dir,
        int(config.max_upload_mb * 2**20),
        max_total_bytes=None if total is None else int(total * 2**20),
        read_only=read_only,
    )
    limits = ServiceLimits(
        max_clips=config.max_clips,
        search_timeout=config.search_timeout,
        queue_timeout=config.queue_timeout,
    )
    if config.db is not None:
        library = Library(LibraryStore(config.db, readonly=True))
        return VideoService(
            uploads,
            library,
            load_engine=lambda lib: SearchEngine.load(
                lib,
                checkpoint=config.checkpoint,
                checkpoint_encoders=config.checkpoint_encoders or None,
                device=config.device,
            ),
            limits=limits,
        )

    def load_predictor() -> Any:
        from momentkit.inference.predictor import Predictor

        if config.checkpoint is not None:
            encoders = list(config.checkpoint_encoders) or None
            return Predictor.from_checkpoint(
                config.checkpoint, device=config.device, encoder=encoders
            )
        return Predictor.zero_shot(config.encoder, device=config.device)

    return VideoService(uploads, load_predictor=load_predictor, limits=limits)


@contextlib.contextmanager
def upload_folder(config: ServerConfig) -> Iterator[Path]:
    """``config.upload_dir``, or a temporary folder deleted afterwards."""
    if config.upload_dir is not None:
        yield Path(config.upload_dir)
        return
    with tempfile.TemporaryDirectory(prefix="momentkit-uploads-") as tmp:
        yield Path(tmp)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``.

    Raises:
        MomentkitError: the address is taken or cannot be used (one line, with what to do).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise MomentkitError(
            f"cannot listen on {host}: {e.strerror}; give another --host"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        hint = "pick another --port" if e.errno == errno.EADDRINUSE else "check --host/--port"
        raise MomentkitError(f"cannot listen on {host}:{port}: {e.strerror}; {hint}") from None
    return sock


def make_server(app: Any, service: VideoService, config: ServerConfig) -> Any:
    """A ``uvicorn.Server`` for ``app`` whose exit signal (SIGTERM, Ctrl-C) also tells the
    service's running work to stop and its waiting searches to answer 503 at once, and which
    waits at most ``config.shutdown_timeout`` seconds for open requests."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            service.stopping.set()  # workers stop at their next check
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets: Any = None) -> None:
            service.stop()  # waiting searches answer 503 before uvicorn waits for them
            await super().shutdown(sockets)

    return Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="info",
            timeout_graceful_shutdown=config.shutdown_timeout,
            timeout_keep_alive=5,
        )
    )


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """Turn SIGTERM into ``SystemExit(143)`` while the server runs, so that clean-up (the
    temporary upload folder, the library) happens: uvicorn handles the signal itself while it
    serves, then raises it again once it has shut down, which would otherwise end the process
    on the spot."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve(config: ServerConfig) -> None:
    """Load the models, then run the server until SIGTERM or Ctrl-C.

    Raises:
        MomentkitError: the library, the models or the address cannot be used (before the
            server starts).
    """
    from momentkit.serving.app import create_app

    stopped = True
    try:
        with _sigterm_exits(), upload_folder(config) as folder:
            service = build_service(config, folder)
            try:
                _run(service, config, create_app)
            finally:
                service.close()
                stopped = service.wait_idle(config.shutdown_timeout)
    finally:
        if not stopped:  # a worker is still inside a decoder or a model: a normal interpreter
            # exit would wait for it or abort in it; the folders are cleaned up already
            print(
                "momentkit serve: a search was still running; exiting without it",
                file=sys.stderr,
                flush=True,
            )
            sys.stdout.flush()
            os._exit(_exit_status(sys.exc_info()[1]))


def _exit_status(error: BaseException | None) -> int:
    """The exit status of a process ending with ``error`` (``None``: normally)."""
    if error is None:
        return 0
    if isinstance(error, SystemExit):
        return error.code if isinstance(error.code, int) else 1
    return 130 if isinstance(error, KeyboardInterrupt) else 1


def _run(service: VideoService, config: ServerConfig, create_app: Any) -> None:
    """Load the models, bind, serve until stopped."""
    print("momentkit serve: loading the models ...", file=sys.stderr, flush=True)
    service.load_models(warm_up=True)
    sock = bind_socket(config.host, config.port)
    try:
        app = create_app(
            service,
            encoder=config.encoder,
            checkpoint=str(config.checkpoint) if config.checkpoint else None,
            allowed_hosts=allowed_hosts(config),
        )
        server = make_server(app, service, config)
        shown = f"[{config.host}]" if ":" in config.host else config.host
        print(
            f"momentkit serve: http://{shown}:{config.port} (Ctrl-C or SIGTERM to stop)",
            file=sys.stderr,
            flush=True,
        )
        server.run(sockets=[sock])
    finally:
        sock.close()
