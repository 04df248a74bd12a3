"""The router's HTTP server: uvicorn with httptools, bounded where uvicorn leaves it open.

uvicorn's httptools protocol reads a request head of any size for any time: a 20 MB header
was accepted, and 200 connections that sent nothing were all still open after 75 s. This
protocol refuses a head over ``max_head_bytes`` with 431 and closes a connection whose head
has not arrived within ``head_timeout`` (a connection idle between requests closes after
uvicorn's keep-alive timeout). Bodies are bounded in size and time where they are read
(:meth:`ascendra.router.asgi.Exchange.body`), and connections in number by uvicorn's
``limit_concurrency`` (503 beyond it).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


@dataclass(frozen=True)
class ServerLimits:
    max_head_bytes: int = 64 << 10  # the request line and every header together
    head_timeout: float = 10.0  # from connection (or the previous response) to a whole head
    max_connections: int = 4096  # open at once; the next are answered 503
    keep_alive_timeout: float = 5.0  # idle between requests on one connection


_HEAD_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: "
                   b"application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s")


def _protocol(limits: ServerLimits) -> type[asyncio.Protocol]:
    class BoundedHttpTools(HttpToolsProtocol):
        """Counts the bytes of each request head as they arrive, with a deadline for it."""

        _head_bytes = 0
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_done()
            super().connection_lost(exc)

        def _await_head(self) -> None:
            self._head_bytes = 0
            self._head_timer = self.loop.call_later(limits.head_timeout, self._head_expired)

        def _head_done(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_expired(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._head_timer is None or self.transport.is_closing():
                return
            self._head_bytes += len(data)
            if self._head_bytes > limits.max_head_bytes:
                self._head_done()
                body = (b'{"error":{"message":"request head is larger than %d bytes",'
                        b'"type":"invalid_request_error","param":null,'
                        b'"code":"header_too_large"}}' % limits.max_head_bytes)
                self.transport.write(_HEAD_TOO_LARGE % (len(body), body))
                self.transport.close()

        def on_headers_complete(self) -> None:
            self._head_done()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._await_head()  # the next request's head, on a kept-alive connection

    return BoundedHttpTools


def serve(app: Any, host: str, port: int, limits: ServerLimits | None = None) -> None:
    limits = limits or ServerLimits()
    # The router reads no client address, so uvicorn's X-Forwarded-For rewriting and its
    # access log (off at this level anyway) would be work on every request for nothing.
    uvicorn.run(app, host=host, port=port, log_level="warning", http=_protocol(limits),
                limit_concurrency=limits.max_connections,
                timeout_keep_alive=int(limits.keep_alive_timeout), proxy_headers=False,
                access_log=False)
