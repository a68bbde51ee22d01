"""How the coordinator service meets the network: uvicorn, with a guard on every connection.

    limits = connection_limits(cfg.service)          # reads (and raises) the open-file limit
    uvicorn.Server(server_config(app, limits, host="0.0.0.0", port=8000)).run()

uvicorn bounds request bodies (the app does, ``limits.py``) but nothing before them: a
client that sends its request head one line every few seconds holds its connection, and
a file descriptor, for as long as it likes, and enough of them exhaust the process's
open-file limit, after which every upload, poll and health check fails (measured: 1,100
such connections against a limit of 1,024). The guard is uvicorn's own HTTP protocol
(httptools) with what it lacks:

- a deadline for the whole request head (request line and headers), from the first byte
  of a request (or from the connection's start): past it, a 408 and the connection closed;
- a cap on the head's size (431 past ``MAX_HEAD_BYTES``);
- at most ``max_connections`` connections at once (below the open-file limit, which is
  read at start and raised to its hard limit where allowed) and at most
  ``max_connections_per_client`` from one address: a connection over either is answered
  503 and closed at once, so it never holds a descriptor;
- a connection whose request was answered before its body arrived (a 401 for a bad
  signature, a 408, a 413) is closed, so trickling body bytes cannot keep it open;
- refusals of the protocol layer (an unparseable request, an over-long request line) are
  JSON ``{"error", "fix"}`` as the app's are.

Idle keep-alive connections are closed after ``KEEP_ALIVE_S`` (longer than a long poll).
Behind a reverse proxy, every connection comes from the proxy's address: the README says
which settings the proxy then needs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import resource
from collections import Counter
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from zenfed.config import ServiceConfig

log = logging.getLogger("zenfed.service")

KEEP_ALIVE_S = 75.0  # an idle agent keeps its connection between long polls (at most 60 s)
MAX_HEAD_BYTES = 64 << 10  # request line and headers together; a signed request needs ~1 KiB
# Descriptors kept for everything but connections: the database and its WAL, blobs being
# written, the listening socket, logs, worker threads' files.
RESERVED_FILES = 64
LOW_CONNECTIONS = 1000  # fewer than this at once: the operator is warned at start
# Query parameters whose values never reach the access log.
SECRET_PARAMS = frozenset(
    {"token", "operator_token", "access_token", "password", "secret", "key", "signature"}
)


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection, one client address and all connections together may hold."""

    head_timeout_s: float = 5.0
    max_connections: int = 1000
    max_connections_per_client: int = 32  # 0: no cap per address
    max_head_bytes: int = MAX_HEAD_BYTES


def raise_file_limit() -> tuple[int, int]:
    """The open-file limit (soft, hard), with the soft limit raised to the hard one where
    the process may (as servers commonly do at start)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft, hard


def connection_limits(
    service: ServiceConfig, files: tuple[int, int] | None = None
) -> ConnectionLimits:
    """The limits of ``service`` on this process: ``max_connections`` (0: as many as the
    open-file limit allows, less a reserve) is capped below the limit, with a warning
    when that is low or when the configured value had to be lowered."""
    soft, hard = files if files is not None else raise_file_limit()
    reserve = RESERVED_FILES + soft // 8
    room = max(1, soft - reserve)
    wanted = service.max_connections or room
    limit = min(wanted, room)
    if wanted > room:
        log.warning(
            "max_connections_lowered",
            extra={
                "fields": {
                    "configured": wanted,
                    "using": limit,
                    "open_file_limit": soft,
                    "fix": "raise the open-file limit (ulimit -n, systemd LimitNOFILE=)",
                }
            },
        )
    if limit < LOW_CONNECTIONS:
        log.warning(
            "open_file_limit_low",
            extra={
                "fields": {
                    "open_file_limit": soft,
                    "hard_limit": hard,
                    "max_connections": limit,
                    "fix": "raise the open-file limit (ulimit -n, systemd LimitNOFILE=) to "
                    f"serve more than {limit} agents at once",
                }
            },
        )
    return ConnectionLimits(
        head_timeout_s=service.head_timeout_s,
        max_connections=limit,
        max_connections_per_client=service.max_connections_per_client,
    )


def refusal(status: int, problem: str, fix: str) -> bytes:
    """A complete HTTP/1.1 response ``{"error", "fix"}`` that closes the connection."""
    body = json.dumps({"error": problem, "fix": fix}).encode()
    reason = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large"}
    head = (
        f"HTTP/1.1 {status} {reason.get(status, 'Service Unavailable')}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n"
    )
    if status == 503:
        head += "retry-after: 5\r\n"
    return (head + "\r\n").encode() + body


class Connections:
    """The connections of one server: how many are open, from which address, and which
    are waiting for their request head (oldest first)."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.per_client: Counter[str] = Counter()
        self.total = 0
        self.in_head: dict[Any, float] = {}  # connection -> when its head began (ordered)

    def admit(self, host: str) -> str | None:
        """Count a new connection from ``host``, or say why it is refused. At the total
        cap the connection waiting longest for its head is evicted to make room (a client
        holding its head back loses its place to one that sends it): only when none is
        waiting is the new one refused."""
        cap = self.limits.max_connections_per_client
        if cap and self.per_client[host] >= cap:
            return f"{cap} connections from your address are open already"
        if self.total >= self.limits.max_connections:
            oldest = next(iter(self.in_head), None)
            if oldest is None:
                return "the coordinator has as many connections open as it may"
            oldest.evict()
        self.per_client[host] += 1
        self.total += 1
        return None

    def release(self, host: str) -> None:
        """Uncount a connection from ``host`` (closed, or evicted)."""
        self.per_client[host] -= 1
        if not self.per_client[host]:
            del self.per_client[host]
        self.total -= 1


def guarded_protocol(limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with ``limits`` enforced (one class per server: its
    connections share one ``Connections``)."""
    book = Connections(limits)

    class Guarded(HttpToolsProtocol):
        counted: str | None = None  # the address this connection is counted under
        head_timer: asyncio.TimerHandle | None = None
        head_bytes = 0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            host = self.client[0] if self.client else ""
            refused = book.admit(host)
            if refused is not None:
                fix = (
                    "reuse one connection (keep-alive), or ask the operator to raise "
                    "service.max_connections_per_client"
                    if "address" in refused
                    else "retry in a few seconds"
                )
                self._refuse(503, refused, fix)
                return
            self.counted = host
            self._start_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._release()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            idle = self.cycle is None or self.cycle.response_complete
            if idle and self not in book.in_head:  # the first byte of the next request
                self._start_head()
            if self in book.in_head:  # refused before the parser sees it
                end = data.find(b"\r\n\r\n")
                self.head_bytes += len(data) if end < 0 else end + 4
                if self.head_bytes > limits.max_head_bytes:
                    self._refuse(
                        431,
                        f"the request line and headers exceed {limits.max_head_bytes} bytes",
                        "send a request line and headers of the documented size",
                    )
                    return
            super().data_received(data)

        def on_message_begin(self) -> None:
            if self not in book.in_head:  # a pipelined request while another is served
                self._start_head()
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._stop_head()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            # Answered before its whole body arrived (a refusal that read none of it):
            # the rest would only hold the connection open.
            if self.cycle is not None and self.cycle.more_body:
                self.transport.close()
            super().on_response_complete()

        def send_400_response(self, msg: str) -> None:
            self._refuse(400, f"malformed HTTP request: {msg}", "send a valid HTTP/1.1 request")

        def evict(self) -> None:
            """Close this connection, still waiting for its head, to make room."""
            self._release()
            self._refuse(
                408,
                "the request head was too slow for a coordinator at its connection limit",
                "send the request line and headers at once",
            )

        def _start_head(self) -> None:
            self._stop_head()
            self.head_bytes = 0
            book.in_head[self] = self.loop.time()
            self.head_timer = self.loop.call_later(limits.head_timeout_s, self._head_expired)

        def _stop_head(self) -> None:
            book.in_head.pop(self, None)
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def _head_expired(self) -> None:
            self.head_timer = None
            self._refuse(
                408,
                f"the request head did not arrive within {limits.head_timeout_s:g} s",
                "send the request line and headers at once",
            )

        def _release(self) -> None:
            self._stop_head()
            if self.counted is not None:
                book.release(self.counted)
                self.counted = None

        def _refuse(self, status: int, problem: str, fix: str) -> None:
            self._stop_head()
            if not self.transport.is_closing():
                self.transport.write(refusal(status, problem, fix))
                self.transport.close()

    return Guarded


class RedactSecrets(logging.Filter):
    """Drop the values of secret query parameters (``SECRET_PARAMS``) from uvicorn's
    access log lines, whose third argument is the path with its query."""

    PATTERN = re.compile(rf"([?&](?:{'|'.join(sorted(SECRET_PARAMS))})=)[^&\s]*", re.I)

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite ``record``'s path in place; every record passes."""
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], self.PATTERN.sub(r"\1[redacted]", args[2]), *args[3:])
        return True


def server_config(app: Any, limits: ConnectionLimits, **options: Any) -> uvicorn.Config:
    """uvicorn's config for ``app`` behind the guard (``options``: host, port, TLS files,
    log level and the like, as ``uvicorn.Config`` takes them)."""
    logging.getLogger("uvicorn.access").addFilter(_REDACT)
    options.setdefault("timeout_keep_alive", KEEP_ALIVE_S)
    return uvicorn.Config(app, http=guarded_protocol(limits), **options)


_REDACT = RedactSecrets()  # one filter, added once however many servers start
