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

    def chunk(self, text: str, token_ids: list[int], finish_reason: str | None,
              first: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"content": text}
            if first:
                delta["role"] = "assistant"
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None,
                                      "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None,
                      "finish_reason": finish_reason}
        if self.return_token_ids:
            choice["token_ids"] = token_ids
        return {"id": self.id, "object": self.object, "created": self.created,
                "model": self.model, "choices": [choice]}

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
