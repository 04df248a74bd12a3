"""Real Prometheus and Alertmanager (Debian packages) on 127.0.0.1 watching the real router:
made to miss its TTFT target, the fast-burn alert reaches Alertmanager; when the load stops, it
resolves. The rules are the shipped ones with time compressed 60× (an hour is a minute)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from serving_support import ROUTER_PORT, Stack

from ascendra.operator.monitoring import rule_groups

PROM_PORT, AM_PORT = 19090, 19093
ALERT = "AscendraTTFTErrorBudgetBurnFast"


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def _wait(fn, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except OSError as e:
            last = e
        time.sleep(1)
    raise AssertionError(f"{what} not reached in {timeout} s (last: {last})")


def _firing() -> list[dict]:
    alerts = _get(f"http://127.0.0.1:{AM_PORT}/api/v2/alerts?active=true")
    return [a for a in alerts if a["labels"].get("alertname") == ALERT  # type: ignore[union-attr]
            and a["labels"].get("ascendra_io_service") == "tiny"]


def test_burn_rate_alert_fires_through_alertmanager_and_resolves(stack: Stack, tmp_path: Path):
    # A 99% objective: the compressed windows then need only a fraction of misses to page.
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(
        {"groups": rule_groups(0.99, scale=1 / 60)}, sort_keys=False))
    (tmp_path / "am.yaml").write_text(yaml.safe_dump({
        "route": {"receiver": "null", "group_wait": "1s", "group_interval": "1s",
                  "repeat_interval": "1h"},
        "receivers": [{"name": "null"}]}))
    (tmp_path / "prom.yaml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yaml")],
        "alerting": {"alertmanagers": [{"static_configs": [
            {"targets": [f"127.0.0.1:{AM_PORT}"]}]}]},
        "scrape_configs": [{"job_name": "ascendra-router", "static_configs": [{
            "targets": [f"127.0.0.1:{ROUTER_PORT}"],
            "labels": {"namespace": "local", "ascendra_io_service": "tiny"}}]}]}))
    am = subprocess.Popen([shutil.which("prometheus-alertmanager") or "prometheus-alertmanager",
                           f"--config.file={tmp_path / 'am.yaml'}",
                           f"--storage.path={tmp_path / 'am-data'}",
                           f"--web.listen-address=127.0.0.1:{AM_PORT}",
                           "--cluster.listen-address="],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    prom = subprocess.Popen([shutil.which("prometheus") or "prometheus",
                             f"--config.file={tmp_path / 'prom.yaml'}",
                             f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                             f"--web.listen-address=127.0.0.1:{PROM_PORT}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        def scraping() -> bool:
            targets = _get(f"http://127.0.0.1:{PROM_PORT}/api/v1/targets")["data"][  # type: ignore[index]
                "activeTargets"]
            return bool(targets) and targets[0]["health"] == "up"

        _wait(scraping, 60, "Prometheus scraping the router")
        client = stack.client(default_headers={"X-Ascendra-TTFT-SLO": "1ms"})

        def missing(_: int) -> None:  # a 1 ms TTFT target: every request misses
            client.completions.create(model="tiny-llama", prompt="late", max_tokens=4)

        stop = time.monotonic() + 60
        fired = None
        with ThreadPoolExecutor(4) as pool:
            while time.monotonic() < stop and not fired:
                list(pool.map(missing, range(8)))
                fired = _firing()
        fired = fired or _wait(_firing, 30, f"{ALERT} at Alertmanager")
        assert fired[0]["labels"]["severity"] == "page"
        assert fired[0]["annotations"]["summary"].startswith("local/tiny is burning")
        # Load stops: the short window empties and the alert resolves.
        _wait(lambda: not _firing(), 120, f"{ALERT} resolved")
        rules = _get(f"http://127.0.0.1:{PROM_PORT}/api/v1/alerts")["data"]["alerts"]  # type: ignore[index]
        assert not [a for a in rules if a["labels"]["alertname"] == ALERT
                    and a["state"] == "firing"]
    finally:
        for p in (prom, am):
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(30)
