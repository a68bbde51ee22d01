"""A real coordinator service on loopback for tests: uvicorn in a thread, a free port.

    with serving(fed, operator_token="op") as url:
        httpx.get(f"{url}/healthz")

The server is the same uvicorn that ``zenfed serve`` runs (real sockets, real HTTP/1.1
parsing, the app's lifespan and ticker), only in a thread of the test process so the
test can reach into the coordinator's store afterwards.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode

import uvicorn

from zenfed.service.persistent import PersistentCoordinator
from zenfed.transport.http.app import create_app
from zenfed.transport.http.server import ConnectionLimits, connection_limits, server_config


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThreadedServer:
    """uvicorn serving an app in a background thread until ``stop``, behind the same
    connection guard as ``zenfed serve`` (``limits``; the default ones if None)."""

    def __init__(
        self, app: Any, port: int, limits: ConnectionLimits | None = None, **config: Any
    ) -> None:
        self.port = port
        self.server = uvicorn.Server(
            server_config(
                app,
                limits or ConnectionLimits(),
                host="127.0.0.1",
                port=port,
                log_level="warning",
                **config,
            )
        )
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve())

    def start(self) -> None:
        """Start serving; returns once the socket accepts connections."""
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                return
            time.sleep(0.01)
        raise AssertionError("the test server did not start")

    def stop(self, timeout: float = 10.0) -> float:
        """Ask the server to exit; returns how long it took (seconds)."""
        t0 = time.monotonic()
        self.server.should_exit = True
        self.thread.join(timeout)
        return time.monotonic() - t0


@contextmanager
def serving(
    fed: PersistentCoordinator,
    operator_token: str = "op-secret",
    port: int | None = None,
    tick_s: float = 0.05,
    **app_options: Any,
) -> Iterator[str]:
    """Serve ``fed`` on loopback; yields the base URL."""
    srv = ThreadedServer(
        create_app(fed, operator_token, tick_s=tick_s, **app_options),
        port or free_port(),
        connection_limits(fed.cfg.service),
        timeout_graceful_shutdown=3,
    )
    srv.start()
    try:
        yield f"http://127.0.0.1:{srv.port}"
    finally:
        srv.stop()


UPDATE_META = {
    "num_examples": 10,
    "examples_seen": 8,
    "num_tokens": 100,
    "seconds": 1.0,
    "train_loss": 2.0,
    "steps": 1,
}


def update_path(task: dict[str, Any], **meta: Any) -> str:
    """The upload path of ``task``'s round with plausible metadata (``meta`` overrides)."""
    query = {"base_version": task["version"], **UPDATE_META, **meta}
    return f"/v1/rounds/{task['round']}/update?{urlencode(query)}"
