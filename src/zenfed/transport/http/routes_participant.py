"""The participants' routes: the port's round messages over signed HTTP.

    POST /v1/enroll                        {"token", "name", "public_key" (base64), "capacity",
                                            "data_profile"} -> {"participant", "config"};
                                           the same key and token again: the same answer
    GET  /v1/federation                    the federation's config (public: what joining means)
    GET  /v1/me             (signed)       who the coordinator knows this key as
    GET  /v1/task?wait=S    (signed)       200 the task, 204 after S seconds of nothing, 410
                                           once every round has run
    GET  /v1/versions/{id}?held=H (signed) the version: the broadcasts since H, or in full
                                           (ETag, HTTP Range, so a broken download resumes)
    PUT  /v1/rounds/{r}/update?... (signed) the payload; 200 {"status": accepted|duplicate}

An upload's credential, its round and cohort and its declared size are checked before its
body is read; then the body is read (in one of the upload slots, one per participant at a
time, under the size cap and a deadline that grows with the size) and checked against its
signed hash. Its metadata travels in the signed query string (``Update.metadata``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import ValidationError

from zenfed.config import MAX_WAIT_S
from zenfed.coordinator.validate import UpdateRejected
from zenfed.errors import ZenfedError
from zenfed.protocol.auth import H_BODY, request_proof
from zenfed.protocol.messages import Update
from zenfed.protocol.port import FederationFinished
from zenfed.service.persistent import EnrollmentRefused
from zenfed.transport.http.limits import declared_length, read_body, read_deadline, too_large
from zenfed.transport.http.schemas import EnrollRequest, UpdateMeta
from zenfed.transport.http.service import ServiceContext, path_of

Wait = Annotated[float, Query(ge=0, le=MAX_WAIT_S, allow_inf_nan=False)]


def participant_routes(ctx: ServiceContext) -> APIRouter:
    """The routes above, over ``ctx``."""
    router = APIRouter()
    fed = ctx.fed

    @router.post("/v1/enroll")
    @ctx.guard
    async def enroll(body: EnrollRequest) -> Response:
        """Enroll with a token; the answer carries the federation's config."""
        try:
            key = base64.b64decode(body.public_key, validate=True)
        except (binascii.Error, ValueError) as e:
            raise EnrollmentRefused(
                "public_key is not base64", fix="send the raw key in base64"
            ) from e
        capacity, profile = body.capacity.model_dump(), body.data_profile.model_dump()
        pid = await ctx.run(lambda: fed.enroll(body.token, body.name, key, capacity, profile))
        return JSONResponse({"participant": pid, "config": fed.cfg.model_dump(mode="json")})

    @router.get("/v1/federation")
    async def federation() -> Response:
        """The federation's config: model, adapter, training and codec settings, rules."""
        return JSONResponse(fed.cfg.model_dump(mode="json"))

    @router.get("/v1/me")
    @ctx.guard
    async def me(request: Request) -> Response:
        """Who the coordinator knows this (signed) key as: an agent that lost its
        enrollment record finds out it is enrolled."""
        pid = await ctx.signed(request, b"")
        return JSONResponse(await ctx.run(lambda: fed.whoami(pid)))

    @router.get("/v1/task")
    @ctx.guard
    async def task(request: Request, wait: Wait = 0.0) -> Response:
        """Long-poll for this participant's task in the open round."""
        pid = await ctx.signed(request, b"")

        def poll() -> Any:
            try:
                return fed.next_task(pid)
            except FederationFinished:
                return "finished"

        got = await ctx.long_poll(request, wait, poll)
        if got == "finished":
            return JSONResponse(
                {"error": "the federation has finished", "fix": "nothing to do"}, status_code=410
            )
        return Response(status_code=204) if got is None else JSONResponse(got.to_dict())

    @router.get("/v1/versions/{version}")
    @ctx.guard
    async def version(request: Request, version: str, held: str | None = None) -> Response:
        """The version in full (a file: ETag, Range) or as broadcasts since ``held``;
        counted as this participant's download (the rest of a file, after a Range)."""
        pid = await ctx.signed(request, b"")
        digest = await ctx.run(lambda: fed.version_blob(version))
        size = fed.blobs.size(digest)
        diff = await ctx.run(lambda: fed.port.diff_since(held, version, size))
        sent = len(diff) if diff is not None else size - _range_start(request, size)
        await ctx.run(lambda: fed.port.served(pid, sent))
        ctx.metrics.bytes_out.inc(sent)
        if diff is not None:
            return Response(diff, media_type="application/octet-stream")
        return FileResponse(
            fed.blobs.path(digest),
            media_type="application/octet-stream",
            headers={"ETag": f'"{digest}"', "Cache-Control": "immutable"},
        )

    @router.put("/v1/rounds/{server_round}/update")
    @ctx.guard
    async def upload(request: Request, server_round: int) -> Response:
        """Upload this round's update: raw payload body, metadata in the signed query."""
        if request.headers.get("content-type", "") != "application/octet-stream":
            err = ZenfedError("an update must be sent as application/octet-stream", fix="set it")
            return ctx.refuse(415, "content_type", err)
        limit = fed.engine.codec.max_payload_bytes()
        declared = declared_length(dict(request.headers))
        if declared is not None and declared > limit:
            raise too_large(limit)
        pid = await ctx.signed_headers(request)
        meta = _meta(request)
        await ctx.run(lambda: fed.port.admit(pid, server_round))  # its round, its cohort
        if pid in ctx.uploading:
            raise UpdateRejected(
                "an upload from this participant is already in progress",
                fix="wait for its answer",
                reason="busy",
            )
        ctx.uploading.add(pid)
        try:
            async with ctx.upload_slots:
                deadline = read_deadline(declared or limit, ctx.body_timeout_s)
                body = await read_body(request.stream(), limit, deadline)
                update = replace(
                    Update.from_metadata(server_round, pid, body, meta),
                    proof=request_proof("PUT", path_of(request), dict(request.headers)),
                )
                # hashed, checked against its signature and stored off the event loop and
                # outside the coordinator's lock; counted with those that arrive with it
                await asyncio.to_thread(fed.store_payload, update, request.headers.get(H_BODY))
                result = await ctx.upload(update)
        finally:
            ctx.uploading.discard(pid)
        ctx.metrics.bytes_in.inc(len(body))
        return JSONResponse({"status": result})

    return router


def _range_start(request: Request, size: int) -> int:
    """Where a ``Range: bytes=N-`` request starts (0 without one, or a malformed one)."""
    spec = request.headers.get("range", "")
    start = spec.removeprefix("bytes=").split("-", 1)[0]
    return min(int(start), size) if spec.startswith("bytes=") and start.isdigit() else 0


def _meta(request: Request) -> dict[str, Any]:
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
