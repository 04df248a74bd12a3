"""``ascendra runtime``: run one vLLM engine in its role, and report role and queue state.

The agent starts vLLM as a child process, scrapes its ``/metrics`` a few times a second, and
serves ``GET /ascendra/state`` (role, readiness, running/waiting, KV use, measured step time and
prefill rate) for routers. The role is live: read from a file on every scrape when
``--role-file`` is given (Kubernetes projects the pod's labels there through the downward API, so
a label flip by the operator reaches the agent without a restart), or set with
``PUT /ascendra/role`` otherwise. vLLM never restarts for a role change.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ascendra.runtime.engine_args import EngineLaunch
from ascendra.runtime.engine_state import (
    EngineState,
    ProgressWatch,
    RateTracker,
    parse_metrics,
)
from ascendra.runtime.procs import adopt_orphans, die_with_parent, kill_children

ROLES = ("lp", "hp", "mixed")
ROLE_LABEL = "ascendra.io/role"
_LABEL_LINE = re.compile(r'^\s*' + re.escape(ROLE_LABEL) + r'\s*=\s*"?([a-z]+)"?\s*$', re.M)


def read_role_file(path: Path) -> str | None:
    """The role from a downward-API labels file (``key="value"`` lines) or a file holding just
    the role. ``None`` when the file is missing or holds no valid role."""
    try:
        text = path.read_text()
    except OSError:
        return None
    m = _LABEL_LINE.search(text)
    role = (m.group(1) if m else text.strip()).lower()
    return role if role in ROLES else None


@dataclass
class AgentConfig:
    launch: EngineLaunch
    agent_port: int
    role: str = "lp"
    role_file: Path | None = None
    scrape_interval: float = 0.1
    python: str = sys.executable
    env: dict[str, str] | None = None
    progress_timeout: float = 30.0  # requests on the engine and no step this long: not ready
    admin_token: str | None = None  # required by PUT /ascendra/role when set


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.role = cfg.role
        self.engine_url = f"http://{cfg.launch.host}:{cfg.launch.port}"
        self.ready = False
        self.rates = RateTracker()
        self.progress = ProgressWatch(cfg.progress_timeout)
        self.sample = parse_metrics("")
        self._sampled_at = time.monotonic()  # when the scrape behind ``sample`` was sent
        self.proc: subprocess.Popen[bytes] | None = None
        # vLLM's exit status when it exited on its own: the runtime then exits non-zero, so
        # that the kubelet restarts the pod and reports it (CrashLoopBackOff), never Completed.
        self.engine_exit: int | None = None
        self._http: aiohttp.ClientSession | None = None
        env = {**os.environ, **(cfg.env or {})}
        devices = env.get("CUDA_VISIBLE_DEVICES", "")
        # Engines on one host given the same devices share a GPU: moves between them gain
        # nothing. None given (a CPU engine, or every GPU of the pod): shared with no one.
        self.gpu = f"{socket.gethostname()}:{devices}" if devices else ""

    def current_role(self) -> str:
        if self.cfg.role_file is not None:
            role = read_role_file(self.cfg.role_file)
            if role is not None:
                self.role = role
        return self.role

    def state(self) -> EngineState:
        s = self.sample
        stalled = self.progress.stalled(time.monotonic())
        return EngineState(
            role=self.current_role(), ready=self.ready and not stalled, stalled=stalled,
            running=s.running, waiting=s.waiting,
            kv_usage=s.kv_usage, kv_capacity_tokens=s.kv_capacity_tokens,
            max_seqs=self.cfg.launch.max_seqs, token_budget=self.cfg.launch.token_budget,
            gpu=self.gpu, step_time=self.rates.step_time,
            prefill_s_per_token=self.rates.prefill_s_per_token,
            decode_step_time=self.rates.decode_step_time, progress=s.progress,
            sample_age=time.monotonic() - self._sampled_at,
        )

    def start_engine(self) -> None:
        env = {**os.environ, **(self.cfg.env or {})}
        # Same process group as the agent: whoever stops the runtime's group stops its engine.
        # The agent adopts the engine's orphans, so that an API server that dies any way
        # (SIGKILL included, which used to leave its EngineCore running) leaves nothing.
        adopt_orphans()
        self.proc = subprocess.Popen(self.cfg.launch.argv(self.cfg.python), env=env,
                                     preexec_fn=die_with_parent)

    def stop_engine(self, timeout: float = 20.0) -> None:
        """SIGTERM the API server; SIGKILL it after ``timeout``, and then whatever of the
        engine is left (its children, adopted once it is gone)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        kill_children()

    async def scrape_forever(self) -> None:
        assert self._http is not None
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                self.ready = False
                self.engine_exit = self.proc.returncode
                print(f"ascendra runtime: vLLM exited with status {self.proc.returncode}",
                      file=sys.stderr, flush=True)
                self.stop_engine(timeout=5.0)  # what of its tree is left
                os.kill(os.getpid(), signal.SIGTERM)
                return
            try:
                asked = time.monotonic()
                async with self._http.get(self.engine_url + "/metrics") as resp:
                    if resp.status == 200:
                        self.sample = parse_metrics(await resp.text())
                        self._sampled_at = asked
                        self.rates.observe(self.sample)
                        self.progress.observe(self.sample.progress, self.sample.running
                                              + self.sample.waiting > 0, time.monotonic())
                        self.ready = True
            except (TimeoutError, aiohttp.ClientError):
                self.ready = False
            self.current_role()
            await asyncio.sleep(self.cfg.scrape_interval)

    def app(self) -> FastAPI:
        @contextlib.asynccontextmanager
        async def lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
            if self.proc is None and self.cfg.launch.model:
                self.start_engine()
            task = asyncio.create_task(self.scrape_forever())
            try:
                yield
            finally:
                task.cancel()
                await self._http.close()
                self.stop_engine()

        app = FastAPI(title="ascendra runtime agent", lifespan=lifespan)

        @app.get("/ascendra/state")
        async def state() -> dict[str, object]:
            return self.state().as_dict()

        @app.put("/ascendra/role")
        async def set_role(request: Request) -> JSONResponse:
            if self.cfg.admin_token is not None and not hmac.compare_digest(
                    request.headers.get("authorization", "").encode(),
                    f"Bearer {self.cfg.admin_token}".encode()):
                return JSONResponse({"error": "the role takes the admin token: "
                                              "Authorization: Bearer TOKEN"}, 401)
            try:
                role = (await request.json()).get("role")
            except (ValueError, AttributeError):
                role = None
            if role not in ROLES:
                return JSONResponse({"error": f"role must be one of {', '.join(ROLES)}"}, 400)
            if self.cfg.role_file is not None:
                return JSONResponse({"error": "role is managed by the role file "
                                              f"{self.cfg.role_file}"}, 409)
            self.role = role
            return JSONResponse({"role": role})

        @app.get("/metrics")
        async def metrics() -> Response:
            role = self.current_role()
            lines = ["# HELP ascendra_runtime_role The role this runtime serves (1 for the "
                     "current one)", "# TYPE ascendra_runtime_role gauge"]
            lines += [f'ascendra_runtime_role{{role="{r}"}} {int(r == role)}' for r in ROLES]
            lines += ["# HELP ascendra_runtime_ready Whether its engine answers",
                      "# TYPE ascendra_runtime_ready gauge",
                      f"ascendra_runtime_ready {int(self.ready)}", ""]
            return Response("\n".join(lines), media_type="text/plain; version=0.0.4")

        @app.get("/health")
        async def health() -> JSONResponse:
            return JSONResponse({"ready": self.ready}, 200 if self.ready else 503)

        return app
