"""Streaming token-id completions from one vLLM engine.

Closing the connection is how a request is aborted: vLLM cancels the request's generator on
disconnect and frees its KV cache, so cancelling :func:`stream_tokens` is an abort.

Every token of every request comes through here, so the HTTP/1.1 client is the router's own:
one kept-alive connection per stream at a time, parsed with httptools (as the router's server
side is), each network read handed to the stream as it lands. Against the stand-in backend,
2,000 two-token streams one after another cost about 140 µs of CPU each through aiohttp's client
and 48 µs through this one, and aiohttp was 19% of the router's CPU at 1,400 requests a second
(docs/serving.md). The router's other calls to engines and agents (polls, roles) still use it.

A kept-alive connection that the engine closes just as the router reuses it fails while the
request is still being sent (one in about 2,000 requests on the CPU engine at overload, and with
one instance nowhere to recover to). The engine has not started such a request, so it is sent
once more on a new connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import httptools
import orjson

CONNECT_TIMEOUT_S = 5.0
ERROR_BODY_BYTES = 64 << 10  # of an error answer, kept for its message


class UpstreamError(Exception):
    """The engine failed the request (connection refused or lost, 5xx, malformed stream)."""


class EngineRefused(Exception):
    """The engine refused the request (a 4xx): the client's error, which says nothing of the
    engine's health."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error_message(body: bytes) -> str:
    """The message of an OpenAI-style error body (vLLM's, old form or new), else the text."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:300].decode("utf-8", "replace")
    err = data.get("error", data) if isinstance(data, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    return str(message)[:1000] if message else body[:300].decode("utf-8", "replace")


@dataclass(slots=True)
class Delta:
    token_ids: list[int]
    text: str
    finish_reason: str | None


@dataclass(frozen=True, slots=True)
class _Origin:
    host: str
    port: int
    host_header: bytes
    path_prefix: bytes


@lru_cache(maxsize=256)
def _origin(engine_url: str) -> _Origin:
    u = urlsplit(engine_url)
    if u.scheme != "http" or not u.hostname:
        raise UpstreamError(f"engine URL {engine_url!r} is not http://host[:port]")
    return _Origin(u.hostname, u.port or 80, u.netloc.rsplit("@", 1)[-1].encode("idna"),
                   u.path.rstrip("/").encode())


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection to an engine, one response at a time: what has arrived of the
    current response's body, and a future the reader waits on for more."""

    def __init__(self, origin: _Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.lost = False
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self.begin()

    def begin(self, expecting: bool = False) -> None:
        self.expecting = expecting  # a request is out and its answer not complete
        self.status = 0  # 0 until the response's head is in
        self.answered = False  # any byte of the response has arrived
        self.complete = False
        self.keep_alive = False
        self.failure: str | None = None
        self.body: list[bytes] = []

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.expecting:  # nothing was asked: the connection cannot be trusted again
            self.close()
            return
        self.answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self.failure = f"malformed HTTP response: {e}"
            self.close()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.complete and self.failure is None:
            self.failure = f"connection lost: {exc}" if exc else \
                "the engine closed the connection"
        self._wake()

    # -- httptools callbacks -----------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        self.expecting = False

    # -- the reader's side -------------------------------------------------------------------
    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def arrived(self) -> None:
        """Returns once more of the response has arrived, it is complete, or it failed."""
        if self.body or self.complete or self.failure is not None:
            return
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def take(self) -> bytes:
        data = b"".join(self.body) if len(self.body) != 1 else self.body[0]
        self.body.clear()
        return data

    def send(self, path: bytes, payload: bytes) -> None:
        assert self.transport is not None
        self.begin(expecting=True)
        o = self.origin
        self.transport.write(
            b"POST %s%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (o.path_prefix, path, o.host_header,
                                               len(payload), payload))

    def close(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.close()
        self.lost = True


class EngineConnections:
    """Kept-alive connections to the engines, for their token streams. A connection idle
    longer than ``keepalive`` is not reused: an engine's server closes idle ones itself
    (uvicorn's keep-alive, 5 s by default), and a request sent on one it is closing that
    instant is reset."""

    def __init__(self, keepalive: float) -> None:
        self.keepalive = keepalive
        self._idle: dict[_Origin, list[_Connection]] = {}

    async def _connect(self, origin: _Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                _, conn = await loop.create_connection(lambda: _Connection(origin),
                                                       origin.host, origin.port)
        except TimeoutError:
            raise UpstreamError(f"engine connection failed: no connection to {origin.host}:"
                                f"{origin.port} within {CONNECT_TIMEOUT_S:g} s") from None
        except OSError as e:
            raise UpstreamError(f"engine connection failed: {e.__class__.__name__}: {e}") \
                from None
        return conn

    def _reusable(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.lost and now - conn.idle_since < self.keepalive:
                return conn
            conn.close()
        return None

    def _release(self, conn: _Connection) -> None:
        if conn.complete and conn.keep_alive and not conn.lost and conn.failure is None:
            conn.idle_since = time.monotonic()
            self._idle.setdefault(conn.origin, []).append(conn)
        else:
            conn.close()

    def prune(self) -> None:
        """Close the idle connections too old to reuse and forget the lost ones (those to
        engines no longer in the pool are never asked for again)."""
        now = time.monotonic()
        for origin, idle in list(self._idle.items()):
            for conn in idle:
                if now - conn.idle_since >= self.keepalive:
                    conn.close()
            idle[:] = [c for c in idle if not c.lost]
            if not idle:
                del self._idle[origin]

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()

    async def _answered(self, origin: _Origin, path: bytes, payload: bytes) -> _Connection:
        """A connection on which the engine has begun to answer ``payload``: sent once more on
        a new connection if a reused or new one broke before any answer came back."""
        failure = None
        for attempt in range(2):
            conn = (self._reusable(origin) if attempt == 0 else None) or \
                await self._connect(origin)
            try:
                conn.send(path, payload)
                while not conn.answered and conn.failure is None:
                    await conn.arrived()
            except BaseException:  # cancelled: the request is abandoned
                conn.close()
                raise
            if conn.answered:
                return conn
            failure = conn.failure
            conn.close()
        raise UpstreamError(f"engine connection failed: {failure}")

    async def post(self, engine_url: str, path: bytes, payload: bytes
                   ) -> AsyncIterator[bytes]:
        """POST ``payload``; yields the body of a 200 answer as it arrives. A 4xx raises
        :class:`EngineRefused`, anything else not 200 or a broken answer
        :class:`UpstreamError`. Leaving before the end closes the connection, which aborts the
        request on the engine."""
        origin = _origin(engine_url)
        conn = await self._answered(origin, path, payload)
        try:
            while conn.status == 0 and conn.failure is None:
                await conn.arrived()
            if conn.status != 200:
                body = b""
                while True:
                    body = (body + conn.take())[:ERROR_BODY_BYTES]
                    if conn.complete or conn.failure is not None:
                        break
                    await conn.arrived()
                if 400 <= conn.status < 500:
                    raise EngineRefused(conn.status, _error_message(body))
                if conn.status == 0:
                    raise UpstreamError(f"engine connection failed: {conn.failure}")
                raise UpstreamError(f"engine answered {conn.status}: "
                                    f"{body[:300].decode('utf-8', 'replace')}")
            while True:
                if conn.body:
                    yield conn.take()
                elif conn.complete:
                    return
                elif conn.failure is not None:
                    raise UpstreamError(f"engine connection failed: {conn.failure}")
                else:
                    await conn.arrived()
        finally:
            self._release(conn)


async def stream_tokens(engines: EngineConnections, engine_url: str,
                        body: dict[str, Any]) -> AsyncIterator[Delta]:
    """POST a streaming ``/v1/completions`` with ``return_token_ids`` and yield its deltas."""
    payload = orjson.dumps({**body, "stream": True, "return_token_ids": True})
    pending = b""
    ended = False  # [DONE] came: the rest is the end of the response (read, so that the
    # connection can be reused)
    answer = engines.post(engine_url, b"/v1/completions", payload)
    try:
        # Cut what has arrived into lines ourselves: one wake-up per network read rather than
        # per line, on the path every token takes.
        async for data in answer:
            if ended:
                continue
            lines = (pending + data).split(b"\n")
            pending = lines.pop()
            for raw in lines:
                if not raw.startswith(b"data:"):
                    continue
                event = raw[5:].strip()
                if event == b"[DONE]":
                    ended = True
                    break
                try:
                    chunk = orjson.loads(event)
                except orjson.JSONDecodeError:
                    raise UpstreamError(
                        f"engine sent a malformed event: {event[:100]!r}") from None
                if "error" in chunk:
                    raise UpstreamError(f"engine error: {chunk['error']}")
                for choice in chunk.get("choices") or ():
                    yield Delta(choice.get("token_ids") or [], choice.get("text") or "",
                                choice.get("finish_reason"))
    finally:
        await answer.aclose()
    if not ended:
        raise UpstreamError("engine stream ended without [DONE]")
