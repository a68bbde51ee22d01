"""The operator's routes and the service's own: health, metrics, invites, status, revoke,
reinstate, rollback.

GET  /healthz                          200 ok; 503 while the round ticker is failing
GET  /metrics                          Prometheus text
POST /v1/invites        (operator)     {"label", "ttl_s"} -> {"token"}
GET  /v1/status         (operator)     the federation at a glance
POST /v1/participants/{name}/revoke (operator)  refuse its requests from now on
POST /v1/participants/{name}/reinstate (operator)  lift its quarantine
POST /v1/rollback       (operator)     {"to": version} -> the new version republishing it
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import generate_latest

from zenfed.errors import ZenfedError
from zenfed.transport.http.schemas import InviteRequest, RollbackRequest
from zenfed.transport.http.service import ServiceContext


def operator_routes(ctx: ServiceContext) -> APIRouter:
    """The routes above, over ``ctx``."""
    router = APIRouter()
    fed = ctx.fed

    @router.get("/healthz")
    async def healthz() -> JSONResponse:
        """Liveness: 503 while the round ticker fails (or if it has stopped)."""
        if ctx.ticker is not None and ctx.ticker.done():
            err = ZenfedError("the round ticker has stopped", fix="restart the coordinator")
            return JSONResponse({"status": "down", "error": err.problem, "fix": err.fix}, 503)
        if ctx.ticker_failures:
            return JSONResponse(
                {
                    "status": "degraded",
                    "error": f"the last {ctx.ticker_failures} round ticks failed: "
                    + ctx.ticker_error,
                    "fix": "see the coordinator's log (tick_failed); it keeps retrying",
                },
                503,
            )
        return JSONResponse({"status": "ok"})

    @router.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus metrics."""
        text = generate_latest(ctx.metrics.registry)
        return Response(text, media_type="text/plain; version=0.0.4")

    @router.post("/v1/invites")
    @ctx.guard
    async def invite(request: Request, body: InviteRequest) -> Response:
        """Operator: a new single-use enrollment token."""
        ctx.operator(request)
        token = await ctx.run(lambda: fed.invite(body.label, body.ttl_s))
        return JSONResponse({"token": token})

    @router.get("/v1/status")
    @ctx.guard
    async def status(request: Request) -> Response:
        """Operator: the federation's state."""
        ctx.operator(request)
        return JSONResponse(await ctx.run(fed.status))

    @router.post("/v1/participants/{name}/revoke")
    @ctx.guard
    async def revoke(request: Request, name: str) -> Response:
        """Operator: revoke a participant (by id or name); its requests get 401 from now on."""
        ctx.operator(request)
        pid = await ctx.run(lambda: fed.revoke(name))
        return JSONResponse({"participant": pid, "revoked": True})

    @router.post("/v1/participants/{name}/reinstate")
    @ctx.guard
    async def reinstate(request: Request, name: str) -> Response:
        """Operator: lift a participant's quarantine (by id or name); audited."""
        ctx.operator(request)
        pid = await ctx.run(lambda: fed.reinstate(name))
        return JSONResponse({"participant": pid, "reinstated": True})

    @router.post("/v1/rollback")
    @ctx.guard
    async def rollback(request: Request, body: RollbackRequest) -> Response:
        """Operator: publish an earlier version again as a new version; audited."""
        ctx.operator(request)
        v = await ctx.run(lambda: fed.rollback(body.to))
        return JSONResponse({"version": v.id, "round": v.round, "rollback_of": v.rollback_of})

    return router
