"""The coordinator service over HTTP: a FastAPI app in front of a PersistentCoordinator.

    app = create_app(fed, operator_token="...")      # uvicorn.run(app, ...) serves it

Routes (v1). Participant routes are signed (``zenfed.protocol.auth``): the signature covers
the method, the path with its query, and the body's sha256, so upload metadata travels in
the (signed) query string and the payload as the raw body.

    GET  /healthz                          liveness
    GET  /metrics                          Prometheus text
    POST /v1/invites        (operator)     {"label", "ttl_s"} -> {"token"}
    GET  /v1/status         (operator)     the federation at a glance
    POST /v1/enroll                        {"token", "name", "public_key" (base64), "capacity",
                                            "data_profile"} -> {"participant", "config"}
    GET  /v1/federation                    the federation's config (public: what joining means)
    GET  /v1/task?wait=S    (signed)       200 the task, 204 after S seconds of nothing, 410
                                           once every round has run
    GET  /v1/versions/{id}?held=H (signed) the version: the broadcasts since H, or in full
                                           (ETag, HTTP Range, so a broken download resumes)
    PUT  /v1/rounds/{r}/update?... (signed) the payload; 200 {"status": accepted|duplicate}

Every refusal is a 4xx with ``{"error": ..., "fix": ...}``; the coordinator is driven by
one lock (it is not thread-safe) and a background tick that opens and closes rounds.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, ValidationError

from zenfed.coordinator.engine import UpdateRejected
from zenfed.coordinator.persistent import EnrollmentRefused, PersistentCoordinator
from zenfed.errors import ZenfedError
from zenfed.privacy.secagg import SecAggAborted, SecAggError
from zenfed.protocol.auth import H_ID, AuthError
from zenfed.protocol.messages import Update

SECAGG_MAX_BODY = 1 << 20  # keys or shares for hundreds of neighbours fit many times


class UpdateMeta(BaseModel):
    """An upload's metadata, from its (signed) query string."""

    model_config = ConfigDict(extra="forbid")
    base_version: str
    num_examples: int
    examples_seen: int
    num_tokens: int
    seconds: float
    train_loss: float
    steps: int
    below_clip: bool | None = None
    record_epsilon: float | None = None


class InviteRequest(BaseModel):
    """Operator: make an enrollment token."""

    model_config = ConfigDict(extra="forbid")
    label: str = ""
    ttl_s: float | None = None


class EnrollRequest(BaseModel):
    """A participant's enrollment: identity, capacity, data characteristics (never data)."""

    model_config = ConfigDict(extra="forbid")
    token: str
    name: str
    public_key: str  # base64 of the 32 raw Ed25519 bytes
    capacity: dict[str, Any]
    data_profile: dict[str, Any]


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

    def locked(fn: Callable[[], Any]) -> Any:
        with lock:
            return fn()

    async def run(fn: Callable[[], Any]) -> Any:
        return await asyncio.to_thread(locked, fn)

    async def ticker() -> None:
        while True:
            version = await run(fed.tick)
            if version is not None:
                metrics.rounds.inc()
                metrics.round_seconds.observe(time.monotonic() - opened["at"])
                opened["at"] = time.monotonic()
            metrics.participants.set(len(fed.engine.participants))
            await asyncio.sleep(tick_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(ticker())
        yield
        task.cancel()

    app = FastAPI(title="zenfed coordinator", version="1", lifespan=lifespan)

    def refuse(status: int, reason: str, e: ZenfedError) -> JSONResponse:
        metrics.rejections.labels(reason=reason).inc()
        return JSONResponse({"error": e.problem, "fix": e.fix}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(x) for x in first.get("loc", ()))
        err = ZenfedError(f"invalid request: {where}: {first.get('msg')}", fix="see /docs")
        return refuse(422, "malformed", err)

    async def signed(request: Request, body: bytes) -> str:
        pid = request.headers.get(H_ID, "")
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = {k.lower(): v for k, v in request.headers.items()}
        return str(await run(lambda: fed.authenticate(pid, request.method, path, body, headers)))

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
            except UpdateRejected as e:
                return refuse(
                    409 if "already" in e.problem or "not open" in e.problem else 422, "update", e
                )
            except (SecAggError, SecAggAborted) as e:  # out of stage, not in it, malformed
                return refuse(409, "secagg", e)
            except ZenfedError as e:
                return refuse(400, "bad_request", e)

        return wrapped

    def operator(request: Request) -> None:
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {operator_token}".encode()):
            raise AuthError("operator credential missing or wrong", fix="send the operator token")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness."""
        return {"status": "ok"}

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
        pid = await run(
            lambda: fed.enroll(body.token, body.name, key, body.capacity, body.data_profile)
        )
        return JSONResponse({"participant": pid, "config": fed.cfg.model_dump(mode="json")})

    @app.get("/v1/federation")
    async def federation() -> Response:
        """The federation's config: model, adapter, training and codec settings, rules."""
        return JSONResponse(fed.cfg.model_dump(mode="json"))

    @app.get("/v1/task")
    @guard
    async def task(request: Request, wait: float = 0.0) -> Response:
        """Long-poll for this participant's task in the open round."""
        pid = await signed(request, b"")
        deadline = time.monotonic() + min(max(wait, 0.0), fed.cfg.service.long_poll_s)
        while True:
            t = await run(lambda: fed.next_task(pid))
            if t is not None:
                return JSONResponse(asdict(t))
            if await run(fed.finished):
                return JSONResponse(
                    {"error": "the federation has finished", "fix": "nothing to do"},
                    status_code=410,
                )
            if time.monotonic() >= deadline:
                return Response(status_code=204)
            await asyncio.sleep(0.2)

    @app.post("/v1/rounds/{server_round}/secagg/{stage}")
    @guard
    async def secagg_post(request: Request, server_round: int, stage: str) -> Response:
        """Secure aggregation: this participant's message for ``stage`` (advertise_keys,
        share_keys, unmask) as JSON; the masked input itself is the round's upload."""
        body = await request.body()
        if len(body) > SECAGG_MAX_BODY:
            raise SecAggError(
                f"a stage message of {len(body)} bytes (limit {SECAGG_MAX_BODY})",
                fix="send one stage's keys or shares",
            )
        pid = await signed(request, body)
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as e:
            raise SecAggError("the body is not JSON", fix="send a JSON object") from e
        if not isinstance(data, dict):
            raise SecAggError("the body is not a JSON object", fix="send a JSON object")
        await run(lambda: fed.secagg_post(pid, server_round, stage, data))
        return JSONResponse({"status": "accepted"})

    @app.get("/v1/rounds/{server_round}/secagg/{stage}")
    @guard
    async def secagg_get(
        request: Request, server_round: int, stage: str, wait: float = 0.0
    ) -> Response:
        """Secure aggregation: long-poll for what ``stage`` needs (the neighbours' keys, the
        shares sent to this participant, the unmask request); 204 while it has not begun."""
        pid = await signed(request, b"")
        deadline = time.monotonic() + min(max(wait, 0.0), fed.cfg.service.long_poll_s)
        while True:
            got = await run(lambda: fed.secagg_get(pid, server_round, stage))
            if got is not None:
                return JSONResponse(got)
            if time.monotonic() >= deadline:
                return Response(status_code=204)
            await asyncio.sleep(0.1)

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
        """Upload this round's update: raw payload body, metadata in the signed query."""
        async with uploads:
            return await _upload(request, server_round)

    async def _upload(request: Request, server_round: int) -> Response:
        if request.headers.get("content-type", "") != "application/octet-stream":
            err = ZenfedError("an update must be sent as application/octet-stream", fix="set it")
            return refuse(415, "content_type", err)
        limit = fed.engine.codec.max_payload_bytes()
        declared = int(request.headers.get("content-length") or 0)
        if declared > limit:
            return refuse(
                413,
                "too_large",
                ZenfedError(
                    f"update of {declared} bytes exceeds the limit of {limit}",
                    fix="send one update",
                ),
            )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return refuse(
                    413,
                    "too_large",
                    ZenfedError(
                        f"update exceeds the limit of {limit} bytes", fix="send one update"
                    ),
                )
        pid = await signed(request, bytes(body))
        try:
            meta = UpdateMeta.model_validate(dict(request.query_params))
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise UpdateRejected(
                f"update metadata '{where}': {first['msg']}",
                fix=f"send {', '.join(UpdateMeta.model_fields)} in the query",
            ) from e
        update = Update(
            round=server_round, participant=pid, payload=bytes(body), **meta.model_dump()
        )
        result = await run(lambda: fed.submit(update))
        metrics.bytes_in.inc(len(body))
        return JSONResponse({"status": result})

    return app
