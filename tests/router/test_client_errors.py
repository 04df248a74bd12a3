"""An engine's refusal is the client's error: the router process in front of the STAND-IN
backend (bench/standin_backend.py, which refuses prompts holding one token id the way vLLM
refuses a request, 400 and an OpenAI error body). The stand-in isolates the router from a real
engine's start-up; the same bodies against real vLLM engines are in
tests/serving/test_faults.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from ascendra.runtime.tiny_model import build_tiny_model

ROOT = Path(__file__).resolve().parents[2]
BACKEND, ROUTER = 18960, 18970
REFUSE = 7  # the token id the stand-in refuses


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _wait_healthy(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _get(url + "/health") == (200, '{"healthy_instances":1}'):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not become healthy")


def _metric(url: str, name: str) -> float:
    _, text = _get(url + "/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name))


@pytest.fixture(scope="module")
def router() -> Iterator[str]:
    model = build_tiny_model()
    procs = [subprocess.Popen([sys.executable, str(ROOT / "bench" / "standin_backend.py"),
                               "--port", str(BACKEND), "--refuse-token", str(REFUSE)],
                              start_new_session=True),
             subprocess.Popen([sys.executable, "-m", "ascendra.cli", "router", "--model-name",
                               "tiny-llama", "--tokenizer", str(model), "--max-model-len",
                               "2048", "--port", str(ROUTER), "--instance",
                               f"http://127.0.0.1:{BACKEND}"], start_new_session=True,
                              stderr=subprocess.DEVNULL)]
    url = f"http://127.0.0.1:{ROUTER}"
    try:
        _wait_healthy(url)
        yield url
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(30)


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
    assert _get(router + "/health") == (200, '{"healthy_instances":1}')
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
