"""The completion endpoints as plain ASGI, in front of the FastAPI app that serves the rest.

Every token of every stream passes through here, and Starlette's route for it wrapped each send
in three middleware layers and ran a task group per response (with the stream events rendered
per response, 13% of the router's CPU a relayed token on short streams from the stand-in
backend, docs/serving.md). An :class:`Exchange` is one request and its
answer: the headers, the body read with a size cap, a JSON or streamed reply, and a watch for the
client going away (a stream whose client left is cancelled, which aborts the engine request).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from ascendra.router.protocol import ApiError

log = logging.getLogger("ascendra.router")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class ClientGone(Exception):
    """The client disconnected before its request body was read."""


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is larger than {limit} bytes")


class BodyTooSlow(Exception):
    def __init__(self, timeout: float) -> None:
        super().__init__(f"request body did not arrive within {timeout:g} s")


def _header_list(headers: dict[str, str] | None, content_type: bytes,
                 length: int | None = None) -> list[tuple[bytes, bytes]]:
    out = [(b"content-type", content_type)]
    if length is not None:
        out.append((b"content-length", str(length).encode()))
    for k, v in (headers or {}).items():
        out.append((k.encode("latin-1"), v.encode("latin-1")))
    return out


class Exchange:
    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self.started = False  # the response's start has been sent
        self.headers: dict[str, str] = {}  # lower-case names; the first of repeated ones
        for k, v in scope["headers"]:
            self.headers.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))

    async def body(self, limit: int, timeout: float | None = None) -> bytes:
        """The whole body, refused once it is over ``limit`` bytes (from its declared length,
        before anything is read, or as it arrives) or slower than ``timeout`` seconds."""
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(limit)
        try:
            async with asyncio.timeout(timeout):
                return await self._read_body(limit)
        except TimeoutError:
            raise BodyTooSlow(timeout or 0.0) from None

    async def _read_body(self, limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            msg = await self._receive()
            if msg["type"] == "http.disconnect":
                raise ClientGone
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            parts.append(chunk)
            if not msg.get("more_body", False):
                return b"".join(parts)

    async def disconnected(self) -> None:
        """Returns when the client has gone away (call once the body has been read)."""
        while (await self._receive())["type"] != "http.disconnect":
            pass

    async def unless_gone(self, task: asyncio.Future[Any]) -> bool:
        """Wait for ``task`` or for the client to go away, whichever comes first; True when
        ``task`` is done (the caller decides what a departure means for it)."""
        if task.done():  # placed in the step of its arrival: no watch to start and cancel
            return True
        watch = asyncio.ensure_future(self.disconnected())
        try:
            await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        return task.done()

    async def json(self, status: int, payload: Any,
                   headers: dict[str, str] | None = None) -> None:
        data = orjson.dumps(payload)
        await self._start(status, _header_list(headers, b"application/json", len(data)))
        await self._send({"type": "http.response.body", "body": data})

    async def empty(self, status: int) -> None:
        await self._start(status, [(b"content-length", b"0")])
        await self._send({"type": "http.response.body", "body": b""})

    async def stream(self, chunks: AsyncIterator[tuple[bytes, bool]],
                     headers: dict[str, str] | None = None) -> None:
        """Send ``chunks``, each ``(data, last)``, as a server-sent event stream until the last
        or until the client leaves (then the generator is closed where it waits, which runs
        its cleanup). The last chunk ends the response in the same write: a client that stops
        reading at ``[DONE]`` finds the connection at its end and can reuse it (Go's client
        closed it otherwise, and three in four requests opened a new one)."""
        await self._start(200, _header_list(headers, b"text/event-stream"))
        pump = asyncio.ensure_future(self._pump(chunks))
        watch = asyncio.ensure_future(self.disconnected())
        try:
            await asyncio.wait((pump, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not pump.done():
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
        if not pump.cancelled():
            pump.result()

    async def _pump(self, chunks: AsyncIterator[tuple[bytes, bool]]) -> None:
        send = self._send
        try:
            async for data, last in chunks:
                if last:
                    # The stream's own cleanup first (its session closed, its outcome
                    # recorded): once the end is out, the client-departure watch fires and
                    # would cancel it half-way.
                    await chunks.aclose()  # type: ignore[attr-defined]
                    await send({"type": "http.response.body", "body": data, "more_body": False})
                    return
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    async def _start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        await self._send({"type": "http.response.start", "status": status,
                          "headers": headers})


Handler = Callable[[Exchange], Awaitable[None]]


def hot_routes(routes: dict[str, Handler], fallback: App) -> App:
    """An ASGI app serving ``routes`` (POST only, by exact path) itself and everything else,
    lifespan included, through ``fallback``. An exception a handler lets out is logged and
    answered with an OpenAI-style 500 if nothing was sent yet."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        handler = routes.get(scope["path"]) if scope["type"] == "http" else None
        if handler is None:
            await fallback(scope, receive, send)
            return
        x = Exchange(scope, receive, send)
        try:
            if scope["method"] != "POST":
                await x.json(405, ApiError(405, "Method Not Allowed").body(), {"allow": "POST"})
                return
            await handler(x)
        except Exception:
            log.exception("%s failed", scope["path"])
            if not x.started:
                await x.json(500, ApiError(500, "internal router error", type_="server_error")
                             .body())

    return app
