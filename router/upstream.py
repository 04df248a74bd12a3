"""Streaming token-id completions from one vLLM engine.

Closing the connection is how a request is aborted: vLLM cancels the request's generator on
disconnect and frees its KV cache, so cancelling :func:`stream_tokens` is an abort.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp


class UpstreamError(Exception):
    """The engine failed the request (connection refused or lost, 5xx, malformed stream)."""


@dataclass(slots=True)
class Delta:
    token_ids: list[int]
    text: str
    finish_reason: str | None


async def stream_tokens(http: aiohttp.ClientSession, engine_url: str,
                        body: dict[str, Any]) -> AsyncIterator[Delta]:
    """POST a streaming ``/v1/completions`` with ``return_token_ids`` and yield its deltas."""
    payload = {**body, "stream": True, "return_token_ids": True}
    try:
        async with http.post(engine_url + "/v1/completions", json=payload) as resp:
            if resp.status != 200:
                detail = (await resp.text())[:300]
                raise UpstreamError(f"engine answered {resp.status}: {detail}")
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise UpstreamError(f"engine sent a malformed event: {data[:100]!r}") from None
                if "error" in chunk:
                    raise UpstreamError(f"engine error: {chunk['error']}")
                for choice in chunk.get("choices") or ():
                    yield Delta(choice.get("token_ids") or [], choice.get("text") or "",
                                choice.get("finish_reason"))
    except (aiohttp.ClientError, ConnectionError) as e:
        raise UpstreamError(f"engine connection failed: {e.__class__.__name__}: {e}") from None
    raise UpstreamError("engine stream ended without [DONE]")
