"""OpenAI wire format for what the router sends back: stream chunks and whole responses."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class ResponseShape:
    """Which endpoint is answering, and what the client asked to see."""

    chat: bool
    id: str
    model: str
    prompt_tokens: int
    include_usage: bool = False
    return_token_ids: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def object(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"

    def usage(self, completion_tokens: int) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def __post_init__(self) -> None:
        # Every stream event is this prefix, the choice's fields and "}]}": rendered once per
        # response rather than as a dict per token (the router's hottest path).
        head = orjson.dumps({"id": self.id, "object": self.object, "created": self.created,
                             "model": self.model})
        self._prefix = b"data: " + head[:-1] + b',"choices":[{"index":0,'

    def event(self, text: str, token_ids: list[int], finish_reason: str | None,
              first: bool = False) -> bytes:
        """One stream chunk as a server-sent event, byte for byte ``sse`` of the chunk's JSON
        (OpenAI's field order)."""
        t = orjson.dumps(text)
        if self.chat:
            body = b'"delta":{"content":' + t + (b',"role":"assistant"}' if first else b"}")
        else:
            body = b'"text":' + t
        body += b',"logprobs":null,"finish_reason":' + orjson.dumps(finish_reason)
        if self.return_token_ids:
            body += b',"token_ids":' + orjson.dumps(token_ids)
        return self._prefix + body + b"}]}\n\n"

    def usage_chunk(self, completion_tokens: int) -> dict[str, Any]:
        return {"id": self.id, "object": self.object, "created": self.created,
                "model": self.model, "choices": [], "usage": self.usage(completion_tokens)}

    def whole(self, text: str, token_ids: list[int], finish_reason: str | None,
              completion_tokens: int) -> dict[str, Any]:
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0, "message": {"role": "assistant", "content": text},
                "logprobs": None, "finish_reason": finish_reason}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            obj = "text_completion"
        if self.return_token_ids:
            choice["token_ids"] = token_ids
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "choices": [choice], "usage": self.usage(completion_tokens)}


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
