"""One router process over the STAND-IN backend (bench/standin_backend.py), for the router's
tests that need its HTTP surface and no real engine."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ascendra.runtime.tiny_model import build_tiny_model

ROOT = Path(__file__).resolve().parents[2]


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@contextlib.contextmanager
def standin_router(backend: int, router: int, *backend_args: str,
                   env: dict[str, str] | None = None) -> Iterator[str]:
    model = build_tiny_model()
    procs = [subprocess.Popen([sys.executable, str(ROOT / "bench" / "standin_backend.py"),
                               "--port", str(backend), *backend_args], start_new_session=True),
             subprocess.Popen([sys.executable, "-m", "ascendra.cli", "router", "--model-name",
                               "tiny-llama", "--tokenizer", str(model), "--max-model-len",
                               "2048", "--port", str(router), "--instance",
                               f"http://127.0.0.1:{backend}"], start_new_session=True,
                              stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})]
    url = f"http://127.0.0.1:{router}"
    try:
        deadline = time.monotonic() + 60
        while not healthy(url):
            assert time.monotonic() < deadline, f"{url} did not become healthy"
            time.sleep(0.2)
        yield url
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(30)


def healthy(url: str) -> bool:
    try:
        return get(url + "/health") == (200, '{"healthy_instances":1}')
    except OSError:
        return False
