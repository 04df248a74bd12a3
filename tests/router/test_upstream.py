"""The router's engine streams against a stand-in engine (raw sockets on 127.0.0.1) that answers
as scripted: kept-alive connections reused, chunked and sized answers, refusals and failures
told apart, a request the engine never answered sent again once, and an abandoned stream's
connection closed (which is how vLLM learns to abort the request)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from ascendra.router.upstream import EngineConnections, EngineRefused, UpstreamError, stream_tokens

_EVENTS = (b'data: {"choices":[{"token_ids":[5],"text":"a","finish_reason":null}]}\n\n'
           b'data: {"choices":[{"token_ids":[6],"text":"b","finish_reason":"length"}]}\n\n'
           b"data: [DONE]\n\n")
_OK = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
       b"Content-Length: %d\r\n\r\n" % len(_EVENTS)) + _EVENTS
_BODY = {"prompt": [1, 2], "max_tokens": 2}

Reply = Callable[[int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


def _chunked(*parts: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" \
           b"Transfer-Encoding: chunked\r\n\r\n" + \
        b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


async def _request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    return head + await reader.readexactly(length)


class _Engine:
    """Answers request number n (from 1, over all connections) with ``reply(n, ...)``; a
    connection stays open for the next request while the reply returns True."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed_early = asyncio.Event()  # a client closed a connection mid-answer

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    self.requests.append(await _request(reader))
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if not await self.reply(len(self.requests), reader, writer):
                    return
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *_: object) -> None:
        self.server.close()


async def _answer(data: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(data)
    await writer.drain()
    return True


async def _collect(engines: EngineConnections, url: str) -> list[tuple[list[int], str | None]]:
    return [(d.token_ids, d.finish_reason) async for d in stream_tokens(engines, url, _BODY)]


def test_streams_reuse_a_kept_alive_connection_sized_or_chunked():
    async def reply(n: int, _r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if n == 1:
            return await _answer(_OK, w)
        # an event split across chunks, and [DONE] in a chunk of its own
        return await _answer(_chunked(_EVENTS[:30], _EVENTS[30:-14], _EVENTS[-14:]), w)

    async def run() -> tuple[list, list, _Engine]:
        engine = _Engine(reply)
        async with engine as url:
            engines = EngineConnections(keepalive=4.0)
            first = await _collect(engines, url)
            second = await _collect(engines, url)
            engines.close()
        return first, second, engine

    first, second, engine = asyncio.run(run())
    assert first == second == [([5], None), ([6], "length")]
    assert engine.connections == 1
    request = engine.requests[0]
    assert request.startswith(b"POST /v1/completions HTTP/1.1\r\n")
    assert b'"stream":true' in request and b'"return_token_ids":true' in request


def test_a_connection_idle_past_the_keepalive_is_not_reused():
    async def run() -> int:
        engine = _Engine(lambda n, r, w: _answer(_OK, w))
        async with engine as url:
            engines = EngineConnections(keepalive=0.05)
            await _collect(engines, url)
            await asyncio.sleep(0.1)
            await _collect(engines, url)
            engines.close()
        return engine.connections

    assert asyncio.run(run()) == 2


def test_a_connection_dropped_before_any_answer_is_sent_again():
    async def reply(n: int, _r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        return n > 1 and await _answer(_OK, w)  # the first request's connection is closed

    async def run() -> tuple[list, int]:
        engine = _Engine(reply)
        async with engine as url:
            deltas = await _collect(EngineConnections(keepalive=4.0), url)
        return deltas, engine.connections

    deltas, connections = asyncio.run(run())
    assert connections == 2
    assert deltas == [([5], None), ([6], "length")]


def test_an_engine_that_keeps_dropping_fails_the_stream():
    async def run() -> None:
        async with _Engine(lambda n, r, w: asyncio.sleep(0, False)) as url:
            await _collect(EngineConnections(keepalive=4.0), url)

    with pytest.raises(UpstreamError, match="engine connection failed"):
        asyncio.run(run())


def test_a_refusal_is_the_clients_error_with_the_engines_message():
    refusal = (b'{"error":{"message":"top_k must be -1 or at least 1","type":"BadRequestError",'
               b'"code":400}}')

    async def run() -> None:
        async with _Engine(lambda n, r, w: _answer(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(refusal), refusal), w)) as url:
            await _collect(EngineConnections(keepalive=4.0), url)

    with pytest.raises(EngineRefused) as e:
        asyncio.run(run())
    assert (e.value.status, e.value.message) == (400, "top_k must be -1 or at least 1")


def test_a_refusal_that_arrives_in_pieces_is_read_whole():
    refusal = b'{"error":{"message":"min_tokens must not exceed max_tokens","code":400}}'

    async def reply(n: int, _r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 422 Unprocessable Entity\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (refusal[:10], refusal[10:40], refusal[40:]):
            await asyncio.sleep(0.05)
            w.write(b"%x\r\n%s\r\n" % (len(part), part))
            await w.drain()
        return await _answer(b"0\r\n\r\n", w)

    async def run() -> None:
        async with _Engine(reply) as url:
            await _collect(EngineConnections(keepalive=4.0), url)

    with pytest.raises(EngineRefused) as e:
        asyncio.run(asyncio.wait_for(run(), 5))
    assert (e.value.status, e.value.message) == (422, "min_tokens must not exceed max_tokens")


def test_idle_connections_past_the_keepalive_are_pruned():
    async def run() -> tuple[int, int]:
        async with _Engine(lambda n, r, w: _answer(_OK, w)) as url:
            engines = EngineConnections(keepalive=0.05)
            await _collect(engines, url)
            before = sum(len(i) for i in engines._idle.values())
            await asyncio.sleep(0.1)
            engines.prune()
            await asyncio.sleep(0.05)  # the close completes
            engines.prune()
            return before, sum(len(i) for i in engines._idle.values())

    assert asyncio.run(run()) == (1, 0)


@pytest.mark.parametrize("answer, error", [
    (b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops",
     "engine answered 500: oops"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\ndata: {not json}\n\n\n",
     "malformed event"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 62\r\n\r\n"
     b'data: {"error": {"message": "out of memory", "code": 500}}\n\n\n',
     "engine error"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ndata: ", "without \\[DONE\\]"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n" + _EVENTS[:70],
     "engine connection failed"),  # closed mid-answer
    (b"HTTTP/9 what\r\n\r\n", "malformed HTTP response"),
])
def test_an_engine_failure_is_an_upstream_error(answer: bytes, error: str):
    async def reply(n: int, _r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        await _answer(answer, w)
        return False  # and close

    async def run() -> None:
        async with _Engine(reply) as url:
            await _collect(EngineConnections(keepalive=4.0), url)

    with pytest.raises(UpstreamError, match=error):
        asyncio.run(run())


def test_no_engine_listening_is_an_upstream_error():
    with pytest.raises(UpstreamError, match=r"engine connection failed.*(refused|Connect)"):
        asyncio.run(_collect(EngineConnections(keepalive=4.0), "http://127.0.0.1:1"))


def test_an_abandoned_stream_closes_its_connection_and_is_not_reused():
    """Cancelling the reader closes the connection: vLLM then aborts the request."""
    async def run() -> tuple[bool, int]:
        gone = asyncio.Event()

        async def reply(n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
            if n > 1:
                return await _answer(_OK, w)
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" +
                    b"%x\r\n%s\r\n" % (len(_EVENTS[:70]), _EVENTS[:70]))
            await w.drain()
            if await r.read(1) == b"":  # the router closed it
                gone.set()
            return False

        engine = _Engine(reply)
        async with engine as url:
            engines = EngineConnections(keepalive=4.0)

            async def read_one() -> None:
                async for _ in stream_tokens(engines, url, _BODY):
                    await asyncio.sleep(3600)  # the client has left; the reader is cancelled

            reader = asyncio.create_task(read_one())
            await asyncio.sleep(0.2)
            reader.cancel()
            await asyncio.wait_for(gone.wait(), 5)
            await _collect(engines, url)
        return gone.is_set(), engine.connections

    closed, connections = asyncio.run(run())
    assert closed and connections == 2


def test_an_engine_url_that_is_not_plain_http_is_refused():
    with pytest.raises(UpstreamError, match="not http"):
        asyncio.run(_collect(EngineConnections(keepalive=4.0), "https://engine:8000"))


def test_a_connection_that_breaks_after_the_finish_fails_nothing():
    """The reader reads on after the finish (so that the connection can be reused); if the
    engine drops it before ``[DONE]``, the answer is whole and the session has not failed."""
    from ascendra.core.request import Request, Slo
    from ascendra.router.instances import Instance, InstanceSpec
    from ascendra.router.session import Session, TokenEvent

    async def reply(n: int, _r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" +
                b"%x\r\n%s\r\n" % (len(_EVENTS) - 14, _EVENTS[:-14]))  # both events, no [DONE]
        await w.drain()
        return False  # and close

    async def run() -> tuple[list, Session]:
        async with _Engine(reply) as url:
            req = Request(id=1, arrival=0.0, prompt_len=2, max_tokens=2, slo=Slo(1.0, 0.1))
            s = Session(id="s", request=req, prompt_ids=[1, 2], max_tokens=2, sampling={})
            s.start(EngineConnections(keepalive=4.0), Instance(0, InstanceSpec.parse(url)), None)
            assert s._reader is not None
            await asyncio.wait_for(s._reader, 5)
            return await s.next_events(), s

    events, s = asyncio.run(run())
    assert all(isinstance(e, TokenEvent) for e in events)
    assert [e.token_ids for e in events] == [[5], [6]] and s.done and s.relayed


def test_a_pooled_connection_that_sends_unasked_is_not_reused():
    async def reply(n: int, _r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        await _answer(_OK, w)
        if n == 1:
            await asyncio.sleep(0.05)
            w.write(b"HTTP/1.1 200 OK\r\n")  # nothing asked for this
            await w.drain()
        return True

    async def run() -> int:
        engine = _Engine(reply)
        async with engine as url:
            engines = EngineConnections(keepalive=4.0)
            await _collect(engines, url)
            await asyncio.sleep(0.2)
            assert await _collect(engines, url) == [([5], None), ([6], "length")]
            engines.close()
        return engine.connections

    assert asyncio.run(run()) == 2
