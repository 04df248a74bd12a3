"""``ascendra up``: the embedded local stack on 127.0.0.1.

Builds (once, cached) the tiny model unless a model path is given, starts one ``ascendra
runtime`` per instance (each running vLLM in its role) and the router, waits until the router
sees every instance ready, prints the endpoint and a ready line, and on Ctrl-C or SIGTERM stops
every child. If any child dies, the stack stops with an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ascendra.core.request import Slo, TbtKind
from ascendra.core.systems import system as registry_system
from ascendra.errors import AscendraError
from ascendra.runtime.procs import die_with_parent
from ascendra.runtime.tiny_model import build_tiny_model


@dataclass
class StackConfig:
    model: Path | None = None  # None: the project's tiny random-weight Llama
    instances: int = 2
    hp: int = 0  # of the instances, HP ones (ascendra only)
    system: str = "ascendra"  # a deployable registry system (ascendra, vllm, vllm-lb, ...)
    port: int = 8000
    base_port: int = 8100
    max_model_len: int = 2048
    # vLLM's CPU build (the default here): its KV space and thread binding are set per engine
    # and its defaults stated (``ascendra runtime --cpu``). Off for GPU engines, which keep
    # vLLM's GPU defaults.
    cpu: bool = True
    kv_cache_gib: float = 1.0  # per CPU engine
    ttft: float = 1.0
    tbt: float = 0.15
    tbt_kind: str = "mean"
    startup_timeout: float = 600.0
    engine_args: list[str] = field(default_factory=list)
    router_args: list[str] = field(default_factory=list)
    log_dir: Path | None = None
    # False: engines only, ready when each answers /health; routers come and go with
    # ``LocalStack.router`` (a benchmark puts several systems' routers in turn before engines
    # that take minutes to start on a GPU).
    router: bool = True

    @property
    def roles(self) -> list[str]:
        if self.system == "ascendra":
            return ["lp"] * (self.instances - self.hp) + ["hp"] * self.hp
        return ["mixed"] * self.instances


def _model_name(model: Path) -> str:
    marker = model / "ascendra-tiny-model.json"
    return "tiny-llama" if marker.is_file() else model.name


def _max_len(model: Path, requested: int) -> int:
    try:
        cfg = json.loads((model / "config.json").read_text())
    except (OSError, ValueError):
        raise AscendraError(f"{model} has no readable config.json") from None
    return min(requested, int(cfg.get("max_position_embeddings", requested)))


class LocalStack:
    """The processes of a local stack; a context manager that always stops them."""

    def __init__(self, cfg: StackConfig) -> None:
        if cfg.instances < 1:
            raise AscendraError("the stack needs at least one instance")
        if not 0 <= cfg.hp < cfg.instances:
            raise AscendraError(f"--hp must be within 0..{cfg.instances - 1} (at least one "
                                f"instance stays LP), got {cfg.hp}")
        if cfg.hp and cfg.system != "ascendra":
            raise AscendraError(f"--hp applies to ascendra only; {cfg.system} has no HP")
        self.cfg = cfg
        self.model = cfg.model or build_tiny_model()
        if not (self.model / "config.json").is_file():
            raise AscendraError(f"model directory {self.model} has no config.json")
        self.name = _model_name(self.model)
        self.max_model_len = _max_len(self.model, cfg.max_model_len)
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.url = f"http://127.0.0.1:{cfg.port}"
        self.engine_urls: list[str] = []
        self.cancelled: Callable[[], bool] = lambda: False

    def _spawn(self, name: str, argv: list[str],
               env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        out = None
        if self.cfg.log_dir is not None:
            self.cfg.log_dir.mkdir(parents=True, exist_ok=True)
            out = (self.cfg.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=out,
                                stderr=subprocess.STDOUT if out else None,
                                start_new_session=True, preexec_fn=die_with_parent)
        self.procs.append((name, proc))
        return proc

    def _ports(self, i: int) -> tuple[int, int]:
        """Instance ``i``'s engine and agent ports."""
        return self.cfg.base_port + 2 * i, self.cfg.base_port + 2 * i + 1

    def start(self) -> None:
        cfg = self.cfg
        for i, role in enumerate(cfg.roles):
            self._spawn(f"runtime-{i}-{role}", *self.runtime_command(i, role))
            self.engine_urls.append(f"http://127.0.0.1:{self._ports(i)[0]}")
        if cfg.router:
            self._spawn("router", self.router_command(cfg.system, cfg.port, cfg.router_args))

    def router_command(self, system: str, port: int, extra: list[str],
                       slo: Slo | None = None) -> list[str]:
        """The ``ascendra router`` command for ``system`` over this stack's instances, with
        ``slo`` (default: the stack's) for requests that state none."""
        cfg = self.cfg
        slo = slo or Slo(cfg.ttft, cfg.tbt, TbtKind(cfg.tbt_kind))
        instances = []
        for i in range(len(cfg.roles)):
            port_i, agent = self._ports(i)
            instances += ["--instance", f"http://127.0.0.1:{port_i},agent=http://127.0.0.1:{agent}"]
        return [sys.executable, "-m", "ascendra.cli", "router", "--model-name", self.name,
                "--tokenizer", str(self.model), "--max-model-len", str(self.max_model_len),
                "--port", str(port), "--ttft", f"{slo.ttft:g}", "--tbt", f"{slo.tbt:g}",
                "--tbt-kind", slo.tbt_kind.value, "--system", system, *instances, *extra]

    @contextlib.contextmanager
    def router(self, system: str, port: int, extra: list[str] | None = None,
               slo: Slo | None = None) -> Iterator[str]:
        """A router for ``system`` over the running engines for the body of the ``with``;
        yields its URL. The system must run the engines this stack started (a priority-
        scheduling system's router sends priorities a FCFS engine refuses)."""
        if registry_system(system).engine.vllm_args() != \
                registry_system(self.cfg.system).engine.vllm_args():
            raise AscendraError(f"{system} needs other engines than {self.cfg.system}'s")
        name = f"router-{system}-{port}"
        proc = self._spawn(name, self.router_command(system, port, extra or [], slo))
        url = f"http://127.0.0.1:{port}"
        try:
            self._wait(lambda: self._router_ready(url), f"the {system} router")
            yield url
        finally:
            self.procs.remove((name, proc))
            _terminate([proc])

    def runtime_command(self, i: int, role: str) -> tuple[list[str], dict[str, str]]:
        """The ``ascendra runtime`` command and environment of instance ``i``."""
        cfg = self.cfg
        port, agent = self._ports(i)
        env = {"VLLM_CPU_KVCACHE_SPACE": f"{cfg.kv_cache_gib:g}",
               "VLLM_CPU_OMP_THREADS_BIND": str(i % (os.cpu_count() or 1))} if cfg.cpu else {}
        return [sys.executable, "-m", "ascendra.cli", "runtime", "--model", str(self.model),
                "--served-model-name", self.name, "--port", str(port), "--agent-port",
                str(agent), "--role", role, "--system", cfg.system,
                *(["--cpu"] if cfg.cpu else []), "--max-model-len", str(self.max_model_len),
                "--", *cfg.engine_args], env

    def dead(self) -> str | None:
        for name, p in self.procs:
            if p.poll() is not None:
                return f"{name} exited with status {p.returncode}"
        return None

    def wait_ready(self, cancelled: Callable[[], bool] = lambda: False) -> None:
        if self.cfg.router:
            self._wait(lambda: self._router_ready(self.url), "the stack", cancelled)
        else:
            self._wait(lambda: all(_answers(u + "/health") for u in self.engine_urls),
                       "the stack", cancelled)

    def _router_ready(self, url: str) -> bool:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                return json.loads(r.read())["healthy_instances"] >= len(self.cfg.roles)
        except (urllib.error.URLError, OSError, ValueError, KeyError):
            return False

    def _wait(self, ready: Callable[[], bool], what: str,
              cancelled: Callable[[], bool] = lambda: False) -> None:
        deadline = time.monotonic() + self.cfg.startup_timeout
        while time.monotonic() < deadline:
            if cancelled():
                raise AscendraError("interrupted while starting")
            if (why := self.dead()) is not None:
                raise AscendraError(f"{what} failed to start: {why}")
            if ready():
                return
            time.sleep(1.0)
        raise AscendraError(f"{what} was not ready after {self.cfg.startup_timeout:g} s")

    def stop(self) -> None:
        # The router first (no new work), then the runtimes, which stop their engines.
        _terminate([p for _, p in reversed(self.procs)])
        self.procs.clear()

    def __enter__(self) -> LocalStack:
        try:
            self.start()
            self.wait_ready(self.cancelled)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _terminate(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process group, then SIGKILL what is left after 30 s."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def run(cfg: StackConfig) -> int:
    """Foreground: start, announce, then wait for Ctrl-C/SIGTERM or a child's death."""
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stack = LocalStack(cfg)
    stack.cancelled = lambda: stop
    print(f"ascendra: starting {len(cfg.roles)} vLLM instance(s) "
          f"({', '.join(cfg.roles)}) and the router; model {stack.model}", flush=True)
    if cfg.log_dir is not None:
        print(f"ascendra: logs in {cfg.log_dir}/", flush=True)
    with stack:
        print(f"ascendra: endpoint {stack.url}/v1  model {stack.name!r}", flush=True)
        print("ascendra: ready (Ctrl-C to stop)", flush=True)
        while not stop:
            if (why := stack.dead()) is not None:
                print(f"ascendra: error: {why}; stopping", file=sys.stderr, flush=True)
                return 1
            time.sleep(0.5)
    print("ascendra: stopped", flush=True)
    return 0
