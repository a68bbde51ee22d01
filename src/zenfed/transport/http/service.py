"""What every route of the coordinator service shares: the coordinator behind one lock,
metrics, refusals as ``{"error", "fix"}``, signed-request checks and long polls.

    ctx = ServiceContext(fed, operator_token, max_concurrent_uploads=4)
    pid = await ctx.signed(request, body)          # 401 unless signed by an enrolled key
    got = await ctx.long_poll(request, wait, poll) # until an answer, the wait or a hang-up

The coordinator is not thread-safe: every call into it runs in a worker thread under one
lock (``ctx.run``), so the event loop never blocks on the database or the blob store.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from zenfed.coordinator.persistent import (
    EnrollmentRefused,
    PersistentCoordinator,
    UnknownParticipant,
)
from zenfed.coordinator.trust import UnknownVersion
from zenfed.coordinator.validate import UpdateRejected
from zenfed.errors import ZenfedError
from zenfed.privacy.secagg import SecAggAborted, SecAggError
from zenfed.protocol.auth import H_ID, AuthError
from zenfed.transport.http.limits import BodyTimeout, BodyTooLarge

Handler = Callable[..., Awaitable[Response]]


class Metrics:
    """The service's Prometheus metrics (a registry per app, so tests stay independent)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rounds = Counter("zenfed_rounds_closed", "rounds closed", registry=r)
        self.participants = Gauge("zenfed_participants", "enrolled participants", registry=r)
        self.bytes_in = Counter("zenfed_bytes_in", "update bytes received", registry=r)
        self.bytes_out = Counter("zenfed_bytes_out", "version bytes served", registry=r)
        self.rejections = Counter("zenfed_rejections", "refused requests", ["reason"], registry=r)
        self.round_seconds = Histogram("zenfed_round_seconds", "round duration", registry=r)
        self.tick_errors = Counter("zenfed_tick_errors", "round ticks that failed", registry=r)
        self.ticker_healthy = Gauge(
            "zenfed_ticker_healthy", "1 while the last round tick succeeded", registry=r
        )


class ServiceContext:
    """The coordinator, its lock and the service's shared machinery."""

    def __init__(
        self, fed: PersistentCoordinator, operator_token: str, max_concurrent_uploads: int
    ) -> None:
        self.fed = fed
        self.operator_token = operator_token
        self.metrics = Metrics()
        self.lock = threading.Lock()
        # At most this many bodies are read at once (the others wait in their connections),
        # so memory does not grow with the number of participants; one per participant.
        self.upload_slots = asyncio.Semaphore(max_concurrent_uploads)
        self.uploading: set[str] = set()
        self.body_timeout_s = fed.cfg.service.body_timeout_s
        self.ticker_failures = 0
        self.ticker_error = ""
        self.ticker: asyncio.Task[None] | None = None

    async def run(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` in a worker thread, under the coordinator's lock."""

        def locked() -> Any:
            with self.lock:
                return fn()

        return await asyncio.to_thread(locked)

    def refuse(self, status: int, reason: str, e: ZenfedError) -> JSONResponse:
        """A refusal: counted by reason, answered as ``{"error", "fix"}``."""
        self.metrics.rejections.labels(reason=reason).inc()
        return JSONResponse({"error": e.problem, "fix": e.fix}, status_code=status)

    def operator(self, request: Request) -> None:
        """AuthError unless the request carries the operator's bearer token."""
        given = request.headers.get("authorization", "")
        want = f"Bearer {self.operator_token}".encode()
        if not secrets.compare_digest(given.encode(), want):
            raise AuthError("operator credential missing or wrong", fix="send the operator token")

    async def signed(self, request: Request, body: bytes) -> str:
        """The participant that signed ``request`` (whose body is ``body``); AuthError if
        none did. Its nonce is recorded."""
        pid, headers = request.headers.get(H_ID, ""), _headers(request)
        path = path_of(request)
        return str(
            await self.run(lambda: self.fed.authenticate(pid, request.method, path, body, headers))
        )

    async def signed_headers(self, request: Request) -> str:
        """Everything of a signed request that can be checked before its body is read; the
        body must then match the declared hash (``protocol.auth.check_body``)."""
        pid, headers, path = request.headers.get(H_ID, ""), _headers(request), path_of(request)
        method = request.method
        return str(
            await self.run(lambda: self.fed.authenticate_headers(pid, method, path, headers))
        )

    async def long_poll(
        self, request: Request, wait: float, poll: Callable[[], Any], every_s: float = 0.2
    ) -> Any:
        """``poll()`` until it answers (not None), ``wait`` seconds pass (capped by
        service.long_poll_s) or the client goes away; None if it never answered."""
        deadline = time.monotonic() + min(wait, self.fed.cfg.service.long_poll_s)
        while True:
            got = await self.run(poll)
            if got is not None or time.monotonic() >= deadline:
                return got
            if await request.is_disconnected():
                return None
            await asyncio.sleep(every_s)

    def guard(self, handler: Handler) -> Handler:
        """``handler`` with every ZenfedError answered as the right 4xx."""

        @functools.wraps(handler)
        async def wrapped(*args: Any, **kwargs: Any) -> Response:
            try:
                return await handler(*args, **kwargs)
            except AuthError as e:
                return self.refuse(401, "auth", e)
            except EnrollmentRefused as e:
                return self.refuse(403, "enrollment", e)
            except UnknownParticipant as e:
                return self.refuse(404, "unknown_participant", e)
            except UnknownVersion as e:
                return self.refuse(404, "unknown_version", e)
            except BodyTooLarge as e:
                return self.refuse(413, "too_large", e)
            except BodyTimeout as e:
                return self.refuse(408, "body_timeout", e)
            except UpdateRejected as e:
                conflict = e.reason in ("not_open", "already_uploaded", "busy")
                return self.refuse(409 if conflict else 422, "update", e)
            except (SecAggError, SecAggAborted) as e:  # out of stage, not in it, malformed
                return self.refuse(409, "secagg", e)
            except ZenfedError as e:
                return self.refuse(400, "bad_request", e)

        return wrapped


def path_of(request: Request) -> str:
    """The path with its query, as it was signed."""
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def _headers(request: Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}
