"""Streaming token-id completions from one vLLM engine.

Closing the connection is how a request is aborted: vLLM cancels the request's generator on
disconnect and frees its KV cache, so cancelling :func:`stream_tokens` is an abort.

A kept-alive connection that the engine closes just as the router reuses it fails while the
request is still being sent ("Can not write request body"; one in about 2,000 requests on the
CPU engine at overload, and with one instance nowhere to recover to). The engine has not started
such a request, so it is sent once more on a new connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

_JSON = {"Content-Type": "application/json"}


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


async def stream_tokens(http: aiohttp.ClientSession, engine_url: str,
                        body: dict[str, Any]) -> AsyncIterator[Delta]:
    """POST a streaming ``/v1/completions`` with ``return_token_ids`` and yield its deltas."""
    payload = orjson.dumps({**body, "stream": True, "return_token_ids": True})
    try:
        async with await _send(http, engine_url + "/v1/completions", payload) as resp:
            if 400 <= resp.status < 500:
                raise EngineRefused(resp.status, _error_message(await resp.read()))
            if resp.status != 200:
                detail = (await resp.text())[:300]
                raise UpstreamError(f"engine answered {resp.status}: {detail}")
            pending = b""
            # Read whatever has arrived and cut it into lines ourselves: one await per network
            # read rather than per line, on the path every token takes.
            async for data in resp.content.iter_any():
                lines = (pending + data).split(b"\n")
                pending = lines.pop()
                for raw in lines:
                    if not raw.startswith(b"data:"):
                        continue
                    payload = raw[5:].strip()
                    if payload == b"[DONE]":
                        return
                    try:
                        chunk = orjson.loads(payload)
                    except orjson.JSONDecodeError:
                        raise UpstreamError(
                            f"engine sent a malformed event: {payload[:100]!r}") from None
                    if "error" in chunk:
                        raise UpstreamError(f"engine error: {chunk['error']}")
                    for choice in chunk.get("choices") or ():
                        yield Delta(choice.get("token_ids") or [], choice.get("text") or "",
                                    choice.get("finish_reason"))
    except (aiohttp.ClientError, ConnectionError) as e:
        raise UpstreamError(f"engine connection failed: {e.__class__.__name__}: {e}") from None
    raise UpstreamError("engine stream ended without [DONE]")


async def _send(http: aiohttp.ClientSession, url: str, payload: bytes) -> aiohttp.ClientResponse:
    """POST, sent a second time if the connection broke before any response came back."""
    try:
        return await http.post(url, data=payload, headers=_JSON)
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
        return await http.post(url, data=payload, headers=_JSON)
