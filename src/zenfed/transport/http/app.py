"""The coordinator service over HTTP: a FastAPI app in front of a PersistentCoordinator.

    app = create_app(fed, operator_token="...")      # uvicorn.run(app, ...) serves it

Routes (v1). Participant routes are signed (``zenfed.protocol.auth``): the signature covers
the method, the path with its query, and the body's sha256, so upload metadata travels in
the (signed) query string and the payload as the raw body.

    GET  /healthz                          200 ok; 503 while the round ticker is failing
    GET  /metrics                          Prometheus text
    POST /v1/invites        (operator)     {"label", "ttl_s"} -> {"token"}
    GET  /v1/status         (operator)     the federation at a glance
    POST /v1/participants/{name}/revoke (operator)  refuse its requests from now on
    POST /v1/enroll                        {"token", "name", "public_key" (base64), "capacity",
                                            "data_profile"} -> {"participant", "config"};
                                           the same key and token again: the same answer
    GET  /v1/federation                    the federation's config (public: what joining means)
    GET  /v1/me             (signed)       who the coordinator knows this key as
    GET  /v1/task?wait=S    (signed)       200 the task, 204 after S seconds of nothing, 410
                                           once every round has run
    POST /v1/rounds/{r}/secagg/{stage} (signed)  a secure-aggregation stage message (JSON)
    GET  /v1/rounds/{r}/secagg/{stage}?wait=S (signed)  what that stage needs, 204 until then
    GET  /v1/versions/{id}?held=H (signed) the version: the broadcasts since H, or in full
                                           (ETag, HTTP Range, so a broken download resumes)
    PUT  /v1/rounds/{r}/update?... (signed) the payload; 200 {"status": accepted|duplicate}

Limits: every body is read under a cap per route and a deadline (``service.body_timeout_s``;
``limits.py``): uploads up to what the codec can produce, enrollment 64 KiB, invites and
revocations 4 KiB, stage messages 1 MiB, anything else 64 KiB. An upload's signature,
timestamp, nonce and declared size are checked before its body is read, and at most
``max_concurrent_uploads`` bodies are read at once. ``wait`` is a finite number of seconds
in [0, 3600], capped by ``service.long_poll_s``.

Every refusal is a 4xx with ``{"error": ..., "fix": ...}``; the coordinator is driven by
one lock (it is not thread-safe) and a background tick that opens and closes rounds. A
tick that fails is logged (``tick_failed``), counted, reported by ``/healthz`` and retried
with backoff; the ticker never dies silently.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import ValidationError

from zenfed.config import MAX_WAIT_S
from zenfed.coordinator.persistent import (
    EnrollmentRefused,
    PersistentCoordinator,
    UnknownParticipant,
)
from zenfed.coordinator.validate import UpdateRejected
from zenfed.errors import ZenfedError
from zenfed.privacy.secagg import SecAggAborted, SecAggError
from zenfed.protocol.auth import H_ID, AuthError, check_body
from zenfed.protocol.messages import Update
from zenfed.protocol.port import FederationFinished
from zenfed.transport.http import wire
from zenfed.transport.http.limits import (
    BodyLimit,
    BodyTimeout,
    BodyTooLarge,
    declared_length,
    read_body,
    too_large,
)
from zenfed.transport.http.schemas import EnrollRequest, InviteRequest, UpdateMeta

SECAGG_MAX_BODY = 1 << 20  # keys or shares for hundreds of neighbours fit many times
ENROLL_MAX_BODY = 64 << 10
OPERATOR_MAX_BODY = 4 << 10
DEFAULT_MAX_BODY = 64 << 10
MAX_TICK_BACKOFF_S = 30.0
Wait = Annotated[float, Query(ge=0, le=MAX_WAIT_S, allow_inf_nan=False)]

log = logging.getLogger(__name__)


def route_limit(method: str, path: str) -> int | None:
    """The body cap of a route; None for the upload, which streams its own body."""
    parts = path.strip("/").split("/")
    if method == "PUT" and len(parts) == 4 and parts[1] == "rounds" and parts[3] == "update":
        return None
    if method == "POST" and len(parts) == 5 and parts[1] == "rounds" and parts[3] == "secagg":
        return SECAGG_MAX_BODY
    if path == "/v1/enroll":
        return ENROLL_MAX_BODY
    if path == "/v1/invites" or path.startswith("/v1/participants/"):
        return OPERATOR_MAX_BODY
    return DEFAULT_MAX_BODY


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


def create_app(
    fed: PersistentCoordinator,
    operator_token: str,
    tick_s: float = 0.5,
    max_concurrent_uploads: int = 4,
) -> FastAPI:
    """The service for ``fed``; ``operator_token`` guards the operator routes.

    At most ``max_concurrent_uploads`` request bodies are read at once (the others wait
    in their connections), so memory does not grow with the number of participants.
    """
    lock = threading.Lock()
    uploads = asyncio.Semaphore(max_concurrent_uploads)
    metrics = Metrics()
    opened = {"at": time.monotonic()}
    health: dict[str, Any] = {"failures": 0, "error": "", "task": None}
    body_timeout = fed.cfg.service.body_timeout_s

    def locked(fn: Callable[[], Any]) -> Any:
        with lock:
            return fn()

    async def run(fn: Callable[[], Any]) -> Any:
        return await asyncio.to_thread(locked, fn)

    async def ticker() -> None:
        while True:
            try:
                version = await run(fed.tick)
            except Exception as e:  # logged, counted, reported, retried: never silent
                health["failures"] += 1
                health["error"] = f"{type(e).__name__}: {e}"
                metrics.tick_errors.inc()
                metrics.ticker_healthy.set(0)
                log.exception("tick_failed", extra={"fields": {"failures": health["failures"]}})
                await asyncio.sleep(min(tick_s * 2 ** health["failures"], MAX_TICK_BACKOFF_S))
                continue
            health["failures"], health["error"] = 0, ""
            metrics.ticker_healthy.set(1)
            if version is not None:
                metrics.rounds.inc()
                metrics.round_seconds.observe(time.monotonic() - opened["at"])
                opened["at"] = time.monotonic()
            metrics.participants.set(len(fed.enrolled))
            await asyncio.sleep(tick_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        health["task"] = asyncio.create_task(ticker())
        yield
        health["task"].cancel()

    app = FastAPI(title="zenfed coordinator", version="1", lifespan=lifespan)

    def refuse(status: int, reason: str, e: ZenfedError) -> JSONResponse:
        metrics.rejections.labels(reason=reason).inc()
        return JSONResponse({"error": e.problem, "fix": e.fix}, status_code=status)

    app.add_middleware(BodyLimit, limit_for=route_limit, timeout_s=body_timeout, refuse=refuse)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(x) for x in first.get("loc", ()))
        err = ZenfedError(f"invalid request: {where}: {first.get('msg')}", fix="see /docs")
        return refuse(422, "malformed", err)

    def _path(request: Request) -> str:
        return request.url.path + (f"?{request.url.query}" if request.url.query else "")

    async def signed(request: Request, body: bytes) -> str:
        pid = request.headers.get(H_ID, "")
        headers = {k.lower(): v for k, v in request.headers.items()}
        return str(
            await run(lambda: fed.authenticate(pid, request.method, _path(request), body, headers))
        )

    def guard(
        handler: Callable[..., Awaitable[Response]],
    ) -> Callable[..., Awaitable[Response]]:
        @functools.wraps(handler)
        async def wrapped(*args: Any, **kwargs: Any) -> Response:
            try:
                return await handler(*args, **kwargs)
            except AuthError as e:
                return refuse(401, "auth", e)
            except EnrollmentRefused as e:
                return refuse(403, "enrollment", e)
            except UnknownParticipant as e:
                return refuse(404, "unknown_participant", e)
            except BodyTooLarge as e:
                return refuse(413, "too_large", e)
            except BodyTimeout as e:
                return refuse(408, "body_timeout", e)
            except UpdateRejected as e:
                conflict = e.reason in ("not_open", "already_uploaded")
                return refuse(409 if conflict else 422, "update", e)
            except (SecAggError, SecAggAborted) as e:  # out of stage, not in it, malformed
                return refuse(409, "secagg", e)
            except ZenfedError as e:
                return refuse(400, "bad_request", e)

        return wrapped

    def operator(request: Request) -> None:
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {operator_token}".encode()):
            raise AuthError("operator credential missing or wrong", fix="send the operator token")

    async def long_poll(
        request: Request, wait: float, poll: Callable[[], Any], every_s: float
    ) -> Any:
        """``poll()`` until it answers (not None), ``wait`` seconds pass (capped by
        service.long_poll_s) or the client goes away; None if it never answered."""
        deadline = time.monotonic() + min(wait, fed.cfg.service.long_poll_s)
        while True:
            got = await run(poll)
            if got is not None or time.monotonic() >= deadline:
                return got
            if await request.is_disconnected():
                return None
            await asyncio.sleep(every_s)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """Liveness: 503 while the round ticker fails (or if it has stopped)."""
        task = health["task"]
        if task is not None and task.done():
            err = ZenfedError("the round ticker has stopped", fix="restart the coordinator")
            return JSONResponse({"status": "down", "error": err.problem, "fix": err.fix}, 503)
        if health["failures"]:
            return JSONResponse(
                {
                    "status": "degraded",
                    "error": f"the last {health['failures']} round ticks failed: "
                    + health["error"],
                    "fix": "see the coordinator's log (tick_failed); it keeps retrying",
                },
                503,
            )
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus metrics."""
        return Response(generate_latest(metrics.registry), media_type="text/plain; version=0.0.4")

    @app.post("/v1/invites")
    @guard
    async def invite(request: Request, body: InviteRequest) -> Response:
        """Operator: a new single-use enrollment token."""
        operator(request)
        token = await run(lambda: fed.invite(body.label, body.ttl_s))
        return JSONResponse({"token": token})

    @app.get("/v1/status")
    @guard
    async def status(request: Request) -> Response:
        """Operator: the federation's state."""
        operator(request)
        return JSONResponse(await run(fed.status))

    @app.post("/v1/participants/{name}/revoke")
    @guard
    async def revoke(request: Request, name: str) -> Response:
        """Operator: revoke a participant (by name or id); its requests get 401 from now on."""
        operator(request)
        pid = await run(lambda: fed.revoke(name))
        return JSONResponse({"participant": pid, "revoked": True})

    @app.post("/v1/enroll")
    @guard
    async def enroll(body: EnrollRequest) -> Response:
        """Enroll with a token; the answer carries the federation's config."""
        try:
            key = base64.b64decode(body.public_key, validate=True)
        except (binascii.Error, ValueError) as e:
            raise EnrollmentRefused(
                "public_key is not base64", fix="send the raw key in base64"
            ) from e
        capacity, profile = body.capacity.model_dump(), body.data_profile.model_dump()
        pid = await run(lambda: fed.enroll(body.token, body.name, key, capacity, profile))
        return JSONResponse({"participant": pid, "config": fed.cfg.model_dump(mode="json")})

    @app.get("/v1/federation")
    async def federation() -> Response:
        """The federation's config: model, adapter, training and codec settings, rules."""
        return JSONResponse(fed.cfg.model_dump(mode="json"))

    @app.get("/v1/me")
    @guard
    async def me(request: Request) -> Response:
        """Who the coordinator knows this (signed) key as: an agent that lost its
        enrollment record finds out it is enrolled."""
        pid = await signed(request, b"")
        return JSONResponse(await run(lambda: fed.whoami(pid)))

    @app.get("/v1/task")
    @guard
    async def task(request: Request, wait: Wait = 0.0) -> Response:
        """Long-poll for this participant's task in the open round."""
        pid = await signed(request, b"")

        def poll() -> Any:
            try:
                return fed.next_task(pid)
            except FederationFinished:
                return "finished"

        got = await long_poll(request, wait, poll, 0.2)
        if got == "finished":
            return JSONResponse(
                {"error": "the federation has finished", "fix": "nothing to do"}, status_code=410
            )
        return Response(status_code=204) if got is None else JSONResponse(got.to_dict())

    @app.post("/v1/rounds/{server_round}/secagg/{stage}")
    @guard
    async def secagg_post(request: Request, server_round: int, stage: str) -> Response:
        """Secure aggregation: this participant's message for ``stage`` (advertise_keys,
        share_keys, unmask) as JSON; the masked input itself is the round's upload."""
        body = await request.body()  # capped and time-bounded by BodyLimit
        pid = await signed(request, body)
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as e:
            raise SecAggError("the body is not JSON", fix="send a JSON object") from e
        message = wire.stage_message_from_json(stage, pid, data)
        await run(lambda: fed.port.stage_post(pid, server_round, stage, message))
        return JSONResponse({"status": "accepted"})

    @app.get("/v1/rounds/{server_round}/secagg/{stage}")
    @guard
    async def secagg_get(
        request: Request, server_round: int, stage: str, wait: Wait = 0.0
    ) -> Response:
        """Secure aggregation: long-poll for what ``stage`` needs (the neighbours' keys, the
        shares sent to this participant, the unmask request); 204 while it has not begun."""
        pid = await signed(request, b"")
        got = await long_poll(
            request, wait, lambda: fed.port.stage_get(pid, server_round, stage), 0.1
        )
        if got is None:
            return Response(status_code=204)
        return JSONResponse(wire.stage_input_to_json(got))

    @app.get("/v1/versions/{version}")
    @guard
    async def version(request: Request, version: str, held: str | None = None) -> Response:
        """The version in full (a file: ETag, Range) or as broadcasts since ``held``."""
        await signed(request, b"")
        digest = await run(lambda: fed.version_blob(version))
        size = fed.blobs.size(digest)
        diff = await run(lambda: fed.engine.diff_since(held, version, size))
        if diff is not None:
            metrics.bytes_out.inc(len(diff))
            return Response(diff, media_type="application/octet-stream")
        metrics.bytes_out.inc(size)
        return FileResponse(
            fed.blobs.path(digest),
            media_type="application/octet-stream",
            headers={"ETag": f'"{digest}"', "Cache-Control": "immutable"},
        )

    @app.put("/v1/rounds/{server_round}/update")
    @guard
    async def upload(request: Request, server_round: int) -> Response:
        """Upload this round's update: raw payload body, metadata in the signed query.

        The credential (key, signature over the declared body hash, timestamp, nonce) and
        the declared size are checked before the body is read; then the body is read
        under the size cap and the deadline, in one of the upload slots, and checked
        against its signed hash."""
        if request.headers.get("content-type", "") != "application/octet-stream":
            err = ZenfedError("an update must be sent as application/octet-stream", fix="set it")
            return refuse(415, "content_type", err)
        limit = fed.engine.codec.max_payload_bytes()
        declared = declared_length(dict(request.headers))
        if declared is not None and declared > limit:
            raise too_large(limit)
        pid = request.headers.get(H_ID, "")
        headers = {k.lower(): v for k, v in request.headers.items()}
        path = _path(request)
        await run(lambda: fed.authenticate_headers(pid, "PUT", path, headers))
        async with uploads:
            body = await read_body(request.stream(), limit, body_timeout)
            check_body(body, headers)
            meta = _update_meta(request)
            update = Update.from_metadata(server_round, pid, body, meta)
            result = await run(lambda: fed.port.upload(update))
        metrics.bytes_in.inc(len(body))
        return JSONResponse({"status": result})

    return app


def _update_meta(request: Request) -> dict[str, Any]:
    try:
        return UpdateMeta.model_validate(dict(request.query_params)).model_dump()
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise UpdateRejected(
            f"update metadata '{where}': {first['msg']}",
            fix=f"send {', '.join(UpdateMeta.model_fields)} in the query",
            reason="metadata",
        ) from e
