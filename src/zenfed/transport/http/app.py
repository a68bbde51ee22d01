"""The coordinator service over HTTP: a FastAPI app in front of a PersistentCoordinator.

    app = create_app(fed, operator_token="...")      # server.py serves it (uvicorn + guard)

Routes (v1), one router per concern: the operator's and the service's own
(``routes_operator``: /healthz, /metrics, /v1/invites, /v1/status,
/v1/participants/{name}/revoke), the participants' round messages (``routes_participant``:
/v1/enroll, /v1/federation, /v1/me, /v1/task, /v1/versions/{id}, /v1/rounds/{r}/update)
and secure aggregation's stages (``routes_secagg``: /v1/rounds/{r}/secagg/{stage}). Each
module's docstring lists its routes. Participant routes are signed
(``zenfed.protocol.auth``): the signature covers the method, the path with its query, and
the body's sha256. The routes only encode and decode: every round message goes to the
coordinator's port (``fed.port``), the same one the simulation drives in memory.

Limits: every body is read under a cap per route and a deadline (``limits.py``; the
deadline grows with the size, up to ``service.body_timeout_s``): uploads up to what the
codec can produce, enrollment 64 KiB, invites and revocations 4 KiB, stage messages 1 MiB,
anything else 64 KiB. ``wait`` is a finite number of seconds in [0, 3600], capped by
``service.long_poll_s``. Every refusal is a 4xx with ``{"error": ..., "fix": ...}``.

A background tick opens and closes rounds; a tick that fails is logged (``tick_failed``),
counted, reported by ``/healthz`` and retried with capped backoff: the ticker never dies
silently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from zenfed.errors import ZenfedError
from zenfed.service.persistent import PersistentCoordinator
from zenfed.transport.http.limits import BodyLimit
from zenfed.transport.http.routes_operator import operator_routes
from zenfed.transport.http.routes_participant import participant_routes
from zenfed.transport.http.routes_secagg import secagg_routes
from zenfed.transport.http.service import ServiceContext

ENROLL_MAX_BODY = 64 << 10
OPERATOR_MAX_BODY = 4 << 10
DEFAULT_MAX_BODY = 64 << 10
MAX_TICK_BACKOFF_S = 30.0
MAX_TICKS_AT_ONCE = 16  # ticks in a row without a pause while each one moves something

log = logging.getLogger("zenfed.service")


def route_limit(method: str, path: str) -> int | None:
    """The body cap the middleware enforces on a route; None for the routes that check
    the signature before reading their body and read it themselves (uploads, stages)."""
    parts = path.strip("/").split("/")
    if len(parts) in (4, 5) and parts[1] == "rounds" and method in ("PUT", "POST"):
        return None
    if path == "/v1/enroll":
        return ENROLL_MAX_BODY
    if path == "/v1/invites" or path.startswith("/v1/participants/"):
        return OPERATOR_MAX_BODY
    return DEFAULT_MAX_BODY


def create_app(
    fed: PersistentCoordinator,
    operator_token: str,
    tick_s: float = 0.5,
    max_concurrent_uploads: int = 16,
    background: Callable[[ServiceContext], Awaitable[None]] | None = None,
) -> FastAPI:
    """The service for ``fed``; ``operator_token`` guards the operator routes;
    ``background(ctx)`` runs beside it (a regional coordinator's work for its root)."""
    ctx = ServiceContext(fed, operator_token, max_concurrent_uploads)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        ctx.ticker = asyncio.create_task(_ticker(ctx, tick_s))
        side = asyncio.create_task(_logged(background(ctx))) if background else None
        yield
        ctx.ticker.cancel()
        if side is not None:
            side.cancel()

    app = FastAPI(title="zenfed coordinator", version="1", lifespan=lifespan)
    app.add_middleware(
        BodyLimit, limit_for=route_limit, timeout_s=ctx.body_timeout_s, refuse=ctx.refuse
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(x) for x in first.get("loc", ()))
        err = ZenfedError(f"invalid request: {where}: {first.get('msg')}", fix="see /docs")
        return ctx.refuse(422, "malformed", err)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        err = ZenfedError(f"{exc.status_code}: {exc.detail}", fix="see /docs for the routes")
        return ctx.refuse(exc.status_code, "http", err)

    for router in (operator_routes(ctx), participant_routes(ctx), secagg_routes(ctx)):
        app.include_router(router)
    return app


async def _logged(work: Awaitable[None]) -> None:
    """``work``; if it fails, the failure is logged (it must not pass unnoticed)."""
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("background_task_failed")


async def _ticker(ctx: ServiceContext, tick_s: float) -> None:
    """Tick the coordinator every ``tick_s``; a failing tick is logged, counted, reported
    by /healthz and retried with backoff (capped at 30 s), never fatal."""
    opened, moved = time.monotonic(), 0
    while True:
        try:
            version = await ctx.run(ctx.fed.tick)
        except Exception as e:
            ctx.ticker_failures += 1
            ctx.ticker_error = f"{type(e).__name__}: {e}"
            ctx.metrics.tick_errors.inc()
            ctx.metrics.ticker_healthy.set(0)
            log.exception("tick_failed", extra={"fields": {"failures": ctx.ticker_failures}})
            pause = tick_s * 2 ** min(ctx.ticker_failures, 16)
            await asyncio.sleep(min(pause, MAX_TICK_BACKOFF_S))
            continue
        ctx.ticker_failures, ctx.ticker_error = 0, ""
        ctx.metrics.ticker_healthy.set(1)
        if version is not None:
            ctx.metrics.rounds.inc()
            ctx.metrics.round_seconds.observe(time.monotonic() - opened)
            opened = time.monotonic()
        ctx.metrics.participants.set(len(ctx.fed.enrolled))
        if ctx.fed.last_tick != "idle":  # something moved: wake the long polls
            ctx.changed()
            moved += 1
            if moved < MAX_TICKS_AT_ONCE:  # and tick again at once (a close, then an open)
                await asyncio.sleep(0)
                continue
        moved = 0
        await asyncio.sleep(tick_s)
