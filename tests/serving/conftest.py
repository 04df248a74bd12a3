"""Fixtures that run the real stack: vLLM (CPU build) engines, runtime agents and the router,
all started by the project's own ``ascendra up``; no stand-ins for the engine."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

ROUTER_PORT = 18000
BASE_PORT = 18100
SEATS = 4  # small seat limits make queueing (and so offload and priority) easy to provoke


@dataclass
class Stack:
    url: str
    lp_engine: str
    lp_agent: str
    hp_engine: str
    hp_agent: str
    proc: subprocess.Popen[str]
    model_dir: Path

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, **kw)

    def get(self, path: str) -> object:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())


def read_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
    """Lines of ``proc``'s stdout up to the one holding ``marker`` (a reader thread, so that
    buffered lines are never missed)."""
    lines: queue.Queue[str | None] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout

    def pump() -> None:
        for line in stdout:
            lines.put(line.rstrip())
            if marker in line:
                break
        else:
            lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        if line is None:
            raise AssertionError(f"ascendra up exited ({proc.wait()}): {seen}")
        seen.append(line)
        if marker in line:
            return seen
    raise AssertionError(f"no {marker!r} within {timeout} s: {seen}")


def spawn(*args: str) -> subprocess.Popen[bytes]:
    """An ``ascendra`` subcommand in its own process group (kill the group to kill it all)."""
    return subprocess.Popen([sys.executable, "-m", "ascendra.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True,
                            env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1",
                                 "VLLM_CPU_OMP_THREADS_BIND": "0"})


def spawn_router(stack: Stack, port: int, instances: list[str]) -> subprocess.Popen[bytes]:
    args = ["router", "--model-name", "tiny-llama", "--tokenizer", str(stack.model_dir),
            "--max-model-len", "2048", "--port", str(port)]
    for spec in instances:
        args += ["--instance", spec]
    return spawn(*args)


def wait_healthy(url: str, want: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if json.loads(r.read()).get("healthy_instances", 0) >= want:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not healthy with {want} instances after {timeout} s")


def engine_metric(engine_url: str, name: str, **labels: str) -> float:
    with urllib.request.urlopen(engine_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    logs = tmp_path_factory.mktemp("stack-logs")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ascendra.cli", "up", "--port", str(ROUTER_PORT),
         "--base-port", str(BASE_PORT), "--max-num-seqs", str(SEATS), "--log-dir", str(logs)],
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        lines = read_until(proc, "ascendra: ready", timeout=600)
    except BaseException:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(60)
        for f in sorted(logs.glob("*.log")):
            print(f"==== {f.name}\n{f.read_text()[-3000:]}")
        raise
    model = next(line.split("model ", 1)[1] for line in lines if "starting" in line)
    at = "http://127.0.0.1:{}".format
    s = Stack(url=at(ROUTER_PORT), lp_engine=at(BASE_PORT), lp_agent=at(BASE_PORT + 1),
              hp_engine=at(BASE_PORT + 2), hp_agent=at(BASE_PORT + 3), proc=proc,
              model_dir=Path(model))
    yield s
    # `ascendra up` must stop every child on Ctrl-C and exit 0.
    os.killpg(proc.pid, signal.SIGINT)
    rest = proc.communicate(timeout=90)[0]
    assert proc.returncode == 0, rest
    assert "ascendra: stopped" in rest
    for port in (ROUTER_PORT, BASE_PORT, BASE_PORT + 1, BASE_PORT + 2, BASE_PORT + 3):
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
