"""Reading SLO signals from Prometheus: what a real answer looks like, and every way it can go
wrong (unreachable, slow, HTTP errors, garbage) ending in a SignalError, never a crash."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator

import pytest
import yaml
from test_operator_units import EXAMPLE

from ascendra.operator.autoscale import SignalError, fetch, queries, scalar
from ascendra.operator.spec import parse


def spec_with(url: str):  # type: ignore[no-untyped-def]
    b = yaml.safe_load(EXAMPLE.read_text())
    b["metadata"]["uid"] = "u"
    b["spec"]["autoscaling"] = {"enabled": True, "prometheusUrl": url, "intervalSeconds": 30,
                                "cooldownSeconds": 120}
    return parse(b)


def vector(value: str) -> dict:
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {}, "value": [1700000000, value]}]}}


def test_scalar_parsing():
    assert scalar(vector("0.25")) == 0.25
    assert scalar(vector("NaN")) is None
    assert scalar(vector("+Inf")) == float("inf")
    assert scalar({"status": "success", "data": {"resultType": "vector", "result": []}}) is None
    for bad in ({"status": "error", "error": "bad query"}, [], {"status": "success"},
                {"status": "success", "data": {"resultType": "matrix", "result": []}},
                vector("x")):
        with pytest.raises(SignalError):
            scalar(bad)


def test_queries_select_the_service():
    q = queries(spec_with("http://p"))
    assert set(q) == {"requests", "attainment", "offload_fraction", "hp_queue", "hp_step_time",
                      "lp_min_slack"}
    assert all('ascendra_io_service="llama-8b"' in v and 'namespace="default"' in v
               for v in q.values())


class _Handler(http.server.BaseHTTPRequestHandler):
    mode = "ok"

    def do_GET(self) -> None:
        if self.mode == "slow":
            time.sleep(3)
        if self.mode == "500":
            self.send_response(500)
            self.end_headers()
            return
        body = b"<html>not json" if self.mode == "garbage" else json.dumps(
            {"status": "error", "error": "x"} if self.mode == "error" else vector("0.5")).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def fake_prometheus() -> Iterator[tuple[str, type[_Handler]]]:
    """A local HTTP server standing in for Prometheus's query API, to provoke each failure."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Handler
    server.shutdown()


@pytest.mark.parametrize(("mode", "reason"), [("slow", "Timeout"), ("500", "BadResponse"),
                                              ("garbage", "BadResponse"),
                                              ("error", "BadResponse")])
def test_bad_prometheus_raises_signal_error(fake_prometheus, mode, reason):
    url, handler = fake_prometheus
    handler.mode = mode
    with pytest.raises(SignalError) as e:
        fetch(spec_with(url), timeout=1.0)
    assert e.value.reason == reason


def test_good_prometheus_and_unreachable(fake_prometheus):
    url, handler = fake_prometheus
    handler.mode = "ok"
    signals, attainment = fetch(spec_with(url))
    assert attainment == 0.5 and signals.offload_fraction == 0.5 and signals.requests == 0.5
    with pytest.raises(SignalError) as e:
        fetch(spec_with("http://127.0.0.1:1"), timeout=1.0)
    assert e.value.reason == "Unreachable"
