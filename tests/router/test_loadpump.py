"""bench/loadpump, the router-overhead benchmark's compiled harness: its stand-in backend sends
what bench/standin_backend.py sends (in events of --stream-interval tokens), and its client
reports each planned request's TTFT, tokens and errors. Built with the Go toolchain, as
bench/router_overhead.py builds it."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from router_overhead import _wait, loadpump  # noqa: E402

PORT = 18981


@pytest.fixture(scope="module")
def backend() -> Iterator[tuple[Path, str]]:
    exe = loadpump()
    p = subprocess.Popen([str(exe), "backend", "-port", str(PORT), "-stream-interval", "3"],
                         stderr=subprocess.DEVNULL)
    try:
        _wait(f"http://127.0.0.1:{PORT}/health", 30)
        yield exe, f"http://127.0.0.1:{PORT}"
    finally:
        p.terminate()
        p.wait()


def test_the_backend_streams_events_of_the_interval(backend: tuple[Path, str]):
    _, url = backend
    req = urllib.request.Request(url + "/v1/completions", method="POST", data=json.dumps(
        {"model": "standin", "prompt": "x", "max_tokens": 7}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        events = [line[6:] for line in r.read().decode().splitlines()
                  if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    choices = [json.loads(e)["choices"][0] for e in events[:-1]]
    assert [len(c["token_ids"]) for c in choices] == [3, 3, 1]
    assert [c["finish_reason"] for c in choices] == [None, None, "length"]
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        assert "vllm:generation_tokens_total" in r.read().decode()


def test_the_client_reports_every_planned_request(backend: tuple[Path, str], tmp_path: Path):
    exe, url = backend
    plan = tmp_path / "plan.jsonl"
    plan.write_text("".join(json.dumps({"at": 0.01 * i, "headers": {"X-Test": "1"}, "body": {
        "model": "standin", "prompt": "x", "max_tokens": n}}) + "\n"
        for i, n in enumerate((5, 16))))
    done = subprocess.run([str(exe), "client", "-url", url + "/v1/completions", "-plan",
                           str(plan)], capture_output=True, check=True, timeout=30)
    out = json.loads(done.stdout)
    assert [o["tokens"] for o in out["outcomes"]] == [5, 16]
    assert all(o["finished"] and o["status"] == 200 and 0 < o["ttft"] < 5
               for o in out["outcomes"])
    # A refused connection is each request's error, not a hang or a crash.
    refused = subprocess.run([str(exe), "client", "-url", "http://127.0.0.1:1/v1/completions",
                              "-plan", str(plan)], capture_output=True, check=True, timeout=30)
    assert all("refused" in o["error"] and not o["finished"]
               for o in json.loads(refused.stdout)["outcomes"])


def test_the_relay_passes_streams_and_errors_through_unchanged(backend: tuple[Path, str],
                                                              tmp_path: Path):
    """The relay, the floor under any router's cost, forwards the request and copies back the
    answer byte for byte."""
    exe, url = backend
    relay = subprocess.Popen([str(exe), "relay", "-port", str(PORT + 1), "-upstream", url],
                             stderr=subprocess.DEVNULL)
    try:
        _wait(f"http://127.0.0.1:{PORT + 1}/health", 30)
        answers = []
        for base in (url, f"http://127.0.0.1:{PORT + 1}"):
            req = urllib.request.Request(base + "/v1/completions", method="POST", data=json.dumps(
                {"model": "standin", "prompt": "x", "max_tokens": 7}).encode(),
                headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                answers.append((r.status, r.headers["Content-Type"], r.read()))
        assert answers[0] == answers[1]
        bad = urllib.request.Request(f"http://127.0.0.1:{PORT + 1}/v1/completions",
                                     method="POST", data=b"{", headers={})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(bad, timeout=10)
        assert e.value.code == 400
    finally:
        relay.terminate()
        relay.wait()
