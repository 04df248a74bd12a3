"""Engines that fail without closing their streams: a SIGKILLed vLLM API server (which used to
leave its EngineCore running, about 3 GB) and a hung engine core behind an API server that still
answers (which used to stay healthy while requests waited on it for as long as it hung)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import aiohttp
from serving_support import (
    SEATS,
    Stack,
    core_frozen,
    descendants,
    spawn,
    spawn_router,
    wait_healthy,
)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _runtime(stack: Stack, port: int, *extra: str):
    agent = spawn("runtime", "--cpu", "--model", str(stack.model_dir), "--served-model-name",
                  "tiny-llama", "--port", str(port), "--agent-port", str(port + 1), "--role",
                  "lp", "--max-model-len", "2048", *extra, "--", "--max-num-seqs", str(SEATS))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return agent
        except OSError:
            assert agent.poll() is None, "the runtime exited"
            time.sleep(1)
    raise AssertionError("the engine did not come up")


def test_a_sigkilled_api_server_takes_its_engine_core_with_it(stack: Stack):
    agent = _runtime(stack, 18220)
    try:
        api_servers = _children(agent.pid)
        assert len(api_servers) == 1, api_servers
        engine = [api_servers[0], *descendants(api_servers[0])]
        assert len(engine) >= 2, "the API server and its EngineCore"
        os.kill(api_servers[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(_alive(p) for p in engine):
            time.sleep(0.5)
        assert not [p for p in engine if _alive(p)], "engine processes outlived the API server"
        assert agent.wait(60) != 0  # the runtime says its engine died
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)


async def _stream(http: aiohttp.ClientSession, url: str, out: dict) -> dict:
    body = {"model": "tiny-llama", "prompt": "keep going", "max_tokens": 200, "stream": True,
            "ignore_eos": True, "return_token_ids": True}
    out.update(ids=[], error=None, finish=None)
    async with http.post(url + "/v1/completions", json=body) as r:
        assert r.status == 200, await r.text()
        async for line in r.content:
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    out["error"] = chunk["error"]
                for ch in chunk.get("choices", ()):
                    out["ids"] += ch["token_ids"]
                    out["finish"] = ch["finish_reason"] or out["finish"]
    return out


def _instances(url: str) -> object:
    with urllib.request.urlopen(url + "/ascendra/instances", timeout=5) as r:
        return json.loads(r.read())


def _recovery_moves(router_url: str) -> float:
    """Streams the router moved off a failed or hung instance."""
    with urllib.request.urlopen(router_url + "/metrics", timeout=5) as r:
        return sum(float(line.rsplit(" ", 1)[1]) for line in r.read().decode().splitlines()
                   if line.startswith('ascendra_migrations_total{reason="recovery"}'))


def _stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)


def test_a_hung_engine_core_is_unhealthy_and_its_requests_finish_elsewhere(stack: Stack):
    agent = _runtime(stack, 18230, "--progress-timeout", "3")
    victim = "http://127.0.0.1:18230,agent=http://127.0.0.1:18231"
    router = spawn_router(stack, 18030, [victim, f"{stack.lp_engine},agent={stack.lp_agent}"],
                          "--dispatch", "round-robin")
    stopped: list[int] = []
    try:
        wait_healthy("http://127.0.0.1:18030", 2, 120)
        core = descendants(_children(agent.pid)[0])  # all but the API server

        async def run() -> tuple[list[dict], float]:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
                url = "http://127.0.0.1:18030"
                outs: list[dict] = [{}, {}, {}]
                tasks = [asyncio.create_task(_stream(http, url, outs[0]))]  # to the victim
                tasks.append(asyncio.create_task(_stream(http, url, outs[1])))  # the other
                while len(outs[0].get("ids", ())) < 10:  # under way on the victim
                    assert not tasks[0].done(), outs[0]
                    await asyncio.sleep(0.01)
                for p in core:
                    os.kill(p, signal.SIGSTOP)
                    stopped.append(p)
                t = time.monotonic()
                # Round-robin sends the third to the victim again, where it waits unstarted.
                tasks.append(asyncio.create_task(_stream(http, url, outs[2])))
                _, pending = await asyncio.wait(tasks, timeout=90)
                assert not pending, (
                    "streams unfinished after 90 s (tokens, error, finish): "
                    f"{[(len(o.get('ids', ())), o.get('error'), o.get('finish')) for o in outs]}"
                    f"; the router's instances: {_instances(url)}")
                for task in tasks:
                    task.result()
                return outs, time.monotonic() - t

        outs, took = asyncio.run(run())
        for out in outs:
            assert out["error"] is None and out["finish"] == "length" and len(out["ids"]) == 200
        assert took < 30  # the progress timeout (3 s) and a move, not the 30 s stall timeout
        # the started stream and the queued one, off the hung engine
        assert _recovery_moves("http://127.0.0.1:18030") == 2
        with urllib.request.urlopen("http://127.0.0.1:18030/health", timeout=5) as r:
            assert json.loads(r.read()) == {"healthy_instances": 1}
    finally:
        for p in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGCONT)
        _stop(router, agent)


def test_requests_sent_to_a_core_that_hung_while_idle_finish_elsewhere(stack: Stack):
    """A core that hangs with nothing to do keeps reporting an idle engine (it publishes
    nothing new), so neither its counts nor its agent show the requests sent to it after:
    only the router knows they wait there unstarted. They used to wait for as long as it hung
    (a test's frozen engine held a request for 9 minutes); the router's own progress watch
    (--progress-timeout 3) now moves them."""
    agent = _runtime(stack, 18240)
    victim = "http://127.0.0.1:18240,agent=http://127.0.0.1:18241"
    url = "http://127.0.0.1:18040"
    router = spawn_router(stack, 18040, [victim, f"{stack.lp_engine},agent={stack.lp_agent}"],
                          "--dispatch", "round-robin", "--progress-timeout", "3")
    try:
        wait_healthy(url, 2, 120)

        async def run() -> tuple[list[dict], float]:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
                outs: list[dict] = [{}, {}]
                t = time.monotonic()
                # Round-robin sends one of the two to the hung engine.
                tasks = [asyncio.create_task(_stream(http, url, out)) for out in outs]
                _, pending = await asyncio.wait(tasks, timeout=90)
                assert not pending, f"streams unfinished after 90 s: {_instances(url)}"
                for task in tasks:
                    task.result()
                return outs, time.monotonic() - t

        with core_frozen("http://127.0.0.1:18240"):
            outs, took = asyncio.run(run())
        for out in outs:
            assert out["error"] is None and out["finish"] == "length" and len(out["ids"]) == 200
        assert took < 30  # the router's progress timeout (3 s) and a move
        assert _recovery_moves(url) == 1  # the one sent to the hung engine, unstarted
    finally:
        _stop(router, agent)
