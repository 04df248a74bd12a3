"""Live LP:HP resizing end to end: real Prometheus (Debian package) scraping a STAND-IN that
publishes the router's metric names with sustained HP pressure, the operator reading Prometheus
and flipping pod labels, and a real router discovering those pods through the API server.

The stand-in replaces routers and engines only because kwok pods run nothing; the operator,
Prometheus, the API server and the router's discovery are the real ones.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from cluster import free_ports
from e2e_support import Kubectl, Operator, eventually, pressure_prometheus
from test_operator_e2e import manifest, runtime_pods

from ascendra.runtime.tiny_model import build_tiny_model

COOLDOWN, INTERVAL = 20, 5


@pytest.fixture
def prometheus(namespace: str, tmp_path: Path) -> Iterator[str]:
    # Not a fixed port: two suites on one machine took each other's.
    with pressure_prometheus(tmp_path, "127.0.0.1", free_ports(1), namespace,
                             "llama-8b") as url:
        yield url


@pytest.fixture
def router(namespace: str, kubeconfig: Path, tmp_path: Path) -> Iterator[str]:
    """A real router discovering the service's runtime pods (and their roles) from the API."""
    model = build_tiny_model()
    cfg = {"model_name": "tiny-llama", "tokenizer": str(model), "max_model_len": 2048,
           "discovery": {"namespace": namespace, "selector": "ascendra.io/service=llama-8b,"
                         "app.kubernetes.io/component=runtime", "engine_port": 8000,
                         "agent_port": 8001, "interval": 1.0, "kubeconfig": str(kubeconfig)}}
    (tmp_path / "router.json").write_text(json.dumps(cfg))
    port = free_ports(1)
    proc = subprocess.Popen([sys.executable, "-m", "ascendra.cli", "router", "--config",
                             str(tmp_path / "router.json"), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def _router_hp(url: str) -> int:
    with urllib.request.urlopen(url + "/ascendra/instances", timeout=2) as r:
        return sum(i["role"] == "hp" for i in json.loads(r.read()))


def _resizes(kubectl: Kubectl, ns: str) -> list[dict]:
    items = kubectl.json("get", "events", "-n", ns)["items"]
    return sorted((e for e in items if e["reason"] == "SplitResized"),
                  key=lambda e: e.get("firstTimestamp") or e.get("eventTime") or "")


def test_hp_pressure_resizes_once_per_cooldown_and_the_router_follows(
        kubectl: Kubectl, operator: Operator, namespace: str, prometheus: str, router: str):
    kubectl.apply(manifest(namespace, pool={"instances": 5, "hp": {"min": 1, "max": 3}},
                           autoscaling={"enabled": True, "prometheusUrl": prometheus,
                                        "intervalSeconds": INTERVAL,
                                        "cooldownSeconds": COOLDOWN}))
    eventually(lambda: len(runtime_pods(kubectl, namespace)) == 5, timeout=60, what="5 pods")
    uids = {p["metadata"]["uid"] for p in runtime_pods(kubectl, namespace)}
    lags = []
    for hp in (2, 3):
        def flipped(hp: int = hp) -> float | None:
            roles = [p["metadata"]["labels"]["ascendra.io/role"]
                     for p in runtime_pods(kubectl, namespace)]
            return time.monotonic() if roles.count("hp") == hp else None

        at = eventually(flipped, timeout=COOLDOWN + 60, interval=0.2,
                        what=f"the operator flipping a pod to HP (HP={hp})")
        seen = eventually(lambda hp=hp: time.monotonic() if _router_hp(router) >= hp else None,
                          timeout=15, interval=0.2, what=f"the router seeing {hp} HP")
        lags.append(seen - at)
    # At the maximum it holds: wait out another cooldown and check nothing else moved.
    time.sleep(COOLDOWN + INTERVAL)
    svc = kubectl.json("get", "ascendraservice", "llama-8b", "-n", namespace)
    assert svc["status"]["split"] == {"lp": 2, "hp": 3}
    assert next(c for c in svc["status"]["conditions"]
                if c["type"] == "SloSignal")["status"] == "True"
    resizes = [r for r in _resizes(kubectl, namespace)]
    assert [r["message"].split(":")[0] for r in resizes] == ["HP 1 -> 2", "HP 2 -> 3"]
    times = [datetime.fromisoformat(r["firstTimestamp"].replace("Z", "+00:00")) for r in resizes]
    gap = (times[1] - times[0]).total_seconds()
    assert COOLDOWN <= gap <= COOLDOWN + 2 * INTERVAL + 3, gap  # one move per cooldown
    assert all(lag <= 5.0 for lag in lags), lags  # the router follows within 5 s
    assert {p["metadata"]["uid"] for p in runtime_pods(kubectl, namespace)} == uids


def test_unreachable_prometheus_holds_the_split_and_says_so(kubectl: Kubectl,
                                                             operator: Operator,
                                                             namespace: str):
    kubectl.apply(manifest(namespace, pool={"instances": 3, "hp": {"min": 1, "max": 2}},
                           autoscaling={"enabled": True, "prometheusUrl": "http://127.0.0.1:1",
                                        "intervalSeconds": 5, "cooldownSeconds": 5}))

    def stale() -> dict | None:
        s = kubectl.json("get", "ascendraservice", "llama-8b", "-n", namespace)
        cond = next((c for c in (s.get("status") or {}).get("conditions", [])
                     if c["type"] == "SloSignal"), None)
        return s if cond and cond["status"] == "False" else None

    s = eventually(stale, timeout=60, what="SloSignal=False")
    cond = next(c for c in s["status"]["conditions"] if c["type"] == "SloSignal")
    assert cond["reason"] == "Unreachable" and "split held" in cond["message"]
    time.sleep(12)
    s = kubectl.json("get", "ascendraservice", "llama-8b", "-n", namespace)
    assert s["status"]["split"] == {"lp": 2, "hp": 1} and "lastResize" not in s["status"]
    assert "SloSignalStale" in {e["reason"] for e in kubectl.json(
        "get", "events", "-n", namespace)["items"]}
