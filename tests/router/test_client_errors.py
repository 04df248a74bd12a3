"""An engine's refusal is the client's error: the router process in front of the STAND-IN
backend (bench/standin_backend.py, which refuses prompts holding one token id the way vLLM
refuses a request, 400 and an OpenAI error body). The stand-in isolates the router from a real
engine's start-up; the same bodies against real vLLM engines are in
tests/serving/test_faults.py."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from standin_router import get, standin_router

BACKEND, ROUTER = 18960, 18970
REFUSE = 7  # the token id the stand-in refuses


def _metric(url: str, name: str) -> float:
    _, text = get(url + "/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name))


@pytest.fixture(scope="module")
def router() -> Iterator[str]:
    with standin_router(BACKEND, ROUTER, "--refuse-token", str(REFUSE)) as url:
        yield url


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)


@pytest.mark.parametrize("stream", [False, True])
def test_an_engine_refusal_reaches_the_client_as_400_and_the_engine_stays_healthy(
        router: str, stream: bool):
    slo_before = _metric(router, "ascendra_slo_requests_total")
    refused_before = _metric(router, 'ascendra_requests_total{endpoint="completions",status="400"}')
    c = _client(router)
    for _ in range(20):  # would have marked the engine unhealthy twenty times over
        with pytest.raises(openai.BadRequestError) as e:
            r = c.completions.create(model="tiny-llama", prompt=[1, REFUSE, 3], max_tokens=4,
                                     stream=stream)
            if stream:
                list(r)
        assert f"refuses token {REFUSE}" in e.value.body["message"]
        assert e.value.body["code"] == "engine_refused"
    assert get(router + "/health") == (200, '{"healthy_instances":1}')
    ok = c.completions.create(model="tiny-llama", prompt=[1, 2, 3], max_tokens=4)
    assert ok.usage.completion_tokens == 4
    # The refusals are no SLO misses; the one served request is the only new outcome.
    assert _metric(router, "ascendra_slo_requests_total") == slo_before + 1
    assert _metric(router, 'ascendra_requests_total{endpoint="completions",status="400"}') \
        == refused_before + 20


def test_a_body_the_engines_transport_cannot_carry_is_refused_before_it_is_sent(router: str):
    """Integers wider than 64 bits used to reach the engine's stream writer, which failed
    after the client's 200: the client then waited forever."""
    bodies = [{"seed": 2**70}, {"top_k": 2**70}, {"min_tokens": 2**70},
              {"stop_token_ids": [2**70]}, {"max_tokens": 2**70}]
    for extra in bodies:
        data = json.dumps({"model": "tiny-llama", "prompt": [1, 2], "stream": True, **extra})
        req = urllib.request.Request(router + "/v1/completions", data=data.encode(),
                                     headers={"content-type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 400, extra
        err = json.loads(e.value.read())["error"]
        assert err["param"].startswith(next(iter(extra))), err
    assert _metric(router, "ascendra_inflight_requests") == 0


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _router_pid() -> int:
    out = subprocess.run(["pgrep", "-f", f"ascendra.cli router .*--port {ROUTER}"],
                         capture_output=True, text=True).stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def test_a_huge_header_is_refused_with_431_and_the_router_serves_on(router: str):
    with socket.create_connection(("127.0.0.1", ROUTER)) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Big: ")
        with contextlib.suppress(OSError):  # it may close while the rest is still sent
            for _ in range(320):  # 20 MB, as the client sent
                sock.sendall(b"a" * 65536)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"header_too_large" in answer
    assert get(router + "/health") == (200, '{"healthy_instances":1}')


def test_connections_that_never_send_a_whole_head_are_closed(router: str):
    """Slow clients: 200 connections, half silent and half stuck inside their head, used to
    stay open for good. The head timeout is 10 s (router/server.py)."""
    socks = [socket.create_connection(("127.0.0.1", ROUTER)) for _ in range(200)]
    for s in socks[::2]:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: a")
    try:
        assert get(router + "/health") == (200, '{"healthy_instances":1}')  # serves on
        deadline = time.monotonic() + 20
        for s in socks:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            assert s.recv(4096) == b"", "the router closes the connection without an answer"
        assert time.monotonic() < deadline
    finally:
        for s in socks:
            s.close()


def test_a_huge_prompt_is_refused_fast_and_memory_returns(router: str):
    """One 20 MB prompt froze the router for 80 s and left it at 2.7 GB. Now: a body over
    8 MiB is refused from its declared length, and a text that cannot fit the context (2,048
    tokens here) from its length, without tokenizing."""
    pid = _router_pid()
    before = _rss_mb(pid)
    with socket.create_connection(("127.0.0.1", ROUTER)) as sock:  # 20 MB declared
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nContent-Length: 20000000\r\n\r\n{")
        sock.settimeout(5)
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")
    big = json.dumps({"model": "tiny-llama", "prompt": "word " * 1_500_000}).encode()
    t0 = time.monotonic()
    req = urllib.request.Request(router + "/v1/completions", data=big,
                                 headers={"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 400 and b"context_length_exceeded" in e.value.read()
    assert time.monotonic() - t0 < 5
    assert _rss_mb(pid) < before + 64
    assert get(router + "/health") == (200, '{"healthy_instances":1}')
