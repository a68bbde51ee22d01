"""What every route of the coordinator service shares: the coordinator behind one lock,
metrics, refusals as ``{"error", "fix"}``, signed-request checks and long polls.

    ctx = ServiceContext(fed, operator_token, max_concurrent_uploads=16)
    pid = await ctx.signed(request, body)          # 401 unless signed by an enrolled key
    got = await ctx.long_poll(request, wait, poll) # until an answer, the wait or a hang-up

The coordinator is not thread-safe: every call into it runs in a worker thread under one
lock (``ctx.run``), so the event loop never blocks on the database or the blob store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from zenfed.coordinator.port import UploadResult
from zenfed.coordinator.trust import UnknownVersion
from zenfed.coordinator.validate import UpdateRejected
from zenfed.errors import ZenfedError
from zenfed.privacy.secagg import SecAggAborted, SecAggError
from zenfed.protocol.auth import H_ID, AuthError
from zenfed.protocol.messages import Update
from zenfed.service.persistent import (
    EnrollmentRefused,
    PersistentCoordinator,
    UnknownParticipant,
)
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
        self._uploads: list[tuple[Update, asyncio.Future[UploadResult]]] = []
        self._draining: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

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
        none did. Its nonce is recorded (outside the coordinator's lock: see
        ``Membership.authenticate_headers``)."""
        pid, headers = request.headers.get(H_ID, ""), _headers(request)
        path, method = path_of(request), request.method
        auth = self.fed.authenticate
        return str(await asyncio.to_thread(auth, pid, method, path, body, headers))

    async def signed_headers(self, request: Request) -> str:
        """Everything of a signed request that can be checked before its body is read; the
        body must then match the declared hash (``protocol.auth.check_body``)."""
        pid, headers, path = request.headers.get(H_ID, ""), _headers(request), path_of(request)
        auth = self.fed.authenticate_headers
        return str(await asyncio.to_thread(auth, pid, request.method, path, headers))

    async def upload(self, update: Update) -> str:
        """Count ``update`` with those that arrive while the coordinator is busy: one call
        under the lock and one commit for all of them (group commit). Its answer, or its
        refusal raised."""
        done: asyncio.Future[UploadResult] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_retrieved)  # its client may hang up before the answer
        self._uploads.append((update, done))
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain())
        result = await asyncio.shield(done)  # a client that hangs up does not stop the batch
        if isinstance(result, UpdateRejected):
            raise result
        return result

    async def _drain(self) -> None:
        while self._uploads:
            batch, self._uploads = self._uploads, []
            updates = [u for u, _ in batch]
            try:
                results = await self.run(functools.partial(self.fed.upload_many, updates))
            except BaseException as e:
                for _, done in batch:
                    done.set_exception(e)
                if not isinstance(e, Exception):
                    raise
                continue
            for (_, done), result in zip(batch, results, strict=True):
                done.set_result(result)

    async def long_poll(
        self, request: Request, wait: float, poll: Callable[[], Any], every_s: float = 1.0
    ) -> Any:
        """``poll()`` until it answers (not None), ``wait`` seconds pass (capped by
        service.long_poll_s) or the client goes away; None if it never answered."""
        deadline = time.monotonic() + min(wait, self.fed.cfg.service.long_poll_s)
        while True:
            changed = self._changed  # taken before the poll: a change after it wakes us
            got = await self.run(poll)
            if got is not None or time.monotonic() >= deadline:
                return got
            if await request.is_disconnected():
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), every_s)

    def changed(self) -> None:
        """Wake every long poll at once: the coordinator moved (a round opened or closed,
        a buffer turned), so there may be an answer now."""
        self._changed.set()
        self._changed = asyncio.Event()

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


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark ``future``'s exception as seen (asyncio warns of unseen ones)."""
    if not future.cancelled():
        future.exception()


def path_of(request: Request) -> str:
    """The path with its query, as it was signed."""
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def _headers(request: Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}
