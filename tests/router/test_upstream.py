"""The router's engine stream against a stand-in engine (raw sockets on 127.0.0.1) that drops
connections on purpose: a request the engine never answered is sent again, once."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from ascendra.router.upstream import UpstreamError, stream_tokens

_EVENTS = (b'data: {"choices":[{"token_ids":[5],"text":"a","finish_reason":null}]}\n\n'
           b'data: {"choices":[{"token_ids":[6],"text":"b","finish_reason":"length"}]}\n\n'
           b"data: [DONE]\n\n")
_OK = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
       b"Content-Length: %d\r\n\r\n" % len(_EVENTS)) + _EVENTS


async def _with_engine(drops: int):
    """Run the stream against an engine that closes its first ``drops`` connections as soon as
    a request starts arriving; returns the deltas and how many connections it saw."""
    seen = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        seen += 1
        await reader.readuntil(b"\r\n\r\n")
        if seen <= drops:
            writer.close()
            return
        writer.write(_OK)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as http:
            deltas = [d async for d in stream_tokens(http, f"http://127.0.0.1:{port}",
                                                     {"prompt": [1, 2], "max_tokens": 2})]
    finally:
        server.close()
    return deltas, seen


def test_a_connection_dropped_before_any_answer_is_sent_again():
    deltas, seen = asyncio.run(_with_engine(drops=1))
    assert seen == 2
    assert [d.token_ids for d in deltas] == [[5], [6]] and deltas[-1].finish_reason == "length"


def test_an_engine_that_keeps_dropping_fails_the_stream():
    with pytest.raises(UpstreamError, match="engine connection failed"):
        asyncio.run(_with_engine(drops=2))
