"""Hostile and careless clients against the real stack (two vLLM CPU engines behind the
router, ``ascendra up``): every mistake is answered as the client's, with an OpenAI-style 4xx,
and nobody else's request, no engine's health and no SLO counter notices."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving_support import Stack

MODEL = "tiny-llama"
ERROR_KEYS = {"message", "type", "param", "code"}


def _post(url: str, body: bytes, timeout: float = 60) -> tuple[int, bytes]:
    req = urllib.request.Request(url + "/v1/completions", data=body, method="POST",
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name))


def _body(**extra: Any) -> bytes:
    return json.dumps({"model": MODEL, "prompt": "hello there", "max_tokens": 4, **extra}).encode()


# What vLLM refuses (its SamplingParams checks) and what its transport cannot carry: each used
# to reach an engine, come back 502 and mark the engine unhealthy, or hang the client.
HOSTILE = [
    ("top_k", _body(top_k=-5)),
    ("min_tokens", _body(min_tokens=10, max_tokens=4)),
    ("stop", _body(stop=[""])),
    ("stop", _body(stop="")),
    ("temperature", _body(temperature=1e6)),
    ("stop_token_ids", _body(stop_token_ids=[10**9])),
    ("seed", _body(seed=2**70)),
    ("top_k", _body(top_k=2**70)),
    ("min_tokens", _body(min_tokens=2**70)),
    ("stop_token_ids", _body(stop_token_ids=[2**70])),
    ("repetition_penalty", _body(repetition_penalty=0)),
    (None, b'{"model": "tiny-llama", "prompt": "x", "temperature": NaN}'),  # not JSON
    (None, b'{"model": "tiny-llama", "prompt": "\\ud800"}'),  # a lone surrogate
    (None, b"[" * 5000 + b"]" * 5000),  # nested past any parser's patience
]


@pytest.mark.parametrize(("param", "body"), HOSTILE)
def test_what_an_engine_would_refuse_is_refused_at_the_router(stack: Stack, param, body):
    slo = _metric(stack.url, "ascendra_slo_requests_total")
    status, raw = _post(stack.url, body)
    assert status == 400, raw
    err = json.loads(raw)["error"]
    assert set(err) == ERROR_KEYS
    if param is not None:
        assert (err["param"] or "").startswith(param), err
    assert stack.get("/health") == {"healthy_instances": 2}
    assert _metric(stack.url, "ascendra_slo_requests_total") == slo


def test_a_flood_of_bad_requests_costs_other_clients_nothing(stack: Stack):
    """About 150 such requests used to make 23-35% of other clients' requests fail with 503
    (every engine marked unhealthy), each counted as an SLO miss."""
    slo = _metric(stack.url, "ascendra_slo_requests_total")
    bad = [b for _, b in HOSTILE] * 11

    async def run() -> tuple[list[int], list[int]]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
            async def one(body: bytes, stream: bool = False) -> int:
                async with http.post(stack.url + "/v1/completions", data=body,
                                     headers={"content-type": "application/json"}) as r:
                    text = await r.read()
                    if r.status == 200 and stream:
                        assert text.rstrip().endswith(b"data: [DONE]"), text[-200:]
                        assert b'"error"' not in text, text[-300:]
                    return r.status

            good = [one(_body(ignore_eos=True, stream=i % 2 == 0), stream=i % 2 == 0)
                    for i in range(20)]
            results = await asyncio.gather(*good, *(one(b) for b in bad))
            return list(results[:20]), list(results[20:])

    good, refused = asyncio.run(run())
    assert good == [200] * 20
    assert set(refused) == {400}
    assert stack.get("/health") == {"healthy_instances": 2}
    assert _metric(stack.url, "ascendra_slo_requests_total") == slo + 20


_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
_int = st.one_of(st.integers(-3, 12), st.integers(-(2**80), 2**80))
_FIELDS = {
    "model": st.sampled_from([MODEL, MODEL, "other", ""]),
    "prompt": st.one_of(_text, st.lists(st.integers(-5, 70000), max_size=12),
                        st.lists(_text, max_size=2), st.integers(), st.none()),
    "max_tokens": _int,
    "min_tokens": _int,
    "temperature": st.one_of(st.floats(-1, 3), st.floats(allow_nan=False)),
    "top_p": st.floats(-0.5, 1.5),
    "top_k": _int,
    "min_p": st.floats(-0.5, 1.5),
    "seed": _int,
    "stop": st.one_of(_text, st.lists(_text, max_size=3), st.none()),
    "stop_token_ids": st.lists(_int, max_size=3),
    "presence_penalty": st.floats(-3, 3),
    "repetition_penalty": st.floats(-1, 3),
    "stream": st.booleans(),
    "ignore_eos": st.booleans(),
    "n": st.integers(0, 3),
    "echo": st.booleans(),
    "logprobs": st.one_of(st.none(), st.integers(-1, 3)),
}
_bodies = st.fixed_dictionaries({"model": _FIELDS["model"], "prompt": _FIELDS["prompt"]},
                                optional={k: v for k, v in _FIELDS.items()
                                          if k not in ("model", "prompt")})


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(body=_bodies)
def test_any_request_body_gets_a_success_or_an_openai_error(stack: Stack, body: dict):
    """A bounded fuzz of the request schema: whatever the body, the answer is a complete
    success or a well-formed OpenAI error, and the stack stays healthy."""
    body.setdefault("max_tokens", 4)  # a short answer keeps the CPU engines quick
    status, raw = _post(stack.url, json.dumps(body).encode())
    if status == 200:
        if body.get("stream"):
            assert raw.rstrip().endswith(b"data: [DONE]"), raw[-300:]
            events = [json.loads(line[6:]) for line in raw.split(b"\n")
                      if line.startswith(b"data: {")]
            assert events and all("error" not in e for e in events), raw[-300:]
        else:
            assert json.loads(raw)["object"] == "text_completion"
    else:
        assert 400 <= status < 500, (status, raw[:300])
        assert set(json.loads(raw)["error"]) == ERROR_KEYS, raw[:300]
    assert stack.get("/health") == {"healthy_instances": 2}
