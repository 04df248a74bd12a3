"""The router's stream events, rendered from a prefix per response, are the OpenAI chunks'
JSON byte for byte."""

from __future__ import annotations

import orjson
import pytest

from ascendra.router.formats import ResponseShape


def openai_chunk(shape: ResponseShape, text: str, ids: list[int], finish: str | None,
                 first: bool) -> dict:
    if shape.chat:
        delta = {"content": text, **({"role": "assistant"} if first else {})}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    if shape.return_token_ids:
        choice["token_ids"] = ids
    return {"id": shape.id, "object": shape.object, "created": shape.created,
            "model": shape.model, "choices": [choice]}


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("ids", [False, True])
@pytest.mark.parametrize("first", [False, True])
@pytest.mark.parametrize("finish", [None, "length", "stop"])
@pytest.mark.parametrize("text", ["", " tok", 'a "quoted"\n\\ line', "naïve ✓ 🚀", "\x00\x1f"])
def test_event_is_the_chunk_as_server_sent_event(chat, ids, first, finish, text):
    shape = ResponseShape(chat=chat, id='cmpl-"x"-1', model="m/é", prompt_tokens=3,
                          return_token_ids=ids)
    got = shape.event(text, [1, 2, 65535], finish, first)
    want = openai_chunk(shape, text, [1, 2, 65535], finish, first)
    assert got == b"data: " + orjson.dumps(want) + b"\n\n"
    assert orjson.loads(got[len(b"data: "):]) == want
