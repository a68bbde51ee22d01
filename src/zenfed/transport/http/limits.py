"""How much of a request body the service reads, and for how long.

    app.add_middleware(BodyLimit, limit_for=route_limit, timeout_s=120, refuse=...)
    body = await read_body(request.stream(), limit, timeout_s)   # for streamed uploads

A body is read with a cap (per route) and a deadline: a declared ``Content-Length`` above
the cap is refused before any of the body is read (413), a body that grows past it while
arriving is refused at that point (413), and one that has not arrived by the deadline is
refused (408), so neither a huge body nor a trickling one can hold memory or a slot. The
middleware buffers small bodies (enrollment, invites, secure-aggregation messages) this
way before the route sees them; the upload route, which must check the signature before
reading, streams its own with :func:`read_body`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect

from zenfed.errors import ZenfedError

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Refuse = Callable[[int, str, ZenfedError], Any]  # (status, metric reason, error) -> Response


class BodyTooLarge(ZenfedError):
    """A request body over its route's limit."""


class BodyTimeout(ZenfedError):
    """A request body that did not arrive in time."""


class ClientGone(ZenfedError):
    """The client closed the connection before its body was complete."""


MIN_BODY_S = 10.0  # any body may take this long...
MIN_RATE = 16 << 10  # ...plus its size at 16 KiB/s, up to service.body_timeout_s


def read_deadline(size: int, timeout_s: float) -> float:
    """Seconds a body of ``size`` bytes may take: 10 s plus the size at 16 KiB/s, at most
    ``timeout_s``, so a trickle cannot hold a slot for the whole timeout."""
    return min(timeout_s, MIN_BODY_S + size / MIN_RATE)


def too_large(limit: int) -> BodyTooLarge:
    """The refusal of a body over ``limit`` bytes."""
    return BodyTooLarge(
        f"request body exceeds this route's limit of {limit} bytes",
        fix="send one message of the documented size",
    )


def declared_length(headers: list[tuple[bytes, bytes]] | dict[str, str]) -> int | None:
    """The ``Content-Length`` a request declares (None if absent); BodyTooLarge-free but a
    malformed value is a ZenfedError."""
    items = headers.items() if isinstance(headers, dict) else headers
    for k, v in items:
        key = k.decode("latin-1") if isinstance(k, bytes) else k
        if key.lower() == "content-length":
            value = v.decode("latin-1") if isinstance(v, bytes) else v
            if not value.isdigit():
                raise ZenfedError("Content-Length is not a number", fix="send a valid length")
            return int(value)
    return None


async def read_body(chunks: AsyncIterator[bytes], limit: int, timeout_s: float) -> bytes:
    """Read a streamed body: BodyTooLarge past ``limit`` bytes, BodyTimeout after
    ``timeout_s`` seconds, ClientGone if the client hangs up first."""
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in chunks:
                body += chunk
                if len(body) > limit:
                    raise too_large(limit)
    except ClientDisconnect as e:
        raise ClientGone("the client went away mid-body", fix="send the whole body") from e
    except TimeoutError as e:
        raise BodyTimeout(
            f"request body did not arrive within {timeout_s:g} s",
            fix="send the body at once, or over a faster link",
        ) from e
    return bytes(body)


class BodyLimit:
    """ASGI middleware: read each request's body under its route's cap and the deadline,
    then hand it to the app (routes where ``limit_for`` gives None stream their own)."""

    def __init__(
        self,
        app: Any,
        limit_for: Callable[[str, str], int | None],
        timeout_s: float,
        refuse: Refuse,
    ) -> None:
        self.app, self.limit_for, self.timeout_s, self.refuse = app, limit_for, timeout_s, refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request (or pass any other ASGI event through)."""
        limit = None
        if scope["type"] == "http":
            limit = self.limit_for(scope["method"], scope["path"])
        if limit is None:
            await self.app(scope, receive, send)
            return
        try:
            declared = declared_length(scope["headers"])
            if declared is not None and declared > limit:
                raise too_large(limit)
            size = declared if declared is not None else limit
            body = await read_body(_messages(receive), limit, read_deadline(size, self.timeout_s))
        except BodyTooLarge as e:
            await self.refuse(413, "too_large", e)(scope, receive, send)
            return
        except BodyTimeout as e:
            await self.refuse(408, "body_timeout", e)(scope, receive, send)
            return
        except ClientGone:
            return  # nobody to answer; the app never sees half a body
        except ZenfedError as e:
            await self.refuse(400, "bad_request", e)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)


async def _messages(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that delivers ``body`` once, then waits on the real one (which
    reports the client's disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
