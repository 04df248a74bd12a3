"""The plain-ASGI front of the router: what it answers itself and what it hands on, driven with
ASGI messages (no server, no engine)."""

from __future__ import annotations

import asyncio

import orjson

from ascendra.router.asgi import BodyTooLarge, BodyTooSlow, Exchange, hot_routes


def _call(app, method: str, path: str, body: bytes = b"",
          headers: list[tuple[bytes, bytes]] | None = None) -> list[dict]:
    sent: list[dict] = []
    chunks = [body[i:i + 4] for i in range(0, len(body), 4)] or [b""]

    async def receive() -> dict:
        if chunks:
            c = chunks.pop(0)
            return {"type": "http.request", "body": c, "more_body": bool(chunks)}
        await asyncio.sleep(3600)  # the client stays
        return {"type": "http.disconnect"}

    async def send(msg: dict) -> None:
        sent.append(msg)

    scope = {"type": "http", "method": method, "path": path, "headers": headers or []}
    asyncio.run(app(scope, receive, send))
    return sent


def _status_and_json(sent: list[dict]) -> tuple[int, dict]:
    return sent[0]["status"], orjson.loads(b"".join(m.get("body", b"") for m in sent[1:]))


async def _fallback(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_other_paths_and_methods_are_the_fallbacks_or_405():
    async def echo(x: Exchange) -> None:
        await x.json(200, {"body": (await x.body(100)).decode()})

    app = hot_routes({"/v1/completions": echo}, _fallback)
    assert _call(app, "GET", "/health")[0]["status"] == 204
    status, body = _status_and_json(_call(app, "GET", "/v1/completions"))
    assert status == 405 and body["error"]["message"] == "Method Not Allowed"
    assert _status_and_json(_call(app, "POST", "/v1/completions", b'{"a": 12345}')) == \
        (200, {"body": '{"a": 12345}'})


def test_a_body_over_the_cap_is_refused_from_its_header_or_as_it_is_read():
    seen: list[str] = []

    async def capped(x: Exchange) -> None:
        try:
            await x.body(10)
        except BodyTooLarge as e:
            seen.append(str(e))
            await x.json(413, {"error": str(e)})

    app = hot_routes({"/v1/completions": capped}, _fallback)
    declared = _call(app, "POST", "/v1/completions", b"x" * 5, [(b"content-length", b"11")])
    streamed = _call(app, "POST", "/v1/completions", b"x" * 11)
    assert declared[0]["status"] == streamed[0]["status"] == 413
    assert seen == ["request body is larger than 10 bytes"] * 2


def test_a_body_slower_than_its_timeout_is_refused():
    seen: list[str] = []

    async def timed(x: Exchange) -> None:
        try:
            await x.body(100, timeout=0.05)
        except BodyTooSlow as e:
            seen.append(str(e))
            await x.json(408, {"error": str(e)})

    async def receive() -> dict:  # a first part, then a client that never sends the rest
        if not seen and not sent:
            sent.append({})
            return {"type": "http.request", "body": b"{", "more_body": True}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    sent: list[dict] = []
    out: list[dict] = []

    async def send(msg: dict) -> None:
        out.append(msg)

    app = hot_routes({"/v1/completions": timed}, _fallback)
    asyncio.run(asyncio.wait_for(app({"type": "http", "method": "POST",
                                      "path": "/v1/completions", "headers": []},
                                     receive, send), 5))
    assert out[0]["status"] == 408
    assert seen == ["request body did not arrive within 0.05 s"]


def test_a_handler_that_fails_before_answering_gets_an_openai_style_500():
    async def broken(x: Exchange) -> None:
        raise RuntimeError("bug")

    status, body = _status_and_json(_call(hot_routes({"/v1/completions": broken}, _fallback),
                                          "POST", "/v1/completions"))
    assert status == 500 and body["error"]["type"] == "server_error"


def test_headers_are_read_case_insensitively_first_one_wins():
    got: dict[str, str] = {}

    async def grab(x: Exchange) -> None:
        got.update(x.headers)
        await x.empty(204)

    _call(hot_routes({"/p": grab}, _fallback), "POST", "/p",
          headers=[(b"X-Ascendra-TTFT-SLO", b"0.5"), (b"x-ascendra-ttft-slo", b"9")])
    assert got["x-ascendra-ttft-slo"] == "0.5"


def _serve_stream(events, leaves_after: int | None) -> list[dict]:  # type: ignore[no-untyped-def]
    """POST to a hot route that streams ``events()``; the client leaves once ``leaves_after``
    messages were sent (None: it stays). What was sent, in order."""
    async def streaming(x: Exchange) -> None:
        await x.body(100)
        await x.stream(events())

    sent: list[dict] = []
    state = {"read": False}

    async def receive() -> dict:
        if not state["read"]:
            state["read"] = True
            return {"type": "http.request", "body": b"", "more_body": False}
        if leaves_after is None:
            await asyncio.sleep(3600)
        while len(sent) < leaves_after:  # type: ignore[operator]
            await asyncio.sleep(0.001)
        return {"type": "http.disconnect"}

    async def send(msg: dict) -> None:
        sent.append(msg)

    app = hot_routes({"/s": streaming}, _fallback)
    asyncio.run(asyncio.wait_for(app({"type": "http", "method": "POST", "path": "/s",
                                      "headers": []}, receive, send), 5))
    return sent


def test_a_stream_is_sent_in_order_and_closed_when_the_client_leaves():
    closed: list[bool] = []

    async def events():
        try:
            yield b"data: 1\n\n", False
            yield b"data: 2\n\n", False
            await asyncio.sleep(3600)  # waits for a token that never comes
            yield b"data: never\n\n", True
        finally:
            closed.append(True)

    sent = _serve_stream(events, leaves_after=3)  # once it has the two events
    assert sent[0]["status"] == 200
    assert [m["body"] for m in sent[1:]] == [b"data: 1\n\n", b"data: 2\n\n"]
    assert closed == [True]


def test_the_last_chunk_ends_the_response_in_the_same_send():
    """``[DONE]`` and the end of the response go out together, so that a client that stops
    reading at ``[DONE]`` finds the connection at its end (and can reuse it)."""
    async def events():
        yield b"data: 1\n\n", False
        yield b"data: 2\n\ndata: [DONE]\n\n", True

    sent = _serve_stream(events, leaves_after=None)
    assert [(m["body"], m["more_body"]) for m in sent[1:]] == [
        (b"data: 1\n\n", True), (b"data: 2\n\ndata: [DONE]\n\n", False)]
