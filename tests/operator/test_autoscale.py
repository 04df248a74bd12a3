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

from ascendra.operator.autoscale import (
    SignalError,
    buckets,
    check_url,
    fetch,
    fetch_mix,
    queries,
    sample_lengths,
    scalar,
)
from ascendra.operator.spec import Planner, SpecError, parse


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


SECRET = "s3cr3t-internal-answer"


class _Handler(http.server.BaseHTTPRequestHandler):
    mode = "ok"

    def do_GET(self) -> None:
        if self.mode == "slow":
            time.sleep(3)
        if self.mode == "500":
            self.send_response(500)
            self.end_headers()
            return
        if self.mode == "histogram" and "le" in self.path:
            self._reply(json.dumps({"status": "success", "data": {"resultType": "vector",
                        "result": [{"metric": {"le": le}, "value": [1, c]} for le, c in
                                   (("+Inf", "100"), ("100", "50"), ("200", "100"))]}}).encode())
            return
        if self.mode == "secret":  # an internal service, not Prometheus, named as one
            self._reply(json.dumps({"status": "ok", "token": SECRET}).encode())
            return
        body = b"<html>not json" if self.mode == "garbage" else json.dumps(
            {"status": "error", "errorType": "bad_data", "error": SECRET}
            if self.mode == "error" else vector("0.5")).encode()
        self._reply(body)

    def _reply(self, body: bytes) -> None:
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
                                              ("error", "BadResponse"),
                                              ("secret", "BadResponse")])
def test_bad_prometheus_raises_signal_error(fake_prometheus, mode, reason):
    url, handler = fake_prometheus
    handler.mode = mode
    with pytest.raises(SignalError) as e:
        fetch(spec_with(url), timeout=1.0)
    assert e.value.reason == reason
    # What the answer said never reaches a message (a condition, an Event) a user can read.
    assert SECRET not in str(e.value)
    if mode == "error":
        assert "an error of type bad_data" in str(e.value)


@pytest.mark.parametrize(("url", "allowed"), [
    ("http://prometheus.default.svc:9090", True),
    ("https://prom-1.default.svc.cluster.local", True),
    ("http://prometheus.other.svc:9090", False),  # another namespace's Service
    ("http://prometheus.monitoring.svc:9090/api", True),  # ... as the installer allows
    ("http://prometheus.monitoring.svc:9091", False),  # not on the allowed port
    ("https://prometheus.monitoring.svc:9090", False),  # nor its scheme
    ("http://127.0.0.1:9090", True),  # an allowed origin without a port: any port
    ("http://user:pw@prometheus.default.svc", False),
    ("http://default.svc", False),
    ("http://169.254.169.254/latest/meta-data", False),
    ("http://prometheus.default.svc.evil.example", False),
    ("http://prometheus.default.svc:x", False),
])
def test_the_prometheus_url_is_an_own_service_or_an_allowed_origin(url, allowed):
    spec = spec_with(url)
    origins = ("http://prometheus.monitoring.svc:9090", "http://127.0.0.1")
    if allowed:
        check_url(spec, origins)
    else:
        with pytest.raises(SignalError) as e:
            check_url(spec, origins)
        assert e.value.reason == "NotAllowed" and "--allow-prometheus-url" in str(e.value)


def test_good_prometheus_and_unreachable(fake_prometheus):
    url, handler = fake_prometheus
    handler.mode = "ok"
    signals, attainment = fetch(spec_with(url))
    assert attainment == 0.5 and signals.offload_fraction == 0.5 and signals.requests == 0.5
    with pytest.raises(SignalError) as e:
        fetch(spec_with("http://127.0.0.1:1"), timeout=1.0)
    assert e.value.reason == "Unreachable"


def test_histogram_quantile_samples():
    cumulative = [(100.0, 50.0), (200.0, 100.0), (float("inf"), 100.0)]
    assert sample_lengths(cumulative, n=4) == (25, 75, 125, 175)
    # Mass above the last finite bound sits at that bound; an empty histogram samples nothing.
    assert sample_lengths([(100.0, 10.0), (float("inf"), 20.0)], n=2) == (50, 100)
    assert sample_lengths([(100.0, 0.0), (float("inf"), 0.0)]) == ()
    for bad in ({"status": "error"}, {"status": "success", "data": {"result": [{"metric": {}}]}}):
        with pytest.raises(SignalError):
            buckets(bad)


def test_the_planner_reads_the_mix_from_the_routers_histograms(fake_prometheus):
    url, handler = fake_prometheus
    handler.mode = "histogram"
    b = yaml.safe_load(EXAMPLE.read_text())
    b["spec"]["autoscaling"] = {"enabled": True, "prometheusUrl": url, "intervalSeconds": 30,
                                "planner": {"model": "llama-3.1-8b", "gpu": "h200"}}
    spec = parse(b)
    assert spec.autoscaling.planner == Planner("llama-3.1-8b", "h200", 451_840)
    mix = fetch_mix(spec)
    assert mix is not None and not mix.paired
    assert mix.rate == 0.5 / 60  # increase() over the 60 s window, per second
    assert min(mix.prompt_lens) >= 1 and max(mix.prompt_lens) <= 200


@pytest.mark.parametrize(("planner", "message"), [
    ({"model": "gpt-17"}, "not a model shape"), ({"model": "llama-3.1-8b", "gpu": "tpu"},
                                                 "not one of")])
def test_a_planner_for_an_unknown_model_or_gpu_is_refused(planner, message):
    b = yaml.safe_load(EXAMPLE.read_text())
    b["spec"]["autoscaling"] = {"enabled": True, "prometheusUrl": "http://p", "planner": planner}
    with pytest.raises(SpecError, match=message):
        parse(b)


def test_the_operator_plans_from_prometheus(fake_prometheus):
    from ascendra.operator.handlers import _plan

    url, handler = fake_prometheus
    handler.mode = "histogram"
    b = yaml.safe_load(EXAMPLE.read_text())
    b["spec"]["autoscaling"] = {"enabled": True, "prometheusUrl": url,
                                "planner": {"model": "llama-3.1-8b"}}
    spec = parse(b)
    plan = _plan(spec)
    assert plan is not None and sorted(plan.predicted) == list(range(spec.hp_min,
                                                                      spec.hp_max + 1))
