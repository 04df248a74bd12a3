"""Helpers for the end-to-end suite: kubectl, polling, the operator as a child process."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class Kubectl:
    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig

    def __call__(self, *args: str, input: str | None = None, check: bool = True
                 ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["kubectl", "--kubeconfig", str(self.kubeconfig), *args],
                           input=input, capture_output=True, text=True, timeout=120)
        if check and r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {r.stderr}")
        return r

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json").stdout)

    def apply(self, obj: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
        return self("apply", "-f", "-", input=json.dumps(obj), check=check)


def eventually(fn: Callable[[], Any], timeout: float = 60, interval: float = 0.5,
               what: str = "condition") -> Any:
    """Poll ``fn`` until it returns something truthy (returned) or time runs out."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except AssertionError as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"{what} not reached in {timeout} s; last: {last}")


class Operator:
    """``ascendra operator`` as a child process (so tests can kill and restart it)."""

    def __init__(self, kubeconfig: Path, log: Path) -> None:
        self.kubeconfig, self.log = kubeconfig, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        # The e2e Prometheus (and the unreachable one a test names) run on this machine.
        self.proc = subprocess.Popen([sys.executable, "-m", "ascendra.cli", "operator",
                                      "--allow-prometheus-url", "http://127.0.0.1"],
                                     env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


RESTRICTED = ("pod-security.kubernetes.io/enforce=restricted",
              "pod-security.kubernetes.io/enforce-version=latest")


def restricted_namespace(kubectl: Kubectl, name: str) -> None:
    """A namespace whose pods the API server admits only if they meet the restricted Pod
    Security Standard (as a platform team sets it for tenants)."""
    kubectl("create", "namespace", name, check=False)
    kubectl("label", "namespace", name, "--overwrite", *RESTRICTED)


def build_images(names: list[str], out: Path) -> dict[str, Path]:
    """The project's images (images/build_images.py) as OCI archives in ``out``: {name: path}."""
    sys.path.insert(0, str(ROOT / "images"))
    import build_images as images

    return {name: images.build_image(name, out) for name in names}


class PressureMetrics(http.server.BaseHTTPRequestHandler):
    """STAND-IN router metrics: 10 finished requests/s, 30% of them offloaded, HP queue 3."""

    started = time.monotonic()

    def do_GET(self) -> None:
        t = time.monotonic() - self.started
        body = (f'ascendra_slo_requests_total{{outcome="met"}} {10 * t:.1f}\n'
                f"ascendra_offloads_total {3 * t:.1f}\n"
                'ascendra_instance_waiting_requests{instance="x",role="hp"} 3\n'
                'ascendra_instance_step_seconds{instance="x",role="hp"} 0.05\n'
                "ascendra_lp_queue_min_slack_seconds 0.5\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@contextlib.contextmanager
def pressure_prometheus(workdir: Path, address: str, port: int, namespace: str,
                        service: str) -> Iterator[str]:
    """Real Prometheus (Debian's) on ``address:port`` scraping :class:`PressureMetrics` as the
    routers of ``service`` in ``namespace``; yields its URL."""
    exporter = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PressureMetrics)
    threading.Thread(target=exporter.serve_forever, daemon=True).start()
    (workdir / "prom.yaml").write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "ascendra-router", "static_configs": [{
            "targets": [f"127.0.0.1:{exporter.server_address[1]}"],
            "labels": {"namespace": namespace, "ascendra_io_service": service}}]}]}))
    prom = subprocess.Popen([shutil.which("prometheus") or "prometheus",
                             f"--config.file={workdir / 'prom.yaml'}",
                             f"--storage.tsdb.path={workdir / 'data'}",
                             f"--web.listen-address={address}:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        yield f"http://{address}:{port}"
    finally:
        os.killpg(prom.pid, signal.SIGTERM)
        prom.wait(30)
        exporter.shutdown()
