"""Helpers for the serving tests: the stack handle, child processes, engine metrics."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import openai

from ascendra.runtime.procs import die_with_parent

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
                            start_new_session=True, preexec_fn=die_with_parent,
                            env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1",
                                 "VLLM_CPU_OMP_THREADS_BIND": "0"})


def spawn_router(stack: Stack, port: int, instances: list[str],
                 *extra: str) -> subprocess.Popen[bytes]:
    args = ["router", "--model-name", "tiny-llama", "--tokenizer", str(stack.model_dir),
            "--max-model-len", "2048", "--port", str(port), *extra]
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
        if line.startswith((name + "{", name + " ")) and \
                all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _parents() -> dict[int, int]:
    """Every process's parent (from /proc, Linux)."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            out[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    return out


def _listener(port: int) -> int:
    """The pid of the process listening on 127.0.0.1:``port``: of those holding the socket
    (a forked child may hold it too), the one whose parent does not."""
    want = f"0100007F:{port:04X}"
    inodes = {line.split()[9] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
              if line.split()[1] == want and line.split()[3] == "0A"}  # 0A: LISTEN
    holders = set()
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        with contextlib.suppress(OSError):
            if os.readlink(fd).removeprefix("socket:[").rstrip("]") in inodes:
                holders.add(int(fd.parts[2]))
    parents = _parents()
    top = [pid for pid in holders if parents.get(pid) not in holders]
    assert len(top) == 1, f"{len(top)} processes listen on 127.0.0.1:{port}"
    return top[0]


def descendants(pid: int) -> list[int]:
    """Every process under ``pid``, children before their own children."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@contextlib.contextmanager
def core_frozen(engine_url: str) -> Iterator[None]:
    """The engine's core stopped (SIGSTOP of every process under its API server) while the
    API server and its /metrics keep answering: the requests on it keep their seats and make
    no progress, however fast this machine would have finished them. Thawed on exit, whatever
    happened (an engine left frozen would fail every later test)."""
    pids = descendants(_listener(urlsplit(engine_url).port or 80))
    assert pids, f"{engine_url} has no engine core process"
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def prompt_tokens_total(engine_url: str) -> float:
    """Prompt tokens the engine has taken in (cached ones included): a replay's prompt is the
    original prompt plus every token the client had when the stream moved."""
    return engine_metric(engine_url, "vllm:prompt_tokens_total")


def assert_resumed_exactly(engine_url: str, prompt: list[int], reference: list[int],
                           moved: list[int], replayed_prompt: int) -> None:
    """A stream moved by token replay to ``engine_url`` (whose replay prompt was
    ``replayed_prompt`` tokens long) lost and doubled nothing: up to the move it is the
    unmoved ``reference``, and after it exactly what that engine generates, greedy, from the
    prompt plus those tokens.

    Not "equal to the unmoved stream throughout": the replayed context is one prefill where
    the unmoved stream computed it token by token, and on vLLM's CPU build the two round
    differently enough to flip a near-tie of the tiny random model's logits now and then
    (moved and unmoved streams parted at token 173 in one CI run and 317 in a run here)."""
    at = replayed_prompt - len(prompt)
    assert 0 < at < len(moved), (replayed_prompt, len(prompt), len(moved))
    assert moved[:at] == reference[:at]
    body = {"model": "tiny-llama", "prompt": prompt + moved[:at], "max_tokens": len(moved) - at,
            "temperature": 0, "ignore_eos": True, "return_token_ids": True}
    request = urllib.request.Request(engine_url + "/v1/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as r:
        continuation = json.loads(r.read())["choices"][0]["token_ids"]
    assert moved[at:] == continuation, f"moved at token {at}"
