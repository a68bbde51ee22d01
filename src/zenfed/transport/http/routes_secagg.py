"""Secure aggregation's stage routes: the port's stage messages as signed JSON.

    POST /v1/rounds/{r}/secagg/{stage}          (signed)  advertise_keys, share_keys, unmask
    GET  /v1/rounds/{r}/secagg/{stage}?wait=S   (signed)  what that stage needs, 204 until then

A posted message's credential is checked before its body is read (at most 1 MiB, under a
deadline); the masked vector itself is the round's ordinary upload. Which stage is open,
and what each participant may post or read in it, is the port's business
(``zenfed.coordinator.port``); this only encodes and decodes (``wire``).
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from zenfed.privacy.secagg import SecAggError
from zenfed.protocol.auth import check_body
from zenfed.transport.http import wire
from zenfed.transport.http.limits import read_body, read_deadline
from zenfed.transport.http.routes_participant import Wait
from zenfed.transport.http.service import ServiceContext

SECAGG_MAX_BODY = 1 << 20  # keys or shares for hundreds of neighbours fit many times


def secagg_routes(ctx: ServiceContext) -> APIRouter:
    """The routes above, over ``ctx``."""
    router = APIRouter()
    port = ctx.fed.port

    @router.post("/v1/rounds/{server_round}/secagg/{stage}")
    @ctx.guard
    async def secagg_post(request: Request, server_round: int, stage: str) -> Response:
        """This participant's message for ``stage`` (advertise_keys, share_keys, unmask)."""
        pid = await ctx.signed_headers(request)
        deadline = read_deadline(SECAGG_MAX_BODY, ctx.body_timeout_s)
        body = await read_body(request.stream(), SECAGG_MAX_BODY, deadline)
        check_body(body, {k.lower(): v for k, v in request.headers.items()})
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as e:
            raise SecAggError("the body is not JSON", fix="send a JSON object") from e
        message = wire.stage_message_from_json(stage, pid, data)
        await ctx.run(lambda: port.stage_post(pid, server_round, stage, message))
        return JSONResponse({"status": "accepted"})

    @router.get("/v1/rounds/{server_round}/secagg/{stage}")
    @ctx.guard
    async def secagg_get(
        request: Request, server_round: int, stage: str, wait: Wait = 0.0
    ) -> Response:
        """Long-poll for what ``stage`` needs (the neighbours' keys, the shares sent to this
        participant, the unmask request); 204 while it has not begun."""
        pid = await ctx.signed(request, b"")
        got = await ctx.long_poll(
            request, wait, lambda: port.stage_get(pid, server_round, stage), 0.1
        )
        if got is None:
            return Response(status_code=204)
        return JSONResponse(wire.stage_input_to_json(got))

    return router
