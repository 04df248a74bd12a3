"""Helpers for the end-to-end suite: kubectl, polling, the operator as a child process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
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
