"""The engine over HTTP (`sam2refine serve`): one SAM 2 session per opened volume.

Slicer's remote mode (and `sam2refine.remote.client`) upload a volume once, then send prompts
(each answered with that slice's mask), run propagation as a job they can watch and cancel,
and fetch the label volume. See `sam2refine.remote.wire` for the payload formats. All model work
runs on one worker thread, in order (see `remote.jobs.Engine`).

Security: the server binds 127.0.0.1 by default. Any other address needs a token, sent by
clients as `Authorization: Bearer <token>`; every endpoint but `/health` checks it. The token
travels in clear text over plain HTTP: off a trusted network, put a TLS proxy in front.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from sam2refine.errors import SAM2RefineError
from sam2refine.remote.http import BodyLimit, add_error_handlers
from sam2refine.remote.jobs import Engine
from sam2refine.remote.routes import session_routes
from sam2refine.remote.wire import API_VERSION
from sam2refine.version import __version__

log = logging.getLogger("sam2refine.remote.server")
DEFAULT_MAX_UPLOAD_BYTES = 1 << 30  # compressed request body
DEFAULT_MAX_VOLUME_BYTES = 4 << 30  # the uploaded voxels, uncompressed


def create_app(
    model: Any,
    *,
    token: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_volume_bytes: int = DEFAULT_MAX_VOLUME_BYTES,
    idle_timeout_s: float = 1800,
    max_sessions: int = 8,
) -> FastAPI:
    """The HTTP app serving sessions on `model` (from `load_model`); all state lives in it.

    Sessions unused for `idle_timeout_s` are dropped; at most `max_sessions` are open at once
    (each holds its slices' features, up to a few GiB)."""
    from sam2refine.sam.session import check_model

    check_model(model)
    engine = Engine(model, idle_timeout_s, max_sessions)
    device = str(next(model.parameters()).device)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        reaper = asyncio.create_task(engine.reap_forever())
        try:
            yield
        finally:
            reaper.cancel()
            engine.shutdown()

    app = FastAPI(title="sam2refine engine", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    add_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "api": API_VERSION, "version": __version__,
                "image_size": int(model.image_size), "device": device,
                "sessions": len(engine.sessions), "model_busy": engine.model_busy,
                "auth": token is not None, "max_upload_bytes": max_upload_bytes}

    app.include_router(session_routes(engine, model, token, max_upload_bytes,
                                      max_volume_bytes))
    return app

# ----- running it ------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """Whether `host` is only reachable from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise SAM2RefineError(
            f"Refusing to listen on {host} without an access token: anyone who can reach it "
            "could read the volumes. Pass --token (or set SAM2REFINE_TOKEN), or listen on "
            "127.0.0.1 only (the default)."
        )


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, or an error saying why the address cannot be used."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on connections of such sockets,
    # and without it every keep-alive request waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        if os.name != "nt":  # on Windows it would let another process take the port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
        return sock
    except (OSError, OverflowError) as exc:  # OverflowError: a port over 65535
        sock.close()
        reason = getattr(exc, "strerror", None) or exc
        raise SAM2RefineError(
            f"Cannot listen on {host}:{port} ({reason}). Another server may use that port: "
            "choose another with --port (1 to 65535), or stop the other one."
        ) from exc


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    model_name: str = "sam2.1_hiera_tiny",
    image_size: int = 1024,
    checkpoint: str | Path | None = None,
    device: str = "auto",
    idle_timeout_s: float = 1800,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    adapters: str | Path | None = None,
) -> None:
    """Build the model (with fine-tuned `adapters` if given) and serve it until interrupted."""
    from sam2refine.sam.model import load_model

    token = token or None
    check_bind(host, token)
    sock = listen(host, port)  # fail fast, before minutes of model loading
    try:
        model = load_model(model_name, image_size, checkpoint, device, adapters=adapters)
        device_obj = next(model.parameters()).device
        app = create_app(model, token=token, max_upload_bytes=max_upload_bytes,
                         idle_timeout_s=idle_timeout_s)
    except BaseException:
        sock.close()
        raise
    log.info("Serving %s at %d px on %s at http://%s:%d%s; stop with Ctrl+C", model_name,
             image_size, device_obj, host, port, " (token required)" if token else "")
    if token and not is_loopback(host):
        log.warning("The token travels in clear text over HTTP; use a TLS proxy off a "
                    "trusted network.")
    uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])


class ServerThread:
    """Serve an app on 127.0.0.1 at a free port in a background thread (tests, benchmarks).

    `with ServerThread(app) as url:` yields the base URL; leaving the block stops the server.
    """

    def __init__(self, app: FastAPI, startup_timeout_s: float = 30.0) -> None:
        self.app = app
        self.startup_timeout_s = startup_timeout_s
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> str:
        sock = listen("127.0.0.1", 0)
        port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="sam2refine-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise SAM2RefineError("The engine server thread failed to start.")
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def __exit__(self, *exc: object) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=15)

